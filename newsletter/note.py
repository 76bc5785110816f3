"""The editor's note: a few lines of Markdown an editor writes for one issue (the desk, ``digest note``),
shown above the items in both parts of the email.

Rendered with markdown-it-py and cleaned with nh3's allow-list, as summaries' Markdown is
(:mod:`newsletter.ingest.clean`). The HTML part keeps paragraphs, emphasis, code, lists, quotes and links
(``http``, ``https`` and ``mailto`` only; anything else loses its link and keeps its text); a heading
becomes a bold paragraph; every other tag, attribute, script or style is dropped. The text part is plain
text wrapped at the text part's width, a link written as ``text (address)``.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup

MAX_NOTE_CHARS = 5000  # a note, not an article: the digest is about the items (and Gmail clips at 102 KB)

_MARKDOWN = MarkdownIt("commonmark", {"html": True})  # raw HTML goes to nh3, like summaries' Markdown
_TAGS = {"p", "br", "strong", "em", "b", "i", "code", "ul", "ol", "li", "blockquote", "a"}
_DROPPED_WITH_CONTENT = {"script", "style", "template", "iframe", "object", "noscript", "textarea", "title"}
_LINK = re.compile(r'<a href="([^"]*)">(.*?)</a>', re.DOTALL)
_HEADING = re.compile(r"<h[1-6]>(.*?)</h[1-6]>", re.DOTALL)  # a heading in a note: a bold line of its own


@dataclass(frozen=True)
class Note:
    """The note as the templates show it: ``html`` is safe to output as is, ``text`` is wrapped."""

    html: Markup
    text: str


def note_problem(markdown: str) -> str | None:
    """Why ``markdown`` cannot be an issue's note, or None."""
    if len(markdown) > MAX_NOTE_CHARS:
        return (f"the note is {len(markdown):,} characters; keep it under {MAX_NOTE_CHARS:,} (the digest is "
                f"about its items, and Gmail clips long emails)")
    return None


def clean_note(markdown: str | None) -> str | None:
    """The note as stored: line endings made ``\\n``, control characters and surrounding blank lines
    dropped; None for an empty one."""
    from newsletter.ingest.clean import strip_controls  # here: the ingest package imports the render stage

    text = strip_controls(markdown or "").strip()
    return text or None


def render_note(markdown: str | None, width: int = 72) -> Note | None:
    """``markdown`` as sanitised HTML and as plain text wrapped at ``width``; None for no note."""
    from newsletter.ingest.clean import html_to_text  # here: the ingest package imports the render stage

    source = clean_note(markdown)
    if source is None:
        return None
    safe = nh3.clean(
        _HEADING.sub(r"<p><strong>\1</strong></p>", _MARKDOWN.render(source)), tags=_TAGS,
        clean_content_tags=_DROPPED_WITH_CONTENT, attributes={"a": {"href"}}, url_schemes={"http", "https", "mailto"},
        link_rel=None, strip_comments=True,
    )  # fmt: skip
    text = html_to_text(_LINK.sub(_link_as_text, safe))
    if not text:  # nothing a reader would see (only a comment or a script)
        return None
    return Note(Markup(safe.strip()), _wrap(text, width))


def _link_as_text(match: re.Match[str]) -> str:
    from newsletter.ingest.clean import html_to_text

    href, label = match.group(1), match.group(2)
    shown = html_to_text(label)
    address = href.removeprefix("mailto:")
    return label if shown in (href, address) else f"{label} ({href})"


def _wrap(text: str, width: int) -> str:
    """Each line of ``text`` filled to ``width``; a list entry ("• ...") hangs under its bullet. Long
    addresses stay whole."""
    lines = []
    for line in text.split("\n"):
        if not line:
            lines.append("")
            continue
        indent = "  " if line.startswith("• ") else ""
        lines.append(textwrap.fill(line, width, subsequent_indent=indent, break_long_words=False,
                                   break_on_hyphens=False))
    return "\n".join(lines)
