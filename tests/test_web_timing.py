"""Subscribe answers as fast for an address already on the list as for a new one: timed against the real
app (``newsletter serve``, uvicorn in its own process) over loopback, compared with the Mann-Whitney U test."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from statistics import median

import httpx
import pytest

from newsletter.config import load_config
from newsletter.db import open_database
from tests.helpers import add_people
from tests.stats import mann_whitney_p
from tests.web_support import newsletter_serve, write_config

PER_CLASS = 300
WARM_UP = 20


def test_the_helper_agrees_with_scipy() -> None:
    # p-values computed with scipy.stats.mannwhitneyu(a, b, method="asymptotic"), an independent implementation
    assert mann_whitney_p(list(range(1, 21)), list(range(11, 31))) == pytest.approx(5.2125496206037515e-05)
    tied_a, tied_b = [1, 2, 2, 3, 3, 3, 4, 5] * 3, [2, 3, 3, 4, 4, 5, 6, 6] * 3
    assert mann_whitney_p(tied_a, tied_b) == pytest.approx(0.0033179745794356496)
    assert mann_whitney_p(tied_b, tied_a) == pytest.approx(0.0033179745794356496)
    assert mann_whitney_p([5.0] * 30, [5.0] * 30) == 1.0


def mails(outbox: Path) -> int:
    return len(list(outbox.glob("*.eml"))) if outbox.is_dir() else 0


@pytest.fixture
def separate_cpus() -> Iterator[tuple[set[int], set[int]]]:
    """(the server's processors, the client's): the client (this thread) runs on one processor, the server
    on the others. On one machine, the server's work after an answer would otherwise compete for the
    processor the client needs to read that answer, a delay an attacker on another machine never sees."""
    available = os.sched_getaffinity(0)
    if len(available) < 2:
        pytest.skip("needs two processors: the client and the server on one would time each other's work")
    client = {max(available)}
    os.sched_setaffinity(0, client)
    yield available - client, client
    os.sched_setaffinity(0, available)


@pytest.mark.slow
def test_subscribe_takes_as_long_for_an_active_address_as_for_a_new_one(tmp_path: Path, separate_cpus) -> None:
    server_cpus, _client_cpus = separate_cpus
    config_file = write_config(tmp_path, web={"subscribe_limit_per_ip": 10_000})
    engine = open_database(load_config(config_file))
    add_people(engine, *(f"active{n}@example.org" for n in range(PER_CLASS + WARM_UP)))
    engine.dispose()
    outbox = tmp_path / "outbox"
    # Interleaved in a shuffled order, so that whatever a request leaves behind (work after the answer, a
    # busier machine) falls on the next request whatever its class.
    order = ["new"] * (PER_CLASS + WARM_UP) + ["active"] * (PER_CLASS + WARM_UP)
    random.Random(22).shuffle(order)
    times: dict[str, list[float]] = {"new": [], "active": []}
    answers: set[tuple[int, str]] = set()
    used = {"new": 0, "active": 0}
    with newsletter_serve(config_file, cpus=server_cpus) as served, httpx.Client(base_url=served.base) as client:
        for kind in order:
            address = f"{kind}{used[kind]}@example.org"
            used[kind] += 1
            start = time.perf_counter()
            response = client.post("/subscribe", data={"email": address})
            elapsed = time.perf_counter() - start
            answers.add((response.status_code, response.text))
            if used[kind] > WARM_UP:
                times[kind].append(elapsed)
            if kind == "new":  # its confirmation goes out after the answer: wait for it, so that every
                deadline = time.monotonic() + 30  # request starts on an idle server
                while mails(outbox) < used["new"]:
                    assert time.monotonic() < deadline, f"no confirmation email for {address} within 30 s"
                    time.sleep(0.002)
    assert len(answers) == 1 and next(iter(answers))[0] == 200  # one answer, whatever the address
    assert mails(outbox) == PER_CLASS + WARM_UP  # the new addresses got their email, the active ones nothing
    p = mann_whitney_p(times["new"], times["active"])
    summary = (f"median new {median(times['new']) * 1000:.2f} ms, active {median(times['active']) * 1000:.2f} ms, "
               f"Mann-Whitney p = {p:.3g}")
    print(summary)
    assert p > 0.01, summary
