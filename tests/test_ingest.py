"""The ingest stage: readers, validation messages, and the per-file upsert into the Summary table."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import select

from newsletter.config import IngestSection
from newsletter.db import session
from newsletter.errors import ConfigError, IngestError
from newsletter.ingest import (
    IngestReport,
    Reader,
    Rejection,
    SummaryIn,
    compute_uid,
    find_files,
    ingest_items,
    ingest_paths,
    readers_by_extension,
    validate_item,
)
from newsletter.ingest.jsonfile import JsonLinesReader, JsonReader
from newsletter.ingest.markdown import MarkdownReader
from newsletter.ingest.store import read_file
from newsletter.models import Issue, Summary
from newsletter.resources import sample_summaries_dir

PAPER_MD = """\
---
title: Sleep spindles predict recall
source: Journal of Sleep
category: Neuroscience
tags: [sleep, memory]
url: https://example.org/papers/spindles
summary: Older adults with more spindles remembered more.
key_points:
  - Spindle density tracks recall
  - Sleep time does not explain it
image_url: https://example.org/img/spindles.png
image_alt: An EEG trace with spindles highlighted
published_at: 2026-11-09T07:30:00+01:00
uid: paper-42
---
Longer discussion of the methods.
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dedent(text), encoding="utf-8")
    return path


def jsonl(*records: dict[str, Any]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def item(title: str, **fields: Any) -> dict[str, Any]:
    return {"title": title, "summary": f"About {title}.", **fields}


def all_rows(engine: Engine) -> list[Summary]:
    with session(engine) as db:
        return list(db.exec(select(Summary).order_by(Summary.title)))


def only_message(report: IngestReport) -> str:
    assert len(report.rejected) == 1, report.rejected
    return report.rejected[0].message


# --- readers -------------------------------------------------------------------------------------


def test_markdown_reader_takes_every_field_from_front_matter(tmp_path: Path) -> None:
    [summary] = MarkdownReader().read(write(tmp_path, "paper.md", PAPER_MD))

    assert summary.title == "Sleep spindles predict recall"
    assert summary.source == "Journal of Sleep"
    assert summary.category == "Neuroscience"
    assert summary.tags == ["sleep", "memory"]
    assert summary.url == "https://example.org/papers/spindles"
    assert summary.summary == "Older adults with more spindles remembered more."
    assert summary.key_points == ["Spindle density tracks recall", "Sleep time does not explain it"]
    assert summary.image_url == "https://example.org/img/spindles.png"
    assert summary.image_alt == "An EEG trace with spindles highlighted"
    assert summary.published_at == datetime(2026, 11, 9, 6, 30, tzinfo=UTC)
    assert summary.uid == "paper-42"
    assert summary.body == "Longer discussion of the methods."


def test_markdown_body_supplies_summary_and_key_findings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "paper.markdown",
        """\
        ---
        title: Fibre and glucose
        ---
        # Fibre and glucose

        Fermentable fibre lowered glucose peaks
        after breakfast and lunch.

        ## KEY FINDINGS

        - Peaks fell by 1.1 mmol/L,
          on average
        * Meal order mattered little

        ## Caveats

        Short trial.
        """,
    )
    [summary] = MarkdownReader().read(path)

    assert summary.summary == "Fermentable fibre lowered glucose peaks after breakfast and lunch."
    assert summary.key_points == ["Peaks fell by 1.1 mmol/L, on average", "Meal order mattered little"]
    assert summary.body == "Fibre and glucose\n\nCaveats\n\nShort trial."  # Markdown rendered to text


def test_markdown_front_matter_wins_over_the_body(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "paper.md",
        """\
        ---
        title: Peatlands
        summary: From the front matter.
        key_findings: [Front-matter finding]
        ---
        A paragraph that stays in the body.

        ## Key points
        - Body bullet
        """,
    )
    [summary] = MarkdownReader().read(path)

    assert summary.summary == "From the front matter."
    assert summary.key_points == ["Front-matter finding"]
    assert summary.body == "A paragraph that stays in the body.\n\nKey points\n\n• Body bullet"


def test_json_reader_reads_one_object_or_an_array(tmp_path: Path) -> None:
    one = write(tmp_path, "one.json", json.dumps(item("Single")))
    many = write(tmp_path, "many.json", json.dumps([item("First"), item("Second", category="Climate")]))

    assert [s.title for s in JsonReader().read(one)] == ["Single"]
    assert [(s.title, s.category) for s in JsonReader().read(many)] == [
        ("First", None),
        ("Second", "Climate"),
    ]


def test_json_lines_reader_reads_one_object_per_line_and_skips_blank_lines(tmp_path: Path) -> None:
    text = jsonl(item("First")) + "\n   \n" + jsonl(item("Second", tags="a, b ,c"))
    summaries = JsonLinesReader().read(write(tmp_path, "notes.jsonl", text))

    assert [s.title for s in summaries] == ["First", "Second"]
    assert summaries[1].tags == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("alias", "value", "field", "expected"),
    [
        ("link", "https://example.org/a", "url", "https://example.org/a"),
        ("journal", "Nature Example", "source", "Nature Example"),
        ("publication", "Example Weekly", "source", "Example Weekly"),
        ("key_findings", ["one"], "key_points", ["one"]),
        ("findings", ["two"], "key_points", ["two"]),
        ("image", "https://example.org/a.png", "image_url", "https://example.org/a.png"),
        ("date", "2026-11-03", "published_at", datetime(2026, 11, 3, tzinfo=UTC)),
        ("id", 1234, "uid", "1234"),
        ("guid", "urn:x:1", "uid", "urn:x:1"),
    ],
)
def test_aliases_fill_the_canonical_field(alias: str, value: Any, field: str, expected: Any) -> None:
    summary = validate_item(item("T", **{alias: value}), where="notes.jsonl:1")
    assert getattr(summary, field) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-03", datetime(2026, 11, 3, 0, 0, tzinfo=UTC)),
        ("2026-11-03T10:15:00", datetime(2026, 11, 3, 10, 15, tzinfo=UTC)),
        ("2026-11-03T10:15:00Z", datetime(2026, 11, 3, 10, 15, tzinfo=UTC)),
        ("2026-11-03T10:15:00-05:00", datetime(2026, 11, 3, 15, 15, tzinfo=UTC)),
    ],
)
def test_dates_are_stored_as_utc(value: str, expected: datetime) -> None:
    published = validate_item(item("T", date=value), where="x").published_at
    assert published == expected
    assert published is not None and published.utcoffset() is not None


def test_a_field_given_under_two_names_is_rejected() -> None:
    with pytest.raises(IngestError, match=r"x: fields 'url' and 'link' mean the same; keep one"):
        validate_item(item("T", url="https://example.org/a", link="https://example.org/b"), where="x")


def test_same_paper_gets_the_same_uid_whatever_the_url_decoration() -> None:
    plain = SummaryIn(title="A", summary="s", url="https://example.org/papers/a?page=2")
    decorated = SummaryIn(
        title="B",
        summary="s",
        url="HTTPS://Example.ORG/papers/a/?utm_source=mail&page=2&utm_medium=x#results",
    )
    assert compute_uid(plain) == compute_uid(decorated) == "https://example.org/papers/a?page=2"
    assert compute_uid(SummaryIn(title="A", summary="s", url="https://example.org/a", uid="doi:1")) == "doi:1"


def test_without_url_the_uid_is_a_hash_of_title_source_and_date() -> None:
    def uid(title: str, **fields: Any) -> str:
        return compute_uid(validate_item(item(title, **fields), where="x"))

    base = uid(title="Sleep  and Memory", source="J", date="2026-11-03")
    assert base.startswith("sha256:")
    assert base == uid(title="sleep and memory ", source="j", date="2026-11-03T18:00:00Z")
    assert base != uid(title="Sleep and Memory", source="J", date="2026-11-04")
    assert base != uid(title="Sleep and Mood", source="J", date="2026-11-03")


# --- storing -------------------------------------------------------------------------------------


def test_ingest_stores_every_field_and_the_origin(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path, "paper.md", PAPER_MD)
    report = ingest_paths(engine, [path])

    assert (report.added, report.rejected) == (1, [])
    [row] = all_rows(engine)
    assert row.uid == "paper-42"
    assert row.origin == str(path)
    assert row.tags == ["sleep", "memory"]
    assert row.key_points == ["Spindle density tracks recall", "Sleep time does not explain it"]
    assert row.image_alt == "An EEG trace with spindles highlighted"
    assert row.issue_id is None


def test_reingesting_an_unchanged_file_changes_nothing(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path, "notes.jsonl", jsonl(item("A", date="2026-11-03"), item("B")))
    ingest_paths(engine, [path])
    before = {row.uid: row.updated_at for row in all_rows(engine)}

    report = ingest_paths(engine, [path])

    assert report.summary_line() == "added 0, updated 0, unchanged 2, rejected 0"
    assert {row.uid: row.updated_at for row in all_rows(engine)} == before


def test_editing_a_file_updates_rows_without_duplicating(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path, "notes.jsonl", jsonl(item("A", url="https://example.org/a"), item("B")))
    ingest_paths(engine, [path])
    [first_a, _] = all_rows(engine)

    revised = jsonl(item("A, revised", url="https://example.org/a/"), item("B"), item("C"))
    write(tmp_path, "notes.jsonl", revised)
    report = ingest_paths(engine, [path])

    assert (report.added, report.updated, report.unchanged) == (1, 1, 1)
    rows = all_rows(engine)
    assert [row.title for row in rows] == ["A, revised", "B", "C"]
    assert rows[0].id == first_a.id
    assert rows[0].ingested_at == first_a.ingested_at
    assert rows[0].updated_at > first_a.updated_at


def test_a_summary_already_in_an_issue_stays_attached_when_updated(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path, "paper.md", PAPER_MD)
    ingest_paths(engine, [path])
    with session(engine) as db, db.begin():
        issue = Issue(
            number=1,
            period_start=datetime(2026, 11, 9, tzinfo=UTC),
            period_end=datetime(2026, 11, 16, tzinfo=UTC),
            subject="Research Weekly #1",
        )
        db.add(issue)
        db.flush()
        db.exec(select(Summary)).one().issue_id = issue.id

    write(tmp_path, "paper.md", PAPER_MD.replace("remembered more", "recalled more word pairs"))
    report = ingest_paths(engine, [path])

    [row] = all_rows(engine)
    assert report.updated == 1
    assert row.summary == "Older adults with more spindles recalled more word pairs."
    assert row.issue_id == issue.id


def test_the_last_of_two_items_with_one_uid_wins(engine: Engine, tmp_path: Path) -> None:
    text = jsonl(item("Draft", id="p1"), item("Final", id="p1"))
    report = ingest_paths(engine, [write(tmp_path, "notes.jsonl", text)])

    assert report.added == 1
    assert [row.title for row in all_rows(engine)] == ["Final"]


def test_a_bad_file_is_rejected_whole_and_the_good_ones_go_in(engine: Engine, tmp_path: Path) -> None:
    write(tmp_path, "a-good.md", PAPER_MD)
    write(tmp_path, "b-bad.jsonl", jsonl(item("Valid first line"), {"summary": "no title"}))
    write(tmp_path, "c-good.json", json.dumps([item("Good JSON")]))

    report = ingest_paths(engine, [tmp_path])

    assert report.summary_line() == "added 2, updated 0, unchanged 0, rejected 1"
    assert report.rejected[0].path == tmp_path / "b-bad.jsonl"
    assert [row.title for row in all_rows(engine)] == ["Good JSON", "Sleep spindles predict recall"]


def test_a_bad_file_in_the_middle_of_a_transaction_is_rejected_whole_and_the_rest_of_it_goes_in(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("newsletter.ingest.store.FILES_PER_TRANSACTION", 3)  # files 1-3, 4-6 and 7 together
    folder = tmp_path / "in"
    for number in (1, 2, 3, 4, 6, 7):
        write(folder, f"{number}.jsonl", jsonl(item(f"Paper {number}", id=f"p{number}")))
    # the fifth file, in the middle of the second transaction: a good first item, then a bad one
    write(folder, "5.jsonl", jsonl(item("Paper 5", id="p5"), item("Paper 5b", id="p5b", url="example.org/5b")))
    seen: list[str] = []

    report = ingest_paths(engine, [folder], on_file=lambda path: seen.append(path.name))

    assert report.summary_line() == "added 6, updated 0, unchanged 0, rejected 1"
    assert report.rejected[0].path == folder / "5.jsonl" and "5.jsonl:2: field 'url'" in report.rejected[0].message
    assert seen == [f"{number}.jsonl" for number in range(1, 8)]
    stored = {row.uid: row for row in all_rows(engine)}
    assert sorted(stored) == ["p1", "p2", "p3", "p4", "p6", "p7"]  # nothing of 5.jsonl, not even its good item
    assert all(stored[f"p{number}"].origin == str(folder / f"{number}.jsonl") for number in (1, 2, 3, 4, 6, 7))
    assert report.ids == [stored[uid].id for uid in ("p1", "p2", "p3", "p4", "p6", "p7")]


def test_a_summary_in_two_files_of_one_transaction_is_added_then_updated_by_the_later(
    engine: Engine, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    write(folder, "a.jsonl", jsonl(item("Draft", id="p1"), item("Other", id="p2")))
    write(folder, "b.jsonl", jsonl(item("Final", id="p1")))
    write(folder, "c.jsonl", jsonl(item("Other", id="p2")))

    report = ingest_paths(engine, [folder])

    assert report.summary_line() == "added 2, updated 1, unchanged 1, rejected 0"
    rows = {row.uid: row for row in all_rows(engine)}
    assert (rows["p1"].title, rows["p1"].origin) == ("Final", str(folder / "b.jsonl"))
    assert (rows["p2"].title, rows["p2"].origin) == ("Other", str(folder / "a.jsonl"))  # unchanged: origin kept


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "notes.jsonl",
            jsonl(item("A"), item("B")) + json.dumps({"tilte": "C", "summary": "s"}) + "\n",
            "notes.jsonl:3: unknown field 'tilte'; allowed fields: title, summary, url (or link), ",
        ),
        ("notes.jsonl", jsonl(item("A"), {"summary": "s"}), "notes.jsonl:2: field 'title' is required"),
        ("notes.jsonl", jsonl(item("A")) + '{"title": "B",\n', "notes.jsonl:2: not valid JSON"),
        ("notes.jsonl", jsonl(item("A", url="example.org/a")), "notes.jsonl:1: field 'url': 'example.org/a'"),
        ("notes.jsonl", jsonl(item("A", tags=["ok", 3])), "notes.jsonl:1: field 'tags[1]': "),
        ("notes.jsonl", jsonl(item("")), "notes.jsonl:1: field 'title' is empty"),
        ("list.json", '[\n  {"title": "A",\n   "summary": }\n]', "list.json:3: not valid JSON"),
        ("list.json", json.dumps([item("A"), {"title": "B"}]), "list.json:1: item at index 1: field 'sum"),
        ("list.json", json.dumps(item("A", date="next week")), "list.json:1: field 'date': 'next week' is"),
        ("paper.md", "---\ntitle: A\nsource: J: K\n---\n", "paper.md:3: front matter is not valid YAML"),
        ("paper.md", "Just a paragraph.\n", "paper.md:1: no front matter"),
        ("paper.md", "---\ntitle: A\n", "paper.md: the front matter is not closed"),
        ("paper.md", "---\nsource: J\n---\nA paragraph.\n", "paper.md: field 'title' is required"),
        ("paper.md", "---\ntitle: A\n---\n## Only a heading\n", "paper.md: no summary; add 'summary:'"),
    ],
)
def test_rejections_name_the_file_the_line_and_the_field(
    engine: Engine, tmp_path: Path, name: str, text: str, expected: str
) -> None:
    path = write(tmp_path, name, text)
    message = only_message(ingest_paths(engine, [path]))

    assert message.startswith(str(tmp_path) + "/")
    assert expected in message
    assert all_rows(engine) == []


def test_an_impossible_front_matter_date_rejects_that_file_only(engine: Engine, tmp_path: Path) -> None:
    good = write(tmp_path, "a-good.md", PAPER_MD)
    bad = write(tmp_path, "b-typo.md", "---\ntitle: A\nsource: J\ndate: 2026-11-31\n---\nA paragraph.\n")

    report = ingest_paths(engine, [good, bad])

    assert report.summary_line() == "added 1, updated 0, unchanged 0, rejected 1"
    message = f"{bad}:4: date: 2026-11-31 is not a real date (day is out of range for month); use YYYY-MM-DD"
    assert report.rejected == [Rejection(bad, message)]
    assert [row.title for row in all_rows(engine)] == ["Sleep spindles predict recall"]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "paper.md",
            "---\ntitle: A\npublished_at: 2026-11-03 25:00:00\n---\nP.\n",
            ":3: published_at: 2026-11-03 25:00:00 is not a real date and time (hour must be in 0..23); "
            "use YYYY-MM-DD HH:MM:SS+01:00",
        ),
        (
            "paper.md",
            "---\ntitle: A\nkey_points:\n  - fine\n  - 2026-02-30\n---\nP.\n",
            ":5: key_points: 2026-02-30 is not a real date (day is out of range for month); use YYYY-MM-DD",
        ),
        (
            "paper.md",
            f"---\ntitle: A\nid: {'9' * 5000}\n---\nP.\n",
            f":3: id: {'9' * 40}... cannot be read (Exceeds the limit",  # Python's words, then ours:
        ),
        (
            "paper.md",
            "---\ntitle: A\ndate: 0001-01-01 00:00:00 +01:00\n---\nP.\n",
            ":3: field 'date': 0001-01-01T00:00:00+01:00 is out of range once converted to UTC; check the",
        ),
        ("paper.md", "---\ntitle: A\nurl: http://[::1\n---\nP.\n", ":3: field 'url': 'http://[::1' has an unclosed '['"),
        ("paper.md", "---\ntitle: " + "[" * 5000 + "\n---\nP.\n", ": front matter is nested too deeply"),
        (
            "notes.jsonl",
            jsonl(item("A")) + f'{{"title": "B", "summary": "s", "id": {"9" * 5000}}}\n',
            ":2: cannot be read as JSON (Exceeds the limit",
        ),
        ("list.json", "[" * 100_000 + "]" * 100_000, ": arrays or objects are nested too deeply to read"),
        (
            "list.json",
            json.dumps(item("A", date="9999-12-31T23:00:00-05:00")),
            ":1: field 'date': 9999-12-31T23:00:00-05:00 is out of range once converted to UTC",
        ),
    ],
)
def test_values_python_cannot_build_reject_the_file_with_its_line(
    engine: Engine, tmp_path: Path, name: str, text: str, expected: str
) -> None:
    path = write(tmp_path, name, text)
    good = write(tmp_path, "good.jsonl", jsonl(item("Good")))

    report = ingest_paths(engine, [path, good])

    assert only_message(report).startswith(f"{path}{expected}")
    assert [row.title for row in all_rows(engine)] == ["Good"]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "paper.md",
            "---\ntitle: A\nsource: J\n\nurl: example.org/a\n---\nP.\n",
            ":5: field 'url': 'example.org/a' must be an absolute http(s) URL",
        ),
        ("paper.md", "---\ntitle: A\ntags:\n  - ok\n  - [no]\n---\nP.\n", ":3: field 'tags[1]': "),
        ("paper.md", "---\ntitle: A\n\ntilte: B\n---\nP.\n", ":4: unknown field 'tilte'; allowed fields: "),
        ("paper.md", "---\nsummary: s\n---\n", ": field 'title' is required"),
        (
            "one.json",
            json.dumps(item("A", url="https://example.org/a", date="next week"), indent=2),
            ":5: field 'date': 'next week' is not an ISO date",
        ),
        ("one.json", '\n\n{"summary": "s"}', ":3: field 'title' is required"),
        (
            "list.json",
            json.dumps([item("A"), item("B"), item("C", link="ftp://x")], indent=2),
            ":13: item at index 2: field 'link': 'ftp://x' must be",
        ),
        ("list.json", json.dumps([item("A"), {"title": "B"}], indent=2), ":6: item at index 1: field 'summ"),
        ("list.json", '[\n  {"title": "A", "summary": "s"},\n  "B"\n]', ":3: item at index 1: expected an"),
    ],
)
def test_field_errors_name_the_line_of_the_field_or_of_the_item(
    engine: Engine, tmp_path: Path, name: str, text: str, expected: str
) -> None:
    path = write(tmp_path, name, text)

    assert only_message(ingest_paths(engine, [path])).startswith(f"{path}{expected}")


class _Raising(Reader):
    file_extensions = (".md",)
    error: Exception = ValueError()

    def read(self, path: Path) -> list[SummaryIn]:
        raise self.error


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (ValueError("day is out of range for month"), "day is out of range for month"),
        (ValueError(), "ValueError"),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "'utf-8' codec can't decode"),
        (ValueError("line one\n  line two"), "line one line two"),
    ],
)
def test_a_value_error_from_any_reader_becomes_a_rejection_of_its_file(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, message: str
) -> None:
    monkeypatch.setattr(_Raising, "error", error)
    monkeypatch.setattr("newsletter.ingest.store.readers_by_extension", lambda: {".md": _Raising})
    bad = write(tmp_path, "bad.md", PAPER_MD)

    report = ingest_paths(engine, [bad])

    assert only_message(report).startswith(f"{bad}: {message}")


def test_a_pydantic_error_from_a_reader_is_described_like_ours(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Direct(Reader):
        file_extensions = (".md",)

        def read(self, path: Path) -> list[SummaryIn]:
            return [SummaryIn.model_validate({"summary": "no title"})]

    monkeypatch.setattr("newsletter.ingest.store.readers_by_extension", lambda: {".md": Direct})
    path = write(tmp_path, "paper.md", PAPER_MD)

    assert only_message(ingest_paths(engine, [path])) == f"{path}: field 'title' is required"


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (TypeError("a bug"), "the OnlyBad failed on it (TypeError: a bug)"),
        (AttributeError("a bug"), "the OnlyBad failed on it (AttributeError: a bug)"),
        (RecursionError(), "the OnlyBad failed on it (RecursionError)"),
        (KeyError("x"), "the OnlyBad failed on it (KeyError: 'x')"),
    ],
)
def test_any_other_failure_of_a_reader_rejects_its_file_and_the_rest_go_in(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, message: str
) -> None:
    class OnlyBad(_Raising):
        def read(self, path: Path) -> list[SummaryIn]:
            return MarkdownReader().read(path) if path.name != "a-bad.md" else super().read(path)

    monkeypatch.setattr(_Raising, "error", error)
    monkeypatch.setattr("newsletter.ingest.store.readers_by_extension", lambda: {".md": OnlyBad})
    bad = write(tmp_path, "a-bad.md", PAPER_MD)
    write(tmp_path, "b-good.md", PAPER_MD)

    report = ingest_paths(engine, [tmp_path])

    assert only_message(report).startswith(f"{bad}: {message}")
    assert "\n" not in only_message(report) and report.added == 1


def test_a_config_error_in_a_reader_is_not_swallowed(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_Raising, "error", ConfigError("bad config"))
    monkeypatch.setattr("newsletter.ingest.store.readers_by_extension", lambda: {".md": _Raising})

    with pytest.raises(ConfigError):
        ingest_paths(engine, [write(tmp_path, "paper.md", PAPER_MD)])


CONTROLS = {"NUL": "\x00", "ESC": "\x1b", "DEL": "\x7f", "C1": "\x9b", "U+FFFE": "\ufffe"}


@pytest.mark.parametrize("control", CONTROLS.values(), ids=CONTROLS.keys())
def test_a_control_character_in_front_matter_rejects_that_file_only(
    tmp_path: Path, control: str
) -> None:
    from tests.test_cli import config_file, invoke

    folder = tmp_path / "in"
    poisoned = write(folder, "a-poisoned.md", PAPER_MD.replace("Journal of Sleep", f"Journal{control} of Sleep"))
    for name in ("b-good.md", "c-good.md"):
        write(folder, name, PAPER_MD.replace("paper-42", name))

    result = invoke("ingest", folder, "--config", config_file(tmp_path))

    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{poisoned}:3: the front matter holds the control character U+{ord(control):04X}" in result.output
    assert "added 2, updated 0, unchanged 0, rejected 1" in result.output
def test_a_file_that_is_not_utf8_is_rejected(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(item("Müller"), ensure_ascii=False).encode("latin-1"))

    assert "latin1.jsonl: not UTF-8 text" in only_message(ingest_paths(engine, [path]))


def test_an_unknown_extension_is_rejected_with_the_supported_ones(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path, "notes.docx", "title: A\n")
    message = only_message(ingest_paths(engine, [path]))

    supported = ".atom, .htm, .html, .json, .jsonl, .markdown, .md, .rss, .txt, .xml"
    assert message == f"{path}: no reader for '.docx' files; supported extensions: {supported}"


def test_a_missing_path_is_a_rejection_and_the_rest_still_goes_in(engine: Engine, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.md"
    good = write(tmp_path, "good.jsonl", jsonl(item("A")))

    report = ingest_paths(engine, [missing, good])

    assert report.rejected == [Rejection(missing, f"{missing}: no such file or folder; check the path")]
    assert report.added == 1


def test_folders_are_walked_in_order_skipping_hidden_and_unsupported_files(
    engine: Engine, tmp_path: Path
) -> None:
    write(tmp_path, "b.jsonl", jsonl(item("B")))
    write(tmp_path, "sub/a.JSON", json.dumps(item("A")))
    write(tmp_path, "a.md", PAPER_MD)
    write(tmp_path, "README.rst", "not a summary")
    write(tmp_path, ".draft.md", "not even front matter")
    write(tmp_path, ".git/notes.jsonl", "{broken")
    seen: list[Path] = []

    report = ingest_paths(engine, [tmp_path], on_file=seen.append)

    expected = [tmp_path / "a.md", tmp_path / "b.jsonl", tmp_path / "sub" / "a.JSON"]
    assert seen == expected == find_files([tmp_path])
    assert report.summary_line() == "added 3, updated 0, unchanged 0, rejected 0"


def test_ingest_items_is_the_same_upsert_for_other_sources(engine: Engine) -> None:
    items = [SummaryIn(title="From the API", summary="s", url="https://example.org/api")]

    assert ingest_items(engine, items, origin="api").added == 1
    assert ingest_items(engine, items, origin="api").unchanged == 1
    [row] = all_rows(engine)
    assert (row.origin, row.uid) == ("api", "https://example.org/api")


def test_the_bundled_samples_ingest_cleanly(engine: Engine) -> None:
    report = ingest_paths(engine, [sample_summaries_dir()])

    assert report.rejected == []
    rows = all_rows(engine)
    assert report.added == len(rows) >= 10
    assert len({row.category for row in rows}) >= 3
    assert sum(row.category == "From the blog" for row in rows) == 2
    assert any(row.image_url and row.image_alt for row in rows)
    assert all(row.summary and row.url and row.published_at for row in rows)
    assert any(not text.isascii() for row in rows for text in (row.title, row.summary, row.body or ""))
    assert ingest_paths(engine, [sample_summaries_dir()]).unchanged == len(rows)


def test_numbers_are_not_dates(engine, tmp_path):
    bad = tmp_path / "year.md"
    bad.write_text("---\ntitle: A\nsummary: S\ndate: 2026\n---\n", encoding="utf-8")
    report = ingest_paths(engine, [bad])
    assert len(report.rejected) == 1 and "2026 is not an ISO date" in report.rejected[0].message


def test_json_lines_keep_unicode_line_separators_inside_strings(engine, tmp_path):
    path = tmp_path / "sep.jsonl"
    path.write_text(
        json.dumps({"title": "Line\u2028separated", "summary": "Para\u2029graph"}, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    report = ingest_paths(engine, [path])
    assert (report.added, report.rejected) == (1, [])


def test_a_link_the_pre_send_checks_would_refuse_is_refused_at_ingest(engine, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"title": "T", "summary": "S.", "url": "https://example.org/x?a=1&b=\\"2"}', encoding="utf-8")
    report = ingest_paths(engine, [bad])
    assert report.added == 0 and len(report.rejected) == 1
    assert "quotes" in str(report.rejected[0]) and "%22" in str(report.rejected[0])


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://localhost:abc/x", "'https://localhost:abc/x' has 'abc' as its port, which must be a number"),
        ("https://example.org:99999/x", "has the port 99999, which does not exist; ports go from 1 to 65,535"),
        ("https://localhost/x", "has the host 'localhost', which readers cannot reach"),
        ("https://[2001:db8::1/x", "has an unclosed '[' in its host"),
        ("https://exa mple.org/x", "contains spaces or control characters; percent-encode them"),
    ],
)
def test_a_bad_url_is_rejected_saying_what_is_wrong_with_it(engine, tmp_path, url, expected):
    path = write(tmp_path, "one.jsonl", jsonl(item("A", url=url)))
    message = only_message(ingest_paths(engine, [path]))
    assert message.startswith(f"{path}:1: field 'url': ") and expected in message
    if "space" not in expected:
        assert "percent-encode" not in message  # advice about characters only where characters are at fault


# --- Markdown is rendered; a missing summary is the same extractive summary in every reader ---------------

LONG_PARAGRAPH = (
    "Older adults with **denser** sleep spindles [remembered more](https://example.org/recall) word pairs the "
    "next morning, in a home study of 212 people. The link held after accounting for total sleep time and "
    "sleep efficiency. It was strongest for pairs learned just before bed, when spindles were most frequent. "
    "The authors argue that spindle density is a cheap marker for trials of memory interventions in old age. "
    "A follow-up will test whether boosting spindles with timed sounds improves recall."
)
LONG_TEXT = LONG_PARAGRAPH.replace("**denser**", "denser").replace(
    "[remembered more](https://example.org/recall)", "remembered more"
)


def test_markdown_files_are_rendered_to_clean_text_like_the_api(tmp_path: Path) -> None:
    path = write(tmp_path, "paper.md", """\
        ---
        title: Spindles
        summary: "**Denser** spindles, [better](https://example.org/b) recall."
        ---
        Older adults with **denser** spindles [remembered more](https://example.org/r).

        ## Details

        - *Home* EEG, `two` nights
        <script>alert(1)</script>

        ## Key findings

        - **Spindle** density [tracks](https://example.org/t) recall
        - 1. not a list
        """)
    [item] = MarkdownReader().read(path)
    assert item.summary == "Denser spindles, better recall."
    assert item.key_points == ["Spindle density tracks recall", "1. not a list"]
    assert item.body == "Older adults with denser spindles remembered more.\n\nDetails\n\n• Home EEG, two nights"
    everything = " ".join([item.summary, item.body, *item.key_points])
    for raw in ("**", "](", "##", "`", "<script", "alert"):
        assert raw not in everything


def test_a_long_first_markdown_paragraph_is_cut_at_a_sentence_and_kept_in_the_body(tmp_path: Path) -> None:
    path = write(tmp_path, "paper.md", f"---\ntitle: Spindles\n---\n{LONG_PARAGRAPH}\n\n## Caveats\n\nSmall study.\n")
    assert len(LONG_TEXT) > 400
    [item] = MarkdownReader().read(path)
    assert item.summary == LONG_TEXT.rsplit(" A follow-up", 1)[0]  # within ingest.summary_length (400)
    assert item.body == f"{LONG_TEXT}\n\nCaveats\n\nSmall study."
    reader = MarkdownReader()
    reader.settings = IngestSection(summary_length=120)
    [short] = reader.read(path)
    assert short.summary == "Older adults with denser sleep spindles remembered more word pairs the next morning, in a home study of 212 people."


@pytest.mark.parametrize("name", ["one.json", "list.json", "lines.jsonl"])
def test_json_items_with_only_a_body_get_the_same_extractive_summary(tmp_path: Path, name: str) -> None:
    record = {"title": "Spindles", "body": f"<p>{LONG_TEXT}</p>", "url": "https://example.org/s"}
    text = json.dumps([record]) if name == "list.json" else json.dumps(record)
    path = write(tmp_path, name, text + "\n")
    [item] = read_file(path, readers_by_extension(), IngestSection())
    assert item.summary == LONG_TEXT.rsplit(" A follow-up", 1)[0]
    assert item.body == LONG_TEXT


def test_without_the_html_extra_an_html_page_is_one_rejected_file_saying_what_to_install(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "trafilatura", None)  # as if the extra were not installed
    (tmp_path / "page.html").write_text("<html><head><title>A study</title></head><body><p>It found.</p></body></html>")
    (tmp_path / "note.md").write_text("---\ntitle: A note\nurl: https://example.org/note\n---\nWhat it says.\n")
    report = ingest_paths(engine, [tmp_path])
    assert report.added == 1
    [rejected] = report.rejected
    assert rejected.path == tmp_path / "page.html"
    assert rejected.message.startswith(f"{tmp_path / 'page.html'}: ") and "\n" not in rejected.message
    assert "pip install 'newsletter[html]'" in rejected.message
