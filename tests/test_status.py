"""`newsletter status` (text and --json) and `newsletter digest send --if-due`, through the CLI."""

import json
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlmodel import select

from newsletter.config import load_config
from newsletter.db import open_database, session
from newsletter.models import FeedState, Issue, JobFailure, SubscriberStatus, utcnow
from newsletter.schedule import acquire_lease
from newsletter.status import collect_status
from tests.helpers import add_people, add_summaries
from tests.test_cli import config_file, invoke


def opened(path: Path):
    return open_database(load_config(path))


def test_status_shows_schedule_last_issue_waiting_subscribers_and_failures(tmp_path):
    path = config_file(tmp_path)  # the example config: Mondays 08:00 Europe/London
    engine = opened(path)
    add_summaries(engine, 2)
    add_people(engine, "a@example.org", "b@example.org")
    add_people(engine, "gone@example.org", status=SubscriberStatus.UNSUBSCRIBED)
    assert invoke("digest", "prepare", "--config", path).exit_code == 0
    assert invoke("digest", "send", "--config", path).exit_code == 0
    add_summaries(engine, 1)  # arrived after the issue
    with session(engine) as db:
        db.add(JobFailure(job="digest", error="DeliveryError: cannot connect to smtp.example.org:587"))
        db.commit()

    result = invoke("status", "--config", path)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("next digest: ") and "Europe/London" in lines[0] and "UTC), weekly" in lines[0]
    assert "scheduler: not running" in result.output
    assert 'last issue: #1 (' in result.output and ": sent" in result.output
    assert "deliveries: queued 0, sending 0, sent 2, retry 0, failed 0, skipped 0" in result.output
    assert "waiting summaries: 1" in result.output
    assert "subscribers: pending 0, active 2, unsubscribed 1, bounced 0, complained 0" in result.output
    assert "digest: DeliveryError: cannot connect to smtp.example.org:587" in result.output

    acquire_lease(engine, "host:123:abc", timedelta(seconds=60))
    data = json.loads(invoke("status", "--json", "--config", path).output)
    assert data["schedule"]["scheduler"]["owner"] == "host:123:abc" and data["schedule"]["scheduler"]["running"]
    local, in_utc = (datetime.fromisoformat(data["schedule"][k]) for k in ("next_run_local", "next_run_utc"))
    assert local == in_utc and (local.weekday(), local.hour) == (0, 8)
    assert data["last_issue"]["deliveries"]["sent"] == 2 and data["waiting_summaries"] == 1
    assert data["subscribers"]["active"] == 2
    assert [f["job"] for f in data["recent_failures"]] == ["digest"]
    engine.dispose()


def test_status_only_lists_failures_from_the_last_week(tmp_path):
    path = config_file(tmp_path)
    engine = opened(path)
    with session(engine) as db:
        db.add(JobFailure(job="old", error="E: long ago", at=utcnow() - timedelta(days=8)))
        db.add(JobFailure(job="new", error="E: yesterday", at=utcnow() - timedelta(days=1)))
        db.commit()
    failures = collect_status(engine, load_config(path))["recent_failures"]
    assert [f["job"] for f in failures] == ["new"]
    engine.dispose()


def test_digest_send_if_due_does_the_scheduled_work_once(tmp_path):
    # Every minute is a scheduled time, so the last one has always just passed.
    path = config_file(tmp_path, **{'cron: "0 8 * * mon"': 'cron: "* * * * *"'})
    engine = opened(path)
    add_summaries(engine, 2, at=utcnow() - timedelta(days=8))  # gathered during last week
    add_people(engine, "a@example.org")

    first = invoke("digest", "send", "--if-due", "--config", path)
    assert first.exit_code == 0, first.output
    assert "prepared issue #1" in first.output and "issue #1: sent 1" in first.output
    second = invoke("digest", "send", "--if-due", "--config", path)
    assert second.exit_code == 0 and second.output.strip() == "nothing is due"
    with session(engine) as db:
        assert len(db.exec(select(Issue)).all()) == 1
    both = invoke("digest", "send", "--if-due", "--issue", "1", "--config", path)
    assert both.exit_code == 1 and "leave out --issue" in both.output
    engine.dispose()


def test_digest_send_if_due_logs_in_the_configured_format_like_run(tmp_path):
    path = config_file(tmp_path, **{'cron: "0 8 * * mon"': 'cron: "* * * * *"', "log_format: plain": "log_format: json"})
    engine = opened(path)
    add_summaries(engine, 1, at=utcnow() - timedelta(days=8))
    add_people(engine, "a@example.org")
    result = invoke("-v", "digest", "send", "--if-due", "--config", path)
    engine.dispose()
    assert result.exit_code == 0, result.output
    # one JSON object per line (but Alembic's, logged while the config was still being read)
    logged = [json.loads(line) for line in result.stderr.splitlines() if "alembic" not in line]
    assert any("issue #1: sent 1" in entry["message"] for entry in logged)


def test_a_missed_firing_is_reported_by_if_due_and_status(tmp_path):
    # The only scheduled weekday is the one three days ago: the last send time passed 2.5 to 3.5 days ago,
    # beyond the default 24 h grace period.
    weekday = (utcnow().astimezone(ZoneInfo("Europe/London")) - timedelta(days=3)).strftime("%a").lower()
    path = config_file(tmp_path, **{'cron: "0 8 * * mon"': f'cron: "0 12 * * {weekday}"'})
    engine = opened(path)
    add_summaries(engine, 1, at=utcnow() - timedelta(days=20))
    add_people(engine, "a@example.org")
    result = invoke("digest", "send", "--if-due", "--config", path)
    assert result.exit_code == 0 and "MISSED" in result.output and "within 24 h of it" in result.output
    status = invoke("status", "--config", path).output
    assert ": missed: the scheduler was not running" in status and "waiting summaries: 1" in status  # nothing lost
    engine.dispose()


def test_status_shows_each_configured_feed_and_its_last_fetch_result(tmp_path):
    feeds = ["https://a.example/feed.xml", "https://b.example/rss", "https://new.example/atom"]
    path = config_file(tmp_path, **{"feeds: []": "feeds: [" + ", ".join(feeds) + "]"})
    engine = opened(path)
    with session(engine) as db:
        db.add(FeedState(url="https://a.example/feed.xml", last_fetch_at=utcnow(), last_status="ok"))
        db.add(FeedState(url="https://b.example/rss", last_fetch_at=utcnow(), last_status="error",
                         last_error="HTTP 503 from https://b.example/rss"))
        db.add(FeedState(url="https://removed.example/rss", last_fetch_at=utcnow(), last_status="error",
                         last_error="HTTP 404 from https://removed.example/rss"))  # taken out of the config
        db.commit()
    result = invoke("status", "--config", path)
    assert "https://a.example/feed.xml: ok at" in result.output
    assert "https://b.example/rss: error at" in result.output and "HTTP 503 from https://b.example/rss" in result.output
    assert "https://new.example/atom: not fetched yet" in result.output
    assert "removed.example" not in result.output
    listed = json.loads(invoke("status", "--json", "--config", path).output)["feeds"]
    assert [(f["url"], f["last_status"]) for f in listed] == [
        ("https://a.example/feed.xml", "ok"), ("https://b.example/rss", "error"), ("https://new.example/atom", None)
    ]
    assert listed[2]["last_fetch_at"] is None
    engine.dispose()


def test_a_paused_older_issue_is_not_hidden_by_a_newer_one(tmp_path):
    path = config_file(tmp_path)
    engine = opened(path)
    add_summaries(engine, 1)
    add_people(engine, "a@example.org")
    assert invoke("digest", "prepare", "--config", path).exit_code == 0
    assert invoke("digest", "pause", "1", "--config", path).exit_code == 0
    with session(engine) as db:  # a later issue on top of it
        issue = db.exec(select(Issue)).one()
        db.add(Issue(number=2, period_start=issue.period_start,
                     period_end=issue.period_end, subject="Later"))
        db.commit()
    result = invoke("status", "--config", path)
    assert "unfinished: issue #1 is paused (queued 1)" in result.output
    data = json.loads(invoke("status", "--json", "--config", path).output)
    assert data["older_unfinished_issues"] == [{"number": 1, "status": "paused", "deliveries": {"queued": 1}}]
    engine.dispose()


def test_status_reads_weekday_numbers_as_crontab_does(tmp_path):
    # "1" is Monday in every crontab; APScheduler's from_crontab read it as Tuesday, and 7 (Sunday) was refused.
    for cron, weekday in (("0 8 * * 1", "Mon"), ("0 8 * * 0", "Sun"), ("0 8 * * 7", "Sun"), ("0 8 * * 5", "Fri")):
        path = config_file(tmp_path, **{'cron: "0 8 * * mon"': f'cron: "{cron}"'})
        result = invoke("status", "--json", "--config", path)
        assert result.exit_code == 0, result.output
        local = datetime.fromisoformat(json.loads(result.output)["schedule"]["next_run_local"])
        assert (local.strftime("%a"), local.hour) == (weekday, 8), cron
