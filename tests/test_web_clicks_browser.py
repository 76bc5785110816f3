"""A reader in a real browser (Debian's Chromium via Playwright) clicks the links of a digest as it was
delivered: the click goes through the site (uvicorn on a loopback port), lands on the summary's page on
another site, and is counted as a likely human click; the same browser headless, as scanners run it, is
counted as a click only."""

from __future__ import annotations

from datetime import timedelta

from playwright import sync_api
from sqlmodel import select

from newsletter.backends import create_backend
from newsletter.db import session
from newsletter.delivery import send_unfinished
from newsletter.issues import prepare_issue
from newsletter.models import ClickCount, Summary
from newsletter.web.app import create_app
from tests import outbox
from tests.browser import chromium, require_chromium
from tests.click_support import delivered_ago
from tests.conftest import make_config
from tests.helpers import add_people
from tests.web_support import another_site, free_port, served_in_thread

require_chromium(module=True)

SUMMARY_PAGE = "<!doctype html><title>Sleep spindles</title><h1 id=paper>The paper itself</h1>"


def test_a_reader_clicking_a_delivered_digest_lands_on_the_summary_and_is_counted(tmp_path, config, engine):
    port = free_port()
    site = make_config(tmp_path, newsletter={**config.newsletter.model_dump(), "site_url": f"http://127.0.0.1:{port}"},
                       tracking={"clicks": True})
    with another_site(SUMMARY_PAGE) as journal:
        with session(engine) as db:
            db.add(Summary(uid="spindles", title="Sleep spindles predict recall", url=f"{journal}/",
                           summary="Older adults with denser spindles remembered more.", category="Neuroscience"))
            db.commit()
        add_people(engine, "ada@example.org")
        prepare_issue(engine, site)
        send_unfinished(engine, site, create_backend(site))
        [delivered] = outbox.messages(tmp_path / "outbox")
        delivered_ago(engine, timedelta(hours=1))  # read an hour after it arrived
        with served_in_thread(create_app(site, engine), port=port), chromium() as browser:
            headless = browser.new_page()
            person = browser.new_page(user_agent=headless.evaluate("navigator.userAgent").replace(
                "HeadlessChrome", "Chrome"))  # what the same Chromium sends with a window
            for page in (person, headless):
                page.set_content(outbox.html_part(delivered))
                with page.expect_navigation():
                    page.get_by_role("link", name="Sleep spindles predict recall").click()
                sync_api.expect(page.locator("#paper")).to_have_text("The paper itself")
                assert page.url == f"{journal}/"
            person.set_content(outbox.html_part(delivered))
            with person.expect_popup() as opened:  # the item's button opens a new tab
                person.get_by_role("link", name="Read the summary").click()
            sync_api.expect(opened.value.locator("#paper")).to_have_text("The paper itself")
    # the app writes what it counted when it stops, at the latest
    with session(engine) as db:
        [count] = db.exec(select(ClickCount)).all()
    assert (count.clicks, count.human_clicks) == (3, 2)
