"""End-to-end send benchmark against Postfix's smtp-sink on loopback, with smtp-source as the reference.

    .venv/bin/python -m bench [--subscribers 10000|100000|1000000] [--summaries 10] [--connections 8]
                              [--workers 1] [--in-flight-factor 4] [--database-url postgresql+psycopg://...]

Creates the subscribers and an issue of ``--summaries`` summaries in a temporary folder (SQLite there, or
the given database, which must be empty), prepares the issue (timed), measures the per-message
render+personalise cost in this process, then sends with ``--workers`` real `newsletter worker --until-done`
processes (each with ``--connections`` SMTP connections) to ``smtp-sink``, measuring wall time and each
sender's peak RSS (VmHWM) and CPU time. Before and after that, ``smtp-source`` sends as many messages (at
most 20,000) of the same size over the same total number of connections to the same sink, once opening a
connection per message (its default) and once keeping them open (``-d``); the reference is the mean of
the two runs. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from sqlalchemy import insert
from sqlmodel import select

from newsletter.config import load_config
from newsletter.db import open_database, session
from newsletter.issues import issue_items, prepare_issue
from newsletter.message import Composer
from newsletter.models import Issue, Subscriber, SubscriberStatus, Summary, new_token, utcnow

ROOT = Path(__file__).resolve().parent.parent
SINK, SOURCE = "/usr/sbin/smtp-sink", "/usr/sbin/smtp-source"
PARAGRAPH = ("The authors measured what happens when the method is applied at scale, compared it with two "
             "earlier approaches and found a consistent improvement that holds across the data sets. ")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_sink(port: int) -> subprocess.Popen[bytes]:
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # smtp-sink refuses to keep root privileges
    sink = subprocess.Popen([SINK, *user, f"127.0.0.1:{port}", "1024"])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return sink
        except OSError:
            time.sleep(0.05)
    raise SystemExit("smtp-sink did not start")


def write_config(folder: Path, port: int, connections: int, factor: int | None, database_url: str | None) -> Path:
    settings = {
        "newsletter": {"name": "Research Weekly", "sender": "Research Weekly <digest@example.org>",
                       "postal_address": "1 Example Street, Example City", "site_url": "https://news.example.org"},
        "database": {"url": database_url or "sqlite:///bench.db"},
        "templates": str(ROOT / "templates"),
        "backend": {"name": "smtp", "options": {"host": "127.0.0.1", "port": port, "security": "none",
                                                "connections": connections}},
        "delivery": {"batch_size": 1000, **({"in_flight_factor": factor} if factor else {})},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def fill(engine, subscribers: int, summaries: int) -> None:
    now = utcnow()
    with session(engine) as db:
        for n in range(summaries):
            db.add(Summary(uid=f"bench-{n}", title=f"Paper number {n}: a result worth reading",
                           url=f"https://example.org/papers/{n}", source="Journal of Examples",
                           category=("Neuroscience", "Climate", "Physics")[n % 3], summary=PARAGRAPH,
                           key_points=[f"Finding {n}.{k}" for k in range(3)]))
        db.commit()
        for start in range(0, subscribers, 50_000):
            rows = [{"email": f"reader{n:07d}@example.org", "name": f"Reader {n}", "status": SubscriberStatus.ACTIVE,
                     "topics": [], "token": new_token(), "bounce_score": 0, "created_at": now, "updated_at": now}
                    for n in range(start, min(start + 50_000, subscribers))]
            db.execute(insert(Subscriber), rows)
            db.commit()


def per_message_cost(engine, config) -> tuple[float, int]:
    """Seconds to personalise one message (the issue rendered once first), and the message size."""
    with session(engine) as db:
        issue = db.exec(select(Issue)).one()
        composer = Composer(config, issue, issue_items(db, issue))
        people = db.exec(select(Subscriber).limit(2000)).all()
    template = composer.template([])
    start = time.perf_counter()
    for person in people:
        data = composer.compose(1, person, template).data
    return (time.perf_counter() - start) / len(people), len(data)


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM) in bytes so far; 0 once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def send(config_path: Path, workers: int, profile: str | None) -> tuple[float, int, float]:
    """Wall time of ``workers`` worker processes sending everything, the largest peak RSS (bytes), and the
    CPU time they used together (seconds).

    The peak is read from /proc while the workers run, not from wait4: on Linux a child's ru_maxrss starts
    from the parent's size at fork (this process, holding the list it just created), not from zero. The CPU
    time is what the children waited for meanwhile used (getrusage), which is exact.
    """
    spy = ["py-spy", "record", "-r", "100", "--format", "raw", "-o", profile, "--"] if profile else []
    command = [*spy, sys.executable, "-m", "newsletter", "worker", "--until-done", "--force", "--poll", "0.5",
               "-c", str(config_path)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    processes = [subprocess.Popen(command, cwd=config_path.parent, stdout=subprocess.DEVNULL) for _ in range(workers)]
    peaks = [0] * workers
    while any(process.poll() is None for process in processes):
        for n, process in enumerate(processes):
            peaks[n] = max(peaks[n], peak_rss(process.pid))
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    failed = [process.returncode for process in processes if process.returncode]
    if failed:
        raise SystemExit(f"a worker failed with exit code {failed[0]}")
    return elapsed, max(peaks), cpu


def cpu_time(pid: int) -> float:
    """Seconds of CPU (user + system) process ``pid`` has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sink:
    """``smtp-sink`` on a loopback port, and the CPU time it used while each sender ran."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process = start_sink(self.port)
        self.busy: dict[str, list[float]] = {}  # what ran -> the sink's share of one core while it ran

    def measure(self, name: str, run: Callable[[], float]) -> float:
        before, start = cpu_time(self.process.pid), time.perf_counter()
        result = run()
        self.busy.setdefault(name, []).append(
            (cpu_time(self.process.pid) - before) / (time.perf_counter() - start))
        return result

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def reference(port: int, size: int, count: int, connections: int, *, keep: bool) -> float:
    """smtp-source's messages per second for ``count`` messages of ``size`` bytes; with ``keep`` (its -d)
    each connection carries many messages, as ours do, instead of one."""
    start = time.perf_counter()
    subprocess.run([SOURCE, *(["-d"] if keep else []), "-l", str(size), "-m", str(count), "-s", str(connections),
                    "-f", "a@example.org", "-t", "b@example.org", f"127.0.0.1:{port}"], check=True)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--summaries", type=int, default=10, choices=range(10, 21), metavar="10..20")
    parser.add_argument("--connections", type=int, default=8, help="SMTP connections per worker")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--in-flight-factor", type=int, help="delivery.in_flight_factor (default: the config's)")
    parser.add_argument("--profile", metavar="FILE", help="record the workers with py-spy (raw format) into FILE; "
                        "RSS is then py-spy's")
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: SQLite in a temp folder)")
    args = parser.parse_args()
    for program in (SINK, SOURCE):
        if not shutil.which(program):
            raise SystemExit(f"{program} is missing: apt-get install postfix (the daemon need not run)")
    os.environ.setdefault("NEWSLETTER_SECRET_KEY", "bench")
    os.environ.pop("NEWSLETTER_DATABASE_URL", None)
    with tempfile.TemporaryDirectory(prefix="newsletter-bench-") as folder:
        sink = Sink()
        port = sink.port
        try:
            config_path = write_config(Path(folder), port, args.connections, args.in_flight_factor,
                                       args.database_url)
            config = load_config(config_path)
            engine = open_database(config)
            fill(engine, args.subscribers, args.summaries)
            start = time.perf_counter()
            prepared = prepare_issue(engine, config)
            prepare_time = time.perf_counter() - start
            cost, size = per_message_cost(engine, config)
            engine.dispose()
            connections = args.connections * args.workers
            count = min(args.subscribers, 20_000)

            def references() -> tuple[float, float]:
                return (sink.measure("smtp-source", lambda: reference(port, size, count, connections, keep=False)),
                        sink.measure("smtp-source -d", lambda: reference(port, size, count, connections, keep=True)))

            before = references()  # the reference runs before and after ours: this machine's speed drifts
            elapsed, rss, cpu = sink.measure("ours", lambda: send(config_path, args.workers, args.profile))
            after = references()
            source_rate, kept_rate = ((b + a) / 2 for b, a in zip(before, after, strict=True))
        finally:
            sink.stop()
    rate = prepared.recipient_count / elapsed
    print(f"subscribers            {prepared.recipient_count:,} ({args.summaries} summaries, "
          f"{args.workers} worker(s) x {args.connections} connection(s), in_flight_factor "
          f"{config.delivery.in_flight_factor})")
    print(f"message size           {size:,} bytes")
    print(f"prepare issue          {prepare_time:.2f} s")
    print(f"render+personalise     {cost * 1e6:.0f} µs/message")
    print(f"send (end to end)      {elapsed:.1f} s, {rate:,.0f} msg/s")
    print(f"peak RSS per sender    {rss / 2**20:.0f} MB")
    print(f"sender CPU             {cpu:.1f} s, {cpu / prepared.recipient_count * 1e6:.0f} µs/message "
          "(user + system, start-up included)")
    print(f"smtp-source            {source_rate:,.0f} msg/s over {connections} connection(s), one message each "
          f"(its default; {before[0]:,.0f} before ours, {after[0]:,.0f} after)")
    print(f"smtp-source -d         {kept_rate:,.0f} msg/s over {connections} connection(s) kept open, as ours are "
          f"({before[1]:,.0f} before, {after[1]:,.0f} after)")
    print(f"ours / smtp-source     {rate / source_rate:.2f} ({rate / kept_rate:.2f} of smtp-source -d)")
    busy = {name: sum(shares) / len(shares) for name, shares in sink.busy.items()}
    print(f"smtp-sink busy         {busy['ours']:.0%} of a core during ours (start-up included), "
          f"{busy['smtp-source -d']:.0%} during smtp-source -d, {busy['smtp-source']:.0%} during smtp-source")


if __name__ == "__main__":
    main()
