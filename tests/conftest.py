"""Shared fixtures: a real database per test, the project's config, and a real SMTP server.

The database is a SQLite file in the test's folder, or, when ``NEWSLETTER_TEST_DATABASE_URL`` names a
PostgreSQL database (a throwaway one: ``.ci/run`` starts a private cluster), a fresh schema in it per test,
handed to everything the test starts (subprocesses included) through ``NEWSLETTER_DATABASE_URL``.
"""

from __future__ import annotations

import email
import email.policy
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller
from sqlalchemy import Engine, create_engine, text

from newsletter.backends import check_backend
from newsletter.config import Config, config_from_mapping
from newsletter.db import open_database
from newsletter.demo import DEMO_SETTINGS
from newsletter.logs import HANDLER_NAME

ROOT = Path(__file__).resolve().parent.parent
TEST_DATABASE_URL = os.environ.get("NEWSLETTER_TEST_DATABASE_URL", "")
ON_POSTGRES = TEST_DATABASE_URL.startswith("postgresql")
sqlite_only = pytest.mark.skipif(ON_POSTGRES, reason="SQLite-specific (file, pragmas or locking)")


def pytest_configure(config: pytest.Config) -> None:
    """Browser assertions wait for their condition up to 30 s, not Playwright's 5 s: on a busy machine a page
    can take longer than that to load, and waiting longer costs nothing when it is quick."""
    try:
        from playwright.sync_api import expect
    except ImportError:
        return
    expect.set_options(timeout=30_000)


@pytest.fixture(scope="session")
def _postgres_admin() -> Iterator[Engine | None]:
    if not ON_POSTGRES:
        yield None
        return
    admin = create_engine(TEST_DATABASE_URL, isolation_level="AUTOCOMMIT")
    yield admin
    admin.dispose()


@pytest.fixture(autouse=True)
def _database_per_test(_postgres_admin: Engine | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the PostgreSQL pass, point NEWSLETTER_DATABASE_URL at a new empty schema for this test."""
    if _postgres_admin is None:
        return
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with _postgres_admin.connect() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in TEST_DATABASE_URL else "?"
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", f"{TEST_DATABASE_URL}{separator}options=-csearch_path%3D{schema}")


@pytest.fixture(autouse=True)
def _no_log_handler_left_behind() -> Iterator[None]:
    """A command run in a test points newsletter's stderr handler at that run's captured stream, which is
    closed afterwards; a server thread still logging later (aiosmtpd's "EOF received") then printed
    "--- Logging error ---" tracebacks into the test output."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)
    root.setLevel(level)


def make_config(base_dir: Path, **overrides: Any) -> Config:
    """A valid configuration rooted at ``base_dir``; ``overrides`` replace whole top-level sections."""
    data: dict[str, Any] = {
        **DEMO_SETTINGS,
        "templates": str(ROOT / "templates"),
        "schedule": {"cron": "0 8 * * mon", "timezone": "Europe/Berlin"},
    }
    data.update(overrides)
    config = config_from_mapping(data, base_dir=base_dir, source=str(base_dir / "config.yaml"))
    check_backend(config)  # as every command does at start
    return config


def write_smtp_config(base_dir: Path, port: int, connections: int, **delivery: Any) -> Config:
    """``config.yaml`` in ``base_dir`` for `newsletter` processes the test starts (SMTP to 127.0.0.1:``port``
    over ``connections`` connections, ``delivery`` settings, SQLite beside it), and the same config loaded."""
    settings: dict[str, Any] = {
        "newsletter": {"name": "Research Weekly", "sender": "Research Weekly <digest@example.org>",
                       "postal_address": "1 Example Street, Example City", "site_url": "https://news.example.org"},
        "database": {"url": "sqlite:///newsletter.db"},
        "templates": str(ROOT / "templates"),
        "backend": {"name": "smtp", "options": {"host": "127.0.0.1", "port": port, "security": "none",
                                                "connections": connections}},
        "delivery": delivery,
    }
    (base_dir / "config.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    return make_config(base_dir, **{k: v for k, v in settings.items() if k != "templates"})


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "test-secret-key")
    if not ON_POSTGRES:
        monkeypatch.delenv("NEWSLETTER_DATABASE_URL", raising=False)
    return make_config(tmp_path)


@pytest.fixture
def engine(config: Config) -> Iterator[Engine]:
    engine = open_database(config)
    yield engine
    engine.dispose()


@dataclass
class ReceivedMessage:
    envelope_from: str
    recipients: list[str]
    data: bytes

    def parsed(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


@dataclass
class RecordingHandler:
    """An aiosmtpd handler that keeps every message; ``reject`` maps a recipient to an SMTP reply."""

    messages: list[ReceivedMessage] = field(default_factory=list)
    reject: dict[str, str] = field(default_factory=dict)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.reject:
            return self.reject[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(ReceivedMessage(envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted"


@dataclass
class SmtpServer:
    host: str
    port: int
    handler: RecordingHandler

    @property
    def messages(self) -> list[ReceivedMessage]:
        return self.handler.messages


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) on loopback, recording what it receives."""
    handler = RecordingHandler()
    port = _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", port, handler)
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium (tests/browser.py) for a module's tests."""
    from tests.browser import chromium

    with chromium() as launched:
        yield launched
