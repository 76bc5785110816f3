"""Does the time ``POST /subscribe`` takes tell who is on the list? Each class of address, timed.

    .venv/bin/python -m bench.subscribe_timing [--per-class 300] [--warm-up 20] [--seed 22]

Starts ``newsletter serve`` (uvicorn in a process of its own) on a SQLite database in a temporary folder
that holds ``--per-class`` + ``--warm-up`` addresses of each class the subscribe form can meet: new (not on
the list), pending (asked a moment ago: its confirmation is on its way), active, unsubscribed, bounced and
erased (only a hash kept). Posts ``/subscribe`` once for every address over one keep-alive loopback
connection, the classes interleaved in a shuffled order (so whatever a request leaves behind falls on the
next one whatever its class), and times each answer. After each answer it lets the server finish the work
that follows it (waits for the confirmation email where one is due, new and unsubscribed, then 20 ms for
every class), so each request starts on an idle server. The first ``--warm-up`` requests of each class are
not counted.

The server runs on every processor but one and this client on that one: on a shared processor the server's
work after an answer would delay the client reading it, which a client on another machine never sees.

Prints each class's median time and the two-sided Mann-Whitney U p-value of its times against new's (the
normal approximation, :mod:`bench.stats`). Under the promise (no difference) each p is uniform on [0, 1]:
one below 0.01 comes once in a hundred runs per class by chance, and with five classes compared, about once
in twenty runs for one of them. See docs/subscribers.md, "Subscribe timing".
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from sqlalchemy import insert

from bench.stats import mann_whitney_p
from newsletter.config import load_config
from newsletter.db import open_database
from newsletter.models import Subscriber, SubscriberStatus, new_token, utcnow
from newsletter.subscribers import erase_subscriber

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("new", "pending", "active", "unsubscribed", "bounced", "erased")
MAILED = ("new", "unsubscribed")  # the classes that get a confirmation email
SETTLE = 0.02  # seconds after each answer (and its email) for the rest of the work after it
DEADLINE = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(folder: Path) -> Path:
    settings = {
        "newsletter": {"name": "Research Weekly", "sender": "Research Weekly <digest@example.org>",
                       "postal_address": "1 Example Street, Example City", "site_url": "https://news.example.org"},
        "database": {"url": "sqlite:///newsletter.db"},
        "templates": str(ROOT / "templates"),
        "backend": {"name": "file", "options": {"outbox": "outbox"}},
        "web": {"subscribe_limit_per_ip": 10_000},  # the most it takes: 10,000 an hour is enough here
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def address(kind: str, n: int) -> str:
    return f"{kind}{n:04d}@example.org"


def fill(config_path: Path, count: int) -> None:
    """``count`` addresses of each class but new."""
    engine = open_database(load_config(config_path))
    now = utcnow()
    states = {"pending": SubscriberStatus.PENDING, "active": SubscriberStatus.ACTIVE, "erased": SubscriberStatus.ACTIVE,
              "unsubscribed": SubscriberStatus.UNSUBSCRIBED, "bounced": SubscriberStatus.BOUNCED}
    rows = [{"email": address(kind, n), "name": "", "status": status, "topics": [], "token": new_token(),
             "bounce_score": 0, "created_at": now, "updated_at": now,
             "confirmation_sent_at": now if kind == "pending" else None}
            for kind, status in states.items() for n in range(count)]
    with engine.begin() as connection:
        connection.execute(insert(Subscriber), rows)
    for n in range(count):
        erase_subscriber(engine, address("erased", n))
    engine.dispose()


def start_server(config_path: Path, cpus: set[int] | None) -> tuple[subprocess.Popen[bytes], int]:
    """``newsletter serve`` on a free loopback port (pinned to ``cpus``), once /healthz answers."""
    port = free_port()
    log = (config_path.parent / "serve.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "newsletter", "serve", "--port", str(port), "--config",
                               str(config_path)], stdout=subprocess.DEVNULL, stderr=log)
    if cpus:  # still starting, one thread: the threads it starts later inherit this
        os.sched_setaffinity(server.pid, cpus)
    deadline = time.monotonic() + DEADLINE
    while True:
        if server.poll() is not None:
            raise SystemExit(f"newsletter serve stopped: see {config_path.parent / 'serve.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server, port
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"newsletter serve did not answer within {DEADLINE:.0f} s")
        time.sleep(0.05)


def mails(outbox: Path) -> int:
    return sum(1 for _ in outbox.glob("*.eml")) if outbox.is_dir() else 0


Answers = set[tuple[int, bytes]]


def run(base: str, outbox: Path, order: list[str], warm_up: int) -> tuple[dict[str, list[float]], Answers]:
    """Seconds per answer of each class (after its warm-up) and the distinct (status, body) answers."""
    times: dict[str, list[float]] = {kind: [] for kind in CLASSES}
    used = dict.fromkeys(CLASSES, 0)
    answers: Answers = set()
    mailed = 0
    with httpx.Client(base_url=base, timeout=DEADLINE) as client:
        for kind in order:
            data = {"email": address(kind, used[kind])}
            used[kind] += 1
            start = time.perf_counter()
            response = client.post("/subscribe", data=data)
            elapsed = time.perf_counter() - start
            answers.add((response.status_code, response.content))
            if used[kind] > warm_up:
                times[kind].append(elapsed)
            if kind in MAILED:
                mailed += 1
                deadline = time.monotonic() + DEADLINE
                while mails(outbox) < mailed:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"no confirmation email for {data['email']} within {DEADLINE:.0f} s")
                    time.sleep(0.001)
            time.sleep(SETTLE)
    return times, answers


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.subscribe_timing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=300, help="timed requests per class")
    parser.add_argument("--warm-up", type=int, default=20, help="requests per class not counted, first")
    parser.add_argument("--seed", type=int, default=22, help="of the shuffled order")
    args = parser.parse_args()
    if (args.per_class + args.warm_up) * len(CLASSES) > 10_000:
        parser.error("at most 10,000 requests in all: the most web.subscribe_limit_per_ip allows in an hour")
    os.environ.setdefault("NEWSLETTER_SECRET_KEY", "bench")
    os.environ.pop("NEWSLETTER_DATABASE_URL", None)
    count = args.per_class + args.warm_up
    order = [kind for kind in CLASSES for _ in range(count)]
    random.Random(args.seed).shuffle(order)
    available = os.sched_getaffinity(0)
    client_cpu = {max(available)} if len(available) > 1 else None
    with tempfile.TemporaryDirectory(prefix="newsletter-bench-") as folder:
        config_path = write_config(Path(folder))
        fill(config_path, count)
        server, port = start_server(config_path, available - client_cpu if client_cpu else None)
        base = f"http://127.0.0.1:{port}"
        load_before = os.getloadavg()[0]
        try:
            if client_cpu:
                os.sched_setaffinity(0, client_cpu)
            times, answers = run(base, Path(folder) / "outbox", order, args.warm_up)
        finally:
            os.sched_setaffinity(0, available)
            server.terminate()
            server.wait(timeout=30)
        emails = mails(Path(folder) / "outbox")
    print(f"{len(order):,} requests, {args.per_class} timed per class after {args.warm_up} not counted; load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {len(available)} processor(s)"
          + ("" if client_cpu else " (shared by client and server: their times mix)"))
    print(f"{'class':<14}{'median ms':>10}{'p against new':>15}")
    for kind in CLASSES:
        p = "" if kind == "new" else f"{mann_whitney_p(times['new'], times[kind]):.3g}"
        print(f"{kind:<14}{statistics.median(times[kind]) * 1000:>10.2f}{p:>15}")
    shown = ", ".join(f"{status} ({len(body):,} bytes)" for status, body in sorted(answers))
    print(f"answers: {len(answers)} distinct: {shown}")
    print(f"confirmation emails: {emails:,} (expected {count * len(MAILED):,}: one per new or unsubscribed address)")


if __name__ == "__main__":
    main()
