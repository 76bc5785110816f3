"""``newsletter run``: the jobs on APScheduler, and the scheduler lease.

Every job is a one-line call into a stage function the CLI uses too (:func:`build_jobs`). The digest job
is :func:`run_if_due`: the newest firing of ``schedule.cron``, if nobody has done it yet
(:func:`newsletter.firings.fire_if_due`: at most one issue per firing, recorded in the same transaction),
then every unfinished send. Because it decides from the database and the clock, never from "what fired",
the same call serves the cron firing, catch-up on start and ``digest send --if-due``.

On top of the once-per-firing rule only the process holding the ``scheduler_lease`` row fires jobs; the
others wait and say so.

The database going away (a PostgreSQL restart, a SQLite file locked by another program) never stops the
scheduler: the lease renewal and every job wait for it (:func:`~newsletter.db.patiently`), logging one
line per try, and go on where they were. A job the outage interrupted is run again from what the database
says is left: a firing whose ``Firing`` row was committed is found done, one whose transaction was lost is
done again, so a firing still makes at most one issue.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
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
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from newsletter.backends import create_backend
from newsletter.bounces import process_bounces
from newsletter.checks import check_issue
from newsletter.config import Config
from newsletter.db import Patience, describe, patiently, session
from newsletter.delivery import SendReport, due_now, send_issue
from newsletter.errors import DatabaseFull, DatabaseUnavailable, NewsletterError
from newsletter.firings import digest_trigger, fire_if_due, next_run_time
from newsletter.ingest.feeds import poll_feeds
from newsletter.ingest.inbox import process_inbox
from newsletter.issues import SENDABLE, unfinished_issues
from newsletter.message import single_line
from newsletter.models import FiringOutcome, Issue, IssueStatus, JobFailure, SchedulerLease, utcnow
from newsletter.render import as_utc

log = logging.getLogger(__name__)

DIGEST_JOB = "digest"
LEASE_NAME = "scheduler"


# --- the digest job -----------------------------------------------------------------------------------


@dataclass
class DueResult:
    """What :func:`run_if_due` did: the newest firing (if any), what was recorded for it now, and one line
    per thing done."""

    due_at: datetime | None = None
    outcome: FiringOutcome | None = None  # None: nothing new (the firing was done already)
    issue: Issue | None = None  # the issue the firing made
    lines: list[str] = field(default_factory=list)
    sends: list[SendReport] = field(default_factory=list)

    def summary_line(self) -> str:
        return "; ".join(self.lines) or "nothing due"


def run_if_due(
    engine: Engine, config: Config, *, now: datetime | None = None, halt: threading.Event | None = None,
    patience: Patience | None = None,
) -> DueResult:
    """Do what is due at ``now``: the newest firing if nobody has done it (see
    :func:`newsletter.firings.fire_if_due`), then every unfinished send (retries, an interrupted send, an
    issue an editor prepared). The digest job, catch-up on start and ``digest send --if-due``.

    Raises NewsletterError when preparing or sending fails; whatever was recorded stays recorded. ``patience``:
    how long a send waits for the database (default: ``database.outage_limit``).
    """
    fired = fire_if_due(engine, config, now=now)
    result = DueResult(fired.due_at, fired.outcome, fired.issue, fired.lines)
    result.sends = send_due(engine, config, halt=halt, patience=patience)
    result.lines += [report.summary_line() for report in result.sends]
    return result


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
    """Run ``job`` once and log one line saying what it did and how long it took (INFO; the JSON format
    carries ``job``, ``outcome`` and ``seconds`` as fields). An error is logged instead (with its traceback
    unless it is a NewsletterError, whose message says it all) and recorded in ``job_failure``, never
    raised, so the scheduler keeps running.

    A job the database failed (it went away) is run again once it is back, until ``halt``: every job decides
    from the database what is left to do, so running it again does only what the failed run did not."""
    started = time.monotonic()
    try:
        result = patiently(lambda: job.call(engine, config), Patience(None, halt))
    except Exception as exc:
        seconds = round(time.monotonic() - started, 3)
        fields = {"job": job.id, "outcome": "failed", "seconds": seconds}
        if isinstance(exc, NewsletterError):
            log.error("job %s failed after %.2f s: %s", job.id, seconds, exc, extra=fields)
        else:
            log.exception("job %s failed after %.2f s", job.id, seconds, extra=fields)
        record_failure(engine, job.id, exc)
        return
    seconds = round(time.monotonic() - started, 3)
    outcome = job_outcome(result)
    log.info("job %s: %s (%.2f s)", job.id, outcome, seconds, extra={"job": job.id, "outcome": outcome,
                                                                     "seconds": seconds})


def job_outcome(result: object) -> str:
    """One line saying what a job run did: its result's ``summary_line()``, or each one's for a list."""
    if isinstance(result, list):
        return "; ".join(job_outcome(item) for item in result) or "nothing to do"
    summary = getattr(result, "summary_line", None)
    return summary() if callable(summary) else "done"


def record_failure(engine: Engine, job_id: str, exc: BaseException) -> None:
    """Store ``exc`` as the job's last failure. Its text can quote a server's reply: a NUL or a lone
    surrogate, which the database cannot store, is dropped from the line and escaped in the traceback."""
    text = single_line(str(exc)) or type(exc).__name__
    trace = "".join(traceback.format_exception(exc)).encode("utf-8", "backslashreplace").decode().replace("\0", "\\x00")
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

    On taking the lease the digest job runs at once (catch-up; it does nothing when the firing is done).
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


def _lease(engine: Engine, owner: str, timing: LeaseTiming, stop: threading.Event, *,
           before: float | None = None) -> LeaseHolder | None:
    """Take or renew the lease, waiting for the database as long as it takes (a full disk included: tried
    again every renewal interval); None once ``stop`` is set, or once ``before`` (a ``time.monotonic()``
    value) passes without the database answering: a holder must stop firing jobs before its lease can expire
    and another scheduler take it.

    After an outage that outlasted the lease, the lease is taken again unless another scheduler took it
    meanwhile (then that one holds it and this one waits)."""
    while True:
        left = None if before is None else timedelta(seconds=max(before - time.monotonic(), 0))
        try:
            return patiently(lambda: acquire_lease(engine, owner, timing.ttl), Patience(left, stop))
        except DatabaseUnavailable:
            return None
        except DatabaseFull as exc:
            log.error("cannot renew the scheduler lease: %s; trying again in %g s", exc, timing.renew.total_seconds())
            if stop.wait(timing.renew.total_seconds()) or (before is not None and time.monotonic() >= before):
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
        "scheduler started: next digest at %s (%s UTC), cron '%s' in %s; due sends every %d minutes",
        upcoming.isoformat(timespec="minutes"),
        upcoming.astimezone(UTC).strftime("%Y-%m-%d %H:%M"),
        config.schedule.cron,
        config.schedule.timezone,
        config.schedule.intervals.send_due,
    )
    renewed = time.monotonic()
    try:
        while not stop.wait(timing.renew.total_seconds()):
            # one renewal interval before the lease could expire, this holder stops firing jobs
            holder = _lease(engine, owner, timing, stop, before=renewed + (timing.ttl - timing.renew).total_seconds())
            if holder is None:
                if not stop.is_set():
                    log.error("could not renew the scheduler lease before it could expire; pausing jobs until the "
                              "database answers again")
                break
            renewed = time.monotonic()
            if holder.owner != owner:
                log.error("lost the scheduler lease to %s; pausing jobs", holder.owner)
                break
    finally:
        halt.set()
        scheduler.shutdown(wait=True)

