"""A person in a real browser (Chromium via Playwright) against the real server (uvicorn on a free loopback
port): subscribe, open the confirmation email the file backend wrote, confirm, pick topics, unsubscribe,
all under the pages' Content-Security-Policy, which Chromium enforces; and another site framing the pages
gets nothing."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from playwright import sync_api
from sqlmodel import select

from newsletter.db import open_database, session
from newsletter.models import Subscriber, SubscriberStatus
from newsletter.tokens import PREFERENCES, UNSUBSCRIBE, LinkSigner
from newsletter.web.app import create_app
from tests import outbox
from tests.browser import chromium, require_chromium
from tests.conftest import make_config
from tests.helpers import add_people, add_summaries
from tests.web_support import REFUSED, frame_from_another_site

require_chromium(module=True)


@pytest.fixture
def server(tmp_path: Path, config) -> Iterator[tuple[str, object, Path]]:
    """The app served by uvicorn on a socket bound to 127.0.0.1:0; yields (base URL, engine, outbox)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    site = make_config(tmp_path, newsletter={**config.newsletter.model_dump(), "site_url": base})
    engine = open_database(site)
    server = uvicorn.Server(uvicorn.Config(create_app(site, engine), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:  # uvicorn offers no event to wait on; this only waits for start-up
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield base, engine, tmp_path / "outbox"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        engine.dispose()


def test_subscribe_confirm_choose_topics_and_unsubscribe_in_a_browser(server):
    base, engine, mail_folder = server
    add_summaries(engine, 1, category="Neuroscience")
    add_summaries(engine, 1, category="Climate")
    with chromium() as browser:
        page = browser.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        page.goto(f"{base}/subscribe")
        # styled by the stylesheet the policy allows: the honeypot hidden, the button in the accent colour
        sync_api.expect(page.locator("#website")).not_to_be_in_viewport()
        sync_api.expect(page.get_by_role("button", name="Subscribe")).to_have_css(
            "background-color", "rgb(15, 107, 102)")
        page.get_by_label("Email address").fill("ada@example.org")
        page.get_by_label("Name").fill("Ada")
        page.get_by_role("button", name="Subscribe").click()
        sync_api.expect(page.get_by_role("heading")).to_have_text("Check your inbox")

        [confirmation] = outbox.wait_for_messages(mail_folder, 1)  # sent after the answer
        page.goto(outbox.link(confirmation, "confirm"))
        page.get_by_role("button", name="Confirm my subscription").click()
        sync_api.expect(page.get_by_role("heading")).to_have_text("Your preferences")
        sync_api.expect(page.get_by_role("status")).to_contain_text("Your subscription is confirmed")
        assert outbox.wait_for_messages(mail_folder, 2)[-1]["Subject"] == "Welcome to Research Weekly"

        page.get_by_label("Climate").check()
        page.get_by_label("Name").fill("Ada Lovelace")
        page.get_by_role("button", name="Save preferences").click()
        sync_api.expect(page.get_by_role("status")).to_contain_text("Your preferences are saved")
        sync_api.expect(page.get_by_label("Climate")).to_be_checked()
        sync_api.expect(page.get_by_label("Neuroscience")).not_to_be_checked()

        page.get_by_role("button", name="Unsubscribe").click()
        sync_api.expect(page.get_by_role("heading")).to_have_text("You are unsubscribed")
        page.goto(base)
        sync_api.expect(page.get_by_role("heading", name="Subscribe")).to_be_visible()
        assert [line for line in console if "Content Security Policy" in line] == []
    with session(engine) as db:
        ada = db.exec(select(Subscriber)).one()
    assert (ada.status, ada.name, ada.topics) == (SubscriberStatus.UNSUBSCRIBED, "Ada Lovelace", ["Climate"])
    assert ada.consent_ip == "127.0.0.1" and "Chrome" in (ada.consent_user_agent or "")


def test_another_site_cannot_frame_the_pages(server):
    base, engine, _mail = server
    add_summaries(engine, 1)
    add_people(engine, "ada@example.org")
    with session(engine) as db:
        token = db.exec(select(Subscriber.token)).one()
    signer = LinkSigner(make_config(Path(".")))  # the server's key: NEWSLETTER_SECRET_KEY
    urls = [f"{base}/", f"{base}/unsubscribe/{signer.sign(UNSUBSCRIBE, token)}",
            f"{base}/preferences/{signer.sign(PREFERENCES, token)}"]
    with chromium() as browser:
        assert frame_from_another_site(browser, urls) == [REFUSED] * len(urls) + ["<other site>/own"]
