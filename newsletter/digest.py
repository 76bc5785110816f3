"""Periods and issues: which summaries and which subscribers make up the next digest.

A period is a calendar span in the configured timezone, by ``schedule.cadence``: an ISO week
(``2026-W47``, the default), a day (``2026-11-22``) or a month (``2026-11``). ``prepare_issue`` creates at
most one issue per period (``Issue.period_key`` is unique): in a single transaction it inserts the
``Issue``, attaches the summaries not yet sent and inserts one queued ``Delivery`` per active subscriber.
Running it again for the same period changes nothing; a period with no new summaries creates nothing
(or, with ``schedule.quiet_note``, an issue carrying only that note).

Which period an issue is for: the scheduler, firing at the start of a new period, prepares the period
that just ENDED (:func:`period_before`), with the summaries ingested before that period's end; anything
ingested later waits for the next issue. ``newsletter digest prepare`` by hand prepares the period that
is running now, with every summary waiting.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Literal
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


Cadence = Literal["weekly", "daily", "monthly"]


@dataclass(frozen=True)
class Period:
    key: str  # "2026-W47", "2026-11-22" or "2026-11"
    start: datetime  # aware UTC, inclusive: the first local midnight of the period
    end: datetime  # aware UTC, exclusive: the first local midnight of the next period


def period_containing(moment: datetime, zone: ZoneInfo, cadence: Cadence = "weekly") -> Period:
    """The period (ISO week, day or month, in ``zone``) that ``moment`` (aware) falls in.

    Boundaries are local midnights, so a period is 23 or 25 hours longer or shorter across a DST change,
    never shifted by it.
    """
    day = moment.astimezone(zone).date()
    if cadence == "daily":
        first, after, key = day, day + timedelta(days=1), day.isoformat()
    elif cadence == "monthly":
        first = day.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
        key = f"{first.year}-{first.month:02d}"
    else:
        year, week, weekday = day.isocalendar()
        first = day - timedelta(days=weekday - 1)
        after, key = first + timedelta(days=7), f"{year}-W{week:02d}"
    start = datetime.combine(first, time(), tzinfo=zone)
    end = datetime.combine(after, time(), tzinfo=zone)
    return Period(key, start.astimezone(UTC), end.astimezone(UTC))


def period_before(moment: datetime, zone: ZoneInfo, cadence: Cadence = "weekly") -> Period:
    """The period that ended most recently before ``moment``: what a job firing at ``moment`` sends."""
    current = period_containing(moment, zone, cadence)
    return period_containing(current.start - timedelta(microseconds=1), zone, cadence)


class PrepareOutcome(enum.StrEnum):
    CREATED = "created"
    QUIET = "quiet"  # no new summaries in an ended period; an issue with only the quiet note was created
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
    later_issue: Issue | None = None  # EMPTY with no quiet note because this later period's issue exists

    def message(self) -> str:
        if self.outcome is PrepareOutcome.EMPTY and self.later_issue is not None:
            return (
                f"{self.period.key}: no new summaries since the last issue; nothing prepared, and no quiet note: "
                f"issue #{self.later_issue.number} for the later period {self.later_issue.period_key} was "
                f"already prepared (by hand) and carries them"
            )
        if self.outcome is PrepareOutcome.EMPTY:
            return f"{self.period.key}: no new summaries since the last issue; nothing prepared"
        if self.outcome is PrepareOutcome.NO_RECIPIENTS:
            return (
                f"{self.period.key}: no active subscribers, so nothing was prepared; the {self.item_count} "
                f"new summaries wait for the next issue"
            )
        assert self.issue is not None
        if self.outcome is PrepareOutcome.QUIET:
            return (
                f"{self.period.key}: no new summaries; prepared issue #{self.issue.number} with the quiet note "
                f"for {self.recipient_count} subscribers"
            )
        if self.outcome is PrepareOutcome.EXISTS:
            return f"{self.period.key}: issue #{self.issue.number} was already prepared; nothing changed"
        return (
            f"{self.period.key}: prepared issue #{self.issue.number} \"{self.issue.subject}\" with "
            f"{self.item_count} summaries for {self.recipient_count} subscribers"
        )


def pending_summaries(db: Session, before: datetime | None = None) -> list[Summary]:
    """Summaries not yet in any issue and not excluded by an editor, oldest first; with ``before``, only
    those ingested before it."""
    # THE item-selection query: every issue (scheduled, by hand, previews) picks its summaries here.
    query = select(Summary).where(col(Summary.issue_id).is_(None), col(Summary.excluded).is_(False))
    if before is not None:
        query = query.where(col(Summary.ingested_at) < before)
    query = query.order_by(col(Summary.ingested_at), col(Summary.id))
    return list(db.exec(query))


def issue_items(db: Session, issue: Issue) -> list[Summary]:
    query = select(Summary).where(Summary.issue_id == issue.id).order_by(col(Summary.ingested_at), col(Summary.id))
    return list(db.exec(query))


def draft_issue(
    db: Session, config: Config, period: Period, *, before: datetime | None = None
) -> tuple[Issue, list[Summary]]:
    """The issue the pending summaries (ingested before ``before``, if given) would make, not saved: for
    prepare and for previews."""
    items = pending_summaries(db, before)
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


def prepare_issue(
    engine: Engine, config: Config, *, now: datetime | None = None, period: Period | None = None
) -> PrepareResult:
    """Create the issue for ``period``, or by default for the period containing ``now`` (default: the
    current time).

    A given ``period`` is one that has ended (what the scheduler passes): only summaries ingested before its
    end go in, and when there are none and ``schedule.quiet_note`` is set, the issue carries that note
    instead of being skipped, unless a later period already has an issue (prepared by hand before the
    scheduled time: the summaries went out there). By hand (no ``period``) every waiting summary goes in and
    an empty period is always skipped, since more may still arrive.
    """
    closed = period is not None
    period = period or period_containing(now or utcnow(), config.schedule.zone, config.schedule.cadence)
    with session(engine) as db:
        existing = db.exec(select(Issue).where(Issue.period_key == period.key)).first()
        if existing is not None:
            return PrepareResult(PrepareOutcome.EXISTS, period, existing)
        issue, items = draft_issue(db, config, period, before=period.end if closed else None)
        quiet = not items and closed and config.schedule.quiet_note is not None
        later = _later_issue(db, period) if quiet else None
        if later is not None:
            quiet = False  # prepared by hand before the scheduled time: this period's summaries went out there
        if quiet:
            items = [_quiet_note(config, period)]
            issue.subject = render_subject(config, issue, items)
        if not items:
            log.info("%s: no new summaries, skipping", period.key)
            return PrepareResult(PrepareOutcome.EMPTY, period, later_issue=later)
        active = db.exec(select(func.count()).where(Subscriber.status == SubscriberStatus.ACTIVE)).one()
        if not active:
            log.warning("%s: no active subscribers, not preparing an issue", period.key)
            return PrepareResult(PrepareOutcome.NO_RECIPIENTS, period, item_count=0 if quiet else len(items))
        try:
            db.add_all([issue, *items] if quiet else [issue])
            db.flush()
            attached = db.execute(
                update(Summary)
                .where(col(Summary.id).in_([item.id for item in items]), col(Summary.issue_id).is_(None))
                .values(issue_id=issue.id)
            ).rowcount
            db.execute(
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
            )
            # Counted, not rowcount: psycopg reports -1 for INSERT ... SELECT.
            recipients = db.exec(select(func.count()).where(Delivery.issue_id == issue.id)).one()
            db.commit()
        except IntegrityError:
            # Another process prepared this period (or took this number) between our read and our write.
            db.rollback()
            existing = db.exec(select(Issue).where(Issue.period_key == period.key)).first()
            if existing is None:
                raise
            return PrepareResult(PrepareOutcome.EXISTS, period, existing)
    log.info("prepared issue #%d for %s: %d items, %d recipients", issue.number, period.key, attached, recipients)
    outcome = PrepareOutcome.QUIET if quiet else PrepareOutcome.CREATED
    return PrepareResult(outcome, period, issue, attached, recipients)


QUIET_TITLES = {"weekly": "A quiet week", "daily": "A quiet day", "monthly": "A quiet month"}


def _later_issue(db: Session, period: Period) -> Issue | None:
    """The newest issue of a period after ``period``, if one exists (``digest prepare`` run by hand early)."""
    query = select(Issue).where(col(Issue.period_start) >= period.end).order_by(col(Issue.number).desc())
    return db.exec(query).first()


def _quiet_note(config: Config, period: Period) -> Summary:
    """The one item of a quiet period's issue: ``schedule.quiet_note`` as a summary, so the normal
    templates, archive and text part show it like any item."""
    return Summary(
        uid=f"quiet-note:{period.key}",
        title=QUIET_TITLES[config.schedule.cadence],
        summary=config.schedule.quiet_note or "",
        origin="scheduler",
        ingested_at=period.end - timedelta(microseconds=1),
    )


def find_issue(db: Session, number: int | None = None) -> Issue:
    """Issue ``number``, or by default the newest one. Raises NewsletterError when there is none."""
    query = select(Issue)
    query = query.where(Issue.number == number) if number is not None else query.order_by(col(Issue.number).desc())
    issue = db.exec(query).first()
    if issue is None:
        if number is not None:
            raise NewsletterError(f"there is no issue #{number}; {_existing_numbers(db)}")
        raise NewsletterError("no issue has been prepared yet; run `newsletter digest prepare` first")
    return issue


def _existing_numbers(db: Session) -> str:
    """Which issue numbers exist, for an error about one that does not."""
    low, high = db.exec(select(func.min(Issue.number), func.max(Issue.number))).one()
    if high is None:
        return "no issue has been prepared yet; run `newsletter digest prepare` first"
    if low == high:
        return f"the only issue is #{high}"
    return f"issues go from #{low} to #{high}"


def unfinished_issues(db: Session) -> list[Issue]:
    """Issues whose sending has not finished (paused ones included, cancelled ones not), oldest first."""
    query = (
        select(Issue)
        .where(col(Issue.status).not_in((IssueStatus.SENT, IssueStatus.CANCELLED)))
        .order_by(col(Issue.number))
    )
    return list(db.exec(query))


def delivery_counts(db: Session, issue: Issue) -> dict[DeliveryStatus, int]:
    """How many deliveries of ``issue`` are in each state (every state present, zero if none)."""
    rows = db.exec(
        select(Delivery.status, func.count()).where(Delivery.issue_id == issue.id).group_by(Delivery.status)
    ).all()
    counts = dict.fromkeys(DeliveryStatus, 0)
    counts.update({DeliveryStatus(status): count for status, count in rows})
    return counts
