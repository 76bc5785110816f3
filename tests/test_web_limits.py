"""Per-client limits of the web apps: who counts as one client, the subscribe rate limit and the back-off
after wrong tokens, with a clock the tests move. The cost per check is measured by bench/rate_limit.py."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from newsletter.web.limits import Backoff, RateLimiter, client_key


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@given(st.ip_addresses(v=6), st.integers(0, 2**64 - 1))
def test_addresses_in_one_ipv6_slash_64_are_one_client(address, host) -> None:
    network = ipaddress.ip_network(f"{address}/64", strict=False)
    other = network.network_address + host
    if address.ipv4_mapped or other.ipv4_mapped:
        return  # an IPv4 client, below
    assert client_key(str(address)) == client_key(str(other)) == str(network)
    neighbour = ipaddress.ip_network((int(network.network_address) ^ (1 << 64), 64))
    assert client_key(str(neighbour.network_address + host)) != client_key(str(address))


@given(st.ip_addresses(v=4))
def test_an_ipv4_client_is_its_address_also_when_mapped_into_ipv6(address) -> None:
    assert client_key(str(address)) == client_key(f"::ffff:{address}") == str(address)


@pytest.mark.parametrize(("oddity", "key"), [
    (None, "unknown"),  # no client address at all (a test client, some servers on a Unix socket)
    ("", "unknown"),
    ("testclient", "testclient"),
    ("unix:/run/socket", "unix:/run/socket"),  # has a colon, is no IPv6 address: itself
    ("2001:db8::1%eth0", "2001:db8::1%eth0"),  # scoped: only from the local link, itself
    ("fe80::1%2", "fe80::1%2"),
    ("2001:DB8:0:0:1::7", "2001:db8::/64"),  # any spelling of an address: its /64 written one way
])  # fmt: skip
def test_anything_else_is_a_client_of_its_own_and_never_an_error(oddity, key) -> None:
    assert client_key(oddity) == key


def test_a_burst_of_the_limit_then_one_more_each_window_over_limit() -> None:
    clock = Clock()
    limiter = RateLimiter(limit=4, window=3600, clock=clock)
    assert [limiter.allow("192.0.2.1") for _ in range(5)] == [True, True, True, True, False]
    assert limiter.allow("192.0.2.2")  # another client is not affected
    clock.now += 899
    assert not limiter.allow("192.0.2.1")  # a refused request does not count
    clock.now += 1
    assert limiter.allow("192.0.2.1") and not limiter.allow("192.0.2.1")  # 900 s = 3600 / 4
    clock.now += 3600
    assert [limiter.allow("192.0.2.1") for _ in range(5)] == [True, True, True, True, False]  # full again


def test_rotating_ipv6_addresses_inside_one_slash_64_share_the_limit() -> None:
    limiter = RateLimiter(limit=3, window=3600, clock=Clock())
    answers = [limiter.allow(f"2001:db8:5:6::{n:x}") for n in range(1, 6)]
    assert answers == [True, True, True, False, False]
    assert limiter.allow("2001:db8:5:7::1")


def test_the_table_forgets_idle_clients_and_never_grows_past_its_bound() -> None:
    clock = Clock()
    limiter = RateLimiter(limit=10, window=3600, clock=clock, max_clients=1_000)
    for n in range(500):
        limiter.allow(f"10.0.{n // 256}.{n % 256}")
        clock.now += 0.1
    assert len(limiter) == 500
    clock.now += 3600  # everyone's allowance is full again: nothing left to remember
    limiter.allow("192.0.2.1")
    assert len(limiter) == 1
    for n in range(5_000):
        limiter.allow(f"10.1.{n // 256}.{n % 256}")
    assert len(limiter) == 1_000  # the least recently seen are dropped first


def test_back_off_doubles_after_the_free_tries_and_a_right_token_forgets() -> None:
    clock = Clock()
    backoff = Backoff(free=3, first=1.0, longest=8.0, clock=clock)
    for _ in range(3):
        assert backoff.retry_after("2001:db8::1") == 0
        backoff.failed("2001:db8::1")
    assert backoff.retry_after("2001:db8::1") == 0
    waits = []
    for _ in range(5):
        backoff.failed("2001:db8::2")  # the same /64: the same client
        waits.append(backoff.retry_after("2001:db8::1"))
        clock.now += waits[-1]
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff.retry_after("2001:db8:0:1::1") == 0  # another /64
    backoff.failed("2001:db8::1")
    backoff.succeeded("2001:db8::1")
    assert backoff.retry_after("2001:db8::1") == 0
    backoff.failed("2001:db8::1")
    assert backoff.retry_after("2001:db8::1") == 0  # counting starts again


def test_back_off_forgets_a_client_after_a_quiet_day_and_stays_bounded() -> None:
    clock = Clock()
    backoff = Backoff(free=1, first=60.0, longest=600.0, clock=clock, max_clients=100)
    backoff.failed("192.0.2.1")
    backoff.failed("192.0.2.1")
    assert backoff.retry_after("192.0.2.1") == 60.0
    clock.now += 86_400
    backoff.failed("192.0.2.9")
    assert len(backoff) == 1 and backoff.retry_after("192.0.2.1") == 0
    for n in range(1_000):
        backoff.failed(f"10.2.{n // 256}.{n % 256}")
    assert len(backoff) == 100
