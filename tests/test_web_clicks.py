"""Click links (``/c/<token>``) over real HTTP: each item link of both parts leads through the site to its
item, a GET is counted and a HEAD is not, and no token whatever leads anywhere the issue did not link to."""

from __future__ import annotations

import re
import string
from datetime import timedelta
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from itsdangerous import URLSafeSerializer
from sqlalchemy import delete, update
from sqlmodel import col, select

from newsletter.db import session
from newsletter.issues import prepare_issue
from newsletter.models import ClickCount, Issue, Summary
from newsletter.tokens import CLICK, MAX_CLICK_TOKEN, UNSUBSCRIBE, LinkSigner, url_hash
from newsletter.web.app import create_app
from tests.click_support import (
    BROWSER,
    click_links,
    counts,
    delivered_ago,
    html_links,
    item_urls,
    path,
    send_issue,
    text_links,
    tracked,
)
from tests.helpers import add_summaries
from tests.preview_support import wait_for
from tests.web_support import served_in_thread


@pytest.fixture
def site(tmp_path, config):
    """Click counting on, the test's database (config's), the signing key of the config fixture."""
    return tracked(tmp_path)


def test_every_item_link_of_both_parts_leads_through_the_site_to_its_item(site, engine):
    [message] = send_issue(site, engine, "ada@example.org")
    items = item_urls(engine, 1)
    # both parts: the title and the button of each item in the HTML, its numbered reference in the text
    assert len([link for link in html_links(message) if "/c/" in link]) == 2 * len(items)
    assert len([link for link in text_links(message) if "/c/" in link]) == len(items)
    assert not items & set(html_links(message) + text_links(message))  # no item is linked to directly
    with served_in_thread(create_app(site, engine)) as base:
        for link in click_links(message):
            assert link.startswith("https://news.example.org/c/")
            answer = httpx.get(base + path(link), headers={"User-Agent": BROWSER})
            assert answer.status_code == 302
            assert answer.headers["Location"] in items
            assert answer.headers["Referrer-Policy"] == "no-referrer"  # the item's site is not told where from
            assert answer.headers["Cache-Control"] == "no-store"  # so every click reaches us
        landed = {httpx.get(base + path(link)).headers["Location"] for link in click_links(message)}
        archived = httpx.get(f"{base}/archive/1").text  # reading the issue on the website is not counted
    assert landed == items
    assert items <= set(re.findall(r'href="([^"]+)"', archived)) and "/c/" not in archived
    # the links that are not items' are as before
    assert "https://news.example.org/archive/1" in html_links(message)
    assert any("/unsubscribe/" in link for link in html_links(message))


def test_without_tracking_the_items_are_linked_directly(config, engine):
    [message] = send_issue(config, engine, "ada@example.org")
    assert click_links(message) == []
    assert item_urls(engine, 1) <= set(html_links(message)) & set(text_links(message))


def test_links_right_after_delivery_from_one_network_count_as_clicks_not_as_human(site, engine):
    """What a mail gateway does: every link of the message opened the moment it arrives, from its network."""
    [message] = send_issue(site, engine, "ada@example.org")
    links = click_links(message)
    with served_in_thread(create_app(site, engine)) as base:
        for link in links:
            assert httpx.get(base + path(link), headers={"User-Agent": BROWSER}).status_code == 302
        # written by the app's own background writer, once the burst window has passed
        wait_for(lambda: sum(clicks for clicks, _human in counts(engine).values()) == len(links), timeout=90)
    assert set(counts(engine).values()) == {(3, 0)}  # title, button, text reference; none likely human


def test_a_click_long_after_delivery_is_human_a_scanner_agent_is_not_and_head_is_not_counted(site, engine):
    [message] = send_issue(site, engine, "ada@example.org")
    delivered_ago(engine, timedelta(hours=2))
    first, second = sorted(item_urls(engine, 1))
    links = {url: [link for link in click_links(message) if _target(site, engine, link) == url]
             for url in (first, second)}
    with served_in_thread(create_app(site, engine)) as base:
        httpx.get(base + path(links[first][0]), headers={"User-Agent": BROWSER})
        httpx.get(base + path(links[first][1]), headers={"User-Agent": BROWSER})  # the button, from another app
        httpx.get(base + path(links[second][0]), headers={"User-Agent": "Mozilla/5.0 (compatible; GoogleImageProxy)"})
        httpx.get(base + path(links[second][0]), headers={"User-Agent": ""})
        head = httpx.head(base + path(links[second][0]), headers={"User-Agent": BROWSER})
        assert head.status_code == 302 and head.headers["Location"] == second
        wait_for(lambda: counts(engine).get(second) == (2, 0), timeout=90)
    assert counts(engine) == {first: (2, 2), second: (2, 0)}


def _target(config, engine, link: str) -> str:
    token = LinkSigner(config).read_click(path(link).rsplit("/", 1)[1])
    with session(engine) as db:
        return db.get(Summary, token.item).url  # type: ignore[union-attr]


def _two_issues(config, engine) -> dict[int, set[str]]:
    send_issue(config, engine, "ada@example.org")
    send_issue(config, engine)
    return {number: item_urls(engine, number) for number in (1, 2)}


def test_tampered_forged_replayed_and_oversized_tokens_lead_nowhere(site, engine):
    urls = _two_issues(site, engine)
    signer = LinkSigner(site)
    with session(engine) as db:
        [item] = [s.id for s in db.exec(select(Summary).where(Summary.url == sorted(urls[1])[0]))]
    good = signer.click_url(1, item, sorted(urls[1])[0]).rsplit("/", 1)[1]
    payload, signature = good.split(".")
    forged_key = URLSafeSerializer("not-our-key", salt=CLICK).dumps([1, item, url_hash("https://evil.example/")])
    other_issue = sorted(urls[2])[0]
    attempts = {
        "a changed signature": f"{payload}.{signature[:-2]}{'AB' if signature[-2:] != 'AB' else 'CD'}",
        "a changed payload": f"{URLSafeSerializer('k').dumps([2, item, url_hash(other_issue)]).split('.')[0]}."
                             f"{signature}",
        "another key": forged_key,
        "another purpose": signer.sign(UNSUBSCRIBE, "x"),
        # signed with our own key, as if by a bug: issue 1, but the URL of an item of issue 2
        "a URL of another issue": signer.click_url(1, item, other_issue).rsplit("/", 1)[1],
        "a URL no issue had": signer.click_url(1, item, "https://evil.example/").rsplit("/", 1)[1],
        "an issue that does not exist": signer.click_url(9, item, sorted(urls[1])[0]).rsplit("/", 1)[1],
        "an oversized token": "A" * (MAX_CLICK_TOKEN + 1),
        "a huge token": good + "A" * 20_000,
    }
    client = TestClient(create_app(site, engine), base_url="https://news.example.org")
    assert client.get(f"/c/{good}", follow_redirects=False).headers["Location"] == sorted(urls[1])[0]
    for why, token in attempts.items():
        answer = client.get(f"/c/{quote(token, safe='')}", follow_redirects=False)
        assert answer.status_code == 404, why
        assert "location" not in answer.headers, why
        assert "This link" in answer.text, why  # a page a person can read, with the way to the archive
        assert 'href="/archive"' in answer.text, why


URL_SAFE = string.ascii_letters + string.digits + "-_."


def test_no_token_leads_anywhere_outside_the_issue_it_names(site, engine):
    urls = _two_issues(site, engine)
    items = [item for item, _url in _items(engine)]
    signer = LinkSigner(site)
    client = TestClient(create_app(site, engine), base_url="https://news.example.org")
    every_url = sorted(urls[1] | urls[2]) + ["https://evil.example/", "javascript:alert(1)", "//evil.example"]
    hashes = st.sampled_from([url_hash(url) for url in every_url]) | st.text(URL_SAFE, min_size=16, max_size=16)
    ids = st.sampled_from(items) | st.integers(-2, 2**64)
    signed = st.builds(lambda *parts: signer.sign(CLICK, list(parts)), st.sampled_from([1, 2, 3]) | ids, ids, hashes)
    signed_odd = st.builds(
        lambda payload: signer.sign(CLICK, payload),
        st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=5), max_leaves=8),
    )
    # any text, but "." and "..", which the client resolves away from /c/ before asking
    anything = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=600).filter(
        lambda token: token not in (".", ".."))

    @given(token=signed | signed_odd | anything, method=st.sampled_from(["GET", "HEAD"]))
    @settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def only_the_issues_own_urls(token, method):
        answer = client.request(method, f"/c/{quote(token, safe='')}", follow_redirects=False)
        if not answer.is_redirect:
            assert answer.status_code in (404, 422), answer.status_code
        elif not answer.headers["Location"].startswith("https://news.example.org/"):  # not our own site's
            assert answer.status_code == 302  # (a 307 for "../" is the router dropping a trailing slash)
            assert answer.headers["Location"] in urls[signer.read_click(token).issue]

    only_the_issues_own_urls()


def test_links_keep_working_after_the_summaries_are_deleted(site, engine):
    [message] = send_issue(site, engine, "ada@example.org")
    before = {link: _location(site, engine, link) for link in click_links(message)}
    with session(engine) as db:
        db.execute(delete(Summary))
        db.commit()
    assert db_count(engine, Summary) == 0
    after = {link: _location(site, engine, link) for link in before}  # a new app: nothing remembered
    assert after == before and set(after.values()) == {f"https://example.org/papers/{n}" for n in (0, 1)}


def db_count(engine, model) -> int:
    with session(engine) as db:
        return len(db.exec(select(model)).all())


def _location(config, engine, link: str) -> str:
    answer = TestClient(create_app(config, engine)).get(path(link), follow_redirects=False)
    assert answer.status_code == 302, answer.text
    return answer.headers["Location"]


def test_with_tracking_turned_off_old_links_still_work_and_are_not_counted(site, engine, config):
    [message] = send_issue(site, engine, "ada@example.org")
    delivered_ago(engine, timedelta(hours=1))
    with TestClient(create_app(config, engine)) as client:  # config: tracking off
        for link in click_links(message):
            assert client.get(path(link), headers={"User-Agent": BROWSER}, follow_redirects=False).status_code == 302
    assert db_count(engine, ClickCount) == 0


def test_clicks_on_an_issue_nobody_received_yet_are_not_counted(site, engine):
    """A prepared issue's links (an editor trying them in the preview) lead to its items, but count for nothing."""
    send_issue(site, engine, "ada@example.org")  # issue 1: sent
    add_summaries(engine, 1)
    prepare_issue(engine, site)  # issue 2: prepared, not sent
    delivered_ago(engine, timedelta(hours=1))
    signer = LinkSigner(site)
    links = [signer.click_url(number, item, url) for number, item, url in _items_by_issue(engine)]
    with TestClient(create_app(site, engine)) as client:  # its lifespan writes the clicks at the end
        for link in links:
            assert client.get(path(link), headers={"User-Agent": BROWSER}, follow_redirects=False).status_code == 302
    assert counts(engine) == {url: (1, 1) for url in item_urls(engine, 1)}
    assert len(links) == 3


def _items(engine) -> list[tuple[int, str]]:
    return [(item, url) for _number, item, url in _items_by_issue(engine)]


def _items_by_issue(engine) -> list[tuple[int, int, str]]:
    """(issue number, summary id, URL) of every summary in an issue."""
    with session(engine) as db:
        rows = db.exec(select(Issue.number, Summary.id, Summary.url).join(Issue, col(Issue.id) == Summary.issue_id)
                       .order_by(col(Summary.id))).all()
    return [(number, item, url) for number, item, url in rows]  # type: ignore[misc]
