"""The public app's promises to a security reviewer, over HTTP: the headers every answer carries (a
Content-Security-Policy, no framing by other sites), pages without inline script or style, and a 4xx with
a one-line reason for every malformed request. Chromium checks the same promises in test_web_browser.py."""

from __future__ import annotations

import html
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from newsletter.backends import create_backend
from newsletter.db import session
from newsletter.delivery import send_unfinished
from newsletter.issues import prepare_issue
from newsletter.models import Subscriber
from newsletter.tokens import CONFIRM, PREFERENCES, UNSUBSCRIBE
from newsletter.web.app import create_app
from newsletter.web.security import PAGE_POLICY
from tests.helpers import add_people, add_summaries


@pytest.fixture
def client(config, engine) -> TestClient:
    add_summaries(engine, 2, category="Climate")
    add_people(engine, "ada@example.org")
    prepare_issue(engine, config)
    send_unfinished(engine, config, create_backend(config))
    return TestClient(create_app(config, engine), follow_redirects=False)


def personal_paths(client: TestClient) -> list[str]:
    with session(client.app.state.engine) as db:
        token = db.exec(select(Subscriber.token)).one()
    signer = client.app.state.web.signer
    return [f"/{purpose}/{signer.sign(purpose, token)}" for purpose in (CONFIRM, UNSUBSCRIBE, PREFERENCES)]


def directives(policy: str) -> dict[str, str]:
    found = {}
    for part in policy.split(";"):
        name, _, value = part.strip().partition(" ")
        found[name] = value
    return found


class Inline(HTMLParser):
    """What a strict policy would block: script and style elements, style and on* attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self.found.append(f"<{tag}>")
        self.found += [f"{tag} {name}=" for name, _ in attrs if name == "style" or name.startswith("on")]


def test_every_page_has_a_strict_policy_and_cannot_be_framed(client: TestClient) -> None:
    paths = ["/", "/subscribe", "/archive", "/unsubscribe", "/preferences", "/no/such/page", *personal_paths(client)]
    for path in paths:
        response = client.get(path)
        policy = directives(response.headers["content-security-policy"])
        assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'", path
        assert policy["style-src"] == "'self'" and "script-src" not in policy, path
        assert policy["base-uri"] == "'none'" and policy["form-action"] == "'self'", path
        assert response.headers["x-frame-options"] == "DENY", path
        assert response.headers["referrer-policy"] == "no-referrer", path
        assert response.headers["x-content-type-options"] == "nosniff", path
        inline = Inline()
        inline.feed(response.text)
        assert inline.found == [], (path, inline.found)
    stylesheet = client.get("/site.css")
    assert stylesheet.status_code == 200 and stylesheet.headers["content-type"].startswith("text/css")
    assert ".trap" in stylesheet.text  # the honeypot is hidden by the stylesheet, not by an inline style


def test_an_archived_issue_keeps_its_inline_styles_but_runs_no_script(client: TestClient) -> None:
    response = client.get("/archive/1")
    assert response.status_code == 200 and "Paper number 0" in response.text
    policy = directives(response.headers["content-security-policy"])
    assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
    assert "'unsafe-inline'" in policy["style-src"] and "script-src" not in policy
    assert response.headers["x-frame-options"] == "DENY"


def test_the_api_and_the_feed_carry_the_headers_too(client: TestClient) -> None:
    for response in (client.post("/api/summaries", json={}), client.get("/archive/feed.atom")):
        assert directives(response.headers["content-security-policy"])["frame-ancestors"] == "'none'"
        assert response.headers["x-content-type-options"] == "nosniff"


def broken_route(app) -> None:
    """A page and an API route of ``app`` that fail as a bug would."""

    def broken() -> None:
        raise RuntimeError("a bug whose details belong in the log: /home/site/config.yaml")

    app.add_api_route("/broken", broken)
    app.add_api_route("/api/broken", broken)


def test_an_unexpected_error_is_a_500_with_the_headers_and_one_line(config, engine) -> None:
    app = create_app(config, engine)
    broken_route(app)
    client = TestClient(app, raise_server_exceptions=False)  # as a server does: answer, and log the error
    page, api = client.get("/broken"), client.get("/api/broken")
    assert page.status_code == api.status_code == 500
    for response in (page, api):
        assert response.headers["content-security-policy"] == PAGE_POLICY
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["cache-control"] == "no-store"
        assert "Traceback" not in response.text and "a bug" not in response.text and "config.yaml" not in response.text
    assert page.headers["content-type"].startswith("text/plain")
    assert page.text == "The server could not answer this request: an error on its side, written to its log."
    assert api.json() == {"error": page.text}


def test_the_root_is_the_subscribe_page_with_the_latest_issue(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert 'name="email"' in page.text and 'name="website"' in page.text  # the subscribe form
    assert "The latest issue" in page.text and 'href="/archive/1"' in page.text
    assert "Paper number 0" in page.text and "Paper number 1" in page.text
    assert 'content="index"' in page.text
    assert client.head("/").status_code == 200


def test_the_root_without_any_issue_is_the_subscribe_page(config, engine) -> None:
    page = TestClient(create_app(config, engine)).get("/")
    assert page.status_code == 200 and 'name="email"' in page.text and "The latest issue" not in page.text


def test_head_on_the_feed_and_the_archive(client: TestClient) -> None:
    for path in ("/archive/feed.atom", "/archive", "/archive/1"):
        head, get = client.head(path), client.get(path)
        assert head.status_code == 200, path
        assert head.headers["content-type"] == get.headers["content-type"] and head.content == b""


@pytest.mark.parametrize(("path", "status", "reason"), [
    ("/archive/abc", 422, "path parameter 'number': Input should be a valid integer"),
    ("/archive/99999999999999999999", 422, "path parameter 'number': Input should be less than or equal to"),
    ("/archive/0", 422, "path parameter 'number': Input should be greater than or equal to 1"),
    ("/no/such/page", 404, "There is nothing at this address"),
])  # fmt: skip
def test_a_malformed_request_is_a_4xx_page_with_one_line_saying_why(client: TestClient, path, status, reason) -> None:
    response = client.get(path)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")
    assert reason in html.unescape(response.text) and "Traceback" not in response.text


def test_a_wrong_method_says_which_are_allowed(client: TestClient) -> None:
    response = client.delete("/subscribe")
    assert response.status_code == 405 and "GET" in response.headers["allow"]
    assert "This address does not accept DELETE requests." in response.text
