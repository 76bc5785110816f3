"""The editors' preview app over HTTP: views, errors in the page, live changes, test sends, access rules."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from newsletter.cli import app as cli_app
from newsletter.config import load_config
from newsletter.errors import ConfigError
from newsletter.issues import prepare_issue
from newsletter.web.preview import COOKIE, create_preview_app
from tests.helpers import add_people, add_summaries
from tests.preview_support import Project, form_token, make_project, wait_for


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "test-secret-key")
    monkeypatch.delenv("NEWSLETTER_PREVIEW_TOKEN", raising=False)
    project = make_project(tmp_path)
    yield project
    project.engine.dispose()


@pytest.fixture
def client(project: Project) -> Iterator[TestClient]:
    app = create_preview_app(project.config_file, project.engine)
    with TestClient(app, base_url="http://127.0.0.1:8025") as client:  # runs the watcher thread
        yield client


def test_page_shows_the_next_digest_its_checks_and_every_view(client: TestClient) -> None:
    page = client.get("/").text
    assert "draft of issue #1 (not prepared yet)" in page and "Research Weekly #1: Paper number 0" in page
    assert '<iframe id="email"' in page and 'width="600"' in page and "All checks pass." in page
    assert 'width="375"' in client.get("/?width=phone").text
    email_html = client.get("/email?issue=next").text
    assert all(f"Paper number {n}" in email_html for n in range(3))
    assert "PAPER NUMBER" not in email_html and "NEUROSCIENCE\n=====" in client.get("/?view=text").text
    source = client.get("/?view=source").text
    assert "Content-Transfer-Encoding: quoted-printable" in source and "List-Unsubscribe-Post" in source
    headers = re.search(r'<pre id="headers"[^>]*>(.*?)</pre>', client.get("/?view=headers").text, re.DOTALL)[1]
    assert "Subject: Research Weekly #1: Paper number 0 and 2 more" in headers and "&lt;html" not in headers


def test_past_issues_are_listed_and_shown(client: TestClient, project: Project) -> None:
    add_people(project.engine, "ada@example.org")
    prepare_issue(project.engine, load_config(project.config_file))
    page = client.get("/?issue=1").text
    assert "issue #1 (prepared " in page and "?issue=1&view=html" in page, page
    assert "there is no issue #9" in client.get("/?issue=9").text
    assert "is not an issue" in client.get("/?issue=abc").text  # status: test_a_malformed_issue_reference_...


def test_template_error_shows_file_and_line_and_the_server_keeps_going(client: TestClient, project: Project) -> None:
    version = client.app.state.preview.version
    project.edit("partials/item.mjml.j2", "{{ item.title }}</a>", "{{ item.title | nosuchfilter }}</a>")
    wait_for(lambda: client.app.state.preview.version > version)
    page = client.get("/")
    assert page.status_code == 200
    assert "partials/item.mjml.j2:" in page.text and "nosuchfilter" in page.text and 'role="alert"' in page.text
    assert "nosuchfilter" in client.get("/email").text  # the frame says it too
    version = client.app.state.preview.version
    project.edit("partials/item.mjml.j2", "{{ item.title | nosuchfilter }}</a>", "{{ item.title }}!</a>")
    wait_for(lambda: client.app.state.preview.version > version)
    assert "Paper number 0!" in client.get("/email").text


def test_a_template_config_or_summary_change_is_noticed(client: TestClient, project: Project) -> None:
    state = client.app.state.preview
    version = state.version
    project.edit("partials/header.mjml.j2", "in this issue", "in this edition")
    wait_for(lambda: state.version > version)
    version = state.version
    add_summaries(project.engine, 1)
    wait_for(lambda: state.version > version)
    assert "Paper number 3" in client.get("/email").text
    version = state.version
    project.config_file.write_text(project.config_file.read_text().replace("Research Weekly", "Science Weekly"))
    wait_for(lambda: state.version > version)
    assert "Science Weekly #1" in client.get("/").text
    project.config_file.write_text("newsletter: [not, a, mapping\n")
    wait_for(lambda: state.config_error is not None)
    assert "not valid YAML" in client.get("/").text


def test_send_a_test_through_the_configured_backend(client: TestClient, project: Project) -> None:
    token = form_token(client)
    response = client.post("/send-test", data={"to": "Editor@Example.org", "issue": "next", "csrf": token})
    assert response.status_code == 200 and "sent a test of draft of issue #1" in response.text
    [sent] = list((project.root / "outbox").iterdir())
    message = email.message_from_bytes(sent.read_bytes(), policy=email.policy.default)
    assert message["To"] == "Editor@example.org"
    assert message["Subject"] == "[Test] Research Weekly #1: Paper number 0 and 2 more"
    assert "Paper number 2" in message.get_body(("html",)).get_content()
    refused = client.post("/send-test", data={"to": "not an address", "issue": "next", "csrf": token})
    assert "is not an email address" in refused.text
    assert len(list((project.root / "outbox").iterdir())) == 1


def test_other_sites_and_foreign_hosts_are_refused(client: TestClient, project: Project) -> None:
    token = form_token(client)  # even with the right form token and cookie, which another site cannot have
    cross = client.post("/send-test", data={"to": "a@example.org", "csrf": token}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403 and not (project.root / "outbox").exists()
    assert client.get("/", headers={"Host": "evil.example"}).status_code == 403  # DNS rebinding


def test_beyond_loopback_a_token_is_required(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="needs a token"):
        create_preview_app(project.config_file, project.engine, require_token=True)
    monkeypatch.setenv("NEWSLETTER_PREVIEW_TOKEN", "a-long-enough-preview-token")
    app = create_preview_app(project.config_file, project.engine, require_token=True)
    with TestClient(app, base_url="http://192.0.2.10:8025") as client:
        assert client.get("/").status_code == 403
        assert client.get("/?token=wrong-token-of-some-length").status_code == 403
        assert client.get("/?token=a-long-enough-preview-token").status_code == 200
        assert client.get("/email").status_code == 200  # the cookie set by the first visit


def test_cli_refuses_another_address_without_a_token(project: Project) -> None:
    result = CliRunner().invoke(
        cli_app, ["preview", "--host", "0.0.0.0", "--config", str(project.config_file)],
        env={"NEWSLETTER_SECRET_KEY": "k", "NEWSLETTER_PREVIEW_TOKEN": ""},
    )  # fmt: skip
    assert result.exit_code == 2 and "needs a token" in result.output


def test_an_ipv6_loopback_host_is_answered_with_or_without_a_port(client: TestClient) -> None:
    for host in ("[::1]", "[::1]:8025", "localhost", "127.0.0.1"):
        assert client.get("/", headers={"Host": host}).status_code == 200, host
    for host in ("[::2]", "[::1]x", "127.0.0.1.evil.example", "evil.example:8025", ""):
        assert client.get("/", headers={"Host": host}).status_code == 403, host


@pytest.mark.parametrize(("ref", "reason"), [
    ("99999999999999999999", "there is no issue #99999999999999999999"),
    ("2147483648", "there is no issue #2147483648"),
    ("²", "is not an issue"),
    ("abc", "is not an issue"),
    ("-1", "is not an issue"),
])  # fmt: skip
def test_a_malformed_issue_reference_is_400_with_one_line(client: TestClient, ref: str, reason: str) -> None:
    for path in ("/", "/email"):
        response = client.get(path, params={"issue": ref})
        assert response.status_code == 400, (path, response.status_code)
        assert reason in response.text and "Traceback" not in response.text
    assert 'aria-label="Issue"' in client.get("/", params={"issue": ref}).text  # the way back is still there


def directives(policy: str) -> dict[str, str]:
    return {name: value for name, _, value in (part.strip().partition(" ") for part in policy.split(";"))}


def test_the_page_runs_only_its_own_script_and_style_and_cannot_be_framed(client: TestClient) -> None:
    page = client.get("/")
    policy = directives(page.headers["content-security-policy"])
    nonce = re.fullmatch(r"'nonce-([A-Za-z0-9_-]{16,})'", policy["script-src"])[1]
    assert policy["style-src"] == f"'nonce-{nonce}'" and policy["default-src"] == "'none'"
    assert policy["connect-src"] == "'self'" and policy["frame-src"] == "'self'"  # the event stream, the frame
    assert policy["frame-ancestors"] == "'none'" and page.headers["x-frame-options"] == "DENY"
    assert page.text.count(f'nonce="{nonce}"') == 2 and page.text.count("<script") == 1
    assert " style=" not in page.text and " on" + "load=" not in page.text
    assert client.get("/").headers["content-security-policy"] != page.headers["content-security-policy"]
    frame = client.get("/email")
    policy = directives(frame.headers["content-security-policy"])
    assert policy["frame-ancestors"] == "'self'" and frame.headers["x-frame-options"] == "SAMEORIGIN"
    assert policy["default-src"] == "'none'" and "script-src" not in policy
    assert "'unsafe-inline'" in policy["style-src"]  # an email's styles are inline by nature


def test_an_unexpected_error_is_a_500_with_the_headers_and_one_line(project: Project) -> None:
    app = create_preview_app(project.config_file, project.engine)

    def broken() -> None:
        raise RuntimeError("a bug whose details belong in the log")

    app.add_api_route("/broken", broken)
    with TestClient(app, base_url="http://127.0.0.1:8025", raise_server_exceptions=False) as client:
        response = client.get("/broken")
    assert response.status_code == 500
    assert response.text == "The server could not answer this request: an error on its side, written to its log."
    policy = directives(response.headers["content-security-policy"])
    assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
    assert response.headers["x-frame-options"] == "DENY" and response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "same-origin"


def test_wrong_tokens_lock_the_client_out_for_longer_and_longer(project: Project, monkeypatch) -> None:
    monkeypatch.setenv("NEWSLETTER_PREVIEW_TOKEN", "a-long-enough-preview-token")
    app = create_preview_app(project.config_file, project.engine, require_token=True)
    now = [1000.0]
    app.state.preview.backoff.clock = lambda: now[0]
    with TestClient(app, base_url="http://192.0.2.10:8025") as client:
        for _ in range(10):
            assert client.get("/").status_code == 403  # no token at all is not a guess
        for _ in range(6):
            assert client.get("/?token=a-wrong-token-of-some-length").status_code == 403
        locked = client.get("/?token=a-long-enough-preview-token")
        assert locked.status_code == 429 and locked.headers["retry-after"] == "1"
        assert locked.text == "too many wrong tokens from your address; try again in 1 s"
        now[0] += 1
        assert client.get("/?token=a-long-enough-preview-token").status_code == 200
        assert client.get("/email").status_code == 200  # the cookie keeps the editor in


def token_app(project: Project, monkeypatch: pytest.MonkeyPatch, token: str) -> TestClient:
    """A client of the preview bound beyond loopback with ``token`` (all its requests from one address)."""
    monkeypatch.setenv("NEWSLETTER_PREVIEW_TOKEN", token)
    app = create_preview_app(project.config_file, project.engine, require_token=True)
    return TestClient(app, base_url="http://192.0.2.10:8025")


def test_a_stale_cookie_is_cleared_and_never_counts_as_a_wrong_guess(project: Project, monkeypatch) -> None:
    with token_app(project, monkeypatch, "the-old-preview-token") as client:
        assert client.get("/?token=the-old-preview-token").status_code == 200
        old_cookie = client.cookies[COOKIE]
    # the token is rotated (the preview restarts); an open tab's event stream keeps reconnecting with the old
    # cookie, and so may anyone behind the same NAT with any cookie at all
    with token_app(project, monkeypatch, "the-new-preview-token") as client:
        for cookie in [old_cookie] * 30 + ["the-new-preview-token", "x", "0" * 64]:
            client.cookies.set(COOKIE, cookie)
            stale = client.get("/email")
            assert stale.status_code == 403 and "open it again with ?token=" in stale.text, stale.text
            cleared = SimpleCookie(stale.headers["set-cookie"])[COOKIE]
            assert cleared["max-age"] == "0" and not cleared.value  # so the tab stops sending it
        assert client.get("/?token=the-new-preview-token").status_code == 200  # never shut out
        assert client.get("/email").status_code == 200


def test_the_cookie_is_not_the_token_so_guessing_it_is_hopeless(project: Project, monkeypatch) -> None:
    with token_app(project, monkeypatch, "a-long-enough-preview-token") as client:
        client.get("/?token=a-long-enough-preview-token")
        cookie = client.cookies[COOKIE]
        assert len(cookie) >= 43 and "a-long-enough-preview-token" not in cookie  # 256 bits, not the token
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "another-secret-key")  # another site, same token: another cookie
    with token_app(project, monkeypatch, "a-long-enough-preview-token") as client:
        client.cookies.set(COOKIE, cookie)
        assert client.get("/email").status_code == 403
        fresh = client.get("/?token=a-long-enough-preview-token").headers["set-cookie"]
        assert SimpleCookie(fresh)[COOKIE].value not in ("", cookie)


def test_an_editor_with_a_cookie_is_not_shut_out_by_a_neighbours_wrong_guesses(project: Project, monkeypatch) -> None:
    with token_app(project, monkeypatch, "a-long-enough-preview-token") as editor:
        assert editor.get("/?token=a-long-enough-preview-token").status_code == 200
        neighbour = TestClient(editor.app, base_url="http://192.0.2.10:8025")  # the same address (a NAT)
        answers = [neighbour.get("/?token=a-wrong-token-of-some-length").status_code for _ in range(7)]
        assert answers == [403] * 6 + [429]
        assert editor.get("/email").status_code == 200  # the editor's session is no guess
        assert neighbour.get("/?token=a-long-enough-preview-token").status_code == 429  # a URL token still is


def test_a_short_token_in_the_environment_stops_the_preview_with_one_line(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    def started(*_args, **_kwargs):
        raise AssertionError("the preview started with a short token")

    monkeypatch.setattr(uvicorn, "run", started)
    result = CliRunner().invoke(
        cli_app, ["preview", "--host", "0.0.0.0", "--config", str(project.config_file)],
        env={"NEWSLETTER_SECRET_KEY": "k", "NEWSLETTER_PREVIEW_TOKEN": "x"},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.output.strip() == ("error: NEWSLETTER_PREVIEW_TOKEN: the preview's token must be at least 16 "
                                     "characters (it has 1); make one with: python3 -c 'import secrets; "
                                     "print(secrets.token_urlsafe(24))'")
