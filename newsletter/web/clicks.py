"""Click links (``/c/<token>``): a ``302`` to the item's URL, counted when ``tracking.clicks`` is on.

The token names an issue, an item and the hash of a URL (:meth:`~newsletter.tokens.LinkSigner.read_click`);
the answer leads only to a URL that issue linked to (:class:`~newsletter.clicks.Targets`), so no token can
turn the site into an open redirect. Links keep working for ever, also once tracking is turned off (then
they are not counted) and after the issue's summaries are gone (the archive's copy still has the URLs).

Only a ``GET`` is counted; a ``HEAD`` (link checkers, some previewers) gets the same answer uncounted.
Counting costs the answer one call that touches no database (:meth:`~newsletter.clicks.ClickRecorder.record`);
an issue's URLs are read once and kept in memory.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from newsletter.clicks import ClickRecorder, Targets
from newsletter.errors import InvalidToken
from newsletter.web.pages import _root, _state, notice

router = APIRouter()


@dataclass
class ClickState:
    """What the click handler needs, kept on ``app.state.clicks``: ``recorder`` is None when clicks are not
    counted (``tracking.clicks`` off)."""

    targets: Targets
    recorder: ClickRecorder | None
    stop: threading.Event = field(default_factory=threading.Event)


@asynccontextmanager
async def counting(app: FastAPI) -> AsyncIterator[None]:
    """The app's lifespan: a thread writes the counted clicks while the app runs, and the rest at shutdown."""
    state: ClickState = app.state.clicks
    if state.recorder is None:
        yield
        return
    state.stop.clear()  # an app started again (tests do) counts again
    writer = threading.Thread(target=state.recorder.run, args=(state.stop,), name="click-counter", daemon=True)
    writer.start()
    try:
        yield
    finally:
        state.stop.set()
        await run_in_threadpool(writer.join, 30)


async def follow_link(request: Request) -> Response:
    """A link of an issue's item: counted (a GET), then a 302 to the item's URL; a HEAD gets the same answer
    uncounted (link checkers and previewers ask with HEAD)."""
    return await _follow(request, request.path_params["token"], count=request.method == "GET")


# A plain Starlette route, not a FastAPI operation: FastAPI's parameter machinery doubled what a click costs
# the server (bench/clicks.py). So /openapi.json does not list it; docs/engagement.md describes it.
router.add_route("/c/{token}", follow_link, methods=["GET", "HEAD"], include_in_schema=False)


async def _follow(request: Request, token: str, *, count: bool) -> Response:
    state: ClickState = request.app.state.clicks
    try:
        named = _state(request).signer.read_click(token)
    except InvalidToken:
        return notice(request, "This link does not work",
                      "It may have been cut short or changed when it was copied. Open it again from the email, "
                      "or find the issue in the archive.", status=404,
                      link_url=f"{_root(request)}/archive", link_label="All past issues")
    found = state.targets.cached(named) or await run_in_threadpool(state.targets.load, named)
    if found is None or found[1] is None:  # only a link we signed gets here: its issue or its URL is gone
        return notice(request, "This link leads nowhere now",
                      f"Issue {named.issue} has no such link any more. The issue itself may still be in the archive.",
                      status=404, link_url=f"{_root(request)}/archive", link_label="All past issues")
    issue_id, url = found
    if count and state.recorder is not None:
        client = request.client.host if request.client else None
        state.recorder.record(issue_id, named, client, request.headers.get("user-agent"))
    return RedirectResponse(url, status_code=302)
