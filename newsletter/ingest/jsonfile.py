"""JSON summaries: ``.json`` holds one object or an array of objects; ``.jsonl`` holds one object per line.

Keys are the fields of :class:`~newsletter.ingest.base.SummaryIn` (``title``, ``summary``, ``url`` ...).
"""

from __future__ import annotations

import json
from pathlib import Path

from newsletter.errors import IngestError
from newsletter.ingest.base import Reader, SummaryIn, read_text, validate_item


class JsonReader(Reader):
    """A ``.json`` file: one summary object, or an array of them. Errors name the line or the array index."""

    file_extensions = (".json",)

    def read(self, path: Path) -> list[SummaryIn]:
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as exc:
            raise IngestError(
                f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno}); fix the syntax there"
            ) from None
        if isinstance(data, dict):
            return [validate_item(data, where=str(path))]
        if isinstance(data, list):
            return [validate_item(item, where=f"{path}: item at index {i}") for i, item in enumerate(data)]
        raise IngestError(f"{path}: expected an object or an array of objects, got {type(data).__name__}")


class JsonLinesReader(Reader):
    """A ``.jsonl`` file: one summary object per line; blank lines are ignored. Errors name the line."""

    file_extensions = (".jsonl",)

    def read(self, path: Path) -> list[SummaryIn]:
        items = []
        for number, line in enumerate(read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise IngestError(
                    f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); "
                    f"each line must hold one complete object"
                ) from None
            items.append(validate_item(data, where=f"{path}:{number}"))
        return items
