"""The subscriber list as the operator manages it: add, import, list, remove, export, erase.

Addresses are normalised with email-validator and unique case-insensitively. Nothing here ever moves an
``unsubscribed``, ``bounced`` or ``complained`` address back to ``active``: only someone who unsubscribed
can come back, by subscribing again (double opt-in, :mod:`newsletter.subscriptions`). ``bounced`` and
``complained`` are final: not even an unsubscribe request changes them, so no subscribe form can undo
them. An erased address leaves only a hash in the suppression list, and nothing adds it back.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import logging
import multiprocessing
import os
import re
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Engine, bindparam, column, delete, func, insert, literal, table, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from newsletter.db import session
from newsletter.errors import InvalidAddress, NewsletterError
from newsletter.models import (
    Delivery,
    Event,
    EventKind,
    Issue,
    Subscriber,
    SubscriberClick,
    SubscriberStatus,
    Suppression,
    new_token,
    new_tokens,
    utcnow,
)

log = logging.getLogger(__name__)

# Never mailed again, whatever anyone asks: an address that does not exist, or a person who reported us as spam.
FINAL_STATUSES = (SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED)
_FINAL_REASONS = {
    SubscriberStatus.BOUNCED: "its mail server refused our mail",
    SubscriberStatus.COMPLAINED: "its owner reported our mail as spam",
}

EXPORT_COLUMNS = ["email", "name", "status", "topics", "created_at", "confirmed_at", "unsubscribed_at"]
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]+")  # and lone surrogates (no UTF-8)


def normalise_address(raw: str) -> str:
    """The canonical form of an address; raises InvalidAddress saying why it is not one.

    The form is all ASCII, an international domain in its IDNA spelling (``xn--...``), which is how it must
    appear in mail headers. Addresses with non-ASCII characters before the @ (which need SMTPUTF8 end to
    end) are refused: the messages we build cannot carry them yet.
    """
    try:
        return validate_email(raw.strip(), check_deliverability=False, allow_smtputf8=False).ascii_email
    except EmailNotValidError as exc:
        raise InvalidAddress(f"{raw.strip()!r} is not a valid email address: {exc}") from None


def clean_text(raw: str | None, limit: int) -> str | None:
    """``raw`` as one line of at most ``limit`` characters, or None when empty: control characters (CR, LF
    and NUL, which PostgreSQL cannot store, included) and lone surrogates (which no database can encode)
    become spaces, and runs of whitespace one space."""
    if raw is None:
        return None
    return " ".join(_CONTROL_CHARACTERS.sub(" ", raw).split())[:limit] or None


def clean_name(raw: str | None) -> str | None:
    """A display name as :func:`clean_text` makes it, at most 200 characters."""
    return clean_text(raw, 200)


def find_subscriber(db: Session, address: str) -> Subscriber | None:
    return db.exec(select(Subscriber).where(func.lower(Subscriber.email) == address.lower())).first()


def address_hash(address: str) -> str:
    """The suppression list's key for a normalised address: a SHA-256 of its lowercase form."""
    return hashlib.sha256(b"newsletter-suppression\0" + address.lower().encode()).hexdigest()


def is_suppressed(db: Session, address: str) -> bool:
    """Whether ``address`` (normalised) was erased and must never be added again."""
    return db.exec(select(Suppression.id).where(Suppression.address_hash == address_hash(address))).first() is not None


def _refuse_suppressed(db: Session, address: str) -> None:
    if is_suppressed(db, address):
        raise NewsletterError(f"{address} was erased at its owner's request and must not be added again")


def add_subscriber(engine: Engine, raw_address: str, name: str | None = None, *, source: str = "cli") -> Subscriber:
    """Add an active subscriber, or update the name of an existing one.

    Raises InvalidAddress for a bad address and NewsletterError for an address that left the list.
    """
    address = normalise_address(raw_address)
    with session(engine) as db:
        _refuse_suppressed(db, address)
        existing = find_subscriber(db, address)
        if existing is not None:
            if existing.status in FINAL_STATUSES:
                raise NewsletterError(
                    f"{address} is {existing.status.value} ({_FINAL_REASONS[existing.status]}) and is never "
                    f"mailed again"
                )
            if existing.status not in (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING):
                raise NewsletterError(
                    f"{address} is {existing.status.value}; only the subscriber can rejoin, by subscribing again"
                )
            existing.name = clean_name(name) or existing.name
            existing.updated_at = utcnow()
            db.add(existing)
            db.commit()
            return existing
        subscriber = Subscriber(**_new_subscriber_values(address, clean_name(name), source))
        db.add(subscriber)
        db.flush()
        db.add(Event(subscriber_id=subscriber.id, kind=EventKind.SUBSCRIBED, detail={"source": source}))
        db.commit()
        return subscriber


def _new_subscriber_values(address: str, name: str | None, source: str) -> dict[str, Any]:
    """Column values for an active subscriber added by the operator (add or import)."""
    now = utcnow()
    return {
        "email": address,
        "name": name,
        "status": SubscriberStatus.ACTIVE,
        "topics": [],
        "token": new_token(),
        "consent_source": source,
        "consent_at": now,
        "confirmed_at": now,
        "bounce_score": 0,
        "created_at": now,
        "updated_at": now,
    }


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    left_list: int = 0  # unsubscribed / bounced / complained: kept as they are
    suppressed: int = 0  # erased addresses: never added again
    bad_rows: list[tuple[int, str]] = field(default_factory=list)  # (line number, problem)
    duplicates: list[tuple[int, int, str]] = field(default_factory=list)  # (line, line of the first, address)
    ignored_columns: list[str] = field(default_factory=list)  # header names other than email and name

    def summary_line(self) -> str:
        """Counts that add up to the file's data rows (blank lines aside)."""
        return (
            f"added {self.added}, updated {self.updated}, unchanged {self.unchanged}, "
            f"not reactivated {self.left_list}, erased (skipped) {self.suppressed}, "
            f"duplicates (skipped) {len(self.duplicates)}, bad rows {len(self.bad_rows)}"
        )

    def notes(self) -> list[tuple[int, str]]:
        """(line number, what to know) for what was skipped or ignored without being an error."""
        notes = [(1, "ignored columns: " + ", ".join(self.ignored_columns))] if self.ignored_columns else []
        notes += [(line, f"duplicate of line {first} ({address}), skipped") for line, first, address in self.duplicates]
        return notes


@dataclass(frozen=True)
class _Row:
    line: int
    address: str
    name: str | None


_Raw = tuple[int, str, str | None]  # (line, email as written, name as written)
_Checked = tuple[int, str | None, str | None]  # (line, normalised address or None, cleaned name or the problem)
IMPORT_CHUNK = 5_000  # rows per transaction: the write lock is held for milliseconds, never for the whole file
_STAGING = table("import_staging", column("email"), column("name"), column("token"))  # a temporary table


def import_csv(
    engine: Engine, path: Path, *, source: str | None = None, on_start: Callable[[int], None] | None = None,
    on_row: Callable[[], None] | None = None,
) -> ImportReport:
    """Upsert the subscribers of a CSV file with an ``email`` column (and optionally ``name``).

    The file is read twice, as a stream: once to make sure it parses to the end (a file that is not UTF-8
    CSV is refused before anything is written; ``on_start`` then gets the number of rows), then row by row,
    validating each (``on_row`` is called after each, for a progress bar) and writing them in transactions of :data:`IMPORT_CHUNK` rows, so
    memory stays flat and other writers (a one-click unsubscribe) wait milliseconds, not the whole import.
    In a file of more than two chunks the addresses are validated in helper processes, ahead of the chunk
    being written (email-validator's checks are over half of the work).
    Bad rows are reported by line number and the rest imported. A repeated address (any case) counts once,
    from its first row; the later rows are reported in ``duplicates``, and other columns in
    ``ignored_columns``. An interrupted import can be run again: it is an upsert.

    Raises NewsletterError when the file cannot be read or has no ``email`` column.
    """
    report = ImportReport()
    rows = sum(1 for _ in _records(path, report))
    if on_start:
        on_start(rows)
    first_line: dict[str, int] = {}  # lowercase address -> line of its first row (the one that counts)
    chunk: list[_Row] = []
    writer = _ChunkWriter(engine, source or f"import:{path.name}", path.name, report)
    for row in _valid_rows(path, report, on_row, helper=rows > 2 * IMPORT_CHUNK):
        first = first_line.setdefault(row.address.lower(), row.line)
        if first != row.line:
            report.duplicates.append((row.line, first, row.address))
            continue
        chunk.append(row)
        if len(chunk) >= IMPORT_CHUNK:
            writer.write(chunk)
            chunk = []
    if chunk:
        writer.write(chunk)
    return report


@dataclass(frozen=True)
class _Known:
    id: int
    name: str | None
    status: SubscriberStatus


class _ChunkWriter:
    """Writes one chunk of distinct, valid rows in one transaction and counts what it did into ``report``."""

    def __init__(self, engine: Engine, source: str, filename: str, report: ImportReport) -> None:
        self.engine, self.source, self.report = engine, source, report
        self.event_detail = {"source": filename}

    def write(self, rows: Sequence[_Row]) -> None:
        """Insert the rows whose address is new in one statement, then sort out the others (already on
        the list) from what the database holds, inside the same transaction."""
        keys = [row.address.lower() for row in rows]
        tally = ImportReport()
        with session(self.engine) as db:
            suppressed = _suppressed_keys(db, keys)
            tally.suppressed = sum(key in suppressed for key in keys)
            candidates = [(row, key) for row, key in zip(rows, keys, strict=True) if key not in suppressed]
            inserted = self._insert(db, [row for row, _ in candidates]) if candidates else set()
            tally.added = len(inserted)
            on_file = [(row, key) for row, key in candidates if key not in inserted]
            known = _existing_by_address(db, [key for _, key in on_file])
            renamed: list[dict[str, Any]] = []
            for row, key in on_file:
                found = known.get(key)
                if found is not None and found.status not in (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING):
                    tally.left_list += 1
                elif found is not None and row.name and row.name != found.name:
                    renamed.append({"row": found.id, "new_name": row.name})
                else:
                    tally.unchanged += 1
            if renamed:
                subscribers = Subscriber.__table__
                db.connection().execute(
                    update(subscribers).where(subscribers.c.id == bindparam("row"))
                    .values(name=bindparam("new_name"), updated_at=utcnow()),
                    renamed,
                )
                tally.updated = len(renamed)
            db.commit()
        for counter in ("added", "updated", "unchanged", "left_list", "suppressed"):
            setattr(self.report, counter, getattr(self.report, counter) + getattr(tally, counter))

    def _insert(self, db: Session, rows: Sequence[_Row]) -> set[str]:
        """Insert the rows as new active subscribers with their "subscribed" events, skipping addresses
        already on the list (the unique index decides); returns the lowercase addresses inserted.

        The rows go into a temporary table with one plain ``executemany`` of three strings each, and from
        there into ``subscriber`` and ``event`` with one ``INSERT ... SELECT`` each, the values every new
        subscriber shares written once: converting those per row (timestamps, JSON) was most of the
        import's time, ORM objects cost ~1 ms each with SQLModel, and an ORM bulk INSERT ... RETURNING
        sorts its result batches back into parameter order, which made large imports quadratic. Inserting
        first and looking up only the addresses that were already there saves a lookup per new address.
        """
        connection = db.connection()
        # The first statement of the transaction writes to the temporary table only, so on SQLite the
        # INSERT into subscriber below is the first to touch the database and waits for its write lock in
        # the busy handler (a read first would fail at once if another writer committed in between).
        connection.exec_driver_sql(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGING.name} (email VARCHAR(320), name VARCHAR, token VARCHAR(64))"
        )
        connection.execute(delete(_STAGING))
        mark = "?" if connection.dialect.paramstyle == "qmark" else "%s"  # the driver's own executemany:
        connection.exec_driver_sql(  # building SQLAlchemy parameters per row cost more than the INSERT
            f"INSERT INTO {_STAGING.name} (email, name, token) VALUES ({mark}, {mark}, {mark})",
            [(row.address, row.name, token) for row, token in zip(rows, new_tokens(len(rows)), strict=True)],
        )
        subscribers, events = Subscriber.__table__, Event.__table__
        now, column = utcnow(), subscribers.c
        shared = _new_subscriber_values("", None, self.source) | {"created_at": now, "updated_at": now,
                                                                   "consent_at": now, "confirmed_at": now}
        names = [name for name in shared if name not in ("email", "name", "token")]
        staged = select(_STAGING.c.email, _STAGING.c.name, _STAGING.c.token,
                        *(literal(shared[name], column[name].type) for name in names)).where(true())
        dialect_insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
        added = connection.execute(
            dialect_insert(subscribers).from_select(["email", "name", "token", *names], staged)
            .on_conflict_do_nothing().returning(column.id, column.email)  # WHERE true: SQLite's upsert after SELECT
        ).all()
        if added:  # the new rows are the newest ids: found by primary key, at the end of the table
            connection.execute(insert(events).from_select(
                ["subscriber_id", "kind", "at", "detail"],
                select(column.id, literal(EventKind.SUBSCRIBED, events.c.kind.type), literal(now, events.c.at.type),
                       literal(self.event_detail, events.c.detail.type))
                .where(column.id.in_([subscriber_id for subscriber_id, _ in added])),
            ))
        return {email.lower() for _, email in added}


def _records(path: Path, report: ImportReport) -> Iterator[_Raw]:
    """(line, email, name) as written, for each data row (blank lines skipped, missing fields empty); the
    columns other than ``email`` and ``name`` go into ``report.ignored_columns``.

    Raises NewsletterError when the file cannot be opened, is not UTF-8 CSV, or has no ``email`` column.
    """
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise NewsletterError(f"{path}: cannot read the file ({exc.strerror})") from None
    with handle:
        reader = csv.reader(handle)  # not DictReader: building a dict per row was a tenth of the import
        try:
            header = [name.strip() for name in next(reader, [])]
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
        except csv.Error as exc:
            raise NewsletterError(f"{path}: not a UTF-8 CSV file ({exc})") from None
        columns = [name.lower() for name in header]
        if "email" not in columns:
            raise NewsletterError(f"{path}: the first line must name the columns, including 'email' (and 'name')")
        ignored = (name or "(unnamed)" for name in header if name.lower() not in ("email", "name"))
        report.ignored_columns = list(dict.fromkeys(ignored))
        email = len(columns) - 1 - columns[::-1].index("email")  # a repeated column: the last one counts
        name = len(columns) - 1 - columns[::-1].index("name") if "name" in columns else None
        try:
            for record in reader:
                if not record:
                    continue
                yield (reader.line_num, record[email] if email < len(record) else "",
                       record[name] if name is not None and name < len(record) else None)
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
        except csv.Error as exc:
            raise NewsletterError(f"{path}:{reader.line_num}: cannot parse this line ({exc})") from None


def _not_utf8(path: Path) -> NewsletterError:
    """The error for a file that does not decode, naming its first line that is not UTF-8 (the decoder
    reads ahead in blocks, so where the CSV reader was says nothing)."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return NewsletterError(f"{path}:{number}: not UTF-8 ({exc.reason} at byte {exc.start + 1} of the "
                                       "line); save the file as UTF-8")
    return NewsletterError(f"{path}: not a UTF-8 CSV file; save it as UTF-8")


def _valid_rows(path: Path, report: ImportReport, on_row: Callable[[], None] | None, *, helper: bool) -> Iterator[_Row]:
    """The rows whose address is valid, normalised, in file order; the others go into ``report.bad_rows``.

    With ``helper``, chunks are validated in helper processes, a few ahead of what is consumed."""
    raw = _records(path, report)
    chunks = iter(lambda: list(itertools.islice(raw, IMPORT_CHUNK)), [])
    for checked in _checked_chunks(chunks) if helper else map(_check, chunks):
        for line, address, other in checked:
            if on_row:
                on_row()
            if address is None:
                report.bad_rows.append((line, other or ""))
            else:
                yield _Row(line, address, other)


def _checked_chunks(chunks: Iterator[list[_Raw]]) -> Iterator[list[_Checked]]:
    """:func:`_check` of each chunk, in order, run in helper processes (two at most) while the caller writes."""
    # fork: the helper starts at once with everything imported (spawn would import the whole CLI again); it
    # runs only _check, which takes no lock another thread of this process might hold.
    helpers = min(2, os.cpu_count() or 1)
    pool = ProcessPoolExecutor(max_workers=helpers, mp_context=multiprocessing.get_context("fork"),
                               initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
    # Ctrl-C reaches the helpers too: they ignore it (no traceback from them); this process stops the import.
    try:
        ahead: deque[Future[list[_Checked]]] = deque()
        for chunk in chunks:
            ahead.append(pool.submit(_check, chunk))
            if len(ahead) > helpers + 1:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)


def _check(chunk: list[_Raw]) -> list[_Checked]:
    """Each raw row as (line, normalised address, cleaned name), or (line, None, why the address is bad)."""
    checked: list[_Checked] = []
    for line, email, name in chunk:
        try:
            checked.append((line, normalise_address(email), clean_name(name)))
        except InvalidAddress as exc:
            checked.append((line, None, str(exc)))
    return checked


def _existing_by_address(db: Session, keys: Sequence[str]) -> dict[str, _Known]:
    """The subscribers among lowercase addresses ``keys``, by lowercase address."""
    found: dict[str, _Known] = {}
    chunk = 500  # stay under the database's bound-parameter limit
    for start in range(0, len(keys), chunk):
        query = (
            select(Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.status)
            .where(func.lower(Subscriber.email).in_(keys[start : start + chunk]))
        )
        for subscriber_id, email, name, status in db.exec(query):
            found[email.lower()] = _Known(subscriber_id, name, SubscriberStatus(status))
    return found


def _suppressed_keys(db: Session, keys: Sequence[str]) -> set[str]:
    """The lowercase addresses among ``keys`` that were erased (hashing them is skipped while nobody was)."""
    if db.exec(select(Suppression.id).limit(1)).first() is None:
        return set()
    by_hash = {address_hash(key): key for key in keys}
    return {by_hash[digest] for digest in _suppressed_hashes(db, list(by_hash))}


def _suppressed_hashes(db: Session, hashes: Sequence[str]) -> set[str]:
    found: set[str] = set()
    chunk = 500
    for start in range(0, len(hashes), chunk):
        query = select(Suppression.address_hash).where(col(Suppression.address_hash).in_(hashes[start : start + chunk]))
        found.update(db.exec(query))
    return found


def list_subscribers(engine: Engine, status: SubscriberStatus | None = None) -> list[Subscriber]:
    with session(engine) as db:
        query = select(Subscriber).order_by(col(Subscriber.id))
        if status is not None:
            query = query.where(Subscriber.status == status)
        return list(db.exec(query))


def remove_subscriber(engine: Engine, raw_address: str, *, reason: str = "removed by operator") -> Subscriber:
    """Unsubscribe an address (kept as ``unsubscribed`` so no later import adds it back). A ``bounced`` or
    ``complained`` address keeps its status (see :func:`mark_unsubscribed`)."""
    address = normalise_address(raw_address)
    with session(engine) as db:
        subscriber = find_subscriber(db, address)
        if subscriber is None:
            raise NewsletterError(f"{address} is not on the list; `newsletter subscribers list` shows who is")
        mark_unsubscribed(db, subscriber, {"reason": reason})
        return subscriber


def mark_unsubscribed(db: Session, subscriber: Subscriber, detail: dict[str, Any]) -> bool:
    """Mark ``subscriber`` unsubscribed and commit; False (and no change) when they already were.

    A ``bounced`` or ``complained`` subscriber keeps that status, which is stricter than ``unsubscribed``
    (the subscribe form may re-invite an unsubscribed address, never these): False, and the request is
    recorded as an ``unsubscribed`` event with ``kept_status`` (once, however often the link is posted).
    """
    if subscriber.status is SubscriberStatus.UNSUBSCRIBED:
        return False
    if subscriber.status in FINAL_STATUSES:
        latest = db.exec(
            select(Event.kind).where(Event.subscriber_id == subscriber.id).order_by(col(Event.id).desc()).limit(1)
        ).first()
        if latest != EventKind.UNSUBSCRIBED:
            db.add(Event(subscriber_id=subscriber.id, kind=EventKind.UNSUBSCRIBED,
                         detail={**detail, "kept_status": subscriber.status.value}))
            db.commit()
        log.info("unsubscribe request from a %s subscriber: status kept", subscriber.status.value)
        return False
    subscriber.status = SubscriberStatus.UNSUBSCRIBED
    subscriber.unsubscribed_at = subscriber.updated_at = utcnow()
    db.add(subscriber)
    db.add(Event(subscriber_id=subscriber.id, kind=EventKind.UNSUBSCRIBED, detail=detail))
    db.commit()
    return True


def export_csv(engine: Engine, out: TextIO, status: SubscriberStatus | None = None) -> int:
    """Write the list as CSV (a header, then one row per subscriber); returns the number of rows."""
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    subscribers = list_subscribers(engine, status)
    for s in subscribers:
        writer.writerow(
            [
                s.email,
                s.name or "",
                s.status.value,
                ";".join(s.topics),
                s.created_at.isoformat(),
                s.confirmed_at.isoformat() if s.confirmed_at else "",
                s.unsubscribed_at.isoformat() if s.unsubscribed_at else "",
            ]
        )
    return len(subscribers)


def export_person(engine: Engine, raw_address: str) -> dict[str, Any]:
    """Everything stored about one address (the subscriber row, its events, deliveries and recorded clicks),
    JSON-ready.

    Raises NewsletterError when the address is not on the list (saying so if it was erased).
    """
    from newsletter.click_report import person_clicks  # here: it loads the renderer, which the rest never needs

    address = normalise_address(raw_address)
    with session(engine) as db:
        subscriber = find_subscriber(db, address)
        if subscriber is None:
            if is_suppressed(db, address):
                raise NewsletterError(f"{address} was erased; nothing but a hash of the address is stored")
            raise NewsletterError(f"{address} is not on the list; nothing is stored about it")
        events = db.exec(select(Event).where(Event.subscriber_id == subscriber.id).order_by(col(Event.id))).all()
        deliveries = db.exec(
            select(Delivery, Issue)
            .join(Issue, col(Issue.id) == Delivery.issue_id)
            .where(Delivery.subscriber_id == subscriber.id)
            .order_by(col(Issue.number))
        ).all()
        return {
            "subscriber": subscriber.model_dump(mode="json"),
            "events": [event.model_dump(mode="json", exclude={"subscriber_id"}) for event in events],
            "deliveries": [
                {"issue": issue.number, "subject": issue.subject}
                | delivery.model_dump(
                    mode="json", include={"status", "attempts", "sent_at", "last_error", "message_id", "updated_at"}
                )
                for delivery, issue in deliveries
            ],
            "clicks": person_clicks(db, subscriber.id),  # only kept with tracking.per_subscriber
        }


@dataclass(frozen=True)
class Erasure:
    address: str
    was_on_list: bool
    events: int = 0
    deliveries: int = 0
    clicks: int = 0  # recorded with tracking.per_subscriber


def erase_subscriber(engine: Engine, raw_address: str) -> Erasure:
    """Delete everything stored about an address (subscriber, events, deliveries, recorded clicks; the counts
    per link, which name nobody, stay) in one transaction and keep
    only a hash of it in the suppression list, so no import, ``add`` or subscribe form adds it back.

    An address that is not on the list is suppressed all the same (someone asking never to be mailed).
    """
    address = normalise_address(raw_address)
    with session(engine) as db:
        subscriber = find_subscriber(db, address)
        result = Erasure(address, was_on_list=subscriber is not None)
        if subscriber is not None:
            events = db.execute(delete(Event).where(col(Event.subscriber_id) == subscriber.id)).rowcount
            deliveries = db.execute(delete(Delivery).where(col(Delivery.subscriber_id) == subscriber.id)).rowcount
            clicks = db.execute(
                delete(SubscriberClick).where(col(SubscriberClick.subscriber_id) == subscriber.id)).rowcount
            db.delete(subscriber)
            result = Erasure(address, True, events, deliveries, clicks)
        if not is_suppressed(db, address):
            db.add(Suppression(address_hash=address_hash(address), reason="erased"))
        db.commit()
    log.info("erased %s: %d events, %d deliveries", "a subscriber" if result.was_on_list else "an address",
             result.events, result.deliveries)
    return result
