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
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage, Message
from email.utils import getaddresses, parseaddr

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from newsletter.config import Config, MailboxSection
from newsletter.db import session
from newsletter.errors import NewsletterError
from newsletter.models import Delivery, Event, EventKind, Subscriber, SubscriberStatus, utcnow

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
    log.info("%s marked bounced (%s)", subscriber.email, detail.get("reason", kind.value))
    return True


def record_complaint(db: Session, subscriber: Subscriber, detail: dict[str, str], now: datetime | None = None) -> None:
    """A spam complaint: event, status ``complained``. The caller commits."""
    now = now or utcnow()
    db.add(Event(subscriber_id=subscriber.id, kind=EventKind.COMPLAINT, at=now, detail=detail))
    subscriber.status = SubscriberStatus.COMPLAINED
    subscriber.updated_at = now
    db.add(subscriber)


def record_unsubscribe(db: Session, subscriber: Subscriber, detail: dict[str, str], now: datetime | None = None) -> bool:
    """An unsubscribe request by mail; True when the subscriber was active or pending. The caller commits."""
    if subscriber.status not in (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING):
        return False
    now = now or utcnow()
    db.add(Event(subscriber_id=subscriber.id, kind=EventKind.UNSUBSCRIBED, at=now, detail=detail))
    subscriber.status = SubscriberStatus.UNSUBSCRIBED
    subscriber.unsubscribed_at = subscriber.updated_at = now
    db.add(subscriber)
    return True
