"""Counting clicks (newsletter.clicks): which clicks look human, judged against the rule's own definition; what
is stored (nothing that names who clicked, unless per subscriber); nothing lost while the database is away."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, inspect, text, update
from sqlmodel import SQLModel, col, select

from newsletter.clicks import ClickRecorder, Targets
from newsletter.db import session
from newsletter.models import ClickCount, Delivery, Subscriber, SubscriberClick, Summary
from newsletter.scanners import AFTER_DELIVERY, BURST, EARLY_TOLERANCE
from newsletter.tokens import ClickToken, url_hash
from newsletter.web.app import create_app
from tests.click_support import BROWSER, click_links, delivered_ago, path, send_issue, tracked
from tests.conftest import ON_POSTGRES

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC).timestamp()  # when the tests' deliveries start
GATEWAY_A, GATEWAY_B, HOME, PHONE = "203.0.113.5", "203.0.113.77", "198.51.100.9", "2001:db8:1:2::5"
SAME_48 = "2001:db8:1:ffff::9"  # in PHONE's /48
SCANNER = "Mozilla/5.0 (compatible; GoogleImageProxy)"


@pytest.fixture
def site(tmp_path, config):
    return tracked(tmp_path)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Issue1:
    items: tuple[int, ...]  # summary ids
    hashes: dict[int, str]  # summary id -> its URL's hash


def issue_with_deliveries(config, engine, people: int = 4) -> Issue1:
    """Issue 1, sent to ``people`` subscribers; its items and their URL hashes."""
    send_issue(config, engine, *(f"reader{n}@example.org" for n in range(people)))
    with session(engine) as db:
        summaries = db.exec(select(Summary).order_by(col(Summary.id))).all()
    return Issue1(tuple(s.id for s in summaries), {s.id: url_hash(s.url) for s in summaries})  # type: ignore[misc]


def set_deliveries(engine, offsets: list[float]) -> None:
    """The deliveries of issue 1 (in id order) sent at T0 + each offset; the rest not sent."""
    with session(engine) as db:
        ids = db.exec(select(Delivery.id).order_by(col(Delivery.id))).all()
        for delivery_id, offset in zip(ids, [*offsets, *[None] * len(ids)], strict=False):
            when = datetime.fromtimestamp(T0 + offset, UTC) if offset is not None else None
            db.execute(update(Delivery).where(col(Delivery.id) == delivery_id).values(sent_at=when))
        db.execute(delete(ClickCount))
        db.commit()


def stored(engine) -> dict[int, tuple[int, int]]:
    with session(engine) as db:
        return {row.item_id: (row.clicks, row.human_clicks) for row in db.exec(select(ClickCount))}


@dataclass(frozen=True)
class Event:
    at: float
    item: int
    ip: str
    agent: str


def the_rule(events: list[Event], deliveries: list[float], network: dict[str, str]) -> dict[int, tuple[int, int]]:
    """The honest-numbers rule as docs/engagement.md states it, written out plainly (no incremental state):
    a click is likely human unless its agent is a scanner's, or it came within AFTER_DELIVERY s after a
    delivery (or EARLY_TOLERANCE s before one) and another such click came from its network within BURST s."""

    def early(event: Event) -> bool:
        return any(event.at - AFTER_DELIVERY <= T0 + d <= event.at + EARLY_TOLERANCE for d in deliveries)

    result: dict[int, tuple[int, int]] = {}
    for event in events:
        burst = early(event) and any(
            other is not event and early(other) and network[other.ip] == network[event.ip]
            and abs(other.at - event.at) <= BURST
            for other in events
        )
        human = event.agent != SCANNER and not burst
        clicks, humans = result.get(event.item, (0, 0))
        result[event.item] = (clicks + 1, humans + human)
    return result


NETWORKS = {GATEWAY_A: "a", GATEWAY_B: "a", HOME: "home", PHONE: "phone", SAME_48: "phone"}


def test_which_clicks_look_human_follows_the_rule_whenever_the_counts_are_written(site, engine):
    """Random clicks (times, networks, agents) and deliveries, written at random moments in between: the
    counts always equal the rule applied to all of them at once."""
    issue = issue_with_deliveries(site, engine)
    token_of = {item: ClickToken(1, item, issue.hashes[item]) for item in issue.items}
    # whole and half seconds over a minute: close enough for bursts, and boundaries are met exactly
    moment = st.integers(0, 120).map(lambda n: n / 2)

    @given(
        deliveries=st.lists(moment, min_size=1, max_size=4),
        events=st.lists(st.builds(Event, moment.map(lambda s: T0 + s), st.sampled_from(issue.items),
                                  st.sampled_from(sorted(NETWORKS)), st.sampled_from([BROWSER, SCANNER])),
                        max_size=15),
        flushes=st.lists(moment.map(lambda s: T0 + s), max_size=10),
    )
    @settings(max_examples=250, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def counted_as_the_rule_says(deliveries, events, flushes):
        set_deliveries(engine, deliveries)
        clock = Clock(T0)
        recorder = ClickRecorder(engine, site, clock=clock)
        timeline = sorted([(e.at, 0, e) for e in events] + [(f, 1, None) for f in flushes], key=lambda x: x[:2])
        for at, _kind, event in timeline:
            clock.now = at
            if event is None:
                recorder.flush()
            else:
                recorder.record(1, token_of[event.item], event.ip, event.agent)
        clock.now = T0 + 1000
        recorder.flush(final=True)
        assert stored(engine) == the_rule(events, deliveries, NETWORKS)

    counted_as_the_rule_says()


@pytest.mark.parametrize(("first", "second", "human"), [
    (AFTER_DELIVERY, AFTER_DELIVERY, 0),  # both exactly AFTER_DELIVERY after the delivery: early, one network
    (AFTER_DELIVERY, AFTER_DELIVERY + 0.5, 2),  # the second just too late to be early: no burst
    (-EARLY_TOLERANCE, -EARLY_TOLERANCE, 0),  # exactly EARLY_TOLERANCE before the delivery was recorded
    (-EARLY_TOLERANCE - 0.5, -EARLY_TOLERANCE - 0.5, 2),  # before that: no message had left yet
    (5, 5 + BURST, 0),  # exactly BURST apart
    (5, 5 + BURST + 0.5, 2),  # just more
], ids=["after-edge", "after-past", "before-edge", "before-past", "burst-edge", "burst-past"])
def test_the_edges_of_the_rule_belong_to_it(site, engine, first, second, human):
    issue = issue_with_deliveries(site, engine, people=2)
    set_deliveries(engine, [60, 200])  # a later one too: the delivery before a click is looked up
    token = ClickToken(1, issue.items[0], issue.hashes[issue.items[0]])
    clock = Clock(T0)
    recorder = ClickRecorder(engine, site, clock=clock)
    record_at(recorder, clock, T0 + 60 + first, token, GATEWAY_A)
    record_at(recorder, clock, T0 + 60 + second, token, GATEWAY_B)
    recorder.flush(final=True)
    assert stored(engine) == {token.item: (2, human)}


def record_at(recorder: ClickRecorder, clock: Clock, at: float, token: ClickToken, ip: str,
              agent: str = BROWSER) -> None:
    clock.now = at
    recorder.record(1, token, ip, agent)


def test_a_gateway_opening_every_link_on_arrival_is_not_human_a_reader_later_is(site, engine):
    issue = issue_with_deliveries(site, engine, people=1)
    set_deliveries(engine, [0])
    first, second = (ClickToken(1, item, issue.hashes[item]) for item in issue.items)
    clock = Clock(T0)
    recorder = ClickRecorder(engine, site, clock=clock)
    record_at(recorder, clock, T0 + 2, first, GATEWAY_A)  # the gateway, two seconds after delivery...
    record_at(recorder, clock, T0 + 2.5, second, GATEWAY_B)  # ...from a neighbouring address
    record_at(recorder, clock, T0 + 3, first, HOME)  # someone reading at once, alone on their network
    record_at(recorder, clock, T0 + 600, second, GATEWAY_A)  # later, from the gateway's network: a person there
    record_at(recorder, clock, T0 + 601, second, GATEWAY_B)
    clock.now = T0 + 700
    recorder.flush()
    assert stored(engine) == {first.item: (2, 1), second.item: (3, 2)}


def test_during_a_long_send_only_bursts_from_one_network_are_discounted(site, engine):
    """Without per-subscriber data, a click is early when any delivery of the issue went out just before it."""
    issue = issue_with_deliveries(site, engine)
    set_deliveries(engine, [0, 100, 200, 300])  # a slow send: some delivery just before every click below
    first = ClickToken(1, issue.items[0], issue.hashes[issue.items[0]])
    clock = Clock(T0)
    recorder = ClickRecorder(engine, site, clock=clock)
    for at, ip in ((105, HOME), (205, PHONE), (207, SAME_48), (305, GATEWAY_A)):
        record_at(recorder, clock, T0 + at, first, ip)
    clock.now = T0 + 400
    recorder.flush()
    assert stored(engine) == {first.item: (4, 2)}  # the two from one /48 within 2 s are not human


def test_per_subscriber_a_click_is_early_only_after_that_subscribers_own_delivery(tmp_path, config, engine):
    site = tracked(tmp_path, per_subscriber=True)
    issue = issue_with_deliveries(site, engine, people=2)
    set_deliveries(engine, [0, 300])  # reader0 at T0, reader1 five minutes later
    with session(engine) as db:
        tokens = db.exec(select(Subscriber.token).order_by(col(Subscriber.id))).all()
    item = issue.items[0]
    clock = Clock(T0)
    recorder = ClickRecorder(engine, site, clock=clock)
    # reader0's two clicks 305 s after their own delivery: not early, though reader1's message just arrived
    record_at(recorder, clock, T0 + 305, ClickToken(1, item, issue.hashes[item], tokens[0]), GATEWAY_A)
    record_at(recorder, clock, T0 + 306, ClickToken(1, item, issue.hashes[item], tokens[0]), GATEWAY_B)
    # reader1's gateway scanning their message on arrival
    record_at(recorder, clock, T0 + 302, ClickToken(1, item, issue.hashes[item], tokens[1]), HOME)
    record_at(recorder, clock, T0 + 303, ClickToken(1, item, issue.hashes[item], tokens[1]), HOME)
    clock.now = T0 + 400
    recorder.flush()
    assert stored(engine) == {item: (4, 2)}
    with session(engine) as db:
        rows = db.exec(select(SubscriberClick).order_by(col(SubscriberClick.at))).all()
    assert [(row.subscriber_id, row.likely_human) for row in rows] == [(2, False), (2, False), (1, True), (1, True)]


def test_a_subscriber_token_is_ignored_unless_clicks_are_counted_per_subscriber(site, engine):
    issue = issue_with_deliveries(site, engine, people=1)
    with session(engine) as db:
        token = db.exec(select(Subscriber.token)).one()
    recorder = ClickRecorder(engine, site)  # per_subscriber off, though the link carries a subscriber
    recorder.record(1, ClickToken(1, issue.items[0], issue.hashes[issue.items[0]], token), HOME, BROWSER)
    recorder.flush(final=True)
    assert stored(engine) == {issue.items[0]: (1, 1)}
    with session(engine) as db:
        assert db.exec(select(SubscriberClick)).all() == []


def all_rows_as_text(engine) -> str:
    """Every row of every table, as text."""
    with engine.connect() as connection:
        return "\n".join(repr(row) for table in SQLModel.metadata.sorted_tables
                         for row in connection.execute(table.select()))


def test_without_per_subscriber_nothing_stored_names_who_clicked(site, engine):
    [message] = send_issue(site, engine, "ada@example.org")
    delivered_ago(engine, timedelta(hours=3))
    marker = "Mozilla/5.0 DistinctiveBrowser/9.9"
    for ip in ("203.0.113.77", "2001:db8:abcd:12::7"):
        with TestClient(create_app(site, engine), client=(ip, 50000)) as client:  # written at its shutdown
            for link in click_links(message):
                assert client.get(path(link), headers={"User-Agent": marker}, follow_redirects=False).status_code == 302
    assert sum(clicks for clicks, _human in stored(engine).values()) == 2 * len(click_links(message))
    columns = {column["name"] for column in inspect(engine).get_columns("click_count")}
    assert columns == {"issue_id", "item_id", "url_hash", "clicks", "human_clicks"}  # no time, no address
    with session(engine) as db:
        assert db.exec(select(SubscriberClick)).all() == []
    everything = all_rows_as_text(engine)
    for trace in ("203.0.113", "2001:db8:abcd", "DistinctiveBrowser"):  # address, network, user agent
        assert trace not in everything
    if not ON_POSTGRES:  # nor anywhere in the files, freed pages and the write-ahead log included
        with engine.connect() as connection:
            connection.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        files = [site.base_dir / name for name in ("newsletter.db", "newsletter.db-wal")]
        data = b"".join(f.read_bytes() for f in files if f.exists())
        assert data and all(trace.encode() not in data for trace in ("203.0.113", "2001:db8:abcd", "Distinctive"))


def test_counts_wait_in_memory_while_the_database_is_away_and_are_written_after(site, engine, caplog):
    issue = issue_with_deliveries(site, engine, people=1)
    delivered_ago(engine, timedelta(hours=1))
    token = ClickToken(1, issue.items[0], issue.hashes[issue.items[0]])
    recorder = ClickRecorder(engine, site)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE click_count RENAME TO click_count_away"))
    try:
        recorder.record(1, token, HOME, BROWSER)
        with caplog.at_level(logging.WARNING, logger="newsletter.clicks"):
            assert recorder.flush(final=True) == 0
        assert "could not write 1 clicks" in caplog.text
    finally:
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE click_count_away RENAME TO click_count"))
    recorder.record(1, token, HOME, BROWSER)
    assert recorder.flush(final=True) == 2
    assert stored(engine) == {issue.items[0]: (2, 2)}


def test_an_issues_urls_are_read_once_and_found_again_after_a_new_item_url(site, engine):
    issue = issue_with_deliveries(site, engine, people=1)
    targets = Targets(engine, clock=Clock(0))
    token = ClickToken(1, issue.items[0], issue.hashes[issue.items[0]])
    assert targets.cached(token) is None  # nothing in memory yet
    issue_id, url = targets.load(token)  # type: ignore[misc]
    assert targets.cached(token) == (issue_id, url) == (1, "https://example.org/papers/0")
    assert targets.load(ClickToken(7, 1, token.url_hash)) is None  # no issue 7
    edited = ClickToken(1, issue.items[0], url_hash("https://example.org/papers/0-corrected"))
    assert targets.cached(edited) == (1, None)  # looked up a moment ago: not worth asking again yet
    with session(engine) as db:
        db.execute(update(Summary).where(col(Summary.id) == issue.items[0])
                   .values(url="https://example.org/papers/0-corrected"))
        db.commit()
    targets.clock = Clock(5)
    assert targets.cached(edited) is None  # a second later: worth a look
    assert targets.load(edited) == (1, "https://example.org/papers/0-corrected")
    assert targets.load(token) == (1, "https://example.org/papers/0")  # the archive copy still has the first
