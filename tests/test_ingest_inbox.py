"""The inbox folder: settled files are ingested and moved to processed/, bad ones to rejected/ with a reason;
files still being written are left alone. Time is passed in, never slept."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlmodel import select

from newsletter.db import session
from newsletter.ingest.inbox import process_inbox
from newsletter.models import Summary
from tests.conftest import make_config

PAGES = Path(__file__).parent / "samples" / "pages"
WRITTEN = datetime(2026, 4, 13, 9, 0, tzinfo=UTC)


def drop(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    os.utime(path, (WRITTEN.timestamp(), WRITTEN.timestamp()))
    return path


def titles(engine) -> list[str]:
    with session(engine) as db:
        return sorted(row.title for row in db.exec(select(Summary)))


def test_good_files_go_to_processed_and_bad_ones_to_rejected_with_the_reason(engine, tmp_path) -> None:
    config = make_config(tmp_path, ingest={"inbox": "inbox"})
    inbox = tmp_path / "inbox"
    drop(inbox, "page.txt", (PAGES / "03-retina-no-labels.txt").read_bytes())
    drop(inbox, "broken.json", b'{"title": "No summary"}')
    drop(inbox, "latin.txt", "Caf\xe9\n\nText.".encode("latin-1"))
    result = process_inbox(engine, config, now=WRITTEN + timedelta(minutes=1))
    assert [p.name for p in result.processed] == ["page.txt"]
    assert sorted(p.name for p in result.rejected) == ["broken.json", "latin.txt"]
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == []
    assert (inbox / "processed" / "page.txt").is_file()
    reason = (inbox / "rejected" / "broken.json.error.txt").read_text(encoding="utf-8")
    assert "field 'summary' is required" in reason
    assert "not UTF-8" in (inbox / "rejected" / "latin.txt.error.txt").read_text(encoding="utf-8")
    assert titles(engine) == ["Retinal scans spot early cognitive decline a decade ahead"]


def test_a_file_still_being_written_is_not_picked_up_until_it_settles(engine, tmp_path) -> None:
    config = make_config(tmp_path, ingest={"inbox": "inbox", "inbox_settle_seconds": 30})
    inbox = tmp_path / "inbox"
    half = (PAGES / "01-senolytic-paywall.txt").read_bytes()[:60]  # cut mid-title, as a slow copy would be
    drop(inbox, "page.txt", half)
    drop(inbox, "upload.txt.part", half)
    early = process_inbox(engine, config, now=WRITTEN + timedelta(seconds=5))
    assert ([p.name for p in early.waiting], early.processed, early.rejected) == (["page.txt"], [], [])
    drop(inbox, "page.txt", (PAGES / "01-senolytic-paywall.txt").read_bytes())  # the writer finished
    later = process_inbox(engine, config, now=WRITTEN + timedelta(seconds=31))
    assert [p.name for p in later.processed] == ["page.txt"]
    assert (inbox / "upload.txt.part").exists()  # temporary names are never read
    assert titles(engine) == ["Senolytic cocktail restores muscle repair in aged mice"]


def test_a_name_already_processed_is_not_overwritten(engine, tmp_path) -> None:
    config = make_config(tmp_path, ingest={"inbox": "inbox"})
    inbox = tmp_path / "inbox"
    later = WRITTEN + timedelta(minutes=1)
    drop(inbox, "page.txt", (PAGES / "03-retina-no-labels.txt").read_bytes())
    process_inbox(engine, config, now=later)
    drop(inbox, "page.txt", (PAGES / "02-spindles-no-date.txt").read_bytes())
    process_inbox(engine, config, now=later)
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == ["page-1.txt", "page.txt"]
    assert len(titles(engine)) == 2


def test_without_an_inbox_nothing_happens(engine, tmp_path) -> None:
    result = process_inbox(engine, make_config(tmp_path), now=WRITTEN)
    assert (result.processed, result.rejected, result.waiting) == ([], [], [])
