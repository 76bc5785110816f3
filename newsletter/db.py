"""Database engine, schema upgrades, and riding out a database that goes away.

``open_database(config)`` returns an engine whose schema is at the newest Alembic revision; call it once
per process and pass the engine on (no global engine). SQLite connections get WAL mode, a busy timeout and
foreign keys; a relative SQLite path is created under the config file's folder. PostgreSQL connections
(``postgresql+psycopg://``, the ``postgres`` extra) use the UTC time zone, and are checked before use, so
a pool emptied by a server restart is refilled without an error.

A database that is briefly unavailable (a PostgreSQL restart or fail-over, a SQLite file another program
keeps locked for longer than the busy timeout) is weather: :func:`patiently` runs a unit of work again,
with backoff, logging one line per try, for as long as a :class:`Patience` allows. A full disk is not
weather: it becomes one :class:`~newsletter.errors.DatabaseFull` line at once.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlmodel import Session

from newsletter.config import Config
from newsletter.errors import DatabaseFull, DatabaseUnavailable, NewsletterError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

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
        # pre-ping: a connection the server dropped (a restart) is replaced at checkout instead of failing
        engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
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
    from alembic.config import Config as AlembicConfig

    settings = AlembicConfig()
    settings.set_main_option("script_location", str(MIGRATIONS_DIR))
    return settings


_REVISION = re.compile(r"""^(down_)?revision\b[^=]*=\s*(?:None|['"]([^'"]+)['"])""", re.MULTILINE)


def shipped_head() -> str | None:
    """The newest migration shipped in the package, read from the ``revision``/``down_revision`` lines of
    its files (what Alembic reads, without loading Alembic); None unless there is exactly one head."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (MIGRATIONS_DIR / "versions").glob("*.py"):
        for down, revision in _REVISION.findall(script.read_text(encoding="utf-8")):
            if revision:
                (parents if down else revisions).add(revision)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _at_head(connection: Connection) -> bool:
    """Whether the database's schema is already at the shipped head (the common case on every start)."""
    if not inspect(connection).has_table("alembic_version"):
        return False
    current = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
    connection.rollback()
    head = shipped_head()
    return head is not None and current == [head]


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration, logging (INFO) the revisions it went from and to. Existing
    data is kept; safe to call on every start."""
    with engine.connect() as connection:
        if _at_head(connection):  # nothing to do: spare every command the time Alembic takes to load
            return
    from alembic import command
    from alembic.runtime.migration import MigrationContext

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
        reason = describe(exc)
        shown = engine.url.render_as_string(hide_password=True)
        if _disk_full(engine):  # SQLite says "disk I/O error" when it cannot even create its -shm file
            raise DatabaseFull(f"cannot open the database {shown!r} ({reason}): the disk holding it is full; free "
                               "some space, then run the command again") from None
        raise NewsletterError(
            f"cannot open the database {shown!r} ({reason}); check database.url in {config.source} or "
            "NEWSLETTER_DATABASE_URL"
        ) from None
    return engine


def _disk_full(engine: Engine) -> bool:
    """Whether a SQLite database's folder has no space left."""
    if engine.dialect.name != "sqlite" or not engine.url.database:
        return False
    try:
        return shutil.disk_usage(Path(engine.url.database).parent).free == 0
    except OSError:
        return False


def session(engine: Engine) -> Session:
    """A session whose objects stay readable after commit (results are handed back to callers)."""
    return Session(engine, expire_on_commit=False)


# -- a database that goes away --------------------------------------------------------------------------------

_SQLITE_BUSY = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED: another connection holds the lock past the busy timeout
_SQLITE_FULL = 13
# SQLSTATEs: connection exceptions, admin/crash shutdown, "the database system is starting up", too many
# connections, and a serialisation failure or deadlock (the server rolled the transaction back: a unit of
# work tried again as a whole is the cure); 53100 is disk_full.
_PG_UNAVAILABLE = ("08", "57P01", "57P02", "57P03", "53300", "40001", "40P01")
_PG_FULL = "53100"
BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)  # seconds before each further try; the last one repeats

T = TypeVar("T")


def describe(exc: BaseException) -> str:
    """The driver's message on one line (PostgreSQL's come with hints on lines of their own)."""
    text = " ".join(str(getattr(exc, "orig", None) or exc).split())
    return text if len(text) <= 300 else text[:299] + "…"


def database_fault(exc: BaseException) -> NewsletterError | None:
    """``exc`` as the user-facing error it stands for: DatabaseUnavailable for weather (the server restarting
    or out of reach, a connection it dropped, a SQLite file locked beyond the busy timeout), DatabaseFull for
    a full disk; None for anything else, which is a bug and keeps its traceback."""
    if not isinstance(exc, DBAPIError):
        return None
    reason = describe(exc)
    full = DatabaseFull(f"the disk holding the database is full ({reason}); nothing of the step that failed was "
                        "written: free some space, then run the command again")
    unavailable = DatabaseUnavailable(
        f"database unavailable: {reason}; check that the database server is running (database.url), or what "
        "keeps the SQLite file locked, then run the command again"
    )
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if code is not None:
        if code & 0xFF == _SQLITE_FULL:
            return full
        return unavailable if code & 0xFF in _SQLITE_BUSY else None
    state = getattr(exc.orig, "sqlstate", None) or ""
    if state == _PG_FULL:
        return full
    if exc.connection_invalidated or state.startswith(_PG_UNAVAILABLE):
        return unavailable
    if isinstance(exc, (OperationalError, InterfaceError)) and not state:  # no connection: refused, no socket
        return unavailable
    return None


@dataclass(frozen=True)
class Patience:
    """How long work waits for an unavailable database: ``limit`` (None: as long as it takes, what the
    scheduler and a worker daemon do), and ``stop``, which ends the wait early (SIGTERM)."""

    limit: timedelta | None = None
    stop: threading.Event | None = None


def patiently(call: Callable[[], T], patience: Patience) -> T:
    """``call()``, tried again while the database is unavailable.

    ``call`` must be one unit of work that is undone as a whole when it fails (one transaction, or several
    that are safe to repeat). Each failed try logs one line, ``database unavailable: <reason>; retrying in
    N s``, then waits (1, 2, 4, 8, 15, then every 30 s). Raises DatabaseUnavailable when ``patience.limit``
    has passed since the first failure or ``patience.stop`` is set while waiting, DatabaseFull at once for a
    full disk; any other error propagates unchanged.
    """
    first_failure: float | None = None  # when the first try that failed began (a lock waits out the busy timeout)
    tries = 0
    while True:
        began = time.monotonic()
        try:
            result = call()
        except DBAPIError as exc:
            fault = database_fault(exc)
            if fault is None:
                raise
            if not isinstance(fault, DatabaseUnavailable):
                raise fault from None
            first_failure = began if first_failure is None else first_failure
            waited = time.monotonic() - first_failure
            delay = BACKOFF[min(tries, len(BACKOFF) - 1)]
            if patience.limit is not None:
                left = patience.limit.total_seconds() - waited
                if left <= 0:
                    raise DatabaseUnavailable(
                        f"the database has been unavailable for {_span(waited)}, longer than database.outage_limit "
                        f"({_span(patience.limit.total_seconds())}): {describe(exc)}; check that the database "
                        "server is running, or what keeps the SQLite file locked, then run the command again"
                    ) from None
                delay = min(delay, max(left, 0.1))
            log.warning("database unavailable: %s; retrying in %s", describe(exc), _span(delay))
            stop = patience.stop or threading.Event()
            if stop.wait(delay):
                raise DatabaseUnavailable(
                    f"stopped while waiting for the database ({describe(exc)})"
                ) from None
            tries += 1
            continue
        if first_failure is not None:
            log.warning("database available again after %s", _span(time.monotonic() - first_failure))
        return result


def _span(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.1f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
