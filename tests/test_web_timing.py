"""Subscribe answers before it does anything that depends on the address, so neither the answer nor the time
it takes can tell who is on the list.

The design property is proven here, deterministically: with the work after the answer held back, every
class of address gets its answer, byte for byte the same; released, the work happens. How long the answers
take is measured by ``python -m bench.subscribe_timing`` (docs/subscribers.md, "Subscribe timing"): a
statistical comparison has a false-alarm rate of its own, which has no place in a test that must pass."""

from __future__ import annotations

import threading
from typing import Any

import httpx
from sqlmodel import func, select

from newsletter.db import session
from newsletter.models import Event, Subscriber, SubscriberStatus, utcnow
from newsletter.subscribers import erase_subscriber
from newsletter.web import pages
from newsletter.web.app import create_app
from tests import outbox
from tests.conftest import make_config
from tests.helpers import add_people
from tests.preview_support import wait_for
from tests.web_support import served_in_thread

CLASSES = ("new", "pending", "active", "unsubscribed", "bounced", "erased")


def add_classes(engine: Any) -> None:
    """One address of each class but new, as a person's earlier history would leave it."""
    add_people(engine, "active@example.org")
    with session(engine) as db:  # asked a moment ago: its confirmation is on its way, no second one
        db.add(Subscriber(email="pending@example.org", status=SubscriberStatus.PENDING, confirmation_sent_at=utcnow()))
        db.commit()
    add_people(engine, "unsubscribed@example.org", status=SubscriberStatus.UNSUBSCRIBED)
    add_people(engine, "bounced@example.org", status=SubscriberStatus.BOUNCED)
    add_people(engine, "erased@example.org")
    erase_subscriber(engine, "erased@example.org")


def status(engine: Any, address: str) -> SubscriberStatus | None:
    with session(engine) as db:
        return db.exec(select(Subscriber.status).where(Subscriber.email == address)).first()


def events(engine: Any) -> int:
    with session(engine) as db:
        return db.exec(select(func.count()).select_from(Event)).one()


def test_the_answer_does_not_wait_for_the_work_that_depends_on_the_address(config, engine, monkeypatch, tmp_path):
    add_classes(engine)
    app = create_app(make_config(tmp_path, web={"subscribe_limit_per_ip": 100}), engine)
    release = threading.Event()
    started: list[str] = []
    finished: list[str] = []
    real = pages.request_subscription

    def held(engine: Any, address: str, *args: Any, **kwargs: Any) -> Any:
        started.append(address)
        assert release.wait(timeout=120), "the test never released the work"
        try:
            return real(engine, address, *args, **kwargs)
        finally:
            finished.append(address)

    monkeypatch.setattr(pages, "request_subscription", held)
    before = events(engine)
    with served_in_thread(app) as base:
        answers = {}
        try:
            for kind in CLASSES:  # a connection each: nothing of one request can wait behind another
                answers[kind] = httpx.post(f"{base}/subscribe", data={"email": f"{kind}@example.org"}, timeout=60)
            wait_for(lambda: len(started) == len(CLASSES))  # the work began, and waits: nothing done yet
            assert finished == [] and outbox.messages(tmp_path / "outbox") == [] and events(engine) == before
            assert status(engine, "new@example.org") is None
        finally:
            release.set()
        wait_for(lambda: len(finished) == len(CLASSES))
    first = answers["new"]
    assert first.status_code == 200 and b"Check your inbox" in first.content
    for kind, answer in answers.items():
        assert answer.status_code == first.status_code, kind
        assert answer.content == first.content, kind
        assert drop_date(answer.headers) == drop_date(first.headers), kind
    mails = outbox.wait_for_messages(tmp_path / "outbox", 2)
    assert sorted(m["To"].addresses[0].addr_spec for m in mails) == ["new@example.org", "unsubscribed@example.org"]
    assert status(engine, "new@example.org") is SubscriberStatus.PENDING
    assert status(engine, "unsubscribed@example.org") is SubscriberStatus.PENDING
    assert status(engine, "active@example.org") is SubscriberStatus.ACTIVE
    assert status(engine, "bounced@example.org") is SubscriberStatus.BOUNCED
    assert status(engine, "erased@example.org") is None
    assert events(engine) == before + 3  # new, pending and unsubscribed recorded their request


def drop_date(headers: httpx.Headers) -> list[tuple[str, str]]:
    return [(name, value) for name, value in headers.multi_items() if name != "date"]
