"""Editors see and fix what came in: ``summaries list/show/edit/exclude``, and ``ingest`` of pages and feed
URLs, through the real CLI; an excluded summary stays out of the next digest."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest
from sqlmodel import select

from newsletter.config import load_config
from newsletter.db import open_database, session
from newsletter.issues import waiting_summaries
from newsletter.models import Summary
from tests.test_cli import config_file, invoke
from tests.test_ingest_feeds import FEEDS, Feed, feed_server  # noqa: F401 - the fixture

PAGES = Path(__file__).parent / "samples" / "pages"


@pytest.mark.parametrize("command", [["summaries"], ["summaries", "list"], ["summaries", "show"],
                                     ["summaries", "edit"], ["summaries", "exclude"]])
def test_summaries_commands_have_help_with_an_example(command) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Example" in result.output


@pytest.fixture
def filled(tmp_path) -> Path:
    path = config_file(tmp_path)
    result = invoke("ingest", PAGES / "01-senolytic-paywall.txt", PAGES / "08-retina-page.html", "--config", path)
    assert result.exit_code == 0, result.output
    assert "added 2" in result.output
    return path


def summary_ids(path: Path) -> dict[str, int]:
    engine = open_database(load_config(path))
    with session(engine) as db:
        found = {row.title: row.id for row in db.exec(select(Summary))}
    engine.dispose()
    return found


def test_list_and_show(filled) -> None:
    listing = invoke("summaries", "list", "--config", filled)
    assert listing.exit_code == 0
    assert "Senolytic cocktail restores muscle repair" in listing.output and "2 summaries" in listing.output
    ids = summary_ids(filled)
    shown = invoke("summaries", "show", ids["Senolytic cocktail restores muscle repair in aged mice"], "--config", filled)
    assert shown.exit_code == 0
    assert "article_type: Research Paper" in shown.output and "paywalled: true" in shown.output
    missing = invoke("summaries", "show", 999, "--config", filled)
    assert (missing.exit_code, missing.output.strip()) == (1, "error: no summary with id 999; see 'newsletter summaries list'")


def editor(tmp_path: Path, old: str, new: str) -> str:
    script = tmp_path / "fake-editor"
    script.write_text(
        f"#!{sys.executable}\nimport pathlib, sys\np = pathlib.Path(sys.argv[1])\n"
        f"p.write_text(p.read_text(encoding='utf-8').replace({old!r}, {new!r}), encoding='utf-8')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_edit_opens_the_yaml_in_the_editor_and_stores_a_valid_change(filled, tmp_path, monkeypatch) -> None:
    summary_id = summary_ids(filled)["Senolytic cocktail restores muscle repair in aged mice"]
    monkeypatch.setenv("EDITOR", editor(tmp_path, "source: Nature Aging", "source: Nature Aging (2026)"))
    result = invoke("summaries", "edit", summary_id, "--config", filled)
    assert result.exit_code == 0, result.output
    assert "source: Nature Aging (2026)" in invoke("summaries", "show", summary_id, "--config", filled).output


def test_an_invalid_edit_changes_nothing_and_keeps_the_text(filled, tmp_path, monkeypatch) -> None:
    summary_id = summary_ids(filled)["Senolytic cocktail restores muscle repair in aged mice"]
    monkeypatch.setenv("EDITOR", editor(tmp_path, "url: null", "url: ftp://example.org/x"))
    result = invoke("summaries", "edit", summary_id, "--config", filled)
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert "must be an absolute http(s) URL" in line and "nothing was changed; your edit is kept in" in line
    kept = Path(line.rsplit("kept in ", 1)[1].rstrip(")"))
    assert "ftp://example.org/x" in kept.read_text(encoding="utf-8")
    kept.unlink()
    assert "url: null" in invoke("summaries", "show", summary_id, "--config", filled).output


def test_exclude_keeps_a_summary_out_of_the_next_digest_and_undo_brings_it_back(filled) -> None:
    ids = summary_ids(filled)
    excluded = ids["Senolytic cocktail restores muscle repair in aged mice"]
    assert invoke("summaries", "exclude", excluded, "--config", filled).exit_code == 0
    assert "excluded" in invoke("summaries", "list", "--new", "--config", filled).output
    engine = open_database(load_config(filled))
    with session(engine) as db:
        assert [s.id for s in waiting_summaries(db)] == [ids["Retinal scans spot early cognitive decline a decade ahead"]]
    assert invoke("subscribers", "add", "ada@example.org", "--config", filled).exit_code == 0
    prepared = invoke("digest", "prepare", "--config", filled)
    assert "with 1 summary" in prepared.output, prepared.output
    assert invoke("summaries", "exclude", excluded, "--undo", "--config", filled).exit_code == 0
    with session(engine) as db:
        assert [s.id for s in waiting_summaries(db)] == [excluded]
    engine.dispose()


def test_ingest_takes_feed_urls_next_to_files(tmp_path, feed_server) -> None:  # noqa: F811
    path = config_file(tmp_path)
    url = feed_server.serve("/feed.xml", Feed((FEEDS / "rss2.xml").read_bytes()))
    result = invoke("ingest", url, PAGES / "03-retina-no-labels.txt", "--config", path)
    assert result.exit_code == 0, result.output
    assert "added 3" in result.output
    broken = feed_server.serve("/broken.xml", Feed((FEEDS / "broken.xml").read_bytes()))
    failed = invoke("ingest", broken, "--config", path)
    assert failed.exit_code == 1 and "not a valid RSS or Atom feed" in failed.output


def test_an_editor_that_fails_gives_one_line_and_changes_nothing(filled, monkeypatch) -> None:
    summary_id = summary_ids(filled)["Senolytic cocktail restores muscle repair in aged mice"]
    before = invoke("summaries", "show", summary_id, "--config", filled).output
    monkeypatch.setenv("EDITOR", "false")
    result = invoke("summaries", "edit", summary_id, "--config", filled)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "set $EDITOR to an editor that works" in result.output
    assert invoke("summaries", "show", summary_id, "--config", filled).output == before
