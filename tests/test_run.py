"""`newsletter run` as real processes: two of them on one database send one issue once, the second waits
for the lease and takes over; logs are plain or JSON on stderr; a failing job does not stop the scheduler;
SIGTERM stops cleanly."""

import json
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlmodel import select

from newsletter.config import load_config
from newsletter.db import open_database, session
from newsletter.demo import DEMO_SETTINGS
from newsletter.models import Delivery, DeliveryStatus, Issue, JobFailure, utcnow
from tests.conftest import ROOT, _free_port
from tests.helpers import add_people, add_summaries
from tests.processes import LoggedProcess



def write_config(tmp_path: Path, *, schedule: dict[str, Any], backend: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    settings = {**DEMO_SETTINGS, "templates": str(ROOT / "templates"), "schedule": schedule, "backend": backend}
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def start_scheduler(config_file: Path) -> LoggedProcess:
    """A `newsletter run` process."""
    return LoggedProcess("run", "--config", str(config_file), env={**os.environ, "NEWSLETTER_SECRET_KEY": "k"},
                         capture_stdout=False)


def test_two_schedulers_on_one_database_send_one_issue_once_and_the_second_takes_over(tmp_path, smtp_server):
    # Every minute is a scheduled time, so the digest is due the moment a scheduler starts (catch-up).
    config_file = write_config(
        tmp_path,
        schedule={"cron": "* * * * *", "timezone": "Europe/Berlin", "lease_seconds": 4, "log_format": "json"},
        backend={"name": "smtp", "options": {"host": smtp_server.host, "port": smtp_server.port, "security": "none"}},
    )
    engine = open_database(load_config(config_file))
    add_summaries(engine, 2, at=utcnow() - timedelta(days=8))  # gathered during last week
    people = [f"p{n}@example.org" for n in range(20)]
    add_people(engine, *people)
    first, second = start_scheduler(config_file), start_scheduler(config_file)
    try:
        line = first.wait_for_next("holding the scheduler lease|waiting to take over")
        holder, waiter = (second, first) if "waiting" in line else (first, second)
        if holder is first:
            waiter.wait_for_next("waiting to take over")
        else:
            holder.wait_for_next("holding the scheduler lease")
        assert waiter.seen(r"another scheduler \(\S+:\d+:\w+\) holds the lease until \S+; waiting to take over")
        holder.wait_for_next(r"issue #1: sent 20, retry later 0, failed 0, skipped 0; finished")

        assert holder.stop() == 0  # releases the lease: the waiter takes over within a renewal interval
        waiter.wait_for_next("holding the scheduler lease")
        # its catch-up finds the firing done, or (a minute later) a new firing with nothing waiting
        waiter.wait_for_next(r"firing at \S+ \(Europe/Berlin\): (already done \(issued\)|nothing new was waiting)")
        assert waiter.stop() == 0
    finally:
        first.kill()
        second.kill()
    with session(engine) as db:
        assert len(db.exec(select(Issue)).all()) == 1
        assert [(d.status, d.attempts) for d in db.exec(select(Delivery))] == [(DeliveryStatus.SENT, 1)] * 20
    assert sorted(r for m in smtp_server.messages for r in m.recipients) == sorted(people)
    for line in first.lines + second.lines:  # log_format: json, one object per line
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(entry)
    assert any(json.loads(line)["message"] == "scheduler stopped" for line in holder.lines)
    engine.dispose()


def test_a_failing_job_is_logged_and_recorded_and_the_scheduler_keeps_running(tmp_path):
    closed_port = _free_port()  # nothing listens there
    config_file = write_config(
        tmp_path,
        schedule={"cron": "* * * * *", "timezone": "Europe/Berlin", "lease_seconds": 4},
        backend={"name": "smtp", "options": {"host": "127.0.0.1", "port": closed_port, "security": "none"}},
    )
    engine = open_database(load_config(config_file))
    add_summaries(engine, 1, at=utcnow() - timedelta(days=8))
    add_people(engine, "a@example.org")
    scheduler = start_scheduler(config_file)
    try:
        started = scheduler.wait_for_next("scheduler started")
        assert re.search(r"next digest at \S+\+0[12]:00 \(.* UTC\), cron '\* \* \* \* \*' in Europe/Berlin", started)
        scheduler.wait_for_next(r"ERROR newsletter.schedule: job digest failed after \d+\.\d\d s: .*127.0.0.1")
        assert scheduler.process.poll() is None  # still running
        assert scheduler.stop() == 0
    finally:
        scheduler.kill()
    assert "scheduler stopped" in "".join(scheduler.lines)
    with session(engine) as db:
        assert [f.job for f in db.exec(select(JobFailure))] == ["digest"]
        assert [d.status for d in db.exec(select(Delivery))] == [DeliveryStatus.QUEUED]  # nothing lost
    engine.dispose()
