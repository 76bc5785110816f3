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
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Engine, delete, func, insert
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
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]+")


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


def clean_name(raw: str | None) -> str | None:
    """A display name with control characters (CR/LF included) removed, or None when empty."""
    if raw is None:
        return None
    name = _CONTROL_CHARACTERS.sub(" ", raw).strip()
    return name[:200] or None


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


def import_csv(
    engine: Engine, path: Path, *, source: str | None = None, on_row: Callable[[], None] | None = None
) -> ImportReport:
    """Upsert the subscribers of a CSV file with an ``email`` column (and optionally ``name``).

    Every row is validated first (``on_row`` is called after each, for a progress bar); bad rows are
    reported by line number and the rest are written in one transaction. A repeated address (any case)
    counts once, from its first row; the later rows are reported in ``duplicates``, and other columns in
    ``ignored_columns``. Raises NewsletterError when the file cannot be read or has no ``email`` column.
    """
    report = ImportReport()
    latest: dict[str, _Row] = {}
    for row in _read_rows(path, report, on_row):
        first = latest.setdefault(row.address.lower(), row)  # a repeated address: the first row counts
        if first is not row:
            report.duplicates.append((row.line, first.line, row.address))
    added: list[dict[str, Any]] = []
    with session(engine) as db:
        existing = _existing_by_address(db, list(latest))
        suppressed = _suppressed_hashes(db, [address_hash(key) for key in latest])
        for key, row in latest.items():
            subscriber = existing.get(key)
            if address_hash(key) in suppressed:
                report.suppressed += 1
            elif subscriber is None:
                added.append(_new_subscriber_values(row.address, row.name, source or f"import:{path.name}"))
            elif subscriber.status not in (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING):
                report.left_list += 1
            elif row.name and row.name != subscriber.name:
                subscriber.name = row.name
                subscriber.updated_at = utcnow()
                db.add(subscriber)
                report.updated += 1
            else:
                report.unchanged += 1
        if added:
            # Plain multi-row INSERTs: building one ORM object per row costs ~1 ms each with SQLModel.
            ids = db.execute(
                insert(Subscriber).returning(Subscriber.id, sort_by_parameter_order=True), added
            ).scalars().all()
            event = {"kind": EventKind.SUBSCRIBED, "at": utcnow(), "detail": {"source": path.name}}
            db.execute(insert(Event), [{**event, "subscriber_id": new_id} for new_id in ids])
        db.commit()
    report.added = len(added)
    return report


def _read_rows(path: Path, report: ImportReport, on_row: Callable[[], None] | None) -> Iterator[_Row]:
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise NewsletterError(f"{path}: cannot read the file ({exc.strerror})") from None
    with handle:
        reader = csv.DictReader(handle)
        try:
            header = [name.strip() for name in reader.fieldnames or []]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise NewsletterError(f"{path}: not a UTF-8 CSV file ({exc})") from None
        columns = [name.lower() for name in header]
        if "email" not in columns:
            raise NewsletterError(f"{path}: the first line must name the columns, including 'email' (and 'name')")
        reader.fieldnames = columns
        ignored = (name or "(unnamed)" for name in header if name.lower() not in ("email", "name"))
        report.ignored_columns = list(dict.fromkeys(ignored))
        try:
            for record in reader:
                if on_row:
                    on_row()
                line = reader.line_num
                try:
                    address = normalise_address(record.get("email") or "")
                except InvalidAddress as exc:
                    report.bad_rows.append((line, str(exc)))
                    continue
                yield _Row(line, address, clean_name(record.get("name")))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise NewsletterError(f"{path}:{reader.line_num}: cannot parse this line ({exc})") from None


def _existing_by_address(db: Session, keys: Sequence[str]) -> dict[str, Subscriber]:
    found: dict[str, Subscriber] = {}
    chunk = 500  # stay under the database's bound-parameter limit
    for start in range(0, len(keys), chunk):
        query = select(Subscriber).where(func.lower(Subscriber.email).in_(keys[start : start + chunk]))
        for subscriber in db.exec(query):
            found[subscriber.email.lower()] = subscriber
    return found


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
