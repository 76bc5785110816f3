"""HTML pages (``.html``, ``.htm``): the main content is extracted with trafilatura (navigation, footers,
scripts and comments dropped), then read like a copied text page (:func:`~newsletter.ingest.text.parse_page`).

The page's title and date come from its metadata when the text does not carry them. A page trafilatura
finds no main content in (a short fragment, say) is reduced to text with the nh3 allow-list instead.
trafilatura is the optional extra ``html`` (``pip install 'newsletter[html]'``): without it an HTML page is
rejected with that advice, and every other format still works.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from newsletter.errors import IngestError
from newsletter.ingest.base import Reader, SummaryIn, read_text, validate_item
from newsletter.ingest.clean import html_to_text, normalise_title
from newsletter.ingest.text import parse_page

log = logging.getLogger(__name__)


class HtmlReader(Reader):
    """One summary per HTML page; IngestError when the page has no title or no text."""

    file_extensions = (".html", ".htm")

    def read(self, path: Path) -> list[SummaryIn]:
        data = parse_html(read_text(path), where=str(path), summary_length=self.settings.summary_length)
        return [validate_item(data, where=str(path))]


def parse_html(markup: str, *, where: str, summary_length: int) -> dict[str, Any]:
    """The summary fields of an HTML page: its main content read by :func:`parse_page`.

    Raises IngestError naming ``where`` when trafilatura (the ``html`` extra) is not installed."""
    try:
        text = main_text(markup)
    except ModuleNotFoundError as exc:
        if exc.name != "trafilatura":
            raise
        raise IngestError(
            f"{where}: reading HTML pages needs the html extra; install it with: pip install 'newsletter[html]'"
        ) from None
    return parse_page(text, where=where, summary_length=summary_length)


def main_text(markup: str) -> str:
    """The page's main content as text lines: title first, then the date (ISO) if the page has one.

    Raises ModuleNotFoundError when trafilatura is not installed."""
    import trafilatura  # the html extra; imported here so that every other reader works without it

    try:
        document = trafilatura.bare_extraction(
            markup, with_metadata=True, include_comments=False, include_tables=False, include_images=False,
            include_links=False, include_formatting=False,
        )
    except Exception:  # noqa: BLE001 - a third-party parser on arbitrary input; we fall back below
        log.debug("trafilatura could not read the page; falling back to plain text", exc_info=True)
        document = None
    text = (getattr(document, "text", None) or "").strip()
    if not text:
        return html_to_text(markup)
    lines = text.split("\n")
    title = normalise_title(getattr(document, "title", None) or "")
    header = []
    if title and normalise_title(lines[0]) != title:
        header.append(title)
    if not header:
        header.append(lines.pop(0))
    date = getattr(document, "date", None)
    if date:
        header.append(date)
    return "\n".join(header + [""] + lines)
