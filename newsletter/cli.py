"""The ``newsletter`` command: parses arguments, calls a stage, presents the result.

A :class:`~newsletter.errors.NewsletterError` becomes one line on stderr and its exit code (2 for
configuration mistakes, 1 otherwise); nothing a user can fix ends in a traceback.
"""

from __future__ import annotations

import contextvars
import copy
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import click
import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from newsletter.errors import NewsletterError
from newsletter.logs import configure_logging
from newsletter.states import IssueStatus, SubscriberStatus

# The stages (and through them sqlalchemy, sqlmodel, jinja2, mjml, ...) are imported inside the commands
# that use them: `newsletter --help` and light commands start without them (tests/test_startup.py guards it).
if TYPE_CHECKING:
    from rich.progress import Progress, TaskID
    from sqlalchemy import Engine

    from newsletter.click_report import IssueClicks
    from newsletter.config import Config

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


# The --config given before the command (`newsletter --config X cmd`), set by the root callback of each run.
_ROOT_CONFIG: contextvars.ContextVar[Path | None] = contextvars.ContextVar("root_config", default=None)


def _verbose(_ctx: Any, _param: Any, value: bool) -> None:
    if value:
        configure_logging(logging.INFO)


class _Group(TyperGroup):
    """Turns NewsletterError anywhere below into one line on stderr and the error's exit code, and lets every
    command take ``-v`` after its name as well as before it."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NewsletterError as exc:
            errors.print(Text(f"error: {exc}"), soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except Exception as exc:  # the database went away, or its disk is full: not a bug, no traceback
            # sqlalchemy is only loaded by commands that opened a database: anything else is a bug as before
            if not type(exc).__module__.startswith("sqlalchemy"):
                raise
            from newsletter.db import database_fault

            fault = database_fault(exc)
            if fault is None:
                raise
            errors.print(Text(f"error: {fault}"), soft_wrap=True)
            raise typer.Exit(fault.exit_code) from None

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            return None
        if command.short_help is None and command.help:  # the list of commands: one paragraph, reflowed
            command.short_help = " ".join(command.help.split("\n\n")[0].split())
        if isinstance(command, TyperGroup) or any(p.name == "verbose" for p in command.params):
            return command
        # The root's own --verbose option (built by typer), copied: here it sets the log level itself instead
        # of being handed to the command's function.
        root_verbose = next(p for p in ctx.find_root().command.params if p.name == "verbose")
        verbose = copy.copy(root_verbose)
        verbose.expose_value, verbose.callback = False, _verbose
        command.params.append(verbose)
        return command


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
summaries_app = _app("See and fix ingested summaries.\n\nExample: newsletter summaries list --new")
app.add_typer(subscribers_app, name="subscribers")
bounces_app = _app("Handle bounce reports, complaints and mailed unsubscribe requests.\n\n"
                   "Example: newsletter bounces process")
app.add_typer(digest_app, name="digest")
app.add_typer(summaries_app, name="summaries")
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
    config: ConfigOption = None,
) -> None:
    configure_logging(logging.INFO if verbose else logging.WARNING)
    _ROOT_CONFIG.set(config)


def _chosen(config_path: Path | None) -> Path | None:
    """The command's ``--config``, else the one given before the command (``newsletter --config X cmd``)."""
    return config_path if config_path is not None else _ROOT_CONFIG.get()


@contextmanager
def _opened(config_path: Path | None) -> Iterator[tuple[Config, Engine]]:
    from newsletter.backends import check_backend
    from newsletter.config import load_config
    from newsletter.db import open_database

    config = load_config(_chosen(config_path))
    check_backend(config)  # a misspelt backend option fails at start, not at send time
    engine = open_database(config)
    try:
        yield config, engine
    finally:
        engine.dispose()


def _progress() -> Progress:
    from rich.progress import (
        BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn,
    )

    class _RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text(f"{task.speed:,.0f}/s" if task.speed else "–/s", style="progress.data.speed")

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
    sources: Annotated[
        list[str],
        typer.Argument(help="Files or folders (.md, .json, .jsonl, .txt, .html, .xml feeds) or feed URLs."),
    ],
    config: ConfigOption = None,
) -> None:
    """Read summaries into the database; re-ingesting an item updates it, never duplicates it.

    Example: newsletter ingest summaries/ page.txt https://example.org/feed.xml
    """
    from newsletter.ingest import find_files, ingest_paths
    from newsletter.ingest.feeds import fetch_feed

    urls = [source for source in sources if source.lower().startswith(("http://", "https://"))]
    paths = [Path(source) for source in sources if source not in urls]
    with _opened(config) as (loaded, engine):
        with _progress() as bar:
            files = find_files(paths)  # expanded once: the progress total, then the work
            task = bar.add_task("ingesting", total=len(files) + len(urls))
            report = ingest_paths(engine, files, on_file=lambda _path: bar.advance(task), settings=loaded.ingest)
            fetched = []
            for url in urls:
                fetched.append(fetch_feed(engine, url, loaded.ingest))
                bar.advance(task)
    for rejection in report.rejected:
        errors.print(Text(f"rejected: {rejection.message}"), soft_wrap=True)
    for result in fetched:
        report.add(result.report)
        for message in result.skipped:
            errors.print(Text(f"skipped: {message}"), soft_wrap=True)
        if result.status == "error":
            errors.print(Text(f"failed: {result.url}: {result.error}"), soft_wrap=True)
    console.print(report.summary_line())
    if report.rejected or any(result.status == "error" or result.skipped for result in fetched):
        raise typer.Exit(1)


MAX_NUMBER = 2**31 - 1  # what every database stores in an INTEGER column (ids, issue numbers)
SummaryId = Annotated[int, typer.Argument(min=1, max=MAX_NUMBER, help="The summary's id (see 'summaries list').")]


@summaries_app.command("list")
def summaries_list(
    new: Annotated[bool, typer.Option("--new", help="Only summaries not in any issue yet.")] = False,
    config: ConfigOption = None,
) -> None:
    """Show stored summaries, newest first.

    Example: newsletter summaries list --new
    """
    from rich.table import Table

    from newsletter.ingest import review

    with _opened(config) as (_config, engine):
        rows = review.list_summaries(engine, new_only=new)
    table = Table("id", "title", "source", "date", "ingested", "state")
    for row in rows:
        state = f"issue {row.issue_id}" if row.issue_id else ("excluded" if row.excluded else "new")
        published = row.published_at.date().isoformat() if row.published_at else ""
        table.add_row(str(row.id), Text(row.title), Text(row.source or ""), published,
                      row.ingested_at.strftime("%Y-%m-%d %H:%M"), state)
    console.print(table)
    console.print(f"{len(rows)} summaries")


@summaries_app.command("show")
def summaries_show(summary_id: SummaryId, config: ConfigOption = None) -> None:
    """Print one summary's fields as YAML, with where it came from.

    Example: newsletter summaries show 12
    """
    from newsletter.ingest import review

    with _opened(config) as (_config, engine):
        row = review.get_summary(engine, summary_id)
    console.print(Text(f"# id {row.id}, uid {row.uid}, from {row.origin}, excluded: {row.excluded}"))
    console.print(Text(review.to_yaml(row)), end="")


@summaries_app.command("edit")
def summaries_edit(summary_id: SummaryId, config: ConfigOption = None) -> None:
    """Open the summary as YAML in $EDITOR; saving stores it after the same checks as ingest.

    Example: EDITOR=nano newsletter summaries edit 12
    """
    from newsletter.ingest import review

    with _opened(config) as (_config, engine):
        before = review.to_yaml(review.get_summary(engine, summary_id))
        try:
            after = click.edit(before, extension=".yaml", require_save=True)
        except click.ClickException as exc:  # no editor, or it exited with an error
            raise NewsletterError(
                f"{exc.format_message()}; set $EDITOR to an editor that works, e.g. EDITOR=nano"
            ) from None
        if after is None or after == before:
            console.print("no changes")
            return
        try:
            review.apply_yaml(engine, summary_id, after)
        except NewsletterError as exc:
            kept = Path(tempfile.mkstemp(prefix=f"summary-{summary_id}-", suffix=".yaml")[1])
            kept.write_text(after, encoding="utf-8")
            raise NewsletterError(f"{exc} (nothing was changed; your edit is kept in {kept})") from None
    console.print(f"summary {summary_id} updated")


@summaries_app.command("exclude")
def summaries_exclude(
    summary_id: SummaryId,
    undo: Annotated[bool, typer.Option("--undo", help="Let the summary back into the next digest.")] = False,
    config: ConfigOption = None,
) -> None:
    """Keep a summary out of the next digest (it stays stored; --undo brings it back).

    Example: newsletter summaries exclude 12
    """
    from newsletter.ingest import review

    with _opened(config) as (_config, engine):
        review.set_excluded(engine, summary_id, not undo)
    console.print(f"summary {summary_id} {'will be in' if undo else 'is excluded from'} the next digest")


@subscribers_app.command("add")
def subscribers_add(
    email: Annotated[str, typer.Argument(help="The address to add.")],
    name: Annotated[str | None, typer.Option(help="The subscriber's name.")] = None,
    config: ConfigOption = None,
) -> None:
    """Add an active subscriber (or update an existing one's name).

    Example: newsletter subscribers add ada@example.org --name "Ada Lovelace"
    """
    from newsletter import subscribers as subscriber_list

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
    from newsletter import subscribers as subscriber_list

    with _opened(config) as (_config, engine), _progress() as bar:
        task = bar.add_task("importing", total=None)  # the total once import_csv has counted the rows
        rows = 0

        def tick() -> None:  # the bar is redrawn a few times a second anyway; advancing it per row cost 5 µs
            nonlocal rows
            rows += 1
            if rows % 1000 == 0:
                bar.update(task, completed=rows)

        report = subscriber_list.import_csv(engine, file, on_start=lambda total: bar.update(task, total=total),
                                            on_row=tick)
        bar.update(task, completed=rows)
    for line, problem in sorted(report.bad_rows + report.notes()):
        errors.print(Text(f"{file}:{line}: {problem}"), soft_wrap=True)
    console.print(report.summary_line())
    if report.bad_rows:
        raise typer.Exit(1)


StatusOption = Annotated[SubscriberStatus | None, typer.Option("--status", help="Only subscribers in this state.")]


@subscribers_app.command("list")
def subscribers_list(status: StatusOption = None, config: ConfigOption = None) -> None:
    """Show the subscribers as a table.

    Example: newsletter subscribers list --status active
    """
    from rich.table import Table

    from newsletter import subscribers as subscriber_list

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
    from newsletter import subscribers as subscriber_list

    with _opened(config) as (_config, engine):
        subscriber = subscriber_list.remove_subscriber(engine, email)
    console.print(f"{subscriber.email} is {subscriber.status.value}")


@subscribers_app.command("export")
def subscribers_export(
    email: Annotated[
        str | None, typer.Argument(help="One address: everything stored about it, events included, as JSON.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write to this file instead of stdout.")] = None,
    status: StatusOption = None,
    config: ConfigOption = None,
) -> None:
    """Write the list as CSV, or with EMAIL everything stored about one subscriber as JSON (data access).

    Example: newsletter subscribers export --out list.csv
    Example: newsletter subscribers export ada@example.org --out ada.json
    """
    from newsletter import subscribers as subscriber_list

    if email is not None and status is not None:
        raise NewsletterError("--status selects rows of the CSV list; leave it out when exporting one EMAIL")
    with _opened(config) as (_config, engine):
        if email is not None:
            text = json.dumps(subscriber_list.export_person(engine, email), indent=2, ensure_ascii=False) + "\n"
            if out is None:
                sys.stdout.write(text)
                return
            _write(out, lambda handle: handle.write(text))
            errors.print(f"wrote {out}")
            return
        if out is None:
            subscriber_list.export_csv(engine, sys.stdout, status)
            return
        count = _write(out, lambda handle: subscriber_list.export_csv(engine, handle, status))
    errors.print(f"wrote {count} subscribers to {out}")


def _write(out: Path, write: Callable[[TextIO], int]) -> int:
    try:
        with out.open("w", newline="", encoding="utf-8") as handle:
            return write(handle)
    except OSError as exc:
        raise NewsletterError(f"cannot write {out} ({exc.strerror}); choose another --out") from None


@subscribers_app.command("erase")
def subscribers_erase(
    email: Annotated[str, typer.Argument(help="The address whose data is deleted.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    config: ConfigOption = None,
) -> None:
    """Delete everything stored about an address (right to erasure); only a hash stays, so that no later
    import, add or subscribe form ever adds it back.

    Example: newsletter subscribers erase ada@example.org --yes
    """
    from newsletter import subscribers as subscriber_list

    if not yes and not typer.confirm(f"Erase all data about {email}? This cannot be undone"):
        raise typer.Exit(1)
    with _opened(config) as (_config, engine):
        result = subscriber_list.erase_subscriber(engine, email)
    if result.was_on_list:
        clicks = f", {result.clicks} recorded clicks" if result.clicks else ""
        console.print(f"erased {result.address}: the subscriber, {result.events} events{clicks} and "
                      f"{result.deliveries} delivery records; a hash of the address keeps it off the list")
    else:
        console.print(f"{result.address} was not on the list; a hash of it now keeps it off the list")


@digest_app.command("prepare")
def digest_prepare(config: ConfigOption = None) -> None:
    """Create the next issue now from every summary waiting, with one queued delivery per active subscriber;
    `digest send` sends it. With nothing waiting it prepares nothing and says so.

    Example: newsletter digest prepare && newsletter digest send
    """
    from newsletter.issues import prepare_issue

    with _opened(config) as (loaded, engine):
        result = prepare_issue(engine, loaded)
    console.print(result.message())


@digest_app.command("order")
def digest_order(
    first: Annotated[
        list[int] | None,
        typer.Argument(min=1, max=MAX_NUMBER, show_default=False, metavar="ID",
                       help="Summary ids to show first, in this order (after the lead); the others keep their order."),
    ] = None,
    lead: Annotated[int | None, typer.Option(
        "--lead", min=1, max=MAX_NUMBER, help="Make this item the lead: first, and named by the default subject.",
    )] = None,
    no_lead: Annotated[bool, typer.Option("--no-lead", help="Unpin the lead item.")] = False,
    leave_out: Annotated[list[int] | None, typer.Option(
        "--leave-out", min=1, max=MAX_NUMBER, show_default=False, help="Leave this item out (repeatable).",
    )] = None,
    bring_back: Annotated[list[int] | None, typer.Option(
        "--bring-back", min=1, max=MAX_NUMBER, show_default=False, help="Bring a left-out item back (repeatable).",
    )] = None,
    undo: Annotated[bool, typer.Option("--undo", help="Take back the last change to the next issue (its order, "
                                                      "lead, items, note or subject).")] = False,
    config: ConfigOption = None,
) -> None:
    """Show or change the next issue's items: their order, the lead item, the ones left out. Without
    arguments it lists them with their ids; the preview's desk does the same in the browser.

    Example: newsletter digest order 12 7 --lead 12 --leave-out 9
    """
    from newsletter.issues import editorial  # here, not at the top: other commands start faster without it

    steps = [
        *(editorial.leaving_out(summary_id, out=False) for summary_id in bring_back or []),
        *(editorial.leaving_out(summary_id) for summary_id in leave_out or []),
        *([editorial.leading(None)] if no_lead else []),
        *([editorial.leading(lead)] if lead is not None else []),
        *([editorial.reordering(first)] if first else []),
    ]
    if undo and steps:
        raise NewsletterError("--undo takes back the last change on its own; give it without other changes")
    with _opened(config) as (_config, engine):
        if undo:
            state = editorial.undo(engine)
        elif steps:
            state = editorial.arrange(engine, steps)  # all of them or, when one makes no sense, none
        else:
            state = editorial.next_issue_state(engine)
    console.print(f"next issue #{state.number}:")
    for position, item in enumerate(state.items, 1):
        mark = "  (lead)" if item.id == state.choices.lead else ""
        console.print(Text(f"{position:>4}. [{item.id}] {item.title}{mark}"))
    if not state.items:
        console.print("      nothing yet: no summary is waiting")
    if state.left_out:
        console.print("left out (--bring-back ID):")
        for item in state.left_out:
            console.print(Text(f"      [{item.id}] {item.title}"))
    if state.undo_label:
        console.print(Text(f"--undo would take back: {state.undo_label}"))


@digest_app.command("note")
def digest_note(
    text: Annotated[str | None, typer.Argument(help="The note, in Markdown (quote it).", show_default=False)] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Read the note from this file ('-': standard "
                                              "input).", dir_okay=False, allow_dash=True)] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the note.")] = False,
    config: ConfigOption = None,
) -> None:
    """Show or set the editor's note of the next issue: Markdown shown above the items, in the HTML and the
    text part (links, emphasis and lists are kept; anything else is cleaned away as in summaries).

    Example: newsletter digest note "A short week: **three** papers, and a call for reviewers."
    """
    from newsletter.issues import editorial

    given = [value for value in (text, file, clear or None) if value is not None]
    if len(given) > 1:
        raise NewsletterError("give the note as TEXT, or --file, or --clear: one of them")
    if file is not None:
        text = _read_text(file)
    with _opened(config) as (_config, engine):
        if given:
            state = editorial.set_note(engine, None if clear else text)
        else:
            state = editorial.next_issue_state(engine)
    note = state.choices.note
    console.print(Text(f"next issue #{state.number}: " + (f"note:\n{note}" if note else "no note")))


@digest_app.command("subject")
def digest_subject(
    text: Annotated[str | None, typer.Argument(help="The subject (quote it).", show_default=False)] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Go back to the subject subject.txt.j2 writes.")] = False,
    config: ConfigOption = None,
) -> None:
    """Show or set the subject of the next issue, instead of the one subject.txt.j2 writes; at most 99
    characters (the pre-send check's limit).

    Example: newsletter digest subject "Research Weekly #12: the sleep issue"
    """
    from newsletter.db import session
    from newsletter.issues import draft, editorial
    from newsletter.render import SUBJECT_LIMIT

    if text is not None and clear:
        raise NewsletterError("give a subject or --clear, not both")
    with _opened(config) as (loaded, engine):
        if text is not None or clear:
            editorial.set_subject(engine, None if clear else text)
        with session(engine) as db:
            upcoming = draft(db, loaded)
        state = editorial.next_issue_state(engine)
    if upcoming is None:
        subject, source = state.choices.subject or "", "the editor's" if state.choices.subject else "none yet"
    else:
        subject, source = upcoming.issue.subject, "the editor's" if state.choices.subject else "subject.txt.j2's"
    counted_ = f"{len(subject)}/{SUBJECT_LIMIT} characters"
    console.print(Text(f"next issue #{state.number}: {subject!r} ({source}, {counted_})"))


def _read_text(file: Path) -> str:
    """The text of ``file`` ('-': standard input), as UTF-8; NewsletterError naming the file otherwise."""
    try:
        return sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NewsletterError(f"cannot read {file} ({getattr(exc, 'strerror', None) or exc}); give a UTF-8 "
                              f"text file") from None


IssueOption = Annotated[
    int | None, typer.Option("--issue", "-i", min=1, max=MAX_NUMBER, help="Only this issue number.")
]


@digest_app.command("render")
def digest_render(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for issue.html, issue.txt and sample.eml.")],
    issue: IssueOption = None,
    config: ConfigOption = None,
) -> None:
    """Write an issue's HTML, text and one sample .eml exactly as it would be sent (default: the draft of the
    next issue when summaries are waiting, else the newest issue).

    Example: newsletter digest render --out preview/
    """
    from newsletter.issues import write_preview

    with _opened(config) as (loaded, engine):
        files = write_preview(engine, loaded, out, issue)
    console.print(f"{files.description}:\n  {files.html}\n  {files.text}\n  {files.eml}")


@digest_app.command("send")
def digest_send(
    issue: IssueOption = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, max=10_000, help="Deliveries claimed at a time (default: delivery.batch_size).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Send even when the pre-send checks find errors.")] = False,
    if_due: Annotated[
        bool,
        typer.Option(
            "--if-due",
            help="For system cron: do the newest firing of schedule.cron if nobody has yet (the next issue "
            "from what was waiting then; within schedule.grace_hours, else it is recorded as missed), then "
            "send what is due. Exactly what `newsletter run` does.",
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Send what is due of every unfinished issue (or only --issue N) through the configured backend.
    Already-sent deliveries are never sent again, so it is safe to run after an interruption or a crash.
    The pre-send checks (`digest check`) run first; an error stops the send unless --force. Ctrl-C or
    SIGTERM finishes the messages in flight, records them and stops. A database that goes away meanwhile
    is waited for, up to database.outage_limit.

    Example: newsletter digest send   (from cron: */10 * * * * newsletter digest send --if-due)
    """
    from newsletter.backends import create_backend
    from newsletter.delivery import send_issue, send_unfinished
    from newsletter.schedule import run_if_due

    if if_due:
        if issue is not None:
            raise NewsletterError("--if-due decides which issue is due; leave out --issue")
        stop = threading.Event()
        with _opened(config) as (loaded, engine), _stop_on_signals(stop):
            # cron's replacement for `newsletter run` logs like it; -v still decides how much
            configure_logging(logging.getLogger().level, loaded.schedule.log_format)
            result = run_if_due(engine, loaded, halt=stop)
        for line in result.lines or ["nothing is due"]:
            console.print(Text(line))
        return
    with _opened(config) as (loaded, engine):
        _check_before_sending(engine, loaded, issue, force)
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


def _check_before_sending(engine: Engine, config: Config, number: int | None, force: bool) -> None:
    """Run the pre-send checks on every issue about to be sent; raise NewsletterError on an error unless forced."""
    from newsletter.checks import check_issue
    from newsletter.db import session
    from newsletter.issues import SENDABLE, unfinished_issues

    if number is None:
        with session(engine) as db:
            numbers = [unfinished.number for unfinished in unfinished_issues(db) if unfinished.status in SENDABLE]
    else:
        numbers = [number]
    for checked in numbers:
        report = check_issue(engine, config, checked)
        for finding in report.findings:
            errors.print(Text(f"issue #{checked}: {finding.line()}"), soft_wrap=True)
        if not report.ok and not force:
            raise NewsletterError(
                f"issue #{checked} fails the pre-send checks above; fix them, or send anyway with --force"
            )


@digest_app.command("check")
def digest_check(issue: IssueOption = None, config: ConfigOption = None) -> None:
    """Check an issue as it would be sent (default: a draft of the next one, else the newest): HTML size,
    alt texts, line lengths, links, unsubscribe link, postal address, subject and preheader. Exits 1 on errors.

    Example: newsletter digest check --issue 3
    """
    from newsletter.checks import check_issue

    with _opened(config) as (loaded, engine):
        report = check_issue(engine, loaded, issue)
    for finding in report.findings:
        (errors if finding.severity == "error" else console).print(Text(finding.line()), soft_wrap=True)
    errors_found = sum(finding.severity == "error" for finding in report.findings)
    console.print(f"{report.description}: {errors_found} errors, {len(report.findings) - errors_found} warnings")
    if not report.ok:
        raise typer.Exit(1)


@digest_app.command("status")
def digest_status(issue: IssueArgument = None, config: ConfigOption = None) -> None:
    """Show an issue's deliveries by state, the sending rate, the errors grouped by reason and the clicks on
    each item (with tracking.clicks).

    Example: newsletter digest status 3
    """
    from rich.table import Table

    from newsletter.click_report import issue_clicks
    from newsletter.issues import issue_status
    from newsletter.render import span_label

    with _opened(config) as (loaded, engine):
        found = issue_status(engine, issue)
        clicks = issue_clicks(engine, loaded, found.issue.number)
    i = found.issue
    if i.status is IssueStatus.DRAFT:
        console.print(f"issue #{i.number} is the next issue, not prepared yet (the editor's draft): "
                      "`newsletter digest render` shows it, `newsletter digest prepare` prepares it",
                      soft_wrap=True)
        return
    console.print(Text(f"issue #{i.number} ({span_label(loaded, i)}) \"{i.subject}\": {i.status.value}"))
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
    _print_clicks(clicks)


def _print_clicks(report: IssueClicks) -> None:
    """An issue's clicks: the totals, then a row per item."""
    from rich.table import Table

    console.print(report.summary_line())
    if report.counted or report.clicks:
        table = Table("item", "clicks", "likely human", "title")
        for item in report.items:
            table.add_row("" if item.position is None else str(item.position), f"{item.clicks:,}",
                          f"{item.human_clicks:,}", Text(item.title))
        console.print(table)


@digest_app.command("clicks")
def digest_clicks(
    issue: IssueArgument = None,
    every: Annotated[bool, typer.Option("--all", help="Every issue, oldest first.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the CSV to this file.", dir_okay=False)
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Show the clicks on each item of an issue (default: the newest): every click, and the likely human
    ones (not from a known link scanner's user agent, nor from a burst from one network right after
    delivery). Columns of the CSV: issue, item, title, url, clicks, likely_human_clicks. Clicks are counted
    with tracking.clicks: true (docs/engagement.md).

    Example: newsletter digest clicks 3 --out clicks-3.csv
    Example: newsletter digest clicks --all --csv > clicks.csv
    """
    from newsletter.click_report import every_issue_clicks, issue_clicks, write_csv

    if every and issue is not None:
        raise NewsletterError("give an issue number or --all, not both")
    with _opened(config) as (loaded, engine):
        reports = every_issue_clicks(engine, loaded) if every else [issue_clicks(engine, loaded, issue)]
    if out is not None:
        rows = _write(out, lambda handle: write_csv(reports, handle))
        errors.print(f"wrote {rows} rows to {out}")
    elif as_csv:
        write_csv(reports, sys.stdout)
    else:
        for report in reports:
            console.print(Text(f"issue #{report.number} \"{report.subject}\""))
            _print_clicks(report)


@digest_app.command("pause")
def digest_pause(issue: IssueArgument = None, config: ConfigOption = None) -> None:
    """Pause sending an issue; a running send stops after the messages in flight.

    Example: newsletter digest pause 3
    """
    from newsletter.issues import pause_issue

    with _opened(config) as (_config, engine):
        found = pause_issue(engine, issue)
    console.print(f"issue #{found.number} is paused; `newsletter digest resume {found.number}` goes on")


@digest_app.command("resume")
def digest_resume(issue: IssueArgument = None, config: ConfigOption = None) -> None:
    """Resume a paused issue; the next `digest send` (or the scheduler) sends the rest.

    Example: newsletter digest resume 3 && newsletter digest send
    """
    from newsletter.issues import resume_issue

    with _opened(config) as (_config, engine):
        found = resume_issue(engine, issue)
    console.print(f"issue #{found.number} will be sent again by the next `newsletter digest send`")


@digest_app.command("retry-failed")
def digest_retry_failed(issue: IssueArgument = None, config: ConfigOption = None) -> None:
    """Queue an issue's failed deliveries again (bounced or unsubscribed people are still skipped).

    Example: newsletter digest retry-failed 3 && newsletter digest send
    """
    from newsletter.issues import retry_failed

    with _opened(config) as (_config, engine):
        found, count = retry_failed(engine, issue)
    console.print(f"issue #{found.number}: {count} failed deliveries queued again")


@digest_app.command("cancel")
def digest_cancel(issue: IssueArgument = None, config: ConfigOption = None) -> None:
    """Cancel an issue: nothing more is sent for it; what was not sent is marked skipped.

    Example: newsletter digest cancel 3
    """
    from newsletter.issues import cancel_issue

    with _opened(config) as (_config, engine):
        found, count = cancel_issue(engine, issue)
    console.print(f"issue #{found.number} cancelled; {count} deliveries skipped")


@bounces_app.command("process")
def bounces_process(config: ConfigOption = None) -> None:
    """Read the bounce mailbox (bounces.mailbox): bounce reports, complaints and mailto: unsubscribes.

    Example: newsletter bounces process --config config.yaml
    """
    from newsletter.bounces import process_bounces

    with _opened(config) as (loaded, engine):
        result = process_bounces(engine, loaded)
    console.print(result.summary_line())


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    forwarded_allow_ips: Annotated[
        str, typer.Option(help="Proxies trusted to report the client's IP (X-Forwarded-For), comma-separated.")
    ] = "127.0.0.1",
    config: ConfigOption = None,
) -> None:
    """Serve the public pages: subscribe, confirm, unsubscribe, preferences and the archive, until Ctrl-C.

    Example: newsletter serve --port 8000 --config config.yaml   (behind a proxy serving newsletter.site_url)
    """
    import uvicorn

    from newsletter.web.app import create_app

    logging.getLogger().setLevel(logging.INFO)
    with _opened(config) as (loaded, engine):
        uvicorn.run(create_app(loaded, engine), host=host, port=port, proxy_headers=True,
                    forwarded_allow_ips=forwarded_allow_ips, log_config=None)


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run the scheduler until Ctrl-C/SIGTERM: at each cron time the next issue from what is waiting
    (catching up a missed firing within the grace period), due sends, and the other jobs. Only one process
    runs jobs at a time; a second one waits and takes over when the first stops. A database that goes away
    (a restart, a lock) is waited for, however long it takes.

    Example: newsletter run --config /etc/newsletter/config.yaml
    """
    from newsletter.schedule import run_scheduler

    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        logging.getLogger(__name__).info("received %s, stopping after the window in flight", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)
    with _opened(config) as (loaded, engine):
        configure_logging(logging.INFO, loaded.schedule.log_format)
        run_scheduler(engine, loaded, stop)


@app.command()
def worker(
    until_done: Annotated[
        bool, typer.Option("--until-done", help="Exit once no issue has a queued or leased delivery left.")
    ] = False,
    poll: Annotated[float, typer.Option(min=0.1, max=3600, help="Seconds between looks for due work.")] = 5.0,
    batch_size: Annotated[
        int | None, typer.Option(min=1, max=10_000, help="Deliveries claimed at a time (default: delivery.batch_size).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Send even when the pre-send checks find errors.")] = False,
    config: ConfigOption = None,
) -> None:
    """Send prepared issues side by side with other workers (on this machine or others sharing a PostgreSQL
    database), until Ctrl-C/SIGTERM. Each claims batches of deliveries under a lease (FOR UPDATE SKIP
    LOCKED on PostgreSQL), so no delivery is sent by two workers; a dead worker's batch is taken over when
    its lease (delivery.lease) expires. An issue failing the pre-send checks is left alone unless --force
    (checked again every minute); a mail server that is down is tried again every --poll seconds; a
    database that goes away (a restart, a lock) is waited for. With --until-done: exit 1 when the server
    cannot be reached, an issue fails its checks, or the database stays away longer than
    database.outage_limit.

    Example: newsletter worker --config config.yaml   (start one per core or per host; --until-done for a batch job)
    """
    from newsletter.backends import create_backend
    from newsletter.delivery import work

    refused: set[int] = set()

    def ready(number: int) -> bool:
        try:
            _check_before_sending(engine, loaded, number, force)
        except NewsletterError as exc:
            errors.print(Text(f"error: {exc}"), soft_wrap=True)
            refused.add(number)
            return False
        refused.discard(number)
        return True

    stop = threading.Event()
    with _opened(config) as (loaded, engine), _stop_on_signals(stop):
        configure_logging(logging.INFO, loaded.schedule.log_format)
        backend = create_backend(loaded)
        reports = work(engine, loaded, backend, ready=ready, until_done=until_done, poll=poll,
                       batch_size=batch_size, stop=stop)
    for report in reports:
        console.print(Text(f"{report.summary_line()} (via {backend.describe()})"))
    if not reports and not refused:
        console.print("nothing to send: no prepared issue has deliveries due")
    if until_done and refused:
        numbers = ", ".join(f"#{number}" for number in sorted(refused))
        raise NewsletterError(f"issue {numbers} not sent: it fails the pre-send checks above; fix them, or send "
                              "anyway with --force")


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON, for monitoring.")] = False,
    config: ConfigOption = None,
) -> None:
    """Show the next scheduled digest, the last issue and its deliveries, waiting summaries, subscribers
    by status, recent firings that sent nothing (missed, empty) and recent job failures.

    Example: newsletter status --json
    """
    from newsletter.status import collect_status, status_lines

    with _opened(config) as (loaded, engine):
        report = collect_status(engine, loaded)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        return
    for line in status_lines(report):
        console.print(Text(line))


@app.command()
def preview(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default: preview.host, 127.0.0.1).")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port (default: preview.port, 8025).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Serve a live preview of the next digest (or any past issue) for editors, until Ctrl-C. It reloads
    itself when a template, the config or a summary changes. Any address but 127.0.0.1 needs a token
    (NEWSLETTER_PREVIEW_TOKEN or preview.token).

    Example: newsletter preview --port 8025, then open http://127.0.0.1:8025
    """
    import uvicorn  # only this command needs the server: other commands start faster without it

    from newsletter.config import DEFAULT_CONFIG_FILE, load_config
    from newsletter.web.preview import LOOPBACK, create_preview_app

    path = Path(_chosen(config) or os.environ.get("NEWSLETTER_CONFIG") or DEFAULT_CONFIG_FILE)
    settings = load_config(path).preview
    host = host or settings.host
    port = port or settings.port
    app_ = create_preview_app(path, require_token=host not in LOOPBACK)
    shown = f"[{host}]" if ":" in host else host
    console.print(f"previewing {path} at http://{shown}:{port}/ (Ctrl-C stops)")
    uvicorn.run(app_, host=host, port=port, log_level="warning", timeout_graceful_shutdown=1)


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
    from newsletter.config import load_config
    from newsletter.demo import run_demo

    config = _chosen(config)
    result = run_demo(directory, load_config(config) if config else None)
    console.print(result.report(_how_to_run_again()))


def _how_to_run_again() -> str:
    """How the user runs newsletter again from this shell: ``newsletter`` when that is on PATH and is this
    program; else the path they typed (``.venv/bin/newsletter`` after the README's first command)."""
    script = Path(sys.argv[0])
    if script.name == "__main__.py":  # python -m newsletter
        return f"{shlex.quote(sys.executable)} -m newsletter"
    on_path = shutil.which("newsletter")
    if on_path and Path(on_path).resolve() == script.resolve():
        return "newsletter"
    return shlex.quote(sys.argv[0])


def main() -> None:
    app()
