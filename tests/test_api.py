"""``POST /api/summaries``: bearer token, one item or a list, per-item errors with nothing stored, size limit."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlmodel import select
from typer.testing import CliRunner

from newsletter.cli import app as cli_app
from newsletter.db import session
from newsletter.demo import DEMO_SETTINGS
from newsletter.errors import ConfigError
from newsletter.ingest import SummaryIn
from newsletter.models import Summary
from newsletter.web.api import FORMATS
from newsletter.web.app import create_app
from tests.conftest import make_config

TOKEN = "s3cret-api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ITEM = {"title": "Sleep spindles predict recall", "summary": "Denser spindles, better recall.",
        "url": "https://example.org/spindles"}


@pytest.fixture
def client(tmp_path, monkeypatch, engine) -> TestClient:
    monkeypatch.setenv("NEWSLETTER_API_TOKEN", TOKEN)
    return TestClient(create_app(make_config(tmp_path, ingest={"max_bytes": 5_000}), engine))


def rows(engine) -> list[Summary]:
    with session(engine) as db:
        return list(db.exec(select(Summary).order_by(Summary.id)))


def test_the_published_schema_is_summary_in_s_own_so_the_two_cannot_drift(client) -> None:
    body = client.get("/openapi.json").json()["paths"]["/api/summaries"]["post"]["requestBody"]
    one, many = body["content"]["application/json"]["schema"]["anyOf"]
    assert many == {"type": "array", "items": one}
    model = SummaryIn.model_json_schema()
    assert set(one["properties"]) == set(model["properties"]) | {"format"}
    for name, field in model["properties"].items():  # types, limits (uid: 512 characters) and formats
        published = {key: value for key, value in field.items() if value is not None}  # FastAPI drops nulls
        assert one["properties"][name] == published, name
    assert one["properties"]["format"]["enum"] == list(FORMATS)
    assert one["additionalProperties"] is False  # as the API: an unknown field is a 400
    # a summary, or a body to take it from
    assert one["required"] == ["title"] and one["anyOf"] == [{"required": ["summary"]}, {"required": ["body"]}]


def test_one_item_is_stored_and_its_id_returned(client, engine) -> None:
    response = client.post("/api/summaries", json=ITEM, headers=AUTH)
    assert response.status_code == 201
    [row] = rows(engine)
    assert response.json() == {"ids": [row.id], "added": 1, "updated": 0, "unchanged": 0}
    assert (row.title, row.origin) == (ITEM["title"], "api")


def test_a_list_is_stored_and_resending_it_duplicates_nothing(client, engine) -> None:
    items = [ITEM, {**ITEM, "url": "https://example.org/other", "title": "Another"}]
    first = client.post("/api/summaries", json=items, headers=AUTH).json()
    again = client.post("/api/summaries", json=items, headers=AUTH).json()
    assert first["ids"] == again["ids"] and len(first["ids"]) == 2
    assert (again["added"], again["unchanged"]) == (0, 2)
    assert len(rows(engine)) == 2


def test_bad_items_give_400_with_per_item_errors_and_nothing_is_stored(client, engine) -> None:
    items = [ITEM, {"title": "No summary"}, {**ITEM, "url": "javascript:alert(1)"}, "just text"]
    response = client.post("/api/summaries", json=items, headers=AUTH)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert [e["index"] for e in errors] == [1, 2, 3]
    assert "field 'summary' is required" in errors[0]["error"]
    assert "must be an absolute http(s) URL" in errors[1]["error"]
    assert rows(engine) == []  # one request, one transaction: the good item is not stored either


def test_malformed_json_is_400(client) -> None:
    response = client.post("/api/summaries", content=b"{not json", headers=AUTH)
    assert response.status_code == 400 and "not UTF-8 JSON" in response.json()["errors"][0]["error"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}])
def test_without_a_valid_token_is_401(client, engine, headers) -> None:
    response = client.post("/api/summaries", json=ITEM, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert rows(engine) == []


def test_without_a_configured_token_every_request_is_401(tmp_path, engine, monkeypatch) -> None:
    monkeypatch.delenv("NEWSLETTER_API_TOKEN", raising=False)
    client = TestClient(create_app(make_config(tmp_path), engine))
    assert client.post("/api/summaries", json=ITEM, headers={"Authorization": "Bearer "}).status_code == 401


def test_a_token_in_the_config_file_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="NEWSLETTER_API_TOKEN"):
        make_config(tmp_path, ingest={"api_token": "oops"})


def test_a_body_over_the_limit_is_413(client, engine) -> None:
    items = [{**ITEM, "url": f"https://example.org/{i}"} for i in range(100)]
    body = json.dumps(items).encode()
    assert len(body) > 5_000
    assert client.post("/api/summaries", content=body, headers=AUTH).status_code == 413
    chunked = client.post("/api/summaries", content=iter([body[:3000], body[3000:]]), headers=AUTH)
    assert chunked.status_code == 413  # no Content-Length: counted while reading
    assert rows(engine) == []


def test_markdown_and_html_fields_are_rendered_and_sanitised(client, engine) -> None:
    items = [
        {"title": "<b>Bold</b>\u0000 title\n", "summary": "**Denser** spindles, [better](https://x.org) recall.",
         "format": "markdown", "url": "https://example.org/md"},
        {"title": "HTML item", "body": "<p>First sentence here. Second one.</p><script>alert(1)</script>",
         "format": "html", "url": "https://example.org/html"},
    ]
    assert client.post("/api/summaries", json=items, headers=AUTH).status_code == 201
    markdown, html = rows(engine)
    assert (markdown.title, markdown.summary) == ("Bold title", "Denser spindles, better recall.")
    assert (html.summary, html.body) == ("First sentence here. Second one.", "First sentence here. Second one.")


TEXT_FIELDS = ("title", "summary", "url", "source", "category", "body", "image_url", "image_alt", "subtitle",
               "article_type", "uid")


@pytest.mark.parametrize("field", TEXT_FIELDS)
def test_a_nul_in_any_field_is_cleaned_or_refused_never_a_server_error(client, engine, field) -> None:
    """PostgreSQL cannot store a NUL: every text field drops it or refuses the item with a 400 naming the field."""
    value = {"url": "https://example.org/a\x00b", "image_url": "https://example.org/a\x00.png"}.get(field, "a\x00b")
    response = client.post("/api/summaries", json={**ITEM, field: value}, headers=AUTH)
    if response.status_code == 400:
        [error] = response.json()["errors"]
        assert field in error["error"] and "control character" in error["error"], error
        assert rows(engine) == []
    else:
        assert response.status_code == 201, response.text
        [row] = rows(engine)
        texts = [v for value in row.model_dump().values() for v in (value if isinstance(value, list) else [value])]
        assert not [text for text in texts if isinstance(text, str) and "\x00" in text]


def test_an_id_with_a_control_character_is_refused_with_its_name(client, engine) -> None:
    response = client.post("/api/summaries", json={**ITEM, "uid": "paper-42\x01"}, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"index": 0, "error": "field 'uid': holds the control character U+0001; an id must be printable text"}]
    assert rows(engine) == []


@pytest.mark.parametrize("item", [
    {**ITEM, "format": "markdown", "summary": "a \ud800 b"},
    {**ITEM, "format": "markdown", "key_points": ["a \udfff b"]},
    {"title": "T", "body": "<p>First one here. a \ud800 b</p>"},
    {**ITEM, "\ud800": "an unknown key"},
], ids=["markdown summary", "markdown key point", "body", "key"])
def test_a_lone_surrogate_escape_is_a_400_not_a_500(client, engine, item) -> None:
    """JSON can escape half of a surrogate pair; that is no text, and it must not reach the Markdown
    renderer, the sanitiser or the database."""
    body = json.dumps(item)  # ensure_ascii: "\\ud800", as a client's JSON library writes it
    response = client.post("/api/summaries", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["errors"][0]["error"].startswith("the body holds a \\ud800-\\udfff escape without its pair")
    assert rows(engine) == []


def test_a_missing_summary_is_cut_from_the_cleaned_body_not_the_markup(client, engine) -> None:
    link = "https://example.org/" + "a-very-long-path/" * 25
    body = (f'<p>Short first sentence with <a href="{link}">a link</a> in it. A second sentence follows.</p>'
            "<script>alert(1)</script><p>A third, in its own paragraph.</p>")
    assert len(body) > 400  # the configured summary_length: the raw HTML alone is over it
    items = [{"title": "HTML", "body": body, "format": "html", "url": "https://example.org/h"},
             {"title": "MD", "body": "**Short** first sentence with [a link](https://example.org) in it.",
              "key_findings": ["**Denser** spindles"], "format": "markdown", "url": "https://example.org/m"}]
    assert client.post("/api/summaries", json=items, headers=AUTH).status_code == 201
    html, markdown = rows(engine)
    assert html.summary == ("Short first sentence with a link in it. A second sentence follows. "
                            "A third, in its own paragraph.")
    assert markdown.summary == "Short first sentence with a link in it."
    assert markdown.key_points == ["Denser spindles"]  # rendered as in .md files


@pytest.fixture
def roomy(tmp_path, monkeypatch, engine) -> TestClient:
    """The API with the default body limit (2 MB) and a clock the test moves."""
    monkeypatch.setenv("NEWSLETTER_API_TOKEN", TOKEN)
    app = create_app(make_config(tmp_path), engine)
    app.state.web.clock = Clock()
    return TestClient(app)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.mark.parametrize(("body", "reason"), [
    (b"[" * 100_000 + b"]" * 100_000, "nested more than 32 levels deep"),
    (b'[{"title": "a", "summary": "b", "key_points": ' + b"[" * 40 + b"]" * 40 + b"}]", "nested more than 32 levels"),
    (b'{"title": ' + b"9" * 5_000 + b', "summary": "b"}', "a number of 5000 digits"),
    (b'{"title": "a", "summary": "b", "published_at": 1' + b"0" * 30 + b"}", "a number of 31 digits"),
    (b'{"title": NaN, "summary": "b"}', "the body has NaN, which is not JSON"),
    (b'{"title": "a", "summary": Infinity}', "the body has Infinity, which is not JSON"),
])  # fmt: skip
def test_a_body_that_is_no_summary_is_400_with_one_line(roomy, engine, body, reason) -> None:
    response = roomy.post("/api/summaries", content=body, headers=AUTH)
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert reason in error["error"] and "\n" not in error["error"], error
    assert rows(engine) == []


def test_repeated_wrong_tokens_lock_the_client_out_for_longer_and_longer(roomy, engine) -> None:
    wrong = {"Authorization": "Bearer a-wrong-token-of-some-length"}
    for _ in range(20):  # no token at all is not a guess
        assert roomy.post("/api/summaries", json=ITEM).status_code == 401
    for _ in range(6):
        assert roomy.post("/api/summaries", json=ITEM, headers=wrong).status_code == 401
    locked = roomy.post("/api/summaries", json=ITEM, headers=AUTH)  # even the right token waits
    assert locked.status_code == 429 and locked.headers["retry-after"] == "1"
    assert locked.json() == {"error": "too many wrong tokens from your address; try again in 1 s"}
    other = TestClient(roomy.app, client=("203.0.113.7", 4000))
    assert other.post("/api/summaries", json=ITEM, headers=AUTH).status_code == 201  # another client is not held up
    roomy.app.state.web.clock.now += timedelta(seconds=1)
    assert roomy.post("/api/summaries", json=ITEM, headers=wrong).status_code == 401
    assert roomy.post("/api/summaries", json=ITEM, headers=AUTH).status_code == 429  # 2 s this time
    roomy.app.state.web.clock.now += timedelta(seconds=2)
    assert roomy.post("/api/summaries", json=ITEM, headers=AUTH).status_code == 201
    assert roomy.post("/api/summaries", json=ITEM, headers=wrong).status_code == 401  # counting starts again
    assert roomy.post("/api/summaries", json=ITEM, headers=AUTH).status_code == 201
    assert len(rows(engine)) == 1


@pytest.mark.parametrize("short", ["x", "fifteen-chars!!"])
def test_a_short_api_token_stops_every_command_with_one_line(tmp_path, monkeypatch, short) -> None:
    monkeypatch.setenv("NEWSLETTER_API_TOKEN", short)
    with pytest.raises(ConfigError, match=r"^NEWSLETTER_API_TOKEN: .* at least 16 characters"):
        make_config(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**DEMO_SETTINGS}), encoding="utf-8")
    result = CliRunner().invoke(cli_app, ["serve", "--config", str(tmp_path / "config.yaml")],
                                env={"NEWSLETTER_API_TOKEN": short, "NEWSLETTER_SECRET_KEY": "test-secret-key"})
    assert result.exit_code == 2
    output = result.output.strip()
    assert output.startswith("error: NEWSLETTER_API_TOKEN:") and len(output.splitlines()) == 1
