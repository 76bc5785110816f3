"""The scheduler: the configured local time across DST, the job does prepare + send, and `newsletter run`
starts, says when it runs next, and stops cleanly on SIGTERM."""

import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime

from sqlmodel import select

from newsletter.db import session
from newsletter.digest import prepare_issue
from newsletter.models import Delivery, DeliveryStatus, Issue
from newsletter.schedule import next_run_time, send_due, weekly_digest
from tests.conftest import make_config
from tests.helpers import add_people, add_summaries


def test_next_run_is_monday_0800_local_on_both_sides_of_a_dst_change(tmp_path):
    config = make_config(tmp_path)  # Europe/Berlin, "0 8 * * mon"
    summer = next_run_time(config, after=datetime(2026, 10, 14, 12, tzinfo=UTC))  # → Monday Oct 19
    winter = next_run_time(config, after=datetime(2026, 10, 21, 12, tzinfo=UTC))  # clocks go back Oct 25 → Oct 26
    assert (summer.day, summer.weekday(), summer.hour, summer.minute) == (19, 0, 8, 0)
    assert summer.astimezone(UTC).hour == 6  # CEST, UTC+2
    assert (winter.day, winter.weekday(), winter.hour) == (26, 0, 8)
    assert winter.astimezone(UTC).hour == 7  # CET, UTC+1


def test_the_weekly_job_prepares_and_sends(config, engine):
    add_summaries(engine, 2)
    add_people(engine, "a@example.org", "b@example.org")
    weekly_digest(engine, config, now=datetime(2026, 11, 23, 7, tzinfo=UTC))
    assert len(list((config.base_dir / "outbox").glob("*.eml"))) == 2
    weekly_digest(engine, config, now=datetime(2026, 11, 23, 7, 5, tzinfo=UTC))  # a second firing: nothing new
    with session(engine) as db:
        assert len(db.exec(select(Issue)).all()) == 1
        deliveries = db.exec(select(Delivery)).all()
    # Each subscriber's message went out exactly once (a resend would count a second attempt).
    assert [(d.status, d.attempts) for d in deliveries] == [(DeliveryStatus.SENT, 1)] * 2


def test_the_retry_job_sends_what_became_due_and_is_quiet_otherwise(config, engine, caplog):
    send_due(engine, config)  # nothing prepared yet: no error, nothing logged as failed
    assert "failed" not in caplog.text
    add_summaries(engine, 1)
    add_people(engine, "a@example.org")
    prepare_issue(engine, config)
    send_due(engine, config)
    with session(engine) as db:
        assert [d.status for d in db.exec(select(Delivery))] == [DeliveryStatus.SENT]


def test_run_logs_the_next_run_and_stops_on_sigterm(tmp_path):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        "newsletter:\n  name: T\n  sender: T <t@example.org>\n  postal_address: 1 Street, Town\n"
        "  site_url: https://example.org\nschedule:\n  cron: '0 8 * * mon'\n  timezone: Europe/Berlin\n",
        encoding="utf-8",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "run", "--config", str(config_file)],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "NEWSLETTER_SECRET_KEY": "k"},
    )
    try:
        for line in process.stderr:
            if "scheduler started" in line:
                break
        assert re.search(r"next digest at \S+T08:00\+0[12]:00 .* in Europe/Berlin", line)
        assert "due retries are sent every 5 minutes" in line
        process.send_signal(signal.SIGTERM)
        rest = process.stderr.read()
        assert process.wait(timeout=30) == 0
        assert "scheduler stopped" in rest
    finally:
        process.kill()
