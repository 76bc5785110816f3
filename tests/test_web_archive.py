"""The public archive: past issues as pages and an Atom feed, with nothing personal in them."""

from __future__ import annotations

import shutil
import threading
import xml.etree.ElementTree as ET

from fastapi.testclient import TestClient
from sqlmodel import delete, select

from newsletter.backends import create_backend
from newsletter.db import session
from newsletter.delivery import send_unfinished
from newsletter.issues import cancel_issue, prepare_issue
from newsletter.models import Delivery, IssueCopy, Subscriber, Summary, utcnow
from newsletter.web.app import create_app
from tests.conftest import ROOT, make_config
from tests.helpers import add_people, add_summaries

ATOM = "{http://www.w3.org/2005/Atom}"


def sent_issue(config, engine) -> None:
    add_summaries(engine, 2, category="Neuroscience")
    add_people(engine, "ada@example.org", "grace@example.org")
    prepare_issue(engine, config)
    send_unfinished(engine, config, create_backend(config))


def test_sent_issues_are_listed_and_readable_without_anything_personal(config, engine):
    sent_issue(config, engine)
    client = TestClient(create_app(config, engine))
    index = client.get("/archive")
    assert index.status_code == 200
    assert 'href="/archive/1"' in index.text and 'type="application/atom+xml"' in index.text
    page = client.get("/archive/1")
    assert page.status_code == 200
    assert "Paper number 0" in page.text and "Paper number 1" in page.text
    with session(engine) as db:
        people = db.exec(select(Subscriber)).all()
    for person in people:
        assert person.email not in page.text and person.name not in page.text and person.token not in page.text
    assert "/unsubscribe/" not in page.text and "/preferences/" not in page.text
    assert 'href="https://news.example.org/unsubscribe"' in page.text  # explains where the personal link is
    assert client.get("/unsubscribe").status_code == 200


def test_unsent_and_unknown_issues_are_not_public(config, engine):
    add_summaries(engine, 1)
    add_people(engine, "ada@example.org")
    prepare_issue(engine, config)  # prepared, not sent yet
    client = TestClient(create_app(config, engine))
    assert 'href="/archive/1"' not in client.get("/archive").text
    assert client.get("/archive/1").status_code == 404
    missing = client.get("/archive/99")
    assert missing.status_code == 404 and "No such issue" in missing.text


def test_the_atom_feed_carries_each_issue_as_it_was_sent(config, engine):
    sent_issue(config, engine)
    client = TestClient(create_app(config, engine))
    response = client.get("/archive/feed.atom")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/atom+xml")
    feed = ET.fromstring(response.content)
    assert feed.tag == f"{ATOM}feed" and feed.findtext(f"{ATOM}title") == "Research Weekly"
    [entry] = feed.findall(f"{ATOM}entry")
    assert entry.find(f"{ATOM}link").get("href") == "https://news.example.org/archive/1"
    assert entry.findtext(f"{ATOM}title").startswith("Research Weekly #1: Paper number 0")
    content = entry.find(f"{ATOM}content")
    assert content.get("type") == "html" and content.text == client.get("/archive/1").text
    assert "Paper number 1" in content.text
    assert "ada@example.org" not in response.text


def test_an_archived_page_keeps_what_was_sent_when_a_summary_is_corrected_later(config, engine):
    sent_issue(config, engine)
    client = TestClient(create_app(config, engine))
    as_sent = client.get("/archive/1").content
    with session(engine) as db:
        summary = db.exec(select(Summary).where(Summary.title == "Paper number 0")).one()
        summary.title, summary.updated_at = "Paper number 0 (corrected)", utcnow()
        db.add(summary)
        db.commit()
    assert client.get("/archive/1").content == as_sent  # the archive is the record of what went out
    assert b"(corrected)" not in as_sent


def test_an_issue_that_reached_someone_stays_in_the_archive_after_a_cancel(config, engine):
    add_summaries(engine, 2, category="Neuroscience")
    add_people(engine, "ada@example.org", "grace@example.org")
    prepare_issue(engine, config)
    client = TestClient(create_app(config, engine))
    stop = threading.Event()  # stop after the first message: one person got it, one did not
    send_unfinished(engine, config, create_backend(config), batch_size=1, stop=stop,
                    progress=lambda _number, done, _total: stop.set() if done else None)
    cancel_issue(engine, 1)
    with session(engine) as db:
        states = sorted(d.status.value for d in db.exec(select(Delivery)))
    assert states == ["sent", "skipped"]
    assert client.get("/archive/1").status_code == 200  # the first reader's "view in browser" link works


def test_an_issue_cancelled_before_anyone_got_it_is_not_published(config, engine):
    add_summaries(engine, 1)
    add_people(engine, "ada@example.org")
    prepare_issue(engine, config)
    cancel_issue(engine, 1)
    client = TestClient(create_app(config, engine))
    assert client.get("/archive/1").status_code == 404
    assert 'href="/archive/1"' not in client.get("/archive").text


def sent_before_copies_were_kept(config, engine) -> None:
    """A sent issue as the upgrade that introduced archive copies leaves it: without a stored copy."""
    sent_issue(config, engine)
    with session(engine) as db:
        db.execute(delete(IssueCopy))
        db.commit()


def test_an_issue_sent_before_copies_were_kept_gets_its_copy_when_the_site_starts(config, engine):
    """Stored at the first start after the upgrade, not at the first public visit (whenever that is, with
    whatever templates there are by then)."""
    sent_before_copies_were_kept(config, engine)
    create_app(config, engine)
    with session(engine) as db:
        assert db.get(IssueCopy, 1) is not None


def test_an_old_issue_whose_copy_cannot_be_made_is_left_out_not_answered_500(tmp_path, config, engine, caplog):
    """Its templates have an error now: the site starts, the feed carries the issue without content, its
    page says it cannot be shown, and the log names the issue and the template."""
    sent_before_copies_were_kept(config, engine)
    broken = tmp_path / "broken-templates"
    shutil.copytree(ROOT / "templates", broken)
    (broken / "digest.mjml.j2").write_text("{% if %}", encoding="utf-8")
    client = TestClient(create_app(make_config(tmp_path, templates=str(broken)), engine))
    feed = client.get("/archive/feed.atom")
    assert feed.status_code == 200
    [entry] = ET.fromstring(feed.content).findall(f"{ATOM}entry")
    assert entry.findtext(f"{ATOM}title").startswith("Research Weekly #1") and entry.find(f"{ATOM}content") is None
    page = client.get("/archive/1")
    assert page.status_code == 503 and "cannot be shown right now" in page.text
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert lines and all(line.startswith("issue #1 has no archived copy and none can be made now (") for line in lines)
    assert "digest.mjml.j2" in lines[0]
