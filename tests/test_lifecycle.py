"""The editor's path through an issue's life, as the commands and pages show it: after an issue went out, the
next summary can be seen and sent at once; the archive keeps what was sent; a refused step says why in one
line; a missed firing warns only when something was waiting, and its advice works."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from fastapi.testclient import TestClient
from sqlmodel import select

from newsletter.config import load_config
from newsletter.db import open_database, session
from newsletter.models import Summary, utcnow
from newsletter.web.app import create_app
from newsletter.web.preview import create_preview_app
from tests.conftest import ROOT
from tests.outbox import html_part, messages
from tests.test_cli import config_file, invoke

PEOPLE = ("ada@example.org", "bob@example.org", "cy@example.org")


def write_item(folder: Path, name: str, title: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.jsonl"
    path.write_text(f'{{"title": "{title}", "summary": "What it found.", "url": "https://example.org/{name}"}}\n',
                    encoding="utf-8")
    return path


def sent_first_issue(tmp_path: Path, **replace: str) -> Path:
    """A project whose issue #1 ("First paper") went out to PEOPLE through the file backend."""
    path = config_file(tmp_path, **replace)
    assert invoke("ingest", write_item(tmp_path / "in", "first", "First paper"), "--config", path).exit_code == 0
    for person in PEOPLE:
        assert invoke("subscribers", "add", person, "--config", path).exit_code == 0
    assert "prepared issue #1" in invoke("digest", "prepare", "--config", path).output
    sent = invoke("digest", "send", "--config", path)
    assert sent.exit_code == 0 and "sent 3" in sent.output, sent.output
    return path


def test_after_a_sent_issue_a_new_summary_is_prepared_and_sent_as_the_next_issue_to_everyone(tmp_path):
    path = sent_first_issue(tmp_path)
    assert invoke("ingest", write_item(tmp_path / "in", "late", "A late paper"), "--config", path).exit_code == 0

    prepared = invoke("digest", "prepare", "--config", path)
    assert prepared.exit_code == 0 and "prepared issue #2" in prepared.output
    assert "with 1 summary for 3 subscribers" in prepared.output
    sent = invoke("digest", "send", "--config", path)
    assert sent.exit_code == 0 and "issue #2: sent 3" in sent.output, sent.output

    second = [m for m in messages(tmp_path / "outbox") if "#2" in m["Subject"]]
    assert sorted(m["To"].addresses[0].addr_spec for m in second) == sorted(PEOPLE)
    for message in second:
        assert "A late paper" in html_part(message) and "First paper" not in html_part(message)
    nothing = invoke("digest", "prepare", "--config", path)
    assert nothing.exit_code == 0 and "no summary is waiting" in nothing.output


def test_render_and_the_preview_show_the_waiting_summary_first(tmp_path, monkeypatch):
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "k")
    path = sent_first_issue(tmp_path)
    shown = invoke("digest", "render", "--out", tmp_path / "r", "--config", path)
    assert shown.exit_code == 0 and "issue #1 (sent " in shown.output  # the state and the date
    invoke("ingest", write_item(tmp_path / "in", "late", "A late paper"), "--config", path)

    draft = invoke("digest", "render", "--out", tmp_path / "r", "--config", path)
    assert "draft of issue #2 (not prepared yet)" in draft.output
    assert "A late paper" in (tmp_path / "r" / "issue.html").read_text(encoding="utf-8")
    engine = open_database(load_config(path))
    with TestClient(create_preview_app(path, engine), base_url="http://127.0.0.1:8025") as client:
        page = client.get("/").text
        assert "draft of issue #2 (not prepared yet)" in page
        assert "A late paper" in client.get("/email").text and "First paper" not in client.get("/email").text
    engine.dispose()


def test_a_template_or_summary_edit_after_sending_leaves_the_archive_byte_for_byte_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "k")
    shutil.copytree(ROOT / "templates", tmp_path / "own")
    path = sent_first_issue(tmp_path, **{f"templates: {ROOT / 'templates'}": "templates: own"})
    config = load_config(path)
    engine = open_database(config)
    as_sent = TestClient(create_app(config, engine)).get("/archive/1")
    assert as_sent.status_code == 200 and "First paper" in as_sent.text

    header = tmp_path / "own" / "partials" / "header.mjml.j2"
    header.write_text(header.read_text(encoding="utf-8").replace("Issue {{", "Edition {{"), encoding="utf-8")
    with session(engine) as db:
        item = db.exec(select(Summary)).one()
        item.title, item.updated_at = "First paper (retitled later)", utcnow()
        db.add(item)
        db.commit()

    later = TestClient(create_app(load_config(path), engine))  # a fresh app: no cache to hide behind
    assert later.get("/archive/1").content == as_sent.content
    assert "Edition" not in later.get("/archive/1").text
    feed = ET.fromstring(later.get("/archive/feed.atom").content)
    [content] = feed.iter("{http://www.w3.org/2005/Atom}content")
    assert content.get("type") == "html" and content.text == as_sent.text  # a feed reader shows the digest
    engine.dispose()


def test_resuming_a_cancelled_issue_is_a_one_line_error_naming_its_state(tmp_path):
    path = config_file(tmp_path)
    invoke("ingest", write_item(tmp_path / "in", "first", "First paper"), "--config", path)
    invoke("subscribers", "add", "ada@example.org", "--config", path)
    invoke("digest", "prepare", "--config", path)
    assert invoke("digest", "cancel", "1", "--config", path).exit_code == 0
    refused = invoke("digest", "resume", "1", "--config", path)
    assert refused.exit_code == 1
    [line] = refused.output.strip().splitlines()
    assert line.startswith("error: issue #1 is cancelled; it cannot be resumed")


def _weekday_days_ago(days: int) -> str:
    return (utcnow().astimezone(ZoneInfo("Europe/London")) - timedelta(days=days)).strftime("%a").lower()


def test_a_firing_missed_with_nothing_waiting_is_recorded_quietly_and_status_reads_sensibly(tmp_path):
    # Right after a send (the demo's state), the only weekly firing passed three days ago, with nothing waiting.
    path = sent_first_issue(tmp_path, **{'cron: "0 8 * * mon"': f'cron: "0 12 * * {_weekday_days_ago(3)}"'})
    due = invoke("digest", "send", "--if-due", "--config", path)
    assert due.exit_code == 0, due.output
    assert "MISSED" not in due.output and "WARNING" not in due.stderr
    status = invoke("status", "--config", path).output
    assert "MISSED" not in status  # the old "2026-W48: missed: 2026-W48: MISSED ..."
    [missed] = [line for line in status.splitlines() if "missed" in line]
    assert missed.count("missed") == 1 and "nothing was waiting" in missed, status


def test_a_firing_missed_while_summaries_waited_warns_and_its_advice_works(tmp_path):
    path = sent_first_issue(tmp_path, **{'cron: "0 8 * * mon"': f'cron: "0 12 * * {_weekday_days_ago(3)}"'})
    engine = open_database(load_config(path))
    with session(engine) as db:  # a summary that was already waiting when the firing was missed
        db.add(Summary(uid="waited", title="A paper that waited", summary="It waited.",
                       url="https://example.org/waited", ingested_at=utcnow() - timedelta(days=4)))
        db.commit()
    engine.dispose()
    due = invoke("digest", "send", "--if-due", "--config", path)
    assert due.exit_code == 0 and "MISSED" in due.output
    advice = "newsletter digest prepare && newsletter digest send"
    assert advice in due.output

    for step in advice.split(" && "):
        done = invoke(*step.split()[1:], "--config", path)
        assert done.exit_code == 0, done.output
    assert "issue #2: sent 3" in done.output
    assert sum("A paper that waited" in html_part(m) for m in messages(tmp_path / "outbox")) == 3
