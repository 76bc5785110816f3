"""The public web app: one FastAPI application built from the config; routers live in sibling modules.

``create_app(config)`` is the only way in. The app keeps the config and the engine on ``app.state`` so that
routers reach them through the request, never through globals.
"""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy import Engine

from newsletter.config import Config
from newsletter.db import open_database
from newsletter.web import api


def create_app(config: Config, engine: Engine | None = None) -> FastAPI:
    """Build the web app for ``config``; ``engine`` defaults to the configured database (migrated)."""
    app = FastAPI(title=config.newsletter.name)
    app.state.config = config
    app.state.engine = engine if engine is not None else open_database(config)
    app.include_router(api.router)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
