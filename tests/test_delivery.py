"""The send loop: everyone once, nothing twice, failures recorded, and an interrupted run resumes."""

import os
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from newsletter.backends import SendResult, SendStatus, create_backend
from newsletter.backends.file import FileBackend, FileOptions
from newsletter.db import session
from newsletter.delivery import LEASE, _claim, send_issue, send_unfinished, work
from newsletter.errors import DeliveryError, NewsletterError
from newsletter.issues import pause_issue, prepare_issue, write_preview
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    IssueStatus,
    Subscriber,
    SubscriberStatus,
)
from tests.conftest import ROOT, make_config
from tests.helpers import add_people, add_summaries, losing_commit

NOW = datetime(2026, 11, 18, 9, tzinfo=UTC)


@pytest.fixture
def config(config):
    """Windows of exactly ``max_in_flight`` messages (``in_flight_factor`` 1): the tests that stop, pause
    or cancel a send in the middle count on it."""
    return config.model_copy(update={"delivery": config.delivery.model_copy(update={"in_flight_factor": 1})})


def statuses(engine) -> dict[str, str]:
    with session(engine) as db:
        rows = db.exec(select(Subscriber.email, Delivery.status).join(Delivery)).all()
    return {email: status.value for email, status in rows}


def prepared(config, engine, *people: str) -> None:
    add_summaries(engine, 2)
    add_people(engine, *people)
    prepare_issue(engine, config)


def test_file_backend_gets_one_message_per_subscriber_and_a_rerun_sends_nothing(config, engine):
    prepared(config, engine, "a@example.org", "b@example.org", "c@example.org")
    report = send_issue(engine, config, create_backend(config), 1, batch_size=2)
    assert (report.sent, report.remaining, report.issue.status) == (3, 0, IssueStatus.SENT)
    outbox = sorted((config.base_dir / "outbox").glob("*.eml"))
    assert len(outbox) == 3
    assert set(statuses(engine).values()) == {"sent"}
    with session(engine) as db:
        assert all(d.message_id and d.sent_at and d.attempts == 1 for d in db.exec(select(Delivery)))
    with pytest.raises(NewsletterError, match="already sent and no newer issue is prepared"):
        send_unfinished(engine, config, create_backend(config))
    with pytest.raises(NewsletterError, match=r"^issue #1 is sent; it cannot be sent again \(it went out; `newsletter digest retry-failed 1`"):
        send_issue(engine, config, create_backend(config), 1)
    assert len(list((config.base_dir / "outbox").glob("*.eml"))) == 3


def test_someone_who_unsubscribes_after_prepare_is_skipped(config, engine):
    prepared(config, engine, "a@example.org", "b@example.org")
    with session(engine) as db:
        db.execute(update(Subscriber).where(Subscriber.email == "b@example.org").values(status=SubscriberStatus.UNSUBSCRIBED))
        db.commit()
    report = send_issue(engine, config, create_backend(config), 1)
    assert (report.sent, report.skipped) == (1, 1)
    assert statuses(engine) == {"a@example.org": "sent", "b@example.org": "skipped"}


def test_an_interrupted_send_resumes_without_resending(config, engine, smtp_server):
    smtp = make_config(config.base_dir, backend={"name": "smtp", "options": {"host": smtp_server.host,
                       "port": smtp_server.port, "security": "none"}})
    prepared(smtp, engine, *(f"p{n}@example.org" for n in range(5)))
    # A first run was killed: two were sent, two were claimed (in flight) and one was never touched.
    with session(engine) as db:
        rows = db.exec(select(Delivery).order_by(col(Delivery.id))).all()
        for row in rows[:2]:
            row.status, row.sent_at = DeliveryStatus.SENT, NOW
        for row in rows[2:4]:
            row.status, row.claimed_by, row.lease_expires_at = DeliveryStatus.SENDING, "dead", NOW + LEASE
        db.add_all(rows)
        db.commit()

    # While the dead run's lease holds, its batch is not touched; the untouched one goes out.
    report = send_issue(engine, smtp, create_backend(smtp), 1, clock=lambda: NOW + timedelta(minutes=1))
    assert report.sent == 1 and report.remaining == 2
    # After the lease expires, the in-flight batch is finished and the issue completes.
    report = send_issue(engine, smtp, create_backend(smtp), 1, clock=lambda: NOW + LEASE + timedelta(seconds=1))
    assert report.sent == 2 and report.issue.status is IssueStatus.SENT
    received = [m.recipients[0] for m in smtp_server.messages]
    assert sorted(received) == ["p2@example.org", "p3@example.org", "p4@example.org"]


def test_smtp_rejections_become_failures_and_retries(config, engine, smtp_server):
    smtp = make_config(config.base_dir, backend={"name": "smtp", "options": {"host": smtp_server.host,
                       "port": smtp_server.port, "security": "none"}})
    smtp_server.handler.reject["bad@example.org"] = "550 5.1.1 No such user"
    smtp_server.handler.reject["busy@example.org"] = "451 4.3.0 Try again later"
    prepared(smtp, engine, "ok@example.org", "bad@example.org", "busy@example.org")

    report = send_issue(engine, smtp, create_backend(smtp), 1, clock=lambda: NOW)
    assert (report.sent, report.failed, report.retry) == (1, 1, 1)
    assert report.issue.status is not IssueStatus.SENT
    with session(engine) as db:
        by_email = {s.email: d for d, s in db.exec(select(Delivery, Subscriber).join(Subscriber)).all()}
    assert "550" in by_email["bad@example.org"].last_error
    assert by_email["busy@example.org"].next_attempt_at == NOW + timedelta(minutes=5)

    # Not yet due: nothing happens. Once due and accepted, the issue completes; the hard failure stays.
    assert send_issue(engine, smtp, create_backend(smtp), 1, clock=lambda: NOW + timedelta(minutes=1)).sent == 0
    del smtp_server.handler.reject["busy@example.org"]
    report = send_issue(engine, smtp, create_backend(smtp), 1, clock=lambda: NOW + timedelta(minutes=6))
    assert report.sent == 1 and report.issue.status is IssueStatus.SENT
    assert statuses(engine) == {"ok@example.org": "sent", "bad@example.org": "failed", "busy@example.org": "sent"}
    assert sorted(m.recipients[0] for m in smtp_server.messages) == ["busy@example.org", "ok@example.org"]


def test_an_unreachable_server_loses_nothing(config, engine):
    smtp = make_config(config.base_dir, backend={"name": "smtp", "options": {"host": "127.0.0.1", "port": 9,
                       "security": "none", "timeout": 2}})
    prepared(smtp, engine, "a@example.org")
    with pytest.raises(DeliveryError, match="127.0.0.1:9"):
        send_issue(engine, smtp, create_backend(smtp), 1)
    assert statuses(engine) == {"a@example.org": "queued"}


def test_with_nothing_prepared_send_says_what_to_do(config, engine):
    with pytest.raises(NewsletterError, match="run `newsletter digest prepare` first"):
        send_unfinished(engine, config, create_backend(config))


def test_an_address_no_message_can_be_built_for_fails_alone(config, engine):
    prepared(config, engine, "a@example.org", "jörg@example.org", "b@example.org")
    report = send_issue(engine, config, create_backend(config), 1)
    assert (report.sent, report.failed) == (2, 1)
    assert statuses(engine) == {"a@example.org": "sent", "jörg@example.org": "failed", "b@example.org": "sent"}
    with session(engine) as db:
        failed = db.exec(select(Delivery).where(Delivery.status == DeliveryStatus.FAILED)).one()
    assert "jörg@example.org" in failed.last_error


def test_a_bug_while_building_one_message_stops_the_send_and_fails_no_one(config, engine, monkeypatch):
    """Only a bad address or value fails a subscriber's delivery; any other error building a message is a
    bug that would hit the next subscribers too, so the send stops with it and every row not written goes
    back to the queue, for the run after the fix."""
    from newsletter.message import Composer

    prepared(config, engine, "a@example.org", "b@example.org", "c@example.org")
    real = Composer.compose

    def compose(self, delivery_id, subscriber, template, **kwargs):  # type: ignore[no-untyped-def]
        if subscriber.email == "b@example.org":
            raise KeyError("link7")
        return real(self, delivery_id, subscriber, template, **kwargs)

    monkeypatch.setattr(Composer, "compose", compose)
    with pytest.raises(KeyError, match="link7"):
        send_issue(engine, config, create_backend(config), 1)
    assert statuses(engine) == dict.fromkeys(["a@example.org", "b@example.org", "c@example.org"], "queued")
    monkeypatch.setattr(Composer, "compose", real)
    assert send_issue(engine, config, create_backend(config), 1).sent == 3
    assert set(statuses(engine).values()) == {"sent"}


def test_send_moves_on_to_a_newer_issue_while_an_older_one_waits_for_a_retry(config, engine, smtp_server):
    smtp = make_config(config.base_dir, backend={"name": "smtp", "options": {"host": smtp_server.host,
                       "port": smtp_server.port, "security": "none"}})
    smtp_server.handler.reject["busy@example.org"] = "451 4.3.0 Try again later"
    prepared(smtp, engine, "ok@example.org", "busy@example.org")
    send_unfinished(engine, smtp, create_backend(smtp), clock=lambda: NOW)
    add_summaries(engine, 1)
    prepare_issue(engine, smtp)  # the next issue, from the summary that arrived since
    reports = send_unfinished(engine, smtp, create_backend(smtp), clock=lambda: NOW + timedelta(days=7, minutes=1))
    # Issue 1 tries its due retry again (still refused); issue 2 is not held up by it.
    assert [(r.issue.number, r.sent, r.retry) for r in reports] == [(1, 0, 1), (2, 1, 1)]


def test_a_backend_crash_releases_the_batch_for_the_next_run(config, engine):
    prepared(config, engine, "a@example.org", "b@example.org")

    class Exploding(FileBackend):
        def send(self, batch):
            raise RuntimeError("disk on fire")

    with pytest.raises(DeliveryError, match="disk on fire; the batch will be sent again"):
        send_issue(engine, config, Exploding(FileOptions(), config=config), 1)
    assert statuses(engine) == {"a@example.org": "queued", "b@example.org": "queued"}
    assert send_issue(engine, config, create_backend(config), 1).sent == 2


def test_a_sender_whose_lease_ran_out_does_not_overwrite_the_ledger(config, engine):
    """Sender A is so slow that its lease expires and sender B finishes the batch; A's late results
    must not be recorded over B's."""
    prepared(config, engine, "a@example.org")
    late = NOW + LEASE + timedelta(seconds=1)

    class Slow(FileBackend):
        def send(self, batch):
            send_issue(engine, config, create_backend(config), 1, clock=lambda: late)  # B, meanwhile
            return super().send(batch)

    slow = send_issue(engine, config, Slow(FileOptions(), config=config), 1, clock=lambda: NOW)
    assert slow.sent == 0  # A recorded nothing
    with session(engine) as db:
        (delivery,) = db.exec(select(Delivery)).all()
    assert (delivery.status, delivery.attempts, delivery.sent_at) == (DeliveryStatus.SENT, 1, late)


def test_the_issue_is_compiled_once_for_a_whole_send(config, engine, monkeypatch):
    from newsletter import render

    calls = []
    original = render.mjml2html
    monkeypatch.setattr(render, "mjml2html", lambda *a, **k: calls.append(1) or original(*a, **k))
    prepared(config, engine, *(f"p{n}@example.org" for n in range(5)))
    calls.clear()
    assert send_issue(engine, config, create_backend(config), 1, batch_size=2).sent == 5
    assert len(calls) == 1


def test_render_previews_the_next_issue_as_soon_as_a_summary_is_waiting(config, engine, tmp_path):
    prepared(config, engine, "a@example.org")
    send_issue(engine, config, create_backend(config), 1)
    shown = write_preview(engine, config, tmp_path / "p").description
    assert shown.startswith("issue #1 (sent ") and shown.endswith(" 2026)")  # its state and date
    add_summaries(engine, 1)
    files = write_preview(engine, config, tmp_path / "p")  # the same day: what will go out next
    assert files.description == "draft of issue #2 (not prepared yet)"
    assert "Paper number 2" in files.html.read_text(encoding="utf-8")
    assert "Paper number 0" not in files.html.read_text(encoding="utf-8")
    assert b"To: A <a@example.org>" in files.eml.read_bytes()
    assert write_preview(engine, config, tmp_path / "p", 1).description == shown


def test_render_with_nothing_prepared_or_waiting_says_to_ingest_first(config, engine, tmp_path):
    with pytest.raises(NewsletterError, match="nothing to show: .* run `newsletter ingest` first"):
        write_preview(engine, config, tmp_path / "p")
    assert not (tmp_path / "p").exists()


# -- topics, bounces, control, crash takeover ------------------------------------------------------------------


def smtp_config(config, server, **options):
    return make_config(config.base_dir, backend={"name": "smtp", "options": {
        "host": server.host, "port": server.port, "security": "none", **options}})


def test_topics_select_sections_render_once_per_selection_and_skip_when_nothing_matches(config, engine, monkeypatch):
    from newsletter import message as builder

    add_summaries(engine, 2, category="Neuroscience")
    add_summaries(engine, 1, category="Climate")
    add_people(engine, "all@example.org", "neuro@example.org", "neuro2@example.org", "climate@example.org",
               "chem@example.org")
    topics = {"neuro@example.org": ["neuroscience"], "neuro2@example.org": ["Neuroscience", "Chemistry"],
              "climate@example.org": ["Climate"], "chem@example.org": ["Chemistry"]}
    with session(engine) as db:
        for person in db.exec(select(Subscriber)):
            person.topics = topics.get(person.email, [])
            db.add(person)
        db.commit()
    prepare_issue(engine, config)
    renders = []
    original = builder.render_issue
    monkeypatch.setattr(builder, "render_issue", lambda c, i, items: renders.append(len(items)) or original(c, i, items))

    report = send_issue(engine, config, create_backend(config), 1, batch_size=2)

    assert (report.sent, report.skipped) == (4, 1)
    assert sorted(renders) == [1, 2, 3]  # everything; neuroscience (shared by two selections); climate
    with session(engine) as db:
        skipped = db.exec(select(Delivery).where(Delivery.status == DeliveryStatus.SKIPPED)).one()
    assert skipped.last_error == "no items this issue for topics: Chemistry"
    bodies = {}
    for path in (config.base_dir / "outbox").glob("*.eml"):
        import email as email_lib
        message = email_lib.message_from_bytes(path.read_bytes(), policy=email_lib.policy.default)
        bodies[message["To"].addresses[0].addr_spec] = message.get_body(("plain",)).get_content()
    assert "Paper number 2" in bodies["all@example.org"] and "Paper number 0" in bodies["all@example.org"]
    assert "Paper number 2" not in bodies["neuro@example.org"] and "Paper number 0" in bodies["neuro@example.org"]
    assert "Paper number 2" in bodies["climate@example.org"] and "Paper number 0" not in bodies["climate@example.org"]


def test_a_hard_bounce_at_send_marks_the_subscriber_bounced_and_they_are_never_mailed_again(config, engine, smtp_server):
    smtp = smtp_config(config, smtp_server)
    smtp_server.handler.reject["bad@example.org"] = "550 5.1.1 No such user"
    prepared(smtp, engine, "ok@example.org", "bad@example.org")
    report = send_issue(engine, smtp, create_backend(smtp), 1, clock=lambda: NOW)
    assert (report.sent, report.failed, report.bounced) == (1, 1, 1)
    with session(engine) as db:
        bad = db.exec(select(Subscriber).where(Subscriber.email == "bad@example.org")).one()
        assert bad.status is SubscriberStatus.BOUNCED
    from newsletter.issues import retry_failed

    assert retry_failed(engine, 1)[1] == 1
    report = send_issue(engine, smtp, create_backend(smtp), 1, clock=lambda: NOW)
    assert (report.sent, report.skipped) == (0, 1)
    assert [m.recipients for m in smtp_server.messages] == [["ok@example.org"]]
    assert statuses(engine)["bad@example.org"] == "skipped"


def test_retries_follow_the_configured_schedule_and_give_up_at_its_end(config, engine, smtp_server):
    smtp = make_config(config.base_dir, backend={"name": "smtp", "options": {"host": smtp_server.host,
                       "port": smtp_server.port, "security": "none"}},
                       delivery={"retry_schedule": ["1m", "1h"]})
    smtp_server.handler.reject["busy@example.org"] = "451 4.3.0 Try again later"
    prepared(smtp, engine, "busy@example.org")
    send_issue(engine, smtp, create_backend(smtp), 1, clock=lambda: NOW)
    with session(engine) as db:
        assert db.exec(select(Delivery.next_attempt_at)).one() == NOW + timedelta(minutes=1)
    send_issue(engine, smtp, create_backend(smtp), 1, clock=lambda: NOW + timedelta(minutes=1))
    with session(engine) as db:
        assert db.exec(select(Delivery.next_attempt_at)).one() == NOW + timedelta(minutes=61)
    report = send_issue(engine, smtp, create_backend(smtp), 1, clock=lambda: NOW + timedelta(minutes=61))
    assert report.failed == 1 and report.issue.status is IssueStatus.SENT
    with session(engine) as db:
        assert db.exec(select(Delivery.last_error)).one().startswith("gave up after 3 attempts: 451")


def test_sending_pauses_itself_when_the_error_rate_passes_the_threshold(config, engine, smtp_server):
    smtp = make_config(config.base_dir, backend={"name": "smtp", "options": {"host": smtp_server.host,
                       "port": smtp_server.port, "security": "none", "connections": 1}},
                       # one message out at a time: the pause comes right after the fourth result (with more
                       # places, the messages already handed over would still go out first)
                       delivery={"pause_window": 4, "pause_error_rate": 0.5, "in_flight_factor": 1})
    people = [f"p{n}@example.org" for n in range(10)]
    for person in people[:3]:
        smtp_server.handler.reject[person] = "451 4.7.1 Rate limited"
    prepared(smtp, engine, *people)
    report = send_issue(engine, smtp, create_backend(smtp), 1, clock=lambda: NOW)
    assert report.issue.status is IssueStatus.PAUSED
    assert "75% of the last 4 messages failed (limit 50%)" in report.stopped
    assert report.sent == 1 and report.remaining == 9
    with pytest.raises(NewsletterError, match=r"^issue #1 is paused; it cannot be sent \(`newsletter digest resume 1` lets it go on\)"):
        send_issue(engine, smtp, create_backend(smtp), 1)
    from newsletter.issues import issue_status, resume_issue

    status = issue_status(engine, 1)
    assert status.errors == [("451 4.7.1 Rate limited", 3)]
    assert status.counts[DeliveryStatus.QUEUED] == 6
    smtp_server.handler.reject.clear()
    resume_issue(engine, 1)
    report = send_issue(engine, smtp, create_backend(smtp), 1, clock=lambda: NOW + timedelta(minutes=6))
    assert report.sent == 9 and report.issue.status is IssueStatus.SENT
    assert sorted(m.recipients[0] for m in smtp_server.messages) == sorted(people)


def test_cancel_skips_what_was_not_sent_and_pause_stops_a_running_sender(config, engine):
    from newsletter.issues import cancel_issue, pause_issue

    prepared(config, engine, *(f"p{n}@example.org" for n in range(6)))

    class PausedMidway(FileBackend):
        max_in_flight = 2

        def send(self, batch):
            pause_issue(engine, 1)  # another terminal runs `digest pause` while this window is in flight
            return super().send(batch)

    report = send_issue(engine, config, PausedMidway(FileOptions(), config=config), 1)
    assert report.sent == 2 and "paused by another command" in report.stopped
    assert sorted(statuses(engine).values()) == ["queued"] * 4 + ["sent"] * 2
    issue, skipped = cancel_issue(engine, 1)
    assert (issue.status, skipped) == (IssueStatus.CANCELLED, 4)
    with pytest.raises(NewsletterError, match="issue #1 is already cancelled and no newer issue is prepared"):
        send_unfinished(engine, config, create_backend(config))


def test_a_stop_request_drains_the_window_in_flight_and_releases_the_rest(config, engine):
    import threading

    prepared(config, engine, *(f"p{n}@example.org" for n in range(6)))
    stop = threading.Event()

    class StopAfterFirst(FileBackend):
        max_in_flight = 2

        def send(self, batch):
            stop.set()  # SIGTERM arrives while this window is in flight
            return super().send(batch)

    report = send_issue(engine, config, StopAfterFirst(FileOptions(), config=config), 1, stop=stop)
    assert report.sent == 2 and report.stopped.startswith("stopped on request")
    assert sorted(statuses(engine).values()) == ["queued"] * 4 + ["sent"] * 2  # nothing left "sending"


def _lease_all_to(engine, owner: str) -> None:
    with session(engine) as db:
        for row in db.exec(select(Delivery)).all():
            row.status, row.claimed_by, row.lease_expires_at = DeliveryStatus.SENDING, owner, NOW + LEASE
            db.add(row)
        db.commit()


@pytest.mark.parametrize("lost", ["before", "after"])
def test_storing_the_archive_copy_at_send_start_waits_out_a_dropped_connection(config, engine, monkeypatch, caplog,
                                                                               lost):
    """The connection drops as the archive copy is committed, ``before`` or ``after`` the server wrote it:
    the send waits, stores the copy once (or finds it stored) and sends everyone. (A lost answer cannot be
    produced at will with a real server, so the session's commit fakes it.)"""
    from newsletter.issues import archived
    from newsletter.models import IssueCopy

    faults = [lost]
    monkeypatch.setattr(archived, "session", losing_commit(faults, lambda db: any(
        isinstance(row, IssueCopy) for row in [*db.new, *db.identity_map.values()])))
    prepared(config, engine, "a@example.org", "b@example.org")
    report = send_issue(engine, config, create_backend(config), 1)
    assert faults == [] and "database unavailable: server closed the connection unexpectedly" in caplog.text
    assert report.sent == 2 and report.issue.status is IssueStatus.SENT
    with session(engine) as db:
        assert len(db.exec(select(IssueCopy)).all()) == 1


def test_rows_of_a_sender_that_died_on_this_machine_are_taken_over_at_once(config, engine):
    import subprocess
    import sys

    from newsletter.owners import runtime_folder

    prepared(config, engine, "a@example.org", "b@example.org")
    folder = runtime_folder(engine.url)
    crashed = subprocess.run(  # takes its lock, then dies without giving anything back
        [sys.executable, "-c", "import os, sys; from pathlib import Path; from newsletter.owners import Owner; "
         "print(Owner(Path(sys.argv[1])).__enter__().name, flush=True); os._exit(9)", str(folder)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    owner = crashed.stdout.strip()
    _lease_all_to(engine, owner)
    report = send_issue(engine, config, create_backend(config), 1, clock=lambda: NOW)
    assert report.sent == 2 and report.issue.status is IssueStatus.SENT
    assert not (folder / f"{owner.rpartition(':')[2]}.lock").exists()  # its lock file went with the take-over


def test_rows_of_an_owner_whose_pid_is_gone_but_not_proven_dead_wait_for_their_lease(config, engine):
    """A pid that does not exist here may live in another PID namespace (a container with this host
    name): without the owner's free lock file, its rows wait for the lease."""
    import subprocess
    import sys

    from newsletter.owners import HOST

    prepared(config, engine, "a@example.org", "b@example.org")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _lease_all_to(engine, f"{HOST}:{gone.stdout.strip()}:0123456789ab")
    assert send_issue(engine, config, create_backend(config), 1, clock=lambda: NOW).sent == 0
    later = NOW + LEASE + timedelta(seconds=1)
    assert send_issue(engine, config, create_backend(config), 1, clock=lambda: later).sent == 2


def test_a_cancel_during_a_send_leaves_nothing_queued_or_sending(config, engine):
    from newsletter.issues import cancel_issue

    prepared(config, engine, *(f"p{n}@example.org" for n in range(6)))

    class CancelledMidway(FileBackend):
        max_in_flight = 2

        def send(self, batch):
            cancel_issue(engine, 1)  # another terminal cancels while this window is in flight
            return super().send(batch)

    report = send_issue(engine, config, CancelledMidway(FileOptions(), config=config), 1, batch_size=6)
    assert report.sent == 2 and "cancelled by another command" in report.stopped
    assert sorted(statuses(engine).values()) == ["sent"] * 2 + ["skipped"] * 4


def test_in_flight_factor_hands_the_backend_bigger_windows_between_ledger_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "test-secret-key")
    config = make_config(tmp_path, delivery={"batch_size": 100, "in_flight_factor": 3})
    from newsletter.db import open_database

    engine = open_database(config)
    prepared(config, engine, *(f"w{n}@example.org" for n in range(14)))
    windows = []

    class Counting(FileBackend):
        max_in_flight = 2

        def send(self, batch):
            windows.append(len(batch))
            return super().send(batch)

    report = send_issue(engine, config, Counting(FileOptions(), config=config), 1)
    engine.dispose()
    assert report.sent == 14
    assert windows == [6, 6, 2]  # max_in_flight 2 x factor 3, recorded after each


def test_a_batch_that_outlasts_the_lease_keeps_it_so_no_other_sender_takes_its_rows(config, engine):
    """Each message takes 6 minutes (a rate limit, a slow server) against a 10-minute lease: the sender
    extends its lease as it goes, so a second sender meanwhile finds nothing to take over."""
    people = [f"p{n}@example.org" for n in range(4)]
    prepared(config, engine, *people)
    clock = [NOW]
    sent_to: list[str] = []
    others: list[int] = []

    class Slow(FileBackend):
        max_in_flight = 1

        def send(self, batch):
            clock[0] += timedelta(minutes=6)
            others.append(send_issue(engine, config, create_backend(config), 1, clock=lambda: clock[0]).sent)
            sent_to.extend(m.recipient for m in batch)
            return super().send(batch)

    report = send_issue(engine, config, Slow(FileOptions(), config=config), 1, batch_size=4, clock=lambda: clock[0])
    assert report.sent == 4 and sorted(sent_to) == people
    assert others == [0, 0, 0, 0]  # 24 minutes of sending, and the other sender never got a row


def test_windows_shorter_than_the_lease_keep_it_wherever_they_start(config, engine):
    """Two windows of 4 min 54 s and 5 min 12 s against a 10-minute lease: the first ends just before
    half the lease, so a sender that renewed only from half way on let the lease run out in the second."""
    config = config.model_copy(update={"delivery": config.delivery.model_copy(update={"in_flight_factor": 1})})
    prepared(config, engine, "p0@example.org", "p1@example.org", "p2@example.org")
    clock = [NOW]
    steps = iter([timedelta(minutes=4, seconds=54), timedelta(minutes=5, seconds=12), timedelta(seconds=1)])
    taken: list[int] = []

    class Slow(FileBackend):
        max_in_flight = 1

        def send(self, batch):
            clock[0] += next(steps)
            if clock[0] > NOW + LEASE and not taken:
                taken.extend(r.delivery_id for r in _claim(engine, 1, "other-host:1:x", 3, clock[0], LEASE))
            return super().send(batch)

    report = send_issue(engine, config, Slow(FileOptions(), config=config), 1, batch_size=3, clock=lambda: clock[0])
    assert report.sent == 3
    assert taken == []  # another sender found nothing to take over


def test_a_message_the_backend_returned_no_result_for_is_retried_later_not_resent_at_once(config, engine):
    prepared(config, engine, "a@example.org", "b@example.org")
    calls = []

    class Forgetful(FileBackend):
        max_in_flight = None

        def send(self, batch):
            calls.append(len(batch))
            return super().send(batch)[:1]

    report = send_issue(engine, config, Forgetful(FileOptions(), config=config), 1)
    assert calls == [2]  # one call: the forgotten message is not sent again in the same run
    assert (report.sent, report.retry) == (1, 1)
    with session(engine) as db:
        row = db.exec(select(Delivery).where(Delivery.status == DeliveryStatus.RETRY)).one()
    assert (row.attempts, row.last_error) == (1, "the backend returned no result")


def test_a_backend_reply_with_control_characters_is_recorded_without_them(config, engine):
    """A plugin's or a server's reply is outside text: a NUL in it (which PostgreSQL cannot store) must
    not stop the ledger from recording the result."""
    prepared(config, engine, "a@example.org", "b@example.org")

    class Garbled(FileBackend):
        def send(self, batch):
            first, second = batch
            return [SendResult(first.delivery_id, SendStatus.RETRY, "451 busy\x00\r\nnow"),
                    SendResult(second.delivery_id, SendStatus.FAILED, "550 no\x00 such user", bounce=False)]

    report = send_issue(engine, config, Garbled(FileOptions(), config=config), 1)
    assert (report.retry, report.failed) == (1, 1)
    with session(engine) as db:
        errors = sorted(db.exec(select(Delivery.last_error)).all())
    assert errors == ["451 busy now", "550 no such user"]


def test_a_sender_whose_window_outlasted_the_lease_leaves_rows_taken_over_meanwhile_alone(config, engine):
    """One message takes 11 minutes against a 10-minute lease; meanwhile another sender takes over the rest
    of the batch. The slow sender must not send those rows too."""
    people = [f"p{n}@example.org" for n in range(4)]
    prepared(config, engine, *people)
    clock = [NOW]
    handed_over: list[str] = []
    taken: list[int] = []

    class Stalled(FileBackend):
        max_in_flight = 1

        def send(self, batch):
            clock[0] += timedelta(minutes=11)
            if not taken:  # another host's claim, while this window is still on the wire
                taken.extend(r.delivery_id for r in _claim(engine, 1, "other-host:1:x", 4, clock[0], LEASE))
            handed_over.extend(m.recipient for m in batch)
            return super().send(batch)

    report = send_issue(engine, config, Stalled(FileOptions(), config=config), 1, batch_size=4, clock=lambda: clock[0])
    assert len(taken) == 4  # every lease had run out, the window on the wire's too (the in-flight bound)
    assert handed_over == ["p0@example.org"] and report.sent == 0  # none of the rest is sent twice


class _Outage(FileBackend):
    """A backend whose server is down for the first ``outages`` opens."""

    outages = 1
    opened = 0

    def open(self):
        type(self).opened += 1
        if type(self).opened <= self.outages:
            raise DeliveryError("cannot connect to mail.example.org:587 (Connection refused)")
        super().open()


def test_the_worker_tries_again_after_an_outage_and_stops_with_it_when_until_done(config, engine, caplog):
    prepared(config, engine, "a@example.org")
    with pytest.raises(DeliveryError, match="Connection refused"):
        work(engine, config, type("Down", (_Outage,), {"outages": 99})(FileOptions(), config=config),
             until_done=True, poll=0)

    stop = threading.Event()
    backend = type("Flaky", (_Outage,), {})(FileOptions(), config=config)
    finished = threading.Thread(target=lambda: [stop.wait(30), stop.set()])
    original = backend.send
    backend.send = lambda batch: [stop.set(), original(batch)][1]  # stop once the message is out
    finished.start()
    reports = work(engine, config, backend, poll=0, stop=stop)
    assert [r.sent for r in reports] == [1]
    assert "trying again in 0 s" in caplog.text


def test_the_worker_asks_again_about_an_issue_its_checks_refused(config, engine):
    prepared(config, engine, "a@example.org")
    answers = iter([False, True])
    asked = []

    def ready(number: int) -> bool:
        asked.append(number)
        return next(answers)

    stop = threading.Event()
    backend = FileBackend(FileOptions(), config=config)
    original = backend.send
    backend.send = lambda batch: [stop.set(), original(batch)][1]
    reports = work(engine, config, backend, ready=ready, poll=0, recheck=0, stop=stop)
    assert asked == [1, 1] and [r.sent for r in reports] == [1]
    refused = work(engine, config, backend, ready=lambda number: False, until_done=True, poll=0)
    assert refused == []  # until_done: a refused issue does not keep the worker waiting


def test_sending_pauses_itself_even_when_another_sender_paused_the_issue_first(config, engine):
    prepared(config, engine, *(f"p{n}@example.org" for n in range(4)))

    class Failing(FileBackend):
        max_in_flight = None

        def send(self, batch):
            pause_issue(engine, 1)  # a second worker crossed the error limit first
            return [SendResult(m.delivery_id, SendStatus.FAILED, "550 5.7.1 Content refused") for m in batch]

    config = config.model_copy(update={"delivery": config.delivery.model_copy(update={"pause_window": 4})})
    report = send_issue(engine, config, Failing(FileOptions(), config=config), 1)
    assert report.stopped.startswith("paused: 100% of the last 4 messages failed")


def test_a_poisoned_subscriber_in_the_middle_of_a_window_fails_alone_and_everyone_else_is_sent_once(
    config, engine, smtp_server, tmp_path, monkeypatch
):
    """Windows of four over a real SMTP server with real DKIM signatures. One subscriber's message cannot be
    signed (dkimpy refuses it: the one thing here that is made to fail) and one's cannot be built at all;
    each fails alone with its reason, is not taken for a bounce, and every other subscriber is sent exactly
    once, this run and the next."""
    import base64

    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "dkim.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    smtp = make_config(config.base_dir, backend={"name": "smtp", "options": {
        "host": smtp_server.host, "port": smtp_server.port, "security": "none", "connections": 4,
        "dkim_selector": "s1", "dkim_private_key": str(tmp_path / "dkim.pem")}},
        delivery={"in_flight_factor": 1})
    real_sign = dkim.sign

    def sign(message: bytes, *args, **kwargs):  # type: ignore[no-untyped-def]
        if b"poison@example.org" in message:
            raise dkim.DKIMException("this message cannot be signed")
        return real_sign(message, *args, **kwargs)

    monkeypatch.setattr(dkim, "sign", sign)
    people = ["p0@example.org", "p1@example.org", "poison@example.org", "p3@example.org",
              "p4@example.org", "jörg@example.org", "p6@example.org", "p7@example.org"]
    prepared(smtp, engine, *people)

    report = send_issue(engine, smtp, create_backend(smtp), 1, clock=lambda: NOW)

    good = [p for p in people if p not in ("poison@example.org", "jörg@example.org")]
    assert (report.sent, report.failed, report.bounced) == (6, 2, 0)
    assert report.issue.status is IssueStatus.SENT
    assert sorted(m.recipients[0] for m in smtp_server.messages) == sorted(good)  # each exactly once
    assert statuses(engine) == {p: "failed" if p not in good else "sent" for p in people}
    with session(engine) as db:
        errors = {s.email: d.last_error for d, s in db.exec(select(Delivery, Subscriber).join(Subscriber)).all()}
        assert {s.email: s.status for s in db.exec(select(Subscriber))} == dict.fromkeys(people, SubscriberStatus.ACTIVE)
    assert "could not be DKIM-signed" in errors["poison@example.org"]
    assert "this message cannot be signed" in errors["poison@example.org"]
    assert "cannot send to 'jörg@example.org'" in errors["jörg@example.org"]
    dns = {b"s1._domainkey.example.org.": f"v=DKIM1; k=rsa; p={public}".encode()}
    assert all(dkim.verify(m.data, dnsfunc=lambda name, timeout=5: dns.get(name)) for m in smtp_server.messages)

    with pytest.raises(NewsletterError, match="it cannot be sent again"):
        send_issue(engine, smtp, create_backend(smtp), 1, clock=lambda: NOW + timedelta(days=3))
    assert len(smtp_server.messages) == 6


def test_the_connections_go_on_sending_while_results_are_written(config, engine, monkeypatch):
    """The SMTP connection does not wait for the ledger: while the first results are being written (held
    here until the server has received a message they do not include), it sends the messages already
    handed over. The bound on messages in flight still holds: the server never has more than one window
    (connections x in_flight_factor) of messages whose results are not written.

    The order is forced, not hoped for: the server accepts the first two messages at once (half the places:
    what starts a write) and the others only once the first write has begun, so that write holds two
    results and two messages are still out."""
    import asyncio
    import time

    from aiosmtpd.controller import Controller

    from newsletter import delivery
    from tests.conftest import RecordingHandler, _free_port

    writing = threading.Event()

    class AfterTheFirstWrite(RecordingHandler):
        async def handle_DATA(self, server, session_, envelope):  # noqa: ANN001, ANN201
            deadline = time.monotonic() + 60  # generous: the event, not the time, ends the wait
            while len(self.messages) >= 2 and not writing.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return await super().handle_DATA(server, session_, envelope)

    handler = AfterTheFirstWrite()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    smtp = make_config(config.base_dir, backend={"name": "smtp", "options": {
        "host": "127.0.0.1", "port": controller.port, "security": "none", "connections": 1}},
        delivery={"in_flight_factor": 4})
    people = [f"p{n:02d}@example.org" for n in range(12)]
    prepared(smtp, engine, *people)
    record = delivery._record
    ahead: list[int] = []  # per write: messages the server had beyond those written, this write's included

    def held_record(engine, config, owner, window, report, now):  # type: ignore[no-untyped-def]
        written = report.sent + len(window.results)
        if not writing.is_set():
            writing.set()  # the server takes the other messages now
            deadline = time.monotonic() + 60
            while len(handler.messages) <= written and time.monotonic() < deadline:
                time.sleep(0.01)
        ahead.append(len(handler.messages) - written)
        return record(engine, config, owner, window, report, now)

    monkeypatch.setattr(delivery, "_record", held_record)
    try:
        report = send_issue(engine, smtp, create_backend(smtp), 1, clock=lambda: NOW)
    finally:
        controller.stop()
    assert report.sent == len(people)
    assert ahead[0] > 0  # sent while the first write was held
    assert all(0 <= n <= 4 for n in ahead)  # never more than a window ahead of the ledger
    assert sorted(m.recipients[0] for m in handler.messages) == people
