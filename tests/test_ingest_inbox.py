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


def test_file_names_that_are_not_utf8_are_processed_and_rejected_like_any_other(engine, tmp_path) -> None:
    """A Latin-1 name (``café.txt`` copied from an old machine) reaches Python as lone surrogates, which no
    database can store: the origin keeps the name with U+FFFD, and the run goes on."""
    config = make_config(tmp_path, ingest={"inbox": "inbox"})
    inbox = tmp_path / "inbox"
    drop(inbox, os.fsdecode(b"caf\xe9.txt"), (PAGES / "03-retina-no-labels.txt").read_bytes())
    drop(inbox, os.fsdecode(b"na\xefve.json"), b'{"title": "No summary"}')
    result = process_inbox(engine, config, now=WRITTEN + timedelta(minutes=1))
    assert [os.fsencode(p.name) for p in result.processed] == [b"caf\xe9.txt"]
    assert [os.fsencode(p.name) for p in result.rejected] == [b"na\xefve.json"]
    with session(engine) as db:
        assert db.exec(select(Summary.origin)).all() == ["inbox:caf\ufffd.txt"]
    reason = (inbox / "rejected" / os.fsdecode(b"na\xefve.json.error.txt")).read_text(encoding="utf-8")
    assert "field 'summary' is required" in reason


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


GOOD_MD = "---\ntitle: {title}\nsource: Journal of Sleep\nsummary: It found things.\nuid: {title}\n---\n"


def test_a_poisoned_file_is_rejected_once_and_the_good_files_after_it_go_in(engine, tmp_path) -> None:
    config = make_config(tmp_path, ingest={"inbox": "inbox"})
    inbox = tmp_path / "inbox"
    drop(inbox, "a-poisoned.md", GOOD_MD.format(title="Poisoned").replace("Journal of", "Journal\x00 of").encode())
    drop(inbox, "b-good.md", GOOD_MD.format(title="Good one").encode())
    drop(inbox, "c-good.md", GOOD_MD.format(title="Good two").encode())

    first = process_inbox(engine, config, now=WRITTEN + timedelta(minutes=1))

    assert [p.name for p in first.rejected] == ["a-poisoned.md"]
    assert [p.name for p in first.processed] == ["b-good.md", "c-good.md"]
    reason = (inbox / "rejected" / "a-poisoned.md.error.txt").read_text(encoding="utf-8")
    assert reason.startswith(f"{inbox / 'a-poisoned.md'}:3: the front matter holds the control character U+0000")
    assert titles(engine) == ["Good one", "Good two"]
    # Nothing is left to try again: the next pass finds an empty inbox.
    again = process_inbox(engine, config, now=WRITTEN + timedelta(minutes=3))
    assert (again.processed, again.rejected, again.waiting) == ([], [], [])
    assert sorted(p.name for p in (inbox / "rejected").iterdir()) == ["a-poisoned.md", "a-poisoned.md.error.txt"]


def test_a_reader_that_fails_in_any_way_rejects_the_file_and_the_inbox_goes_on(engine, tmp_path, monkeypatch) -> None:
    from newsletter.ingest.jsonfile import JsonReader

    original = JsonReader.read

    def read(self, path):
        if path.name.startswith("a-"):
            raise RuntimeError("the parser fell over")
        return original(self, path)

    monkeypatch.setattr(JsonReader, "read", read)
    config = make_config(tmp_path, ingest={"inbox": "inbox"})
    inbox = tmp_path / "inbox"
    drop(inbox, "a-crash.json", b'{"title": "Crash", "summary": "S."}')
    drop(inbox, "b-fine.json", b'{"title": "Fine", "summary": "S."}')

    result = process_inbox(engine, config, now=WRITTEN + timedelta(minutes=1))

    assert ([p.name for p in result.rejected], [p.name for p in result.processed]) == (["a-crash.json"], ["b-fine.json"])
    assert "RuntimeError: the parser fell over" in (inbox / "rejected" / "a-crash.json.error.txt").read_text()
    assert titles(engine) == ["Fine"]
