"""docs/production.md's backup and upgrade steps, run as written.

Each step the page promises is tested is a block of shell lines after a comment naming this file; the
test takes those lines from the page itself and runs them with bash in a folder laid out as the page
describes (a ``.venv`` that is this test run's virtualenv, the config file, ``subscribers/``), so the
page cannot drift from what works.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from newsletter.db import alembic_config, make_engine
from newsletter.demo import DEMO_SETTINGS
from tests.conftest import ON_POSTGRES, ROOT, TEST_DATABASE_URL, sqlite_only
from tests.tools import require

PAGE = ROOT / "docs" / "production.md"


def documented_lines(title: str) -> str:
    """The shell lines that follow the comment starting ``# {title}`` and naming this test file."""
    page = PAGE.read_text(encoding="utf-8")
    found = re.search(rf"^# {re.escape(title)}\b.*tests/test_production\.py.*\n((?:(?!#|```).*\S.*\n)+)", page, re.MULTILINE)
    assert found, f"docs/production.md has no block '# {title} (… tests/test_production.py …)'"
    return found.group(1)


def run(lines: str, folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", lines], cwd=folder, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "NEWSLETTER_SECRET_KEY": "production-doc", **env})


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """/srv/newsletter as the page lays it out: config.yaml, subscribers/, and .venv (this virtualenv)."""
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**DEMO_SETTINGS, "database": {
        "url": "sqlite:///subscribers/newsletter.db"}}), encoding="utf-8")
    return tmp_path


def _database_of_the_first_release(url: str) -> None:
    """A database as the first release left it (migration 0001), with a subscriber in it."""
    engine = make_engine(url)
    with engine.begin() as connection:
        settings = alembic_config()
        settings.attributes["connection"] = connection
        command.upgrade(settings, "0001")
        connection.execute(text(
            "insert into subscriber (email, status, topics, token, bounce_score, created_at, updated_at) "
            "values ('kept@example.org', 'active', '[]', 't', 0, '2026-01-01', '2026-01-01')"))
    engine.dispose()


@sqlite_only
def test_the_upgrade_step_migrates_a_first_release_database_and_shows_its_data(installed: Path) -> None:
    _database_of_the_first_release(f"sqlite:///{installed / 'subscribers' / 'newsletter.db'}")
    result = run(documented_lines("migrate and check"), installed)
    assert result.returncode == 0, result.stderr
    assert "active 1" in result.stdout  # the subscriber from the old database, counted by the new version
    assert re.search(r"database schema upgraded from 0001\S* to \S+", result.stderr), result.stderr
    assert "Context impl" not in result.stderr  # Alembic's own chatter stays out of -v
    again = run(documented_lines("migrate and check"), installed)
    assert again.returncode == 0 and "upgraded" not in again.stderr  # nothing left to migrate


@sqlite_only
def test_the_sqlite_backup_step_makes_a_consistent_copy_while_the_database_is_in_use(installed: Path) -> None:
    require("sqlite3", "sqlite3 is missing (apt-get install sqlite3)")
    assert run(".venv/bin/newsletter subscribers add kept@example.org", installed).returncode == 0
    database = installed / "subscribers" / "newsletter.db"
    writer = create_engine(f"sqlite:///{database}")
    with writer.connect() as connection:  # an open connection with a write in its WAL, as a running process has
        connection.execute(text("insert into subscriber (email, status, topics, token, bounce_score, created_at, "
                                "updated_at) values ('late@example.org', 'active', '[]', 'u', 0, '2026-01-01', "
                                "'2026-01-01')"))
        connection.commit()
        result = run(documented_lines("backup: SQLite"), installed)
    writer.dispose()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    copy = create_engine(f"sqlite:///{installed / 'backups' / 'newsletter.db'}")
    with copy.connect() as connection:
        emails = connection.execute(text("select email from subscriber order by email")).scalars().all()
    copy.dispose()
    assert emails == ["kept@example.org", "late@example.org"]

    # a later change is lost with a restore: the backup's contents come back
    assert run(".venv/bin/newsletter subscribers add after@example.org", installed).returncode == 0
    restored = run(documented_lines("restore: SQLite"), installed)
    assert restored.returncode == 0, restored.stderr
    listed = run(".venv/bin/newsletter subscribers list", installed)
    assert "late@example.org" in listed.stdout and "after@example.org" not in listed.stdout


@pytest.mark.skipif(not ON_POSTGRES, reason="PostgreSQL pass only (NEWSLETTER_TEST_DATABASE_URL)")
def test_the_postgresql_backup_step_makes_a_dump_that_pg_restore_reads(installed: Path) -> None:
    require("pg_dump", "pg_dump is missing (apt-get install postgresql-client)")
    url = os.environ["NEWSLETTER_DATABASE_URL"]  # this test's schema (tests/conftest.py)
    assert run(".venv/bin/newsletter subscribers add kept@example.org", installed).returncode == 0
    libpq = make_url(TEST_DATABASE_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    result = run(documented_lines("backup: PostgreSQL"), installed, DATABASE_URL=libpq)
    assert result.returncode == 0, result.stderr
    listing = subprocess.run(["pg_restore", "--list", str(installed / "backups" / "newsletter.dump")],
                             capture_output=True, text=True, timeout=60)
    schema = make_url(url).query["options"].partition("search_path=")[2]
    assert re.search(rf"TABLE DATA {schema} subscriber ", listing.stdout), listing.stdout[:2000]

    # restored into an empty database, the subscriber is there
    admin = create_engine(TEST_DATABASE_URL, isolation_level="AUTOCOMMIT")
    empty = f"restore_{schema}"
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {empty}"))
    target = make_url(TEST_DATABASE_URL).set(database=empty)
    try:
        restored = run(documented_lines("restore: PostgreSQL"), installed,
                       DATABASE_URL=target.set(drivername="postgresql").render_as_string(hide_password=False))
        assert restored.returncode == 0, restored.stderr
        copy = create_engine(target)
        with copy.connect() as connection:
            emails = connection.execute(text(f"select email from {schema}.subscriber")).scalars().all()
        copy.dispose()
        assert emails == ["kept@example.org"]
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {empty} WITH (FORCE)"))
        admin.dispose()
