"""The ``newsletter`` command: parses arguments, calls a stage, presents the result.

A :class:`~newsletter.errors.NewsletterError` becomes one line on stderr and its exit code (2 for
configuration mistakes, 1 otherwise); nothing a user can fix ends in a traceback.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine
from typer.core import TyperGroup

from newsletter import subscribers as subscriber_list
from newsletter.backends import create_backend
from newsletter.config import Config, load_config
from newsletter.db import open_database
from newsletter.bounces import process_bounces
from newsletter.delivery import (
    cancel_issue,
    issue_status,
    pause_issue,
    resume_issue,
    retry_failed,
    send_issue,
    send_unfinished,
    write_preview,
)
from newsletter.digest import prepare_issue
from newsletter.errors import NewsletterError
from newsletter.ingest import find_files, ingest_paths
from newsletter.models import IssueStatus, SubscriberStatus
from newsletter.schedule import run_scheduler

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


class _Group(TyperGroup):
    """Turns NewsletterError anywhere below into one line on stderr and the error's exit code."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NewsletterError as exc:
            errors.print(Text(f"error: {exc}"), soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None


def _app(help_text: str, **kwargs: Any) -> typer.Typer:
    return typer.Typer(
        help=help_text, cls=_Group, no_args_is_help=True, pretty_exceptions_enable=False,
        rich_markup_mode="rich", **kwargs,
    )


app = _app(
    "Turn a week of research summaries into an email digest.\n\n"
    "Example: [bold]newsletter demo[/bold], then [bold]newsletter --help[/bold] for the rest.",
)
subscribers_app = _app("Manage the subscriber list.\n\nExample: newsletter subscribers import subscribers/example.csv")
digest_app = _app(
    "Prepare, render and send the weekly digest.\n\nExample: newsletter digest prepare && newsletter digest send"
)
app.add_typer(subscribers_app, name="subscribers")
bounces_app = _app("Handle bounce reports, complaints and mailed unsubscribe requests.\n\n"
                   "Example: newsletter bounces process")
app.add_typer(digest_app, name="digest")
app.add_typer(bounces_app, name="bounces")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="The config file (default: $NEWSLETTER_CONFIG, then ./config.yaml).",
        show_default=False, dir_okay=False,
    ),
]


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what each stage does.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@contextmanager
def _opened(config_path: Path | None) -> Iterator[tuple[Config, Engine]]:
    config = load_config(config_path)
    engine = open_database(config)
    try:
        yield config, engine
    finally:
        engine.dispose()


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f}/s" if task.speed else "–/s", style="progress.data.speed")


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        console=errors,
        transient=False,
    )


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders of .md, .json and .jsonl summaries.")],
    config: ConfigOption = None,
) -> None:
    """Read summaries into the database; re-ingesting an item updates it, never duplicates it.

    Example: newsletter ingest summaries/ extra/paper.md
    """
    with _opened(config) as (_config, engine), _progress() as bar:
        files = find_files(paths)  # expanded once: the progress total, then the work
        task = bar.add_task("ingesting", total=len(files))
        report = ingest_paths(engine, files, on_file=lambda _path: bar.advance(task))
    for rejection in report.rejected:
        errors.print(Text(f"rejected: {rejection.message}"), soft_wrap=True)
    console.print(report.summary_line())
    if report.rejected:
        raise typer.Exit(1)


@subscribers_app.command("add")
def subscribers_add(
    email: Annotated[str, typer.Argument(help="The address to add.")],
    name: Annotated[str | None, typer.Option(help="The subscriber's name.")] = None,
    config: ConfigOption = None,
) -> None:
    """Add an active subscriber (or update an existing one's name).

    Example: newsletter subscribers add ada@example.org --name "Ada Lovelace"
    """
    with _opened(config) as (_config, engine):
        subscriber = subscriber_list.add_subscriber(engine, email, name)
    console.print(f"{subscriber.email} is {subscriber.status.value}")


@subscribers_app.command("import")
def subscribers_import(
    file: Annotated[Path, typer.Argument(help="A CSV file with an 'email' column and optionally 'name'.")],
    config: ConfigOption = None,
) -> None:
    """Import a CSV list; bad rows are reported by line, unsubscribed addresses are never reactivated.

    Example: newsletter subscribers import subscribers/example.csv
    """
    with _opened(config) as (_config, engine), _progress() as bar:
        task = bar.add_task("importing", total=_data_lines(file))
        report = subscriber_list.import_csv(engine, file, on_row=lambda: bar.advance(task))
    for line, problem in report.bad_rows:
        errors.print(Text(f"{file}:{line}: {problem}"), soft_wrap=True)
    console.print(report.summary_line())
    if report.bad_rows:
        raise typer.Exit(1)


def _data_lines(file: Path) -> int | None:
    """Lines after the header, as a progress total (None when the file cannot be read: import says why)."""
    try:
        with file.open("rb") as handle:
            return max(sum(1 for _ in handle) - 1, 0)
    except OSError:
        return None


StatusOption = Annotated[SubscriberStatus | None, typer.Option("--status", help="Only subscribers in this state.")]


@subscribers_app.command("list")
def subscribers_list(status: StatusOption = None, config: ConfigOption = None) -> None:
    """Show the subscribers as a table.

    Example: newsletter subscribers list --status active
    """
    with _opened(config) as (_config, engine):
        rows = subscriber_list.list_subscribers(engine, status)
    table = Table("email", "name", "status", "since")
    for s in rows:
        table.add_row(s.email, s.name or "", s.status.value, s.created_at.date().isoformat())
    console.print(table)
    console.print(f"{len(rows)} subscribers")


@subscribers_app.command("remove")
def subscribers_remove(
    email: Annotated[str, typer.Argument(help="The address to unsubscribe.")],
    config: ConfigOption = None,
) -> None:
    """Unsubscribe an address; it stays on file as unsubscribed so no import adds it back.

    Example: newsletter subscribers remove ada@example.org
    """
    with _opened(config) as (_config, engine):
        subscriber = subscriber_list.remove_subscriber(engine, email)
    console.print(f"{subscriber.email} is {subscriber.status.value}")


@subscribers_app.command("export")
def subscribers_export(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write to this file instead of stdout.")] = None,
    status: StatusOption = None,
    config: ConfigOption = None,
) -> None:
    """Write the list as CSV.

    Example: newsletter subscribers export --out list.csv
    """
    with _opened(config) as (_config, engine):
        if out is None:
            subscriber_list.export_csv(engine, sys.stdout, status)
            return
        try:
            with out.open("w", newline="", encoding="utf-8") as handle:
                count = subscriber_list.export_csv(engine, handle, status)
        except OSError as exc:
            raise NewsletterError(f"cannot write {out} ({exc.strerror}); choose another --out") from None
    errors.print(f"wrote {count} subscribers to {out}")


@digest_app.command("prepare")
def digest_prepare(config: ConfigOption = None) -> None:
    """Create this period's issue from the summaries not yet sent; running it twice changes nothing.

    Example: newsletter digest prepare
    """
    with _opened(config) as (loaded, engine):
        result = prepare_issue(engine, loaded)
    console.print(result.message())


MAX_NUMBER = 2**31 - 1  # what every database stores in an INTEGER column
IssueOption = Annotated[
    int | None, typer.Option("--issue", "-i", min=1, max=MAX_NUMBER, help="Only this issue number.")
]


@digest_app.command("render")
def digest_render(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for issue.html, issue.txt and sample.eml.")],
    issue: IssueOption = None,
    config: ConfigOption = None,
) -> None:
    """Write an issue's HTML, text and one sample .eml exactly as it would be sent (default: the newest
    issue, or a draft of the next one when none was prepared yet).

    Example: newsletter digest render --out preview/
    """
    with _opened(config) as (loaded, engine):
        files = write_preview(engine, loaded, out, issue)
    console.print(f"{files.description}:\n  {files.html}\n  {files.text}\n  {files.eml}")


@digest_app.command("send")
def digest_send(
    issue: IssueOption = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, max=10_000, help="Deliveries claimed at a time (default: delivery.batch_size).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Send what is due of every unfinished issue (or only --issue N) through the configured backend.
    Already-sent deliveries are never sent again, so it is safe to run after an interruption or a crash.
    Ctrl-C or SIGTERM finishes the messages in flight, records them and stops.

    Example: newsletter digest send
    """
    with _opened(config) as (loaded, engine):
        backend = create_backend(loaded)
        stop = threading.Event()
        with _progress() as bar, _stop_on_signals(stop):
            tasks: dict[int, TaskID] = {}

            def progress(number: int, done: int, total: int) -> None:
                if number not in tasks:
                    tasks[number] = bar.add_task(f"issue #{number}", total=total)
                bar.update(tasks[number], completed=done)

            options: dict[str, Any] = {"batch_size": batch_size, "progress": progress, "stop": stop}
            if issue is None:
                reports = send_unfinished(engine, loaded, backend, **options)
            else:
                reports = [send_issue(engine, loaded, backend, issue, **options)]
    for report in reports:
        console.print(Text(f"{report.summary_line()} (via {backend.describe()})"))
    if any(report.issue.status is IssueStatus.PAUSED for report in reports):
        raise typer.Exit(3)


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and Ctrl-C set ``stop``: the send loop drains what is in flight and returns."""
    def request(signum: int, _frame: Any) -> None:
        errors.print(f"{signal.Signals(signum).name}: finishing the messages in flight, then stopping")
        stop.set()

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


IssueArgument = Annotated[
    int | None, typer.Argument(min=1, max=MAX_NUMBER, help="Issue number (default: the newest).")
]


@digest_app.command("status")
def digest_status(issue: IssueArgument = None, config: ConfigOption = None) -> None:
    """Show an issue's deliveries by state, the sending rate and the errors grouped by reason.

    Example: newsletter digest status 3
    """
    with _opened(config) as (_config, engine):
        found = issue_status(engine, issue)
    i = found.issue
    console.print(Text(f"issue #{i.number} ({i.period_key}) \"{i.subject}\": {i.status.value}"))
    console.print(", ".join(f"{status.value} {count}" for status, count in found.counts.items()))
    if found.rate_per_minute:
        console.print(f"rate: {found.rate_per_minute:,.0f} messages/minute")
    if found.next_retry_at:
        console.print(f"next retry: {found.next_retry_at:%Y-%m-%d %H:%M} UTC")
    if found.errors:
        table = Table("count", "reason")
        for reason, count in found.errors:
            table.add_row(str(count), reason)
        console.print(table)


@digest_app.command("pause")
def digest_pause(issue: IssueArgument = None, config: ConfigOption = None) -> None:
    """Pause sending an issue; a running send stops after the messages in flight.

    Example: newsletter digest pause 3
    """
    with _opened(config) as (_config, engine):
        found = pause_issue(engine, issue)
    console.print(f"issue #{found.number} is paused; `newsletter digest resume {found.number}` goes on")


@digest_app.command("resume")
def digest_resume(issue: IssueArgument = None, config: ConfigOption = None) -> None:
    """Resume a paused issue; the next `digest send` (or the scheduler) sends the rest.

    Example: newsletter digest resume 3 && newsletter digest send
    """
    with _opened(config) as (_config, engine):
        found = resume_issue(engine, issue)
    console.print(f"issue #{found.number} will be sent again by the next `newsletter digest send`")


@digest_app.command("retry-failed")
def digest_retry_failed(issue: IssueArgument = None, config: ConfigOption = None) -> None:
    """Queue an issue's failed deliveries again (bounced or unsubscribed people are still skipped).

    Example: newsletter digest retry-failed 3 && newsletter digest send
    """
    with _opened(config) as (_config, engine):
        found, count = retry_failed(engine, issue)
    console.print(f"issue #{found.number}: {count} failed deliveries queued again")


@digest_app.command("cancel")
def digest_cancel(issue: IssueArgument = None, config: ConfigOption = None) -> None:
    """Cancel an issue: nothing more is sent for it; what was not sent is marked skipped.

    Example: newsletter digest cancel 3
    """
    with _opened(config) as (_config, engine):
        found, count = cancel_issue(engine, issue)
    console.print(f"issue #{found.number} cancelled; {count} deliveries skipped")


@bounces_app.command("process")
def bounces_process(config: ConfigOption = None) -> None:
    """Read the bounce mailbox (bounces.mailbox): bounce reports, complaints and mailto: unsubscribes.

    Example: newsletter bounces process --config config.yaml
    """
    with _opened(config) as (loaded, engine):
        result = process_bounces(engine, loaded)
    console.print(result.summary_line())


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run the scheduler: prepare and send the digest at the configured cron time, until Ctrl-C/SIGTERM.

    Example: newsletter run --config /etc/newsletter/config.yaml
    """
    logging.getLogger().setLevel(logging.INFO)
    with _opened(config) as (loaded, engine):
        run_scheduler(engine, loaded)


@app.command()
def demo(
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the demo writes its database, outbox and HTML.")
    ] = Path("newsletter-demo"),
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Use this config's newsletter details and templates (the demo "
                     "always keeps its own database and outbox).", dir_okay=False),
    ] = None,
) -> None:
    """Run the whole pipeline on bundled samples: ingest, subscribe, prepare, render and send to a file outbox.

    Example: newsletter demo --dir /tmp/newsletter-demo --config config.yaml
    """
    from newsletter.demo import run_demo

    result = run_demo(directory, load_config(config) if config else None)
    console.print(result.report())


def main() -> None:
    app()
