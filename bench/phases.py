"""Where a send's time goes: the send loop in this process, with timers around each of its stages.

    .venv/bin/python -m bench.phases [--subscribers 10000] [--connections 8] [--in-flight-factor 4]

Sets up the subscribers and an issue like ``python -m bench``, then runs ``send_issue`` here (no process
start-up, no pre-send checks) against ``smtp-sink`` and prints the rate, this process's CPU time and the
time the send loop spent claiming, composing, waiting for results, writing them and reading the issue's
status, per message. The backend sends meanwhile, in its own threads.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.__main__ import Sink, cpu_time, fill, write_config
from newsletter import delivery
from newsletter.backends import create_backend, wire
from newsletter.config import load_config
from newsletter.db import open_database
from newsletter.issues import prepare_issue

spent: Counter[str] = Counter()  # seconds of wall time
cpu_spent: Counter[str] = Counter()  # seconds of CPU time of the thread


def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - start
            cpu_spent[name] += time.thread_time() - cpu

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.phases", description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--in-flight-factor", type=int)
    args = parser.parse_args()
    os.environ.setdefault("NEWSLETTER_SECRET_KEY", "bench")
    os.environ.pop("NEWSLETTER_DATABASE_URL", None)
    with tempfile.TemporaryDirectory(prefix="newsletter-phases-") as folder:
        os.chdir(folder)
        sink = Sink()
        port = sink.port
        try:
            config = load_config(write_config(Path(folder), port, args.connections, args.in_flight_factor, None))
            engine = open_database(config)
            fill(engine, args.subscribers, 10)
            prepare_issue(engine, config)
            delivery._claim = timed("claim", delivery._claim)
            delivery._record = timed("record", delivery._record)
            delivery._Loop._compose = timed("compose", delivery._Loop._compose)
            delivery._Loop._issue_status = timed("issue status", delivery._Loop._issue_status)
            run_wire = wire.Wire._run

            def wire_thread(self: Any) -> None:  # the CPU time of the thread that drives the connections
                try:
                    run_wire(self)
                finally:
                    spent["connections' thread CPU"] += time.thread_time()

            wire.Wire._run = wire_thread  # type: ignore[method-assign]
            backend = create_backend(config)
            open_stream = backend.stream

            def stream() -> Any:
                opened = open_stream()
                opened.take = timed("wait for results", opened.take)  # type: ignore[method-assign]
                return opened

            backend.stream = stream  # type: ignore[method-assign]
            cpu, start, sink_cpu = os.times(), time.perf_counter(), cpu_time(sink.process.pid)
            main_cpu = time.thread_time()
            report = delivery.send_issue(engine, config, backend, 1)
            elapsed, used = time.perf_counter() - start, os.times()
            spent["send loop's thread CPU"] += time.thread_time() - main_cpu
            sink_cpu = cpu_time(sink.process.pid) - sink_cpu
        finally:
            sink.stop()
    sent = report.sent
    print(f"sent {sent:,} in {elapsed:.2f} s, {sent / elapsed:,.0f} msg/s; CPU {used.user - cpu.user:.2f} s user, "
          f"{used.system - cpu.system:.2f} s system; smtp-sink {sink_cpu / sent * 1e6:.0f} µs of CPU per message, "
          f"busy {sink_cpu / elapsed:.0%} of the time")
    for name in ("claim", "compose", "wait for results", "record", "issue status", "send loop's thread CPU",
                 "connections' thread CPU"):
        cpu = f", CPU {cpu_spent[name] / sent * 1e6:4.0f} µs" if name in cpu_spent else ""
        print(f"  {name:24s} {spent[name]:6.2f} s  {spent[name] / sent * 1e6:5.0f} µs/message{cpu}")


if __name__ == "__main__":
    main()
