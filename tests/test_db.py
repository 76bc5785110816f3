"""The database: migrations create the schema, SQLite runs in WAL mode with foreign keys and a busy timeout,
and the uniqueness rules of DESIGN.md hold."""

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from newsletter.db import open_database, session
from newsletter.models import Delivery, Issue, Subscriber, Summary, utcnow


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
        assert db.exec(text("select version_num from alembic_version")).one()[0] == _head()
    again.dispose()


def _head() -> str:
    from alembic.script import ScriptDirectory

    from newsletter.db import MIGRATIONS_DIR

    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


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


def test_one_issue_per_period_and_one_delivery_per_subscriber(engine):
    now = utcnow()
    with session(engine) as db:
        db.add(Issue(number=1, period_key="2026-W47", period_start=now, period_end=now, subject="s"))
        db.commit()
        db.add(Issue(number=2, period_key="2026-W47", period_start=now, period_end=now, subject="s"))
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
