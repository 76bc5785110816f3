"""Markdown summaries: YAML front matter between ``---`` lines, then a Markdown body.

Fields come from the front matter. The body supplies what the front matter leaves out: its first
paragraph becomes ``summary``, the bullets under a "Key findings" (or "Key points") heading become
``key_points``, and what remains is ``body``::

    ---
    title: Sleep spindles predict next-day recall
    journal: Journal of Example Neuroscience
    date: 2026-11-03
    link: https://example.org/papers/sleep-spindles
    ---
    The summary paragraph.

    ## Key findings
    - First finding
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from newsletter.errors import IngestError
from newsletter.ingest.base import Reader, SummaryIn, input_names, read_text, validate_item

_FENCE = "---"
_HEADING = re.compile(r"#{1,6}\s")
_KEY_POINTS_HEADING = re.compile(r"#{1,6}\s+key\s+(findings|points)\s*:?\s*#*", re.IGNORECASE)
_BULLET = re.compile(r"\s*(?:[-*+]|\d+[.)])\s+(.*)")
_BLANK_LINES = re.compile(r"\n\s*\n")


class MarkdownReader(Reader):
    """One summary per ``.md`` or ``.markdown`` file; IngestError for missing or invalid front matter."""

    file_extensions = (".md", ".markdown")

    def read(self, path: Path) -> list[SummaryIn]:
        data, body = _front_matter(path, read_text(path))
        if not any(data.get(key) for key in input_names("key_points")):
            points, body = _key_points(body)
            if points:
                data["key_points"] = points
        if not data.get("summary"):
            summary, body = _first_paragraph(body)
            if not summary:
                raise IngestError(
                    f"{path}: no summary; add 'summary:' to the front matter or a paragraph after it"
                )
            data["summary"] = summary
        if body and not data.get("body"):
            data["body"] = body
        return [validate_item(data, where=str(path))]


def _front_matter(path: Path, text: str) -> tuple[dict[str, Any], str]:
    """The parsed front matter and the body after it."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != _FENCE:
        raise IngestError(
            f"{path}:1: no front matter; start the file with a '---' line, then 'title: ...' and the other "
            f"fields, then another '---' line"
        )
    end = next((i for i, line in enumerate(lines) if i > 0 and line.strip() in (_FENCE, "...")), None)
    if end is None:
        raise IngestError(f"{path}: the front matter is not closed; add a '---' line after its last field")
    try:
        data = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 2}" if mark else str(path)  # +2: 0-based, after the opening '---'
        problem = getattr(exc, "problem", None) or str(exc)
        raise IngestError(
            f"{where}: front matter is not valid YAML ({problem}); check indentation and quoting"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise IngestError(f"{path}:2: front matter must be 'key: value' lines, such as 'title: ...'")
    return data, "\n".join(lines[end + 1 :]).strip()


def _key_points(body: str) -> tuple[list[str], str]:
    """The bullets under a "Key findings" heading, and the body without that section."""
    lines = body.splitlines()
    start = next((i for i, line in enumerate(lines) if _KEY_POINTS_HEADING.fullmatch(line.strip())), None)
    if start is None:
        return [], body
    end = next((i for i in range(start + 1, len(lines)) if _HEADING.match(lines[i])), len(lines))
    points: list[str] = []
    for line in lines[start + 1 : end]:
        bullet = _BULLET.fullmatch(line)
        if bullet:
            points.append(bullet.group(1).strip())
        elif line.strip() and points:  # a bullet wrapped onto the next line
            points[-1] = f"{points[-1]} {line.strip()}"
    if not points:
        return [], body
    return points, "\n".join(lines[:start] + lines[end:]).strip()


def _first_paragraph(body: str) -> tuple[str | None, str]:
    """The first paragraph that is not a heading (lines joined), and the body without it."""
    blocks = _BLANK_LINES.split(body.strip())
    for index, block in enumerate(blocks):
        if block.strip() and not _HEADING.match(block.lstrip()):
            paragraph = " ".join(line.strip() for line in block.splitlines())
            return paragraph, "\n\n".join(blocks[:index] + blocks[index + 1 :]).strip()
    return None, body
