"""``POST /api/summaries``: other programs send summaries as JSON, one object or a list of them.

Authorisation is ``Authorization: Bearer <NEWSLETTER_API_TOKEN>``; without the variable set the API refuses
every request. Fields are those of the summary files (``title``, ``summary``, ``url`` ...), plus
``format``: ``text`` (default), ``markdown`` (``summary``, ``body`` and key points rendered with
markdown-it-py, as in ``.md`` files) or ``html`` (cleaned with the nh3 allow-list, like every field). An
item without a ``summary`` but with a ``body`` gets the first sentences of the body's cleaned text, up to
``ingest.summary_length``.

Answers: 201 ``{"ids": [...], "added": n, "updated": n, "unchanged": n}``; 400 ``{"errors": [{"index": i,
"error": "..."}]}`` with nothing stored if any item is bad (a request is one transaction); 401 without a
valid token; 413 for a body over ``ingest.max_bytes``.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from newsletter.config import Config
from newsletter.errors import IngestError
from newsletter.ingest import SummaryIn, ingest_items, validate_item
from newsletter.ingest.base import render_markdown_fields

router = APIRouter()
FORMATS = ("text", "markdown", "html")


@router.post("/api/summaries", status_code=201)
async def post_summaries(request: Request) -> JSONResponse:
    config: Config = request.app.state.config
    if not _authorised(request, config.ingest.api_token):
        return JSONResponse({"error": "a valid 'Authorization: Bearer <token>' header is required"},
                            status_code=401, headers={"WWW-Authenticate": "Bearer"})
    limit = config.ingest.max_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return _too_large(limit)
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return JSONResponse({"errors": [{"index": None, "error": f"the body is not UTF-8 JSON ({exc})"}]},
                            status_code=400)
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


def _authorised(request: Request, token: str | None) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


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
