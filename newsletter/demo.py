"""``newsletter demo``: the whole pipeline on bundled samples, in a folder of its own.

It writes a config file into the folder (so every other command can be tried on the result with
``--config``), starts from a fresh SQLite database there, ingests the sample summaries, imports the example
subscribers, prepares the first issue, renders it and sends it through the file backend.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from newsletter.backends import create_backend
from newsletter.config import Config, load_config
from newsletter.db import open_database
from newsletter.delivery import SendReport, send_unfinished
from newsletter.errors import NewsletterError
from newsletter.ingest import IngestReport, ingest_paths
from newsletter.issues import PrepareResult, PreviewFiles, prepare_issue, write_preview
from newsletter.resources import sample_subscribers_csv, sample_summaries_dir
from newsletter.subscribers import ImportReport, import_csv
from newsletter.tokens import key_file, write_key_file

DEMO_MARKER = "# Written by `newsletter demo`"
DEMO_SETTINGS = {
    "newsletter": {
        "name": "Research Weekly",
        "sender": "Research Weekly <digest@example.org>",
        "postal_address": "Research Weekly, 1 Example Street, 12345 Example City, Country",
        "site_url": "https://news.example.org",
    },
    "database": {"url": "sqlite:///newsletter.db"},
    "schedule": {"cron": "0 8 * * mon", "timezone": "Europe/London"},
    "backend": {"name": "file", "options": {"outbox": "outbox"}},
}


@dataclass(frozen=True)
class DemoResult:
    config: Config
    ingested: IngestReport
    imported: ImportReport
    prepared: PrepareResult
    preview: PreviewFiles
    sent: SendReport
    outbox: Path

    def report(self, command: str = "newsletter") -> str:
        """What the demo did and where its files are; ``command`` is how to run newsletter again from here."""
        directory = self.config.base_dir
        return "\n".join(
            [
                f"summaries: {self.ingested.summary_line()}",
                f"subscribers: {self.imported.summary_line()}",
                self.prepared.message(),
                f"sent: {self.sent.summary_line()}",
                "",
                f"rendered HTML:  {self.preview.html}",
                f"plain text:     {self.preview.text}",
                f"sample message: {self.preview.eml}",
                f"outbox:         {self.outbox} ({len(list(self.outbox.glob('*.eml')))} .eml files)",
                "",
                f"Try the other commands on it: {command} digest status --config "
                f"{shlex.quote(str(directory / 'config.yaml'))}",
            ]
        )


def _refuse_foreign_folder(directory: Path, config_path: Path) -> None:
    """The demo replaces its own earlier data; it never touches a folder that holds anything else."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise NewsletterError(f"{directory} is a file; --dir needs a folder")
    if not any(directory.iterdir()):
        return
    try:
        ours = config_path.read_text(encoding="utf-8").startswith(DEMO_MARKER)
    except (OSError, UnicodeDecodeError):
        ours = False
    if not ours:
        raise NewsletterError(f"{directory} already holds files that are not from a demo; choose another --dir")


def demo_settings(user_config: Config | None) -> dict[str, Any]:
    """The demo's settings: built-in ones, or the user's newsletter details and templates with the demo's
    own database and file outbox (so trying the demo never touches real subscribers)."""
    if user_config is None:
        return DEMO_SETTINGS
    settings = {
        **DEMO_SETTINGS,
        "newsletter": user_config.newsletter.model_dump(exclude_none=True),
        "schedule": user_config.schedule.model_dump(),
    }
    if user_config.templates_dir.is_dir():
        settings["templates"] = str(user_config.templates_dir)
    return settings


def run_demo(directory: Path, user_config: Config | None = None) -> DemoResult:
    """Run the pipeline end to end in ``directory`` (created if needed; its earlier demo data is replaced)."""
    directory = directory.resolve()
    config_path = directory / "config.yaml"
    _refuse_foreign_folder(directory, config_path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in [*directory.glob("newsletter.db*"), *directory.glob("outbox/*.eml")]:
            stale.unlink()
        config_path.write_text(
            f"{DEMO_MARKER}; see config.yaml in the project for every setting.\n"
            + yaml.safe_dump(demo_settings(user_config), sort_keys=False, allow_unicode=True),
            encoding="utf-8",
        )
    except OSError as exc:
        raise NewsletterError(f"cannot prepare the demo folder {directory} ({exc.strerror}); pass --dir") from None
    config = load_config(config_path)
    if not os.environ.get("NEWSLETTER_SECRET_KEY") and not key_file(config).exists():
        write_key_file(key_file(config))  # the demo's own key, in its folder: nothing to warn about
    engine = open_database(config)
    try:
        ingested = ingest_paths(engine, [sample_summaries_dir()])
        imported = import_csv(engine, sample_subscribers_csv(), source="demo")
        prepared = prepare_issue(engine, config)
        preview = write_preview(engine, config, directory / "rendered")
        backend = create_backend(config)
        (sent,) = send_unfinished(engine, config, backend)
    finally:
        engine.dispose()
    return DemoResult(config, ingested, imported, prepared, preview, sent, config.resolve("outbox"))
