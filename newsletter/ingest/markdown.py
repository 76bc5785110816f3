"""Markdown summaries: YAML front matter between ``---`` lines, then a Markdown body.

Fields come from the front matter. The body supplies what the front matter leaves out: its first
paragraph becomes ``summary`` (cut to its first sentences when longer than ``ingest.summary_length``, the
whole paragraph then staying in the body), the bullets under a "Key findings" (or "Key points") heading
become ``key_points``, and what remains is ``body``. Text is Markdown, front matter values included: it is
rendered with markdown-it-py and reduced to clean plain text, exactly like the API's ``format: markdown``::

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
from newsletter.ingest.base import (
    Reader,
    SummaryIn,
    input_names,
    read_text,
    render_markdown_fields,
    validate_item,
)
from newsletter.ingest.clean import extractive_summary, markdown_to_text

_FENCE = "---"
_LINE_OFFSET = 2  # YAML counts lines from 0, and the front matter starts on the file's line 2
_HEADING = re.compile(r"#{1,6}\s")
_KEY_POINTS_HEADING = re.compile(r"#{1,6}\s+key\s+(findings|points)\s*:?\s*#*", re.IGNORECASE)
_BULLET = re.compile(r"\s*(?:[-*+]|\d+[.)])\s+(.*)")
_BLANK_LINES = re.compile(r"\n\s*\n")


class MarkdownReader(Reader):
    """One summary per ``.md`` or ``.markdown`` file; IngestError for missing or invalid front matter."""

    file_extensions = (".md", ".markdown")

    def read(self, path: Path) -> list[SummaryIn]:
        data, lines, body = _front_matter(path, read_text(path))
        if not any(data.get(key) for key in input_names("key_points")):
            points, body = _key_points(body)
            if points:
                data["key_points"] = points
        paragraph = None
        if not data.get("summary"):
            paragraph, body = _first_paragraph(body)
            if not paragraph:
                raise IngestError(
                    f"{path}: no summary; add 'summary:' to the front matter or a paragraph after it"
                )
        body_from_file = bool(body) and not data.get("body")
        if body_from_file:
            data["body"] = body
        # The text is Markdown, in the front matter too: rendered and cleaned like the API's format: markdown.
        data = render_markdown_fields(data)
        if paragraph is not None:
            text = markdown_to_text(paragraph)
            data["summary"] = extractive_summary(text, self.settings.summary_length)
            if data["summary"] != " ".join(text.split()) and (body_from_file or not data.get("body")):
                # cut to its first sentences: the whole paragraph stays, at the start of the body
                data["body"] = "\n\n".join(part for part in (text, data.get("body")) if part)
        return [validate_item(data, where=str(path), lines=lines)]


def _front_matter(path: Path, text: str) -> tuple[dict[str, Any], dict[str, int], str]:
    """The parsed front matter, the file line of each of its keys, and the body after it."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != _FENCE:
        raise IngestError(
            f"{path}:1: no front matter; start the file with a '---' line, then 'title: ...' and the other "
            f"fields, then another '---' line"
        )
    end = next((i for i, line in enumerate(lines) if i > 0 and line.strip() in (_FENCE, "...")), None)
    if end is None:
        raise IngestError(f"{path}: the front matter is not closed; add a '---' line after its last field")
    root, data = _load_yaml(path, "\n".join(lines[1:end]))
    body = "\n".join(lines[end + 1 :]).strip()
    if root is None:  # empty: validation will name the missing fields
        return {}, {}, body
    if not isinstance(root, yaml.MappingNode) or not isinstance(data, dict):
        raise IngestError(f"{path}:2: front matter must be 'key: value' lines, such as 'title: ...'")
    key_lines = {key.value: _line(key) for key, _value in root.value if isinstance(key, yaml.ScalarNode)}
    return data, key_lines, body


class _UnbuildableValue(yaml.YAMLError):
    """A scalar YAML recognises but Python cannot build, such as the timestamp ``2026-11-31``."""

    def __init__(self, node: yaml.Node, reason: str) -> None:
        super().__init__(reason)
        self.node = node
        self.reason = reason


class _Unbuildable:
    """Raises :class:`_UnbuildableValue`, with the node, instead of a bare ValueError while building values."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)  # type: ignore[misc]
        except ValueError as exc:  # datetime(2026, 11, 31), int() of a 5000-digit number, ...
            raise _UnbuildableValue(node, str(exc)) from None


class _Loader(_Unbuildable, yaml.SafeLoader):
    """PyYAML's pure-Python ``SafeLoader``: the judge of every front matter it is asked about."""


# libyaml's parser, where PyYAML was built with it: the same resolver and constructor, ten times faster at
# parsing. It only reads front matter that parses: any error is found again by the pure loader, so that a
# rejection says exactly what it always said (tests/test_ingest_markdown.py holds both to the same results).
_FastLoader: type | None = type("_FastLoader", (_Unbuildable, yaml.CSafeLoader), {}) if yaml.__with_libyaml__ else None


def _load_yaml(path: Path, text: str) -> tuple[yaml.Node | None, Any]:
    """The front matter's node tree (for line numbers) and its value; IngestError naming the line."""
    bad = yaml.reader.Reader.NON_PRINTABLE.search(text)  # what the pure loader checks first, character by character
    if bad is not None:
        line = text[: bad.start()].count("\n") + _LINE_OFFSET
        raise IngestError(
            f"{path}:{line}: the front matter holds the control character U+{ord(bad.group()):04X}, which YAML "
            f"does not allow; delete it (it is invisible in most editors)"
        ) from None
    # libyaml takes tabs where the pure loader refuses them ("0\t"): front matter with a tab is read purely
    if _FastLoader is not None and "\t" not in text:
        loader = _FastLoader(text)
        try:
            root = loader.get_single_node()
            if not _unlike_pure(root):
                return root, None if root is None else loader.construct_document(root)
        except (yaml.YAMLError, RecursionError):
            pass  # read again below, for the pure loader's own words and line
        finally:
            loader.dispose()
    return _load_yaml_purely(path, text)


def _unlike_pure(root: yaml.Node | None) -> bool:
    """Whether the tree holds what libyaml reads more leniently than the pure loader, which then reads the
    front matter itself: a block scalar (``|`` or ``>``, whose header libyaml takes even followed by ``#``),
    or an empty plain scalar libyaml typed as a string (``a: !``, a bare tag, which the pure loader reads as
    null)."""
    seen: set[int] = set()
    waiting = [root] if root is not None else []
    while waiting:
        node = waiting.pop()
        if id(node) in seen:  # an alias can make the tree a graph
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            if node.style in ("|", ">") or (node.value == "" and not node.style and node.tag.endswith(":str")):
                return True
        elif isinstance(node, yaml.MappingNode):
            waiting.extend(part for pair in node.value for part in pair)
        else:
            waiting.extend(node.value)
    return False


def _load_yaml_purely(path: Path, text: str) -> tuple[yaml.Node | None, Any]:
    """:func:`_load_yaml` with PyYAML's pure-Python loader."""
    try:
        loader = _Loader(text)  # checks every character at once: a control character fails here
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + _LINE_OFFSET
        raise IngestError(
            f"{path}:{line}: the front matter holds the control character U+{exc.character:04X}, which YAML "
            f"does not allow; delete it (it is invisible in most editors)"
        ) from None
    root = None
    try:
        root = loader.get_single_node()
        return root, None if root is None else loader.construct_document(root)
    except _UnbuildableValue as exc:
        raise IngestError(f"{path}:{_line(exc.node)}: {_unbuildable(root, exc)}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + _LINE_OFFSET}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise IngestError(
            f"{where}: front matter is not valid YAML ({problem}); check indentation and quoting"
        ) from None
    except RecursionError:
        raise IngestError(f"{path}: front matter is nested too deeply to read; flatten it") from None
    finally:
        loader.dispose()


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + _LINE_OFFSET


def _unbuildable(root: yaml.Node | None, exc: _UnbuildableValue) -> str:
    """E.g. ``date: 2026-11-31 is not a real date (day is out of range for month); use YYYY-MM-DD``."""
    text = exc.node.value if isinstance(exc.node, yaml.ScalarNode) else "the value"
    value = text if len(text) <= 40 else text[:40] + "..."
    pairs = root.value if isinstance(root, yaml.MappingNode) else []
    keys = [k.value for k, node in pairs if isinstance(k, yaml.ScalarNode) and _contains(node, exc.node)]
    named = f"{keys[0]}: {value}" if keys else value
    reason = exc.reason.partition(";")[0]  # drop Python's advice (sys.set_int_max_str_digits)
    if exc.node.tag == "tag:yaml.org,2002:timestamp":
        if len(text) <= len("2026-11-03"):
            return f"{named} is not a real date ({reason}); use YYYY-MM-DD"
        return f"{named} is not a real date and time ({reason}); use YYYY-MM-DD HH:MM:SS+01:00"
    return f"{named} cannot be read ({reason}); put the value in quotes to keep it as text"


def _contains(outer: yaml.Node, inner: yaml.Node) -> bool:
    return outer.start_mark.index <= inner.start_mark.index < outer.end_mark.index or outer is inner


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
    """The first paragraph that is not a heading and has text (not a lone HTML comment, say), lines joined,
    and the body without it."""
    blocks = _BLANK_LINES.split(body.strip())
    for index, block in enumerate(blocks):
        if block.strip() and not _HEADING.match(block.lstrip()) and markdown_to_text(block):
            paragraph = " ".join(line.strip() for line in block.splitlines())
            return paragraph, "\n\n".join(blocks[:index] + blocks[index + 1 :]).strip()
    return None, body
