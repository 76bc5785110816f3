"""The public web app: one FastAPI application built from the config; routers live in sibling modules.

``create_app(config)`` is the only way in. The app keeps the config and the engine on ``app.state`` so that
routers reach them through the request, never through globals. ``app.state.web`` holds what the
subscriber pages need (signer, rate limiter, back-off, a replaceable clock for tests), ``app.state.clicks``
what the click links need (their targets and, when clicks are counted, the recorder its lifespan writes).

Every answer carries the headers of :mod:`newsletter.web.security`; a malformed request, an unknown page
or a wrong method gets a page (JSON under ``/api/``) with one line saying why, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Engine
from starlette.exceptions import HTTPException

from newsletter.config import Config
from newsletter.clicks import ClickRecorder, Targets
from newsletter.db import open_database
from newsletter.models import utcnow
from newsletter.tokens import LinkSigner
from newsletter.web import api, archive, clicks, pages
from newsletter.web.limits import Backoff, RateLimiter
from newsletter.web.security import PAGE_POLICY, SecurityHeaders, describe_invalid, redact_logs

STYLESHEET = Path(__file__).parent / "static" / "site.css"
_TITLES = {404: "Page not found", 405: "Not allowed here", 422: "This request is not valid"}


def create_app(config: Config, engine: Engine | None = None) -> FastAPI:
    """Build the web app for ``config``; ``engine`` defaults to the configured database (migrated)."""
    redact_logs()
    # No /docs or /redoc: Swagger UI runs inline script from a CDN, which the pages' policy forbids.
    app = FastAPI(title=config.newsletter.name, docs_url=None, redoc_url=None, lifespan=clicks.counting)
    app.state.config = config
    app.state.engine = engine if engine is not None else open_database(config)
    app.state.clicks = clicks.ClickState(
        Targets(app.state.engine), ClickRecorder(app.state.engine, config) if config.tracking.clicks else None)

    def seconds() -> float:
        return state.clock().timestamp()

    state = pages.WebState(
        config=config,
        engine=app.state.engine,
        clock=utcnow,
        signer=LinkSigner(config, clock=seconds),
        limiter=RateLimiter(config.web.subscribe_limit_per_ip, pages.RATE_WINDOW, clock=seconds),
        backoff=Backoff(clock=seconds),
    )
    app.state.web = state
    # Personal tokens sit in page URLs: never send them on as a Referer, never cache the pages.
    app.add_middleware(
        SecurityHeaders,
        headers={"Content-Security-Policy": PAGE_POLICY, "Referrer-Policy": "no-referrer",
                 "X-Content-Type-Options": "nosniff"},
        no_store_except=("/archive",), json_paths=("/api/",),
    )  # fmt: skip

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        reason = {404: "There is nothing at this address. Check the link, or start from the subscribe page.",
                  405: f"This address does not accept {request.method} requests."}.get(exc.status_code, exc.detail)
        return _error(request, exc.status_code, reason, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        return _error(request, 422, describe_invalid(exc))

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    css = STYLESHEET.read_bytes()

    @app.api_route("/site.css", methods=["GET", "HEAD"], include_in_schema=False)
    def stylesheet() -> Response:
        return Response(css, media_type="text/css; charset=utf-8", headers={"Cache-Control": "public, max-age=3600"})

    app.include_router(clicks.router)  # first: the route asked most often is matched first
    app.include_router(pages.router)
    app.include_router(archive.router)
    app.include_router(api.router)
    return app


def _error(request: Request, status: int, reason: str, headers: dict[str, str] | None = None) -> Response:
    """A page with ``reason`` as its one line (JSON ``{"error": reason}`` under ``/api/``)."""
    if request.url.path.startswith("/api/"):
        response: Response = JSONResponse({"error": reason}, status_code=status)
    else:
        response = pages.notice(request, _TITLES.get(status, "This request cannot be answered"), reason, status=status,
                                link_url=f"{pages._root(request)}/", link_label="Go to the subscribe page")
    response.headers.update(headers or {})
    return response
