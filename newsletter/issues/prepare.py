"""Making the next issue: the draft editors look at, and ``prepare``, which makes it real.

The next issue carries every summary waiting (in no issue, not excluded) at the moment it is prepared, and
covers the span from the previous issue's preparation to that moment. An editor's ``digest prepare`` makes it
at any time, from everything waiting now; a scheduled firing (:mod:`newsletter.firings`) makes it from what
was waiting at the firing's time, inside the transaction that records the firing, with the quiet note when
nothing was. Either way :func:`prepare_in` does it, in one transaction: the ``Issue`` (state ``prepared``),
its summaries attached (never one attached twice: the UPDATE only takes rows still waiting) and one queued
``Delivery`` per active subscriber.

Where an editor's choices for the next issue (item order, lead item, a note, a subject of their own) live:
on its ``Issue`` row. The first choice (:mod:`newsletter.issues.editorial`) saves the next issue as a row
in the ``draft`` state (draft → prepared in :data:`newsletter.issues.states.TRANSITIONS`); :func:`draft`
puts the next issue together from that row when there is one, and :func:`prepare_in` promotes it instead of
inserting a new one, so its number and the choices carry over, whoever prepares it (an editor or a
firing), and the deliveries are still a snapshot taken at preparation.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, func, insert, literal, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from newsletter.config import Config
from newsletter.db import session
from newsletter.errors import NewsletterError, TransitionRefused
from newsletter.issues.lookup import draft_row, issue_items, newest_issue, waiting_summaries
from newsletter.issues.states import Step, transition
from newsletter.models import Delivery, DeliveryStatus, Issue, Subscriber, SubscriberStatus, Summary, utcnow
from newsletter.render import as_utc, render_subject

log = logging.getLogger(__name__)

QUIET_TITLES = {"weekly": "A quiet week", "daily": "A quiet day", "monthly": "A quiet month"}
ATTEMPTS = 3  # two processes taking the same issue number at once: the loser tries again with the next one


class PrepareOutcome(enum.StrEnum):
    CREATED = "created"
    QUIET = "quiet"  # nothing was waiting; an issue carrying only the quiet note was created
    EMPTY = "empty"  # nothing was waiting; no issue created
    NO_RECIPIENTS = "no_recipients"  # nobody is active; no issue created, the summaries wait


@dataclass(frozen=True)
class PrepareResult:
    outcome: PrepareOutcome
    issue: Issue | None = None
    item_count: int = 0
    recipient_count: int = 0
    reason: str = ""  # for EMPTY: why (e.g. no quiet note since an issue went out by hand)

    def message(self) -> str:
        if self.outcome is PrepareOutcome.EMPTY:
            return f"no summary is waiting; nothing prepared{f' ({self.reason})' if self.reason else ''}"
        if self.outcome is PrepareOutcome.NO_RECIPIENTS:
            wait = "waits" if self.item_count == 1 else "wait"
            return (f"no active subscribers, so nothing was prepared; {counted(self.item_count, 'summary')} {wait} "
                    f"for the next issue")
        assert self.issue is not None
        readers = counted(self.recipient_count, "subscriber")
        if self.outcome is PrepareOutcome.QUIET:
            return f"nothing new was waiting; prepared issue #{self.issue.number} with the quiet note for {readers}"
        return (f"prepared issue #{self.issue.number} \"{self.issue.subject}\" with "
                f"{counted(self.item_count, 'summary')} for {readers}")


def counted(count: int, noun: str) -> str:
    """``1 summary``, ``2 summaries``, ``3 subscribers``."""
    if count == 1:
        return f"1 {noun}"
    return f"{count} {noun[:-1]}ies" if noun.endswith("y") else f"{count} {noun}s"


@dataclass(frozen=True)
class Draft:
    """The next issue as :func:`prepare_issue` would make it now (with the editor's choices), not saved."""

    issue: Issue
    items: list[Summary]


def draft(db: Session, config: Config, *, now: datetime | None = None) -> Draft | None:
    """The next issue from the summaries waiting at ``now`` (default: now), or None when none is waiting.

    Its number and span are the ones preparing it now would give, its choices the draft row's. The issue
    returned is a copy, never saved. Raises TemplateError from the subject.
    """
    cutoff = now or utcnow()
    items = waiting_summaries(db, before=cutoff)
    if not items:
        return None
    issue = next_issue(db, items, cutoff)
    issue.subject = render_subject(config, issue, items)
    return Draft(issue, items)


def next_issue(db: Session, items: list[Summary], cutoff: datetime) -> Issue:
    """The next issue, unsaved: the draft row's number and choices if there is one, covering the span
    since the newest issue was prepared (the first issue: since its oldest item) up to ``cutoff``."""
    row = draft_row(db)
    fresh = _new_issue(db, items, cutoff)
    if row is None:
        return fresh
    choices = row.model_dump(exclude={"id", "period_start", "period_end", "subject", "undo"})
    return Issue(**choices, period_start=fresh.period_start, period_end=fresh.period_end, subject="")


def _new_issue(db: Session, items: list[Summary], cutoff: datetime) -> Issue:
    """An unsaved issue numbered after the newest one, covering the span since that one was prepared (the
    first issue: since its oldest item; with nothing yet, ``cutoff`` alone) up to ``cutoff``."""
    previous = newest_issue(db)
    number = previous.number + 1 if previous else 1  # next_number(), without asking again
    if previous:
        start = as_utc(previous.period_end)
    else:
        start = min((as_utc(item.ingested_at) for item in items), default=cutoff)
    return Issue(number=number, period_start=min(start, cutoff), period_end=cutoff, subject="")


def prepare_issue(engine: Engine, config: Config, *, now: datetime | None = None) -> PrepareResult:
    """An editor's ``digest prepare``: the next issue from every summary waiting at ``now`` (default: now),
    whatever was prepared before. Nothing waiting, or nobody to send to, prepares nothing and says so.

    Raises TemplateError when the subject template fails.
    """
    cutoff = now or utcnow()
    for attempt in range(1, ATTEMPTS + 1):
        with session(engine) as db:
            try:
                result = prepare_in(db, config, cutoff=cutoff)
                db.commit()
                return result
            except IntegrityError:
                db.rollback()
                if attempt == ATTEMPTS:
                    raise NewsletterError(
                        "other processes kept preparing issues at the same moment; run `newsletter digest "
                        "prepare` again"
                    ) from None
    raise AssertionError("unreachable")


def prepare_in(db: Session, config: Config, *, cutoff: datetime, quiet_note: str | None = None) -> PrepareResult:
    """Make the next issue in ``db``'s transaction (the caller commits) from the summaries waiting at
    ``cutoff``; with nothing waiting and ``quiet_note``, an issue carrying only that note.

    Raises IntegrityError when another process took the issue's number meanwhile (roll back and try
    again), TemplateError when the subject template fails.
    """
    cutoff = as_utc(cutoff)
    items = waiting_summaries(db, before=cutoff)
    quiet = not items and quiet_note is not None
    if quiet:
        items = [_quiet_note(config, quiet_note or "", cutoff)]
    if not items:
        log.info("no summary is waiting; nothing prepared")
        return PrepareResult(PrepareOutcome.EMPTY)
    active = db.exec(select(func.count()).where(Subscriber.status == SubscriberStatus.ACTIVE)).one()
    if not active:
        log.warning("no active subscribers, not preparing an issue")
        return PrepareResult(PrepareOutcome.NO_RECIPIENTS, item_count=0 if quiet else len(items))
    issue = _promoted_draft(db, items, cutoff) or _new_issue(db, items, cutoff)
    issue.subject = "…"  # rendered below from the items it really got
    db.add_all([issue, *items] if quiet else [issue])
    db.flush()
    db.execute(
        update(Summary)
        .where(col(Summary.id).in_([item.id for item in items]), col(Summary.issue_id).is_(None))
        .values(issue_id=issue.id)
        .execution_options(synchronize_session=False)
    )
    attached = issue_items(db, issue)  # another prepare may have taken some of them first
    if not attached:
        db.delete(issue)
        db.flush()
        return PrepareResult(PrepareOutcome.EMPTY)
    issue.subject = render_subject(config, issue, attached)
    db.add(issue)
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
    db.flush()
    # Counted, not rowcount: psycopg reports -1 for INSERT ... SELECT.
    recipients = db.exec(select(func.count()).where(Delivery.issue_id == issue.id)).one()
    log.info("prepared issue #%d: %d items, %d recipients", issue.number, len(attached), recipients)
    outcome = PrepareOutcome.QUIET if quiet else PrepareOutcome.CREATED
    return PrepareResult(outcome, issue, len(attached), recipients)


def _promoted_draft(db: Session, items: list[Summary], cutoff: datetime) -> Issue | None:
    """The draft row, now ``prepared`` and covering the span up to ``cutoff`` (in ``db``'s transaction), or
    None when there is none or another process promoted it first."""
    row = draft_row(db)
    if row is None:
        return None
    fresh = _new_issue(db, items, cutoff)
    try:
        issue = transition(db, row, Step.PREPARE)
    except TransitionRefused:  # prepared by another process meanwhile: this one makes the issue after it
        return None
    issue.period_start, issue.period_end, issue.created_at = fresh.period_start, fresh.period_end, utcnow()
    issue.undo = []  # undoing is for the draft; the choices themselves stay, as the record of what was sent
    return issue


def _quiet_note(config: Config, note: str, cutoff: datetime) -> Summary:
    """The one item of a quiet firing's issue: ``schedule.quiet_note`` as a summary, so the normal
    templates, archive and text part show it like any item."""
    return Summary(
        uid=f"quiet-note:{cutoff.isoformat()}",
        title=QUIET_TITLES[config.schedule.cadence],
        summary=note,
        origin="scheduler",
        ingested_at=cutoff - timedelta(microseconds=1),
    )
