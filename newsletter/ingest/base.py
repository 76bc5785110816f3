"""What every reader produces (:class:`SummaryIn`), the :class:`Reader` contract, and reader lookup.

Readers register in the ``newsletter.readers`` entry-point group, built-ins exactly like plugins::

    [project.entry-points."newsletter.readers"]
    myformat = "my_package.module:MyReader"

and are chosen by file extension, so the core never branches on a format's name.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from newsletter.config import IngestSection
from newsletter.errors import IngestError
from newsletter.ingest.clean import (
    extractive_summary,
    markdown_inline_to_text,
    markdown_to_text,
    normalise_title,
    sanitise,
)
from newsletter.plugins import load_plugin
from newsletter.urls import http_url_problem

log = logging.getLogger(__name__)

GROUP = "newsletter.readers"
MAX_UID_LENGTH = 512  # the width of Summary.uid


def _aliases(name: str, *others: str, **field: Any) -> Any:
    """A field filled from ``name`` or any of ``others``; optional (None) unless told otherwise."""
    if "default_factory" not in field:
        field.setdefault("default", None)
    return Field(validation_alias=AliasChoices(name, *others), **field)


class SummaryIn(BaseModel):
    """One incoming summary, validated. Unknown keys are rejected so a typo is reported, not dropped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)

    title: str = Field(min_length=1)
    summary: str = Field(min_length=1)
    url: str | None = _aliases("url", "link")
    source: str | None = _aliases("source", "journal", "publication")
    category: str | None = None
    tags: list[str] = Field(default_factory=list)
    body: str | None = None
    key_points: list[str] = _aliases("key_points", "key_findings", "findings", default_factory=list)
    image_url: str | None = _aliases("image_url", "image")
    image_alt: str | None = None
    published_at: datetime | None = _aliases("published_at", "date")
    subtitle: str | None = None
    article_type: str | None = _aliases("article_type", "type")
    paywalled: bool | None = _aliases("paywalled", "paywall")
    uid: str | None = _aliases("uid", "id", "guid", max_length=MAX_UID_LENGTH)

    @model_validator(mode="before")
    @classmethod
    def _one_name_per_field(cls, data: Any) -> Any:
        # pydantic would call the second spelling an unknown field, which misleads the user.
        if isinstance(data, dict):
            for name in cls.model_fields:
                given = [key for key in input_names(name) if key in data]
                if len(given) > 1:
                    raise ValueError(f"fields {' and '.join(repr(k) for k in given)} mean the same; keep one")
        return data

    @field_validator(
        "url", "source", "category", "body", "image_url", "image_alt", "uid", "subtitle", "article_type",
        mode="before",
    )
    @classmethod
    def _blank_is_absent(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # numeric ids from exports
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("tags", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return [tag.strip() for tag in value.split(",") if tag.strip()]
        return value

    @field_validator("key_points", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("title", "summary")
    @classmethod
    def _required_text_is_safe(cls, value: str, info: ValidationInfo) -> str:
        cleaned = normalise_title(value) if info.field_name == "title" else sanitise(value)
        if not cleaned:
            raise ValueError("is empty once markup and control characters are removed; give it text")
        return cleaned

    @field_validator("body")
    @classmethod
    def _body_is_safe(cls, value: str | None) -> str | None:
        return (sanitise(value) or None) if value is not None else None

    @field_validator("source", "category", "image_alt", "subtitle", "article_type")
    @classmethod
    def _one_line_is_safe(cls, value: str | None) -> str | None:
        return (normalise_title(value) or None) if value is not None else None

    @field_validator("uid")
    @classmethod
    def _printable_id(cls, value: str | None) -> str | None:
        # An id is not text to clean: dropping a character could make it another item's id.
        control = next((char for char in value or "" if unicodedata.category(char) in ("Cc", "Cs")), None)
        if control is not None:
            raise ValueError(f"holds the control character U+{ord(control):04X}; an id must be printable text")
        return value

    @field_validator("tags", "key_points")
    @classmethod
    def _entries_are_safe(cls, value: list[str]) -> list[str]:
        return [cleaned for entry in value if (cleaned := " ".join(sanitise(entry).split()))]

    @field_validator("url", "image_url")
    @classmethod
    def _absolute_http(cls, value: str | None) -> str | None:
        if value is None:
            return None
        problem = http_url_problem(value, example="https://example.org/paper", public=True)  # as the checks do
        if problem:
            raise ValueError(f"{value!r} {problem}")
        return value

    @field_validator("published_at", mode="before")
    @classmethod
    def _iso_date(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):  # pydantic reads numbers as epochs
            raise ValueError(f"{value!r} is not an ISO date; write 2026-11-03 or 2026-11-03T09:30:00+01:00")
        if isinstance(value, date) and not isinstance(value, datetime):
            return datetime.combine(value, time(), tzinfo=UTC)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.strip())  # a bare date becomes midnight
            except ValueError:
                raise ValueError(
                    f"{value!r} is not an ISO date; write 2026-11-03 or 2026-11-03T09:30:00+01:00"
                ) from None
        return value

    @field_validator("published_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        try:
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC; pydantic would not catch it
            raise ValueError(
                f"{value.isoformat()} is out of range once converted to UTC; check the year"
            ) from None


def render_markdown_fields(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with ``summary`` and ``body`` rendered from Markdown to plain text, and each key point (under
    any of its names) rendered inline: what ``format: markdown`` means in the API, and what the text of a
    ``.md`` file is. Values that are not text are left for validation to report."""
    data = dict(data)
    for key in ("summary", "body"):
        if isinstance(data.get(key), str):
            data[key] = markdown_to_text(data[key])
    for key in input_names("key_points"):
        if isinstance(data.get(key), list):
            data[key] = [markdown_inline_to_text(p) if isinstance(p, str) else p for p in data[key]]
    return data


def fill_missing_summary(data: Any, summary_length: int) -> Any:
    """The one rule for an item without a summary: the extractive summary of its body's cleaned text.

    The body is cleaned first (HTML reduced to text by the nh3 allow-list, as validation will), so the cut
    counts what a reader sees, then cut at a sentence end within ``summary_length``
    (:func:`~newsletter.ingest.clean.extractive_summary`). Anything else is returned unchanged.
    """
    if not isinstance(data, dict) or data.get("summary") or not isinstance(data.get("body"), str):
        return data
    text = sanitise(data["body"])
    return {**data, "summary": extractive_summary(text, summary_length)} if text.strip() else data


def input_names(field: str) -> tuple[str, ...]:
    """Every key that fills ``field`` in the input: its name first, then its aliases."""
    alias = SummaryIn.model_fields[field].validation_alias
    return tuple(str(choice) for choice in alias.choices) if isinstance(alias, AliasChoices) else (field,)


def allowed_fields() -> str:
    """The accepted keys for messages, e.g. ``title, summary, url (or link), ...``."""
    described = []
    for field in SummaryIn.model_fields:
        name, *aliases = input_names(field)
        described.append(f"{name} (or {', '.join(aliases)})" if aliases else name)
    return ", ".join(described)


def validate_item(
    data: Any, *, where: str, lines: Mapping[str, int] | None = None, item: str = "",
    summary_length: int | None = None,
) -> SummaryIn:
    """``data`` as a :class:`SummaryIn`; raises IngestError ``{where}[:{line}]: [{item}: ]{problem}``.

    With ``summary_length``, an item that has a body but no summary gets one (:func:`fill_missing_summary`):
    what structured input (JSON, the API) needs; readers that find the summary themselves leave it out.

    ``where`` names the file (``path``, or ``path:line`` when the reader knows the item's line).
    ``lines``, if given, maps input keys to their line in the file, and ``""`` to the item's first line:
    the message points at the line of the key at fault, else at the item's (e.g. for a missing field),
    else at none. ``item`` says which item of the file, e.g. ``item at index 3``. The problem names the
    field and what to write instead.
    """
    if summary_length is not None:
        data = fill_missing_summary(data, summary_length)
    if not isinstance(data, dict):
        key, problem = None, f"expected an object of fields (title, summary, ...), got {type(data).__name__}"
    else:
        try:
            return SummaryIn.model_validate(data)
        except ValidationError as exc:
            key, problem = explain(exc)
    line = None if lines is None else lines.get(key or "", lines.get(""))
    location = where if line is None else f"{where}:{line}"
    raise IngestError(f"{location}: {item}: {problem}" if item else f"{location}: {problem}")


def explain(exc: ValidationError) -> tuple[str | None, str]:
    """The input key at fault (None when the problem is not one key's) and a one-line message naming it."""
    errors = exc.errors()
    # A typo'd key also makes its real field "missing"; the unknown key is the message that helps.
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = error["loc"]
    field = str(loc[0]) if loc else ""
    key = field + "".join(f"[{part}]" for part in loc[1:])
    message = " ".join(error["msg"].removeprefix("Value error, ").split())
    if error["type"] == "extra_forbidden":
        return field, f"unknown field {field!r}; allowed fields: {allowed_fields()}"
    if error["type"] == "missing":
        return None, f"field {field!r} is required"  # absent, so it has no line
    if error["type"] == "string_too_short":
        return field, f"field {field!r} is empty; give it a value"
    return (field, f"field {key!r}: {message}") if key else (None, message)


def canonical_url(url: str) -> str:
    """``url`` with lower-case scheme and host, no fragment, no trailing slash and no ``utm_*`` parameters."""
    parts = urlsplit(url.strip())
    query = [
        (key, value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
        if not key.lower().startswith("utm_")
    ]
    return urlunsplit(
        (parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), urlencode(query, doseq=True), "")
    )


def compute_uid(item: SummaryIn) -> str:
    """The key a summary is deduplicated by: its explicit uid, else its canonical url, else a content hash.

    The hash covers the normalised title, source and publication date, so the same paper summarised
    twice without a url is still recognised.
    """
    if item.uid:
        return item.uid
    if item.url:
        url = canonical_url(item.url)
        return url if len(url) <= MAX_UID_LENGTH else "sha256:" + hashlib.sha256(url.encode()).hexdigest()
    day = item.published_at.date().isoformat() if item.published_at else ""
    normalised = "\n".join(" ".join(part.lower().split()) for part in (item.title, item.source or "", day))
    return "sha256:" + hashlib.sha256(normalised.encode()).hexdigest()


# A feed's own guid scoped to the feed: "<feed URL>#guid=<guid>" (a canonical URL has no fragment of its own).
_SCOPED_UID = re.compile(r"(?P<scope>[a-z][a-z0-9+.-]*:[^\s#]*)#guid=(?P<guid>.+)", re.DOTALL)


def scoped_uid(scope: str, local_id: str) -> str:
    """The uid of an item whose id is only unique inside ``scope`` (a feed's URL): ``<scope>#guid=<id>``.

    Hashed like a long URL when it would not fit the uid column (and then :func:`unscoped_uid` is None).
    """
    uid = f"{canonical_url(scope)}#guid={local_id}"
    return uid if len(uid) <= MAX_UID_LENGTH else "sha256:" + hashlib.sha256(uid.encode()).hexdigest()


def unscoped_uid(uid: str) -> str | None:
    """The id a :func:`scoped_uid` was made from (what such an item was stored under before ids were
    scoped), or None for any other uid."""
    match = _SCOPED_UID.fullmatch(uid)
    return match.group("guid") if match else None


def read_text(path: Path) -> str:
    """The file's text (UTF-8, a BOM is dropped); raises IngestError if it cannot be read or decoded."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    except OSError as exc:
        raise IngestError(
            f"{path}: cannot be read ({exc.strerror}); check the path and its permissions"
        ) from None


class Reader:
    """Base class for ingest formats.

    Contract:

    - ``file_extensions`` lists the lower-case extensions handled, with the dot (``(".md",)``).
    - ``read(path)`` returns every summary in the file as :class:`SummaryIn` (build them with
      :func:`validate_item`, passing ``lines`` if the format knows them), or raises
      :class:`~newsletter.errors.IngestError` whose message starts with the file (and line, where there
      is one) and says what to fix. One bad item rejects the whole file. Any other exception that escapes
      (but a NewsletterError other than IngestError) also rejects just this file, with the poorer message
      ``{path}: {error}`` (a ValueError) or ``{path}: the Reader failed on it (...)`` (anything else, its
      traceback in the log).
    - A reader only reads: it never touches the database. Instances take no arguments; the configured
      limits (``settings.summary_length`` for an extractive summary, ...) are on ``self.settings``, set
      by :func:`reader_for` (the defaults until then). The file size limit is checked before ``read``.
    - ``dates_undated``: True if an item without a date should be stored with the time it is first
      ingested (feeds), rather than without a date.
    """

    file_extensions: ClassVar[tuple[str, ...]] = ()
    dates_undated: ClassVar[bool] = False
    settings: IngestSection = IngestSection()

    def read(self, path: Path) -> list[SummaryIn]:
        raise NotImplementedError(f"{type(self).__name__}.read")


def readers_by_extension() -> dict[str, type[Reader]]:
    """Every registered reader, keyed by lower-case extension. Raises IngestError for a broken plugin."""
    found: dict[str, type[Reader]] = {}
    for entry_point in sorted(entry_points(group=GROUP), key=lambda ep: ep.name):
        cls = load_plugin(entry_point, Reader, IngestError)
        for extension in cls.file_extensions:
            if extension.lower() in found:
                log.warning("%s: already read by %s; ignoring %s", extension, found[extension.lower()], cls)
                continue
            found[extension.lower()] = cls
    return found


def reader_for(
    path: Path, readers: dict[str, type[Reader]], settings: IngestSection | None = None
) -> Reader:
    """A reader for ``path`` by its extension, with ``settings`` (default: the defaults); raises
    IngestError listing the supported extensions."""
    cls = readers.get(path.suffix.lower())
    if cls is None:
        kind = f"'{path.suffix}' files" if path.suffix else "files without an extension"
        supported = ", ".join(sorted(readers)) or "none (is newsletter installed with pip?)"
        raise IngestError(f"{path}: no reader for {kind}; supported extensions: {supported}")
    reader = cls()
    if settings is not None:
        reader.settings = settings
    return reader
