"""Periods and issues: which summaries and which subscribers make up the next digest.

A period is an ISO week in the configured timezone (``2026-W47``). ``prepare_issue`` creates at most one
issue per period: in a single transaction it inserts the ``Issue``, attaches the summaries not yet sent and
inserts one queued ``Delivery`` per active subscriber. Running it again for the same period changes
nothing; a period with no new summaries creates nothing.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, insert, literal, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from newsletter.config import Config
from newsletter.db import session
from newsletter.errors import NewsletterError
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    Subscriber,
    SubscriberStatus,
    Summary,
    utcnow,
)
from newsletter.render import render_subject

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Period:
    key: str  # e.g. "2026-W47"
    start: datetime  # aware UTC, inclusive: Monday 00:00 local
    end: datetime  # aware UTC, exclusive: the next Monday 00:00 local


def period_containing(moment: datetime, zone: ZoneInfo) -> Period:
    """The ISO week, in ``zone``, that ``moment`` (aware) falls in."""
    local = moment.astimezone(zone)
    year, week, weekday = local.isocalendar()
    monday = local.date() - timedelta(days=weekday - 1)
    start = datetime.combine(monday, time(), tzinfo=zone)
    end = datetime.combine(monday + timedelta(days=7), time(), tzinfo=zone)
    return Period(f"{year}-W{week:02d}", start.astimezone(UTC), end.astimezone(UTC))


class PrepareOutcome(enum.StrEnum):
    CREATED = "created"
    EXISTS = "exists"  # the period already has its issue; nothing changed
    EMPTY = "empty"  # no new summaries; no issue created
    NO_RECIPIENTS = "no_recipients"  # nobody is active; no issue created, the summaries wait


@dataclass(frozen=True)
class PrepareResult:
    outcome: PrepareOutcome
    period: Period
    issue: Issue | None = None
    item_count: int = 0
    recipient_count: int = 0

    def message(self) -> str:
        if self.outcome is PrepareOutcome.EMPTY:
            return f"{self.period.key}: no new summaries since the last issue; nothing prepared"
        if self.outcome is PrepareOutcome.NO_RECIPIENTS:
            return (
                f"{self.period.key}: no active subscribers, so nothing was prepared; the {self.item_count} "
                f"new summaries wait for the next issue"
            )
        assert self.issue is not None
        if self.outcome is PrepareOutcome.EXISTS:
            return f"{self.period.key}: issue #{self.issue.number} was already prepared; nothing changed"
        return (
            f"{self.period.key}: prepared issue #{self.issue.number} \"{self.issue.subject}\" with "
            f"{self.item_count} summaries for {self.recipient_count} subscribers"
        )


def pending_summaries(db: Session) -> list[Summary]:
    """Summaries not yet in any issue and not excluded by an editor, oldest first."""
    query = (
        select(Summary)
        .where(col(Summary.issue_id).is_(None), col(Summary.excluded).is_(False))
        .order_by(col(Summary.ingested_at), col(Summary.id))
    )
    return list(db.exec(query))


def issue_items(db: Session, issue: Issue) -> list[Summary]:
    query = select(Summary).where(Summary.issue_id == issue.id).order_by(col(Summary.ingested_at), col(Summary.id))
    return list(db.exec(query))


def draft_issue(db: Session, config: Config, period: Period) -> tuple[Issue, list[Summary]]:
    """The issue the pending summaries would make now, not saved: for prepare and for previews."""
    items = pending_summaries(db)
    number = (db.exec(select(func.max(Issue.number))).one() or 0) + 1
    issue = Issue(
        number=number,
        period_key=period.key,
        period_start=period.start,
        period_end=period.end,
        subject="",
    )
    if items:
        issue.subject = render_subject(config, issue, items)
    return issue, items


def prepare_issue(engine: Engine, config: Config, *, now: datetime | None = None) -> PrepareResult:
    """Create the issue for the period containing ``now`` (default: the current time)."""
    period = period_containing(now or utcnow(), config.schedule.zone)
    with session(engine) as db:
        existing = db.exec(select(Issue).where(Issue.period_key == period.key)).first()
        if existing is not None:
            return PrepareResult(PrepareOutcome.EXISTS, period, existing)
        issue, items = draft_issue(db, config, period)
        if not items:
            log.info("%s: no new summaries, skipping", period.key)
            return PrepareResult(PrepareOutcome.EMPTY, period)
        active = db.exec(select(func.count()).where(Subscriber.status == SubscriberStatus.ACTIVE)).one()
        if not active:
            log.warning("%s: no active subscribers, not preparing an issue", period.key)
            return PrepareResult(PrepareOutcome.NO_RECIPIENTS, period, item_count=len(items))
        try:
            db.add(issue)
            db.flush()
            attached = db.execute(
                update(Summary)
                .where(col(Summary.id).in_([item.id for item in items]), col(Summary.issue_id).is_(None))
                .values(issue_id=issue.id)
            ).rowcount
            recipients = db.execute(
                insert(Delivery).from_select(
                    ["issue_id", "subscriber_id", "status", "attempts", "updated_at"],
                    select(
                        literal(issue.id),
                        Subscriber.id,
                        literal(DeliveryStatus.QUEUED.value),
                        literal(0),
                        literal(utcnow(), Delivery.__table__.c.updated_at.type),
                    ).where(Subscriber.status == SubscriberStatus.ACTIVE),
                )
            ).rowcount
            db.commit()
        except IntegrityError:
            # Another process prepared this period (or took this number) between our read and our write.
            db.rollback()
            existing = db.exec(select(Issue).where(Issue.period_key == period.key)).first()
            if existing is None:
                raise
            return PrepareResult(PrepareOutcome.EXISTS, period, existing)
    log.info("prepared issue #%d for %s: %d items, %d recipients", issue.number, period.key, attached, recipients)
    return PrepareResult(PrepareOutcome.CREATED, period, issue, attached, recipients)


def find_issue(db: Session, number: int | None = None) -> Issue:
    """Issue ``number``, or by default the newest one. Raises NewsletterError when there is none."""
    query = select(Issue)
    query = query.where(Issue.number == number) if number is not None else query.order_by(col(Issue.number).desc())
    issue = db.exec(query).first()
    if issue is None:
        if number is not None:
            raise NewsletterError(f"there is no issue #{number}; `newsletter digest status` lists the issues")
        raise NewsletterError("no issue has been prepared yet; run `newsletter digest prepare` first")
    return issue


def unfinished_issues(db: Session) -> list[Issue]:
    """Issues whose sending has not finished, oldest first."""
    query = select(Issue).where(Issue.status != IssueStatus.SENT).order_by(col(Issue.number))
    return list(db.exec(query))


def delivery_counts(db: Session, issue: Issue) -> dict[DeliveryStatus, int]:
    """How many deliveries of ``issue`` are in each state (every state present, zero if none)."""
    rows = db.exec(
        select(Delivery.status, func.count()).where(Delivery.issue_id == issue.id).group_by(Delivery.status)
    ).all()
    counts = dict.fromkeys(DeliveryStatus, 0)
    counts.update({DeliveryStatus(status): count for status, count in rows})
    return counts
