"""JSON summaries: ``.json`` holds one object or an array of objects; ``.jsonl`` holds one object per line.

Keys are the fields of :class:`~newsletter.ingest.base.SummaryIn` (``title``, ``summary``, ``url`` ...). An item
with a ``body`` but no ``summary`` gets the body's first sentences (as in the API).
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from pathlib import Path
from typing import Any

from newsletter.errors import IngestError
from newsletter.ingest.base import Reader, SummaryIn, read_text, validate_item

_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace


class JsonReader(Reader):
    """A ``.json`` file: one summary object, or an array of them. Errors name the line (and array index)."""

    file_extensions = (".json",)

    def read(self, path: Path) -> list[SummaryIn]:
        text, where = read_text(path), str(path)
        try:
            data = _loads(text, where=where)
        except json.JSONDecodeError as exc:
            raise IngestError(
                f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno}); fix the syntax there"
            ) from None
        positions, length = _Positions(text), self.settings.summary_length
        if isinstance(data, dict):
            return [validate_item(data, where=where, lines=positions.key_lines(_skip(text, 0)), summary_length=length)]
        if isinstance(data, list):
            return [
                validate_item(entry, where=where, lines=positions.key_lines(start), item=f"item at index {i}",
                              summary_length=length)
                for i, (entry, start) in enumerate(zip(data, positions.item_starts(), strict=True))
            ]
        raise IngestError(f"{path}: expected an object or an array of objects, got {type(data).__name__}")


class JsonLinesReader(Reader):
    """A ``.jsonl`` file: one summary object per line; blank lines are ignored. Errors name the line."""

    file_extensions = (".jsonl",)

    def read(self, path: Path) -> list[SummaryIn]:
        items = []
        # Only "\n" ends a record: JSON strings may hold U+2028 and friends, which str.splitlines() splits on.
        for number, line in enumerate(read_text(path).split("\n"), start=1):
            if not line.strip():
                continue
            try:
                data = _loads(line, where=f"{path}:{number}")
            except json.JSONDecodeError as exc:
                raise IngestError(
                    f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); "
                    f"each line must hold one complete object"
                ) from None
            items.append(validate_item(data, where=f"{path}:{number}", summary_length=self.settings.summary_length))
        return items


def _loads(text: str, *, where: str) -> Any:
    """``json.loads(text)``; JSONDecodeError for bad syntax, IngestError starting with ``where`` for JSON
    that is well formed but that Python will not build (a 5000-digit integer, nesting a thousand deep)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # int() refuses more than sys.get_int_max_str_digits() digits
        reason = str(exc).partition(";")[0]  # drop Python's advice (sys.set_int_max_str_digits)
        raise IngestError(
            f"{where}: cannot be read as JSON ({reason}); write very long numbers in quotes, as strings"
        ) from None
    except RecursionError:
        raise IngestError(f"{where}: arrays or objects are nested too deeply to read; flatten them") from None


def _skip(text: str, pos: int) -> int:
    """The offset of the first non-whitespace character at or after ``pos``."""
    match = _SPACE.match(text, pos)
    return match.end() if match else pos


class _Positions:
    """Where things are in a JSON text that ``json.loads`` has accepted, for messages that name a line.

    The stdlib parser keeps no positions, so this re-walks the text; since the text is known to be valid
    it checks nothing.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self._breaks = [match.start() for match in re.finditer("\n", text)]

    def line(self, pos: int) -> int:
        """The 1-based line of offset ``pos``, counted the way JSONDecodeError counts."""
        return bisect_left(self._breaks, pos) + 1

    def item_starts(self) -> list[int]:
        """The offset of each item of the top-level array."""
        text, starts = self.text, []
        pos = _skip(text, _skip(text, 0) + 1)  # past '['
        while text[pos] != "]":
            starts.append(pos)
            pos = self._after_value(pos)
        return starts

    def key_lines(self, start: int) -> dict[str, int]:
        """For the value at ``start``: its line under ``""`` and, if it is an object, the line of each key."""
        text, lines = self.text, {"": self.line(start)}
        if text[start] != "{":
            return lines
        pos = _skip(text, start + 1)
        while text[pos] == '"':
            key, end = _DECODER.raw_decode(text, pos)
            lines[key] = self.line(pos)  # for a repeated key, the last, which is the one json.loads keeps
            pos = self._after_value(_skip(text, _skip(text, end) + 1))  # past ':' and the value
        return lines

    def _after_value(self, pos: int) -> int:
        """The offset after the value at ``pos`` and the ',' that may follow it."""
        _value, end = _DECODER.raw_decode(self.text, pos)
        end = _skip(self.text, end)
        return _skip(self.text, end + 1) if self.text[end] == "," else end
