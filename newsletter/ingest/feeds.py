"""RSS 0.9x–2.0 and Atom feeds, from a URL (``fetch_feed``, ``poll_feeds``) or a local file (``FeedReader``).

Feeds are parsed by feedparser. Over HTTP they are fetched with httpx under a timeout and the
``ingest.max_bytes`` limit, conditionally (``If-None-Match`` / ``If-Modified-Since`` from the ETag and
Last-Modified kept per feed in the ``feedstate`` table). An item's identity is its guid (Atom id), else
its link; an item without a date gets the time it was ingested.

A failing feed (unreachable, HTTP error, too large, not a feed) is recorded and logged and its validators
are left as they were, so the next poll fetches it again in full: nothing is marked as seen until its items
are stored. A single item without a title or summary is skipped (and reported); the rest of the feed goes
in, in one transaction.
"""

from __future__ import annotations

import calendar
import html.entities
import logging
import pyexpat
import re
import xml.sax
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import feedparser
# feedparser's own step that turns a feed into UTF-8 before its XML parser sees it (not in its API)
from feedparser.encodings import convert_to_utf8
import httpx
from sqlalchemy import Engine
from sqlmodel import select

from newsletter import __version__
from newsletter.config import Config, IngestSection
from newsletter.db import session
from newsletter.errors import IngestError
from newsletter.ingest.base import Reader, SummaryIn, scoped_uid, validate_item
from newsletter.ingest.clean import extractive_summary, sanitise
from newsletter.ingest.store import IngestReport, ingest_items
from newsletter.models import FeedState, utcnow
from newsletter.urls import http_url_problem

log = logging.getLogger(__name__)

USER_AGENT = f"newsletter/{__version__} (+feed reader)"
# feedparser flags these but still parses the document correctly.
_HARMLESS = (feedparser.CharacterEncodingOverride, feedparser.NonXMLContentType)


class FeedReader(Reader):
    """A feed saved as a file (``.xml``, ``.rss``, ``.atom``); IngestError if it is not a readable feed."""

    file_extensions = (".xml", ".rss", ".atom")
    dates_undated = True

    def read(self, path: Path) -> list[SummaryIn]:
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise IngestError(f"{path}: cannot be read ({exc.strerror}); check the path") from None
        # A saved feed's local guids are scoped to the file itself: its self link, if it has one, may be a
        # template's (the same in unrelated feeds), which would merge what the scoping keeps apart.
        items, skipped = feed_items(content, where=str(path), settings=self.settings, scope=path.resolve().as_uri())
        if skipped:
            raise IngestError(skipped[0])  # a file is all or nothing, like every other file
        return items


def parse_feed(content: bytes, *, where: str) -> Any:
    """The parsed feed; IngestError if the document is not a well-formed RSS or Atom feed.

    HTML's named entities (``&aacute;`` in an RSS 2.0 feed) are read as the characters they name, as
    feedparser's loose parser reads them; any other undefined entity is an error naming it. An entity the
    document declares itself is used only when its value is plain text or one character reference: a feed
    declaring one that refers to other entities (a "billion laughs"), a parameter entity or an external
    (``SYSTEM``/``PUBLIC``) one is refused before any parser sees it, so nothing is expanded or fetched.
    """
    unsafe = _unsafe_declaration(content)
    if unsafe:
        raise IngestError(f"{where}: not read: the feed {unsafe}")
    parsed = feedparser.parse(_html_entities_as_numbers(content), sanitize_html=False, resolve_relative_uris=False)
    problem = parsed.get("bozo_exception")
    if parsed.get("bozo") and not isinstance(problem, _HARMLESS):
        reason = " ".join(str(problem).split()) or type(problem).__name__
        if isinstance(problem, xml.sax.SAXParseException):
            reason = _xml_problem(problem, content)
        raise IngestError(f"{where}: not a valid RSS or Atom feed ({reason})")
    if not parsed.get("version"):
        raise IngestError(f"{where}: not an RSS or Atom feed (no <rss>, <rdf:RDF> or <feed> root element)")
    return parsed


# "&name;" in an ASCII-compatible encoding (UTF-8, Latin-1, ...: what feeds are written in). XML defines
# five names itself; HTML 4's 252 others (the table feedparser's loose parser uses: HTML5 moved a few, such
# as &lang;) become numeric references, which every XML parser reads.
_ENTITY = re.compile(rb"&([A-Za-z][A-Za-z0-9]{1,31});")
_XML_ENTITIES = {"amp", "lt", "gt", "quot", "apos"}
_HTML_ENTITIES = {
    name.encode(): f"&#{code};".encode()
    for name, code in html.entities.name2codepoint.items()
    if name not in _XML_ENTITIES
}


def _html_entities_as_numbers(content: bytes) -> bytes:
    """``content`` with HTML's named entities as numeric references (``&aacute;`` → ``&#225;``).

    Inside CDATA the text is literal, but it is HTML there too and reads the same either way. A document
    in UTF-16 or UTF-32 is left as it is (the pattern cannot match it).
    """
    return _ENTITY.sub(lambda match: _HTML_ENTITIES.get(match[1], match[0]), content)


_DECLARATION = re.compile(
    rb"<!ENTITY\s+(?P<parameter>%\s+)?(?P<name>[^\s>]+)\s+(?:(?P<external>SYSTEM|PUBLIC)\b|\"(?P<dq>[^\"]*)\"|'(?P<sq>[^']*)')"
)
_ONE_CHARACTER = re.compile(rb"&#(?:[0-9]+|x[0-9A-Fa-f]+);")


class _FirstElement(Exception):
    """Raised by the prolog check's handler: the DOCTYPE is over, nothing more can be declared."""


def _unsafe_declaration(content: bytes) -> str | None:
    """What is unsafe about the entities the document declares, if anything: a parameter or external
    entity, or one whose value refers to other entities.

    The declarations are those expat (the parser of feedparser's strict mode) reads from the bytes
    feedparser gives it (the document turned into UTF-8 as feedparser does, so a UTF-16 or EBCDIC feed is
    checked too), up to the first element. Comments, processing instructions and quoted values in the
    DOCTYPE are expat's to skip, so no markup before a declaration can hide it, and a declaration quoted in
    a comment or a CDATA section is not one. A document whose prolog expat cannot read is scanned whole:
    any ``<!ENTITY`` in it that would be unsafe refuses it.
    """
    scratch: dict[str, Any] = {}
    text = convert_to_utf8({}, content, scratch)
    if not scratch.get("encoding"):
        text = content  # no encoding fits: feedparser's loose parser reads it, expanding nothing of its own
    found: list[str] = []

    def declared(name: str, parameter: int, value: str | None, _base: Any, system: str | None,
                 public: str | None, _notation: Any) -> None:
        if found:
            return
        if parameter:
            found.append(f"declares the parameter entity %{name}; which would be read from elsewhere; "
                         f"remove the DOCTYPE")
        elif system is not None or public is not None:
            kind = "PUBLIC" if public is not None else "SYSTEM"
            found.append(f"declares &{name}; as an external entity ({kind}), whose content would be read "
                         f"from a file or URL; remove the DOCTYPE")
        elif value is not None and "&" in value:  # the value with its character references resolved
            found.append(f"declares &{name}; in terms of other entities, which could expand to gigabytes "
                         f"(a 'billion laughs'); remove the DOCTYPE")
        if found:
            raise _FirstElement

    def first_element(*_args: Any) -> None:
        raise _FirstElement

    parser = pyexpat.ParserCreate()
    parser.EntityDeclHandler = declared
    parser.StartElementHandler = first_element
    try:
        parser.Parse(text, True)
    except _FirstElement:
        return found[0] if found else None
    except (pyexpat.ExpatError, ValueError, LookupError):
        pass  # not well-formed before its first element (feedparser will say so), or an unknown encoding
    return _unsafe_declaration_anywhere(text)


def _unsafe_declaration_anywhere(text: bytes) -> str | None:
    """The first unsafe ``<!ENTITY`` anywhere in ``text`` (a document expat could not read up to its first
    element, where what is a declaration cannot be told)."""
    for match in _DECLARATION.finditer(text):
        name = match["name"].decode("ascii", "replace")
        value = match["dq"] if match["dq"] is not None else match["sq"]
        if match["parameter"]:
            return f"declares the parameter entity %{name}; which would be read from elsewhere; remove the DOCTYPE"
        if match["external"]:
            return (f"declares &{name}; as an external entity ({match['external'].decode()}), whose content "
                    f"would be read from a file or URL; remove the DOCTYPE")
        if value is not None and (b"%" in value or (b"&" in value and not _ONE_CHARACTER.fullmatch(value))):
            return (f"declares &{name}; in terms of other entities, which could expand to gigabytes (a "
                    f"'billion laughs'); remove the DOCTYPE")
    return None


def _xml_problem(problem: xml.sax.SAXParseException, content: bytes) -> str:
    """The XML parser's complaint, naming the entity it did not know when that is the problem. (Its line
    number is left out: it counts lines of the text feedparser hands it, which may have one line more.)"""
    message = problem.getMessage()
    if message != "undefined entity":
        return message
    declared = set(re.findall(rb"<!ENTITY\s+(\w+)", content))
    unknown = next(
        (match[0].decode() for match in _ENTITY.finditer(content)
         if match[1].decode() not in _XML_ENTITIES and match[1] not in _HTML_ENTITIES and match[1] not in declared),
        None,
    )
    named = f" {unknown}" if unknown else ""
    return (f"undefined entity{named}: only XML's and HTML's named entities are read, and a feed's own entity "
            f"declarations only when they are plain text or one character reference")


def feed_items(
    content: bytes, *, where: str, settings: IngestSection, scope: str
) -> tuple[list[SummaryIn], list[str]]:
    """The feed's items as summaries (undated ones without a date), and a message per item skipped.

    ``scope`` is the feed's URL (for a saved file, the file's ``file:`` URI): a guid that is not globally
    unique is only unique within it (see :func:`entry_uid`).
    """
    parsed = parse_feed(content, where=where)
    source = parsed.feed.get("title") or None
    items, skipped = [], []
    for index, entry in enumerate(parsed.entries):
        label = entry.get("id") or entry.get("link") or f"item {index + 1}"
        try:
            items.append(validate_item(_entry_fields(entry, source, settings, scope), where=where,
                                       item=f"item {label!r}"))
        except IngestError as exc:
            skipped.append(str(exc))
    return items, skipped


# Ids that name themselves world-wide: a URL (RSS permalinks, and WordPress's isPermaLink="false" guids,
# which are the same in every feed of one site), an RFC 4151 tag: or a urn: (Atom ids, by RFC 4287).
_GLOBAL_ID = re.compile(r"(?:https?://[^/\s?#]+|tag:|urn:)", re.IGNORECASE)


def entry_uid(entry: Any, scope: str) -> str | None:
    """The identity of a feed item: its guid / Atom id, else its link; None if it has neither.

    A guid that is not a URL, tag: or urn: (``<guid isPermaLink="false">42</guid>``) is only unique within
    its feed, so it is scoped to ``scope`` (:func:`~newsletter.ingest.base.scoped_uid`): two feeds' item
    "42" are two summaries. A URL guid or a link stays global, so one article in two feeds is one summary.
    Such items were stored under the bare guid before; the upsert adopts that row when it came from the
    same origin (:func:`~newsletter.ingest.store.ingest_items`), so re-fetching a feed does not duplicate it.
    """
    guid = str(entry.get("id") or "").strip()
    if not guid:
        return entry.get("link") or None
    return guid if _GLOBAL_ID.match(guid) else scoped_uid(scope, guid)


def _entry_fields(entry: Any, source: str | None, settings: IngestSection, scope: str) -> dict[str, Any]:
    content = next((part.get("value") for part in entry.get("content", []) if part.get("value")), None)
    summary = sanitise(entry.get("summary") or "") or sanitise(content or "")
    if len(summary) > settings.summary_length:
        summary = extractive_summary(summary, settings.summary_length)
    body = sanitise(content) if content else None
    terms = [tag.get("term") for tag in entry.get("tags", []) if tag.get("term")]
    stamp = entry.get("published_parsed") or entry.get("updated_parsed")
    image = next((m.get("url") for m in entry.get("media_thumbnail", []) if m.get("url")), None) or next(
        (e.get("href") for e in entry.get("enclosures", []) if str(e.get("type", "")).startswith("image/")), None
    )
    fields: dict[str, Any] = {
        "title": entry.get("title") or "",
        "summary": summary,
        "url": entry.get("link") or None,
        "uid": entry_uid(entry, scope),
        "source": source,
        "category": terms[0] if terms else None,
        "tags": terms,
        "body": body if body and body != summary else None,
        "image_url": image,
        "published_at": datetime.fromtimestamp(calendar.timegm(stamp), UTC) if stamp else None,
    }
    # Absent values are left out so validation reports only what the item has; title and summary stay in
    # so that their absence is reported by name.
    return {key: value for key, value in fields.items() if value or key in ("title", "summary")}


@dataclass
class FeedResult:
    """One fetch of one feed: ``status`` is "ok", "not-modified" or "error"."""

    url: str
    status: str
    report: IngestReport = field(default_factory=IngestReport)
    skipped: list[str] = field(default_factory=list)
    error: str | None = None

    def summary_line(self) -> str:
        if self.status == "error":
            return f"{self.url}: failed: {self.error}"
        if self.status == "not-modified":
            return f"{self.url}: not modified since the last fetch"
        skipped = f", skipped {len(self.skipped)} invalid items" if self.skipped else ""
        return f"{self.url}: {self.report.summary_line()}{skipped}"


@dataclass
class PollResult:
    """What one scheduled poll of every configured feed did."""

    feeds: list[FeedResult] = field(default_factory=list)

    @property
    def failed(self) -> list[FeedResult]:
        return [result for result in self.feeds if result.status == "error"]

    def summary_line(self) -> str:
        return "; ".join(result.summary_line() for result in self.feeds) or "no feeds"


def fetch_feed(
    engine: Engine, url: str, settings: IngestSection, *, client: httpx.Client | None = None
) -> FeedResult:
    """Fetch ``url`` conditionally, store its items, and record the outcome in ``feedstate``.

    Never raises for a feed's own failure (network, HTTP status, size, not a feed): the result says
    "error" and the message is logged. Database errors propagate.
    """
    problem = http_url_problem(url, example="https://example.org/feed.xml")
    if problem:  # a typo on the command line: nothing to fetch, and nothing to remember about it
        log.info("feed not fetched: %s %s", url, problem)  # the caller reports it, as it does rejected files
        return FeedResult(url, "error", error=problem)
    state = _state(engine, url)
    headers = {"User-Agent": USER_AGENT, "Accept": "application/rss+xml, application/atom+xml, */*;q=0.5"}
    if state.etag:
        headers["If-None-Match"] = state.etag
    if state.last_modified:
        headers["If-Modified-Since"] = state.last_modified
    own_client = client is None
    client = client or httpx.Client(timeout=settings.fetch_timeout_seconds, follow_redirects=True)
    try:
        response, content = _get(client, url, headers, settings.max_bytes)
        if response.status_code == 304:
            result = FeedResult(url, "not-modified")
        else:
            items, skipped = feed_items(content, where=url, settings=settings, scope=url)
            report = ingest_items(engine, items, origin=url, undated=utcnow())
            result = FeedResult(url, "ok", report, skipped)
            for message in skipped:
                log.warning("skipped %s", message)
    except (httpx.HTTPError, IngestError) as exc:  # the URL was checked above (http_url_problem)
        message = str(exc) if isinstance(exc, IngestError) else f"{url}: {_describe(exc)}"
        log.error("feed failed, will retry at the next poll: %s", message)
        result = FeedResult(url, "error", error=message.removeprefix(f"{url}: "))
        response = None
    finally:
        if own_client:
            client.close()
    _record(engine, state, result, response)
    return result


def _get(client: httpx.Client, url: str, headers: dict[str, str], limit: int) -> tuple[httpx.Response, bytes]:
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 304:
            return response, b""
        if response.status_code >= 400:
            raise IngestError(f"{url}: the server answered HTTP {response.status_code}; check the feed URL")
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise IngestError(f"{url}: {int(declared):,} bytes is over the limit of {limit:,} (ingest.max_bytes)")
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise IngestError(f"{url}: more than {limit:,} bytes, the limit (ingest.max_bytes)")
            chunks.append(chunk)
        return response, b"".join(chunks)


def _describe(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out (ingest.fetch_timeout_seconds)"
    return f"cannot be fetched ({' '.join(str(exc).split()) or type(exc).__name__})"


def _state(engine: Engine, url: str) -> FeedState:
    with session(engine) as db:
        return db.exec(select(FeedState).where(FeedState.url == url)).first() or FeedState(url=url)


def _record(engine: Engine, state: FeedState, result: FeedResult, response: httpx.Response | None) -> None:
    now = utcnow()
    with session(engine) as db, db.begin():
        row = db.get(FeedState, state.id) if state.id is not None else None
        row = row or FeedState(url=state.url)
        row.last_fetch_at, row.last_status, row.last_error = now, result.status, result.error
        if result.status != "error":
            row.last_success_at = now
        if result.status == "ok" and response is not None:  # validators only once the items are stored
            row.etag = response.headers.get("ETag")
            row.last_modified = response.headers.get("Last-Modified")
            row.items_seen = len(result.report.ids)
        db.add(row)


def poll_feeds(engine: Engine, config: Config) -> PollResult:
    """Fetch every feed in ``ingest.feeds`` once (the scheduler's job, every ``schedule.intervals.feeds`` minutes).

    Never raises for a failing feed; the failures are in the result and logged.
    """
    result = PollResult()
    if not config.ingest.feeds:
        return result
    with httpx.Client(timeout=config.ingest.fetch_timeout_seconds, follow_redirects=True) as client:
        for url in config.ingest.feeds:
            outcome = fetch_feed(engine, url, config.ingest, client=client)
            log.info(outcome.summary_line())
            result.feeds.append(outcome)
    return result


def feed_states(engine: Engine) -> list[FeedState]:
    """Every feed fetched so far with its last fetch time, status and error, by URL (for ``status``)."""
    with session(engine) as db:
        return list(db.exec(select(FeedState).order_by(FeedState.url)))
