"""How fast click links are answered: ``newsletter serve`` under a steady load of clicks, timed from outside.

    .venv/bin/python -m bench.clicks [--rate 2000] [--seconds 20] [--warm-up 3] [--connections 64]
                                     [--just-delivered] [--per-subscriber]

Sends an issue of 10 summaries to 200 subscribers (file backend, SQLite, click counting on) in a temporary
folder, starts ``newsletter serve`` on it (uvicorn in a process of its own, its access log on, as it runs by
default), and this process, the load generator, asks for the issue's click links at a steady ``--rate``
per second for ``--seconds`` (after ``--warm-up`` seconds not counted), over ``--connections`` keep-alive
connections, the links and the subscribers' tokens in turn. Each request is timed from the moment it was
due, not from when a connection was free, so a server that falls behind shows it in the times (no
coordinated omission). Requests are written and answers read on raw sockets: the generator costs a few
microseconds per request, not the milliseconds an HTTP client library would.

The server runs on every processor but one and the generator on that one (on one processor, they share it).
By default the deliveries went out an hour ago; ``--just-delivered`` makes every click come right after a
delivery, so each is checked for a burst from one network (the slower path). ``--per-subscriber`` turns on
``tracking.per_subscriber`` (each click then also names its subscriber, looked up when it is written).

Prints the achieved rate, the median, 90th and 99th percentile and the longest time from due to answered,
and, after the server stopped (writing what it held), how many clicks it counted: every request must be
there. See docs/engagement.md, "Speed".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import yaml
from sqlalchemy import func, insert, update
from sqlmodel import col, select

from bench.subscribe_timing import free_port
from newsletter.backends import create_backend
from newsletter.config import load_config
from newsletter.db import open_database, session
from newsletter.delivery import send_unfinished
from newsletter.issues import prepare_issue
from newsletter.models import ClickCount, Delivery, Subscriber, SubscriberStatus, Summary, new_token, utcnow

ROOT = Path(__file__).resolve().parent.parent
SUMMARIES, SUBSCRIBERS = 10, 200
DEADLINE = 60.0
BROWSER = b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"


def write_config(folder: Path, per_subscriber: bool) -> Path:
    settings = {
        "newsletter": {"name": "Research Weekly", "sender": "Research Weekly <digest@example.org>",
                       "postal_address": "1 Example Street, Example City", "site_url": "https://news.example.org"},
        "database": {"url": "sqlite:///newsletter.db"},
        "templates": str(ROOT / "templates"),
        "backend": {"name": "file", "options": {"outbox": "outbox"}},
        "tracking": {"clicks": True, "per_subscriber": per_subscriber},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def sent_issue(config_path: Path, just_delivered: bool) -> list[bytes]:
    """Issue 1 sent to every subscriber; the request paths of the click links in the messages."""
    config = load_config(config_path)
    engine = open_database(config)
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(insert(Summary), [
            {"uid": f"paper-{n}", "title": f"Paper number {n}", "url": f"https://journals.example.org/papers/{n}",
             "summary": f"What paper {n} found.", "tags": [], "key_points": [], "ingested_at": now,
             "updated_at": now, "origin": "bench", "excluded": False} for n in range(SUMMARIES)])
        connection.execute(insert(Subscriber), [
            {"email": f"reader{n:04d}@example.org", "name": "", "status": SubscriberStatus.ACTIVE, "topics": [],
             "token": new_token(), "bounce_score": 0, "created_at": now, "updated_at": now}
            for n in range(SUBSCRIBERS)])
    prepare_issue(engine, config)
    send_unfinished(engine, config, create_backend(config))
    if not just_delivered:
        with session(engine) as db:
            db.execute(update(Delivery).values(sent_at=utcnow() - timedelta(hours=1)))
            db.commit()
    links: list[bytes] = []
    for message in sorted((config_path.parent / "outbox").glob("*.eml")):
        text = message.read_bytes().decode("ascii", errors="replace").replace("=\r\n", "")
        links += sorted({urlsplit(url).path.encode() for url in re.findall(r"https://news\.example\.org/c/[\w.\-]+", text)})
    engine.dispose()
    return links


def start_server(config_path: Path, cpus: set[int] | None) -> tuple[subprocess.Popen[bytes], int]:
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


async def answer(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 answer; its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if length and int(length[1]):
        await reader.readexactly(int(length[1]))
    return int(head[9:12])


async def load(port: int, paths: list[bytes], rate: float, seconds: float, warm_up: float,
               connections: int) -> tuple[list[float], dict[int, int], float, int]:
    """Ask for ``paths`` in turn at ``rate`` per second: (seconds from due to answered of each counted request,
    statuses, the counted requests' span in seconds, requests sent in all)."""
    total = int(rate * (warm_up + seconds))
    counted_from = int(rate * warm_up)
    times: list[float] = []
    statuses: dict[int, int] = {}
    free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        free.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    start = time.perf_counter() + 0.2
    finished: list[float] = []

    async def one(n: int) -> None:
        due = start + n / rate
        connection = await free.get()
        reader, writer = connection
        writer.write(b"GET " + paths[n % len(paths)] + b" HTTP/1.1\r\nHost: news.example.org\r\nUser-Agent: " +
                     BROWSER + b"\r\n\r\n")
        status = await answer(reader)
        done = time.perf_counter()
        free.put_nowait(connection)
        statuses[status] = statuses.get(status, 0) + 1
        if n >= counted_from:
            times.append(done - due)
            finished.append(done)

    tasks = []
    for n in range(total):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    while not free.empty():
        free.get_nowait()[1].close()
    return times, statuses, max(finished) - (start + counted_from / rate), total


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.clicks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=2000, help="clicks per second asked for")
    parser.add_argument("--seconds", type=float, default=20, help="how long the counted load lasts")
    parser.add_argument("--warm-up", type=float, default=3, help="seconds of load first, not counted")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--just-delivered", action="store_true", help="clicks right after the deliveries")
    parser.add_argument("--per-subscriber", action="store_true", help="tracking.per_subscriber: true")
    args = parser.parse_args()
    os.environ.setdefault("NEWSLETTER_SECRET_KEY", "bench")
    os.environ.pop("NEWSLETTER_DATABASE_URL", None)
    available = os.sched_getaffinity(0)
    client_cpu = {max(available)} if len(available) > 1 else None
    with tempfile.TemporaryDirectory(prefix="newsletter-bench-") as folder:
        config_path = write_config(Path(folder), args.per_subscriber)
        paths = sent_issue(config_path, args.just_delivered)
        server, port = start_server(config_path, available - client_cpu if client_cpu else None)
        load_before = os.getloadavg()[0]
        try:
            if client_cpu:
                os.sched_setaffinity(0, client_cpu)
            times, statuses, span, sent = asyncio.run(
                load(port, paths, args.rate, args.seconds, args.warm_up, args.connections))
        finally:
            os.sched_setaffinity(0, available)
            server.terminate()  # its shutdown writes the clicks it still holds
            server.wait(timeout=DEADLINE)
        engine = open_database(load_config(config_path))
        with session(engine) as db:
            counted, human = db.exec(select(func.sum(col(ClickCount.clicks)), func.sum(col(ClickCount.human_clicks)))).one()
        engine.dispose()
    mode = ("per subscriber" if args.per_subscriber else "anonymous") + (
        ", right after delivery" if args.just_delivered else ", an hour after delivery")
    print(f"{len(paths):,} click links ({mode}); {args.rate:,.0f}/s asked for {args.seconds:g} s after {args.warm_up:g} s "
          f"not counted, over {args.connections} connections; load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after, on {len(available)} processor(s)"
          + ("" if client_cpu else " (shared by generator and server)"))
    print(f"answered: {len(times) / span:,.0f}/s; statuses: " + ", ".join(f"{s} × {n:,}" for s, n in sorted(statuses.items())))
    print(f"due to answered: median {statistics.median(times) * 1000:.2f} ms, p90 {percentile(times, 0.9) * 1000:.2f} ms, "
          f"p99 {percentile(times, 0.99) * 1000:.2f} ms, max {max(times) * 1000:.1f} ms")
    print(f"counted: {counted or 0:,} clicks of {sent:,} requests sent, {human or 0:,} likely human")


if __name__ == "__main__":
    main()
