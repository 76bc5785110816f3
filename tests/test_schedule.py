"""The scheduler: one issue per firing whatever happens (second scheduler, restart mid-send, downtime, an
editor preparing at the same moment), catch-up within the grace period, local time across DST, firings
with nothing waiting, the quiet note, the lease, failing jobs."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from newsletter.backends.file import FileBackend, FileOptions
from newsletter.db import session
from newsletter.errors import NewsletterError
from newsletter.firings import digest_trigger, last_run_time, next_run_time
from newsletter.issues import issue_items, prepare_issue
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Firing,
    FiringOutcome,
    Issue,
    IssueStatus,
    JobFailure,
    Summary,
    utcnow,
)
from newsletter.schedule import (
    Job,
    acquire_lease,
    build_jobs,
    release_lease,
    run_if_due,
    run_job,
    send_due,
)
from tests.conftest import ROOT, make_config
from tests.helpers import BERLIN, add_people, add_summaries, losing_commit

# The default schedule in the tests: Mondays 08:00 in Europe/Berlin. Monday 23 November 2026 08:00 CET is
# 07:00 UTC; the firing before it was Monday 16 November 08:00.
MONDAY_0800 = datetime(2026, 11, 23, 8, tzinfo=BERLIN)
IN_W47 = datetime(2026, 11, 18, 12, tzinfo=UTC)  # the Wednesday between the two


def issues(engine) -> list[Issue]:
    with session(engine) as db:
        return list(db.exec(select(Issue).order_by(col(Issue.number))))


def deliveries(engine) -> list[tuple[DeliveryStatus, int]]:
    with session(engine) as db:
        return [(d.status, d.attempts) for d in db.exec(select(Delivery).order_by(col(Delivery.id)))]


def firing_outcomes(engine) -> dict[str, FiringOutcome]:
    """Each recorded firing as its local time (``11-23 08:00``) and outcome."""
    with session(engine) as db:
        return {f.due_at.replace(tzinfo=UTC).astimezone(BERLIN).strftime("%m-%d %H:%M"): f.outcome
                for f in db.exec(select(Firing).order_by(col(Firing.due_at)))}


def fires(config, start: datetime, end: datetime) -> list[datetime]:
    trigger, found = digest_trigger(config), []
    fire = trigger.get_next_fire_time(None, start)
    while fire is not None and fire < end:
        found.append(fire)
        fire = trigger.get_next_fire_time(fire, fire)
    return found


# --- time ---------------------------------------------------------------------------------------------


def test_monday_0800_stays_0800_local_across_the_autumn_dst_change(tmp_path):
    config = make_config(tmp_path)  # Europe/Berlin, "0 8 * * mon"
    summer = next_run_time(config, after=datetime(2026, 10, 14, 12, tzinfo=UTC))  # → Monday Oct 19
    winter = next_run_time(config, after=datetime(2026, 10, 21, 12, tzinfo=UTC))  # clocks go back Oct 25
    assert (summer.day, summer.weekday(), summer.hour, summer.minute) == (19, 0, 8, 0)
    assert summer.astimezone(UTC).hour == 6  # CEST, UTC+2
    assert (winter.day, winter.weekday(), winter.hour) == (26, 0, 8)
    assert winter.astimezone(UTC).hour == 7  # CET, UTC+1


def test_a_send_time_that_does_not_exist_that_day_fires_once(tmp_path):
    # 29 March 2026: Berlin's clocks jump from 02:00 to 03:00, so 02:30 does not exist.
    config = make_config(tmp_path, schedule={"cron": "30 2 * * *", "timezone": "Europe/Berlin", "cadence": "daily"})
    day = fires(config, datetime(2026, 3, 29, tzinfo=BERLIN), datetime(2026, 3, 30, tzinfo=BERLIN))
    assert [f.astimezone(UTC) for f in day] == [datetime(2026, 3, 29, 1, 0, tzinfo=UTC)]  # 03:00 CEST
    local_times = [f.astimezone(UTC).astimezone(BERLIN).strftime("%H:%M") for f in fires(config, *around(2026, 3, 29))]
    assert local_times == ["02:30", "03:00", "02:30"]  # once a day; as Debian's cron, the missing 02:30 right after the gap


def test_a_send_time_that_exists_twice_that_day_fires_once(tmp_path):
    # 25 October 2026: Berlin's clocks go back from 03:00 to 02:00, so 02:30 happens twice.
    config = make_config(tmp_path, schedule={"cron": "30 2 * * *", "timezone": "Europe/Berlin", "cadence": "daily"})
    day = fires(config, datetime(2026, 10, 25, tzinfo=BERLIN), datetime(2026, 10, 26, tzinfo=BERLIN))
    assert [f.astimezone(UTC) for f in day] == [datetime(2026, 10, 25, 0, 30, tzinfo=UTC)]  # the first 02:30
    # After the first firing, the scheduler's next run is the next day, not the repeated 02:30.
    after = digest_trigger(config).get_next_fire_time(day[0], datetime(2026, 10, 25, 0, 31, tzinfo=UTC))
    assert after.astimezone(UTC) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)
    # And the catch-up logic sees the same single firing from anywhere in the repeated hour.
    assert last_run_time(config, datetime(2026, 10, 25, 1, 45, tzinfo=UTC)) == day[0]


def around(year: int, month: int, day: int) -> tuple[datetime, datetime]:
    return datetime(year, month, day - 1, tzinfo=BERLIN), datetime(year, month, day + 2, tzinfo=BERLIN)


def test_a_firing_takes_every_summary_waiting_at_its_time_and_a_later_one_waits_for_the_next(config, engine):
    add_people(engine, "a@example.org")
    add_summaries(engine, 1, at=datetime(2026, 11, 22, 23, 59, tzinfo=BERLIN).astimezone(UTC))
    add_summaries(engine, 1, at=(MONDAY_0800 - timedelta(minutes=1)).astimezone(UTC))
    add_summaries(engine, 1, at=(MONDAY_0800 + timedelta(minutes=1)).astimezone(UTC))  # after the firing

    result = run_if_due(engine, config, now=(MONDAY_0800 + timedelta(minutes=30)).astimezone(UTC))

    assert result.due_at == MONDAY_0800.astimezone(UTC) and result.outcome is FiringOutcome.ISSUED
    (issue,) = issues(engine)
    assert issue.period_end.replace(tzinfo=UTC) == MONDAY_0800.astimezone(UTC)
    with session(engine) as db:
        assert [s.title for s in issue_items(db, issue)] == ["Paper number 0", "Paper number 1"]
    assert deliveries(engine) == [(DeliveryStatus.SENT, 1)]
    # The 08:01 summary is the first item of the next firing's issue, not lost.
    run_if_due(engine, config, now=(MONDAY_0800 + timedelta(days=7)).astimezone(UTC))
    with session(engine) as db:
        second = issues(engine)[1]
        assert [s.title for s in issue_items(db, second)] == ["Paper number 2"]
        assert second.period_start.replace(tzinfo=UTC) == MONDAY_0800.astimezone(UTC)
    assert firing_outcomes(engine) == {"11-23 08:00": FiringOutcome.ISSUED, "11-30 08:00": FiringOutcome.ISSUED}


def test_each_firing_of_a_monthly_or_daily_cron_is_done_once(tmp_path, monkeypatch, engine):
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "k")
    add_people(engine, "a@example.org")
    add_summaries(engine, 1, at=datetime(2026, 10, 31, 12, tzinfo=UTC))
    monthly = make_config(tmp_path, schedule={"cron": "0 8 1 * *", "timezone": "Europe/Berlin", "cadence": "monthly"})
    result = run_if_due(engine, monthly, now=datetime(2026, 11, 2, tzinfo=UTC))
    assert result.due_at == datetime(2026, 11, 1, 7, tzinfo=UTC) and result.outcome is FiringOutcome.ISSUED
    assert run_if_due(engine, monthly, now=datetime(2026, 11, 2, 1, tzinfo=UTC)).outcome is None  # done
    add_summaries(engine, 1, at=datetime(2026, 11, 21, 12, tzinfo=UTC))
    daily = make_config(tmp_path, schedule={"cron": "0 7 * * *", "timezone": "Europe/Berlin", "cadence": "daily"})
    assert run_if_due(engine, daily, now=datetime(2026, 11, 22, 7, tzinfo=UTC)).outcome is FiringOutcome.ISSUED
    with session(engine) as db:
        assert [[s.title for s in issue_items(db, i)] for i in issues(engine)] == [["Paper number 0"],
                                                                                   ["Paper number 1"]]


# --- catch-up -----------------------------------------------------------------------------------------


def test_a_run_missed_by_less_than_the_grace_period_is_caught_up_once(config, engine, caplog):
    add_summaries(engine, 2, at=IN_W47)
    add_people(engine, "a@example.org", "b@example.org")
    late = (MONDAY_0800 + timedelta(hours=23)).astimezone(UTC)
    caplog.set_level("INFO")
    result = run_if_due(engine, config, now=late)
    assert result.outcome is FiringOutcome.ISSUED
    assert "catching up the firing at 2026-11-23T08:00+01:00 (Europe/Berlin) (23.0 h late)" in caplog.text
    assert run_if_due(engine, config, now=late + timedelta(minutes=5)).outcome is None  # done: nothing new
    assert len(issues(engine)) == 1
    assert deliveries(engine) == [(DeliveryStatus.SENT, 1)] * 2


def test_a_firing_missed_by_more_than_the_grace_period_is_recorded_and_warned_about(config, engine, caplog):
    add_summaries(engine, 2, at=IN_W47)
    add_people(engine, "a@example.org")
    caplog.set_level("WARNING")
    result = run_if_due(engine, config, now=(MONDAY_0800 + timedelta(hours=25)).astimezone(UTC))
    assert result.outcome is FiringOutcome.MISSED
    assert result.lines[0].startswith("firing at 2026-11-23T08:00+01:00 (Europe/Berlin): MISSED: the scheduler was "
                                      "not running within 24 h of it (schedule.grace_hours), so nothing was sent; "
                                      "2 summaries were waiting; they go out with the next firing at "
                                      "2026-11-30T08:00+01:00 (Europe/Berlin), or now with: newsletter digest "
                                      "prepare && newsletter digest send")
    assert "MISSED" in caplog.text
    assert issues(engine) == [] and firing_outcomes(engine) == {"11-23 08:00": FiringOutcome.MISSED}
    # Its summaries wait for the next firing.
    run_if_due(engine, config, now=(MONDAY_0800 + timedelta(days=7)).astimezone(UTC))
    (issue,) = issues(engine)
    with session(engine) as db:
        assert len(issue_items(db, issue)) == 2


def test_a_firing_missed_with_nothing_waiting_is_recorded_without_a_warning(config, engine, caplog):
    add_people(engine, "a@example.org")
    caplog.set_level("INFO")
    result = run_if_due(engine, config, now=(MONDAY_0800 + timedelta(hours=25)).astimezone(UTC))
    assert result.outcome is FiringOutcome.MISSED
    assert result.lines == ["firing at 2026-11-23T08:00+01:00 (Europe/Berlin): missed; nothing was waiting"]
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_after_weeks_of_downtime_only_the_latest_firing_is_caught_up(tmp_path, monkeypatch, engine):
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "k")
    config = make_config(tmp_path, schedule={"cron": "0 8 * * mon", "timezone": "Europe/Berlin", "grace_hours": 200})
    add_summaries(engine, 3, at=datetime(2026, 11, 1, tzinfo=UTC))
    add_people(engine, "a@example.org")
    # Down from 26 October to Tuesday 24 November: three Monday firings were missed; the grace period
    # covers the last one only, and it is the only one that sends.
    result = run_if_due(engine, config, now=datetime(2026, 11, 24, 9, tzinfo=UTC))
    assert len(issues(engine)) == 1 and result.due_at == MONDAY_0800.astimezone(UTC)
    assert result.lines[0].startswith("firing at 2026-11-23T08:00+01:00 (Europe/Berlin): prepared issue #1")
    assert deliveries(engine) == [(DeliveryStatus.SENT, 1)]


# --- exactly one issue per firing ----------------------------------------------------------------------


def test_two_schedulers_racing_on_one_database_make_one_issue_and_send_it_once(config, engine, smtp_server):
    smtp = make_config(config.base_dir, backend={"name": "smtp", "options": {
        "host": smtp_server.host, "port": smtp_server.port, "security": "none"}})
    add_summaries(engine, 2, at=IN_W47)
    people = [f"p{n}@example.org" for n in range(30)]
    add_people(engine, *people)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def scheduler() -> None:
        start.wait()
        try:
            run_if_due(engine, smtp, now=MONDAY_0800.astimezone(UTC))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=scheduler) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(issues(engine)) == 1
    assert sorted(r for m in smtp_server.messages for r in m.recipients) == sorted(people)
    assert deliveries(engine) == [(DeliveryStatus.SENT, 1)] * 30


def test_after_an_editors_issue_the_firing_sends_it_and_carries_only_what_arrived_since(config, engine):
    add_summaries(engine, 1, at=IN_W47)
    add_people(engine, "a@example.org")
    by_hand = prepare_issue(engine, config, now=IN_W47 + timedelta(hours=1))  # mid-week
    add_summaries(engine, 1, at=IN_W47 + timedelta(hours=2))
    result = run_if_due(engine, config, now=MONDAY_0800.astimezone(UTC))
    assert result.outcome is FiringOutcome.ISSUED and result.issue.number == 2
    with session(engine) as db:
        assert [[s.title for s in issue_items(db, i)] for i in issues(engine)] == [["Paper number 0"],
                                                                                   ["Paper number 1"]]
    assert [i.status for i in issues(engine)] == [IssueStatus.SENT, IssueStatus.SENT]  # the run sent both
    assert issues(engine)[1].period_start == by_hand.issue.period_end
    # Nothing new by the next firing: recorded, nothing sent.
    nothing = run_if_due(engine, config, now=(MONDAY_0800 + timedelta(days=7)).astimezone(UTC))
    assert nothing.outcome is FiringOutcome.EMPTY and len(issues(engine)) == 2
    assert nothing.lines == ["firing at 2026-11-30T08:00+01:00 (Europe/Berlin): nothing new was waiting; nothing "
                             "prepared"]


def test_an_editor_and_a_firing_at_the_same_moment_never_put_a_summary_in_two_issues(config, engine):
    add_summaries(engine, 10, at=IN_W47)
    add_people(engine, "a@example.org")
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def firing() -> None:
        start.wait()
        try:
            run_if_due(engine, config, now=MONDAY_0800.astimezone(UTC))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def editor() -> None:
        start.wait()
        try:
            prepare_issue(engine, config, now=MONDAY_0800.astimezone(UTC))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=firing), threading.Thread(target=editor)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    with session(engine) as db:
        counts = [len(issue_items(db, issue)) for issue in issues(engine)]
        assert db.exec(select(Summary).where(Summary.issue_id == None)).all() == []  # noqa: E711
    assert sum(counts) == 10 and all(counts) and len(counts) in (1, 2)
    assert list(firing_outcomes(engine)) == ["11-23 08:00"]


class StopAfterFirstBatch(FileBackend):
    """The file backend, with SIGTERM arriving while the first batch is in flight."""

    halt: threading.Event

    def send(self, batch):
        self.halt.set()
        return super().send(batch)


def test_stop_mid_send_finishes_the_batch_and_a_restart_sends_the_rest_once(config, engine, monkeypatch, caplog):
    add_summaries(engine, 1, at=IN_W47)
    add_people(engine, *[f"p{n}@example.org" for n in range(150)])  # two batches of at most 100
    halt = threading.Event()
    StopAfterFirstBatch.halt = halt
    monkeypatch.setattr("newsletter.schedule.create_backend", lambda cfg: StopAfterFirstBatch(FileOptions(), config=cfg))
    run_if_due(engine, config, now=MONDAY_0800.astimezone(UTC), halt=halt)
    assert "stopped sending after the messages in flight" in caplog.text
    assert sorted(deliveries(engine)) == sorted([(DeliveryStatus.SENT, 1)] * 100 + [(DeliveryStatus.QUEUED, 0)] * 50)
    assert issues(engine)[0].status is IssueStatus.SENDING

    # The restarted process runs the same job (catch-up on start): no second issue, the other 50 go out.
    monkeypatch.undo()
    run_if_due(engine, config, now=(MONDAY_0800 + timedelta(minutes=3)).astimezone(UTC))
    assert [i.status for i in issues(engine)] == [IssueStatus.SENT]
    assert deliveries(engine) == [(DeliveryStatus.SENT, 1)] * 150
    assert len(list((config.base_dir / "outbox").glob("*.eml"))) == 150


def test_a_process_killed_mid_batch_leaves_its_batch_to_the_next_run_after_the_lease(config, engine):
    add_summaries(engine, 1, at=IN_W47)
    add_people(engine, "a@example.org", "b@example.org", "c@example.org")
    prepare_issue(engine, config, now=IN_W47)
    with session(engine) as db:  # what a killed sender leaves: a claimed batch whose lease has run out
        db.execute(update(Delivery).where(col(Delivery.id) <= 2).values(
            status=DeliveryStatus.SENDING, claimed_by="send-dead", lease_expires_at=datetime(2026, 1, 1, tzinfo=UTC)))
        db.commit()
    run_if_due(engine, config, now=MONDAY_0800.astimezone(UTC))
    assert deliveries(engine) == [(DeliveryStatus.SENT, 1)] * 3
    assert len(issues(engine)) == 1


# --- firings with nothing waiting ---------------------------------------------------------------------


def test_a_firing_with_nothing_waiting_is_recorded_quietly(config, engine, caplog):
    add_people(engine, "a@example.org")
    caplog.set_level("INFO")
    result = run_if_due(engine, config, now=(MONDAY_0800 + timedelta(hours=2)).astimezone(UTC))  # caught up
    assert result.outcome is FiringOutcome.EMPTY and "nothing new was waiting" in caplog.text
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert issues(engine) == [] and firing_outcomes(engine) == {"11-23 08:00": FiringOutcome.EMPTY}


def test_the_quiet_week_option_sends_a_short_note_instead(tmp_path, monkeypatch, engine):
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "k")
    note = "Nothing new crossed our desks this week. Back next Monday."
    config = make_config(tmp_path, schedule={"cron": "0 8 * * mon", "timezone": "Europe/Berlin", "quiet_note": note})
    add_people(engine, "a@example.org")
    result = run_if_due(engine, config, now=MONDAY_0800.astimezone(UTC))
    assert result.outcome is FiringOutcome.QUIET
    (message,) = (config.base_dir / "outbox").glob("*.eml")
    text = message.read_text(encoding="utf-8")
    assert "A quiet week" in text and "Nothing new crossed our desks" in text
    with session(engine) as db:
        assert db.exec(select(Summary.issue_id).where(Summary.origin == "scheduler")).all() == [issues(engine)[0].id]
        assert db.exec(select(Summary).where(Summary.issue_id == None)).all() == []  # noqa: E711


def test_no_quiet_note_after_an_issue_prepared_by_hand_since_the_previous_firing(tmp_path, monkeypatch, engine,
                                                                                  caplog):
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "k")
    config = make_config(tmp_path, schedule={"cron": "0 8 * * mon", "timezone": "Europe/Berlin",
                                             "quiet_note": "Nothing new this week."})
    add_people(engine, "a@example.org")
    add_summaries(engine, 2, at=IN_W47)
    by_hand = prepare_issue(engine, config, now=(MONDAY_0800 - timedelta(hours=1)).astimezone(UTC))
    assert by_hand.item_count == 2

    caplog.set_level("INFO")
    result = run_if_due(engine, config, now=(MONDAY_0800 + timedelta(minutes=1)).astimezone(UTC))
    assert result.outcome is FiringOutcome.EMPTY and len(issues(engine)) == 1  # no quiet-note issue
    assert ("firing at 2026-11-23T08:00+01:00 (Europe/Berlin): nothing new was waiting; nothing prepared (no quiet "
            "note: issue #1 went out since the previous firing)") in caplog.text
    mails = [path.read_text(encoding="utf-8") for path in (config.base_dir / "outbox").glob("*.eml")]
    assert len(mails) == 1 and "A quiet week" not in mails[0]  # the by-hand issue, sent by the same run
    # A week later nothing came and no issue went out since: the quiet note does.
    quiet = run_if_due(engine, config, now=(MONDAY_0800 + timedelta(days=7)).astimezone(UTC))
    assert quiet.outcome is FiringOutcome.QUIET and len(issues(engine)) == 2


def test_an_editors_draft_is_not_taken_over_by_a_quiet_note(tmp_path, monkeypatch, engine, caplog):
    """An editor shaping the next issue (a note, a subject, every waiting item left out for now): a firing
    with nothing waiting sends no quiet note (it would carry the editor's subject and note), and the draft
    keeps its choices for the issue it was meant for."""
    from newsletter.issues import editorial

    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "k")
    config = make_config(tmp_path, schedule={"cron": "0 8 * * mon", "timezone": "Europe/Berlin",
                                             "quiet_note": "Nothing new this week."})
    add_people(engine, "a@example.org")
    add_summaries(engine, 1, at=IN_W47)
    with session(engine) as db:
        summary_id = db.exec(select(Summary.id)).one()
    editorial.set_note(engine, "Hello from the desk")
    editorial.set_subject(engine, "My own subject")
    editorial.leave_out(engine, summary_id)

    caplog.set_level("INFO")
    result = run_if_due(engine, config, now=(MONDAY_0800 + timedelta(minutes=1)).astimezone(UTC))
    assert result.outcome is FiringOutcome.EMPTY
    assert "no quiet note: an editor is shaping issue #1" in caplog.text
    assert list((config.base_dir / "outbox").glob("*.eml")) == []
    [draft] = issues(engine)
    assert (draft.status, draft.subject_override, draft.note) == (IssueStatus.DRAFT, "My own subject",
                                                                   "Hello from the desk")


def test_a_cancelled_issue_that_reached_nobody_does_not_silence_the_quiet_note(tmp_path, monkeypatch, engine):
    from newsletter.issues import cancel_issue

    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "k")
    config = make_config(tmp_path, schedule={"cron": "0 8 * * mon", "timezone": "Europe/Berlin",
                                             "quiet_note": "Nothing new this week."})
    add_people(engine, "a@example.org")
    add_summaries(engine, 2, at=IN_W47)
    prepare_issue(engine, config, now=(MONDAY_0800 - timedelta(hours=1)).astimezone(UTC))
    cancel_issue(engine, 1)
    result = run_if_due(engine, config, now=(MONDAY_0800 + timedelta(minutes=1)).astimezone(UTC))
    assert result.outcome is FiringOutcome.QUIET
    [mail] = [path.read_text(encoding="utf-8") for path in (config.base_dir / "outbox").glob("*.eml")]
    assert "A quiet week" in mail


# --- the lease and failing jobs -----------------------------------------------------------------------


def test_the_lease_has_one_holder_is_renewed_and_is_taken_over_when_expired(engine):
    ttl, t0 = timedelta(seconds=60), datetime(2026, 11, 23, 7, tzinfo=UTC)
    assert acquire_lease(engine, "a", ttl, now=t0).owner == "a"
    assert acquire_lease(engine, "b", ttl, now=t0 + timedelta(seconds=30)).owner == "a"  # b waits
    assert acquire_lease(engine, "a", ttl, now=t0 + timedelta(seconds=45)).owner == "a"  # a renews
    assert acquire_lease(engine, "b", ttl, now=t0 + timedelta(seconds=90)).owner == "a"  # renewed: still a's
    taken = acquire_lease(engine, "b", ttl, now=t0 + timedelta(seconds=106))  # a stopped renewing
    assert (taken.owner, taken.expires_at) == ("b", t0 + timedelta(seconds=166))
    assert acquire_lease(engine, "a", ttl, now=t0 + timedelta(seconds=107)).owner == "b"  # a lost it
    release_lease(engine, "a")  # not a's to release
    assert acquire_lease(engine, "c", ttl, now=t0 + timedelta(seconds=108)).owner == "b"
    release_lease(engine, "b")  # clean shutdown: the next process need not wait for expiry
    assert acquire_lease(engine, "c", ttl, now=t0 + timedelta(seconds=109)).owner == "c"


def test_a_holder_that_cannot_renew_stops_its_jobs_before_its_lease_can_expire(config, engine, monkeypatch, caplog):
    """The database goes away for longer than the lease: the holder stops firing jobs while its lease still
    holds, so a second scheduler that takes the expired lease never runs jobs beside it."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from newsletter import schedule

    timing = schedule.LeaseTiming(timedelta(seconds=3), timedelta(milliseconds=300))
    taken = acquire_lease(engine, "me", timing.ttl)
    renewals: list[int] = []

    def away(*args, **kwargs):  # every renewal meets a database that does not answer
        renewals.append(1)
        raise OperationalError("UPDATE scheduler_lease ...", {}, sqlite3.OperationalError("database is locked"))

    monkeypatch.setattr(schedule, "acquire_lease", away)
    monkeypatch.setattr(schedule, "build_jobs", lambda config, halt: [])
    stop = threading.Event()
    runner = threading.Thread(target=schedule._run_holding, args=(engine, config, "me", stop, timing))
    runner.start()
    runner.join(timeout=60)
    stopped_at = utcnow()
    alive = runner.is_alive()
    stop.set()
    runner.join(timeout=60)
    assert not alive, "the holder went on firing jobs without a lease it could renew"
    assert renewals and stopped_at < taken.expires_at  # stopped while the lease it last wrote still held
    assert ("could not renew the scheduler lease before it could expire; pausing jobs until the database "
            "answers again") in caplog.text


def test_a_job_that_raises_is_logged_with_its_traceback_recorded_and_not_raised(config, engine, caplog):
    def broken(_engine, _config):
        raise RuntimeError("feed server returned nonsense")

    run_job(engine, config, Job("feeds", digest_trigger(config), broken))
    assert "job feeds failed" in caplog.text and "Traceback" in caplog.text and "in broken" in caplog.text
    with session(engine) as db:
        (failure,) = db.exec(select(JobFailure)).all()
    assert (failure.job, failure.error) == ("feeds", "RuntimeError: feed server returned nonsense")


def test_a_failure_whose_text_is_not_storable_is_still_recorded(config, engine, caplog):
    """A server's reply quoted in an exception can hold a NUL or a lone surrogate, which PostgreSQL
    cannot store: the failure is recorded all the same."""
    def broken(_engine, _config):
        raise RuntimeError("550 no\x00 thanks \ud800")

    run_job(engine, config, Job("send", digest_trigger(config), broken))
    with session(engine) as db:
        (failure,) = db.exec(select(JobFailure)).all()
    assert failure.error == "RuntimeError: 550 no thanks"
    assert "550 no\\x00 thanks \\ud800" in failure.traceback
    assert "could not record" not in caplog.text


def test_the_retry_job_sends_what_became_due_and_is_quiet_otherwise(config, engine, caplog):
    assert send_due(engine, config) == []  # nothing prepared yet: no error
    assert "failed" not in caplog.text
    add_summaries(engine, 1)
    add_people(engine, "a@example.org")
    prepare_issue(engine, config)
    (report,) = send_due(engine, config)
    assert report.sent == 1 and deliveries(engine) == [(DeliveryStatus.SENT, 1)]


@pytest.mark.parametrize("hours", [0.5, 24])
def test_the_grace_period_is_configurable(tmp_path, monkeypatch, engine, hours):
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "k")
    config = make_config(tmp_path, schedule={"cron": "0 8 * * mon", "timezone": "Europe/Berlin", "grace_hours": hours})
    add_summaries(engine, 1, at=IN_W47)
    add_people(engine, "a@example.org")
    result = run_if_due(engine, config, now=(MONDAY_0800 + timedelta(hours=2)).astimezone(UTC))
    assert result.outcome is (FiringOutcome.MISSED if hours < 2 else FiringOutcome.ISSUED)


def test_firings_missed_while_down_for_weeks_are_each_recorded_not_silently_skipped(config, engine, caplog):
    add_people(engine, "a@example.org")
    add_summaries(engine, 1, at=datetime(2026, 10, 28, tzinfo=UTC))
    run_if_due(engine, config, now=datetime(2026, 11, 2, 7, tzinfo=UTC))  # Monday 2 Nov 08:00: sent
    add_summaries(engine, 2, at=datetime(2026, 11, 11, tzinfo=UTC))
    caplog.set_level("INFO")
    # Down until Monday 23 November 09:00: 9 and 16 November were missed; 23 November is within the grace.
    run_if_due(engine, config, now=datetime(2026, 11, 23, 8, tzinfo=UTC))
    assert firing_outcomes(engine) == {
        "11-02 08:00": FiringOutcome.ISSUED,
        "11-09 08:00": FiringOutcome.MISSED,
        "11-16 08:00": FiringOutcome.MISSED,
        "11-23 08:00": FiringOutcome.ISSUED,
    }
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("11-16T08:00+01:00 (Europe/Berlin): MISSED: the scheduler was not running; 2 summaries were "
               "waiting" in line for line in warned)
    assert not any("11-09T08:00" in line for line in warned)  # nothing was waiting then: no warning
    with session(engine) as db:  # one catch-up issue, with everything that waited
        assert [len(issue_items(db, i)) for i in issues(engine)] == [1, 2]


def test_feed_and_inbox_jobs_run_only_when_configured_and_the_inbox_job_ingests(tmp_path, engine):
    plain = make_config(tmp_path)
    assert {job.id for job in build_jobs(plain, threading.Event())} == {"digest", "send-due"}
    config = make_config(
        tmp_path, ingest={"feeds": ["https://example.org/feed.xml"], "inbox": "inbox", "inbox_settle_seconds": 0}
    )
    jobs = {job.id: job for job in build_jobs(config, threading.Event())}
    assert set(jobs) == {"digest", "send-due", "feeds", "inbox"}
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    sample = ROOT / "newsletter" / "samples" / "summaries" / "01-senolytic-muscle-repair.md"
    (inbox / sample.name).write_bytes(sample.read_bytes())
    run_job(engine, config, jobs["inbox"])
    assert (inbox / "processed" / sample.name).exists()
    with session(engine) as db:
        assert len(db.exec(select(Summary)).all()) == 1


def test_an_issue_failing_the_pre_send_checks_is_not_sent_until_fixed(tmp_path, engine, caplog):
    own = tmp_path / "own-templates"
    own.mkdir()
    (own / "subject.txt.j2").write_text("{{ newsletter.name }} " + "and more " * 15, encoding="utf-8")
    config = make_config(tmp_path, templates=str(own))
    add_summaries(engine, 1, at=IN_W47)
    add_people(engine, "ada@example.org")
    with pytest.raises(NewsletterError, match="issue #1 fails the pre-send checks"):
        run_if_due(engine, config, now=MONDAY_0800.astimezone(UTC))
    assert "subject" in caplog.text and deliveries(engine) == [(DeliveryStatus.QUEUED, 0)]

    (own / "subject.txt.j2").unlink()  # the editor fixes the template; the next run sends
    fixed = make_config(tmp_path, templates=str(own))
    send_due(engine, fixed)
    assert deliveries(engine) == [(DeliveryStatus.SENT, 1)]


def test_the_bounce_job_runs_only_when_a_mailbox_is_configured(tmp_path):
    config = make_config(tmp_path, bounces={"mailbox": {"type": "maildir", "path": "bounces"}})
    assert "bounces" in {job.id for job in build_jobs(config, threading.Event())}


def test_the_retry_job_leaves_the_backend_alone_when_nothing_is_due(config, engine, monkeypatch):
    add_summaries(engine, 1, at=IN_W47)
    add_people(engine, "ada@example.org")
    prepare_issue(engine, config)
    with session(engine) as db:  # the only delivery waits for a retry an hour from now
        db.exec(update(Delivery).values(status=DeliveryStatus.RETRY, next_attempt_at=utcnow() + timedelta(hours=1)))
        db.commit()
    opened = []
    monkeypatch.setattr("newsletter.schedule.create_backend", lambda cfg: opened.append(cfg))
    assert send_due(engine, config) == []
    assert opened == []  # no connection to the mail server, no render, every 5 minutes


def test_a_full_disk_while_renewing_the_lease_is_logged_and_tried_again_not_fatal(engine, monkeypatch, caplog):
    """The renewal is a write; a full disk (which SQLite meets only when its WAL must grow, so it cannot be
    set up at will here) makes it fail: the scheduler says so and tries again at the next renewal."""
    from newsletter import schedule
    from newsletter.errors import DatabaseFull

    real = schedule.acquire_lease
    failures = [DatabaseFull("the disk holding the database is full (database or disk is full); ...")] * 2

    def acquire(*args, **kwargs):
        if failures:
            raise failures.pop()
        return real(*args, **kwargs)

    monkeypatch.setattr(schedule, "acquire_lease", acquire)
    timing = schedule.LeaseTiming(timedelta(seconds=4), timedelta(milliseconds=10))
    holder = schedule._lease(engine, "me", timing, threading.Event())
    assert holder is not None and holder.owner == "me"
    lines = [r.getMessage() for r in caplog.records if "cannot renew the scheduler lease" in r.getMessage()]
    assert len(lines) == 2 and lines[0].endswith("trying again in 0.01 s")
    stopped = threading.Event()
    stopped.set()
    failures.append(DatabaseFull("full"))
    assert schedule._lease(engine, "me", timing, stopped) is None  # stopping ends the wait


@pytest.mark.parametrize("lost", ["before", "after"])
def test_a_firing_whose_commit_meets_a_database_outage_is_done_again_by_its_job_once(config, engine, monkeypatch,
                                                                                      caplog, lost):
    """The connection drops as the firing's transaction commits: ``before`` the server wrote it (nothing of
    the firing is kept), or ``after`` (it is kept, but the answer never came back, so the job cannot know).
    The job is run again once the database answers; either way the firing makes one issue, sent once.
    (The lost answer cannot be produced at will with a real server, so the session's commit fakes it.)"""
    from newsletter import firings

    faults = [lost]
    monkeypatch.setattr(firings, "session", losing_commit(faults, lambda db: any(
        isinstance(row, Firing) and row.issue_id for row in db.identity_map.values())))
    add_summaries(engine, 2, at=IN_W47)
    add_people(engine, "a@example.org", "b@example.org")
    now = (MONDAY_0800 + timedelta(minutes=30)).astimezone(UTC)

    run_job(engine, config, Job("digest", digest_trigger(config), lambda e, c: run_if_due(e, c, now=now)))

    assert faults == []  # the fault happened
    assert "database unavailable: server closed the connection unexpectedly; retrying in 1 s" in caplog.text
    assert [issue.number for issue in issues(engine)] == [1]
    assert firing_outcomes(engine) == {"11-23 08:00": FiringOutcome.ISSUED}
    assert deliveries(engine) == [(DeliveryStatus.SENT, 1)] * 2
    with session(engine) as db:
        assert db.exec(select(JobFailure)).all() == []
