"""``newsletter run``: the jobs on APScheduler, the scheduler lease, catch-up and the period records.

Every job is a one-line call into a stage function the CLI uses too (:func:`build_jobs`). The digest job
is :func:`run_if_due`: it finds the newest scheduled time that has passed, and if that time's period has
no record yet it prepares and sends the period's issue (within ``schedule.grace_hours`` of the scheduled
time) or records the period as missed. Because it decides from the database and the clock, never from
"what fired", the same call serves the cron firing, catch-up on start and ``digest send --if-due``.

Exactly one issue per period: ``Issue.period_key`` and ``ScheduledPeriod.period_key`` are unique, so a
second scheduler, a restart mid-send or a manual prepare can never create a second issue, and sending
goes through the delivery ledger (each delivery is claimed once). On top of that only the process holding
the ``scheduler_lease`` row fires jobs; the others wait and say so.

The database going away (a PostgreSQL restart, a SQLite file locked by another program) never stops the
scheduler: the lease renewal and every job wait for it (:func:`~newsletter.db.patiently`), logging one
line per try, and go on where they were; a job is never started twice for one firing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from newsletter.backends import create_backend
from newsletter.bounces import process_bounces
from newsletter.checks import check_issue
from newsletter.config import Config
from newsletter.db import Patience, describe, patiently, session
from newsletter.delivery import SENDABLE, SendReport, due_now, send_issue
from newsletter.digest import (
    Period,
    PrepareOutcome,
    period_before,
    prepare_issue,
    unfinished_issues,
)
from newsletter.errors import DatabaseFull, DatabaseUnavailable, NewsletterError
from newsletter.ingest.feeds import poll_feeds
from newsletter.ingest.inbox import process_inbox
from newsletter.models import (
    Issue,
    IssueStatus,
    JobFailure,
    PeriodOutcome,
    ScheduledPeriod,
    SchedulerLease,
    utcnow,
)
from newsletter.render import as_utc

log = logging.getLogger(__name__)

DIGEST_JOB = "digest"
LEASE_NAME = "scheduler"


# --- when the digest is due ---------------------------------------------------------------------------


class WallClockCronTrigger(CronTrigger):
    """A CronTrigger that fires once at a local time the autumn DST change repeats (the first time).

    APScheduler fires such a time twice (02:30 summer time, then 02:30 winter time). A time the spring
    change skips fires once, at the same UTC moment winter time would give it (02:30 → 03:30 local).
    """

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        fire = super().get_next_fire_time(previous_fire_time, now)
        while fire is not None and _second_occurrence(fire):
            fire = super().get_next_fire_time(fire, fire)
        return fire


def _second_occurrence(moment: datetime) -> bool:
    """True when ``moment``'s local wall time happened once already that day (the repeated hour)."""
    first = moment.replace(fold=0)
    return first.astimezone(UTC) != moment.astimezone(UTC)


def digest_trigger(config: Config) -> CronTrigger:
    """The configured cron expression, evaluated in the configured timezone, once per wall-clock time."""
    return WallClockCronTrigger.from_crontab(config.schedule.cron, timezone=config.schedule.zone)


def next_run_time(config: Config, after: datetime | None = None) -> datetime:
    """When the digest job fires next after ``after`` (default: now), in the configured timezone."""
    moment = (after or utcnow()).astimezone(config.schedule.zone)
    fire = digest_trigger(config).get_next_fire_time(None, moment)
    assert fire is not None  # the config check refuses a crontab that never fires
    return fire


def last_run_time(config: Config, now: datetime) -> datetime | None:
    """The newest scheduled time at or before ``now`` (within the last year), or None."""
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


# --- the digest job -----------------------------------------------------------------------------------


@dataclass
class DueResult:
    """What :func:`run_if_due` did: the period it looked at (if any) and one line per thing done."""

    period: Period | None = None
    due_at: datetime | None = None
    outcome: PeriodOutcome | None = None  # what was recorded for the period now; None if nothing new
    lines: list[str] = field(default_factory=list)
    sends: list[SendReport] = field(default_factory=list)


def run_if_due(
    engine: Engine, config: Config, *, now: datetime | None = None, halt: threading.Event | None = None,
    patience: Patience | None = None,
) -> DueResult:
    """Do what is due at ``now``: the period's issue if its scheduled time has passed, then every unfinished
    send (retries, an interrupted send). The digest job, catch-up on start and ``digest send --if-due``.

    The newest scheduled time decides: its period (the one that ended before it) is prepared and sent when
    ``now`` is within the grace period of it, otherwise recorded as missed (its summaries wait for the next
    issue). Older periods are never caught up, so there is never more than one catch-up issue. Raises
    NewsletterError when preparing or sending fails; whatever was recorded stays recorded. ``patience``: how
    long a send waits for the database (default: ``database.outage_limit``).
    """
    now = now or utcnow()
    result = DueResult()
    due_at = last_run_time(config, now)
    if due_at is not None:
        result.due_at = due_at.astimezone(UTC)
        result.period = period_before(due_at, config.schedule.zone, config.schedule.cadence)
        _handle_period(engine, config, result, now)
    result.sends = send_due(engine, config, halt=halt, patience=patience)
    result.lines += [report.summary_line() for report in result.sends]
    return result


def _handle_period(engine: Engine, config: Config, result: DueResult, now: datetime) -> None:
    period, due_at = result.period, result.due_at
    assert period is not None and due_at is not None
    with session(engine) as db:
        done = db.exec(select(ScheduledPeriod).where(ScheduledPeriod.period_key == period.key)).first()
    if done is not None:
        log.info("%s: already done (%s at %s)", period.key, done.outcome.value, as_utc(done.recorded_at).isoformat())
        return
    _record_earlier_misses(engine, config, period, due_at)
    late = now - due_at
    if late > config.schedule.grace:
        line = (
            f"{period.key}: MISSED: its issue was due at {_when(config, due_at)}, {_age(late)} ago, beyond the "
            f"{config.schedule.grace_hours:g} h grace period (schedule.grace_hours); its summaries go into the next "
            f"issue. To send them now anyway: newsletter digest prepare && newsletter digest send"
        )
        log.warning(line)
        _record(engine, period, PeriodOutcome.MISSED, due_at, None, line)
        result.outcome, result.lines = PeriodOutcome.MISSED, [line]
        return
    if late > timedelta(minutes=1):
        log.warning("%s: catching up the issue due at %s (%s late)", period.key, _when(config, due_at), _age(late))
    prepared = prepare_issue(engine, config, period=period)
    log.info(prepared.message())
    outcome = _OUTCOMES[prepared.outcome]
    if _record(engine, period, outcome, due_at, prepared.issue, prepared.message()):
        result.outcome = outcome
    result.lines.append(prepared.message())


def _record_earlier_misses(engine: Engine, config: Config, current: Period, due_at: datetime) -> None:
    """Record as missed every period whose scheduled time fell between the last recorded one and
    ``due_at`` (the scheduler was down for several of them); only the newest is ever caught up. A fresh
    database (nothing recorded yet) has nothing to backfill."""
    with session(engine) as db:
        last = db.exec(select(ScheduledPeriod.due_at).order_by(col(ScheduledPeriod.due_at).desc())).first()
        issued = set(db.exec(select(Issue.period_key)))
    if last is None:
        return
    trigger, seen = digest_trigger(config), {current.key}
    fire = trigger.get_next_fire_time(as_utc(last), as_utc(last))
    while fire is not None and fire < due_at and len(seen) < MAX_BACKFILL:
        period = period_before(fire, config.schedule.zone, config.schedule.cadence)
        if period.key not in seen and period.key not in issued:
            seen.add(period.key)
            line = (
                f"{period.key}: MISSED: the scheduler was not running at {_when(config, fire)}; its summaries go "
                f"into the next issue"
            )
            if _record(engine, period, PeriodOutcome.MISSED, fire, None, line):
                log.warning(line)
        fire = trigger.get_next_fire_time(fire, fire)


MAX_BACKFILL = 400  # periods recorded as missed at most in one go (over a year of daily issues)


_OUTCOMES = {
    PrepareOutcome.CREATED: PeriodOutcome.ISSUED,
    PrepareOutcome.EXISTS: PeriodOutcome.ISSUED,
    PrepareOutcome.QUIET: PeriodOutcome.QUIET,
    PrepareOutcome.EMPTY: PeriodOutcome.EMPTY,
    PrepareOutcome.NO_RECIPIENTS: PeriodOutcome.NO_RECIPIENTS,
}


def _record(
    engine: Engine, period: Period, outcome: PeriodOutcome, due_at: datetime, issue: Issue | None, detail: str
) -> bool:
    """Record what happened to ``period``; False when another process recorded it first."""
    with session(engine) as db:
        db.add(ScheduledPeriod(
            period_key=period.key, outcome=outcome, due_at=due_at, issue_id=issue.id if issue else None, detail=detail
        ))
        try:
            db.commit()
        except IntegrityError:
            return False
    return True


def send_due(
    engine: Engine, config: Config, *, halt: threading.Event | None = None, patience: Patience | None = None
) -> list[SendReport]:
    """Send what is due of every unfinished issue (retries whose time has come, an interrupted send); does
    nothing when no issue is left to send (paused and cancelled ones are left alone). With ``halt``, stops
    after the messages in flight once it is set.

    Each issue passes the pre-send checks first (as ``digest send`` without ``--force``). One that fails is
    not sent: its findings are logged and NewsletterError names it after the others were sent.
    """
    with session(engine) as db:
        unfinished = unfinished_issues(db)
        numbers = [issue.number for issue in unfinished if issue.status in SENDABLE and due_now(db, issue)]
    for issue in unfinished:
        if issue.status is IssueStatus.PAUSED:
            log.warning("issue #%d is paused; `newsletter digest resume %d` lets it go on", issue.number, issue.number)
    refused = [number for number in numbers if not _passes_checks(engine, config, number)]
    reports: list[SendReport] = []
    backend = create_backend(config) if len(refused) < len(numbers) else None
    for number in numbers:
        if backend is None or number in refused:
            continue
        reports.append(send_issue(engine, config, backend, number, stop=halt, patience=patience))
        if halt is not None and halt.is_set():
            log.warning("stopped sending after the messages in flight; the rest is sent on the next run")
            break
    if refused:
        listed = ", ".join(f"#{number}" for number in refused)
        raise NewsletterError(
            f"issue {listed} fails the pre-send checks (findings in the log above); fix the templates or the "
            f"summaries, or send anyway with `newsletter digest send --force`"
        )
    return reports


def _passes_checks(engine: Engine, config: Config, number: int) -> bool:
    report = check_issue(engine, config, number)
    for finding in report.findings:
        (log.error if finding.severity == "error" else log.warning)("issue #%d: %s", number, finding.line())
    return report.ok


# --- job list and failures ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One scheduled job: ``call(engine, config)`` is a stage function (or a partial of one)."""

    id: str
    trigger: BaseTrigger
    call: Callable[[Engine, Config], Any]


def build_jobs(config: Config, halt: threading.Event) -> list[Job]:
    """The jobs ``newsletter run`` fires. Adding a job is one line here. Sends wait for the database for as
    long as it takes (until ``halt``)."""
    every = config.schedule.intervals
    patient = Patience(None, halt)
    return [
        Job(DIGEST_JOB, digest_trigger(config), partial(run_if_due, halt=halt, patience=patient)),
        Job("send-due", IntervalTrigger(minutes=every.send_due), partial(send_due, halt=halt, patience=patient)),
        *([Job("feeds", IntervalTrigger(minutes=every.feeds), poll_feeds)] if config.ingest.feeds else []),
        *([Job("inbox", IntervalTrigger(minutes=every.inbox), process_inbox)] if config.ingest.inbox else []),
        *([Job("bounces", IntervalTrigger(minutes=every.bounces), process_bounces)] if config.bounces.mailbox else []),
    ]


def run_job(engine: Engine, config: Config, job: Job, halt: threading.Event | None = None) -> None:
    """Run ``job`` once; an error is logged (with its traceback unless it is a NewsletterError, whose
    message says it all) and recorded in ``job_failure``, never raised, so the scheduler keeps running.

    A job the database failed (it went away) is run again once it is back, until ``halt``: every job decides
    from the database what is left to do, so running it again does only what the failed run did not."""
    try:
        patiently(lambda: job.call(engine, config), Patience(None, halt))
    except Exception as exc:
        if isinstance(exc, NewsletterError):
            log.error("job %s failed: %s", job.id, exc)
        else:
            log.exception("job %s failed", job.id)
        record_failure(engine, job.id, exc)


def record_failure(engine: Engine, job_id: str, exc: BaseException) -> None:
    text = " ".join(str(exc).split()) or type(exc).__name__
    trace = "".join(traceback.format_exception(exc))
    try:
        with session(engine) as db:
            db.add(JobFailure(job=job_id, error=f"{type(exc).__name__}: {text}", traceback=trace))
            db.commit()
    except Exception as failure:  # the database may be what failed; the log line above already has it
        log.error("could not record the failure of job %s: %s", job_id, describe(failure))


# --- the lease ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseTiming:
    ttl: timedelta  # a holder that stops renewing loses the lease after this
    renew: timedelta  # how often the holder renews, and a waiter retries

    @classmethod
    def of(cls, config: Config) -> LeaseTiming:
        """``schedule.lease_seconds``, renewed four times per lease."""
        ttl = timedelta(seconds=config.schedule.lease_seconds)
        return cls(ttl, ttl / 4)


@dataclass(frozen=True)
class LeaseHolder:
    owner: str
    expires_at: datetime


def acquire_lease(engine: Engine, owner: str, ttl: timedelta, *, now: datetime | None = None) -> LeaseHolder:
    """Take or renew the scheduler lease for ``owner``; returns who holds it afterwards (``owner`` on
    success). Taken over only when the current holder's lease has expired."""
    now = now or utcnow()
    with session(engine) as db:
        taken = db.execute(
            update(SchedulerLease)
            .where(
                col(SchedulerLease.name) == LEASE_NAME,
                (col(SchedulerLease.owner) == owner) | (col(SchedulerLease.expires_at) < now),
            )
            .values(owner=owner, expires_at=now + ttl)
        ).rowcount
        if not taken:
            db.add(SchedulerLease(name=LEASE_NAME, owner=owner, acquired_at=now, expires_at=now + ttl))
            try:
                db.commit()
            except IntegrityError:  # someone else holds it (or took it just now)
                db.rollback()
        else:
            db.commit()
        holder = db.get(SchedulerLease, LEASE_NAME)
        assert holder is not None
        db.refresh(holder)
        return LeaseHolder(holder.owner, as_utc(holder.expires_at))


def release_lease(engine: Engine, owner: str) -> None:
    """Give the lease up at once (clean shutdown), so another process need not wait for it to expire."""
    with session(engine) as db:
        db.execute(
            update(SchedulerLease)
            .where(col(SchedulerLease.name) == LEASE_NAME, col(SchedulerLease.owner) == owner)
            .values(expires_at=datetime(1970, 1, 1, tzinfo=UTC))
        )
        db.commit()


def lease_owner_name() -> str:
    """host:pid:random, so the log and ``newsletter status`` say which process holds the lease."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


# --- newsletter run -----------------------------------------------------------------------------------


def run_scheduler(
    engine: Engine,
    config: Config,
    stop: threading.Event,
    *,
    owner: str | None = None,
) -> None:
    """Run the jobs until ``stop`` is set, firing them only while this process holds the lease.

    On taking the lease the digest job runs at once (catch-up; it does nothing when the period is done).
    When ``stop`` is set, a send stops after its window in flight, the running job finishes, and the lease
    is released.
    """
    owner = owner or lease_owner_name()
    timing = LeaseTiming.of(config)
    reported: str | None = None
    try:
        while not stop.is_set():
            holder = _lease(engine, owner, timing, stop)
            if holder is None:  # stopped while waiting for the database
                break
            if holder.owner != owner:
                if reported != holder.owner:
                    log.warning(
                        "another scheduler (%s) holds the lease until %s; waiting to take over",
                        holder.owner, holder.expires_at.isoformat(timespec="seconds"),
                    )
                    reported = holder.owner
                stop.wait(timing.renew.total_seconds())
                continue
            reported = None
            log.info("holding the scheduler lease as %s", owner)
            _run_holding(engine, config, owner, stop, timing)
    finally:
        try:
            release_lease(engine, owner)
        except Exception as exc:  # the database is away: the lease runs out by itself
            log.warning("could not release the scheduler lease (%s); another scheduler takes over once it expires "
                        "(schedule.lease_seconds)", describe(exc))
    log.info("scheduler stopped")


def _lease(engine: Engine, owner: str, timing: LeaseTiming, stop: threading.Event) -> LeaseHolder | None:
    """Take or renew the lease, waiting for the database as long as it takes (a full disk included: tried
    again every renewal interval); None once ``stop`` is set.

    After an outage that outlasted the lease, the lease is taken again unless another scheduler took it
    meanwhile (then that one holds it and this one waits)."""
    while True:
        try:
            return patiently(lambda: acquire_lease(engine, owner, timing.ttl), Patience(None, stop))
        except DatabaseUnavailable:
            return None
        except DatabaseFull as exc:
            log.error("cannot renew the scheduler lease: %s; trying again in %g s", exc, timing.renew.total_seconds())
            if stop.wait(timing.renew.total_seconds()):
                return None


def _run_holding(engine: Engine, config: Config, owner: str, stop: threading.Event, timing: LeaseTiming) -> None:
    """Fire the jobs while the lease is renewed; return on ``stop`` or when the lease is lost."""
    halt = threading.Event()
    # One worker: the digest job and the retry job never send at the same time.
    scheduler = BackgroundScheduler(timezone=config.schedule.zone, executors={"default": ThreadPoolExecutor(1)})
    for job in build_jobs(config, halt):
        first = {"next_run_time": datetime.now(config.schedule.zone)} if job.id == DIGEST_JOB else {}
        scheduler.add_job(
            run_job, job.trigger, args=(engine, config, job, halt), id=job.id, coalesce=True, max_instances=1,
            misfire_grace_time=None, **first,
        )
    scheduler.start()
    upcoming = next_run_time(config)
    log.info(
        "scheduler started: next digest at %s (%s UTC), cron '%s' in %s, %s periods; due sends every %d minutes",
        upcoming.isoformat(timespec="minutes"),
        upcoming.astimezone(UTC).strftime("%Y-%m-%d %H:%M"),
        config.schedule.cron,
        config.schedule.timezone,
        config.schedule.cadence,
        config.schedule.intervals.send_due,
    )
    try:
        while not stop.wait(timing.renew.total_seconds()):
            holder = _lease(engine, owner, timing, stop)
            if holder is None:
                break
            if holder.owner != owner:
                log.error("lost the scheduler lease to %s; pausing jobs", holder.owner)
                break
    finally:
        halt.set()
        scheduler.shutdown(wait=True)


def _when(config: Config, moment: datetime) -> str:
    local = moment.astimezone(config.schedule.zone)
    return f"{local.isoformat(timespec='minutes')} ({config.schedule.timezone})"


def _age(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"
