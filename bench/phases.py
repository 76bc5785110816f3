"""Where a send's time goes: the send loop in this process, with timers around each of its stages.

    .venv/bin/python -m bench.phases [--subscribers 10000] [--connections 8] [--in-flight-factor 4]

Sets up the subscribers and an issue like ``python -m bench``, then runs ``send_issue`` here (no process
start-up, no pre-send checks) against ``smtp-sink`` and prints the rate, this process's CPU time and the
time spent in claiming, composing, the backend's ``send`` (in the helper thread), waiting for it, and
recording, per message. Composing overlaps the backend's send; claiming and recording do not.
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

from bench.__main__ import fill, free_port, start_sink, write_config
from newsletter import delivery
from newsletter.backends import create_backend
from newsletter.config import load_config
from newsletter.db import open_database
from newsletter.issues import prepare_issue

spent: Counter[str] = Counter()


def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - start

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
        port = free_port()
        sink = start_sink(port)
        try:
            config = load_config(write_config(Path(folder), port, args.connections, args.in_flight_factor, None))
            engine = open_database(config)
            fill(engine, args.subscribers, 10)
            prepare_issue(engine, config)
            delivery._claim = timed("claim", delivery._claim)
            delivery._record = timed("record", delivery._record)
            delivery._Loop._compose = timed("compose", delivery._Loop._compose)
            wait_and_record = delivery._Loop._record_window

            def record_window(loop: Any, window: Any, sending: Any) -> int:
                timed("wait for the backend", sending.result)()
                return wait_and_record(loop, window, sending)

            delivery._Loop._record_window = record_window
            backend = create_backend(config)
            backend.send = timed("backend send", backend.send)  # type: ignore[method-assign]
            cpu, start = os.times(), time.perf_counter()
            report = delivery.send_issue(engine, config, backend, 1)
            elapsed, used = time.perf_counter() - start, os.times()
        finally:
            sink.terminate()
            sink.wait()
    sent = report.sent
    print(f"sent {sent:,} in {elapsed:.2f} s, {sent / elapsed:,.0f} msg/s; CPU {used.user - cpu.user:.2f} s user, "
          f"{used.system - cpu.system:.2f} s system")
    for name in ("claim", "compose", "backend send", "wait for the backend", "record"):
        print(f"  {name:22s} {spent[name]:6.2f} s  {spent[name] / sent * 1e6:5.0f} µs/message")


if __name__ == "__main__":
    main()
