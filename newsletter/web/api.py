"""``POST /api/summaries``: other programs send summaries as JSON, one object or a list of them.

Authorisation is ``Authorization: Bearer <NEWSLETTER_API_TOKEN>``; without the variable set the API refuses
every request. Fields are those of the summary files (``title``, ``summary``, ``url`` ...), plus
``format``: ``text`` (default), ``markdown`` (``summary``, ``body`` and key points rendered with
markdown-it-py, as in ``.md`` files) or ``html`` (cleaned with the nh3 allow-list, like every field). An
item without a ``summary`` but with a ``body`` gets the first sentences of the body's cleaned text, up to
``ingest.summary_length``.

Answers: 201 ``{"ids": [...], "added": n, "updated": n, "unchanged": n}``; 400 ``{"errors": [{"index": i,
"error": "..."}]}`` with nothing stored if any item is bad (a request is one transaction); 401 without a
valid token; 413 for a body over ``ingest.max_bytes``; 429 with ``Retry-After`` for a client that sent
too many wrong tokens (:class:`~newsletter.web.limits.Backoff`). A body that no summary can be (nested
deeper than :data:`MAX_DEPTH`, a number longer than :data:`MAX_DIGITS` digits, ``NaN``) is a 400 saying so.
"""

from __future__ import annotations

import hmac
import json
import math
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from newsletter.config import Config
from newsletter.errors import IngestError
from newsletter.ingest import SummaryIn, ingest_items, validate_item
from newsletter.ingest.base import render_markdown_fields
from newsletter.web.limits import Backoff

router = APIRouter()
FORMATS = ("text", "markdown", "html")
MAX_DEPTH = 32  # a list of summaries with lists inside is 3 deep
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_DIGITS = 20  # a 64-bit number; Python refuses over 4,300 digits with a ValueError of its own


def summary_schema() -> dict[str, Any]:
    """The JSON Schema of one summary as the API takes it: :class:`SummaryIn`'s own (so the two cannot
    drift), plus ``format``, and a ``summary`` that a ``body`` can stand in for."""
    schema = SummaryIn.model_json_schema()  # flat: no $defs, which the OpenAPI document would not resolve
    schema["properties"]["format"] = {"enum": list(FORMATS), "default": "text", "title": "Format"}
    schema["required"] = [name for name in schema["required"] if name != "summary"]
    schema["anyOf"] = [{"required": ["summary"]}, {"required": ["body"]}]
    return schema


# The body is read by hand (to count its bytes as they arrive); this describes it for the OpenAPI schema.
_SUMMARY = summary_schema()
_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "anyOf": [_SUMMARY, {"type": "array", "items": _SUMMARY}]}}}}}  # fmt: skip


@router.post("/api/summaries", status_code=201, openapi_extra=_BODY)
async def post_summaries(request: Request) -> JSONResponse:
    config: Config = request.app.state.config
    backoff: Backoff = request.app.state.web.backoff
    client = request.client.host if request.client else None
    wait = backoff.retry_after(client)
    if wait:  # refused unread: while shut out, a right guess looks like a wrong one
        seconds = math.ceil(wait)
        return JSONResponse({"error": f"too many wrong tokens from your address; try again in {seconds} s"},
                            status_code=429, headers={"Retry-After": str(seconds)})
    given, token = _bearer(request), (config.ingest.api_token or "").encode()
    if given is None or not token or not hmac.compare_digest(given, token):
        if given is not None:  # no token at all is not a guess
            backoff.failed(client)
        return JSONResponse({"error": "a valid 'Authorization: Bearer <token>' header is required"},
                            status_code=401, headers={"WWW-Authenticate": "Bearer"})
    backoff.succeeded(client)
    limit = config.ingest.max_bytes
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and (len(declared) > 15 or int(declared) > limit):
        return _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return _too_large(limit)
    try:
        data = json.loads(body.decode("utf-8"), parse_int=_integer, parse_constant=_no_constant)
        _check_body(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _bad_body(f"the body is not UTF-8 JSON ({exc})")
    except RecursionError:  # json's C parser gives up near 1,000 levels, before _check_body could
        return _bad_body(f"the body is nested more than {MAX_DEPTH} levels deep; send flat summary objects")
    except ValueError as exc:  # from _integer, _no_constant, _check_body
        return _bad_body(str(exc))
    entries = data if isinstance(data, list) else [data]
    items: list[SummaryIn] = []
    problems: list[dict[str, Any]] = []
    for index, entry in enumerate(entries):
        try:
            items.append(validate_item(_prepared(entry), where=f"item {index}",
                                       summary_length=config.ingest.summary_length))
        except IngestError as exc:
            problems.append({"index": index, "error": str(exc).removeprefix(f"item {index}: ")})
    if not entries or problems:
        return JSONResponse({"errors": problems or [{"index": None, "error": "no items; send an object or a list"}]},
                            status_code=400)
    # the database write is synchronous: run it in a worker thread, not on the event loop
    report = await run_in_threadpool(ingest_items, request.app.state.engine, items, origin="api")
    return JSONResponse(
        {"ids": report.ids, "added": report.added, "updated": report.updated, "unchanged": report.unchanged},
        status_code=201,
    )


def _bearer(request: Request) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header; None without one (not a guess)."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return given.strip().encode() if scheme.lower() == "bearer" and given.strip() else None


def _bad_body(reason: str) -> JSONResponse:
    return JSONResponse({"errors": [{"index": None, "error": " ".join(reason.split())}]}, status_code=400)


def _integer(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"the body has a number of {len(digits.lstrip('-'))} digits; no field takes more than "
                         f"{MAX_DIGITS}")
    return int(digits)


def _no_constant(name: str) -> Any:
    raise ValueError(f"the body has {name}, which is not JSON; send a number or a string")


def _check_body(data: Any) -> None:
    """ValueError when ``data`` is nested deeper than MAX_DEPTH, or a string in it (a key too) holds a lone
    surrogate: JSON can escape one (``"\\ud800"``), but it is no text that can be stored or sent on."""
    pending = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"the body is nested more than {MAX_DEPTH} levels deep; send flat summary objects")
        if isinstance(value, dict):
            pending.extend((key, depth) for key in value)
            pending.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            pending.extend((item, depth + 1) for item in value)
        elif isinstance(value, str) and not value.isascii() and _LONE_SURROGATE.search(value):
            raise ValueError("the body holds a \\ud800-\\udfff escape without its pair, which is not text; "
                             "send the character itself")


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"error": f"the request body is over {limit:,} bytes (ingest.max_bytes); send fewer items"},
                        status_code=413)


def _prepared(entry: Any) -> Any:
    """``entry`` with ``format`` applied and removed."""
    if not isinstance(entry, dict):
        return entry
    entry = dict(entry)
    form = entry.pop("format", "text")
    if form not in FORMATS:
        raise IngestError(f"field 'format': {form!r} is not one of {', '.join(FORMATS)}")
    if form == "markdown":
        entry = render_markdown_fields(entry)
    return entry
