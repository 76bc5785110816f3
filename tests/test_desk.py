"""The editor's desk over HTTP: the next issue shaped from the page and stored, a page that missed a change
refused with 409, every state-changing route closed to other sites, checks that link to what they are
about, errors shown where they are, and a real send from the page with its progress, pause and resume."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient
from sqlmodel import select

from newsletter.db import session
from newsletter.issues import editorial, prepare_issue
from newsletter.models import Delivery, DeliveryStatus, Issue, IssueStatus, Subscriber, Summary
from newsletter.web.preview import DESK_COOKIE, create_preview_app
from tests.conftest import RecordingHandler, _free_port
from tests.helpers import add_people, add_summaries
from tests.outbox import text_part, wait_for_messages
from tests.preview_support import Project, form_token, make_project, wait_for

PAPER = re.compile(r"https://example\.org/papers/(\d+)")


def papers(part: str) -> list[int]:
    return list(dict.fromkeys(int(n) for n in PAPER.findall(part)))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "test-secret-key")
    monkeypatch.delenv("NEWSLETTER_PREVIEW_TOKEN", raising=False)
    project = make_project(tmp_path, summaries=3)  # papers 0-2, ids 1-3
    add_people(project.engine, "ada@example.org", "bob@example.org")
    yield project
    project.engine.dispose()


@pytest.fixture
def client(project: Project) -> Iterator[TestClient]:
    app = create_preview_app(project.config_file, project.engine)
    with TestClient(app, base_url="http://127.0.0.1:8025") as client:
        yield client


def change(client: TestClient, route: str, **fields: object) -> object:
    """A change as the page's script sends it: the form token, the version the page shows, X-Desk."""
    page = client.get("/").text
    number, version = re.search(r'data-number="(\d+)" data-version="(\d+)"', page).groups()
    data = {"csrf": form_token(client), "number": number, "version": version, **fields}
    return client.post(route, data={k: str(v) for k, v in data.items()}, headers={"X-Desk": "1"})


def order_in_page(page: str) -> list[int]:
    return [int(n) for n in re.findall(r'<li id="item-(\d+)" class="item[^"]*" data-id', page)]


def test_the_page_lists_the_next_issues_items_with_their_controls_and_the_send(client: TestClient) -> None:
    page = client.get("/").text
    assert order_in_page(page) == [1, 2, 3]
    assert re.search(r'id="up-1" class="icon" disabled', page) and re.search(r'id="down-3" class="icon" disabled', page)
    assert 'aria-label="Move “Paper number 1” down"' in page and 'aria-label="Leave “Paper number 2” out"' in page
    assert 'class="checks clean"' in page and "All checks pass." in page
    assert "Issue #1 goes to 2 subscribers." in page and 'data-figures="2"' in page  # a slot for per-item figures
    confirm = client.get("/?confirm=send").text
    assert "Send issue #1, “Research Weekly #1: Paper number 0 and 2 more”, to 2 subscribers now?" in confirm


def test_a_change_from_the_page_is_stored_and_the_email_shows_it_at_once(client: TestClient, project: Project) -> None:
    moved = change(client, "/desk/move", id=3, position=0)
    assert moved.status_code == 200
    assert moved.json() == {"message": "moved “Paper number 2” up", "number": 1, "version": 1}
    assert order_in_page(client.get("/").text) == [3, 1, 2]
    assert papers(client.get("/email").text) == [2, 0, 1]
    assert change(client, "/desk/leave-out", id=1).json()["message"] == "left out “Paper number 0”"
    assert change(client, "/desk/note", text="A *short* week.").status_code == 200
    assert change(client, "/desk/subject", text="By hand").status_code == 200
    email_html, text_view = client.get("/email").text, client.get("/?view=text").text
    assert papers(email_html) == [2, 1] and "<em>short</em>" in email_html and "A short week." in text_view
    assert "Paper number 0" not in text_view.split("</pre>")[0].split('<pre id="text"')[1]
    assert '<strong id="shown-subject">By hand</strong>' in client.get("/").text
    with session(project.engine) as db:
        draft = db.exec(select(Issue)).one()
    assert (draft.status, draft.item_order, draft.note, draft.subject_override, draft.version) == (
        IssueStatus.DRAFT, [3, 1, 2], "A *short* week.", "By hand", 4)  # the item left out keeps its place
    undone = change(client, "/desk/undo")
    assert undone.json()["message"] == "undid: set the subject to “By hand”"


def test_a_page_that_missed_a_change_gets_409_and_changes_nothing(client: TestClient) -> None:
    token = form_token(client)
    stale = {"csrf": token, "number": "1", "version": "0"}  # what a second tab opened earlier shows
    assert change(client, "/desk/note", text="from the first tab").status_code == 200
    refused = client.post("/desk/note", data={**stale, "text": "from the second tab"}, headers={"X-Desk": "1"})
    assert refused.status_code == 409
    assert refused.json() == {"error": "the next issue was changed elsewhere since this page showed it; reload to "
                                       "see the change"}
    assert "from the first tab" in client.get("/email").text


def test_without_the_script_each_form_posts_and_comes_back_to_the_page(client: TestClient) -> None:
    token = form_token(client)
    done = client.post("/desk/lead", data={"csrf": token, "number": "1", "version": "0", "id": "2"},
                       follow_redirects=False)
    assert done.status_code == 303
    assert unquote(done.headers["location"]) == "/?issue=next&notice=made “Paper number 1” the lead"
    page = client.get(done.headers["location"]).text
    assert "made “Paper number 1” the lead" in page and order_in_page(page) == [2, 1, 3]
    again = client.post("/desk/lead", data={"csrf": token, "number": "1", "version": "0", "id": "3"})
    assert "changed elsewhere" in again.text and 'role="alert"' in again.text  # followed back to the page


def test_every_state_changing_route_is_closed_to_other_sites(client: TestClient, project: Project) -> None:
    posts = sorted(path for path, methods in client.app.openapi()["paths"].items() if set(methods) - {"get", "head"})
    assert posts == ["/desk/bring-back", "/desk/lead", "/desk/leave-out", "/desk/move", "/desk/note", "/desk/subject",
                     "/desk/undo", "/desk/unpin", "/pause", "/resume", "/send", "/send-test"]
    token = form_token(client)
    fields = {"number": "1", "version": "0", "id": "1", "position": "1", "text": "x", "to": "a@example.org"}
    other_browser = TestClient(client.app, base_url="http://127.0.0.1:8025")
    other_browser.get("/")  # a desk session of its own, so the first browser's token is not its token
    for path in posts:
        for refused in (
            client.post(path, data=fields),  # no form token (a form on another site cannot know it)
            client.post(path, data={**fields, "csrf": "0" * 64}),
            other_browser.post(path, data={**fields, "csrf": token}),  # a token without its session cookie
            client.post(path, data={**fields, "csrf": token}, headers={"Origin": "https://evil.example"}),
            client.post(path, data={**fields, "csrf": token}, headers={"Origin": "null"}),
            client.post(path, data={**fields, "csrf": token}, headers={"Sec-Fetch-Site": "same-site"}),
        ):
            assert refused.status_code == 403, (path, refused.status_code, refused.text)
    with session(project.engine) as db:
        assert db.exec(select(Issue)).all() == []  # nothing was changed, prepared or sent
    assert not (project.root / "outbox").exists()
    cookie = [c for c in client.cookies.jar if c.name == DESK_COOKIE][0]
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.get_nonstandard_attr("SameSite") == "strict"


def test_a_template_error_in_a_partial_shows_its_file_line_and_the_lines_around(client: TestClient,
                                                                               project: Project) -> None:
    state = client.app.state.preview
    version = state.version
    project.edit("partials/header.mjml.j2", "{{ issue.date_range }}</mj-text>", "{{ issue.date_range }}")
    wait_for(lambda: state.version > version)
    page = client.get("/")
    assert page.status_code == 200
    header = project.templates / "partials" / "header.mjml.j2"
    assert f"{header}:5: the rendered MJML does not compile" in page.text
    assert f"{header}, line 5:" in page.text
    assert re.search(r"<span class=\"fault\">   5  +&lt;mj-text mj-class=&#34;meta&#34;", page.text), page.text
    version = state.version
    project.edit("partials/header.mjml.j2", "{{ issue.date_range }}\n", "{{ issue.date_range }}</mj-text>\n")
    wait_for(lambda: state.version > version)
    assert "All checks pass." in client.get("/").text  # the server kept running; the page is back


def test_each_finding_links_to_the_item_or_the_view_it_is_about_errors_first(client: TestClient,
                                                                            project: Project) -> None:
    with session(project.engine) as db:
        bad = db.get(Summary, 2)
        bad.url = "https://user@evil.example/paper"  # the links check's error, about paper 1
        db.add(bad)
        db.add(Subscriber(email="two@@example.org", name="Broken", status="active"))  # a warning: no message for it
        db.commit()
    client.app.state.preview.changed("the test")
    page = client.get("/").text
    checks = page[page.index('<section id="checks"'):page.index('<section id="send-test"')]
    assert 'class="checks has-errors"' in checks and "the send waits until the errors are fixed" in checks
    assert '<a href="#item-2">[links] HTML line' in checks
    assert checks.index('class="error"') < checks.index('class="warning"')
    assert change(client, "/desk/subject", text="S" * 99).status_code == 200
    sent = client.post("/send", data={"csrf": form_token(client), "number": "1", "version": "1"},
                       headers={"X-Desk": "1"})
    assert sent.status_code == 400 and "fails the pre-send checks" in sent.json()["error"]
    with session(project.engine) as db:
        assert db.exec(select(Delivery)).all() == []


def test_send_now_prepares_the_issue_as_shaped_and_sends_it_with_progress(client: TestClient, project: Project) -> None:
    change(client, "/desk/move", id=3, position=0)
    token = form_token(client)
    stale = client.post("/send", data={"csrf": token, "number": "1", "version": "0"}, headers={"X-Desk": "1"})
    assert stale.status_code == 409  # the confirmation was for what the page showed before the change
    sent = client.post("/send", data={"csrf": token, "number": "1", "version": "1"}, follow_redirects=False)
    assert sent.status_code == 303 and sent.headers["location"].startswith("/?issue=1&notice=sending%20issue%20%231")
    found = wait_for_messages(project.root / "outbox", 2)
    assert all(papers(text_part(message)) == [2, 0, 1] for message in found)
    wait_for(lambda: client.get("/progress?issue=1").json()["status"] == "sent")
    progress = client.get("/progress?issue=1").json()
    assert progress["counts"]["sent"] == 2 and progress["total"] == 2 and not progress["running"]
    page = client.get("/?issue=1").text
    assert "Sending · issue #1" in page and '<dd id="count-sent">2</dd>' in page
    assert client.get("/progress?issue=9").status_code == 404 and client.get("/progress?issue=x").status_code == 422


class HeldHandler(RecordingHandler):
    """Holds every message until ``release`` is set: a send that is still going when the page pauses it."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.arrived = threading.Event()

    async def handle_DATA(self, server, session_, envelope):  # noqa: ANN001, ANN201
        self.arrived.set()
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        return await super().handle_DATA(server, session_, envelope)


def test_pause_stops_a_send_after_the_message_in_flight_and_resume_sends_the_rest(project: Project) -> None:
    handler = HeldHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    settings = yaml.safe_load(project.config_file.read_text())
    settings["backend"] = {"name": "smtp", "options": {"host": "127.0.0.1", "port": controller.port,
                                                       "security": "none", "connections": 1}}
    settings["delivery"] = {"batch_size": 1, "in_flight_factor": 1}
    project.config_file.write_text(yaml.safe_dump(settings))
    add_people(project.engine, "cy@example.org")
    try:
        app = create_preview_app(project.config_file, project.engine)
        with TestClient(app, base_url="http://127.0.0.1:8025") as client:
            token = form_token(client)
            client.post("/send", data={"csrf": token, "number": "1", "version": "0"})
            assert handler.arrived.wait(30)  # the first message is at the server
            paused = client.post("/pause", data={"csrf": token, "number": "1"}, headers={"X-Desk": "1"})
            assert paused.json()["message"] == "issue #1 paused"
            handler.release.set()
            wait_for(lambda: not client.get("/progress?issue=1").json()["running"])
            progress = client.get("/progress?issue=1").json()
            assert progress["status"] == "paused" and progress["counts"]["sent"] == 1
            assert progress["counts"]["queued"] == 2 and len(handler.messages) == 1
            assert "Resume" in client.get("/?issue=1").text
            client.post("/resume", data={"csrf": token, "number": "1"})
            wait_for(lambda: client.get("/progress?issue=1").json()["status"] == "sent")
            assert sorted(m.recipients[0] for m in handler.messages) == ["ada@example.org", "bob@example.org",
                                                                         "cy@example.org"]
            refused = client.post("/resume", data={"csrf": token, "number": "1"}, headers={"X-Desk": "1"})
            assert refused.status_code == 400 and refused.json()["error"].startswith("issue #1 is sent; it cannot be")
    finally:
        controller.stop()


def test_a_past_issue_is_shown_read_only_with_its_items_in_the_order_sent(client: TestClient, project: Project) -> None:
    editorial.reorder(project.engine, [2, 3, 1])
    prepare_issue(project.engine, client.app.state.preview.config)
    page = client.get("/?issue=1").text
    assert order_in_page(page) == [2, 3, 1] and "/desk/move" not in page.split('<section id="checks"')[0]
    assert 'data-figures="3"' in page  # where per-item figures of past issues go
    assert "Send now…" in page  # prepared, not sent yet


def test_dates_in_the_page_follow_the_configured_language(project: Project) -> None:
    settings = yaml.safe_load(project.config_file.read_text())
    settings["newsletter"]["locale"] = "de"
    settings["schedule"] = {"cron": "0 8 * * mon", "timezone": "Europe/Berlin"}
    project.config_file.write_text(yaml.safe_dump(settings))
    prepare_issue(project.engine, create_preview_app(project.config_file, project.engine).state.preview.config)
    add_summaries(project.engine, 1)
    app = create_preview_app(project.config_file, project.engine)
    with TestClient(app, base_url="http://127.0.0.1:8025") as client:
        past = client.get("/?issue=1").text
        upcoming = client.get("/").text
    months = ("Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August", "September", "Oktober",
              "November", "Dezember")
    assert re.search(rf"issue #1 \(prepared \d+\. ({'|'.join(months)}) \d{{4}}, not sent yet\)", past), past
    assert re.search(rf"Or leave it to the next firing, Montag, \d+\. ({'|'.join(months)}) \d{{4}}, 08:00 "
                     r"\(Europe/Berlin\)", upcoming)
    with session(project.engine) as db:
        assert db.exec(select(Delivery)).first().status is DeliveryStatus.QUEUED
