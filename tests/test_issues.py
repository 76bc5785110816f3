"""The issue's life (newsletter.issues): prepare makes the next issue from what is waiting, whenever asked; the
span it covers; the draft; the one table of allowed steps and its one-line refusals."""

import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from newsletter.db import session
from newsletter.errors import NewsletterError, TransitionRefused
from newsletter.issues import (
    PrepareOutcome,
    Step,
    cancel_issue,
    delivery_counts,
    draft,
    find_issue,
    finish_sending,
    issue_items,
    pause_issue,
    prepare_issue,
    resume_issue,
    retry_failed,
    transition,
)
from newsletter.models import Delivery, DeliveryStatus, Issue, IssueStatus, SubscriberStatus, Summary
from newsletter.render import issue_context, new_markers
from tests.helpers import add_people, add_summaries

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 11, 18, 9, tzinfo=UTC)


def test_prepare_takes_every_waiting_summary_and_active_subscriber_and_a_later_prepare_makes_the_next(config, engine):
    add_summaries(engine, 3, at=T0 - timedelta(hours=1))
    add_people(engine, "a@example.org", "b@example.org")
    add_people(engine, "gone@example.org", status=SubscriberStatus.UNSUBSCRIBED)
    add_people(engine, "new@example.org", status=SubscriberStatus.PENDING)

    first = prepare_issue(engine, config, now=T0)
    assert first.outcome is PrepareOutcome.CREATED
    assert (first.issue.number, first.item_count, first.recipient_count) == (1, 3, 2)
    assert first.issue.subject == "Research Weekly #1: Paper number 0 and 2 more"

    # Arrived after the first issue was prepared: an editor's prepare, the same day, makes the next issue.
    add_summaries(engine, 1, at=T0 + timedelta(minutes=5))
    add_people(engine, "late@example.org")
    second = prepare_issue(engine, config, now=T0 + timedelta(minutes=10))
    assert (second.outcome, second.issue.number, second.item_count, second.recipient_count) == (
        PrepareOutcome.CREATED, 2, 1, 3)
    with session(engine) as db:
        assert [s.title for s in issue_items(db, second.issue)] == ["Paper number 3"]
        assert delivery_counts(db, first.issue)[DeliveryStatus.QUEUED] == 2  # a snapshot: late@ is not added
    nothing = prepare_issue(engine, config, now=T0 + timedelta(minutes=11))
    assert nothing.outcome is PrepareOutcome.EMPTY and nothing.message() == "no summary is waiting; nothing prepared"


def test_a_summary_ingested_after_the_moment_of_preparation_waits_for_the_next_issue(config, engine):
    add_people(engine, "a@example.org")
    add_summaries(engine, 1, at=T0 - timedelta(seconds=1))
    add_summaries(engine, 1, at=T0 + timedelta(seconds=1))  # the clock of another process ran ahead
    prepared = prepare_issue(engine, config, now=T0)
    with session(engine) as db:
        assert [s.title for s in issue_items(db, prepared.issue)] == ["Paper number 0"]
        waiting = db.exec(select(Summary.title).where(col(Summary.issue_id).is_(None))).all()
    assert waiting == ["Paper number 1"]


def test_nothing_waiting_prepares_nothing(config, engine):
    add_people(engine, "a@example.org")
    result = prepare_issue(engine, config, now=T0)
    assert result.outcome is PrepareOutcome.EMPTY and "no summary is waiting" in result.message()
    with session(engine) as db:
        assert db.exec(select(Issue)).all() == [] and db.exec(select(Delivery)).all() == []


def test_without_active_subscribers_nothing_is_prepared_and_the_summaries_wait(config, engine):
    add_summaries(engine, 2, at=T0 - timedelta(hours=1))
    add_people(engine, "pending@example.org", status=SubscriberStatus.PENDING)
    result = prepare_issue(engine, config, now=T0)
    assert result.outcome is PrepareOutcome.NO_RECIPIENTS
    assert "no active subscribers" in result.message() and "2 summaries wait for the next issue" in result.message()
    add_people(engine, "a@example.org")
    later = prepare_issue(engine, config, now=T0 + timedelta(hours=1))
    assert (later.outcome, later.item_count, later.recipient_count) == (PrepareOutcome.CREATED, 2, 1)


def test_the_span_runs_from_the_previous_issue_to_its_own_preparation_in_local_days(config, engine):
    # config: Europe/Berlin. The first issue covers from its oldest item on.
    add_people(engine, "a@example.org")
    add_summaries(engine, 1, at=datetime(2026, 11, 16, 10, tzinfo=UTC))
    first = prepare_issue(engine, config, now=datetime(2026, 11, 22, 23, 30, tzinfo=UTC)).issue  # Mon 00:30 Berlin
    assert (first.period_start, first.period_end) == (datetime(2026, 11, 16, 10, tzinfo=UTC),
                                                      datetime(2026, 11, 22, 23, 30, tzinfo=UTC))
    assert date_range(config, engine, first) == "November 16\u2009–\u200923, 2026"  # Monday 23rd already, in Berlin

    add_summaries(engine, 1, at=datetime(2026, 11, 25, 12, tzinfo=UTC))
    # prepared at midnight in Berlin: the span ends with the day before
    second = prepare_issue(engine, config, now=datetime(2026, 11, 29, 23, tzinfo=UTC)).issue
    assert second.period_start == first.period_end
    assert date_range(config, engine, second) == "November 23\u2009–\u200929, 2026"


def date_range(config, engine, issue: Issue) -> str:
    with session(engine) as db:
        stored = db.get(Issue, issue.id)
        return issue_context(config, stored, issue_items(db, stored), new_markers())["issue"].date_range


def test_the_draft_is_the_issue_prepare_would_make_and_is_not_saved(config, engine):
    add_people(engine, "a@example.org")
    add_summaries(engine, 2, at=T0 - timedelta(hours=1))
    prepare_issue(engine, config, now=T0)
    add_summaries(engine, 1, at=T0 + timedelta(hours=1))
    with session(engine) as db:
        upcoming = draft(db, config, now=T0 + timedelta(hours=2))
    assert upcoming is not None and [s.title for s in upcoming.items] == ["Paper number 2"]
    assert (upcoming.issue.id, upcoming.issue.number, upcoming.issue.period_start) == (None, 2, T0)
    prepared = prepare_issue(engine, config, now=T0 + timedelta(hours=2)).issue
    assert (prepared.number, prepared.subject, prepared.period_start, prepared.period_end) == (
        upcoming.issue.number, upcoming.issue.subject, upcoming.issue.period_start, upcoming.issue.period_end)
    with session(engine) as db:
        assert draft(db, config, now=T0 + timedelta(hours=3)) is None  # nothing waiting


def test_editors_preparing_at_the_same_moment_never_put_a_summary_in_two_issues(config, engine):
    add_people(engine, "a@example.org")
    add_summaries(engine, 20, at=T0 - timedelta(hours=1))
    start = threading.Barrier(3)
    results, errors = [], []

    def editor() -> None:
        start.wait()
        try:
            results.append(prepare_issue(engine, config, now=T0))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=editor) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    made = [r for r in results if r.outcome is PrepareOutcome.CREATED]
    assert sum(r.item_count for r in made) == 20 and all(r.item_count for r in made)
    with session(engine) as db:
        issues = db.exec(select(Issue).order_by(col(Issue.number))).all()
        assert [i.number for i in issues] == list(range(1, len(made) + 1))
        assert sum(len(issue_items(db, i)) for i in issues) == 20
        assert db.exec(select(Summary).where(col(Summary.issue_id).is_(None))).all() == []


def test_asking_for_an_issue_that_does_not_exist_names_the_ones_that_do(config, engine):
    with session(engine) as db:
        with pytest.raises(NewsletterError, match=r"^there is no issue #3; no issue has been prepared yet"):
            find_issue(db, 3)
    add_people(engine, "a@example.org")
    for hour in (1, 2):
        add_summaries(engine, 1, at=T0 + timedelta(hours=hour - 1))
        prepare_issue(engine, config, now=T0 + timedelta(hours=hour))
    with session(engine) as db:
        with pytest.raises(NewsletterError, match=r"^there is no issue #99; issues go from #1 to #2$"):
            find_issue(db, 99)
        assert find_issue(db, 2).number == 2


# --- the table of steps ---------------------------------------------------------------------------------

# What a person may ask of an issue in each state, written out as the commands' help promises it.
ALLOWED = {
    IssueStatus.PREPARED: {"pause", "cancel", "retry"},
    IssueStatus.SENDING: {"pause", "cancel", "retry"},
    IssueStatus.PAUSED: {"resume", "cancel", "retry"},
    IssueStatus.SENT: {"retry"},
    IssueStatus.CANCELLED: set(),
    IssueStatus.DRAFT: set(),  # the next issue an editor is shaping: nothing to pause, resume, cancel or retry
}
COMMANDS = {"pause": pause_issue, "resume": resume_issue, "cancel": cancel_issue, "retry": retry_failed}
PARTICIPLES = {"pause": "paused", "resume": "resumed", "cancel": "cancelled", "retry": "retried"}


def an_issue_in(engine, config, state: IssueStatus) -> None:
    add_people(engine, "a@example.org")
    add_summaries(engine, 1, at=T0 - timedelta(hours=1))
    prepare_issue(engine, config, now=T0)
    with session(engine) as db:
        db.execute(update(Issue).values(status=state))
        db.commit()


@pytest.mark.parametrize("state", list(IssueStatus), ids=str)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_is_allowed_or_refused_in_one_line_naming_the_state(config, engine, state, command):
    an_issue_in(engine, config, state)
    if command in ALLOWED[state]:
        COMMANDS[command](engine, 1)
        return
    with pytest.raises(TransitionRefused) as refused:
        COMMANDS[command](engine, 1)
    message = str(refused.value)
    assert message.startswith(f"issue #1 is {state.value}; it cannot be {PARTICIPLES[command]} (")
    assert "\n" not in message
    with session(engine) as db:
        assert find_issue(db, 1).status is state  # refused: nothing changed


def test_resume_sends_again_cancel_skips_the_rest_and_retry_reopens_a_sent_issue(config, engine):
    an_issue_in(engine, config, IssueStatus.PREPARED)
    assert pause_issue(engine, 1).status is IssueStatus.PAUSED
    assert resume_issue(engine, 1).status is IssueStatus.SENDING
    with session(engine) as db:
        db.execute(update(Issue).values(status=IssueStatus.SENT, sent_at=T0))
        db.execute(update(Delivery).values(status=DeliveryStatus.FAILED))
        db.commit()
    issue, count = retry_failed(engine, 1)
    assert (issue.status, issue.sent_at, count) == (IssueStatus.SENDING, None, 1)
    issue, skipped = cancel_issue(engine, 1)
    assert (issue.status, skipped) == (IssueStatus.CANCELLED, 1)


def test_a_step_racing_another_command_is_judged_on_the_state_it_finds(config, engine):
    an_issue_in(engine, config, IssueStatus.PREPARED)
    with session(engine) as db:
        stale = find_issue(db, 1)  # read as prepared ...
        cancel_issue(engine, 1)  # ... cancelled by another terminal meanwhile
        with pytest.raises(TransitionRefused, match=r"^issue #1 is cancelled; it cannot be paused"):
            transition(db, stale, Step.PAUSE)
    with session(engine) as db:
        assert find_issue(db, 1).status is IssueStatus.CANCELLED


def test_a_sender_finishing_an_issue_another_sender_finished_meanwhile_leaves_it_sent(config, engine):
    an_issue_in(engine, config, IssueStatus.SENDING)
    with session(engine) as db:
        stale = find_issue(db, 1)  # read as sending by the second of two senders ...
        with session(engine) as first:  # ... while the first sender finishes the issue
            finish_sending(first, find_issue(first, 1))
            first.commit()
        assert finish_sending(db, stale).status is IssueStatus.SENT  # no error: it is done either way
    with session(engine) as db:
        assert find_issue(db, 1).status is IssueStatus.SENT
