"""The subscriber's pages over HTTP (FastAPI's TestClient on a real SQLite file and the file backend):
double opt-in with its abuse protections, one-click unsubscribe (RFC 8058), preferences, and tokens."""

from __future__ import annotations

import base64
import logging
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import select

from newsletter import db as db_module
from newsletter.backends import create_backend
from newsletter.db import open_database, session
from newsletter.delivery import send_unfinished
from newsletter.issues import prepare_issue
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Event,
    EventKind,
    Subscriber,
    SubscriberStatus,
    Summary,
)
from newsletter.subscribers import add_subscriber, erase_subscriber
from newsletter.tokens import CONFIRM, PREFERENCES, UNSUBSCRIBE
from newsletter.web.app import create_app
from tests import outbox
from tests.conftest import make_config, sqlite_only
from tests.helpers import add_summaries

START = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class Site:
    client: TestClient
    clock: Clock
    engine: object
    config: object
    outbox: Path

    def mails(self):
        return outbox.messages(self.outbox)

    def subscriber(self, address: str) -> Subscriber | None:
        with session(self.engine) as db:
            return db.exec(select(Subscriber).where(Subscriber.email == address)).first()

    def path(self, url: str) -> str:
        return url.removeprefix(self.config.newsletter.site_url)

    def signed(self, purpose: str, address: str) -> str:
        subscriber = self.subscriber(address)
        assert subscriber is not None
        return self.client.app.state.web.signer.sign(purpose, subscriber.token)


def make_site(tmp_path: Path, **overrides) -> Site:
    config = make_config(tmp_path, **overrides)
    engine = open_database(config)
    app = create_app(config, engine)
    clock = Clock(START)
    app.state.web.clock = clock
    return Site(TestClient(app, follow_redirects=False), clock, engine, config, tmp_path / "outbox")


@pytest.fixture
def site(config, tmp_path) -> Site:
    made = make_site(tmp_path)
    yield made
    made.engine.dispose()


def subscribe(site: Site, address: str, **fields: str):
    return site.client.post("/subscribe", data={"email": address, **fields},
                            headers={"User-Agent": "Test Browser/1.0"})


# -- subscribe ------------------------------------------------------------------------------------------


def test_subscribe_records_consent_and_sends_a_confirmation_email(site):
    page = site.client.get("/subscribe")
    assert page.status_code == 200 and 'name="email"' in page.text and 'name="website"' in page.text
    response = subscribe(site, "Ada@Example.org", name="Ada", source="partner-site")
    assert response.status_code == 200
    assert "Check your inbox" in response.text
    ada = site.subscriber("Ada@example.org")
    assert ada.status is SubscriberStatus.PENDING
    assert (ada.name, ada.consent_source, ada.consent_ip, ada.consent_user_agent) == (
        "Ada", "partner-site", "testclient", "Test Browser/1.0")
    assert ada.consent_at.replace(tzinfo=UTC) == START
    [mail] = site.mails()
    assert mail["To"].addresses[0].addr_spec == "Ada@example.org"
    assert mail["Subject"] == "Confirm your subscription to Research Weekly"
    assert "List-Unsubscribe" not in mail  # not subscribed yet: nothing to unsubscribe from
    confirm_url = outbox.link(mail, "confirm")
    assert confirm_url in outbox.html_part(mail)
    assert "Research Weekly, 1 Example Street" in outbox.text_part(mail)


def test_control_characters_in_the_form_are_dropped_not_stored(site, caplog):
    """A NUL byte is text to a form but cannot be stored by PostgreSQL: the sign-up must still be kept."""
    response = subscribe(site, "ada@example.org", name="Ada\x00 Lovelace", source="partner\x00site\r\nX: y")
    assert response.status_code == 200
    ada = site.subscriber("ada@example.org")
    assert ada is not None, caplog.text
    assert (ada.name, ada.consent_source) == ("Ada Lovelace", "partner site X: y")
    assert len(site.mails()) == 1


def post_multipart(site: Site, path: str, fields: dict[str, bytes], charset: str):
    """A multipart form in the ``charset`` the client names (Starlette decodes the fields with it)."""
    parts = b"".join(b'--B\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (name.encode(), value)
                     for name, value in fields.items())
    return site.client.post(path, content=parts + b"--B--\r\n",
                            headers={"Content-Type": f"multipart/form-data; charset={charset}; boundary=B"})


def test_lone_surrogates_in_the_form_are_dropped_not_a_lost_sign_up_or_a_500(site, caplog):
    """A client that names the charset raw_unicode_escape can send a lone surrogate, which no database
    (and no page) can encode."""
    fields = {"email": b"ada@example.org", "name": b"Ada \\ud800Lovelace", "source": b"partner\\udfff"}
    assert post_multipart(site, "/subscribe", fields, "raw_unicode_escape").status_code == 200
    ada = site.subscriber("ada@example.org")
    assert ada is not None, caplog.text
    assert (ada.name, ada.consent_source) == ("Ada Lovelace", "partner")
    refused = post_multipart(site, "/subscribe", {**fields, "email": b"nope"}, "raw_unicode_escape")
    assert refused.status_code == 400 and 'value="Ada Lovelace"' in refused.text
    preferences = f"/preferences/{site.signed(PREFERENCES, 'ada@example.org')}"
    saved = post_multipart(site, preferences, {"name": b"Ada \\udc80King"}, "raw_unicode_escape")
    assert saved.status_code == 303
    assert site.subscriber("ada@example.org").name == "Ada King"


def test_the_confirmation_link_activates_only_when_the_button_is_pressed(site):
    subscribe(site, "ada@example.org", name="Ada")
    confirm_path = site.path(outbox.link(site.mails()[0], "confirm"))
    shown = site.client.get(confirm_path)
    assert shown.status_code == 200 and "Confirm my subscription" in shown.text
    assert site.subscriber("ada@example.org").status is SubscriberStatus.PENDING  # a GET (or a link scanner) changes nothing

    done = site.client.post(confirm_path, headers={"User-Agent": "Clicker"})
    assert done.status_code == 303
    assert done.headers["location"].startswith("/preferences/") and done.headers["location"].endswith("?welcome=1")
    ada = site.subscriber("ada@example.org")
    assert ada.status is SubscriberStatus.ACTIVE and ada.confirmed_at is not None
    welcome = site.mails()[-1]
    assert welcome["Subject"] == "Welcome to Research Weekly"
    assert "/unsubscribe/" in welcome["List-Unsubscribe"]
    assert welcome["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "/preferences/" in outbox.text_part(welcome)
    with session(site.engine) as db:
        kinds = [e.kind for e in db.exec(select(Event).where(Event.subscriber_id == ada.id).order_by(Event.id))]
    assert kinds == [EventKind.SUBSCRIBED, EventKind.CONFIRMED]

    again = site.client.post(confirm_path)  # a second click: still fine, no second welcome
    assert again.status_code == 303 and len(site.mails()) == 2


@pytest.mark.parametrize(("tracking", "says"), [
    ({}, "We do not track whether you open our emails or which links you click."),
    ({"clicks": True}, "We count how often each article linked in our emails is clicked, not who clicked"),
    ({"clicks": True, "per_subscriber": True}, "We record which articles linked in our emails you click"),
], ids=["off", "clicks", "per-subscriber"])
def test_the_subscribe_pages_say_what_is_tracked(config, tmp_path, tracking, says):
    site = make_site(tmp_path, tracking=tracking)
    for page in ("/", "/subscribe"):
        assert says in " ".join(site.client.get(page).text.split())
    site.engine.dispose()


def test_only_confirmed_subscribers_get_the_digest(site):
    add_summaries(site.engine, 2)
    subscribe(site, "pending@example.org")
    subscribe(site, "confirmed@example.org")
    site.client.post(site.path(outbox.link(site.mails()[1], "confirm")))
    result = prepare_issue(site.engine, site.config)
    assert result.recipient_count == 1


def test_the_answer_never_reveals_whether_an_address_is_on_the_list(site):
    add_subscriber(site.engine, "active@example.org")
    subscribe(site, "pending@example.org")
    add_subscriber(site.engine, "erased@example.org")
    erase_subscriber(site.engine, "erased@example.org")
    answers = {address: subscribe(site, address) for address in
               ["new@example.org", "active@example.org", "pending@example.org", "erased@example.org"]}
    assert {(r.status_code, r.text) for r in answers.values()} == {(200, answers["new@example.org"].text)}
    sent_to = [m["To"].addresses[0].addr_spec for m in site.mails()]
    assert sent_to == ["pending@example.org", "new@example.org"]  # nothing to the active or the erased one
    assert site.subscriber("erased@example.org") is None


def test_a_filled_honeypot_is_answered_like_a_person_but_does_nothing(site):
    person = subscribe(site, "person@example.org")
    bot = subscribe(site, "victim@example.org", website="https://spam.example")
    assert (bot.status_code, bot.text) == (person.status_code, person.text)
    assert site.subscriber("victim@example.org") is None
    assert len(site.mails()) == 1


def test_at_most_one_confirmation_email_per_address_per_day(site):
    for _ in range(3):
        assert subscribe(site, "target@example.org").status_code == 200
    assert len(site.mails()) == 1
    site.clock.advance(hours=23, minutes=59)
    subscribe(site, "target@example.org")
    assert len(site.mails()) == 1
    site.clock.advance(minutes=2)
    subscribe(site, "target@example.org")
    assert len(site.mails()) == 2


def test_requests_per_ip_are_limited(tmp_path, config):
    site = make_site(tmp_path, web={"subscribe_limit_per_ip": 3})
    for n in range(3):
        assert subscribe(site, f"p{n}@example.org").status_code == 200
    limited = subscribe(site, "p3@example.org")
    assert limited.status_code == 429 and "try again in an hour" in limited.text
    assert site.subscriber("p3@example.org") is None
    other = TestClient(site.client.app, client=("203.0.113.9", 5000))
    assert other.post("/subscribe", data={"email": "p4@example.org"}).status_code == 200  # another IP is not blocked
    site.clock.advance(hours=1, seconds=1)
    assert subscribe(site, "p3@example.org").status_code == 200
    site.engine.dispose()


def test_rotating_addresses_inside_one_ipv6_slash_64_share_the_limit(tmp_path, config):
    site = make_site(tmp_path, web={"subscribe_limit_per_ip": 3})
    answers = [TestClient(site.client.app, client=(f"2001:db8:7:8::{n:x}", 5000))
               .post("/subscribe", data={"email": f"p{n}@example.org"}).status_code for n in range(1, 6)]
    assert answers == [200, 200, 200, 429, 429]
    neighbour = TestClient(site.client.app, client=("2001:db8:7:9::1", 5000))
    assert neighbour.post("/subscribe", data={"email": "q@example.org"}).status_code == 200
    site.engine.dispose()


def test_a_bad_address_gets_the_form_back_with_one_line(site):
    response = subscribe(site, "not an address", name="<b>Eve</b>")
    assert response.status_code == 400
    assert "does not look like an email address" in response.text
    assert "&lt;b&gt;Eve&lt;/b&gt;" in response.text and "<b>Eve</b>" not in response.text
    missing = site.client.post("/subscribe", data={})
    assert missing.status_code == 400
    assert site.mails() == []


def test_when_mail_cannot_be_sent_the_next_request_tries_again(tmp_path, config):
    (tmp_path / "blocked").write_text("a file where the outbox folder should be")
    site = make_site(tmp_path, backend={"name": "file", "options": {"outbox": "blocked/outbox"}})
    normal = subscribe(site, "someone@example.org")
    response = subscribe(site, "ada@example.org")
    assert (response.status_code, response.text) == (normal.status_code, normal.text)  # no tell-tale difference
    assert site.subscriber("ada@example.org").confirmation_sent_at is None  # the next try sends at once
    site.engine.dispose()


class Signal(logging.Handler):
    """Sets ``seen`` when a record at ``level`` or above arrives (from any thread)."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.set()


@sqlite_only
def test_a_locked_database_after_the_answer_is_waited_out_and_the_sign_up_kept(tmp_path, config, monkeypatch, caplog):
    monkeypatch.setattr(db_module, "SQLITE_BUSY_TIMEOUT_MS", 50)  # give up on the lock at once, not after 10 s
    site = make_site(tmp_path)
    caplog.set_level(logging.DEBUG, logger="newsletter.web.pages")
    retrying = Signal(logging.WARNING)
    logging.getLogger("newsletter.db").addHandler(retrying)  # db.patiently's line for each failed try
    blocker = sqlite3.connect(tmp_path / "newsletter.db", isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")  # another process writing for longer than the busy timeout

    def release_once_it_retries() -> None:
        retrying.seen.wait(timeout=60)
        blocker.execute("COMMIT")

    releaser = threading.Thread(target=release_once_it_retries)
    releaser.start()
    try:
        response = subscribe(site, "ada@example.org")  # the test client returns once the work after it is done
    finally:
        releaser.join(timeout=90)
        blocker.close()
        logging.getLogger("newsletter.db").removeHandler(retrying)
        site.engine.dispose()
    assert response.status_code == 200 and "Check your inbox" in response.text
    assert retrying.seen.is_set()
    assert site.subscriber("ada@example.org").status is SubscriberStatus.PENDING
    assert [m["To"].addresses[0].addr_spec for m in site.mails()] == ["ada@example.org"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    *tries, back = warnings
    assert tries and all(w.startswith("database unavailable: database is locked; retrying in ") for w in tries), warnings
    assert back.startswith("database available again after "), warnings
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@sqlite_only
def test_a_confirmation_that_cannot_be_sent_frees_its_slot_even_through_a_locked_database(tmp_path, monkeypatch,
                                                                                         caplog):
    """The mail server refuses the confirmation, and the database is locked just then: freeing the 24-hour
    slot waits the lock out (one line, no traceback), so asking again sends the email at once."""
    from newsletter.errors import DeliveryError
    from newsletter.web import mail

    monkeypatch.setattr(db_module, "SQLITE_BUSY_TIMEOUT_MS", 50)
    site = make_site(tmp_path)
    retrying = Signal(logging.WARNING)
    logging.getLogger("newsletter.db").addHandler(retrying)
    blocker = sqlite3.connect(tmp_path / "newsletter.db", isolation_level=None, check_same_thread=False)
    send_confirmation = mail.send_confirmation

    def refused_while_another_process_writes(*args) -> None:
        blocker.execute("BEGIN EXCLUSIVE")
        threading.Thread(target=lambda: (retrying.seen.wait(timeout=60), blocker.execute("COMMIT"))).start()
        raise DeliveryError("the smtp backend did not accept the message: 451 try later")

    monkeypatch.setattr(mail, "send_confirmation", refused_while_another_process_writes)
    try:
        assert subscribe(site, "ada@example.org").status_code == 200
        assert retrying.seen.is_set()
        monkeypatch.setattr(mail, "send_confirmation", send_confirmation)
        assert subscribe(site, "ada@example.org").status_code == 200  # at once, not 24 hours later
    finally:
        blocker.close()
        logging.getLogger("newsletter.db").removeHandler(retrying)
        site.engine.dispose()
    assert [m["To"].addresses[0].addr_spec for m in site.mails()] == ["ada@example.org"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "could not send a confirmation email: the smtp backend did not accept the message: 451 try later"]
    assert not [r for r in caplog.records if r.exc_info]


def test_a_concurrent_request_for_the_same_new_address_after_the_answer_keeps_the_sign_up(site, monkeypatch, caplog):
    from newsletter import subscriptions
    from newsletter.subscriptions import Consent, request_subscription

    looked_up = subscriptions.find_subscriber

    def another_request_first(db, address):  # a second request inserts the address between lookup and insert
        monkeypatch.setattr(subscriptions, "find_subscriber", looked_up)
        request_subscription(site.engine, address, "", Consent("web form", None, None), now=START)
        return None

    monkeypatch.setattr(subscriptions, "find_subscriber", another_request_first)
    response = subscribe(site, "ada@example.org")
    assert response.status_code == 200 and "Check your inbox" in response.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # tried again, not lost
    assert site.subscriber("ada@example.org").status is SubscriberStatus.PENDING


def test_a_subscription_request_that_fails_after_the_answer_is_logged_with_its_reason(site, caplog):
    with site.engine.begin() as connection:  # a broken schema: a bug, not weather
        connection.execute(text("DROP TABLE event"))
    caplog.set_level(logging.DEBUG, logger="newsletter.web.pages")
    response = subscribe(site, "ada@example.org")
    assert response.status_code == 200 and "Check your inbox" in response.text  # already sent when it failed
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    line = error.getMessage()
    assert line.startswith("could not record a subscription request") and "event" in line, line
    assert "\n" not in line and error.exc_info is None  # one line; the traceback goes with the address
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG and "ada@example.org" in r.getMessage()]
    [detail] = [r for r in caplog.records if r.levelno == logging.DEBUG and "ada@example.org" in r.getMessage()]
    assert detail.exc_info is not None  # the traceback, for whoever turns DEBUG on
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]  # not retried: trying again cannot help
    assert site.subscriber("ada@example.org") is None and site.mails() == []  # nothing half-written


# -- one-click unsubscribe --------------------------------------------------------------------------------


def test_one_click_unsubscribe_posts_without_cookies_answer_200_and_are_idempotent(site):
    add_subscriber(site.engine, "ada@example.org")
    path = f"/unsubscribe/{site.signed(UNSUBSCRIBE, 'ada@example.org')}"
    first = site.client.post(path, data={"List-Unsubscribe": "One-Click"})  # form-urlencoded
    assert first.status_code == 200 and "You are unsubscribed" in first.text
    assert "set-cookie" not in first.headers
    assert site.subscriber("ada@example.org").status is SubscriberStatus.UNSUBSCRIBED
    second = site.client.post(path, files={"List-Unsubscribe": (None, "One-Click")})  # multipart
    assert second.status_code == 200
    with session(site.engine) as db:
        events = db.exec(select(Event).where(Event.kind == EventKind.UNSUBSCRIBED)).all()
    assert len(events) == 1


def test_a_get_on_the_unsubscribe_link_only_shows_a_button(site):
    add_subscriber(site.engine, "ada@example.org")
    path = f"/unsubscribe/{site.signed(UNSUBSCRIBE, 'ada@example.org')}"
    for _ in range(2):
        page = site.client.get(path)
        assert page.status_code == 200
        assert f'action="{path}"' in page.text and 'value="One-Click"' in page.text
    assert site.subscriber("ada@example.org").status is SubscriberStatus.ACTIVE


def test_unsubscribe_links_keep_working_for_years(site):
    add_subscriber(site.engine, "ada@example.org")
    path = f"/unsubscribe/{site.signed(UNSUBSCRIBE, 'ada@example.org')}"
    site.clock.advance(days=3 * 365)
    assert site.client.post(path).status_code == 200
    assert site.subscriber("ada@example.org").status is SubscriberStatus.UNSUBSCRIBED


# -- tokens ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("purpose", [CONFIRM, UNSUBSCRIBE, PREFERENCES])
def test_a_tampered_or_misused_link_gets_a_friendly_400(site, purpose):
    add_subscriber(site.engine, "ada@example.org")
    token = site.signed(purpose, "ada@example.org")
    tampered = token[:-3] + ("xyz" if not token.endswith("xyz") else "abc")
    other = next(p for p in (CONFIRM, UNSUBSCRIBE, PREFERENCES) if p != purpose)
    for bad in (tampered, site.signed(other, "ada@example.org"), "nonsense", "é" * 10):
        for method in ("get", "post"):
            response = getattr(site.client, method)(f"/{purpose}/{bad}")
            assert response.status_code == 400, (bad, method)
            assert "This link does not work" in response.text
    assert site.subscriber("ada@example.org").status is SubscriberStatus.ACTIVE


def test_links_reveal_neither_the_address_nor_the_row_id(site):
    subscribe(site, "ada.lovelace@example.org")
    urls = [outbox.link(site.mails()[0], "confirm")]
    site.client.post(site.path(urls[0]))
    welcome = site.mails()[-1]
    urls += [outbox.link(welcome, "unsubscribe"), outbox.link(welcome, "preferences")]
    ada = site.subscriber("ada.lovelace@example.org")
    for url in urls:
        token = url.rsplit("/", 1)[1]
        decoded = b"".join(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)) for part in token.split("."))
        assert b"ada" not in decoded.lower() and b"example" not in decoded
        assert f"/{ada.id}" not in url and "lovelace" not in url


def test_confirmation_links_expire_after_the_configured_days(tmp_path, config):
    site = make_site(tmp_path, web={"confirm_expiry_days": 2})
    subscribe(site, "ada@example.org")
    path = site.path(outbox.link(site.mails()[0], "confirm"))
    site.clock.advance(days=2, seconds=1)
    for response in (site.client.get(path), site.client.post(path)):
        assert response.status_code == 410 and "This link has expired" in response.text
    assert site.subscriber("ada@example.org").status is SubscriberStatus.PENDING
    site.clock.advance(hours=22)  # a day after the first email: asking again sends a fresh link that works
    subscribe(site, "ada@example.org")
    fresh = site.path(outbox.link(site.mails()[-1], "confirm"))
    assert site.client.post(fresh).status_code == 303
    assert site.subscriber("ada@example.org").status is SubscriberStatus.ACTIVE
    site.engine.dispose()


def test_links_of_an_erased_subscriber_find_nothing(site):
    add_subscriber(site.engine, "ada@example.org")
    unsubscribe = f"/unsubscribe/{site.signed(UNSUBSCRIBE, 'ada@example.org')}"
    preferences = f"/preferences/{site.signed(PREFERENCES, 'ada@example.org')}"
    erase_subscriber(site.engine, "ada@example.org")
    assert site.client.get(unsubscribe).status_code == 404
    assert site.client.get(preferences).status_code == 404
    assert "could not find this subscription" in site.client.get(preferences).text
    assert site.client.post(unsubscribe).status_code == 200  # one-click: already receives nothing


# -- preferences -------------------------------------------------------------------------------------------


def test_preferences_store_topics_and_name_and_show_them(site):
    add_summaries(site.engine, 1, category="Neuroscience")
    add_summaries(site.engine, 1, category="Climate")
    add_subscriber(site.engine, "ada@example.org", "Ada")
    path = f"/preferences/{site.signed(PREFERENCES, 'ada@example.org')}"
    page = site.client.get(path)
    assert page.status_code == 200
    assert 'value="Neuroscience"' in page.text and 'value="Climate"' in page.text
    assert "checked" not in page.text  # nothing picked: every topic

    saved = site.client.post(path, data={"name": "Ada L.", "topics": ["Climate"]})
    assert saved.status_code == 303 and saved.headers["location"] == f"{path}?saved=1"
    ada = site.subscriber("ada@example.org")
    assert (ada.name, ada.topics) == ("Ada L.", ["Climate"])
    shown = site.client.get(saved.headers["location"]).text
    assert "preferences are saved" in shown
    assert 'value="Climate" checked' in shown and 'value="Neuroscience" checked' not in shown
    assert 'value="Ada L."' in shown

    site.client.post(path, data={"name": "Ada"})  # no topic ticked: back to every topic
    assert site.subscriber("ada@example.org").topics == []


def test_preferences_refuse_an_unknown_topic_and_escape_names(site):
    add_summaries(site.engine, 1, category="Climate")
    add_subscriber(site.engine, "ada@example.org")
    path = f"/preferences/{site.signed(PREFERENCES, 'ada@example.org')}"
    refused = site.client.post(path, data={"topics": ["Climate", "Astrology"]})
    assert refused.status_code == 400 and "no topic called &#39;Astrology&#39;" in refused.text
    assert site.subscriber("ada@example.org").topics == []
    site.client.post(path, data={"name": '<script>alert("x")</script>'})
    page = site.client.get(path).text
    assert "<script>alert" not in page and "&lt;script&gt;" in page


def test_the_preferences_page_unsubscribes_too(site):
    add_subscriber(site.engine, "ada@example.org")
    page = site.client.get(f"/preferences/{site.signed(PREFERENCES, 'ada@example.org')}").text
    unsubscribe = f"/unsubscribe/{site.signed(UNSUBSCRIBE, 'ada@example.org')}"
    assert f'action="{unsubscribe}"' in page
    assert site.client.post(unsubscribe, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert "You are not receiving the newsletter (unsubscribed)" in site.client.get(
        f"/preferences/{site.signed(PREFERENCES, 'ada@example.org')}").text


def test_pages_with_personal_links_leak_no_referrer_and_are_not_cached(site):
    add_subscriber(site.engine, "ada@example.org")
    response = site.client.get(f"/preferences/{site.signed(PREFERENCES, 'ada@example.org')}")
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"


def test_topics_picked_on_the_preferences_page_decide_what_each_digest_carries(site):
    """The whole loop: preferences page → Subscriber.topics → the send renders per topic selection."""
    add_summaries(site.engine, 1, category="Neuroscience")  # Paper number 0
    add_summaries(site.engine, 1, category="Climate")  # Paper number 1
    add_summaries(site.engine, 1, category="Oceans")  # Paper number 2, kept out of this issue
    with session(site.engine) as db:
        oceans = db.exec(select(Summary).where(Summary.category == "Oceans")).one()
        oceans.excluded = True
        db.add(oceans)
        db.commit()
    for address in ("ada@example.org", "bob@example.org", "cy@example.org"):
        add_subscriber(site.engine, address)
    for address, topics in (("ada@example.org", ["Climate"]), ("bob@example.org", ["Oceans"])):
        saved = site.client.post(f"/preferences/{site.signed(PREFERENCES, address)}", data={"topics": topics})
        assert saved.status_code == 303

    prepare_issue(site.engine, site.config)
    send_unfinished(site.engine, site.config, create_backend(site.config))

    received = {str(message["To"]): outbox.text_part(message) for message in site.mails()
                if "#1" in str(message["Subject"])}
    assert set(received) == {"ada@example.org", "cy@example.org"}  # Bob's topic had nothing this week
    assert "Paper number 1" in received["ada@example.org"] and "Paper number 0" not in received["ada@example.org"]
    assert "Paper number 0" in received["cy@example.org"] and "Paper number 1" in received["cy@example.org"]
    assert "Paper number 2" not in received["cy@example.org"]
    with session(site.engine) as db:
        bob = db.exec(select(Subscriber).where(Subscriber.email == "bob@example.org")).one()
        skipped = db.exec(select(Delivery).where(Delivery.subscriber_id == bob.id)).one()
    assert skipped.status is DeliveryStatus.SKIPPED and "Oceans" in (skipped.last_error or "")


def test_the_form_cannot_undo_a_bounce_or_a_spam_complaint(site):
    for address, status in (("gone@example.org", SubscriberStatus.BOUNCED),
                            ("angry@example.org", SubscriberStatus.COMPLAINED)):
        add_subscriber(site.engine, address)
        with session(site.engine) as db:
            person = db.exec(select(Subscriber).where(Subscriber.email == address)).one()
            person.status = status
            db.add(person)
            db.commit()
        answer = subscribe(site, address)
        assert answer.status_code == 200 and "Check your inbox" in answer.text  # reveals nothing
        assert site.subscriber(address).status is status
    assert site.mails() == []


def set_status(site: Site, address: str, status: SubscriberStatus) -> None:
    with session(site.engine) as db:
        person = db.exec(select(Subscriber).where(Subscriber.email == address)).one()
        person.status = status
        db.add(person)
        db.commit()


@pytest.mark.parametrize("status", [SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED])
def test_an_unsubscribe_request_cannot_turn_a_bounce_or_complaint_into_a_way_back(site, status):
    add_subscriber(site.engine, "angry@example.org")
    set_status(site, "angry@example.org", status)
    path = f"/unsubscribe/{site.signed(UNSUBSCRIBE, 'angry@example.org')}"
    for _ in range(2):  # mail providers may post the one-click request more than once
        answer = site.client.post(path, data={"List-Unsubscribe": "One-Click"})
        assert answer.status_code == 200 and "You are unsubscribed" in answer.text
        assert "Subscribe again" not in answer.text  # the form would do nothing for them
    assert "Subscribe again" not in site.client.get(path).text
    assert site.subscriber("angry@example.org").status is status
    with session(site.engine) as db:
        [asked] = db.exec(select(Event).where(Event.kind == EventKind.UNSUBSCRIBED)).all()
    assert asked.detail == {"via": "one-click", "kept_status": status.value}

    assert "Check your inbox" in subscribe(site, "angry@example.org").text
    assert site.subscriber("angry@example.org").status is status
    assert site.mails() == []


def test_the_form_does_not_mail_an_address_whose_history_has_a_complaint_or_hard_bounce(site):
    # Rows an older version (or a hand edit) turned from complained/bounced into unsubscribed.
    for address, kind in (("angry@example.org", EventKind.COMPLAINT), ("gone@example.org", EventKind.BOUNCE_HARD)):
        person = add_subscriber(site.engine, address)
        set_status(site, address, SubscriberStatus.UNSUBSCRIBED)
        with session(site.engine) as db:
            db.add(Event(subscriber_id=person.id, kind=kind, detail={}))
            db.commit()
        assert "Check your inbox" in subscribe(site, address).text
        assert site.subscriber(address).status is SubscriberStatus.UNSUBSCRIBED
    assert site.mails() == []


def test_someone_who_unsubscribed_is_still_offered_the_form_and_can_come_back(site):
    add_subscriber(site.engine, "ada@example.org")
    answer = site.client.post(f"/unsubscribe/{site.signed(UNSUBSCRIBE, 'ada@example.org')}")
    assert "Changed your mind? Subscribe again" in answer.text
    subscribe(site, "ada@example.org")
    assert site.subscriber("ada@example.org").status is SubscriberStatus.PENDING
    [mail] = site.mails()
    assert mail["Subject"] == "Confirm your subscription to Research Weekly"


def test_the_pages_promise_the_configured_cadence(config, tmp_path):
    daily = make_site(tmp_path, schedule={"cadence": "daily", "cron": "0 8 * * *"})
    assert "Every day, the research summaries" in daily.client.get("/subscribe").text
    daily.engine.dispose()
