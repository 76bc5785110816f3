"""The database going away under real `newsletter` processes: a SQLite file another program keeps locked
for longer than the busy timeout, a private PostgreSQL cluster stopped and started (or restarted) in the
middle of a send, a database that stays away too long, and a full disk.

An SMTP server in this process counts what every subscriber receives. A fault is injected while a window
of messages is on the wire (the server holds back one reply until the fault is in place), so the ledger
write for that window is what meets it. The tests wait for what the process logs, never for a time.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller
from sqlalchemy import NullPool, create_engine, text
from sqlmodel import select

from newsletter.config import Config, load_config
from newsletter.db import open_database, session
from newsletter.issues import prepare_issue
from newsletter.models import Delivery, DeliveryStatus, Firing, FiringOutcome, Issue, SchedulerLease, utcnow
from tests.conftest import ROOT, _free_port, sqlite_only, write_smtp_config
from tests.helpers import add_people, add_summaries
from tests.processes import LoggedProcess as Watched
from tests.test_crash import CONNECTIONS, IN_FLIGHT, CountingHandler
from tests.tools import missing

pytestmark = pytest.mark.slow
PEOPLE = [f"reader{n:03d}@example.org" for n in range(150)]
GATE_AT = 30  # the message whose reply the server holds back until the fault is in place
TIMEOUT = 120  # seconds; generous, for a machine shared with other test runs
UNAVAILABLE = r"database unavailable: (?P<reason>.+); retrying in \d+ s$"


@dataclass
class GatedHandler(CountingHandler):
    """Counts messages; holds back the reply to message ``GATE_AT`` until ``gate`` is set (without blocking
    the server's other connections), so that a window is in flight while a fault is put in place."""

    reached: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if self.total == GATE_AT:
            self.reached.set()
            await asyncio.to_thread(self.gate.wait, TIMEOUT)
        return reply


# -- the private PostgreSQL cluster ---------------------------------------------------------------------------


class Cluster:
    """A throwaway PostgreSQL cluster started by .ci/postgres, which the tests stop, start and restart."""

    def __init__(self) -> None:
        started = subprocess.run([str(ROOT / ".ci" / "postgres")], capture_output=True, text=True)
        if started.returncode:
            missing(f"cannot start a private PostgreSQL cluster: {started.stderr.strip()}")
        self.url = started.stdout.strip()
        self.folder = Path(self.url.rpartition("host=")[2])
        self._bin = Path(sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1])
        with (self.folder / "data" / "postgresql.conf").open("a") as conf:  # what a plain `pg_ctl start` uses
            conf.write(f"listen_addresses = ''\nunix_socket_directories = '{self.folder}'\nfsync = off\n"
                       "synchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n")

    def ctl(self, *args: str) -> None:
        owner = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        subprocess.run([*owner, str(self._bin / "pg_ctl"), "-D", str(self.folder / "data"), "-w",
                        "-l", str(self.folder / "server.log"), *args], check=True, capture_output=True)

    def new_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        admin = create_engine(self.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {name}"))
        admin.dispose()
        return self.url.replace("/newsletter?", f"/{name}?")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if not sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        missing("needs PostgreSQL's server binaries (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="needs the postgres extra (psycopg)")
    server = Cluster()
    yield server
    server.ctl("stop", "-m", "immediate")
    subprocess.run(["rm", "-rf", str(server.folder)], check=False)


# -- the world: a prepared issue (or a due one), a gated SMTP server, a config file ---------------------------


@dataclass
class World:
    base: Path
    config: Config
    handler: GatedHandler
    env: dict[str, str]

    def start(self, *args: str) -> Watched:
        return Watched(*args, "-c", str(self.base / "config.yaml"), cwd=self.base,
                       env={**self.env, "PYTHONPATH": str(ROOT)}, timeout=TIMEOUT)

    def ledger(self) -> Counter[DeliveryStatus]:
        engine = open_database(self.config)
        try:
            with session(engine) as db:
                return Counter(db.exec(select(Delivery.status)).all())
        finally:
            engine.dispose()


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Any]:
    """``world(database_url, scheduled=False, prepared=True, **settings)``: subscribers, summaries and a config
    file; a prepared issue unless ``scheduled`` (then `newsletter run` prepares it, due now) or not
    ``prepared``."""
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "faults-test")
    handler = GatedHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()

    def build(database_url: str | None, *, scheduled: bool = False, prepared: bool = True, **settings: Any) -> World:
        if database_url:
            monkeypatch.setenv("NEWSLETTER_DATABASE_URL", database_url)
        else:
            monkeypatch.delenv("NEWSLETTER_DATABASE_URL", raising=False)
        write_smtp_config(tmp_path, controller.port, CONNECTIONS, batch_size=20)
        path = tmp_path / "config.yaml"
        data = yaml.safe_load(path.read_text())
        for key, value in settings.items():
            data[key] = {**data.get(key, {}), **value}
        if scheduled:  # every minute is a scheduled time: the digest is due the moment `run` starts
            data["schedule"] = {"cron": "* * * * *", "timezone": "Europe/Berlin", "lease_seconds": 6}
        path.write_text(yaml.safe_dump(data))
        config = load_config(path)
        engine = open_database(config)
        add_summaries(engine, 2, at=utcnow() - timedelta(days=8))  # gathered during last week
        add_people(engine, *PEOPLE)
        if prepared and not scheduled:
            prepare_issue(engine, config)
        engine.dispose()
        return World(tmp_path, config, handler, dict(os.environ))

    yield build
    handler.gate.set()
    controller.stop()


def sent_once_each(world: World) -> None:
    assert world.ledger() == Counter({DeliveryStatus.SENT: len(PEOPLE)})
    assert world.handler.received == Counter(dict.fromkeys(PEOPLE, 1))


def no_traceback(process: Watched) -> None:
    assert "Traceback" not in process.log + process.out, process.log


COMMANDS = {
    "digest send": ("digest", "send"),
    "worker --until-done": ("worker", "--until-done", "--poll", "0.2"),
    "run": ("run",),
}


def run_through_a_fault(world: World, command: str, put_in_place: Any, take_away: Any) -> Watched:
    """Start ``command``; when a window is on the wire put the fault in place, and take it away once the
    process has logged that the database is unavailable. Returns the process, finished (``run`` once it
    has sent the issue: it is then checked and stopped)."""
    process = world.start(*COMMANDS[command])
    try:
        assert world.handler.reached.wait(TIMEOUT), process.log
        put_in_place()
        world.handler.gate.set()
        process.wait_for(UNAVAILABLE)
        take_away()
        if command == "run":
            holder = process.wait_for(r"holding the scheduler lease as (\S+)")[1]
            process.wait_for(r"issue #1: sent \d+, .*; finished")
            check_the_scheduler_kept_its_lease(world, holder)
            assert process.stop() == 0, process.log
        else:
            assert process.finish() == 0, process.log
    finally:
        take_away()
        process.kill()
    return process


def check_the_scheduler_kept_its_lease(world: World, holder: str) -> None:
    engine = open_database(world.config)
    try:
        with session(engine) as db:
            assert db.exec(select(SchedulerLease.owner)).one() == holder  # kept, or taken again
            assert len(db.exec(select(Issue)).all()) == 1  # the digest job was not run twice over
            # one firing made the issue; later firings (every minute) found nothing waiting
            assert [f.outcome for f in db.exec(select(Firing)).all()].count(FiringOutcome.ISSUED) == 1
    finally:
        engine.dispose()


@sqlite_only
@pytest.mark.parametrize("command", COMMANDS)
def test_a_sqlite_write_lock_held_beyond_the_busy_timeout_is_waited_out(world, command):
    """Another program holds the write lock (BEGIN IMMEDIATE) until the process has given up waiting for
    it once (the busy timeout, 10 s): the process logs one line, waits, and goes on."""
    current = world(None, scheduled=command == "run")
    other = sqlite3.connect(current.base / "newsletter.db", timeout=60, isolation_level=None)
    held = []

    def lock() -> None:
        other.execute("BEGIN IMMEDIATE")
        held.append(True)

    def unlock() -> None:
        if held:
            other.execute("COMMIT")
            held.clear()

    process = run_through_a_fault(current, command, lock, unlock)
    other.close()
    assert process.wait_for(UNAVAILABLE)["reason"] == "database is locked"
    no_traceback(process)
    sent_once_each(current)


@pytest.mark.parametrize("command", COMMANDS)
def test_postgresql_going_down_in_the_middle_of_a_send_is_waited_out(world, cluster, command):
    """The server stops (pg_ctl stop -m fast, which ends every connection) while a window is on the wire
    and starts again once the process has noticed: one line per try, then it goes on."""
    current = world(cluster.new_database(), scheduled=command == "run")
    down = []

    def stop() -> None:
        cluster.ctl("stop", "-m", "fast")
        down.append(True)

    def start() -> None:
        if down:
            cluster.ctl("start")
            down.clear()

    process = run_through_a_fault(current, command, stop, start)
    no_traceback(process)
    sent_once_each(current)


def test_a_postgresql_restart_mid_send_and_while_idle_does_not_stop_a_worker(world, cluster):
    """`pg_ctl restart -m fast` as an operator runs it: once while a worker daemon is sending, once while it
    is idle between issues; it sends the next issue all the same."""
    current = world(cluster.new_database())
    worker = current.start("worker", "--poll", "0.2")
    try:
        assert current.handler.reached.wait(TIMEOUT), worker.log
        current.handler.gate.set()  # the restart meets whatever the worker is doing as it goes on sending
        cluster.ctl("restart", "-m", "fast")
        worker.wait_for(r"issue #1: sent \d+, .*; finished")
        cluster.ctl("restart", "-m", "fast")  # idle: nothing is due
        engine = open_database(current.config)
        add_summaries(engine, 1)
        assert prepare_issue(engine, current.config, now=utcnow() + timedelta(days=7)).issue is not None
        engine.dispose()
        worker.wait_for(r"issue #2: sent \d+, .*; finished")
        assert worker.stop() == 0, worker.log
    finally:
        worker.kill()
    no_traceback(worker)
    for line in worker.lines:
        assert "database" not in line or re.search(UNAVAILABLE + "|database available again", line), line
    assert current.handler.received == Counter(dict.fromkeys(PEOPLE, 2))  # two issues, each once


def test_worker_until_done_gives_up_when_the_database_stays_away_longer_than_the_limit(world, cluster):
    current = world(cluster.new_database(), database={"outage_limit": "3s"})
    worker = current.start(*COMMANDS["worker --until-done"])
    try:
        assert current.handler.reached.wait(TIMEOUT), worker.log
        cluster.ctl("stop", "-m", "fast")
        current.handler.gate.set()
        assert worker.finish() == 1, worker.log
    finally:
        cluster.ctl("start")
        worker.kill()
    no_traceback(worker)
    assert re.search(r"^error: the database has been unavailable for \d+ s, longer than database.outage_limit "
                     r"\(3 s\): .+; check that the database server is running", worker.log, re.M), worker.log

    again = current.start(*COMMANDS["worker --until-done"])  # once it is back: the rest, and the window lost
    assert again.finish() == 0, again.log
    assert current.ledger() == Counter({DeliveryStatus.SENT: len(PEOPLE)})
    assert set(current.handler.received) == set(PEOPLE)
    assert sum(n - 1 for n in current.handler.received.values()) <= IN_FLIGHT


# -- a full disk ----------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs mounted for the test (root only): the database lives there."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs to fill up: {mounted.stderr.strip() or 'mount failed'}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def fill(disk: Path) -> Path:
    """Write a file until the disk has no byte left; returns it (delete it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:  # ENOSPC: on to smaller pieces
                continue
    finally:
        os.close(fd)
    return filler


FULL = (r"^error: the disk holding the database is full \(database or disk is full\); nothing of the step that "
        r"failed was written: free some space, then run the command again$")


@sqlite_only
def test_a_full_disk_during_prepare_is_one_line_and_prepares_nothing(world, small_disk):
    current = world(f"sqlite:///{small_disk}/newsletter.db", prepared=False)
    filler = fill(small_disk)
    alone = current.start("digest", "prepare")  # nobody has the database open: SQLite cannot even open it
    assert alone.finish() == 1
    assert re.search(r"^error: cannot open the database .*: the disk holding it is full; free some space", alone.log,
                     re.M), alone.log
    no_traceback(alone)

    filler.unlink()
    reader = sqlite3.connect(small_disk / "newsletter.db")  # another process using the database (`serve`)
    reader.execute("SELECT count(*) FROM subscriber").fetchall()
    filler = fill(small_disk)
    process = current.start("digest", "prepare")  # opens, then cannot write
    assert process.finish() == 1
    assert re.search(FULL, process.log, re.M), process.log
    no_traceback(process)
    assert reader.execute("SELECT count(*) FROM issue").fetchone() == (0,)  # nothing half-prepared
    assert reader.execute("SELECT count(*) FROM delivery").fetchone() == (0,)
    reader.close()

    filler.unlink()
    assert current.start("digest", "prepare").finish() == 0  # with room again


@sqlite_only
def test_a_full_disk_during_a_send_is_one_line_and_the_next_send_finishes_the_issue(world, small_disk):
    current = world(f"sqlite:///{small_disk}/newsletter.db")
    process = current.start("digest", "send")
    try:
        assert current.handler.reached.wait(TIMEOUT), process.log
        filler = fill(small_disk)  # while a window is on the wire: recording it finds the disk full
        current.handler.gate.set()
        assert process.finish() == 1, process.log
    finally:
        process.kill()
    assert re.search(FULL, process.log, re.M), process.log
    no_traceback(process)

    filler.unlink()
    again = current.start("digest", "send")
    assert again.finish() == 0, again.log
    assert current.ledger() == Counter({DeliveryStatus.SENT: len(PEOPLE)})
    assert set(current.handler.received) == set(PEOPLE)
    assert sum(n - 1 for n in current.handler.received.values()) <= IN_FLIGHT  # the window whose record failed
