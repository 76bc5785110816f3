"""Making incoming text safe and plain: every stored field is plain text that the templates escape.

- :func:`sanitise` runs anything that looks like HTML through nh3's allow-list (scripts, styles and
  their content are dropped, attributes and unknown tags removed), then reduces it to text, keeping
  paragraph breaks. Plain text passes through unchanged apart from control characters.
- :func:`markdown_to_text` renders Markdown with markdown-it-py, then sanitises the HTML the same way
  (:func:`markdown_inline_to_text` for one line, such as a key point).
- :func:`normalise_title` makes a one-line title: tags stripped, control characters and runs of
  whitespace collapsed into single spaces.
- :func:`extractive_summary` is the first sentences of a text up to a length, cut at a sentence end: the
  summary of every item that comes without one (see ``newsletter.ingest.base.fill_missing_summary``).
"""

from __future__ import annotations

import html
import re
import unicodedata

import nh3
from markdown_it import MarkdownIt

# Tags whose structure we keep long enough to turn into line breaks; everything else is unwrapped.
_ALLOWED_TAGS = {"p", "br", "div", "li", "ul", "ol", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6",
                 "strong", "em", "b", "i", "a", "code", "pre", "table", "tr", "td", "th", "section"}
_DROPPED_WITH_CONTENT = {"script", "style", "template", "iframe", "object", "noscript", "textarea", "title"}
_LOOKS_LIKE_MARKUP = re.compile(r"<\s*/?\s*[a-zA-Z!?][^>]*>|&(?:#\d+|#x[0-9a-fA-F]+|[a-zA-Z]{2,8});")
_BLOCK_END = re.compile(r"<\s*(?:br\s*/?|/\s*(?:p|div|ul|ol|blockquote|h[1-6]|pre|table|tr|section))\s*>",
                        re.IGNORECASE)
_LIST_ITEM = re.compile(r"<\s*li\s*>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9À-ÖØ-Þ])")
# Raw HTML is passed through to nh3, which cleans it like HTML anywhere else; escaped, a "<script>" would
# come out as literal text that validation then cleans again, losing the paragraphs around it.
_MARKDOWN = MarkdownIt("commonmark", {"html": True})


_SPACED = "\t\u2028\u2029\x0b\x0c\x85"  # line and page breaks other than \n, and tabs: a space each
_DROPPED_CATEGORIES = ("Cc", "Cf", "Cs", "Co")  # control, format (but the emoji joiner), surrogate, private use


def _dropped(char: str) -> bool:
    return unicodedata.category(char) in _DROPPED_CATEGORIES and char != "\u200d"


# str.translate tables for the ASCII range and the spaced characters; the other characters of a text are
# looked up once each per call (a text has few distinct ones): a loop over every character cost 70 µs a field.
_KEEP_NEWLINES = {**{code: None for code in range(128) if _dropped(chr(code))}, **{ord(c): " " for c in _SPACED}}
_KEEP_NEWLINES.pop(ord("\n"))
_FLATTEN_NEWLINES = {**_KEEP_NEWLINES, ord("\n"): " "}


def strip_controls(text: str, *, keep_newlines: bool = True) -> str:
    """``text`` without control or format characters (tabs become spaces; newlines kept if asked)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    table = _KEEP_NEWLINES if keep_newlines else _FLATTEN_NEWLINES
    if not text.isascii():
        others = {ord(char): None for char in set(text) if char > "\x7f" and char not in _SPACED and _dropped(char)}
        if others:
            table = {**table, **others}
    return text.translate(table)


def html_to_text(markup: str) -> str:
    """Sanitised plain text of an HTML fragment: block ends become line breaks, entities are decoded."""
    safe = nh3.clean(markup, tags=_ALLOWED_TAGS, clean_content_tags=_DROPPED_WITH_CONTENT, attributes={},
                     link_rel=None, strip_comments=True)
    safe = " ".join(safe.split())  # whitespace in HTML is not layout; the tags below are
    safe = _LIST_ITEM.sub("\n• ", safe)
    safe = _BLOCK_END.sub("\n\n", safe)
    text = html.unescape(_TAG.sub("", safe))
    return tidy_paragraphs(strip_controls(text))


def tidy_paragraphs(text: str) -> str:
    """Spaces collapsed within lines, at most one blank line between paragraphs, no leading/trailing space."""
    lines = [" ".join(line.split()) for line in text.split("\n")]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def sanitise(text: str) -> str:
    """``text`` made safe to store: HTML (if any) cleaned by the allow-list and reduced to text."""
    if _LOOKS_LIKE_MARKUP.search(text):
        return html_to_text(text)
    return strip_controls(text).strip()


def markdown_to_text(text: str) -> str:
    """Markdown rendered with markdown-it-py, then sanitised to plain text (raw HTML in it by the allow-list)."""
    return html_to_text(_MARKDOWN.render(text))


def markdown_inline_to_text(text: str) -> str:
    """One line of Markdown (a list entry): emphasis, links and code rendered to text, no block structure,
    so that ``1. Spindles`` stays a sentence rather than becoming a list."""
    return html_to_text(_MARKDOWN.renderInline(text))


def normalise_title(text: str) -> str:
    """One line: markup removed, control characters and whitespace runs collapsed to single spaces."""
    return " ".join(sanitise(text).split())


def extractive_summary(text: str, max_chars: int) -> str:
    """The first sentences of ``text`` (whitespace collapsed) up to ``max_chars``, cut at a sentence end.

    If even the first sentence is longer, it is cut at the last word boundary and ends with "…".
    """
    flat = " ".join(text.split())
    if len(flat) <= max_chars:
        return flat
    chosen = ""
    for match in _SENTENCE_END.finditer(flat):
        candidate = flat[: match.start()].strip()
        if len(candidate) > max_chars:
            break
        chosen = candidate
    if chosen:
        return chosen
    cut = flat[: max_chars - 1].rsplit(" ", 1)[0].rstrip(",;:-– ")
    return f"{cut}…"
