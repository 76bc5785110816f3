"""Where editors see the clicks (``digest status``, ``digest clicks`` and its CSV, ``status --json``, the
preview) and what a subscriber's export holds of theirs; erasing them deletes them."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, update
from sqlmodel import col, select

from newsletter.backends import create_backend
from newsletter.config import load_config
from newsletter.db import open_database, session
from newsletter.delivery import send_unfinished
from newsletter.issues import prepare_issue
from newsletter.models import ClickCount, Subscriber, SubscriberClick, Summary
from newsletter.tokens import url_hash
from newsletter.web.app import create_app
from newsletter.web.preview import create_preview_app
from tests import outbox
from tests.click_support import BROWSER, SCANNER_AGENT, click_links, delivered_ago, path, send_issue
from tests.helpers import add_people, add_summaries
from tests.test_cli import config_file, invoke

COUNTED = {"clicks: false": "clicks: true"}
PER_SUBSCRIBER = {"clicks: false": "clicks: true", "per_subscriber: false": "per_subscriber: true"}


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "k")  # the one the commands get


def clicked_issue(tmp_path, settings=COUNTED):
    """Issue 1 of the example config (click counting on) sent to Ada and Grace two hours ago; Ada clicked the
    first item's title twice and its button once, a scanner opened the second item's title once."""
    config_path = config_file(tmp_path, **settings)
    config = load_config(config_path)
    engine = open_database(config)
    messages = send_issue(config, engine, "ada@example.org", "grace@example.org")
    delivered_ago(engine, timedelta(hours=2))
    ada = next(m for m in messages if "ada@" in m["To"])
    first_title, first_button, second_title = click_links(ada)[:3]
    with TestClient(create_app(config, engine)) as client:  # written at its shutdown
        for link, agent in ((first_title, BROWSER), (first_title, BROWSER), (first_button, BROWSER),
                            (second_title, SCANNER_AGENT)):
            assert client.get(path(link), headers={"User-Agent": agent}, follow_redirects=False).status_code == 302
    return config_path, config, engine


def test_digest_status_shows_the_clicks_of_the_issue_and_of_each_item(tmp_path):
    config_path, _config, _engine = clicked_issue(tmp_path)
    result = invoke("digest", "status", "1", "--config", config_path)
    assert result.exit_code == 0, result.output
    assert "clicks: 4, likely human 3" in result.output
    rows = [line.split("│")[1:5] for line in result.output.splitlines() if "│ Paper number" in line]
    assert [[cell.strip() for cell in row] for row in rows] == [["1", "3", "3", "Paper number 0"],
                                                                ["2", "1", "0", "Paper number 1"]]


def test_status_json_and_text_show_the_last_issues_clicks(tmp_path):
    config_path, _config, _engine = clicked_issue(tmp_path)
    data = json.loads(invoke("status", "--json", "--config", config_path).output)
    assert data["last_issue"]["clicks"] == {
        "counted": True, "clicks": 4, "likely_human_clicks": 3,
        "items": [
            {"item": 1, "title": "Paper number 0", "url": "https://example.org/papers/0", "clicks": 3,
             "likely_human_clicks": 3},
            {"item": 2, "title": "Paper number 1", "url": "https://example.org/papers/1", "clicks": 1,
             "likely_human_clicks": 0},
        ],
    }
    text = invoke("status", "--config", config_path).output
    assert "  clicks: 4, likely human 3\n" in text
    assert "    item 1: 3 (3 likely human) Paper number 0\n" in text


def test_the_csv_export_has_a_row_per_item_link_and_names_links_whose_summary_is_gone(tmp_path):
    config_path, _config, engine = clicked_issue(tmp_path)
    result = invoke("digest", "clicks", "1", "--csv", "--config", config_path)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows == [
        {"issue": "1", "item": "1", "title": "Paper number 0", "url": "https://example.org/papers/0", "clicks": "3",
         "likely_human_clicks": "3"},
        {"issue": "1", "item": "2", "title": "Paper number 1", "url": "https://example.org/papers/1", "clicks": "1",
         "likely_human_clicks": "0"},
    ]
    with session(engine) as db:
        db.execute(delete(Summary))
        db.commit()
    out = tmp_path / "clicks.csv"
    written = invoke("digest", "clicks", "--out", out, "--config", config_path)  # the newest issue
    assert written.exit_code == 0 and f"wrote 2 rows to {out}" in written.output
    with out.open(newline="", encoding="utf-8") as handle:
        kept = list(csv.DictReader(handle))
    # named as the archive's copy links them: its URL, and the link's text (the title as it was sent)
    assert kept == [{**row, "item": ""} for row in rows]


def test_every_issue_in_one_csv_and_titles_that_look_like_formulas_are_defused(tmp_path):
    config_path, config, engine = clicked_issue(tmp_path)
    with session(engine) as db:
        db.execute(update(Summary).where(col(Summary.id) == 1).values(title="=HYPERLINK(\"http://evil\")"))
        db.commit()
    send_issue(config, engine)  # issue 2, nobody clicked it yet
    result = invoke("digest", "clicks", "--all", "--csv", "--config", config_path)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(row["issue"], row["item"], row["clicks"]) for row in rows] == [
        ("1", "1", "3"), ("1", "2", "1"), ("2", "1", "0"), ("2", "2", "0")]
    assert rows[0]["title"] == "'=HYPERLINK(\"http://evil\")"
    both = invoke("digest", "clicks", "1", "--all", "--config", config_path)
    assert both.exit_code == 1 and both.output.strip() == "error: give an issue number or --all, not both"


def test_without_click_counting_the_reports_say_so(tmp_path):
    config_path = config_file(tmp_path)
    engine = open_database(load_config(config_path))
    send_issue(load_config(config_path), engine, "ada@example.org")
    result = invoke("digest", "clicks", "--config", config_path)
    assert result.exit_code == 0
    assert "clicks: not counted (tracking.clicks is off; see docs/engagement.md)" in result.output
    assert "clicks: not counted" in invoke("digest", "status", "--config", config_path).output
    status = json.loads(invoke("status", "--json", "--config", config_path).output)
    assert status["last_issue"]["clicks"]["counted"] is False


def test_the_preview_shows_each_items_clicks_for_a_past_issue(tmp_path):
    config_path, _config, engine = clicked_issue(tmp_path)
    with TestClient(create_preview_app(config_path, engine), base_url="http://127.0.0.1:8025") as client:
        page = client.get("/", params={"issue": "1"})
        assert page.status_code == 200
        assert '<p id="clicks">clicks: 4, likely human 3</p>' in page.text
        rows = {title: page.text[page.text.index(f'<span class="title">{title}</span>'):][:300]
                for title in ("Paper number 0", "Paper number 1")}
        assert ">3 clicks, 3 likely human</span>" in rows["Paper number 0"]  # beside the item it counts
        assert ">1 click, 0 likely human</span>" in rows["Paper number 1"]
        assert 'id="clicks"' not in client.get("/", params={"issue": "next"}).text


def test_the_desk_adds_up_an_items_clicks_on_its_old_and_its_new_link(tmp_path):
    """The first item's URL was corrected after the issue went out: its clicks are counted under the old
    link (3) and the new one (2), and the desk's row shows the item's total, not one link's."""
    config_path, _config, engine = clicked_issue(tmp_path)
    with session(engine) as db:
        db.execute(update(Summary).where(col(Summary.id) == 1).values(url="https://example.org/papers/0-corrected"))
        db.add(ClickCount(issue_id=1, item_id=1, url_hash=url_hash("https://example.org/papers/0-corrected"),
                          clicks=2, human_clicks=2))
        db.commit()
    with TestClient(create_preview_app(config_path, engine), base_url="http://127.0.0.1:8025") as client:
        page = client.get("/", params={"issue": "1"}).text
    row = page[page.index('<span class="title">Paper number 0</span>'):][:300]
    assert ">5 clicks, 5 likely human</span>" in row


def test_per_subscriber_the_export_lists_ones_clicks_and_erasing_deletes_them_but_not_the_counts(tmp_path):
    config_path, _config, engine = clicked_issue(tmp_path, PER_SUBSCRIBER)
    exported = json.loads(invoke("subscribers", "export", "ada@example.org", "--config", config_path).output)
    assert [(c["issue"], c["title"], c["url"], c["likely_human"]) for c in exported["clicks"]] == [
        (1, "Paper number 0", "https://example.org/papers/0", True)] * 3 + [
        (1, "Paper number 1", "https://example.org/papers/1", False)]
    grace = json.loads(invoke("subscribers", "export", "grace@example.org", "--config", config_path).output)
    assert grace["clicks"] == []
    erased = invoke("subscribers", "erase", "ada@example.org", "--yes", "--config", config_path)
    assert erased.exit_code == 0 and "4 recorded clicks" in erased.output
    with session(engine) as db:
        assert db.exec(select(SubscriberClick)).all() == []
        assert sum(row.clicks for row in db.exec(select(ClickCount))) == 4  # the counts name nobody
        assert db.exec(select(Subscriber.email)).all() == ["grace@example.org"]


def test_the_editors_draft_is_not_reported_as_an_issue(tmp_path):
    """An editor's choice for the next issue saves it as a draft row: it has no deliveries and no clicks, so
    `digest clicks --all` leaves it out and `digest status` on its number says what it is."""
    from newsletter.issues import editorial

    config_path, _config, engine = clicked_issue(tmp_path)
    add_summaries(engine, 1)
    editorial.set_note(engine, "A word from the editor")  # the draft row, issue #2
    every = invoke("digest", "clicks", "--all", "--config", config_path)
    assert every.exit_code == 0 and "issue #1" in every.output and "#2" not in every.output, every.output
    status = invoke("digest", "status", "2", "--config", config_path)
    assert status.exit_code == 0, status.output
    assert status.output.strip() == ("issue #2 is the next issue, not prepared yet (the editor's draft): "
                                     "`newsletter digest render` shows it, `newsletter digest prepare` prepares it")


def test_items_are_numbered_as_the_email_shows_them_after_the_editor_reordered(tmp_path):
    """The editor moved the second paper first and made it the lead: the report's item numbers, and the
    front page's list of titles, follow the email's order, not the order the summaries arrived in."""
    from newsletter.issues import editorial

    config_path = config_file(tmp_path, **COUNTED)
    config = load_config(config_path)
    engine = open_database(config)
    add_summaries(engine, 2)
    add_people(engine, "ada@example.org")
    editorial.set_lead(engine, 2)
    prepare_issue(engine, config)
    send_unfinished(engine, config, create_backend(config))
    [message] = outbox.messages(config.resolve("outbox"))
    emailed = re.findall(r"Paper number \d", outbox.text_part(message))
    assert list(dict.fromkeys(emailed)) == ["Paper number 1", "Paper number 0"]
    report = invoke("digest", "clicks", "1", "--csv", "--config", config_path)
    rows = list(csv.DictReader(io.StringIO(report.stdout)))
    assert [(row["item"], row["title"]) for row in rows] == [("1", "Paper number 1"), ("2", "Paper number 0")]
    with TestClient(create_app(config, engine)) as client:
        front = client.get("/").text
    assert front.index("Paper number 1") < front.index("Paper number 0")
