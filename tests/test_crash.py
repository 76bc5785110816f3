"""kill -9, SIGTERM and two senders at once, with real `newsletter digest send` processes.

An aiosmtpd server in this process counts the messages each subscriber receives. Kills happen at seeded
random points in the stream of messages (when the server has received the k-th one), so a failing run can
be reproduced from the seed printed with it.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlmodel import col, func, select

from newsletter.config import DeliverySection
from newsletter.db import open_database, session
from newsletter.issues import prepare_issue
from newsletter.models import Delivery, DeliveryStatus
from tests.conftest import ROOT, _free_port, write_smtp_config
from tests.helpers import add_people, add_summaries

pytestmark = pytest.mark.slow
CONNECTIONS = 2
IN_FLIGHT = CONNECTIONS * DeliverySection().in_flight_factor  # one window, with the default factor
PEOPLE = [f"reader{n:03d}@example.org" for n in range(150)]


BARRIER_SECONDS = 120  # how long a held message waits for the other senders to start, on a busy machine


@dataclass
class CountingHandler:
    """Counts messages per recipient (and their Message-IDs); can call ``on_message(total)`` after each.

    With ``hold_until`` set, every message waits (without blocking the server) until ``hold_until()`` is
    true, once: a barrier that makes senders overlap instead of hoping they do.
    """

    received: Counter[str] = field(default_factory=Counter)
    message_ids: dict[str, set[bytes]] = field(default_factory=dict)
    total: int = 0
    on_message: Any = None
    hold_until: Callable[[], bool] | None = None
    barrier_timed_out: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if (ready := self.hold_until) is not None:  # messages of several connections may wait here at once
            deadline = time.monotonic() + BARRIER_SECONDS
            while not ready():
                if time.monotonic() > deadline:
                    self.barrier_timed_out = True
                    break
                await asyncio.sleep(0.02)
            self.hold_until = None
        message_id = next(line for line in envelope.content.split(b"\r\n") if line.startswith(b"Message-ID:"))
        with self.lock:
            for address in envelope.rcpt_tos:
                self.received[address] += 1
                self.message_ids.setdefault(address, set()).add(message_id)
            self.total += 1
            total = self.total
        if self.on_message:
            self.on_message(total)
        return "250 OK"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "crash-test")
    handler = CountingHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    config = write_smtp_config(tmp_path, controller.port, CONNECTIONS, batch_size=20)
    engine = open_database(config)
    add_summaries(engine, 2)
    add_people(engine, *PEOPLE)
    prepare_issue(engine, config)
    yield tmp_path, handler, engine
    engine.dispose()
    controller.stop()


def sender(base: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", "digest", "send", "-c", str(base / "config.yaml")],
        cwd=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def ledger(engine) -> Counter[DeliveryStatus]:
    with session(engine) as db:
        return Counter(db.exec(select(Delivery.status)).all())


def claim_holders(engine) -> int:
    """How many senders hold claimed (``sending``) deliveries right now."""
    with session(engine) as db:
        return db.exec(
            select(func.count(col(Delivery.claimed_by).distinct())).where(Delivery.status == DeliveryStatus.SENDING)
        ).one()


def test_kill_9_at_random_moments_loses_no_one_and_duplicates_only_what_was_in_flight(world):
    base, handler, engine = world
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    kills = 0
    for _ in range(4):
        target = handler.total + rng.randint(1, 40)
        process = sender(base)

        def kill_at(total: int, target: int = target, process: subprocess.Popen[bytes] = process) -> None:
            if total == target:
                os.kill(process.pid, signal.SIGKILL)  # the message is received, its 250 never reaches the sender

        handler.on_message = kill_at
        code = process.wait(timeout=120)
        if code == -signal.SIGKILL:
            kills += 1
    handler.on_message = None
    final = sender(base)
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, err.decode()

    duplicates = {a: n for a, n in handler.received.items() if n > 1}
    print(f"seed {seed}: {kills} kills, duplicates {duplicates}")
    assert kills >= 3
    assert ledger(engine) == Counter({DeliveryStatus.SENT: len(PEOPLE)})
    assert set(handler.received) == set(PEOPLE)  # nobody skipped
    assert sum(n - 1 for n in duplicates.values()) <= kills * IN_FLIGHT  # only the messages in flight
    assert all(len(handler.message_ids[a]) == 1 for a in duplicates)  # a duplicate is recognisably the same


def test_kill_9_at_random_times_in_the_send_loop_loses_no_one(world):
    """The kills above land while the sender waits for a reply; these land at a random time after the
    first message of each run (composing, claiming, writing the ledger or waiting), on a timer."""
    base, handler, engine = world
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    kills = 0
    for _ in range(4):
        process = sender(base)
        kill = lambda p=process: p.poll() is None and os.kill(p.pid, signal.SIGKILL)  # noqa: E731
        timer = threading.Timer(rng.uniform(0, 0.1), kill)  # well within a run of 150 messages
        started = handler.total
        handler.on_message = lambda total, t=timer, s=started: total == s + 1 and t.start()
        code = process.wait(timeout=120)
        timer.cancel()
        kills += code == -signal.SIGKILL
    handler.on_message = None
    if ledger(engine)[DeliveryStatus.SENT] < len(PEOPLE):  # else a run outlived its timer and finished
        final = sender(base)
        _, err = final.communicate(timeout=120)
        assert final.returncode == 0, err.decode()

    print(f"seed {seed}: {kills} kills")
    assert kills >= 1
    assert ledger(engine) == Counter({DeliveryStatus.SENT: len(PEOPLE)})
    assert set(handler.received) == set(PEOPLE)  # nobody skipped
    assert sum(n - 1 for n in handler.received.values()) <= kills * IN_FLIGHT


def test_sigterm_drains_the_messages_in_flight_and_leaves_nothing_ambiguous(world):
    base, handler, engine = world
    process = sender(base)
    handler.on_message = lambda total: total == 30 and os.kill(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()
    assert "SIGTERM: finishing the messages in flight" in err.decode()
    assert "stopped on request" in out.decode()
    counts = ledger(engine)
    assert counts[DeliveryStatus.SENDING] == 0
    assert counts[DeliveryStatus.SENT] == handler.total >= 30  # every message the server got is recorded
    assert counts[DeliveryStatus.SENT] + counts[DeliveryStatus.QUEUED] == len(PEOPLE)
    assert set(handler.received.values()) == {1}


def test_two_senders_at_once_never_send_the_same_delivery_twice(world):
    base, handler, engine = world
    handler.hold_until = lambda: claim_holders(engine) == 2  # no message goes out before both hold claims
    first, second = sender(base), sender(base)
    for process in (first, second):
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err.decode()
    assert not handler.barrier_timed_out, "the second sender never claimed anything while the first held its batch"
    assert ledger(engine) == Counter({DeliveryStatus.SENT: len(PEOPLE)})
    assert handler.received == Counter(dict.fromkeys(PEOPLE, 1))
