"""Migration 0004_ingest: a database at 0001 with summaries upgrades, keeping every row, not excluded."""

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import inspect, text

from newsletter.db import MIGRATIONS_DIR, make_engine, upgrade


def test_upgrading_from_0001_keeps_summaries_and_adds_the_ingest_schema(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    alembic = AlembicConfig()
    alembic.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        alembic.attributes["connection"] = connection
        command.upgrade(alembic, "0001")
        connection.execute(text(
            "insert into summary (uid, title, tags, summary, key_points, ingested_at, updated_at, origin) "
            "values ('u1', 'Kept', '[]', 'Still here.', '[]', '2026-01-01', '2026-01-01', 'old.md')"
        ))
    upgrade(engine)
    with engine.connect() as connection:
        row = connection.execute(text("select title, summary, excluded, subtitle from summary")).one()
    assert tuple(row) == ("Kept", "Still here.", 0, None)
    assert "feedstate" in inspect(engine).get_table_names()
    engine.dispose()
