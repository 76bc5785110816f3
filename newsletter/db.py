"""Database engine and schema upgrades.

``open_database(config)`` returns an engine whose schema is at the newest Alembic revision; call it once
per process and pass the engine on (no global engine). SQLite connections get WAL mode, a busy timeout and
foreign keys; a relative SQLite path is created under the config file's folder. PostgreSQL connections
(``postgresql+psycopg://``, the ``postgres`` extra) use the UTC time zone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from newsletter.config import Config
from newsletter.errors import NewsletterError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _postgres_session(dbapi_connection: Any, _record: Any) -> None:
    # Timestamp columns hold UTC without an offset (as on SQLite): aware values must be converted to UTC.
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'UTC'")
    dbapi_connection.commit()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; for SQLite, creates the parent folder and sets the connection pragmas.

    Raises NewsletterError when the folder cannot be created or the database driver is not installed.
    """
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        folder = Path(url.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NewsletterError(
                f"cannot create the database folder {folder} ({exc.strerror}); check database.url"
            ) from None
    try:
        engine = create_engine(url)
    except ModuleNotFoundError as exc:
        raise NewsletterError(
            f"database.url needs the {exc.name} driver, which is not installed; for postgresql+psycopg:// "
            f"URLs: pip install 'psycopg[binary]'"
        ) from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    elif engine.dialect.name == "postgresql":
        event.listen(engine, "connect", _postgres_session)
    return engine


def alembic_config() -> AlembicConfig:
    """Alembic's settings for the migrations shipped in the package."""
    settings = AlembicConfig()
    settings.set_main_option("script_location", str(MIGRATIONS_DIR))
    return settings


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration, logging (INFO) the revisions it went from and to. Existing
    data is kept; safe to call on every start."""
    settings = alembic_config()
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # SQLite changes a table by copying it to a new one and dropping the old (Alembic's batch mode);
            # with foreign keys enforced, dropping a table others refer to (issue) fails. The pragma only
            # works outside a transaction; the check below stands in for the enforcement skipped meanwhile.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        try:
            with connection.begin():
                before = MigrationContext.configure(connection).get_current_revision()
                settings.attributes["connection"] = connection
                command.upgrade(settings, "head")
                after = MigrationContext.configure(connection).get_current_revision()
                if sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                    raise NewsletterError("the schema upgrade would break references between rows; nothing was "
                                          "changed (restore a backup, or report it)")
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()
    if before is None:
        log.info("database schema created at %s", after)
    elif before != after:
        log.info("database schema upgraded from %s to %s", before, after)


def open_database(config: Config) -> Engine:
    """The configured database, migrated to the current schema. Raises NewsletterError if unreachable."""
    engine = make_engine(config.database_url)
    try:
        upgrade(engine)
    except DBAPIError as exc:  # unreachable server, a file that is not a database, no permission, ...
        reason = " ".join(str(exc.orig).split())  # PostgreSQL's hints come on lines of their own
        shown = engine.url.render_as_string(hide_password=True)
        raise NewsletterError(
            f"cannot open the database {shown!r} ({reason}); check database.url in {config.source} or "
            "NEWSLETTER_DATABASE_URL"
        ) from None
    return engine


def session(engine: Engine) -> Session:
    """A session whose objects stay readable after commit (results are handed back to callers)."""
    return Session(engine, expire_on_commit=False)
