"""The public web app: one FastAPI application built from the config; routers live in sibling modules.

``create_app(config)`` is the only way in. The app keeps the config and the engine on ``app.state`` so that
routers reach them through the request, never through globals. ``app.state.web`` holds what the
subscriber pages need (signer, rate limiter, a replaceable clock for tests).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from sqlalchemy import Engine

from newsletter.config import Config
from newsletter.db import open_database
from newsletter.models import utcnow
from newsletter.tokens import LinkSigner
from newsletter.web import api, archive, pages


def create_app(config: Config, engine: Engine | None = None) -> FastAPI:
    """Build the web app for ``config``; ``engine`` defaults to the configured database (migrated)."""
    app = FastAPI(title=config.newsletter.name)
    app.state.config = config
    app.state.engine = engine if engine is not None else open_database(config)
    state = pages.WebState(
        config=config,
        engine=app.state.engine,
        clock=utcnow,
        signer=LinkSigner(config, clock=lambda: state.clock().timestamp()),
        limiter=pages.RateLimiter(
            config.web.subscribe_limit_per_ip, pages.RATE_WINDOW, clock=lambda: state.clock().timestamp()
        ),
    )
    app.state.web = state

    @app.middleware("http")
    async def private_links(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # Personal tokens sit in page URLs: never send them on as a Referer, never cache the pages.
        response = await call_next(request)
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if not request.url.path.startswith("/archive"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(pages.router)
    app.include_router(archive.router)
    app.include_router(api.router)
    return app
