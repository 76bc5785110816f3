"""The weekly job on APScheduler: prepare the period's issue, then send what is unfinished.

``weekly_digest`` is the job and is exactly what ``newsletter digest prepare`` followed by
``newsletter digest send`` do by hand; ``send_due`` runs every few minutes so retries go out when they
are due. ``run_scheduler`` blocks until Ctrl-C or SIGTERM, then waits for a running job to finish and
returns.
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import UTC, datetime, timedelta
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine

from newsletter.backends import create_backend
from newsletter.config import Config
from newsletter.db import session
from newsletter.delivery import send_unfinished
from newsletter.digest import prepare_issue, unfinished_issues
from newsletter.errors import NewsletterError
from newsletter.models import utcnow

log = logging.getLogger(__name__)

JOB_ID = "weekly-digest"
RETRY_JOB_ID = "send-due"
RETRY_INTERVAL = timedelta(minutes=5)


def digest_trigger(config: Config) -> CronTrigger:
    """The configured cron expression, evaluated in the configured timezone."""
    return CronTrigger.from_crontab(config.schedule.cron, timezone=config.schedule.zone)


def next_run_time(config: Config, after: datetime | None = None) -> datetime:
    """When the weekly job fires next after ``after`` (default: now), in the configured timezone."""
    moment = (after or utcnow()).astimezone(config.schedule.zone)
    fire = digest_trigger(config).get_next_fire_time(None, moment)
    assert fire is not None  # a valid crontab always fires again
    return fire


def weekly_digest(engine: Engine, config: Config, *, now: datetime | None = None) -> None:
    """Prepare this period's issue, then send what is due. Errors are logged, never raised, so one bad
    week does not stop the scheduler."""
    try:
        log.info(prepare_issue(engine, config, now=now).message())
    except NewsletterError as exc:
        log.error("preparing the digest failed: %s", exc)
    send_due(engine, config)


def send_due(engine: Engine, config: Config) -> None:
    """Send what is due of every unfinished issue (retries whose time has come, a send that was
    interrupted); does nothing when every issue is sent. Errors are logged, never raised."""
    with session(engine) as db:
        if not unfinished_issues(db):
            return
    try:
        for report in send_unfinished(engine, config, create_backend(config)):
            log.info(report.summary_line())
    except NewsletterError as exc:
        log.error("sending failed: %s", exc)


def run_scheduler(engine: Engine, config: Config, *, stop: threading.Event | None = None) -> None:
    """Run the weekly job on schedule until Ctrl-C, SIGTERM, or ``stop`` is set.

    The signal handlers only set the event; the scheduler is shut down from this thread, after the job
    that is running (if any) has finished.
    """
    stop = stop or threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping after the running job", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)
    # One worker: the weekly job and the retry job never send at the same time.
    scheduler = BackgroundScheduler(timezone=config.schedule.zone, executors={"default": ThreadPoolExecutor(1)})
    jobs = {"coalesce": True, "max_instances": 1, "args": (engine, config)}
    scheduler.add_job(weekly_digest, digest_trigger(config), id=JOB_ID, misfire_grace_time=3600, **jobs)
    scheduler.add_job(send_due, IntervalTrigger(seconds=RETRY_INTERVAL.total_seconds()), id=RETRY_JOB_ID, **jobs)
    scheduler.start()
    upcoming = next_run_time(config)
    log.info(
        "scheduler started: next digest at %s (%s UTC), cron '%s' in %s; due retries are sent every %d minutes",
        upcoming.isoformat(timespec="minutes"),
        upcoming.astimezone(UTC).strftime("%Y-%m-%d %H:%M"),
        config.schedule.cron,
        config.schedule.timezone,
        RETRY_INTERVAL.total_seconds() // 60,
    )
    stop.wait()
    scheduler.shutdown(wait=True)
    log.info("scheduler stopped")
