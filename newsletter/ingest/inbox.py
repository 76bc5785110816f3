"""The inbox folder (``ingest.inbox``): drop summary files in, ``newsletter run`` ingests them.

Each file in the folder itself (not in subfolders) is read by the reader for its extension and stored in
one transaction, then moved to ``processed/``; a file that cannot be ingested moves to ``rejected/`` with
``<name>.error.txt`` beside it saying why. A name already taken there gets a numbered suffix, so nothing is
overwritten.

A file still being written is left alone: hidden files and names ending in ``.part``, ``.tmp``,
``.crdownload`` or ``~`` are skipped, and so is any file modified less than ``ingest.inbox_settle_seconds``
ago. Writers that can should write under a temporary name and rename when done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine

from newsletter.config import Config
from newsletter.errors import IngestError, NewsletterError
from newsletter.ingest.base import readers_by_extension
from newsletter.ingest.store import IngestReport, ingest_items, read_file, undated_date
from newsletter.models import utcnow

log = logging.getLogger(__name__)

PROCESSED = "processed"
REJECTED = "rejected"
_IN_PROGRESS = (".part", ".tmp", ".crdownload", ".partial", "~")


@dataclass
class InboxResult:
    """What one pass over the inbox did: files moved to processed/ and to rejected/, files left to settle."""

    processed: list[Path] = field(default_factory=list)
    rejected: list[Path] = field(default_factory=list)
    waiting: list[Path] = field(default_factory=list)
    report: IngestReport = field(default_factory=IngestReport)

    def summary_line(self) -> str:
        return (
            f"inbox: processed {len(self.processed)}, rejected {len(self.rejected)}, "
            f"waiting {len(self.waiting)} ({self.report.summary_line()})"
        )


def process_inbox(engine: Engine, config: Config, *, now: datetime | None = None) -> InboxResult:
    """Ingest the settled files in ``ingest.inbox`` (the scheduler's job, every
    ``schedule.intervals.inbox`` minutes). Does nothing when no inbox is configured; creates the folder and
    its ``processed/`` and ``rejected/`` subfolders if missing.

    Never raises for a bad file (it is moved to ``rejected/``). Raises NewsletterError if the folder
    cannot be created; database errors propagate and leave the file where it was, to be tried again.
    """
    result = InboxResult()
    folder = config.inbox_dir
    if folder is None:
        return result
    try:
        for name in (PROCESSED, REJECTED):
            (folder / name).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NewsletterError(f"cannot create the inbox folder {folder} ({exc.strerror}); check ingest.inbox") from None
    readers = readers_by_extension()
    moment = (now or utcnow()).timestamp()
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.name.lower().endswith(_IN_PROGRESS):
            continue
        if moment - path.stat().st_mtime < config.ingest.inbox_settle_seconds:
            result.waiting.append(path)
            continue
        try:
            items = read_file(path, readers, config.ingest)
            undated = undated_date(path, readers)
            result.report.add(ingest_items(engine, items, origin=f"inbox:{path.name}", undated=undated))
        except IngestError as exc:
            log.warning("inbox: rejected %s", exc)
            target = _move(path, folder / REJECTED)
            target.with_name(target.name + ".error.txt").write_text(f"{exc}\n", encoding="utf-8", errors="replace")
            result.rejected.append(target)
            continue
        result.processed.append(_move(path, folder / PROCESSED))
    if result.processed or result.rejected:
        log.info(result.summary_line())
    return result


def _move(path: Path, folder: Path) -> Path:
    """``path`` moved into ``folder`` under a name not taken there yet (``a.txt``, ``a-1.txt``, ...)."""
    target, number = folder / path.name, 0
    while target.exists():
        number += 1
        target = folder / f"{path.stem}-{number}{path.suffix}"
    return path.rename(target)
