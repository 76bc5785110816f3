"""The operator's view (``newsletter status``): schedule, last issue, what is waiting, what went wrong.

:func:`collect_status` returns plain JSON-ready data (``--json`` prints it as is, for monitoring);
:func:`status_lines` turns it into the human-readable text.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func
from sqlmodel import col, select

from newsletter.click_report import issue_clicks
from newsletter.config import Config
from newsletter.db import session
from newsletter.firings import next_run_time, when
from newsletter.ingest.feeds import feed_states
from newsletter.issues import delivery_counts, newest_issue, unfinished_issues, waiting_summaries
from newsletter.models import (
    FeedState,
    Firing,
    FiringOutcome,
    Issue,
    JobFailure,
    SchedulerLease,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
from newsletter.render import as_utc, span_label
from newsletter.schedule import LEASE_NAME

RECENT = timedelta(days=7)  # how far back "recent job failures" look


def collect_status(engine: Engine, config: Config, *, now: datetime | None = None) -> dict[str, Any]:
    """Everything ``newsletter status`` shows, as JSON-ready values (times in ISO 8601)."""
    now = now or utcnow()
    upcoming = next_run_time(config, now)
    with session(engine) as db:
        last = newest_issue(db)
        by_status = dict(db.exec(select(Subscriber.status, func.count()).group_by(Subscriber.status)).all())
        lease = db.get(SchedulerLease, LEASE_NAME)
        failures = db.exec(
            select(JobFailure).where(col(JobFailure.at) >= now - RECENT).order_by(col(JobFailure.at).desc()).limit(10)
        ).all()
        firings = db.exec(select(Firing).order_by(col(Firing.due_at).desc()).limit(5)).all()
        numbers = dict(db.exec(select(Issue.id, Issue.number).where(
            col(Issue.id).in_([f.issue_id for f in firings if f.issue_id]))).all())
        waiting = len(waiting_summaries(db))
        counts = delivery_counts(db, last) if last else None
        clicks = issue_clicks(engine, config, last.number).as_json() if last else None
        older = [issue for issue in unfinished_issues(db) if last is None or issue.number != last.number]
        unfinished = [
            {"number": issue.number, "status": issue.status.value,
             "deliveries": {s.value: n for s, n in delivery_counts(db, issue).items() if n}}
            for issue in older
        ]
    return {
        "schedule": {
            "cron": config.schedule.cron,
            "timezone": config.schedule.timezone,
            "cadence": config.schedule.cadence,
            "next_run_local": upcoming.isoformat(timespec="minutes"),
            "next_run_utc": as_utc(upcoming).isoformat(timespec="minutes"),
            "scheduler": _lease(lease, now),
        },
        "last_issue": None if last is None else {
            "number": last.number,
            "covers": span_label(config, last),
            "covers_from": _iso(last.period_start),
            "covers_until": _iso(last.period_end),
            "subject": last.subject,
            "status": last.status.value,
            "sent_at": _iso(last.sent_at),
            "deliveries": {status.value: count for status, count in (counts or {}).items()},
            "clicks": clicks,
        },
        "older_unfinished_issues": unfinished,
        "waiting_summaries": waiting,
        "subscribers": {status.value: by_status.get(status, 0) for status in SubscriberStatus},
        "recent_firings": [
            {"due_at": _iso(f.due_at), "local": when(config, as_utc(f.due_at)), "outcome": f.outcome.value,
             "issue": numbers.get(f.issue_id), "detail": f.detail}
            for f in firings
        ],
        "feeds": _feeds(engine, config),
        "recent_failures": [{"job": f.job, "at": _iso(f.at), "error": f.error} for f in failures],
    }


def _feeds(engine: Engine, config: Config) -> list[dict[str, Any]]:
    """Every feed in ``ingest.feeds``, in config order, with its last fetch (all None: not fetched yet). A feed
    fetched once but no longer configured (or fetched by hand with ``newsletter ingest URL``) is left out:
    nothing polls it, so its last result says nothing about now."""
    states = {feed.url: feed for feed in feed_states(engine)}
    feeds = [states.get(url) or FeedState(url=url) for url in dict.fromkeys(config.ingest.feeds)]
    return [
        {
            "url": feed.url,
            "last_fetch_at": _iso(feed.last_fetch_at),
            "last_status": feed.last_status,
            "last_error": feed.last_error,
            "last_success_at": _iso(feed.last_success_at),
        }
        for feed in feeds
    ]


def _lease(lease: SchedulerLease | None, now: datetime) -> dict[str, Any] | None:
    if lease is None:
        return None
    expires = as_utc(lease.expires_at)
    return {"owner": lease.owner, "lease_expires_at": expires.isoformat(timespec="seconds"), "running": expires > now}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else as_utc(moment).isoformat(timespec="seconds")


def status_lines(status: dict[str, Any]) -> list[str]:
    """The status as text lines for a terminal."""
    schedule = status["schedule"]
    lines = [
        f"next digest: {schedule['next_run_local']} {schedule['timezone']} ({schedule['next_run_utc']} UTC), "
        f"{schedule['cadence']}, cron '{schedule['cron']}'"
    ]
    holder = schedule["scheduler"]
    if holder and holder["running"]:
        lines.append(f"scheduler: running as {holder['owner']} (lease until {holder['lease_expires_at']})")
    else:
        lines.append("scheduler: not running (no `newsletter run` holds the lease)")
    last = status["last_issue"]
    if last is None:
        lines.append("last issue: none yet")
    else:
        counts = ", ".join(f"{name} {count}" for name, count in last["deliveries"].items())
        lines.append(f"last issue: #{last['number']} ({last['covers']}) \"{last['subject']}\": {last['status']}")
        lines.append(f"  deliveries: {counts}")
        clicks = last["clicks"]
        if clicks["counted"] or clicks["clicks"]:
            lines.append(f"  clicks: {clicks['clicks']:,}, likely human {clicks['likely_human_clicks']:,}")
            lines += [f"    item {item['item'] or '?'}: {item['clicks']:,} ({item['likely_human_clicks']:,} likely "
                      f"human) {item['title']}" for item in clicks["items"]]
    for issue in status["older_unfinished_issues"]:
        counts = ", ".join(f"{name} {count}" for name, count in issue["deliveries"].items())
        lines.append(f"unfinished: issue #{issue['number']} is {issue['status']} ({counts})")
    lines.append(f"waiting summaries: {status['waiting_summaries']}")
    lines.append("subscribers: " + ", ".join(f"{name} {count}" for name, count in status["subscribers"].items()))
    for firing in status["recent_firings"]:
        if firing["outcome"] not in (FiringOutcome.ISSUED, FiringOutcome.QUIET):  # the ones that made no issue
            lines.append(f"firing at {firing['local']}: {firing['outcome']}: {firing['detail']}")
    if status["feeds"]:
        lines.append("feeds:")
        for feed in status["feeds"]:
            if feed["last_fetch_at"] is None:
                lines.append(f"  {feed['url']}: not fetched yet")
                continue
            error = f": {feed['last_error']}" if feed["last_error"] else ""
            lines.append(f"  {feed['url']}: {feed['last_status']} at {feed['last_fetch_at']}{error}")
    if status["recent_failures"]:
        lines.append(f"job failures in the last {RECENT.days} days:")
        lines += [f"  {f['at']} {f['job']}: {f['error']}" for f in status["recent_failures"]]
    else:
        lines.append(f"job failures in the last {RECENT.days} days: none")
    return lines
