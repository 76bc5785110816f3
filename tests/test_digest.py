"""Preparing an issue: one per ISO week in the configured timezone, a snapshot of items and recipients."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import select

from newsletter.db import session
from newsletter.digest import (
    PrepareOutcome,
    delivery_counts,
    find_issue,
    period_before,
    period_containing,
    prepare_issue,
)
from newsletter.errors import NewsletterError
from newsletter.models import Delivery, DeliveryStatus, Issue, SubscriberStatus, Summary
from tests.helpers import add_people, add_summaries

BERLIN = ZoneInfo("Europe/Berlin")


def test_periods_are_iso_weeks_in_the_configured_timezone():
    # Sunday 23:30 in Berlin is still week 47 there, although it is Sunday 22:30 UTC.
    sunday_night = datetime(2026, 11, 22, 23, 30, tzinfo=BERLIN)
    assert period_containing(sunday_night, BERLIN).key == "2026-W47"
    # Monday 00:30 in Berlin is Sunday 23:30 UTC: the UTC calendar would still say week 47.
    monday = datetime(2026, 11, 22, 23, 30, tzinfo=UTC)
    period = period_containing(monday, BERLIN)
    assert period.key == "2026-W48"
    assert period.start == datetime(2026, 11, 22, 23, 0, tzinfo=UTC)  # Monday 00:00 CET
    assert period.end == datetime(2026, 11, 29, 23, 0, tzinfo=UTC)
    assert period_containing(datetime(2027, 1, 1, 12, tzinfo=UTC), BERLIN).key == "2026-W53"


def test_prepare_snapshots_new_summaries_and_active_subscribers_once(config, engine):
    add_summaries(engine, 3)
    add_people(engine, "a@example.org", "b@example.org")
    add_people(engine, "gone@example.org", status=SubscriberStatus.UNSUBSCRIBED)
    add_people(engine, "new@example.org", status=SubscriberStatus.PENDING)
    now = datetime(2026, 11, 18, 9, tzinfo=UTC)

    first = prepare_issue(engine, config, now=now)
    assert first.outcome is PrepareOutcome.CREATED
    assert (first.issue.number, first.issue.period_key) == (1, "2026-W47")
    assert (first.item_count, first.recipient_count) == (3, 2)
    assert first.issue.subject  # rendered from subject.txt.j2

    add_summaries(engine, 1)  # arrives after the issue was prepared
    add_people(engine, "late@example.org")
    second = prepare_issue(engine, config, now=now)
    assert second.outcome is PrepareOutcome.EXISTS and second.issue.id == first.issue.id
    with session(engine) as db:
        assert len(db.exec(select(Issue)).all()) == 1
        assert delivery_counts(db, first.issue)[DeliveryStatus.QUEUED] == 2
        waiting = db.exec(select(Summary).where(Summary.issue_id == None)).all()  # noqa: E711
        assert [s.title for s in waiting] == ["Paper number 3"]

    # The late summary goes into the next week's issue, for the subscribers active then.
    next_week = prepare_issue(engine, config, now=datetime(2026, 11, 25, 9, tzinfo=UTC))
    assert (next_week.issue.number, next_week.item_count, next_week.recipient_count) == (2, 1, 3)


def test_a_period_without_new_summaries_is_skipped(config, engine):
    add_people(engine, "a@example.org")
    result = prepare_issue(engine, config, now=datetime(2026, 11, 18, tzinfo=UTC))
    assert result.outcome is PrepareOutcome.EMPTY
    assert "no new summaries" in result.message()
    with session(engine) as db:
        assert db.exec(select(Issue)).all() == [] and db.exec(select(Delivery)).all() == []


def test_without_active_subscribers_nothing_is_prepared_and_the_summaries_wait(config, engine):
    add_summaries(engine, 2)
    add_people(engine, "pending@example.org", status=SubscriberStatus.PENDING)
    result = prepare_issue(engine, config, now=datetime(2026, 11, 18, tzinfo=UTC))
    assert result.outcome is PrepareOutcome.NO_RECIPIENTS
    assert "no active subscribers" in result.message() and "2 new summaries wait" in result.message()
    add_people(engine, "a@example.org")
    later = prepare_issue(engine, config, now=datetime(2026, 11, 18, 1, tzinfo=UTC))
    assert (later.outcome, later.item_count, later.recipient_count) == (PrepareOutcome.CREATED, 2, 1)


def test_daily_and_monthly_periods_are_local_days_and_months():
    spring_forward = period_containing(datetime(2026, 3, 29, 12, tzinfo=UTC), BERLIN, "daily")
    assert spring_forward.key == "2026-03-29"
    assert spring_forward.end - spring_forward.start == timedelta(hours=23)  # the day the clocks go forward
    december = period_containing(datetime(2026, 12, 31, 23, 30, tzinfo=UTC), BERLIN, "monthly")
    assert december.key == "2027-01"  # already New Year in Berlin
    assert (december.start, december.end) == (datetime(2026, 12, 31, 23, tzinfo=UTC), datetime(2027, 1, 31, 23, tzinfo=UTC))


def test_the_period_before_a_monday_send_is_the_week_that_just_ended():
    monday_morning = datetime(2026, 11, 23, 8, tzinfo=BERLIN)
    assert period_before(monday_morning, BERLIN).key == "2026-W47"
    assert period_before(datetime(2026, 1, 1, 9, tzinfo=BERLIN), BERLIN, "monthly").key == "2025-12"
    assert period_before(datetime(2026, 1, 1, 9, tzinfo=BERLIN), BERLIN, "daily").key == "2025-12-31"


def test_asking_for_an_issue_that_does_not_exist_names_the_ones_that_do(config, engine):
    with session(engine) as db:
        with pytest.raises(NewsletterError, match=r"^there is no issue #3; no issue has been prepared yet"):
            find_issue(db, 3)
    add_people(engine, "a@example.org")
    for week in (1, 2):
        add_summaries(engine, 1)
        prepare_issue(engine, config, now=datetime(2026, 1, 7 * week, 12, tzinfo=UTC))
    with session(engine) as db:
        with pytest.raises(NewsletterError, match=r"^there is no issue #99; issues go from #1 to #2$"):
            find_issue(db, 99)
        assert find_issue(db, 2).number == 2
