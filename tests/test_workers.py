"""Many `newsletter worker` processes on one issue, against an SMTP server that counts every message.

On the PostgreSQL pass the workers claim with FOR UPDATE SKIP LOCKED; on SQLite with short write
transactions. A worker killed with SIGKILL while holding a leased batch runs as another machine (its own
UTS namespace with another host name), so the others cannot see that it died and must wait for its lease.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import insert
from sqlmodel import col, func, select

from newsletter.db import open_database, session
from newsletter.issues import prepare_issue
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    Subscriber,
    SubscriberStatus,
)
from tests.conftest import ON_POSTGRES, ROOT, _free_port, write_smtp_config
from tests.helpers import add_summaries
from tests.tools import missing, require
from tests.test_crash import CONNECTIONS, IN_FLIGHT, CountingHandler, claim_holders, ledger

pytestmark = pytest.mark.slow
OTHER_HOST = "other-machine"
# 20,000 deliveries take two minutes on SQLite here (the in-process aiosmtpd server is the bottleneck):
# the full size runs on the PostgreSQL pass, the SQLite pass runs the same test on 2,000.
DELIVERIES = 20_000 if ON_POSTGRES else 2_000


def _people(count: int) -> list[str]:
    return [f"reader{n:05d}@example.org" for n in range(count)]


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A prepared issue for ``count`` subscribers, a counting SMTP server, and a config file for workers."""
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "workers-test")
    handler = CountingHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    engines = []

    def build(count: int, lease: str, batch_size: int) -> tuple[Path, CountingHandler, object]:
        config = write_smtp_config(tmp_path, controller.port, CONNECTIONS, batch_size=batch_size, lease=lease)
        engine = open_database(config)
        engines.append(engine)
        add_summaries(engine, 3)
        with session(engine) as db:
            rows = [Subscriber(email=address, status=SubscriberStatus.ACTIVE).model_dump(exclude={"id"})
                    for address in _people(count)]
            db.execute(insert(Subscriber), rows)
            db.commit()
        assert prepare_issue(engine, config).recipient_count == count
        return tmp_path, handler, engine

    yield build
    for engine in engines:
        engine.dispose()
    controller.stop()


def worker(base: Path, *, host: str | None = None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "newsletter", "worker", "--until-done", "--poll", "0.2",
               "-c", str(base / "config.yaml")]
    if host:  # a new UTS namespace: the same machine under another name, as a worker on another host
        command = ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "sh", *command]
    return subprocess.Popen(command, cwd=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def finish(processes: list[subprocess.Popen[bytes]]) -> list[str]:
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err.decode()
        outputs.append(out.decode())
    return outputs


def test_four_workers_send_20000_deliveries_each_exactly_once(world):
    base, handler, engine = world(DELIVERIES, "10m", 250 if ON_POSTGRES else 50)
    handler.hold_until = lambda: claim_holders(engine) == 4  # all four hold a batch before any is sent
    outputs = finish([worker(base) for _ in range(4)])
    assert not handler.barrier_timed_out, "not every worker claimed a batch"

    assert handler.received == Counter(dict.fromkeys(_people(DELIVERIES), 1))
    assert ledger(engine) == Counter({DeliveryStatus.SENT: DELIVERIES})
    with session(engine) as db:
        assert db.exec(select(Issue.status)).one() is IssueStatus.SENT
    sent_by = [sum(map(int, re.findall(r"\bsent (\d+),", out))) for out in outputs]
    assert sum(sent_by) == DELIVERIES and all(sent_by), sent_by  # every worker did a share


def test_a_killed_workers_leased_batch_is_finished_by_the_others_after_its_lease_expires(world):
    require("unshare", "needs unshare(1) (util-linux) to run a worker as another host")
    base, handler, engine = world(2_000, "8s", 40)  # a lease well beyond the time a batch takes
    probe = subprocess.run(["unshare", "--uts", "true"], capture_output=True)
    if probe.returncode:
        missing(f"cannot create a UTS namespace here (needs root): {probe.stderr.decode().strip()}")
    victim = worker(base, host=OTHER_HOST)
    handler.on_message = lambda total: total == 100 and os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=120)
    handler.on_message = None
    assert victim.returncode == -signal.SIGKILL  # killed in the middle of its batch
    with session(engine) as db:
        leased = db.exec(select(func.count()).where(
            Delivery.status == DeliveryStatus.SENDING, col(Delivery.claimed_by).startswith(f"{OTHER_HOST}:")
        )).one()
    assert leased > 0  # its batch is still leased to it: nobody on this host can tell it died

    finish([worker(base) for _ in range(3)])

    assert ledger(engine) == Counter({DeliveryStatus.SENT: 2_000})
    assert set(handler.received) == set(_people(2_000))  # nobody left out
    duplicates = sum(n - 1 for n in handler.received.values())
    assert duplicates <= IN_FLIGHT  # only the messages in flight when it died, sent again


def _pid_namespaces() -> None:
    """Skip (fail in CI) unless workers can be started in PID namespaces of their own here."""
    require("unshare", "needs unshare(1) (util-linux) to start workers in PID namespaces of their own")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    if probe.returncode:
        missing(f"cannot create a PID namespace here (needs root): {probe.stderr.decode().strip()}")


def namespaced_worker(base: Path, *, pids_before: int) -> subprocess.Popen[bytes]:
    """A worker in a PID namespace of its own, as in a container sharing the host's name and network: its
    pid there (``pids_before`` + 2, after as many short-lived processes) means nothing outside. Killing the
    returned process kills everything in the namespace (--kill-child)."""
    command = [sys.executable, "-m", "newsletter", "worker", "--until-done", "--poll", "0.2",
               "-c", str(base / "config.yaml")]
    use_up_pids = f'i=0; while [ $i -lt {pids_before} ]; do /bin/true; i=$((i+1)); done; "$@"; exit $?'
    return subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", use_up_pids, "sh", *command],
        cwd=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_two_workers_in_separate_pid_namespaces_never_take_each_others_batches(world):
    """Same host name, separate PID namespaces: neither can see the other's pid, and must not conclude
    from that that the other died (which made them send most messages many times over)."""
    _pid_namespaces()
    base, handler, engine = world(3_000, "10m", 50)
    handler.hold_until = lambda: claim_holders(engine) == 2  # both hold a batch before any is sent
    workers = [namespaced_worker(base, pids_before=0), namespaced_worker(base, pids_before=5)]
    outputs = finish(workers)
    assert not handler.barrier_timed_out, "the two workers never held batches at the same time"

    assert handler.received == Counter(dict.fromkeys(_people(3_000), 1))
    assert ledger(engine) == Counter({DeliveryStatus.SENT: 3_000})
    assert all(re.search(r"\bsent [1-9]\d*,", out) for out in outputs), outputs  # both did a share


def test_a_worker_killed_in_its_own_pid_namespace_is_taken_over_at_once(world):
    """A dead owner on this host is still taken over without waiting for its lease (an hour here), even
    though its pid, from another PID namespace, says nothing here."""
    _pid_namespaces()
    base, handler, engine = world(2_000, "1h", 40)
    victim = namespaced_worker(base, pids_before=3)
    handler.on_message = lambda total: total == 100 and os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=120)
    handler.on_message = None
    with session(engine) as db:
        leased = db.exec(select(func.count()).where(Delivery.status == DeliveryStatus.SENDING)).one()
    assert leased > 0  # killed in the middle of its batch, which is still leased to it

    survivor = worker(base)
    try:
        _, err = survivor.communicate(timeout=120)  # far less than the lease: it did not wait for it
    finally:
        survivor.kill()
    assert survivor.returncode == 0, err.decode()
    assert "taking over deliveries of sender(s) that are no longer running" in err.decode()
    assert ledger(engine) == Counter({DeliveryStatus.SENT: 2_000})
    assert set(handler.received) == set(_people(2_000))
    assert sum(n - 1 for n in handler.received.values()) <= IN_FLIGHT
