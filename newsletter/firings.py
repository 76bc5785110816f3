"""Firings: each scheduled time of ``schedule.cron`` is done once, whoever runs it, and makes at most one issue.

A firing is a cron time in the configured timezone (read by :mod:`newsletter.cron`). :func:`fire_if_due`
looks at the newest firing at or before now and, if no ``Firing`` row records it yet, does it: within
``schedule.grace_hours`` of its time it makes the next issue from every summary waiting at that time (or,
with nothing waiting, records "empty", or sends the quiet note when one is configured and no issue went out
since the previous firing); later than that, it records the firing as missed. The ``Firing`` row is written
in the same transaction as the issue, and ``firing.due_at`` is unique, so a second scheduler, a restart or
``digest send --if-due`` finds the firing done and never makes a second issue for it.

After downtime only the newest firing is caught up; the ones before it (since the last recorded firing)
are recorded as missed. A missed firing logs a WARNING only when summaries were waiting at its time; the
advice it gives, ``newsletter digest prepare && newsletter digest send``, sends them at once.

An editor's ``digest prepare`` is not a firing: it makes the next issue at any time, and the next firing
then carries what arrived after it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from apscheduler.triggers.base import BaseTrigger
from sqlalchemy import Engine, func, or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from newsletter.config import Config
from newsletter.cron import cron_trigger, parse_cron
from newsletter.db import session
from newsletter.errors import NewsletterError
from newsletter.issues import PrepareOutcome, prepare_in, waiting_summaries
from newsletter.issues.lookup import NOT_DRAFT
from newsletter.issues.prepare import counted
from newsletter.models import Firing, FiringOutcome, Issue, Summary, utcnow
from newsletter.render import as_utc

log = logging.getLogger(__name__)

ADVICE = "newsletter digest prepare && newsletter digest send"
MAX_BACKFILL = 400  # firings recorded as missed at most in one go (over a year of daily issues)
ATTEMPTS = 3  # an editor's prepare taking the issue number at the same moment: the firing tries again


# --- when firings are ---------------------------------------------------------------------------------


def digest_trigger(config: Config) -> BaseTrigger:
    """The configured cron expression, read as Debian's cron reads it, in the configured timezone."""
    return cron_trigger(parse_cron(config.schedule.cron), config.schedule.zone)


def next_run_time(config: Config, after: datetime | None = None) -> datetime:
    """The next firing after ``after`` (default: now), in the configured timezone."""
    moment = (after or utcnow()).astimezone(config.schedule.zone)
    fire = digest_trigger(config).get_next_fire_time(None, moment)
    assert fire is not None  # the config check refuses a crontab that never fires
    return fire


def last_run_time(config: Config, now: datetime) -> datetime | None:
    """The newest firing at or before ``now`` (within the last year), or None."""
    trigger = digest_trigger(config)
    for window in (timedelta(hours=1), timedelta(days=1), timedelta(days=8), timedelta(days=32), timedelta(days=367)):
        latest = None
        fire = trigger.get_next_fire_time(None, (now - window).astimezone(config.schedule.zone))
        while fire is not None and fire <= now:
            latest = fire
            fire = trigger.get_next_fire_time(fire, fire)
        if latest is not None:
            return latest
    return None


# --- doing a firing -----------------------------------------------------------------------------------


@dataclass
class FiringResult:
    """What :func:`fire_if_due` did about the newest firing (``due_at``, UTC; None: none within a year)."""

    due_at: datetime | None = None
    outcome: FiringOutcome | None = None  # recorded now; None when it was done before (or by another process)
    issue: Issue | None = None
    lines: list[str] = field(default_factory=list)


def fire_if_due(engine: Engine, config: Config, *, now: datetime | None = None) -> FiringResult:
    """Do the newest firing at or before ``now`` if nobody has: the digest job of ``newsletter run``, its
    catch-up on start, and ``digest send --if-due``. Sending is not part of it (see
    :func:`newsletter.schedule.run_if_due`).

    Raises TemplateError when the subject template fails (nothing is recorded, so the next run tries again).
    """
    now = now or utcnow()
    due = last_run_time(config, now)
    if due is None:
        return FiringResult()
    due = as_utc(due)
    result = FiringResult(due_at=due)
    with session(engine) as db:
        done = _recorded(db, due)
    if done is not None:
        log.info("firing at %s: already done (%s)", when(config, due), done.outcome.value)
        return result
    _record_earlier_misses(engine, config, due)
    late = now - due
    if late > config.schedule.grace:
        _missed(engine, config, due, now, result)
    else:
        if late > timedelta(minutes=1):  # late but within the grace period: done now, not missed
            log.info("catching up the firing at %s (%s late)", when(config, due), _age(late))
        _fire(engine, config, due, result)
    return result


def _fire(engine: Engine, config: Config, due: datetime, result: FiringResult) -> None:
    for attempt in range(1, ATTEMPTS + 1):
        with session(engine) as db:
            firing = Firing(due_at=due, outcome=FiringOutcome.EMPTY)
            db.add(firing)
            try:
                db.flush()  # the claim: a second scheduler's flush waits for this transaction, then fails
                note, no_note = _quiet_note(db, config, due)
                prepared = prepare_in(db, config, cutoff=due, quiet_note=note)
                firing.outcome = _OUTCOMES[prepared.outcome]
                firing.issue_id = prepared.issue.id if prepared.issue else None
                if prepared.outcome is PrepareOutcome.EMPTY:
                    firing.detail = f"nothing new was waiting; nothing prepared{f' ({no_note})' if no_note else ''}"
                else:
                    firing.detail = prepared.message()
                db.add(firing)
                db.commit()
            except IntegrityError:
                db.rollback()
                with session(engine) as check:
                    taken = _recorded(check, due)
                if taken is not None:
                    log.info("firing at %s: done by another scheduler (%s)", when(config, due), taken.outcome.value)
                    return
                if attempt == ATTEMPTS:
                    raise NewsletterError(
                        f"firing at {when(config, due)}: other processes kept preparing issues at the same "
                        f"moment; it is tried again on the next run"
                    ) from None
                continue
        line = f"firing at {when(config, due)}: {firing.detail}"
        (log.warning if firing.outcome is FiringOutcome.NO_RECIPIENTS else log.info)(line)
        result.outcome, result.issue, result.lines = firing.outcome, prepared.issue, [line]
        return


_OUTCOMES = {
    PrepareOutcome.CREATED: FiringOutcome.ISSUED,
    PrepareOutcome.QUIET: FiringOutcome.QUIET,
    PrepareOutcome.EMPTY: FiringOutcome.EMPTY,
    PrepareOutcome.NO_RECIPIENTS: FiringOutcome.NO_RECIPIENTS,
}


def _quiet_note(db: Session, config: Config, due: datetime) -> tuple[str | None, str]:
    """(the quiet note to send if nothing is waiting, or None; why there is none though one is configured).

    None when an issue went out since the previous firing (an editor's, prepared by hand): the readers had
    an issue in this interval, so "a quiet week" would be wrong.
    """
    if config.schedule.quiet_note is None:
        return None, ""
    previous = last_run_time(config, due - timedelta(microseconds=1))
    query = select(Issue).where(NOT_DRAFT)
    if previous is not None:
        query = query.where(col(Issue.period_end) > as_utc(previous))
    recent = db.exec(query.order_by(col(Issue.number).desc()).limit(1)).first()
    if recent is not None:
        return None, f"no quiet note: issue #{recent.number} went out since the previous firing"
    return config.schedule.quiet_note, ""


def _missed(engine: Engine, config: Config, due: datetime, now: datetime, result: FiringResult) -> None:
    """Record the newest firing as missed: the scheduler was not running within the grace period of it."""
    with session(engine) as db:
        then = _waiting_at(db, due)
        still = len(waiting_summaries(db, before=due))
    if not then:
        detail = "nothing was waiting"
    else:
        detail = (f"the scheduler was not running within {config.schedule.grace_hours:g} h of it "
                  f"(schedule.grace_hours), so nothing was sent; {counted(then, 'summary')} {_were(then)} waiting")
        if still:
            upcoming = next_run_time(config, now)
            detail += f"; they go out with the next firing at {when(config, upcoming)}, or now with: {ADVICE}"
        else:
            detail += "; they have gone out since"
    line = f"firing at {when(config, due)}: " + (f"MISSED: {detail}" if then else f"missed; {detail}")
    if _record(engine, due, FiringOutcome.MISSED, detail):
        (log.warning if then else log.info)(line)
        result.outcome = FiringOutcome.MISSED
    result.lines = [line]


def _record_earlier_misses(engine: Engine, config: Config, due: datetime) -> None:
    """Record as missed every firing between the last recorded one and ``due`` (the scheduler was down for
    several): only the newest is ever caught up. A fresh database (nothing recorded yet) backfills nothing."""
    with session(engine) as db:
        last = db.exec(select(Firing.due_at).order_by(col(Firing.due_at).desc()).limit(1)).first()
    if last is None:
        return
    trigger, start = digest_trigger(config), as_utc(last).astimezone(config.schedule.zone)
    fire, count = trigger.get_next_fire_time(start, start), 0
    while fire is not None and as_utc(fire) < due and count < MAX_BACKFILL:
        moment = as_utc(fire)
        with session(engine) as db:
            then = _waiting_at(db, moment)
        detail = (f"the scheduler was not running; {counted(then, 'summary')} {_were(then)} waiting, for the next "
                  f"issue" if then else "the scheduler was not running; nothing was waiting")
        if _record(engine, moment, FiringOutcome.MISSED, detail):
            (log.warning if then else log.info)("firing at %s: %s: %s", when(config, moment),
                                                "MISSED" if then else "missed", detail)
        count += 1
        fire = trigger.get_next_fire_time(fire, fire)


def _waiting_at(db: Session, moment: datetime) -> int:
    """How many summaries were waiting at ``moment``: ingested before it and, then, in no issue yet."""
    later_issue = or_(col(Summary.issue_id).is_(None), col(Issue.period_end) > moment)
    return db.exec(
        select(func.count(col(Summary.id)))
        .select_from(Summary)
        .outerjoin(Issue, col(Issue.id) == Summary.issue_id)
        .where(col(Summary.ingested_at) < moment, col(Summary.excluded).is_(False), later_issue)
    ).one()


def _recorded(db: Session, due: datetime) -> Firing | None:
    return db.exec(select(Firing).where(Firing.due_at == due)).first()


def _record(engine: Engine, due: datetime, outcome: FiringOutcome, detail: str) -> bool:
    """Record a firing that made no issue; False when another process recorded it first."""
    with session(engine) as db:
        db.add(Firing(due_at=due, outcome=outcome, detail=detail))
        try:
            db.commit()
        except IntegrityError:
            return False
    return True


def when(config: Config, moment: datetime) -> str:
    """``2026-11-23T08:00+01:00 (Europe/Berlin)``: a moment as the configured timezone reads it."""
    local = moment.astimezone(config.schedule.zone)
    return f"{local.isoformat(timespec='minutes')} ({config.schedule.timezone})"


def _were(count: int) -> str:
    return "was" if count == 1 else "were"


def _age(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"
