"""The editor's choices for the next issue (order, lead item, items left out, a note, a subject) and the real
send that carries them: kept on the next issue's draft row, promoted by whoever prepares it (an editor or a
firing), and read back from the messages the file backend wrote, through the standard library's strict
parser, not from our own render."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import timedelta
from email.message import EmailMessage
from itertools import permutations

import pytest
from alembic import command
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, text
from sqlmodel import select

from newsletter.backends import create_backend
from newsletter.checks import check_issue
from newsletter.db import alembic_config, make_engine, open_database, session
from newsletter.delivery import send_unfinished
from newsletter.errors import Conflict, NewsletterError, TransitionRefused
from newsletter.firings import fire_if_due, next_run_time
from newsletter.issues import editorial, issue_status, newest_issue, pause_issue, prepare_issue, write_preview
from newsletter.issues.editorial import UNDO_DEPTH, Seen
from newsletter.models import Issue, IssueStatus, Summary
from newsletter.web.app import create_app
from tests.helpers import add_people, add_summaries
from tests.outbox import html_part, messages, text_part

PAPER = re.compile(r"https://example\.org/papers/(\d+)")


def papers(part: str) -> list[int]:
    """The papers a message part links to, in the order it first links to each."""
    return list(dict.fromkeys(int(n) for n in PAPER.findall(part)))


def sent(engine, config) -> list[EmailMessage]:
    """Prepare the next issue and send it through the file backend; the messages it wrote, strictly parsed."""
    assert prepare_issue(engine, config).issue is not None
    send_unfinished(engine, config, create_backend(config))
    found = messages(config.base_dir / "outbox")
    for message in found:  # the judge of the headers: email.policy.strict reads every message
        email.message_from_bytes(message.as_bytes(policy=email.policy.SMTP), policy=email.policy.strict)
    return found


@pytest.fixture
def project(config, engine):
    add_people(engine, "ada@example.org", "bob@example.org")
    add_summaries(engine, 4)  # papers 0-3, summary ids 1-4
    return config, engine


def test_the_first_choice_saves_the_draft_and_preparing_it_keeps_its_number_and_choices(project) -> None:
    config, engine = project
    with session(engine) as db:
        assert db.exec(select(Issue)).all() == []  # nothing chosen: nothing saved
    state = editorial.move(engine, 4, 0)
    assert (state.number, state.version) == (1, 1)
    with session(engine) as db:
        [draft] = db.exec(select(Issue)).all()
    assert (draft.number, draft.status) == (1, IssueStatus.DRAFT)
    prepared = prepare_issue(engine, config)
    assert prepared.issue is not None and prepared.issue.number == 1
    with session(engine) as db:
        [issue] = db.exec(select(Issue)).all()
    assert (issue.id, issue.status, issue.item_order[0]) == (draft.id, IssueStatus.PREPARED, 4)
    assert editorial.next_issue_state(engine).number == 2


def test_reordering_changes_the_order_of_the_items_in_every_message_the_send_writes(project) -> None:
    config, engine = project
    editorial.reorder(engine, [3, 1])
    state = editorial.move(engine, 2, 1)
    assert [item.id for item in state.items] == [3, 2, 1, 4]
    for message in sent(engine, config):
        assert papers(text_part(message)) == [2, 1, 0, 3]
        assert papers(html_part(message)) == [2, 1, 0, 3]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations([1, 2, 3, 4]))
def test_any_order_chosen_is_the_order_of_both_parts(project, tmp_path_factory, order) -> None:
    config, engine = project
    editorial.reorder(engine, order)
    files = write_preview(engine, config, tmp_path_factory.mktemp("render"))  # the send loop's own builder
    shown = [summary_id - 1 for summary_id in order]
    assert papers(files.text.read_text()) == shown and papers(files.html.read_text()) == shown


def test_leaving_an_item_out_removes_it_from_both_parts_and_bringing_it_back_restores_its_place(project) -> None:
    config, engine = project
    editorial.reorder(engine, [4, 3, 2, 1])
    state = editorial.leave_out(engine, 3)
    assert [item.id for item in state.items] == [4, 2, 1] and [item.id for item in state.left_out] == [3]
    assert [item.id for item in editorial.leave_out(engine, 3, out=False).items] == [4, 3, 2, 1]
    editorial.leave_out(engine, 2)
    for message in sent(engine, config):
        assert papers(text_part(message)) == [3, 2, 0] and papers(html_part(message)) == [3, 2, 0]
        assert "Paper number 1" not in text_part(message) and "Paper number 1" not in html_part(message)
    with session(engine) as db:  # left out is `summaries exclude`: it waits, excluded, for a later issue
        left = db.get(Summary, 2)
    assert left.issue_id is None and left.excluded
    assert [item.id for item in editorial.next_issue_state(engine).left_out] == [2]


def test_the_lead_item_comes_first_and_the_default_subject_names_it(project) -> None:
    config, engine = project
    state = editorial.set_lead(engine, 3)
    assert state.items[0].id == 3 and state.lead is not None
    with pytest.raises(NewsletterError, match="is the lead item, always first"):
        editorial.move(engine, 3, 2)
    assert [item.id for item in editorial.move(engine, 4, 0).items] == [3, 4, 1, 2]  # below the lead
    [message, *_] = sent(engine, config)
    assert message["Subject"] == "Research Weekly #1: Paper number 2 and 3 more"
    assert papers(text_part(message)) == [2, 3, 0, 1]


def test_the_note_is_shown_above_the_items_in_both_parts_and_cleaned_like_summaries(project) -> None:
    config, engine = project
    note = ("A short week: **three** papers, and [our call for reviewers](https://example.org/call).\n\n"
            "<script>alert('x')</script> [bad](javascript:alert(1)) <a href=\"javascript:alert(2)\">bad too</a>\n\n"
            "- first point\n- second point, long enough to need wrapping in the plain-text part of the email")
    editorial.set_note(engine, note)
    for message in sent(engine, config):
        html, text_ = html_part(message), text_part(message).replace("\r\n", "\n")
        flat = " ".join(text_.split())
        assert html.index("our call for reviewers") < html.index(">Paper number 0</a>")
        assert text_.index("our call for reviewers") < text_.index("Paper number 0")
        assert re.search(r'<a href="https://example.org/call"[^>]*>our call for reviewers</a>', html)
        assert "<strong>three</strong>" in html and "**three**" not in text_ and "three papers" in flat
        assert "our call for reviewers (https://example.org/call)" in flat
        assert "<script" not in html and "alert('x')" not in html + text_  # dropped with its content
        assert "javascript:" not in re.sub(r"\[bad\]\(javascript:alert\(1\)\)", "", html)  # no link, only text
        bullet = text_[text_.index("• second point"):].split("\n\n")[0].split("\n")
        assert len(bullet) == 2 and all(len(line) <= 72 for line in bullet) and bullet[1].startswith("  the")
    assert check_issue(engine, config, 1).ok


def test_a_subject_of_the_editors_own_is_the_subject_sent_and_cannot_add_a_header(project) -> None:
    config, engine = project
    editorial.set_subject(engine, "The sleep issue\r\nBcc: everyone@example.org")
    for message in sent(engine, config):
        assert message["Subject"] == "The sleep issue Bcc: everyone@example.org"
        assert message["Bcc"] is None and len(message.get_all("To")) == 1


def test_a_subject_over_the_limit_or_a_note_too_long_is_refused_and_changes_nothing(project) -> None:
    _config, engine = project
    editorial.set_subject(engine, "Fine")
    with pytest.raises(NewsletterError, match=r"^the subject is 100 characters; keep it to 99 "):
        editorial.set_subject(engine, "x" * 100)
    with pytest.raises(NewsletterError, match=r"^the note is 5,001 characters; keep it under 5,000 "):
        editorial.set_note(engine, "y" * 5001)
    state = editorial.next_issue_state(engine)
    assert (state.version, state.choices.subject, state.choices.note) == (1, "Fine", None)


def test_a_change_made_on_what_another_change_replaced_is_refused_and_changes_nothing(project) -> None:
    _config, engine = project
    seen = editorial.next_issue_state(engine).seen  # two tabs open on the same next issue
    assert seen == Seen(1, 0)
    editorial.set_note(engine, "from the first tab", seen=seen)
    with pytest.raises(Conflict, match="changed elsewhere"):
        editorial.set_note(engine, "from the second tab", seen=seen)
    with pytest.raises(Conflict):  # its first change too: the draft it saw no longer exists as it was
        editorial.move(engine, 2, 0, seen=seen)
    state = editorial.next_issue_state(engine)
    assert (state.version, state.choices.note, [i.id for i in state.items]) == (1, "from the first tab", [1, 2, 3, 4])
    assert editorial.set_note(engine, "second, seen", seen=state.seen).version == 2


def test_a_page_showing_an_issue_prepared_meanwhile_cannot_change_the_next_one(project) -> None:
    config, engine = project
    editorial.set_note(engine, "for issue 1")
    seen = editorial.next_issue_state(engine).seen
    prepare_issue(engine, config)  # a firing, or a command in another terminal
    add_summaries(engine, 1)
    with pytest.raises(Conflict):
        editorial.set_note(engine, "meant for issue 1", seen=seen)
    with session(engine) as db:
        assert db.get(Issue, 1).note == "for issue 1"


def test_undo_takes_back_the_last_change_first_left_out_items_too(project) -> None:
    _config, engine = project
    editorial.move(engine, 4, 0)
    editorial.leave_out(engine, 1)
    editorial.set_note(engine, "note")
    state = editorial.undo(engine)
    assert state.done == "undid: wrote a note" and state.choices.note is None
    assert state.undo_label == "left out “Paper number 0”"
    state = editorial.undo(engine)
    assert [item.id for item in state.items] == [4, 1, 2, 3] and state.left_out == []
    assert [item.id for item in editorial.undo(engine).items] == [1, 2, 3, 4]
    with pytest.raises(NewsletterError, match="^there is nothing to undo$"):
        editorial.undo(engine)


def test_only_the_last_changes_can_be_undone(project) -> None:
    _config, engine = project
    for n in range(UNDO_DEPTH + 5):
        editorial.set_note(engine, f"note {n}")
    for _ in range(UNDO_DEPTH):
        editorial.undo(engine)
    assert editorial.next_issue_state(engine).choices.note == "note 4"
    with pytest.raises(NewsletterError, match="nothing to undo"):
        editorial.undo(engine)


def test_several_changes_from_the_command_line_are_made_all_or_none(project) -> None:
    _config, engine = project
    steps = [editorial.leaving_out(2), editorial.leading(3), editorial.reordering([4])]
    state = editorial.arrange(engine, steps)
    assert [item.id for item in state.items] == [3, 4, 1] and state.version == 1
    with pytest.raises(NewsletterError, match="is left out; bring it back"):
        editorial.arrange(engine, [editorial.leaving_out(1), editorial.reordering([2])])
    after = editorial.next_issue_state(engine)
    assert after.version == 1 and [item.id for item in after.left_out] == [2]
    assert [item.id for item in editorial.undo(engine).items] == [1, 2, 3, 4]  # one undo takes it all back


def test_a_scheduled_firing_sends_the_issue_as_the_editor_shaped_it(config, engine) -> None:
    add_people(engine, "ada@example.org")
    add_summaries(engine, 3)
    editorial.reorder(engine, [3, 2, 1])
    editorial.set_subject(engine, "Shaped by hand")
    fired = fire_if_due(engine, config, now=next_run_time(config) + timedelta(minutes=1))
    assert fired.issue is not None and fired.issue.number == 1, fired.lines
    send_unfinished(engine, config, create_backend(config))
    [message] = messages(config.base_dir / "outbox")
    assert message["Subject"] == "Shaped by hand" and papers(text_part(message)) == [2, 1, 0]


def test_the_draft_is_no_issue_to_status_the_send_loop_or_the_archive(project) -> None:
    config, engine = project
    editorial.set_note(engine, "only a draft")
    with session(engine) as db:
        assert newest_issue(db) is None
    with pytest.raises(NewsletterError, match="no issue has been prepared yet"):
        issue_status(engine)
    with pytest.raises(NewsletterError, match="no issue has been prepared yet"):
        send_unfinished(engine, config, create_backend(config))
    with pytest.raises(TransitionRefused, match=r"^issue #1 is draft; it cannot be paused \(it is the next issue"):
        pause_issue(engine, 1)
    archive = TestClient(create_app(config, engine)).get("/archive")
    assert "only a draft" not in archive.text and "#1" not in archive.text


@pytest.mark.parametrize("order", list(permutations([1, 2, 3]))[:3])
def test_an_item_sent_meanwhile_loses_its_place_and_one_arriving_later_goes_last(config, engine, order) -> None:
    add_people(engine, "ada@example.org")
    add_summaries(engine, 3)
    editorial.reorder(engine, list(order))
    add_summaries(engine, 1)  # paper 3 arrives after the order was chosen
    assert [item.id for item in editorial.next_issue_state(engine).items] == [*order, 4]


def test_the_editorial_migration_keeps_every_issue_and_gives_it_no_choices(config) -> None:
    engine = make_engine(config.database_url)
    with engine.begin() as connection:  # a database as the previous release left it
        settings_ = alembic_config()
        settings_.attributes["connection"] = connection
        command.upgrade(settings_, "0006_firings")
        connection.execute(text(
            "insert into issue (id, number, period_start, period_end, subject, status, created_at) values "
            "(1, 1, '2026-11-15 23:00:00', '2026-11-22 23:00:00', 'Research Weekly #1: Old paper', 'sent', "
            "'2026-11-23 07:00:00')"))
    engine.dispose()
    upgraded = open_database(config)
    columns = {column["name"] for column in inspect(upgraded).get_columns("issue")}
    assert {"note", "subject_override", "item_order", "lead_id", "version", "undo"} <= columns
    with session(upgraded) as db:
        [old] = db.exec(select(Issue)).all()
    assert (old.subject, old.status, old.item_order, old.lead_id, old.note, old.version, old.undo) == (
        "Research Weekly #1: Old paper", IssueStatus.SENT, [], None, None, 0, [])
    upgraded.dispose()
