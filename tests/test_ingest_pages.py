"""Text (.txt) and HTML pages: golden fields for every sample page, each field on its own, the extractive
summary, sanitising, and property tests that no input makes a reader fail with anything but IngestError.

Regenerate the golden files with ``NEWSLETTER_UPDATE_GOLDEN=1 python -m pytest tests/test_ingest_pages.py``
and review the diff.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from newsletter.config import IngestSection
from newsletter.db import session
from newsletter.errors import IngestError
from newsletter.ingest import ingest_paths
from newsletter.ingest.clean import (
    extractive_summary,
    markdown_to_text,
    normalise_title,
    sanitise,
)
from newsletter.ingest.html import HtmlReader
from newsletter.ingest.text import TextReader, parse_page
from newsletter.models import Summary

PAGES = Path(__file__).parent / "samples" / "pages"
GOLDEN = Path(__file__).parent / "golden" / "pages"
SAMPLES = sorted(p for p in PAGES.iterdir() if p.suffix in (".txt", ".html"))


def read(path: Path):
    reader = TextReader() if path.suffix == ".txt" else HtmlReader()
    [item] = reader.read(path)
    return item


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_every_sample_page_reads_to_its_golden_fields(path: Path) -> None:
    fields = read(path).model_dump(mode="json", exclude_none=True)
    golden = GOLDEN / f"{path.stem}.json"
    if os.environ.get("NEWSLETTER_UPDATE_GOLDEN"):
        golden.write_text(json.dumps(fields, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert fields == json.loads(golden.read_text(encoding="utf-8"))


def test_labels_line_gives_category_type_and_paywall() -> None:
    item = read(PAGES / "01-senolytic-paywall.txt")
    assert (item.category, item.article_type, item.paywalled) == ("Longevity & Aging", "Research Paper", True)
    assert read(PAGES / "05-oresund-non-english.txt").paywalled is False  # "Open Access"
    no_marker = read(PAGES / "02-spindles-no-date.txt")
    assert (no_marker.category, no_marker.article_type, no_marker.paywalled) == ("Neuroscience", "Review", None)


def test_header_lines_give_title_subtitle_date_source_and_image() -> None:
    item = read(PAGES / "01-senolytic-paywall.txt")
    assert item.title == "Senolytic cocktail restores muscle repair in aged mice"
    assert item.subtitle == "A two-drug regimen cleared senescent cells and revived muscle stem cells"
    assert item.published_at == datetime(2026, 4, 13, tzinfo=UTC)  # "Monday, April 13, 2026 · 1,204 views"
    assert item.source == "Nature Aging"
    assert item.image_alt.startswith("Cross-section of regenerating mouse muscle")


def test_summary_key_findings_and_body_come_from_their_sections() -> None:
    item = read(PAGES / "01-senolytic-paywall.txt")
    assert item.summary.startswith("Old mice given dasatinib plus quercetin")
    assert item.key_points[0] == "Regenerating fibres were 38% larger in treated old mice than in untreated ones."
    assert len(item.key_points) == 3
    assert item.body.startswith("Detailed Summary\n\nThe team injured")
    assert "Study Limitations\n\n• Only mice were studied" in item.body
    assert "Key Findings" not in item.body and "Old mice given" not in item.body


def test_the_promotional_tail_is_dropped() -> None:
    for path in SAMPLES:
        item = read(path)
        text = " ".join([item.summary, item.body or "", *item.key_points])
        for promo in ("Enjoyed this", "inbox every week", "Reach out", "Subscribe", "+44", "555",
                      "Frequently Asked", "FAQ", "Is the afternoon slump", "Follow us", "©", "suggestions"):
            assert not re.search(rf"{re.escape(promo)}(?!rs)", text), (path.name, promo)  # "Subscribers" is text


def test_missing_parts_are_left_empty_not_invented() -> None:
    no_date = read(PAGES / "02-spindles-no-date.txt")
    assert no_date.published_at is None and no_date.subtitle is None and no_date.image_alt is None
    no_labels = read(PAGES / "03-retina-no-labels.txt")
    assert (no_labels.category, no_labels.article_type, no_labels.paywalled, no_labels.subtitle) == (None,) * 4
    assert no_labels.published_at == datetime(2026, 4, 13, tzinfo=UTC)  # "13 April 2026"
    assert no_labels.title == "Retinal scans spot early cognitive decline a decade ahead"


def test_without_a_summary_section_the_first_paragraph_is_the_summary() -> None:
    item = read(PAGES / "03-retina-no-labels.txt")
    assert item.summary.startswith("Thinning of the retinal nerve fibre layer")
    assert item.body == (
        "The signal remained after accounting for age, education, blood pressure and diabetes, though it "
        "identified risk rather than diagnosing disease."
    )
    assert item.key_points[0] == "Each 10 µm of thinning raised the risk of decline by 14%."  # "*" bullets


def test_a_blog_without_findings_has_no_key_findings_keeps_its_headings_and_drops_its_faq() -> None:
    item = read(PAGES / "04-blog-with-faq.txt")
    assert item.key_points == []  # its headings are not findings: they stay in the body, with their text
    assert "What happens after a big lunch\n\nBlood glucose rises" in item.body
    assert item.published_at == datetime(2026, 3, 2, tzinfo=UTC)  # "March 2, 2026 · 6 min read"
    assert item.source is None and item.category is None
    assert item.body.endswith("• Take a ten-minute walk after eating.")


def test_non_english_characters_survive() -> None:
    item = read(PAGES / "05-oresund-non-english.txt")
    assert item.title == "Seegras kehrt zurück: eelgrass meadows recover in the Øresund after nitrogen cuts"
    assert "«la clarté de l'eau»" in item.summary
    assert "København" in item.key_points[2]
    assert item.image_alt == "Diver above an eelgrass meadow near Helsingør, Denmark"


def test_a_long_first_paragraph_gets_an_extractive_summary_cut_at_a_sentence() -> None:
    item = read(PAGES / "06-peat-long-article.txt")
    assert len(item.summary) <= IngestSection().summary_length
    assert item.summary.endswith("within the first three years.")
    assert item.body.startswith("When drained peatlands")  # the whole paragraph stays in the body


def test_the_summary_length_is_configurable(tmp_path: Path) -> None:
    reader = TextReader()
    reader.settings = IngestSection(summary_length=200)
    [item] = reader.read(PAGES / "06-peat-long-article.txt")
    assert item.summary == (
        "When drained peatlands in northern Germany were flooded again in 2015, researchers expected a long "
        "wait before the land stopped releasing carbon dioxide."
    )


def test_wrapped_lines_join_their_paragraph_or_bullet() -> None:
    item = read(PAGES / "07-fibre-trial-wrapped.txt")
    assert "oat beta-glucan taken" in item.summary
    assert item.key_points[0] == "The peak fell in 54 of the 62 participants, and the effect held over the two-week study period."
    assert item.published_at == datetime(2025, 11, 28, tzinfo=UTC)  # "28th November 2025"


def test_html_main_content_is_extracted_without_navigation_scripts_or_footer() -> None:
    item = read(PAGES / "08-retina-page.html")
    assert item.title == "Retinal scans spot early cognitive decline a decade ahead"
    assert item.summary.startswith("Thinning of the retinal nerve fibre layer")
    assert len(item.key_points) == 3
    everything = json.dumps(item.model_dump(mode="json"))
    for unwanted in ("Topics", "alert", "onerror", "Enjoyed", "©"):
        assert unwanted not in everything


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the page is empty"),
        ("Just a title\n", "no summary"),
        ("A title\nFebruary 30, 2026\n\nSome text here.\n", ":2: 'February 30, 2026' is not a real date"),
    ],
)
def test_unusable_pages_are_rejected_with_a_reason(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "page.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(IngestError, match=problem):
        TextReader().read(path)


def test_oversized_and_non_utf8_files_are_rejected_and_nothing_is_stored(engine, tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_text("A title\n\n" + "Words and more words. " * 100, encoding="utf-8")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Caf\xe9 study\n\nA sentence.".encode("latin-1"))
    report = ingest_paths(engine, [big, latin], settings=IngestSection(max_bytes=1_000))
    messages = sorted(r.message for r in report.rejected)
    assert "is over the limit of 1,000 (ingest.max_bytes)" in messages[0]
    assert "not UTF-8 text" in messages[1]
    with session(engine) as db:
        assert db.exec(select(Summary)).all() == []


def test_pages_ingest_into_the_database_like_any_file(engine) -> None:
    report = ingest_paths(engine, [PAGES])
    assert (report.added, report.rejected) == (len(SAMPLES), [])
    assert ingest_paths(engine, [PAGES]).unchanged == len(SAMPLES)


def test_html_in_fields_is_sanitised_and_titles_normalised() -> None:
    assert sanitise('<p>Safe <b>bold</b></p><script>alert("x")</script><img src=x onerror=alert(1)>') == "Safe bold"
    assert sanitise("p < 0.05 & n > 10") == "p < 0.05 & n > 10"  # not markup: left alone
    assert normalise_title("  A\ttitle\x00 with\u200b\ncontrol\r\n characters ") == "A title with control characters"
    assert markdown_to_text("**Bold** and [a link](https://example.org)\n\n- one\n- two") == "Bold and a link\n\n• one\n• two"


def test_extractive_summary_cuts_at_a_sentence_boundary() -> None:
    text = "First sentence is here. Second one follows it. Third is much longer than the others are."
    assert extractive_summary(text, 50) == "First sentence is here. Second one follows it."
    assert extractive_summary(text, 30) == "First sentence is here."
    assert extractive_summary("One very long sentence without any stop at all", 20) == "One very long…"
    assert extractive_summary(text, 500) == text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=400))
def test_no_text_crashes_the_page_parser_with_anything_but_ingest_error(text: str) -> None:
    try:
        parse_page(text, where="page.txt", summary_length=120)
    except IngestError:
        pass


LINES = st.sampled_from([
    "Summary", "Key Findings", "• a finding", "- another", "* third", "Monday, April 13, 2026 · 12 views",
    "Published in X", "Image: a picture", "NeuroscienceReviewPaywall", "FAQ", "A heading line",
    "A sentence that ends.", "", "February 31, 2026", "<b>bold</b> & <script>x</script>", "Enjoyed this summary?",
])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(LINES, st.text(max_size=40)), max_size=25))
def test_no_page_shaped_text_crashes_the_text_reader(tmp_path_factory, lines: list[str]) -> None:
    path = tmp_path_factory.mktemp("pages") / "page.txt"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    try:
        TextReader().read(path)
    except IngestError:
        pass


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(
    st.sampled_from(["<h1>Title</h1>", "<p>A sentence.</p>", "<ul><li>x</li>", "<script>", "</div>", "<!--",
                     "<h2>Summary</h2>", "&amp;", "<html>", "<body>", "<meta charset='x'>"]),
    st.text(max_size=30)), max_size=20))
def test_no_markup_crashes_the_html_reader(tmp_path_factory, parts: list[str]) -> None:
    path = tmp_path_factory.mktemp("html") / "page.html"
    path.write_text("".join(parts), encoding="utf-8", errors="surrogatepass")
    try:
        HtmlReader().read(path)
    except IngestError:
        pass


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("GeneticsNewsPaywall", {"category": "Genetics", "article_type": "News", "paywalled": True}),
        ("Health & Fitness · Meta-Analysis · Free", {"category": "Health & Fitness", "article_type": "Meta-Analysis", "paywalled": False}),
        ("NeuroscienceSystematic Review", {"category": "Neuroscience", "article_type": "Systematic Review"}),
        ("Paywall", {"paywalled": True}),
    ],
)
def test_labels_lines_in_other_shapes(line: str, expected: dict) -> None:
    data = parse_page(f"{line}\nA title\n\nA sentence of text.", where="p.txt", summary_length=400)
    assert {k: data[k] for k in ("category", "article_type", "paywalled") if k in data} == expected
    assert data["title"] == "A title"


def test_a_title_that_merely_ends_in_a_type_word_is_not_a_labels_line() -> None:
    data = parse_page("Sleep and memory: a Systematic Review\n\nA sentence of text.", where="p.txt", summary_length=400)
    assert data["title"] == "Sleep and memory: a Systematic Review" and "article_type" not in data


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([".md", ".json", ".jsonl", ".txt", ".html", ".xml"]),
       st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_no_text_crashes_any_registered_reader(tmp_path_factory, extension: str, text: str) -> None:
    from newsletter.ingest.base import readers_by_extension
    from newsletter.ingest.store import read_file

    path = tmp_path_factory.mktemp("any") / f"input{extension}"
    path.write_text(text, encoding="utf-8")
    try:
        read_file(path, readers_by_extension(), IngestSection())
    except IngestError:
        pass


def test_a_title_ending_in_a_type_word_above_the_date_stays_the_title() -> None:
    item = read(PAGES / "09-year-of-climate-title-like-labels.txt")
    assert (item.title, item.category, item.article_type) == ("A Year of Climate News", None, None)
    assert item.published_at == datetime(2026, 3, 2, tzinfo=UTC)  # the date line is the date, never the title
    assert "views" not in (item.body or "")  # "12,480 views" on its own line is dropped


def test_the_week_in_review_is_a_title_not_a_labels_line() -> None:
    item = read(PAGES / "10-week-in-review-no-date.txt")
    assert (item.title, item.category, item.article_type) == ("The Week in Review", None, None)
    assert item.summary.startswith("Five studies stood out this week")


def test_a_category_alone_above_the_title_and_date_is_the_category() -> None:
    item = read(PAGES / "11-category-only-labels.txt")
    assert (item.category, item.title, item.subtitle) == (
        "Longevity & Aging", "Two senolytic drugs revive muscle stem cells in old mice", None)
    assert item.source == "Nature Aging" and "1,204" not in (item.body or "")


def test_lines_that_start_like_a_pitch_inside_the_article_are_kept() -> None:
    climate = read(PAGES / "09-year-of-climate-title-like-labels.txt")
    assert "Subscribers to the network's open data service" in climate.body
    assert climate.body.endswith("Sign up rates for the citizen-science rain gauges doubled in the wettest regions, "
                                 "filling gaps in the station record.")  # the last paragraph, right before the tail
    aging = read(PAGES / "11-category-only-labels.txt")
    assert aging.body.endswith("the treated cells produced twice as many new fibres.")
    assert "Reach out" not in aging.body and "+44" not in aging.body


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("March 2, 2026\nA title\n\nA sentence of text.", {"title": "A title", "published_at": datetime(2026, 3, 2, tzinfo=UTC)}),
        ("A title\nMarch 2, 2026\n\nA sentence of text.\n\n1,204 views · 6 min read\n\nMore text here.",
         {"title": "A title", "body": "More text here."}),
        ("Neuroscience Review\nSleep spindles and recall\nMarch 2, 2026\n\nA sentence of text.",
         {"title": "Sleep spindles and recall", "category": "Neuroscience", "article_type": "Review"}),
        ("The Week in Review\nFive studies that stood out\nMarch 2, 2026\n\nA sentence of text.",
         {"title": "The Week in Review", "subtitle": "Five studies that stood out"}),
        ("A title\n\nA sentence of text.\n\nSubscribe to our newsletter\n\nThe article goes on here.",
         {"title": "A title", "body": "Subscribe to our newsletter\n\nThe article goes on here."}),
    ],
)
def test_header_and_tail_shapes(text: str, expected: dict) -> None:
    data = parse_page(text, where="p.txt", summary_length=400)
    assert {key: data.get(key) for key in expected} == expected
    assert data.get("title") != "March 2, 2026"


# --- the generator oracle: pages written from independently varied parts ----------------------------
#
# Each page is put together from parts chosen independently (labels line, subtitle, date format and its
# view count or reading time, source line, image line, blank lines, line endings, headings, the summary
# with or without its closing full stop, a long sentence-case heading under the header, the article going
# on after the summary or not, a source line after the text, tail), the way real summary sites differ.
# Every field put in must come out, no header line may land in the summary, the body or the key findings,
# and every line of text must stay in the text.

CATEGORIES = ["Longevity & Aging", "Neuroscience", "Environmental Science", "Nutrition", "Health & Fitness"]
TYPES = ["Research Paper", "Systematic Review", "Meta-Analysis", "Clinical Trial", "News", "Review"]
ACCESS = [("Paywall", True), ("Open Access", False), ("Free", False), (None, None)]
TITLES = [
    "Senolytic cocktail restores muscle repair in aged mice",
    "Sleep spindles and memory in older adults: what two decades of studies show",
    "Oat fibre before breakfast blunts glucose spikes in type 2 diabetes",
    "Rewetted peatlands cut emissions faster than expected",
]
SUBTITLES = [
    (None, None),
    ("bare", "A two-drug regimen cleared senescent cells and revived muscle stem cells"),
    ("sentence", "A two-drug regimen cleared senescent cells and revived muscle stem cells."),
    ("sentence", "Older adults who slept with denser spindles remembered more word pairs the next morning."),
]
DATE = datetime(2026, 3, 3, tzinfo=UTC)
DATE_FORMATS = [
    "Tuesday, March 3, 2026", "March 3, 2026", "Mar 3, 2026", "3 March 2026", "3rd March 2026",
    "2026-03-03", "Tue, 3 Mar 2026", "Mar. 3, 2026",
]
DATE_TAILS = ["", " · 1,204 views", " 12 views", " · 6 min read", " | 3.4K views · 6 min read", " • 890 views"]
SOURCES = ["Published in {}", "Published in: {}", "Source: {}", "Journal: {}"]
JOURNALS = ["Nature Aging", "Sleep Medicine Reviews", "Global Change Biology", "Estuarine, Coastal and Shelf Science"]
IMAGES = [
    (None, "{}"), ("prefix", "Image: {}"), ("prefix", "Image description: {}"), ("prefix", "Photo: {}"),
    ("bare", "{}"),
]
ALTS = [
    "Cross-section of regenerating mouse muscle fibres stained in green and magenta",
    "Diver above an eelgrass meadow near Helsingør, Denmark, with the coast in the background",
    "A continuous glucose monitor on the upper arm of a trial participant at breakfast",
]
SUMMARIES = [
    "Old mice given dasatinib plus quercetin for three weeks repaired injured leg muscle almost as well as "
    "young mice. Clearing senescent cells appears to let stem cells divide again.",
    "A two-drug regimen given for three weeks revived the muscle stem cells of old mice and let injured "
    "fibres regrow.",
]
LEAD_HEADINGS = [  # sentence-case headings of 8+ words: not image descriptions
    None, "Why this matters for people with type 2 diabetes today",
    "What the new results mean for older adults with weak muscles",
]
FINDINGS = ["Regenerating fibres were 38% larger in treated old mice.", "p16-positive cells fell by 52%.",
            "Grip strength recovered to 91% of the young baseline."]
TAILS = [
    [],
    ["Enjoyed this summary? Get the best new research in your inbox every week.", "Subscribe"],
    ["FAQ", "Is this a real study?", "Yes, published in a peer-reviewed journal.",
     "Reach out to us today for a research briefing."],
    ["Contact us: +44 20 7946 0958", "© 2026 Example Digest"],
]


@dataclass
class GeneratedPage:
    text: str
    expected: dict
    header_text: list[str]  # what must not appear in summary, body or key points
    kept: list[str]  # what must appear in the summary or the body
    parts: dict


def generate_page(rng: random.Random) -> GeneratedPage:
    parts = {
        "labels": rng.choice(["none", "run-together", "separated"]),
        "category": rng.choice(CATEGORIES), "type": rng.choice(TYPES), "access": rng.choice(ACCESS),
        "title": rng.choice(TITLES), "subtitle": rng.choice(SUBTITLES),
        "date": rng.choice([None, *DATE_FORMATS]), "date_tail": rng.choice(DATE_TAILS),
        "source": rng.choice([None, *SOURCES]), "journal": rng.choice(JOURNALS),
        "image": rng.choice(IMAGES), "alt": rng.choice(ALTS),
        "blank_between_header_lines": rng.random() < 0.5, "crlf": rng.random() < 0.5,
        "colons": rng.random() < 0.5, "summary_heading": rng.random() < 0.7, "findings": rng.random() < 0.7,
        "source_first": rng.random() < 0.3, "tail": rng.choice(TAILS),
        "summary": rng.choice(SUMMARIES), "summary_stop": rng.random() < 0.5,
        "lead_heading": rng.choice(LEAD_HEADINGS), "lead_heading_gap": rng.random() < 0.5,
        "goes_on": rng.random() < 0.6, "source_at_end": rng.random() < 0.2,
    }
    expected: dict = {"title": parts["title"]}
    header_text: list[str] = []
    kept: list[str] = []  # lines of text that must stay in the summary or the body
    lines: list[str] = []
    access_label, paywalled = parts["access"]
    if parts["labels"] != "none":
        labels = [parts["category"], parts["type"], *([access_label] if access_label else [])]
        lines.append(("" if parts["labels"] == "run-together" else " · ").join(labels))
        expected.update(category=parts["category"], article_type=parts["type"])
        if paywalled is not None:
            expected["paywalled"] = paywalled
    header = [parts["title"]]
    kind, subtitle = parts["subtitle"]
    image_kind, image_format = parts["image"]
    source_in_header = parts["source"] and not parts["source_at_end"]
    if image_kind == "bare" and not (parts["date"] or source_in_header):
        image_kind = None  # a bare description is only told from the text after a date or source line
    if subtitle and (parts["date"] or source_in_header or image_kind):  # a subtitle is only told from the text by what follows it
        header.append(subtitle)
        expected["subtitle"] = subtitle
        header_text.append(subtitle)
    dated = [f"{parts['date']}{parts['date_tail']}"] if parts["date"] else []
    sourced = [parts["source"].format(parts["journal"])] if source_in_header else []
    header += (sourced + dated) if parts["source_first"] else (dated + sourced)
    if parts["date"]:
        expected["published_at"] = DATE
        header_text.append(dated[0])
    if source_in_header:
        expected["source"] = parts["journal"]
        header_text.append(sourced[0])
    if parts["blank_between_header_lines"]:
        header = [line for pair in zip(header, [""] * len(header), strict=True) for line in pair][:-1]
    if image_kind:  # a bare description is only told from the text by the header line right above it
        header += [image_format.format(parts["alt"])] if image_kind == "bare" or not parts[
            "blank_between_header_lines"] else ["", image_format.format(parts["alt"])]
        expected["image_alt"] = parts["alt"]
        header_text.append(parts["alt"])
    lines += header + [""]
    colon = ":" if parts["colons"] else ""
    if parts["lead_heading"]:  # a heading of the text right under the header, its text below it
        lines += [parts["lead_heading"], *([""] if parts["lead_heading_gap"] else [])]
        kept.append(parts["lead_heading"])
    summary = parts["summary"] if parts["summary_stop"] else parts["summary"].rstrip(".")
    if parts["summary_heading"]:
        lines += [f"Summary{colon}", summary, ""]
    else:
        lines += [summary, ""]
    expected["summary"] = summary
    if parts["findings"]:
        lines += [f"Key Findings{colon}", *(f"• {finding}" for finding in FINDINGS), ""]
        expected["key_points"] = FINDINGS
    else:
        expected["key_points"] = []
    if parts["goes_on"]:
        lines += [f"How the Drug Acts on the Brain{colon}", "The drugs cleared p16-positive cells from the niche.", ""]
        kept.append("The drugs cleared p16-positive cells from the niche.")
    if parts["source"] and parts["source_at_end"]:  # after the text it is text, never read as the source
        lines += [parts["source"].format(parts["journal"]), ""]
        kept.append(parts["source"].format(parts["journal"]))
        if parts["summary_heading"] and not (parts["findings"] or parts["goes_on"]):
            expected["summary"] += "\n\n" + kept[-1]  # the last paragraph of the Summary section
    lines += parts["tail"]
    newline = "\r\n" if parts["crlf"] else "\n"
    return GeneratedPage(newline.join(lines) + newline, expected, header_text, kept, parts)


def test_generated_pages_give_back_every_header_field_and_nothing_of_the_header_in_the_text() -> None:
    rng = random.Random(20260303)
    pages = [generate_page(rng) for _ in range(600)]
    failures = []
    for number, page in enumerate(pages):
        try:
            data = parse_page(page.text, where=f"page{number}.txt", summary_length=400)
        except IngestError as exc:
            failures.append(f"{number}: {exc}\n{page.text}")
            continue
        got = {key: data.get(key, [] if key == "key_points" else None) for key in page.expected}
        unexpected = {key: data[key] for key in ("subtitle", "image_alt", "category", "article_type", "paywalled",
                                                  "source", "published_at") if key in data and key not in page.expected}
        text = "\n".join([data.get("summary", ""), data.get("body", "") or "", *data.get("key_points", [])])
        lost = [line for line in page.kept if line not in text]
        for line in page.kept:
            text = text.replace(line, "")
        leaked = [part for part in page.header_text if part in text]
        leaked += [word for word in ("views", "min read", "Published in", "Source:", "Image:", "Photo:") if word in text]
        tail = [line for line in page.parts["tail"] if line in text]
        if got != page.expected or unexpected or leaked or tail or lost:
            failures.append(
                f"{number}: {page.parts}\n  wrong: {[(k, got[k], v) for k, v in page.expected.items() if got[k] != v]}"
                f"\n  unexpected: {unexpected}\n  leaked: {leaked}\n  tail kept: {tail}\n  lost: {lost}\n{page.text}"
            )
    assert not failures, f"{len(failures)} of {len(pages)} pages read wrong; the first:\n" + "\n".join(failures[:3])


def test_the_page_generator_varies_every_part_independently() -> None:
    rng = random.Random(20260303)
    parts = [generate_page(rng).parts for _ in range(600)]
    combinations = {tuple(sorted((k, str(v)) for k, v in p.items())) for p in parts}
    assert len(combinations) >= 500
    for key, options in {
        "labels": {"none", "run-together", "separated"}, "date": {None, *DATE_FORMATS}, "date_tail": set(DATE_TAILS),
        "source": {None, *SOURCES}, "image": set(IMAGES), "subtitle": set(SUBTITLES), "crlf": {True, False},
        "blank_between_header_lines": {True, False}, "colons": {True, False}, "tail": {tuple(t) for t in TAILS},
        "summary": set(SUMMARIES), "summary_stop": {True, False}, "lead_heading": set(LEAD_HEADINGS),
        "lead_heading_gap": {True, False}, "goes_on": {True, False}, "source_at_end": {True, False},
    }.items():
        seen = {tuple(p[key]) if isinstance(p[key], list) else p[key] for p in parts}
        assert seen == options, key


def test_the_header_shapes_of_real_pages_that_used_to_be_lost() -> None:
    # A subtitle that is a whole sentence, date, source and image lines with no blank line between them,
    # an image description without "Image:", and a view count with no separator after the date.
    item = read(PAGES / "12-sentence-subtitle-bare-image.txt")
    assert item.subtitle.endswith("not on the drug's other targets.")
    assert (item.published_at, item.source) == (datetime(2026, 3, 3, tzinfo=UTC), "Molecular Psychiatry")
    assert item.image_alt == "Fluorescence image of prefrontal neurons with GluN2B receptors labelled in red"
    assert item.summary.startswith("Mice lacking the GluN2B subunit") and "views" not in item.body
    assert item.key_points == [] and item.body.startswith("How the Drug Acts on the Brain\n\nKetamine blocks")


def test_an_article_without_a_findings_section_has_no_key_findings() -> None:
    data = parse_page(
        "Why the new drug works\nMarch 3, 2026\n\nA sentence of summary text.\n\n"
        "How the Drug Acts on the Brain\nIt binds to a receptor.\n\nWhat Comes Next\nLarger trials.\n",
        where="p.txt", summary_length=400,
    )
    assert "key_points" not in data
    assert data["body"] == "How the Drug Acts on the Brain\n\nIt binds to a receptor.\n\nWhat Comes Next\n\nLarger trials."


# --- lines that only look like a subtitle or an image description -------------------------------------


def test_the_only_paragraph_before_a_source_line_is_the_summary_not_a_subtitle() -> None:
    data = parse_page("A title\n\nOne paragraph of text.\n\nSource: Nature Aging\n", where="p.txt", summary_length=400)
    assert data["summary"] == "One paragraph of text." and "subtitle" not in data
    assert data["body"] == "Source: Nature Aging"  # after the text, the line is text: nothing is lost


def test_a_paragraph_that_follows_a_header_line_is_still_a_subtitle_when_the_text_goes_on() -> None:
    data = parse_page("A title\n\nA phrase under the title.\n\nMarch 3, 2026\n\nThe text of the page.\n",
                      where="p.txt", summary_length=400)
    assert (data["subtitle"], data["summary"]) == ("A phrase under the title.", "The text of the page.")


NO_STOP = "Old mice given the two drugs for three weeks revived the stem cells in their muscle for weeks"


@pytest.mark.parametrize("after", ["", "\n\nA second paragraph of text.\n"], ids=["only-paragraph", "text-goes-on"])
def test_a_summary_without_a_closing_full_stop_after_the_date_is_the_summary(after: str) -> None:
    data = parse_page(f"A title\nMarch 3, 2026\n\n{NO_STOP}{after}", where="p.txt", summary_length=400)
    assert data["summary"] == NO_STOP and "image_alt" not in data


def test_a_lone_line_right_under_the_date_is_the_text_when_it_is_the_only_paragraph() -> None:
    data = parse_page(f"A title\nMarch 3, 2026\n{NO_STOP}\n", where="p.txt", summary_length=400)
    assert data["summary"] == NO_STOP and "image_alt" not in data


def test_a_summary_of_sentences_without_the_last_full_stop_is_never_an_image_description() -> None:
    text = "The drugs cleared old cells. Stem cells then divided again in the muscle of old mice"
    data = parse_page(f"A title\nMarch 3, 2026\n{text}\n\nMore text here.\n", where="p.txt", summary_length=400)
    assert data["summary"] == text and "image_alt" not in data


def test_a_long_sentence_case_heading_after_the_date_stays_a_heading_in_the_body() -> None:
    heading = "Why this matters for people with type 2 diabetes today"
    data = parse_page(f"A title\nMarch 3, 2026\n\n{heading}\n\nIt changes the advice they get.\n\nMore text.\n",
                      where="p.txt", summary_length=400)
    assert "image_alt" not in data
    assert heading in data["body"]


def test_a_paragraph_after_the_key_findings_bullets_stays_in_the_body() -> None:
    data = parse_page("A title\n\nThe summary of the page.\n\nKey Findings\n• One finding.\n• Another.\n\n"
                      "A closing paragraph after the list.\n", where="p.txt", summary_length=400)
    assert data["key_points"] == ["One finding.", "Another."]
    assert data["body"] == "A closing paragraph after the list."
