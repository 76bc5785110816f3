"""Bounces, complaints and mailto: unsubscribes: who must never be mailed again.

Policy (``bounces`` in config.yaml): one hard bounce, or ``soft_limit`` soft bounces within ``soft_days``
days, marks a subscriber ``bounced``; a complaint marks them ``complained``. Neither is mailed again (only
``active`` subscribers receive, and the send loop skips anyone who stopped being active). Every bounce and
complaint is an :class:`~newsletter.models.Event`.

:func:`process_bounces` reads the configured mailbox (Maildir, mbox or IMAP) and handles three kinds of
message: delivery status notifications (RFC 3464 ``multipart/report; report-type=delivery-status``),
abuse reports (RFC 5965 ``report-type=feedback-report``), and plain messages to the List-Unsubscribe
``mailto:`` address, which unsubscribe their sender. A report is matched to its subscriber by the VERP
return path ``bounces+TOKEN@domain`` when present, else by the returned message's Message-ID, else by the
DSN's recipient. Handled messages are removed from the mailbox; anything not understood is left there
and counted, so nothing is lost.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import logging
import mailbox
import os
import re
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage, Message
from email.utils import getaddresses, parseaddr
from pathlib import Path

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from newsletter.config import Config, MailboxSection
from newsletter.db import session
from newsletter.errors import NewsletterError
from newsletter.models import (
    Delivery,
    Event,
    EventKind,
    Subscriber,
    SubscriberStatus,
    utcnow,
)

log = logging.getLogger(__name__)

IMAP_PASSWORD_VARIABLE = "NEWSLETTER_IMAP_PASSWORD"
_VERP = re.compile(r"^bounces\+([A-Za-z0-9_-]+)@", re.IGNORECASE)


class BounceError(NewsletterError):
    """The bounce mailbox cannot be read."""


def return_path(config: Config, token: str) -> str:
    """The envelope sender for a subscriber: ``bounces+TOKEN@domain`` with VERP, else the fixed address."""
    base = config.bounces.return_path or config.newsletter.sender_address
    if not config.bounces.verp:
        return base
    local, _, domain = (config.bounces.return_path or f"bounces@{config.newsletter.sender_domain}").rpartition("@")
    return f"{local}+{token}@{domain}"


# -- policy -------------------------------------------------------------------------------------------------


def record_bounce(db: Session, config: Config, subscriber: Subscriber, *, hard: bool, detail: dict[str, str],
                  now: datetime | None = None) -> bool:
    """Add a bounce event and apply the policy; True when this bounce marked the subscriber ``bounced``.

    The caller commits.
    """
    now = now or utcnow()
    kind = EventKind.BOUNCE_HARD if hard else EventKind.BOUNCE_SOFT
    db.add(Event(subscriber_id=subscriber.id, kind=kind, at=now, detail=detail))
    subscriber.bounce_score += 1
    subscriber.updated_at = now
    db.add(subscriber)
    if subscriber.status is not SubscriberStatus.ACTIVE:
        return False
    if not hard:
        db.flush()
        since = now - timedelta(days=config.bounces.soft_days)
        soft = db.exec(
            select(func.count()).select_from(Event).where(
                Event.subscriber_id == subscriber.id, Event.kind == EventKind.BOUNCE_SOFT, col(Event.at) >= since
            )
        ).one()
        if soft < config.bounces.soft_limit:
            return False
    subscriber.status = SubscriberStatus.BOUNCED
    log.info("subscriber %d marked bounced (%s)", subscriber.id, detail.get("reason", kind.value))
    log.debug("subscriber %d is %s", subscriber.id, subscriber.email)
    return True


def record_complaint(db: Session, subscriber: Subscriber, detail: dict[str, str], now: datetime | None = None) -> None:
    """A spam complaint: event, status ``complained``. The caller commits."""
    now = now or utcnow()
    db.add(Event(subscriber_id=subscriber.id, kind=EventKind.COMPLAINT, at=now, detail=detail))
    subscriber.status = SubscriberStatus.COMPLAINED
    subscriber.updated_at = now
    db.add(subscriber)


def record_unsubscribe(
    db: Session, subscriber: Subscriber, detail: dict[str, str], now: datetime | None = None
) -> bool:
    """An unsubscribe request by mail; True when the subscriber was active or pending. The caller commits."""
    if subscriber.status not in (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING):
        return False
    now = now or utcnow()
    db.add(Event(subscriber_id=subscriber.id, kind=EventKind.UNSUBSCRIBED, at=now, detail=detail))
    subscriber.status = SubscriberStatus.UNSUBSCRIBED
    subscriber.unsubscribed_at = subscriber.updated_at = now
    db.add(subscriber)
    return True


# -- reading the mailbox --------------------------------------------------------------------------------------


@dataclass
class BounceReport:
    """What one ``bounces process`` run did."""

    messages: int = 0
    hard: int = 0
    soft: int = 0
    complaints: int = 0
    unsubscribed: int = 0
    newly_bounced: int = 0  # subscribers the policy marked bounced in this run
    unmatched: int = 0  # understood, but no subscriber matched (removed from the mailbox)
    left: int = 0  # not understood: left in the mailbox for a person to read
    notes: list[str] = field(default_factory=list)

    def summary_line(self) -> str:
        return (
            f"{self.messages} messages: {self.hard} hard and {self.soft} soft bounces ({self.newly_bounced} "
            f"subscribers now bounced), {self.complaints} complaints, {self.unsubscribed} unsubscribed by mail, "
            f"{self.unmatched} unmatched, {self.left} left in the mailbox"
        )


@dataclass(frozen=True)
class _Finding:
    kind: str  # "hard" | "soft" | "complaint" | "unsubscribe"
    address: str | None  # the recipient the report names (or the sender of an unsubscribe request)
    token: str | None  # from a VERP address
    message_id: str | None  # of the returned message
    reason: str


def process_bounces(engine: Engine, config: Config) -> BounceReport:
    """Process every message in the configured ``bounces.mailbox``; what ``bounces process`` and the
    scheduler call. Raises BounceError when no mailbox is configured or it cannot be opened."""
    box = config.bounces.mailbox
    if box is None:
        raise BounceError(f"{config.source}: bounces.mailbox is not set; see docs/delivery.md for its keys")
    report = BounceReport()
    for raw, done in _read(config, box):
        report.messages += 1
        try:
            findings = classify(email.message_from_bytes(raw, policy=email.policy.default), config)  # type: ignore[arg-type]
        except Exception as exc:  # a malformed message must not stop the run; a person can look at it
            log.warning("cannot read a message in the bounce mailbox (%s); left there", exc)
            findings = []
        if not findings:
            report.left += 1
            continue
        with session(engine) as db:
            for finding in findings:
                _apply(db, config, finding, report)
            db.commit()
        done()
    log.info(report.summary_line())
    return report


def _apply(db: Session, config: Config, finding: _Finding, report: BounceReport) -> None:
    subscriber = _match(db, finding)
    if subscriber is None:
        report.unmatched += 1
        report.notes.append(f"no subscriber for {finding.kind} ({finding.address or finding.message_id})")
        return
    detail = {"reason": finding.reason, "source": "mailbox"}
    if finding.kind == "complaint":
        record_complaint(db, subscriber, detail)
        report.complaints += 1
    elif finding.kind == "unsubscribe":
        report.unsubscribed += record_unsubscribe(db, subscriber, {"reason": "unsubscribe request by email"})
    else:
        hard = finding.kind == "hard"
        report.hard += hard
        report.soft += not hard
        report.newly_bounced += record_bounce(db, config, subscriber, hard=hard, detail=detail)


def _match(db: Session, finding: _Finding) -> Subscriber | None:
    """VERP token first, then the returned Message-ID, then the address the report names. A value with
    a control character (anyone can mail the bounce address; PostgreSQL cannot compare a NUL) is no one's."""
    if finding.token:
        found = db.exec(select(Subscriber).where(Subscriber.token == finding.token)).first()
        if found:
            return found
    if finding.message_id and finding.message_id.isprintable():
        found = db.exec(
            select(Subscriber).join(Delivery, col(Delivery.subscriber_id) == Subscriber.id)
            .where(Delivery.message_id == finding.message_id)
        ).first()
        if found:
            return found
    if finding.address and finding.address.isprintable():
        return db.exec(select(Subscriber).where(func.lower(Subscriber.email) == finding.address.lower())).first()
    return None


def classify(message: EmailMessage, config: Config) -> list[_Finding]:
    """What a message in the bounce mailbox says; [] when it is none of the kinds this module handles."""
    token = _verp_token(message)
    if message.get_content_type() == "multipart/report":
        report_type = (message.get_param("report-type") or "").lower()
        returned_id = _returned_message_id(message)
        if report_type == "delivery-status":
            return [
                _Finding(kind, address, token, returned_id, reason)
                for kind, address, reason in _dsn_recipients(message)
            ]
        if report_type == "feedback-report":
            address = _header_address(_returned_headers(message), "To")
            return [_Finding("complaint", address, token, returned_id, "complaint (feedback report)")]
        return []
    to = {a.lower() for _, a in getaddresses(message.get_all("To", []) + message.get_all("Delivered-To", []))}
    subject = str(message.get("Subject", "")).strip().lower()
    if config.newsletter.unsubscribe_address.lower() in to or subject.startswith("unsubscribe"):
        sender = parseaddr(str(message.get("From", "")))[1]
        if sender:
            return [_Finding("unsubscribe", sender, None, None, "unsubscribe request by email")]
    return []


def _verp_token(message: Message) -> str | None:
    for name in ("Delivered-To", "X-Original-To", "To", "Envelope-To"):
        for _, address in getaddresses([str(v) for v in message.get_all(name, [])]):
            match = _VERP.match(address)
            if match:
                return match[1]
    return None


def _dsn_recipients(message: EmailMessage) -> Iterator[tuple[str, str | None, str]]:
    """(hard|soft, recipient, reason) for each failed or delayed recipient of an RFC 3464 report."""
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()
        for block in blocks[1:] if isinstance(blocks, list) else []:  # the first block is per-message
            action = str(block.get("Action", "")).strip().lower()
            status = str(block.get("Status", "")).strip()
            if action not in ("failed", "delayed"):
                continue
            hard = action == "failed" and status.startswith("5")
            recipient = str(block.get("Final-Recipient") or block.get("Original-Recipient") or "")
            address = recipient.partition(";")[2].strip() or None
            diagnostic = " ".join(str(block.get("Diagnostic-Code", "")).split())
            yield ("hard" if hard else "soft"), address, f"{action} {status} {diagnostic}".strip()


def _returned_headers(message: EmailMessage) -> Message | None:
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "text/rfc822-headers":
            return email.message_from_string(part.get_content(), policy=email.policy.default)
        if kind == "message/rfc822":
            payload = part.get_payload()
            return payload[0] if isinstance(payload, list) else None
    return None


def _returned_message_id(message: EmailMessage) -> str | None:
    headers = _returned_headers(message)
    value = str(headers.get("Message-ID", "")).strip() if headers is not None else ""
    return value or None


def _header_address(headers: Message | None, name: str) -> str | None:
    if headers is None:
        return None
    address = parseaddr(str(headers.get(name, "")))[1]
    return address or None


def _read(config: Config, box: MailboxSection) -> Iterator[tuple[bytes, Callable[[], None]]]:
    """(message bytes, a function that removes it) for every message in the mailbox."""
    if box.type == "imap":
        yield from _read_imap(box)
        return
    path = config.resolve(box.path or "")
    where = f"{config.source}: bounces.mailbox.path: {path}"
    if not path.exists():
        raise BounceError(f"{where} does not exist; create it or set the path your mail server delivers bounces to")
    store = _open_maildir(where, path) if box.type == "maildir" else _open_mbox(where, path)
    if store is None:
        return
    try:
        try:
            keys = list(store.keys())
        except OSError as exc:
            raise BounceError(f"{where}: cannot read the {box.type} mailbox ({exc.strerror}); give the user "
                              f"running newsletter read and write access to it") from None
        for key in keys:
            try:
                data = store.get_bytes(key)
            except KeyError:  # removed by someone else meanwhile
                continue
            except OSError as exc:
                log.warning("cannot read message %s in %s (%s); left there", key, path, exc.strerror)
                continue
            yield data, lambda key=key: store.discard(key)
    finally:
        if box.type == "mbox":
            store.flush()
            store.unlock()
        store.close()


_MAILDIR_FOLDERS = ("cur", "new", "tmp")


def _open_maildir(where: str, path: Path) -> mailbox.Maildir | None:
    """The Maildir at ``path``; None when it is an empty folder (nothing has been delivered to it yet: a
    normal state before the first bounce). Missing ones of the three are created when
    some exist. Raises BounceError when ``path`` is not a folder or cannot be used."""
    if not path.is_dir():
        raise BounceError(f"{where} is a file, not a Maildir folder; set the path to the Maildir folder bounces are "
                          f"delivered to, or set bounces.mailbox.type: mbox if this file is an mbox mailbox")
    present = [name for name in _MAILDIR_FOLDERS if (path / name).exists()]
    for name in present:
        if not (path / name).is_dir():
            raise BounceError(f"{where}: {path / name} is a file, not a folder; a Maildir holds the folders "
                              f"cur, new and tmp")
    if not present:
        others = sorted(entry.name for entry in path.iterdir())
        if others:  # e.g. a home folder with the Maildir inside: bounces would never be read
            raise BounceError(f"{where} is not a Maildir (no cur/, new/ or tmp/, but {', '.join(others[:3])}"
                              f"{', ...' if len(others) > 3 else ''}); set the path to the Maildir folder itself")
        log.info("bounce mailbox %s has no messages yet (no cur/, new/, tmp/)", path)
        return None
    try:
        for name in _MAILDIR_FOLDERS:
            if name not in present:
                (path / name).mkdir(mode=0o700)
        return mailbox.Maildir(path, factory=None, create=False)
    except (OSError, mailbox.Error) as exc:
        raise BounceError(f"{where}: cannot open the Maildir ({exc}); give the user running newsletter read and "
                          f"write access to it") from None


def _open_mbox(where: str, path: Path) -> mailbox.mbox:
    """The mbox file at ``path``, locked. Raises BounceError when it is a folder, unreadable or locked."""
    if path.is_dir():
        raise BounceError(f"{where} is a folder, not an mbox file; set bounces.mailbox.type: maildir if it is a "
                          f"Maildir, or set the path to the mbox file")
    try:
        store = mailbox.mbox(path, create=False)
    except OSError as exc:
        raise BounceError(f"{where}: cannot open the mbox file ({exc.strerror}); give the user running newsletter "
                          f"read and write access to it") from None
    try:
        store.lock()
    except (OSError, mailbox.Error) as exc:
        store.close()
        raise BounceError(f"{where}: cannot lock the mbox file ({exc}); another program holds it, try again "
                          f"later") from None
    return store


def _read_imap(box: MailboxSection) -> Iterator[tuple[bytes, Callable[[], None]]]:
    password = os.environ.get(IMAP_PASSWORD_VARIABLE, "")
    if not password:
        raise BounceError(f"set {IMAP_PASSWORD_VARIABLE} to the password of {box.username} on {box.host}")
    assert box.host is not None and box.username is not None
    try:
        if box.security == "tls":
            imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(box.host, box.port, ssl_context=ssl.create_default_context(),
                                                     timeout=30)
        else:
            imap = imaplib.IMAP4(box.host, box.port, timeout=30)
            if box.security == "starttls":
                imap.starttls(ssl.create_default_context())
        imap.login(box.username, password)
        status, _ = imap.select(box.folder)
        if status != "OK":
            raise BounceError(f"the IMAP folder {box.folder!r} does not exist on {box.host}")
    except (OSError, imaplib.IMAP4.error) as exc:
        raise BounceError(f"cannot read the IMAP mailbox {box.username}@{box.host}:{box.port} ({exc})") from None
    try:
        _, found = imap.uid("SEARCH", "ALL")
        for uid in (found[0] or b"").split():
            _, fetched = imap.uid("FETCH", uid, "(RFC822)")
            data = next((item[1] for item in fetched if isinstance(item, tuple)), None)
            if data is None:
                continue
            yield data, lambda uid=uid: imap.uid("STORE", uid, "+FLAGS", "(\\Deleted)")
        imap.expunge()
    finally:
        try:
            imap.logout()
        except (OSError, imaplib.IMAP4.error):
            pass
