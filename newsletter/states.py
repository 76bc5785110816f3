"""The states a row can be in, as plain enums: importable without the database layer (the CLI's options
name them; :mod:`newsletter.models` stores them)."""

from __future__ import annotations

import enum

__all__ = ["DeliveryStatus", "EventKind", "FiringOutcome", "IssueStatus", "SubscriberStatus"]


class SubscriberStatus(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


class IssueStatus(enum.StrEnum):
    PREPARED = "prepared"  # first: the default of a new row
    SENDING = "sending"
    SENT = "sent"
    PAUSED = "paused"  # by `digest pause` or by the send loop when too many messages fail
    CANCELLED = "cancelled"  # by `digest cancel`: what was not sent is skipped
    DRAFT = "draft"  # the next issue with an editor's choices, not prepared yet (no deliveries)


class DeliveryStatus(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"
    SKIPPED = "skipped"


class EventKind(enum.StrEnum):
    SUBSCRIBED = "subscribed"
    CONFIRMED = "confirmed"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCE_HARD = "bounce_hard"
    BOUNCE_SOFT = "bounce_soft"
    COMPLAINT = "complaint"


class FiringOutcome(enum.StrEnum):
    ISSUED = "issued"  # the firing prepared an issue from what was waiting
    QUIET = "quiet"  # nothing was waiting; the quiet note went out as an issue
    EMPTY = "empty"  # nothing was waiting; nothing was sent
    NO_RECIPIENTS = "no_recipients"  # nobody was active; the summaries wait for the next issue
    MISSED = "missed"  # the scheduler was not running within the grace period of it; nothing was sent
