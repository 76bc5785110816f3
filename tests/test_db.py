"""The database: migrations create the schema, SQLite runs in WAL mode with foreign keys and a busy timeout,
and the uniqueness rules of DESIGN.md hold."""

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel, col, select

from newsletter.db import MIGRATIONS_DIR, make_engine, open_database, session
from newsletter.models import Delivery, Firing, FiringOutcome, Issue, Subscriber, Summary, utcnow
from tests.conftest import sqlite_only


def head_revision() -> str:
    scripts = ScriptDirectory.from_config(_alembic_config())
    return scripts.get_current_head()


def _alembic_config() -> AlembicConfig:
    alembic_config = AlembicConfig()
    alembic_config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return alembic_config


def test_the_scheduler_migration_keeps_a_0001_database_and_adds_its_tables(config):
    engine = make_engine(config.database_url)
    with engine.begin() as connection:  # a database as the first release left it
        alembic_config = _alembic_config()
        alembic_config.attributes["connection"] = connection
        command.upgrade(alembic_config, "0001")
        connection.execute(text("insert into subscriber (email, status, topics, token, bounce_score, created_at, "
                                "updated_at) values ('kept@example.org', 'active', '[]', 't', 0, '2026-01-01', '2026-01-01')"))
    engine.dispose()
    upgraded = open_database(config)
    assert {"firing", "scheduler_lease", "job_failure", "issue_copy"} <= set(inspect(upgraded).get_table_names())
    with session(upgraded) as db:
        assert db.exec(text("select email from subscriber")).all() == [("kept@example.org",)]
    upgraded.dispose()


def test_migrations_create_every_table_and_are_safe_to_rerun(config, engine):
    assert {"summary", "subscriber", "issue", "delivery", "event", "alembic_version"} <= set(
        inspect(engine).get_table_names()
    )
    with session(engine) as db:
        db.add(Subscriber(email="kept@example.org"))
        db.commit()
    again = open_database(config)  # a second start upgrades nothing and keeps the data
    with session(again) as db:
        assert db.exec(text("select email from subscriber")).all() == [("kept@example.org",)]
        assert db.exec(text("select version_num from alembic_version")).one()[0] == head_revision()
    again.dispose()


@pytest.mark.filterwarnings("ignore:.*expression-based index")  # the lower(email) index cannot be reflected
def test_the_migrated_schema_is_exactly_what_the_models_declare(engine):
    """Every table, column and index of models.py comes from a migration, so an upgraded database is the
    same as a new one (a model change without its migration fails here)."""
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), SQLModel.metadata) == []


@sqlite_only
def test_sqlite_connection_settings(engine):
    with engine.connect() as connection:
        assert connection.execute(text("pragma journal_mode")).scalar() == "wal"
        assert connection.execute(text("pragma foreign_keys")).scalar() == 1
        assert connection.execute(text("pragma busy_timeout")).scalar() == 10_000


def test_email_is_unique_case_insensitively(engine):
    with session(engine) as db:
        db.add(Subscriber(email="Ada@Example.org"))
        db.commit()
        db.add(Subscriber(email="ada@example.org"))
        with pytest.raises(IntegrityError):
            db.commit()


def test_one_issue_per_number_one_firing_per_cron_time_and_one_delivery_per_subscriber(engine):
    now = utcnow()
    with session(engine) as db:
        db.add(Issue(number=1, period_start=now, period_end=now, subject="s"))
        db.commit()
        db.add(Issue(number=1, period_start=now, period_end=now, subject="s"))
        with pytest.raises(IntegrityError):
            db.commit()
        db.rollback()
        db.add(Firing(due_at=datetime(2026, 11, 23, 7, tzinfo=UTC), outcome=FiringOutcome.EMPTY))
        db.commit()
        db.add(Firing(due_at=datetime(2026, 11, 23, 7, tzinfo=UTC), outcome=FiringOutcome.MISSED))
        with pytest.raises(IntegrityError):
            db.commit()
        db.rollback()
        subscriber = Subscriber(email="a@example.org")
        db.add(subscriber)
        db.commit()
        db.add(Delivery(issue_id=1, subscriber_id=subscriber.id))
        db.commit()
        db.add(Delivery(issue_id=1, subscriber_id=subscriber.id))
        with pytest.raises(IntegrityError):
            db.commit()


def test_summary_uid_is_unique_and_foreign_keys_are_enforced(engine):
    with session(engine) as db:
        db.add(Summary(uid="u1", title="t", summary="s"))
        db.commit()
        db.add(Summary(uid="u1", title="t2", summary="s2"))
        with pytest.raises(IntegrityError):
            db.commit()
        db.rollback()
        db.add(Summary(uid="u2", title="t", summary="s", issue_id=999))
        with pytest.raises(IntegrityError):
            db.commit()


def test_the_subscribers_migration_keeps_existing_data(config):
    engine = make_engine(config.database_url)
    alembic_config = _alembic_config()
    with engine.begin() as connection:
        alembic_config.attributes["connection"] = connection
        command.upgrade(alembic_config, "0001")
        connection.execute(text(
            "insert into subscriber (email, status, topics, token, bounce_score, created_at, updated_at) "
            "values ('old@example.org', 'active', '[\"Climate\"]', 't1', 0, '2026-01-01', '2026-01-01')"
        ))
    engine.dispose()
    upgraded = open_database(config)
    with session(upgraded) as db:
        old = db.exec(text("select email, topics, confirmation_sent_at from subscriber")).one()
    topics = json.loads(old[1]) if isinstance(old[1], str) else old[1]  # PostgreSQL hands JSON back parsed
    assert (old[0], topics, old[2]) == ("old@example.org", ["Climate"], None)
    assert "suppression" in inspect(upgraded).get_table_names()
    upgraded.dispose()


# -- a database that goes away: what is weather, and waiting it out --------------------------------------------


def _locked_out(tmp_path):
    """A write that fails with SQLite's own "database is locked" (no busy timeout), and the lock's holder."""
    import sqlite3

    from sqlalchemy import create_engine

    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})

    def write() -> str:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO t VALUES (1)"))
        return "written"

    holder.execute("BEGIN IMMEDIATE")
    return engine, holder, write


def test_a_lock_beyond_the_busy_timeout_is_waited_out_with_one_line_per_try(tmp_path, caplog):
    from newsletter.db import Patience, patiently

    engine, holder, write = _locked_out(tmp_path)
    tries = []

    def write_then_release() -> str:
        tries.append(1)
        try:
            return write()
        finally:
            if len(tries) == 2:
                holder.execute("COMMIT")  # the other program lets go after the second try failed

    assert patiently(write_then_release, Patience()) == "written"
    lines = [r.getMessage() for r in caplog.records if r.name == "newsletter.db"]
    assert lines == ["database unavailable: database is locked; retrying in 1 s",
                     "database unavailable: database is locked; retrying in 2 s",
                     lines[2]]
    assert lines[2].startswith("database available again after ")
    engine.dispose()


def test_waiting_ends_at_the_limit_or_when_stopped_and_other_errors_are_not_retried(tmp_path):
    import threading
    from datetime import timedelta

    from sqlalchemy.exc import OperationalError

    from newsletter.db import Patience, patiently
    from newsletter.errors import DatabaseUnavailable

    engine, holder, write = _locked_out(tmp_path)
    with pytest.raises(DatabaseUnavailable, match=r"unavailable for 0\.0 s, longer than database.outage_limit "
                       r"\(0\.0 s\): database is locked; check that the database server is running"):
        patiently(write, Patience(timedelta(0)))
    stopped = threading.Event()
    stopped.set()
    with pytest.raises(DatabaseUnavailable, match=r"stopped while waiting for the database \(database is locked\)"):
        patiently(write, Patience(None, stopped))
    holder.execute("COMMIT")
    tries = []

    def broken() -> None:
        tries.append(1)
        with engine.connect() as connection:
            connection.execute(text("SELECT * FROM no_such_table"))

    with pytest.raises(OperationalError, match="no such table"):  # a bug, not weather: at once, as it is
        patiently(broken, Patience())
    assert len(tries) == 1
    engine.dispose()


def test_which_driver_errors_are_weather_a_full_disk_or_neither():
    psycopg = pytest.importorskip("psycopg")
    from sqlalchemy.exc import IntegrityError as Integrity
    from sqlalchemy.exc import OperationalError

    from newsletter.db import database_fault
    from newsletter.errors import DatabaseFull, DatabaseUnavailable

    def wrapped(error, kind=OperationalError):
        return kind("UPDATE delivery SET ...", {}, error)

    assert isinstance(database_fault(wrapped(psycopg.errors.AdminShutdown("terminating connection"))),
                      DatabaseUnavailable)
    assert isinstance(database_fault(wrapped(psycopg.errors.CannotConnectNow("the database system is starting up"))),
                      DatabaseUnavailable)
    assert isinstance(database_fault(wrapped(psycopg.OperationalError("connection failed: No such file"))),
                      DatabaseUnavailable)
    # the server rolled the transaction back: the unit of work tried again as a whole goes through
    assert isinstance(database_fault(wrapped(psycopg.errors.DeadlockDetected("deadlock detected"))), DatabaseUnavailable)
    assert isinstance(database_fault(wrapped(psycopg.errors.SerializationFailure("could not serialize access"))),
                      DatabaseUnavailable)
    full = database_fault(wrapped(psycopg.errors.DiskFull("could not extend file: No space left on device")))
    assert isinstance(full, DatabaseFull) and "could not extend file" in str(full)
    assert database_fault(wrapped(psycopg.errors.UniqueViolation("duplicate key"), Integrity)) is None
    assert database_fault(ValueError("not a database error")) is None


def test_the_firings_migration_keeps_issues_maps_each_period_to_its_firing_and_archives_old_issues_once(
        config, tmp_path):
    from fastapi.testclient import TestClient

    from newsletter.issues import prepare_issue
    from newsletter.models import IssueCopy
    from newsletter.status import collect_status, status_lines
    from newsletter.web.app import create_app
    from tests.conftest import ROOT, make_config
    from tests.helpers import add_people, add_summaries

    engine = make_engine(config.database_url)
    with engine.begin() as connection:  # a database as the period-keyed release left it
        alembic_config = _alembic_config()
        alembic_config.attributes["connection"] = connection
        command.upgrade(alembic_config, "0005_delivery_claim_index")
        for statement in (
            "insert into issue (id, number, period_key, period_start, period_end, subject, status, created_at, "
            "sent_at) values (1, 1, '2026-W47', '2026-11-15 23:00:00', '2026-11-22 23:00:00', "
            "'Research Weekly #1: Old paper', 'sent', '2026-11-23 07:00:00', '2026-11-23 07:01:00')",
            "insert into summary (uid, title, tags, summary, key_points, ingested_at, updated_at, origin, issue_id, "
            "excluded) values ('old', 'Old paper', '[]', 'What it found.', '[]', '2026-11-18 10:00:00', "
            "'2026-11-18 10:00:00', 'test', 1, false)",
            "insert into scheduled_period (period_key, outcome, due_at, recorded_at, issue_id, detail) values "
            "('2026-W47', 'issued', '2026-11-23 07:00:00', '2026-11-23 07:00:01', 1, '2026-W47: prepared issue #1'),"
            "('2026-W48', 'missed', '2026-11-30 07:00:00', '2026-12-03 07:00:00', null, '2026-W48: MISSED: its "
            "issue was due at 2026-11-30T08:00+01:00 (Europe/Berlin), 72.0 h ago, beyond the 24 h grace period')",
        ):
            connection.execute(text(statement))
    engine.dispose()

    own = tmp_path / "own"
    shutil.copytree(ROOT / "templates", own)
    config = make_config(tmp_path, templates=str(own))
    upgraded = open_database(config)
    assert "scheduled_period" not in inspect(upgraded).get_table_names()
    assert "period_key" not in {column["name"] for column in inspect(upgraded).get_columns("issue")}
    with session(upgraded) as db:
        (old,) = db.exec(select(Issue)).all()
        firings = db.exec(select(Firing).order_by(col(Firing.due_at))).all()
    assert (old.number, old.subject, old.status.value) == (1, "Research Weekly #1: Old paper", "sent")
    assert [(f.due_at.replace(tzinfo=None), f.outcome, f.issue_id, f.detail) for f in firings] == [
        (datetime(2026, 11, 23, 7), FiringOutcome.ISSUED, 1, "as period 2026-W47: its issue was prepared"),
        (datetime(2026, 11, 30, 7), FiringOutcome.MISSED, None, "as period 2026-W48: the scheduler was not running"),
    ]
    lines = status_lines(collect_status(upgraded, config, now=datetime(2026, 12, 4, tzinfo=UTC)))
    assert "firing at 2026-11-30T08:00+01:00 (Europe/Berlin): missed: as period 2026-W48: the scheduler was not " \
        "running" in lines
    assert "last issue: #1 (November 16\u2009–\u200922, 2026) \"Research Weekly #1: Old paper\": sent" in lines

    archive = TestClient(create_app(config, upgraded))
    first = archive.get("/archive/1")  # rendered now, once, from what the issue holds
    assert first.status_code == 200 and "Old paper" in first.text and "November 16\u2009–\u200922, 2026" in first.text
    header = own / "partials" / "header.mjml.j2"
    header.write_text(header.read_text(encoding="utf-8").replace("Issue {{", "Edition {{"), encoding="utf-8")
    assert TestClient(create_app(make_config(tmp_path, templates=str(own)), upgraded)).get("/archive/1").content \
        == first.content
    with session(upgraded) as db:
        assert db.get(IssueCopy, 1) is not None

    add_people(upgraded, "ada@example.org")
    add_summaries(upgraded, 1)
    prepared = prepare_issue(upgraded, config)
    assert prepared.issue.number == 2  # numbering goes on
    assert prepared.issue.period_start.replace(tzinfo=None) == datetime(2026, 11, 22, 23)  # since issue #1
    upgraded.dispose()


def test_the_head_read_from_the_migration_files_is_alembics_head():
    from newsletter.db import shipped_head

    assert [shipped_head()] == ScriptDirectory.from_config(_alembic_config()).get_heads()


def test_a_database_already_at_the_newest_schema_opens_without_loading_alembic(config, engine):
    # Alembic takes a tenth of a second to load: every command would pay it to learn there is nothing to do.
    code = ("import sys; from newsletter.db import make_engine, upgrade; upgrade(make_engine(sys.argv[1])); "
            "print(sorted(name for name in sys.modules if name.partition('.')[0] == 'alembic'))")
    result = subprocess.run([sys.executable, "-c", code, config.database_url], capture_output=True, text=True,
                            check=True, timeout=120)
    assert result.stdout.strip() == "[]"
    with engine.connect() as connection:
        assert connection.execute(text("select version_num from alembic_version")).scalar_one() == head_revision()
