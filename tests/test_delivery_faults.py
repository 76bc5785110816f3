"""Delivery against a misbehaving SMTP server: the ledger always agrees with what the server recorded."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlmodel import select

from newsletter.backends import create_backend
from newsletter.db import session
from newsletter.delivery import send_issue
from newsletter.errors import DeliveryError
from newsletter.issues import prepare_issue
from newsletter.models import Delivery, DeliveryStatus, IssueStatus, Subscriber
from tests.conftest import _free_port, make_config
from tests.helpers import add_people, add_summaries

NOW = datetime(2026, 11, 18, 9, tzinfo=UTC)
SEED = 20261122
TIMEOUT = 1.0  # the backend's; a stall lasts longer


@dataclass
class FaultyHandler:
    """Answers each RCPT at random: accept, 451, 421 (and close), 550, drop the connection, or stall.

    Faults happen before DATA, so a message the server accepted is one whose 250 the client received:
    the server's record is the truth the ledger must match.
    """

    rng: random.Random
    accepted: Counter[str] = field(default_factory=Counter)
    last: dict[str, str] = field(default_factory=dict)  # recipient -> last outcome
    outcomes: Counter[str] = field(default_factory=Counter)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        outcome = self.rng.choices(["ok", "451", "421", "550", "drop", "stall"], [70, 9, 5, 6, 5, 5])[0]
        self.last[address] = outcome
        self.outcomes[outcome] += 1
        if outcome == "ok":
            envelope.rcpt_tos.append(address)
            return "250 OK"
        if outcome == "451":
            return "451 4.3.0 Mailbox busy, try later"
        if outcome == "550":
            return "550 5.1.1 No such user"
        if outcome == "421":
            server.transport.close()
            return "421 4.3.2 Shutting down"
        if outcome == "stall":
            await asyncio.sleep(TIMEOUT * 1.5)
            return "451 4.4.2 Too slow"
        server.transport.close()  # drop without a word
        return "421 dropped"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        for address in envelope.rcpt_tos:
            self.accepted[address] += 1
        return "250 Message accepted"


@pytest.mark.slow
def test_every_delivery_ends_consistent_with_what_a_faulty_server_recorded(config, engine):
    handler = FaultyHandler(random.Random(SEED))
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    people = [f"p{n:03d}@example.org" for n in range(60)]
    smtp = make_config(config.base_dir, backend={"name": "smtp", "options": {
        "host": "127.0.0.1", "port": controller.port, "security": "none", "timeout": TIMEOUT, "connections": 4}},
        delivery={"retry_schedule": ["1m"] * 6, "pause_error_rate": 1})
    add_summaries(engine, 1)
    add_people(engine, *people)
    prepare_issue(engine, smtp)
    try:
        for attempt in range(12):
            clock = NOW + timedelta(minutes=2 * attempt)
            try:
                report = send_issue(engine, smtp, create_backend(smtp), 1, clock=lambda c=clock: c)
            except DeliveryError:  # every connection of a window failed: the batch was released, not lost
                continue
            check_ledger_against_server(engine, handler)
            if report.issue.status is IssueStatus.SENT:
                break
    finally:
        controller.stop()

    rows = ledger(engine)
    print(f"seed {SEED}: server outcomes {dict(handler.outcomes)}; final {Counter(s for s, _ in rows.values())}")
    assert all(status in (DeliveryStatus.SENT, DeliveryStatus.FAILED) for status, _ in rows.values())
    assert handler.outcomes["550"] and handler.outcomes["stall"] and handler.outcomes["drop"]  # faults happened
    for address, (status, error) in rows.items():
        if status is DeliveryStatus.SENT:
            assert handler.accepted[address] == 1, address
        else:
            assert handler.accepted[address] == 0, address
            assert "550" in error or error.startswith("gave up"), (address, error)


def ledger(engine) -> dict[str, tuple[DeliveryStatus, str]]:
    with session(engine) as db:
        rows = db.exec(select(Subscriber.email, Delivery.status, Delivery.last_error).join(Delivery)).all()
    return {email: (status, error or "") for email, status, error in rows}


def check_ledger_against_server(engine, handler: FaultyHandler) -> None:
    """After any run: sent ⇔ accepted once; failed ⇔ refused with 550 (or gave up); retry ⇔ a transient fault."""
    for address, (status, error) in ledger(engine).items():
        assert status is not DeliveryStatus.SENDING, address
        if status is DeliveryStatus.SENT:
            assert handler.accepted[address] == 1, address
        elif status is DeliveryStatus.FAILED:
            assert handler.last[address] == "550" or error.startswith("gave up"), (address, error)
        elif status is DeliveryStatus.RETRY:
            assert handler.accepted[address] == 0 and handler.last[address] in ("451", "421", "drop", "stall"), address
        else:
            assert status is DeliveryStatus.QUEUED and handler.accepted[address] == 0, address
