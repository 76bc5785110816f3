"""The editors' preview app over HTTP: views, errors in the page, live changes, test sends, access rules."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from newsletter.cli import app as cli_app
from newsletter.config import load_config
from newsletter.errors import ConfigError
from newsletter.issues import prepare_issue
from newsletter.web.preview import create_preview_app
from tests.helpers import add_people, add_summaries
from tests.preview_support import Project, make_project, wait_for


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
    headers = client.get("/?view=headers").text.split('<pre id="headers">')[1].split("</pre>")[0]
    assert "Subject: Research Weekly #1: Paper number 0 and 2 more" in headers and "&lt;html" not in headers


def test_past_issues_are_listed_and_shown(client: TestClient, project: Project) -> None:
    add_people(project.engine, "ada@example.org")
    prepare_issue(project.engine, load_config(project.config_file))
    page = client.get("/?issue=1").text
    assert "issue #1 (prepared " in page and "?issue=1&view=html" in page, page
    assert "there is no issue #9" in client.get("/?issue=9").text
    assert "is not an issue" in client.get("/?issue=abc").text


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
    response = client.post("/send-test", data={"to": "Editor@Example.org", "issue": "next"})
    assert response.status_code == 200 and "sent a test of draft of issue #1" in response.text
    [sent] = list((project.root / "outbox").iterdir())
    message = email.message_from_bytes(sent.read_bytes(), policy=email.policy.default)
    assert message["To"] == "Editor@example.org"
    assert message["Subject"] == "[Test] Research Weekly #1: Paper number 0 and 2 more"
    assert "Paper number 2" in message.get_body(("html",)).get_content()
    refused = client.post("/send-test", data={"to": "not an address", "issue": "next"})
    assert "is not an email address" in refused.text
    assert len(list((project.root / "outbox").iterdir())) == 1


def test_other_sites_and_foreign_hosts_are_refused(client: TestClient, project: Project) -> None:
    cross = client.post("/send-test", data={"to": "a@example.org"}, headers={"Origin": "https://evil.example"})
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
