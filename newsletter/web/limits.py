"""Per-client limits for the web apps: the subscribe rate limit and the back-off after wrong tokens.

Both key a client by :func:`client_key` (an IPv6 client by its /64, which one subscriber line usually gets
whole, so rotating addresses inside it does not escape), cost O(1) per check (a dict lookup and a move to
the end of an ordered dict; idle clients are dropped from the front) and hold at most ``max_clients``
clients, dropping the least recently seen when full. They live in memory, per server process.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

MAX_CLIENTS = 100_000  # ~150 bytes each: at most ~15 MB per table
V = TypeVar("V")
_IPV4_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:a.b.c.d


def client_key(ip: str | None) -> str:
    """Who a request counts against: an IPv4 address (also when mapped into IPv6), an IPv6 address's /64,
    or anything else (a Unix socket, a test client) as it is."""
    if not ip:
        return "unknown"
    if ":" not in ip:  # IPv4 (as uvicorn gives it, canonical), or not an address at all: itself either way
        return ip
    try:
        packed = socket.inet_pton(socket.AF_INET6, ip)  # 20 times faster than ipaddress, for every request
    except OSError:
        return ip
    if packed[:12] == _IPV4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


class RateLimiter:
    """At most ``limit`` events at once per client, refilled at ``limit`` per ``window`` seconds.

    The generic cell rate algorithm: one number per client, the time its allowance is full again ("theoretical
    arrival time"). A client whose allowance is full has nothing to remember, so it is dropped.
    """

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = MAX_CLIENTS) -> None:
        self.interval = window / limit  # one event's share of the window
        self.burst = window - self.interval  # how far ahead of now the full time may be and still allow one
        self.clock = clock
        self.max_clients = max_clients
        self._full_at: OrderedDict[str, float] = OrderedDict()  # least recently seen first
        self._lock = threading.Lock()

    def allow(self, ip: str | None) -> bool:
        """Count one event for the client at ``ip``; False when it is over the limit (then it is not counted)."""
        key = client_key(ip)
        now = self.clock()
        with self._lock:
            _forget(self._full_at, lambda full_at: full_at <= now, self.max_clients)
            full_at = max(self._full_at.get(key, now), now)
            if full_at - now > self.burst:
                return False
            self._full_at[key] = full_at + self.interval
            self._full_at.move_to_end(key)
            return True

    def __len__(self) -> int:
        return len(self._full_at)


class Backoff:
    """Makes guessing a token slow: after ``free`` wrong tokens in a row, each further wrong one shuts the
    client out for twice as long as the one before (``first`` seconds, at most ``longest``). A right token,
    or a day without a wrong one, forgets the client. While shut out, a request is refused unread, so a
    right guess cannot be told from a wrong one."""

    FORGET_AFTER = 86_400.0

    def __init__(self, free: int = 5, first: float = 1.0, longest: float = 900.0,
                 clock: Callable[[], float] = time.monotonic, max_clients: int = MAX_CLIENTS) -> None:
        self.free, self.first, self.longest = free, first, longest
        self.clock = clock
        self.max_clients = max_clients
        self._clients: OrderedDict[str, tuple[int, float, float]] = OrderedDict()  # (wrong, shut until, last)
        self._lock = threading.Lock()

    def retry_after(self, ip: str | None) -> float:
        """Seconds the client at ``ip`` must wait before it may try a token again (0: it may try now)."""
        now = self.clock()
        with self._lock:
            entry = self._clients.get(client_key(ip))
        return max(0.0, entry[1] - now) if entry else 0.0

    def failed(self, ip: str | None) -> None:
        """Count a wrong token from the client at ``ip``."""
        key = client_key(ip)
        now = self.clock()
        with self._lock:
            _forget(self._clients, lambda entry: entry[2] + self.FORGET_AFTER <= now, self.max_clients)
            wrong, until, _last = self._clients.get(key, (0, now, now))
            wrong += 1
            if wrong > self.free:
                until = now + min(self.first * 2 ** (wrong - self.free - 1), self.longest)
            self._clients[key] = (wrong, until, now)
            self._clients.move_to_end(key)

    def succeeded(self, ip: str | None) -> None:
        """The client at ``ip`` gave the right token: forget its wrong ones."""
        key = client_key(ip)
        with self._lock:
            self._clients.pop(key, None)

    def __len__(self) -> int:
        return len(self._clients)


def _forget(table: OrderedDict[str, V], idle: Callable[[V], bool], max_clients: int) -> None:
    """Drop idle clients from the front (the least recently seen), and the oldest beyond ``max_clients - 1``.

    Amortised O(1): every client is dropped at most once per time it was added."""
    while table and (len(table) >= max_clients or idle(next(iter(table.values())))):
        table.popitem(last=False)
