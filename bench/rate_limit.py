"""Cost of one subscribe rate-limit check, and memory per client, with many clients active at once.

    .venv/bin/python -m bench.rate_limit [--active 10000 60000] [--checks 200000]

For each number of active clients (half IPv4 addresses, half IPv6 addresses in distinct /64s), fills a
limiter (web.subscribe_limit_per_ip 10 an hour) with that many clients seen within the hour, then times
``--checks`` checks: each from a random known client or, one in ten, a new one. The clock moves 1 ms per
check, so nobody goes idle during the run. Prints microseconds per check (median of five rounds) and the
table's memory per client (tracemalloc).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import tracemalloc

from newsletter.web.limits import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


def address(n: int) -> str:
    return f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}" if n % 2 else f"2001:db8:{n >> 16:x}:{n & 0xFFFF:x}::1"


def measure(active: int, checks: int, rng: random.Random) -> tuple[float, float]:
    """(µs per check, bytes per client) with ``active`` clients in the table."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    limiter = RateLimiter(10, 3600.0, clock=Clock())
    for n in range(active):
        limiter.allow(address(n))
    per_client = (tracemalloc.get_traced_memory()[0] - before) / active
    tracemalloc.stop()
    assert len(limiter) == active
    rounds = []
    fresh = active
    for _ in range(5):
        picks = []
        for _ in range(checks):
            if rng.random() < 0.1:
                picks.append(address(fresh))
                fresh += 1
            else:
                picks.append(address(rng.randrange(active)))
        start = time.perf_counter()
        for ip in picks:
            limiter.allow(ip)
        rounds.append((time.perf_counter() - start) / checks * 1e6)
    return statistics.median(rounds), per_client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--active", type=int, nargs="+", default=[10_000, 60_000])
    parser.add_argument("--checks", type=int, default=200_000)
    args = parser.parse_args()
    rng = random.Random(4)
    print(f"{'active clients':>15} {'µs per check':>13} {'bytes per client':>17}")
    for active in args.active:
        micros, per_client = measure(active, args.checks, rng)
        print(f"{active:>15,} {micros:>13.2f} {per_client:>17.0f}")


if __name__ == "__main__":
    main()
