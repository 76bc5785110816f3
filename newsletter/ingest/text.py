"""Plain-text pages (``.txt``) as copied from a summary site or a blog.

The shape we read, every part but the title optional::

    Longevity & AgingResearch PaperPaywall       <- labels run together (or " · "): category, type, access
    Senolytic cocktail restores muscle repair     <- title
    A two-drug regimen revived stem cells.        <- subtitle: a phrase or a sentence, before a header line
    Monday, April 13, 2026 · 1,204 views          <- date (a view count or reading time may follow)
    Published in Nature Aging                     <- source ("Published in:", "Source:", "Journal:")
    Image: regenerating muscle fibres             <- image description (also without "Image:", see below)
    Summary                                       <- headed sections; bullets start with •, - or *
    ...
    Enjoyed this summary? ... inbox every week    <- promotional tail at the very end: dropped

The header zone (everything before the first section heading or paragraph) is read line by line, each
line classified on its own, in any order, with or without blank lines between: so one unexpected line
does not push the rest into the text. Two header lines are known by their place, not their shape (the
subtitle, an image description without ``Image:``); neither is ever the page's only paragraph, which is
its text. docs/ingest.md lists the shapes and what is never guessed.
:func:`parse_page` turns such text into the fields of a summary and is shared with the HTML reader. It
never invents a field: what it does not find stays empty.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from newsletter.errors import IngestError
from newsletter.ingest.base import Reader, SummaryIn, read_text, validate_item
from newsletter.ingest.clean import extractive_summary, strip_controls

ARTICLE_TYPES = (
    "Research Paper", "Systematic Review", "Review Article", "Review", "Meta-Analysis", "Clinical Trial",
    "Preprint", "Case Study", "Cohort Study", "Observational Study", "News", "Opinion", "Commentary",
    "Editorial", "Perspective", "Explainer", "Blog Post", "Article", "Interview",
)
ACCESS_MARKERS = {"Paywall": True, "Paywalled": True, "Subscribers Only": True, "Open Access": False,
                  "Free Access": False, "Free": False}

_SEPARATORS = r"\s·|•,/\-–"  # between labels (a regex class body)
_SEPARATOR_CHARS = " \t·|•,/-–"


def _label_at_end(labels: Iterable[str]) -> re.Pattern[str]:
    """One of ``labels`` at the end of a line, after a separator or run together with the word before it."""
    return re.compile(rf"(?:^|(?<=[a-z&).{_SEPARATORS}]))({'|'.join(map(re.escape, labels))})[{_SEPARATORS}]*$")


_TYPE_AT_END = _label_at_end(ARTICLE_TYPES)
_ACCESS_AT_END = _label_at_end(ACCESS_MARKERS)
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
           "october", "november", "december")
_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_VIEWS_OR_READ = r"(?:[\d.,]+\s*[km]?\s+views?|\d+\s*min(?:ute)?s?\s+read)"  # "1,204 views", "6 min read"
_DATE_LINE = re.compile(
    rf"^(?:(?:mon|tue|tues|wed|wednes|thu|thur|thurs|fri|sat|satur|sun)(?:day)?\.?,?\s+)?"
    rf"(?:(?P<m1>{_MONTH})\s+(?P<d1>\d{{1,2}})(?:st|nd|rd|th)?,?\s+(?P<y1>\d{{4}})"
    rf"|(?P<d2>\d{{1,2}})(?:st|nd|rd|th)?\s+(?P<m2>{_MONTH}),?\s+(?P<y2>\d{{4}})"
    rf"|(?P<iso>\d{{4}}-\d{{2}}-\d{{2}}))"
    rf"(?:\s*[·•|,–-]?\s*{_VIEWS_OR_READ})*\s*$",
    re.IGNORECASE,
)
_SOURCE_LINE = re.compile(  # "Published in Nature Aging", "Published in: ...", "Source: ...", "Journal: ..."
    r"^(?:(?:originally\s+)?published\s+in\s*:?|source\s*:|journal\s*:)\s*(?P<source>\S.*?)\.?$", re.IGNORECASE
)
_IMAGE = re.compile(
    r"^\[?(?:image(?:\s+description)?|photo|illustration|figure|picture)\s*[:–-]\s*(?P<alt>.+?)\]?$",
    re.IGNORECASE,
)
_BULLET = re.compile(r"^\s*(?:[•*\-–·▪◦]|\d+[.)])\s*(?P<text>\S.*)$")
_SUMMARY_HEADING = re.compile(r"^(?:summary|tl;?dr|in brief|at a glance)$", re.IGNORECASE)
_FINDINGS_HEADING = re.compile(
    r"^(?:key|main|major)\s+(?:findings|points|takeaways|results)$|^takeaways$|^findings$", re.IGNORECASE
)
_KNOWN_HEADINGS = re.compile(
    r"^(?:summary|detailed summary|key findings|key points|key takeaways|main findings|methodology|methods|"
    r"study limitations|limitations|conclusions?|background|why it matters|results|discussion|"
    r"introduction|implications|takeaways|study design|what this means|tl;?dr|in brief|at a glance)$",
    re.IGNORECASE,
)
# what follows "Subscribe", "Sign up" or "Contact us" in a pitch, and not in "Sign up rates doubled"
_CALL_TO_ACTION = r"to|for|now|today|here|free|and|at|via|with|by|below|on|if|us|anytime"
_TAIL = re.compile(  # a line of a newsletter pitch or contact block
    r"^(?:enjoyed this|liked this|get (?:the|our|more)\b.*\binbox|.*\binbox every (?:week|day|month)|"
    rf"(?:subscribe|sign up|contact us)(?:$|[\s,]*[.!:—–-]|\s+(?:{_CALL_TO_ACTION})\b)|"  # as a call to action
    r"reach out to us|call us|get in touch|share this|follow us|"
    r"want more\b|(?:phone|tel|call)\s*[:.]?\s*\+?\d|book a (?:call|consultation|demo)|"
    r"\+?[\d\s().\-]{9,}$)",
    re.IGNORECASE,
)
_TAIL_SECTION = re.compile(  # a section of the tail: whatever follows it belongs to it (questions and answers)
    r"^(?:faqs?|frequently asked questions|related (?:summaries|articles|posts|reading)|you may also like|"
    r"read next|more from us)\b",
    re.IGNORECASE,
)
_TAIL_LIKE = re.compile(  # what else a tail holds, though it does not start one
    r"^(?:©|\(c\)|copyright\b|all rights reserved|privacy policy|terms\b|unsubscribe\b|https?://\S+$|"
    r"[^\s@]+@[^\s@]+\.\w+$)",
    re.IGNORECASE,
)
_MAX_TAIL_LABEL_WORDS = 4  # "Twitter", "Share on LinkedIn": short unpunctuated lines among the tail
_META_LINE = re.compile(rf"^{_VIEWS_OR_READ}(?:\s*[·•|,–-]\s*{_VIEWS_OR_READ})*\s*$", re.IGNORECASE)  # not content
_ARTICLES = {"a", "an", "the"}
_CONNECTORS = {"&", "and", "of", "+", "/", "-", "–"}
_MAX_CATEGORY_WORDS = 4
_MAX_HEADING_WORDS = 12
_MAX_HEADING_CHARS = 90


@dataclass
class _Section:
    heading: str | None
    paragraphs: list[str] = field(default_factory=list)  # a bullet is kept as "• text"
    bullets: list[str] = field(default_factory=list)

    def text(self) -> str:
        """The section as plain text: heading, paragraphs apart, a list's bullets on consecutive lines."""
        out = self.heading or ""
        for index, paragraph in enumerate(self.paragraphs):
            in_list = index > 0 and paragraph.startswith("• ") and self.paragraphs[index - 1].startswith("• ")
            out += ("\n" if in_list else "\n\n") + paragraph if out else paragraph
        return out


class TextReader(Reader):
    """One summary per ``.txt`` page; IngestError when the page has no title or no text to summarise."""

    file_extensions = (".txt",)

    def read(self, path: Path) -> list[SummaryIn]:
        data = parse_page(read_text(path), where=str(path), summary_length=self.settings.summary_length)
        return [validate_item(data, where=str(path))]


def parse_page(text: str, *, where: str, summary_length: int) -> dict[str, Any]:
    """The summary fields found in a copied page (see the module doc); raises IngestError naming ``where``.

    The summary is the "Summary" section, else the page's first paragraph; a first paragraph longer than
    ``summary_length`` is shortened to its first sentences (the whole paragraph stays in the body).
    Key points are the bullets of a findings section; a page without one has none (its section headings,
    "How the Drug Acts on the Brain", are not findings).
    """
    lines = [line.rstrip() for line in strip_controls(text).split("\n")]
    numbered = [(number, line.strip()) for number, line in enumerate(lines, start=1)]
    content = [(number, line) for number, line in numbered if line]
    if not content:
        raise IngestError(f"{where}: the page is empty; copy the page's text into the file")
    data: dict[str, Any] = {}
    position = 0
    labels = _labels_line(content)
    if labels is not None:
        data.update(labels)
        position = 1
    while position < len(content) - 1 and _is_date_or_meta(content[position][1]):  # never a date as the title
        number, line = content[position]
        if "published_at" not in data and (date := _DATE_LINE.match(line)):
            data["published_at"] = _date(date, where, number)
        position += 1
    data["title"] = content[position][1]
    title, before_header = position, dict(data)
    position, guessed = _header(content, title, data, where)
    sections = _sections(_until_tail([line for n, line in numbered if n > _line_before(content, position)]))
    if guessed and not _has_summary_text(sections):
        # The page's only text sits where a subtitle or bare image description could: it is the text, and
        # the header ends before it (never a rejected page for a guess of ours).
        data = before_header
        position, _guessed = _header(content, title, data, where, end=guessed[-1])
        sections = _sections(_until_tail([line for n, line in numbered if n > _line_before(content, position)]))
    _fill_from_sections(sections, data, where, summary_length)
    return data


def _line_before(content: list[tuple[int, str]], position: int) -> int:
    """The file line number after which the body starts (the header ends at ``position`` in ``content``)."""
    return content[position - 1][0] if position > 0 else 0


def _labels_line(content: list[tuple[int, str]]) -> dict[str, Any] | None:
    """Category, type and access marker from the page's first line, or None if it is the title.

    It is a labels line when the known labels (article types, access markers) at its end are run together
    with the category (``Longevity & AgingResearch PaperPaywall``), set off by separators
    (``Health & Fitness · Meta-Analysis · Free``) or are all there is (``Paywall``), and a title follows.
    A line where they merely follow a space (``Neuroscience Review``), or a category alone
    (``Longevity & Aging``), is one only when a title and then the date (or source) line follow and the
    rest looks like a category: so ``A Year of Climate News`` or ``The Week in Review`` stay titles.
    """
    if len(content) < 2 or not _could_be_title(content[1][1]):
        return None
    line = content[0][1]
    found, category, gap = _split_labels(line)
    run_together = bool(found) and (not category or gap == "" or gap.strip(" \t") != "")
    if run_together:
        if category and (":" in category or len(category.split()) > 5 or category[-1] in ".!?"):
            return None  # a title that happens to end in "Review" or "News", not a labels line
    elif not (
        _title_then_header(content) and _looks_like_category(category) and len(content[1][1]) > len(line)
    ):
        return None
    if category:
        found["category"] = category
    return found


def _split_labels(line: str) -> tuple[dict[str, Any], str, str]:
    """The labels at the end of ``line``, what is before them, and the text between the two."""
    rest, found, start = line.strip(), {}, None
    access = _ACCESS_AT_END.search(rest)
    if access:
        found["paywalled"] = ACCESS_MARKERS[access.group(1)]
        start = access.start()
        rest = rest[:start].rstrip(_SEPARATOR_CHARS)
    kind = _TYPE_AT_END.search(rest)
    if kind:
        found["article_type"] = kind.group(1)
        start = kind.start()
        rest = rest[:start].rstrip(_SEPARATOR_CHARS)
    gap = line.strip()[len(rest) : start] if start is not None else ""
    return found, rest, gap


def _could_be_title(line: str) -> bool:
    """Not a line of the header after a title (date, view count, source, image), a heading or a bullet."""
    return not (
        _is_date_or_meta(line) or _SOURCE_LINE.match(line) or _IMAGE.match(line) or _BULLET.match(line)
        or _KNOWN_HEADINGS.match(line.rstrip(":")) or _TAIL.match(line) or len(line) > 300
    )


def _title_then_header(content: list[tuple[int, str]]) -> bool:
    """A title at ``content[1]`` (perhaps with a subtitle) followed by the date or source line."""
    def header(position: int) -> bool:
        line = content[position][1] if position < len(content) else ""
        return bool(_DATE_LINE.match(line) or _SOURCE_LINE.match(line))

    title = content[1][1]
    if title.endswith(".") or not _could_be_title(title):
        return False
    return header(2) or (len(content) > 2 and _could_be_title(content[2][1]) and header(3))  # a subtitle between


def _looks_like_category(text: str) -> bool:
    """A short label in title case (``Longevity & Aging``), not a phrase (``The Week in``, ``A Year of``)."""
    words = text.split()
    if not words or len(words) > _MAX_CATEGORY_WORDS or len(text) > 40 or any(c in text for c in ":.!?,;\"“"):
        return False
    if words[0].lower() in _ARTICLES or words[-1].lower() in _CONNECTORS | {"in", "on", "at", "for", "to"}:
        return False
    return all(word[0].isupper() or word[0].isdigit() or word.lower() in _CONNECTORS for word in words)


def _is_date_or_meta(line: str) -> bool:
    return bool(_DATE_LINE.match(line) or _META_LINE.match(line))


def _header(
    content: list[tuple[int, str]], title: int, data: dict[str, Any], where: str, end: int | None = None
) -> tuple[int, list[int]]:
    """Reads the header zone after the title (at ``content[title]``), at most up to position ``end``: each
    line is classified on its own (date, view count or reading time, source, image description, subtitle),
    in any order and with or without blank lines between them. Returns the position in ``content`` where
    the text starts (the first line that is none of these: a section heading or a paragraph), and the
    positions of the lines read by their place rather than their shape (subtitle, bare image description),
    which the caller gives back to the text when the page would have no text without them."""
    position = title + 1
    guessed: list[int] = []
    dated_or_sourced = False  # a date or source line seen: only after one is a bare image description read
    while position < len(content) and (end is None or position < end):
        number, line = content[position]
        if _is_heading_text(line) and _KNOWN_HEADINGS.match(line.rstrip(":").strip()):
            break
        kind = _header_kind(line)
        if kind == "date":
            if "published_at" not in data:
                date = _DATE_LINE.match(line)
                assert date is not None
                data["published_at"] = _date(date, where, number)
        elif kind == "source":
            source = _SOURCE_LINE.match(line)
            assert source is not None
            data.setdefault("source", source.group("source"))
        elif kind == "image":
            image = _IMAGE.match(line)
            assert image is not None
            data.setdefault("image_alt", image.group("alt"))
        elif kind == "meta":
            pass  # "1,204 views" on a line of its own: dropped
        elif position == title + 1 and _is_subtitle(content, position):
            data["subtitle"] = line
            guessed.append(position)
        elif "image_alt" not in data and dated_or_sourced and _is_bare_image_description(content, position):
            data["image_alt"] = line
            guessed.append(position)
        else:
            break
        dated_or_sourced = dated_or_sourced or kind in ("date", "source")
        position += 1
    return position, guessed


def _header_kind(line: str) -> str | None:
    """What a line of the header says by its own shape: "date", "meta", "source", "image" or None."""
    if _DATE_LINE.match(line):
        return "date"
    if _META_LINE.match(line):
        return "meta"
    if _SOURCE_LINE.match(line):
        return "source"
    if _IMAGE.match(line):
        return "image"
    return None


def _is_subtitle(content: list[tuple[int, str]], position: int) -> bool:
    """The line right after the title, when a date, view count, source or image line follows it: a phrase
    or a whole sentence. Without such a line after it, it is the text's first paragraph (never guessed);
    so is it when it would be the page's only paragraph (see :func:`parse_page`)."""
    line = content[position][1]
    if len(line) > 300 or _BULLET.match(line) or _TAIL.match(line):
        return False
    following = content[position + 1][1] if position + 1 < len(content) else ""
    return _header_kind(following) is not None


_MIN_IMAGE_WORDS = 8
_MIN_IMAGE_CHARS = 50
_SENTENCE_INSIDE = re.compile(r"[.!?][\"”)]?\s+[A-Z]")  # "… young mice. Clearing …": text, not a description


def _is_bare_image_description(content: list[tuple[int, str]], position: int) -> bool:
    """An image description without an ``Image:`` prefix, after the date or source line: a long
    descriptive line (8+ words), one phrase (no closing punctuation, no sentence ending inside it), not in
    Title Case as a heading is, standing alone (a blank line, a header line or the end after it, where a
    heading has its text), and held in the header: right under a header line with no blank line between, or
    with a header line after it. Between blank lines it is a heading or a paragraph of the text (never
    guessed); so is it when it would be the page's only paragraph (see :func:`parse_page`)."""
    number, line = content[position]
    words = line.split()
    if (
        len(words) < _MIN_IMAGE_WORDS or len(line) < _MIN_IMAGE_CHARS or line[-1] in ".!?:;,…\"”)"
        or _BULLET.match(line) or _TAIL.match(line) or _KNOWN_HEADINGS.match(line.rstrip(":"))
        or _SENTENCE_INSIDE.search(line)
    ):
        return False
    long_words = [word for word in words[1:] if len(word) > 3 and word[0].isalpha()]
    if long_words and all(word[0].isupper() for word in long_words):
        return False  # "How the Drug Acts on the Brain": a heading
    previous_number, previous = content[position - 1]
    under_a_header_line = previous_number == number - 1 and _header_kind(previous) is not None
    if position + 1 == len(content):
        return under_a_header_line
    next_number, following = content[position + 1]
    if _header_kind(following) is not None:
        return True
    return next_number > number + 1 and under_a_header_line


def _date(match: re.Match[str], where: str, line: int) -> datetime:
    if match.group("iso"):
        text = match.group("iso")
        try:
            return datetime.fromisoformat(text).replace(tzinfo=UTC)
        except ValueError:
            raise IngestError(f"{where}:{line}: {text} is not a real date; use YYYY-MM-DD") from None
    month_text = (match.group("m1") or match.group("m2")).rstrip(".").lower()
    day, year = int(match.group("d1") or match.group("d2")), int(match.group("y1") or match.group("y2"))
    month = next(i for i, name in enumerate(_MONTHS, start=1) if name.startswith(month_text[:3]))
    try:
        return datetime(year, month, day, tzinfo=UTC)
    except ValueError as exc:
        raise IngestError(f"{where}:{line}: {match.group(0).strip()!r} is not a real date ({exc})") from None


def _until_tail(lines: list[str]) -> list[str]:
    """``lines`` without the promotional tail: newsletter pitches, contact lines and FAQ at the very end.

    The tail starts at a pitch or contact line (``Subscribe``, ``Contact us``, a phone number) or a tail
    section (``FAQ``, ``Related articles``: what follows it is its content) and holds nothing but such
    lines, copyright and link lines and short labels. An ordinary paragraph after it means the article
    goes on, so a line that merely starts with "Sign up" or "Subscribe" in the text is kept.
    """
    start: int | None = None
    in_section = False
    for index, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            continue
        if _TAIL_SECTION.match(line):
            start, in_section = index if start is None else start, True
        elif _TAIL.match(line):
            start = index if start is None else start
        elif start is not None and (
            (in_section and not _KNOWN_HEADINGS.match(line.rstrip(":")))
            or _TAIL_LIKE.match(line)
            or (len(line.split()) <= _MAX_TAIL_LABEL_WORDS and line[-1] not in ".!?")
        ):
            continue
        else:
            start, in_section = None, False  # the article goes on: what looked like its tail was not
    return lines if start is None else lines[:start]


def _is_heading_text(line: str) -> bool:
    words = line.split()
    return (
        0 < len(words) <= _MAX_HEADING_WORDS
        and len(line) <= _MAX_HEADING_CHARS
        and not _BULLET.match(line)
        and line[-1] not in ".,;!…\"”)"
        and (line[0].isupper() or line[0].isdigit())
    )


def _sections(lines: list[str]) -> list[_Section]:
    """The body split at headings: a known heading anywhere, or a short unpunctuated line that stands
    alone (blank line or start before it) and is followed by a sentence or a bullet."""
    sections = [_Section(None)]
    previous_blank = True
    for index, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            previous_blank = True
            continue
        if _META_LINE.match(line):
            continue  # a view count or reading time on its own, wherever the copy put it
        if _is_heading_text(line) and (_KNOWN_HEADINGS.match(line.rstrip(":")) or (
            previous_blank and _followed_by_text(lines, index)
        )):
            sections.append(_Section(line.rstrip(":").strip()))
        elif bullet := _BULLET.match(line):
            sections[-1].bullets.append(bullet.group("text").strip())
            sections[-1].paragraphs.append(f"• {bullet.group('text').strip()}")
        elif sections[-1].paragraphs and not previous_blank and line[0].islower():
            sections[-1].paragraphs[-1] += f" {line}"  # a wrapped line continues its paragraph
            if sections[-1].paragraphs[-1].startswith("• ") and sections[-1].bullets:
                sections[-1].bullets[-1] += f" {line}"
        else:
            sections[-1].paragraphs.append(line)
        previous_blank = False
    return [section for section in sections if section.heading or section.paragraphs]


def _followed_by_text(lines: list[str], index: int) -> bool:
    """The next line is a sentence, a bullet, or too long to be a heading (a paragraph without its stop)."""
    following = next((line.strip() for line in lines[index + 1 :] if line.strip()), "")
    return bool(following) and (
        bool(_BULLET.match(following)) or following[-1] in ".!?:\"”)" or not _is_heading_text(following)
    )


def _pick_sections(sections: list[_Section]) -> tuple[_Section | None, _Section | None, list[_Section]]:
    """The summary section, the findings section (with bullets) and the other sections."""
    summary_section = next((s for s in sections if s.heading and _SUMMARY_HEADING.match(s.heading)), None)
    findings = next((s for s in sections if s.heading and _FINDINGS_HEADING.match(s.heading) and s.bullets), None)
    return summary_section, findings, [s for s in sections if s is not summary_section and s is not findings]


def _has_summary_text(sections: list[_Section]) -> bool:
    """A summary can be taken from ``sections``: a Summary section with text, or a paragraph elsewhere."""
    summary_section, _findings, rest = _pick_sections(sections)
    if summary_section is not None and summary_section.paragraphs:
        return True
    return any(not p.startswith("• ") for s in rest for p in s.paragraphs)


def _fill_from_sections(sections: list[_Section], data: dict[str, Any], where: str, length: int) -> None:
    summary_section, findings, rest = _pick_sections(sections)
    if summary_section is not None and summary_section.paragraphs:
        data["summary"] = "\n\n".join(summary_section.paragraphs)
    else:
        paragraph = next((p for s in rest for p in s.paragraphs if not p.startswith("• ")), None)
        if paragraph is None:
            raise IngestError(
                f"{where}: no summary; add a 'Summary' section or a paragraph of text after the title"
            )
        data["summary"] = extractive_summary(paragraph, length)
        if data["summary"] == paragraph:  # used whole: not repeated in the body
            for section in rest:
                if paragraph in section.paragraphs:
                    section.paragraphs.remove(paragraph)
                    break
    if findings is not None:  # only a findings section has findings: other headings stay in the body
        data["key_points"] = findings.bullets
    in_body = [  # the findings section's paragraphs that are not findings (a line after the list) stay, in place
        _Section(None, [p for p in s.paragraphs if not p.startswith("• ")]) if s is findings else s
        for s in sections if s is not summary_section
    ]
    body = "\n\n".join(section.text() for section in in_body if section.paragraphs or section.heading)
    if body.strip():
        data["body"] = body
