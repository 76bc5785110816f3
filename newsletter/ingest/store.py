"""Writing summaries: find the files, read each with its reader, upsert the items of many files at a time.

A file is all or nothing: one bad item rejects the whole file and nothing of it is written, while the
other files of the run still go in. Every file is read and checked whole before anything of it is written;
the good ones are then upserted :data:`FILES_PER_TRANSACTION` at a time (one transaction per file cost
more than reading the file). Summaries are matched by :func:`~newsletter.ingest.base.compute_uid`,
so ingesting the same file again updates rows instead of duplicating them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from newsletter.config import IngestSection
from newsletter.db import session
from newsletter.errors import IngestError, NewsletterError
from newsletter.ingest.base import (
    Reader,
    SummaryIn,
    compute_uid,
    explain,
    reader_for,
    readers_by_extension,
    unscoped_uid,
)
from newsletter.models import Summary, utcnow

log = logging.getLogger(__name__)

# The Summary columns an ingested item sets (uid is the key); ingested_at, issue_id ... are ours.
CONTENT_FIELDS = set(SummaryIn.model_fields) - {"uid"}
FILES_PER_TRANSACTION = 1000  # a crash loses at most this many files' work; a run of them commits in ~0.1 s
_UIDS_PER_QUERY = 500  # well under every database's limit of bound parameters per statement


@dataclass(frozen=True)
class _Source:
    """The items of one file (or feed, or request), by uid, ready to upsert."""

    origin: str
    latest: dict[str, SummaryIn]
    undated: datetime | None


@dataclass(frozen=True)
class Rejection:
    """A file that was not ingested, and the user-facing reason."""

    path: Path
    message: str


@dataclass
class IngestReport:
    """What an ingest did: summaries counted once each, and the files rejected whole."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # the stored rows, in input order (one per uid)

    def summary_line(self) -> str:
        """E.g. ``added 3, updated 1, unchanged 2, rejected 1`` (rejected counts files)."""
        return (
            f"added {self.added}, updated {self.updated}, unchanged {self.unchanged}, "
            f"rejected {len(self.rejected)}"
        )

    def add(self, other: IngestReport) -> None:
        """Fold ``other`` into this report."""
        self.added += other.added
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.rejected.extend(other.rejected)
        self.ids.extend(other.ids)


def find_files(paths: Iterable[Path]) -> list[Path]:
    """The files ``ingest_paths`` will handle, in order: each folder expanded recursively and sorted.

    Inside folders, hidden files and folders and files no reader handles are skipped; a path given
    directly is kept whatever it is (a missing or unsupported one becomes a rejection). Duplicates are
    dropped. Use the length of this list as the total for ``on_file`` progress.
    """
    extensions = set(readers_by_extension())
    found: dict[Path, None] = {}
    for path in paths:
        if not path.is_dir():
            found.setdefault(path)
            continue
        for candidate in sorted(path.rglob("*")):
            hidden = any(part.startswith(".") for part in candidate.relative_to(path).parts)
            if not hidden and candidate.is_file() and candidate.suffix.lower() in extensions:
                found.setdefault(candidate)
    return list(found)


def ingest_paths(
    engine: Engine,
    paths: Sequence[Path],
    *,
    on_file: Callable[[Path], None] | None = None,
    settings: IngestSection | None = None,
) -> IngestReport:
    """Ingest files and folders of summaries; ``on_file`` runs after each file is read and checked.
    ``settings`` (default: the defaults) gives the size limit and the extractive summary length. The good
    files are written :data:`FILES_PER_TRANSACTION` at a time, in order (a uid in two files: the later wins).

    Never raises for a bad, missing or unsupported file: it is reported in ``rejected``, its message
    starting with the path. Whatever a reader raises for a file (see :func:`read_file`) rejects that file
    only, so one file cannot end the run.

    Raises IngestError if a registered reader plugin cannot be loaded. Everything else propagates and
    ends the run, the files before it committed: database errors and ``NewsletterError``s other than
    IngestError (a ConfigError is never swallowed); the files of earlier transactions stay written.
    """
    readers = readers_by_extension()
    report = IngestReport()
    pending: list[_Source] = []
    for path in find_files(paths):
        try:
            items = read_file(path, readers, settings or IngestSection())
            pending.append(_source(items, str(path), undated_date(path, readers)))
        except IngestError as exc:
            log.info("rejected %s", exc)  # the caller reports rejections to the user
            report.rejected.append(Rejection(path, str(exc)))
        if len(pending) >= FILES_PER_TRANSACTION:
            report.add(_store(engine, pending))
            pending = []
        if on_file is not None:
            on_file(path)
    if pending:
        report.add(_store(engine, pending))
    return report


def read_file(path: Path, readers: dict[str, type[Reader]], settings: IngestSection) -> list[SummaryIn]:
    """The summaries in ``path``, by the reader for its extension; IngestError for a file to reject
    (missing, unsupported, larger than ``settings.max_bytes``, or what its reader rejects).

    Any other exception from the reader becomes IngestError ``{path}: {message}`` (one line; a pydantic
    ValidationError about SummaryIn is described the way :func:`~newsletter.ingest.base.validate_item` does):
    a parser library's own error (PyYAML's ReaderError, an XML parser's), a RecursionError, or a bug in a
    reader, whose traceback goes to the log. Only a NewsletterError that is not an IngestError, and
    KeyboardInterrupt, pass through. Mailman's runners do the same with a message they cannot handle: set
    it aside with the reason, and go on with the next.
    """
    if not path.exists():
        raise IngestError(f"{path}: no such file or folder; check the path")
    reader = reader_for(path, readers, settings)
    size = path.stat().st_size
    if size > settings.max_bytes:
        raise IngestError(
            f"{path}: {size:,} bytes is over the limit of {settings.max_bytes:,} (ingest.max_bytes); "
            f"split the file or raise the limit"
        )
    try:
        return reader.read(path)
    except NewsletterError:
        raise
    except ValueError as exc:
        log.debug("%s: %s.read raised", path, type(reader).__name__, exc_info=True)
        is_ours = isinstance(exc, ValidationError) and exc.title == SummaryIn.__name__
        message = explain(exc)[1] if is_ours else " ".join(str(exc).split()) or type(exc).__name__
        raise IngestError(f"{path}: {message}") from exc
    except Exception as exc:  # noqa: BLE001 - any failure reading one file rejects that file, nothing more
        log.info("%s: the %s reader failed", path, type(reader).__name__, exc_info=True)  # shown with -v
        reason = " ".join(str(exc).split())[:300]
        raise IngestError(
            f"{path}: the {type(reader).__name__} failed on it ({type(exc).__name__}"
            f"{': ' + reason if reason else ''}); check the file, and report the failure with the details -v shows"
        ) from exc


def undated_date(path: Path, readers: dict[str, type[Reader]]) -> datetime | None:
    """Now, if the reader for ``path`` dates undated items with their ingest time (``Reader.dates_undated``)."""
    reader = readers.get(path.suffix.lower())
    return utcnow() if reader is not None and reader.dates_undated else None


def ingest_items(
    engine: Engine, items: Sequence[SummaryIn], *, origin: str, undated: datetime | None = None
) -> IngestReport:
    """Upsert ``items`` by uid in one transaction, recording ``origin`` (e.g. a file) on new and changed rows.

    A changed item updates its row's content and ``updated_at``; ``ingested_at``, ``issue_id`` and
    ``excluded`` are never touched, so a summary already sent stays attached to its issue. Of several
    items with one uid, the last wins. ``undated``, if given, is the date of an item without one when it is
    first stored; later, such an item keeps the date it was stored with (a feed's undated items).
    """
    return _store(engine, [_source(items, origin, undated)])


def _source(items: Sequence[SummaryIn], origin: str, undated: datetime | None) -> _Source:
    # A file name's bytes that are not UTF-8 come as lone surrogates, which no database can store: U+FFFD.
    storable = "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in origin)
    return _Source(storable, {compute_uid(item): item for item in items}, undated)


def _store(engine: Engine, sources: Sequence[_Source]) -> IngestReport:
    """Upsert every source's items, in order, in one transaction (retried once after a concurrent insert)."""
    try:
        return _upsert(engine, sources)
    except IntegrityError:
        # Another process inserted one of these uids since we looked; now they exist, so update instead.
        log.info("%s: concurrent insert of the same summaries; retrying once", sources[0].origin)
        return _upsert(engine, sources)


def _upsert(engine: Engine, sources: Sequence[_Source]) -> IngestReport:
    report = IngestReport()
    now = utcnow()
    rows: list[Summary] = []
    with session(engine) as db, db.begin():
        existing = _rows_by_uid(db, list({uid: None for source in sources for uid in source.latest}))
        for source in sources:
            counted = IngestReport()
            existing.update(_adopt_unscoped(db, source.latest, existing, source.origin))
            for uid, item in source.latest.items():
                rows.append(_upsert_one(db, existing, uid, item, source, now, counted))
            log.info("%s: %s", source.origin, counted.summary_line())
            report.add(counted)
        db.flush()
        report.ids = [row.id for row in rows if row.id is not None]
    return report


def _upsert_one(
    db: Session, existing: dict[str, Summary], uid: str, item: SummaryIn, source: _Source, now: datetime,
    report: IngestReport,
) -> Summary:
    """The row for ``uid``, added or updated from ``item`` (and counted in ``report``); a new row joins
    ``existing``, so that a later source of the same transaction updates it."""
    values = item.model_dump(include=CONTENT_FIELDS)
    row = existing.get(uid)
    if source.undated is not None and values["published_at"] is None:
        values["published_at"] = _as_utc(row.published_at) if row is not None else source.undated
    if row is None:
        row = Summary(uid=uid, origin=source.origin, ingested_at=now, updated_at=now, **values)
        db.add(row)
        existing[uid] = row
        report.added += 1
    elif _same_content(row, values):
        report.unchanged += 1
    else:
        for name, value in values.items():
            setattr(row, name, value)
        row.origin = source.origin
        row.updated_at = now
        report.updated += 1
    return row


def _adopt_unscoped(
    db: Session, latest: dict[str, SummaryIn], existing: dict[str, Summary], origin: str
) -> dict[str, Summary]:
    """Rows stored under a bare feed guid before guids were scoped to their feed, renamed to the scoped uid.

    Only a row last written by the same ``origin`` (the feed's URL, or the file) is taken: that row is this
    feed's item, so it is updated in place (keeping its issue and ingest time) instead of duplicated. A row
    that another feed overwrote under the same bare guid stays that feed's; this one gets a new row.
    """
    wanted = {
        legacy: uid
        for uid in latest
        if uid not in existing and (legacy := unscoped_uid(uid)) is not None and legacy not in latest
    }
    adopted = {}
    for legacy, row in _rows_by_uid(db, list(wanted)).items():
        if row.origin == origin:
            row.uid = wanted[legacy]
            adopted[row.uid] = row
    if adopted:
        log.info("%s: %d summaries stored under a bare feed guid now have their feed-scoped uid", origin, len(adopted))
    return adopted


def _rows_by_uid(db: Session, uids: list[str]) -> dict[str, Summary]:
    found: dict[str, Summary] = {}
    for start in range(0, len(uids), _UIDS_PER_QUERY):
        chunk = uids[start : start + _UIDS_PER_QUERY]
        rows = db.exec(select(Summary).where(Summary.uid.in_(chunk)))  # type: ignore[attr-defined]
        found.update((row.uid, row) for row in rows)
    return found


def _same_content(row: Summary, values: dict[str, Any]) -> bool:
    return all(_as_utc(getattr(row, name)) == value for name, value in values.items())


def _as_utc(value: Any) -> Any:
    # SQLite hands datetimes back without their timezone; everything we store is UTC.
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
