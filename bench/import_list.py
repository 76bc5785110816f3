"""Importing a subscriber list at scale: rows/s from 10,000 to 1,000,000 rows, peak memory, and how fast a
one-click unsubscribe is answered while an import runs.

    .venv/bin/python -m bench.import_list [--rows 10000 100000 1000000] [--database-url postgresql+psycopg://...]

For each size, a CSV file like a real export (a name on about half the rows, 2 % of the rows repeating an
earlier address in another case, 1 % bad addresses, an extra column) is imported by a real
`newsletter subscribers import` process into a fresh database (SQLite in a temporary folder, or the given
database, emptied first), which is timed and whose peak RSS (VmHWM) is read while it runs. The start-up
of the command (an import of a file with only the header) is measured too and taken off for rows/s.

Meanwhile `newsletter serve` answers one-click unsubscribe POSTs (RFC 8058, as a mail provider sends them)
for people already on the list whose rows come later in the file, one every 0.2 s. Their latency is
printed, and after the import every one of them must still be unsubscribed (the import never
reactivates anyone).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml
from sqlalchemy import insert, text
from sqlmodel import select

from newsletter.config import load_config
from newsletter.db import open_database, session
from newsletter.models import Subscriber, SubscriberStatus, new_token
from newsletter.tokens import LinkSigner

ROOT = Path(__file__).resolve().parent.parent
DOMAINS = ["gmail.com", "example.org", "uni-heidelberg.de", "outlook.com", "lab.example.ac.uk", "posteo.de",
           "xn--mnchen-3ya.de", "research.example.com", "mail.example.net", "yahoo.co.uk"]
FIRST = ["ada", "grace", "alan", "emmy", "kurt", "lise", "niels", "marie", "paul", "rosalind", "chien-shiung"]
LAST = ["lovelace", "hopper", "turing", "noether", "godel", "meitner", "bohr", "curie", "dirac", "franklin"]
KNOWN = 400  # people on the list before the import, who unsubscribe while it runs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def known_people() -> list[str]:
    return [f"known{n}@example.org" for n in range(KNOWN)]


def write_csv(path: Path, rows: int, seed: int = 1) -> None:
    """``rows`` data rows: names on about half, 2 % repeats of an earlier address (other case), 1 % bad, and
    the known people spread over the second half of the file."""
    rng = random.Random(seed)
    known = iter(known_people())
    every = max(rows // 2 // KNOWN, 1)
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("email,name,company\n")
        earlier: list[str] = []
        for n in range(rows):
            roll = rng.random()
            if n >= rows // 2 and (n - rows // 2) % every == 0 and (person := next(known, None)):
                address, name = person, "Known Person"
            elif roll < 0.01:
                address, name = f"not-an-address-{n}", ""
            elif roll < 0.03 and earlier:
                address, name = rng.choice(earlier).upper(), ""
            else:
                first, last = rng.choice(FIRST), rng.choice(LAST)
                address = f"{first}.{last}{n}@{rng.choice(DOMAINS)}"
                name = f"{first.title()} {last.title()}" if roll < 0.5 else ""
                if len(earlier) < 10_000:
                    earlier.append(address)
            out.write(f"{address},{name},Example Corp\n")


def write_config(folder: Path, database_url: str | None) -> Path:
    settings = {
        "newsletter": {"name": "Research Weekly", "sender": "Research Weekly <digest@example.org>",
                       "postal_address": "1 Example Street, Example City", "site_url": "https://news.example.org"},
        "database": {"url": database_url or "sqlite:///bench.db"},
        "templates": str(ROOT / "templates"),
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def fresh_database(config_path: Path) -> list[str]:
    """An empty list but for the known people; returns their one-click unsubscribe paths."""
    config = load_config(config_path)
    engine = open_database(config)
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(text("TRUNCATE subscriber, event, delivery, suppression RESTART IDENTITY CASCADE"))
    tokens = [new_token() for _ in range(KNOWN)]
    with session(engine) as db:
        db.execute(insert(Subscriber), [
            {"email": address, "name": None, "status": SubscriberStatus.ACTIVE, "topics": [], "token": token}
            for address, token in zip(known_people(), tokens, strict=True)
        ])
        db.commit()
    engine.dispose()
    signer = LinkSigner(config)
    return [signer.unsubscribe_url(token).removeprefix(config.newsletter.site_url) for token in tokens]


def still_unsubscribed(config_path: Path) -> int:
    engine = open_database(load_config(config_path))
    with session(engine) as db:
        statuses = db.exec(select(Subscriber.status).where(Subscriber.email.like("known%@example.org"))).all()
    engine.dispose()
    return sum(status is SubscriberStatus.UNSUBSCRIBED for status in statuses)


def peak_rss(pid: int, peak: list[int], done: threading.Event) -> None:
    """Poll the process's VmHWM (its own high-water mark, in kB) until ``done``."""
    status = Path(f"/proc/{pid}/status")
    while not done.is_set():
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak[0] = max(peak[0], int(line.split()[1]))
        except OSError:
            return
        done.wait(0.05)


def run_import(folder: Path, csv_file: Path, env: dict[str, str]) -> tuple[float, float, int, str]:
    """Wall seconds, CPU seconds (user + system, the helper processes included), peak RSS in MB, and the
    summary line of one `subscribers import` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "subscribers", "import", str(csv_file), "-c", str(folder / "config.yaml")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    peak, done = [0], threading.Event()
    watcher = threading.Thread(target=peak_rss, args=(process.pid, peak, done))
    watcher.start()
    out, _ = process.communicate()
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    done.set()
    watcher.join()
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    summary = next((line for line in out.splitlines() if line.startswith("added ")), out.strip()[-200:])
    return elapsed, cpu, peak[0] // 1024, summary


def serve(folder: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "serve", "--port", str(port), "-c", str(folder / "config.yaml")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            httpx.get(f"{base}/subscribe", timeout=1)
            return server, base
        except httpx.HTTPError:
            time.sleep(0.05)
    server.kill()
    raise SystemExit("newsletter serve did not start")


def unsubscribe_during(base: str, paths: list[str], finished: threading.Event, latencies: list[float],
                       failures: list[str]) -> None:
    """One one-click unsubscribe every 0.2 s until ``finished``."""
    with httpx.Client(timeout=30) as client:
        for path in paths:
            if finished.is_set():
                return
            started = time.perf_counter()
            response = client.post(f"{base}{path}", data={"List-Unsubscribe": "One-Click"})
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text[:80]}")
            finished.wait(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.import_list", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: SQLite in a temporary folder)")
    args = parser.parse_args()
    os.environ["NEWSLETTER_SECRET_KEY"] = "bench"  # this process signs the links the server checks
    os.environ.pop("NEWSLETTER_DATABASE_URL", None)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print(f"{'rows':>10} {'seconds':>8} {'rows/s':>9} {'CPU s':>7} {'peak RSS':>9}  unsubscribes during the import")
    with tempfile.TemporaryDirectory(prefix="newsletter-import-") as tmp:
        folder = Path(tmp)
        write_config(folder, args.database_url)
        header_only = folder / "empty.csv"
        write_csv(header_only, 0)
        fresh_database(folder / "config.yaml")
        startup = min(run_import(folder, header_only, env)[0] for _ in range(3))
        for rows in args.rows:
            csv_file = folder / f"list-{rows}.csv"
            write_csv(csv_file, rows)
            for stale in folder.glob("bench.db*"):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
            paths = fresh_database(folder / "config.yaml")
            server, base = serve(folder, env)
            finished, latencies, failures = threading.Event(), [], []
            poster = threading.Thread(target=unsubscribe_during, args=(base, paths, finished, latencies, failures))
            try:
                poster.start()
                elapsed, cpu, peak, summary = run_import(folder, csv_file, env)
            finally:
                finished.set()
                poster.join()
                server.terminate()
                server.wait()
            kept = still_unsubscribed(folder / "config.yaml")
            rate = rows / max(elapsed - startup, 1e-9)
            answered = (f"{len(latencies)} answered, median {statistics.median(latencies) * 1000:.0f} ms, "
                        f"max {max(latencies) * 1000:.0f} ms, {len(failures)} failed, {kept} still unsubscribed"
                        if latencies else "none (the import was too quick)")
            print(f"{rows:>10,} {elapsed:>8.1f} {rate:>9,.0f} {cpu:>7.1f} {peak:>6} MB  {answered}")
            print(f"{'':>10} {summary}")
            for failure in failures[:3]:
                print(f"{'':>10} failed: {failure}")
            csv_file.unlink()
    print(f"(rows/s leave out the command's start-up, {startup:.1f} s, measured on a header-only file; CPU s is "
          "user + system time of the import and its helper processes)")


if __name__ == "__main__":
    main()
