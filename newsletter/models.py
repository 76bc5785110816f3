"""The records newsletter keeps, as SQLModel tables (see DESIGN.md, "Records").

Times are timezone-aware UTC (``utcnow()``); convert to the configured timezone only for display. Status
columns hold the enum's lowercase value in a plain string column. Schema changes go through an Alembic
migration in ``newsletter/migrations``.
"""

from __future__ import annotations

import base64
import enum
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary, UniqueConstraint, func
from sqlalchemy import Enum as SAEnum
from sqlmodel import Field, SQLModel

from newsletter.states import DeliveryStatus, EventKind, FiringOutcome, IssueStatus, SubscriberStatus


def utcnow() -> datetime:
    """Now, in UTC: what every timestamp column holds."""
    return datetime.now(UTC)


def _status_column(enum_class: type[enum.StrEnum], *, index: bool = False) -> Any:
    """A VARCHAR column storing the enum's value (no database-native enum type to migrate)."""
    return Field(
        default=next(iter(enum_class)),
        sa_column=Column(
            SAEnum(enum_class, native_enum=False, length=20, values_callable=lambda e: [m.value for m in e]),
            nullable=False,
            index=index,
        ),
    )


def new_token() -> str:
    """An opaque random identifier for a subscriber's links; reveals neither email nor row id."""
    return secrets.token_urlsafe(18)


def new_tokens(count: int) -> list[str]:
    """``count`` tokens like :func:`new_token`, for a bulk import: 18 random bytes each encode to exactly
    24 URL-safe characters, so one draw of ``18 * count`` bytes, encoded once and cut every 24 characters,
    gives the same tokens at a fraction of the cost of one call per token."""
    encoded = base64.urlsafe_b64encode(secrets.token_bytes(18 * count)).decode("ascii")
    return [encoded[start : start + 24] for start in range(0, 24 * count, 24)]


class Summary(SQLModel, table=True):
    """One summarised paper or article. ``issue_id`` is NULL until a digest includes it."""

    id: int | None = Field(default=None, primary_key=True)
    uid: str = Field(unique=True, index=True, max_length=512)
    title: str
    subtitle: str | None = None
    article_type: str | None = None
    paywalled: bool | None = None
    url: str | None = None
    source: str | None = None
    category: str | None = Field(default=None, index=True)
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    summary: str
    body: str | None = None
    key_points: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    image_url: str | None = None
    image_alt: str | None = None
    published_at: datetime | None = None
    ingested_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)
    origin: str = ""
    issue_id: int | None = Field(default=None, foreign_key="issue.id", index=True)
    excluded: bool = False  # an editor kept it out of the next digest (``summaries exclude``)


class FeedState(SQLModel, table=True):
    """What we know about one feed URL: validators for conditional GET and the last fetch's outcome."""

    id: int | None = Field(default=None, primary_key=True)
    url: str = Field(unique=True, max_length=2048)
    etag: str | None = None
    last_modified: str | None = None
    last_fetch_at: datetime | None = None
    last_status: str | None = None  # "ok", "not-modified" or "error"
    last_error: str | None = None
    last_success_at: datetime | None = None
    items_seen: int = 0


class Subscriber(SQLModel, table=True):
    """A person on the list. Only ``active`` subscribers receive digests."""

    __table_args__ = (Index("ix_subscriber_email_lower", func.lower(Column("email")), unique=True),)

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320)
    name: str | None = None
    status: SubscriberStatus = _status_column(SubscriberStatus, index=True)
    topics: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    token: str = Field(default_factory=new_token, unique=True, max_length=64)
    consent_source: str | None = None
    consent_at: datetime | None = None
    consent_ip: str | None = None
    consent_user_agent: str | None = None
    bounce_score: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    confirmed_at: datetime | None = None
    unsubscribed_at: datetime | None = None
    confirmation_sent_at: datetime | None = None  # the last confirmation email: at most one per 24 h


class Suppression(SQLModel, table=True):
    """An erased address, kept only as a hash so that no import, ``add`` or form ever adds it back."""

    id: int | None = Field(default=None, primary_key=True)
    address_hash: str = Field(unique=True, max_length=64)
    reason: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class Issue(SQLModel, table=True):
    """One digest, numbered from 1. Its life (draft → prepared → sending → sent, paused, cancelled) is
    governed by ``newsletter.issues``; nothing else changes ``status``.

    ``period_start``..``period_end`` is the span it covers: from the previous issue's preparation (the first
    issue: from its oldest item) to its own, exclusive; it carries the summaries waiting at ``period_end``.

    The editor's choices (:mod:`newsletter.issues.editorial`) are made while it is a ``draft`` and kept
    after: ``item_order`` (summary ids, first shown first; summaries not in it follow in the default order),
    ``lead_id`` (shown first, named by the default subject), ``note`` (Markdown, shown above the items) and
    ``subject_override``. ``version`` goes up with every choice, so that two editors never overwrite each
    other unknowingly; ``undo`` holds the choices before each of the last few changes (a draft only).
    """

    id: int | None = Field(default=None, primary_key=True)
    number: int = Field(unique=True)
    period_start: datetime
    period_end: datetime
    subject: str
    status: IssueStatus = _status_column(IssueStatus, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    scheduled_at: datetime | None = None
    sent_at: datetime | None = None
    note: str | None = None
    subject_override: str | None = None
    item_order: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    lead_id: int | None = None
    version: int = 0
    undo: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class IssueCopy(SQLModel, table=True):
    """An issue as it was first sent, without anything personal: the bytes the archive and its feed serve,
    whatever the templates or the summaries become later. zlib-compressed UTF-8. A table of its own so that
    reading an issue's state never loads its pages."""

    __tablename__ = "issue_copy"

    issue_id: int = Field(primary_key=True, foreign_key="issue.id")
    html: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    text: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    stored_at: datetime = Field(default_factory=utcnow)


class Delivery(SQLModel, table=True):
    """The ledger: one row per (issue, subscriber), so sending can always resume where it stopped."""

    __table_args__ = (
        UniqueConstraint("issue_id", "subscriber_id", name="uq_delivery_issue_subscriber"),
        Index("ix_delivery_issue_status", "issue_id", "status", "id"),  # claims read it in id order
        Index("ix_delivery_issue_sent", "issue_id", "sent_at"),  # the latest delivery before a click, in one seek
    )

    id: int | None = Field(default=None, primary_key=True)
    issue_id: int = Field(foreign_key="issue.id")
    subscriber_id: int = Field(foreign_key="subscriber.id", index=True)
    status: DeliveryStatus = _status_column(DeliveryStatus)
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    message_id: str | None = None
    sent_at: datetime | None = None
    claimed_by: str | None = None
    lease_expires_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class ClickCount(SQLModel, table=True):
    """How often one item link of an issue was clicked (``tracking.clicks``), counted without knowing who
    clicked: every GET of the link (``clicks``) and those the scanner filter let through (``human_clicks``).
    No time, address or browser is kept, so nothing here can be tied to a person. ``item_id`` is the
    summary's id when the issue was sent (no foreign key: summaries may be deleted, the counts stay), and
    ``url_hash`` the hash of the URL the link led to (:func:`newsletter.tokens.url_hash`)."""

    __tablename__ = "click_count"

    issue_id: int = Field(primary_key=True, foreign_key="issue.id")
    item_id: int = Field(primary_key=True)
    url_hash: str = Field(primary_key=True, max_length=16)
    clicks: int = 0
    human_clicks: int = 0


class SubscriberClick(SQLModel, table=True):
    """One click by a known subscriber, kept only with ``tracking.per_subscriber``: part of their data export,
    deleted when they are erased. The same click is in :class:`ClickCount` too, without them."""

    __tablename__ = "subscriber_click"

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(foreign_key="subscriber.id", index=True)
    issue_id: int = Field(foreign_key="issue.id")
    item_id: int
    url_hash: str = Field(max_length=16)
    at: datetime
    likely_human: bool


class Event(SQLModel, table=True):
    """Append-only history of what happened to a subscriber (what a data export returns)."""

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int | None = Field(default=None, foreign_key="subscriber.id", index=True)
    kind: EventKind = _status_column(EventKind)
    at: datetime = Field(default_factory=utcnow)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Firing(SQLModel, table=True):
    """One scheduled time of ``schedule.cron`` and what came of it. ``due_at`` is unique: a firing is done
    once, whoever runs it (a second scheduler, a restart, ``digest send --if-due``), and makes at most one
    issue. An editor's ``digest prepare`` is not a firing and has no row here."""

    id: int | None = Field(default=None, primary_key=True)
    due_at: datetime = Field(unique=True)  # the cron time, UTC
    outcome: FiringOutcome = _status_column(FiringOutcome)
    recorded_at: datetime = Field(default_factory=utcnow)
    issue_id: int | None = Field(default=None, foreign_key="issue.id")
    detail: str = ""


class SchedulerLease(SQLModel, table=True):
    """The one row saying which ``newsletter run`` process may fire jobs, and until when."""

    __tablename__ = "scheduler_lease"

    name: str = Field(primary_key=True, max_length=32)
    owner: str = Field(max_length=200)
    acquired_at: datetime
    expires_at: datetime


class JobFailure(SQLModel, table=True):
    """A scheduled job that raised: shown by ``newsletter status`` (newest first)."""

    __tablename__ = "job_failure"

    id: int | None = Field(default=None, primary_key=True)
    job: str = Field(max_length=64, index=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    error: str
    traceback: str = ""
