"""What subscribers do themselves, through the links and forms of the web app: subscribe (double opt-in),
confirm, change preferences, unsubscribe.

These functions hold the rules; :mod:`newsletter.web.pages` only parses requests and shows the results.
Nothing here reveals to a caller whether an address was already on the list: :func:`request_subscription`
answers only "send a confirmation now" or "send nothing".
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, func, or_, update
from sqlmodel import Session, col, select

from newsletter.db import session
from newsletter.models import (
    Event,
    EventKind,
    Subscriber,
    SubscriberStatus,
    Summary,
    utcnow,
)
from newsletter.render import DEFAULT_SECTION
from newsletter.subscribers import (
    FINAL_STATUSES,
    clean_name,
    find_subscriber,
    is_suppressed,
    mark_unsubscribed,
    normalise_address,
)

log = logging.getLogger(__name__)

CONFIRMATION_INTERVAL = timedelta(hours=24)  # at most one confirmation email per address in this time


@dataclass(frozen=True)
class Consent:
    """Where and how a subscription was asked for: kept as the consent record."""

    source: str
    ip: str | None
    user_agent: str | None


# Anyone can type any address into the form: it must not undo a bounce or a spam complaint.
_NEVER_ASK_AGAIN = (SubscriberStatus.ACTIVE, *FINAL_STATUSES)
# Nor one in the history: a row changed by hand (or by an older version, which let an unsubscribe request
# turn "complained" into "unsubscribed") must not re-mail a person who reported us or an address that bounced.
_NEVER_ASK_AFTER = (EventKind.COMPLAINT, EventKind.BOUNCE_HARD)


def may_subscribe_again(subscriber: Subscriber) -> bool:
    """Whether the subscribe form can ever send ``subscriber`` a confirmation (pages offer the form only then)."""
    return subscriber.status not in FINAL_STATUSES


def request_subscription(
    engine: Engine, raw_address: str, name: str | None, consent: Consent, *, now: datetime | None = None
) -> Subscriber | None:
    """Record a subscription request; returns the subscriber to send a confirmation email to, or None.

    A new address (or one that unsubscribed) becomes ``pending`` with ``consent`` recorded. None means
    send nothing: the address is already active, bounced or complained (now, or ever: a hard bounce or a
    complaint in its history), was erased, or had a confirmation within :data:`CONFIRMATION_INTERVAL`.
    The returned subscriber's confirmation slot is taken (so concurrent requests send one email); call
    :func:`release_confirmation` if sending fails. Raises InvalidAddress.
    """
    now = now or utcnow()
    address = normalise_address(raw_address)
    with session(engine) as db:
        if is_suppressed(db, address):
            log.info("subscription request for an erased address ignored")
            return None
        subscriber = find_subscriber(db, address)
        if subscriber is not None and (subscriber.status in _NEVER_ASK_AGAIN or _bounced_or_complained(db, subscriber)):
            return None
        if subscriber is None:
            subscriber = Subscriber(email=address, status=SubscriberStatus.PENDING, topics=[], created_at=now)
        elif subscriber.status is not SubscriberStatus.PENDING:
            subscriber.status = SubscriberStatus.PENDING  # left the list; back only once they confirm
        subscriber.name = clean_name(name) or subscriber.name
        subscriber.consent_source = consent.source
        subscriber.consent_at = subscriber.updated_at = now
        subscriber.consent_ip = consent.ip
        subscriber.consent_user_agent = consent.user_agent
        db.add(subscriber)
        db.flush()
        db.add(Event(subscriber_id=subscriber.id, kind=EventKind.SUBSCRIBED, at=now,
                     detail={"source": consent.source, "ip": consent.ip, "confirmed": False}))
        claimed = _claim_confirmation(db, subscriber, now)
        db.commit()
    return subscriber if claimed else None


def _bounced_or_complained(db: Session, subscriber: Subscriber) -> bool:
    """Whether ``subscriber``'s history has a hard bounce or a complaint, whatever the status says now."""
    query = select(Event.id).where(Event.subscriber_id == subscriber.id, col(Event.kind).in_(_NEVER_ASK_AFTER))
    if db.exec(query).first() is None:
        return False
    log.info("subscription request for an address that bounced or complained ignored")
    return True


def _claim_confirmation(db: Session, subscriber: Subscriber, now: datetime) -> bool:
    """Set ``confirmation_sent_at`` unless one was sent within the interval; the check and the write are one
    UPDATE, so two requests at once cannot both win."""
    written = db.execute(
        update(Subscriber)
        .where(
            col(Subscriber.id) == subscriber.id,
            or_(
                col(Subscriber.confirmation_sent_at).is_(None),
                col(Subscriber.confirmation_sent_at) <= now - CONFIRMATION_INTERVAL,
            ),
        )
        .values(confirmation_sent_at=now)
    ).rowcount
    return bool(written)


def release_confirmation(engine: Engine, subscriber: Subscriber) -> None:
    """Undo a claimed confirmation slot after the email could not be sent, so the next request sends it."""
    with session(engine) as db:
        db.execute(update(Subscriber).where(col(Subscriber.id) == subscriber.id).values(confirmation_sent_at=None))
        db.commit()


def find_by_token(db: Session, token: str) -> Subscriber | None:
    return db.exec(select(Subscriber).where(Subscriber.token == token)).first()


class Confirmation(enum.StrEnum):
    CONFIRMED = "confirmed"  # pending → active now
    ALREADY_ACTIVE = "already_active"
    NOT_PENDING = "not_pending"  # unsubscribed, bounced or complained since: the old link does nothing


def confirm_subscription(
    engine: Engine, token: str, *, ip: str | None = None, user_agent: str | None = None, now: datetime | None = None
) -> tuple[Subscriber, Confirmation] | None:
    """Activate the pending subscriber with ``token`` (from a verified confirmation link); None if unknown."""
    now = now or utcnow()
    with session(engine) as db:
        subscriber = find_by_token(db, token)
        if subscriber is None:
            return None
        if subscriber.status is SubscriberStatus.ACTIVE:
            return subscriber, Confirmation.ALREADY_ACTIVE
        if subscriber.status is not SubscriberStatus.PENDING:
            return subscriber, Confirmation.NOT_PENDING
        subscriber.status = SubscriberStatus.ACTIVE
        subscriber.confirmed_at = subscriber.updated_at = now
        subscriber.unsubscribed_at = None
        db.add(subscriber)
        db.add(Event(subscriber_id=subscriber.id, kind=EventKind.CONFIRMED, at=now,
                     detail={"ip": ip, "user_agent": user_agent}))
        db.commit()
        return subscriber, Confirmation.CONFIRMED


def unsubscribe_by_token(engine: Engine, token: str, *, via: str) -> Subscriber | None:
    """Unsubscribe the subscriber with ``token``; idempotent. None when no subscriber has it (erased). A
    bounced or complained subscriber keeps that status (:func:`~newsletter.subscribers.mark_unsubscribed`)."""
    with session(engine) as db:
        subscriber = find_by_token(db, token)
        if subscriber is not None:
            mark_unsubscribed(db, subscriber, {"via": via})
        return subscriber


def update_preferences(engine: Engine, token: str, name: str | None, topics: list[str]) -> Subscriber | None:
    """Set the name and topics (an empty list means every topic) of the subscriber with ``token``.

    ``topics`` must come from :func:`known_topics` (the caller checks); None when the token is unknown.
    """
    with session(engine) as db:
        subscriber = find_by_token(db, token)
        if subscriber is None:
            return None
        subscriber.name = clean_name(name)
        subscriber.topics = list(dict.fromkeys(topics))
        subscriber.updated_at = utcnow()
        db.add(subscriber)
        db.commit()
        return subscriber


def known_topics(engine: Engine) -> list[str]:
    """The topics a subscriber can pick: the categories summaries carry (as the digest's sections are
    titled, first spelling wins), alphabetically; "More research" when some summaries have none."""
    with session(engine) as db:
        categories = db.exec(
            select(Summary.category).group_by(Summary.category).order_by(func.min(Summary.id))
        ).all()
    topics: dict[str, str] = {}
    for category in categories:
        title = " ".join((category or "").split()) or DEFAULT_SECTION
        topics.setdefault(title.casefold(), title)
    return sorted(topics.values(), key=str.casefold)
