"""Property-based requests from each app's own OpenAPI schema (schemathesis) to every route of the public
app (pages, archive, ingest API) and of the preview: whatever arrives, no route answers with a server
error. Half the examples carry a valid token, a valid bearer token or an issue number that exists, so the
code behind the checks is exercised too, not only the 4xx for a bad link."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from sqlmodel import func, select

from newsletter.backends import create_backend
from newsletter.db import session
from newsletter.delivery import send_unfinished
from newsletter.issues import prepare_issue
from newsletter.models import Subscriber, SubscriberStatus
from newsletter.tokens import CONFIRM, PREFERENCES, UNSUBSCRIBE
from newsletter.web.app import create_app
from newsletter.web.preview import DESK_COOKIE, create_preview_app, form_token
from tests.conftest import make_config
from tests.helpers import add_people, add_summaries
from tests.preview_support import make_project

PURPOSES = {"/confirm/{token}": CONFIRM, "/unsubscribe/{token}": UNSUBSCRIBE, "/preferences/{token}": PREFERENCES}
API_TOKEN = "schema-test-api-token"


def no_server_error(app: Any, examples: int, make_real: Callable[[Any, Any], None], base_url: str) -> set[str]:
    """Run ``examples`` generated requests against every operation in ``app``'s schema (sent in-process to
    ``base_url``), ``make_real(case, data)`` turning half of them into requests that pass the app's checks
    (drawing more values from hypothesis' ``data`` where it likes); returns the operations as
    "METHOD /path". Each operation must have answered at least once past the access checks (not 401, 403
    or 429), or the run proved nothing about the code behind them."""
    schema = schemathesis.openapi.from_dict(app.openapi())
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        statuses = answers(operation, app, examples, make_real, base_url)
        assert statuses - {401, 403, 429}, (operation.method, operation.path, statuses)
    return {f"{op.method.upper()} {op.path}" for op in operations}


def answers(operation: Any, app: Any, examples: int, make_real: Callable[[Any, Any], None], base_url: str) -> set[int]:
    """The status codes ``operation`` answered ``examples`` generated requests with; fails on a 5xx."""
    statuses: set[int] = set()

    @given(case=operation.as_strategy(), real=st.booleans(), data=st.data())
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def answers_without_a_server_error(case, real, data):
        if real:
            make_real(case, data)
        statuses.add(case.call_and_validate(checks=[not_a_server_error], app=app, base_url=base_url).status_code)

    answers_without_a_server_error()
    return statuses


def test_no_route_of_the_public_app_answers_with_a_server_error(config, engine, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="newsletter.web")
    add_summaries(engine, 2, category="Climate")
    add_people(engine, "ada@example.org")
    prepare_issue(engine, config)
    send_unfinished(engine, config, create_backend(config))  # so /archive/1 and the feed have content
    with session(engine) as db:
        token = db.exec(select(Subscriber.token)).one()
    monkeypatch.setenv("NEWSLETTER_API_TOKEN", API_TOKEN)
    app = create_app(make_config(config.base_dir, web={"subscribe_limit_per_ip": 10_000}), engine)

    def make_real(case, data):
        if case.path == "/subscribe" and case.method.upper() == "POST":  # an address the work after the answer takes
            address = data.draw(st.emails() | st.sampled_from(["ada@example.org", "new@example.org"]))
            case.body = {**(case.body if isinstance(case.body, dict) else {}), "email": address, "website": ""}
        if case.path in PURPOSES:
            case.path_parameters["token"] = app.state.web.signer.sign(PURPOSES[case.path], token)
        if case.path == "/archive/{number}":
            case.path_parameters["number"] = 1
        if case.path == "/api/summaries":
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {API_TOKEN}"}

    tried = no_server_error(app, 25, make_real, base_url="https://news.example.org")
    assert tried >= {"GET /", "HEAD /", "GET /subscribe", "POST /subscribe", "GET /archive", "GET /archive/{number}",
                     "GET /archive/feed.atom", "HEAD /archive/feed.atom", "POST /api/summaries",
                     "GET /unsubscribe", "GET /preferences",
                     *(f"{method} {path}" for path in PURPOSES for method in ("GET", "POST"))}
    # POST /subscribe answers before its real work, so a 5xx cannot show a failure there: the log does
    with session(engine) as db:
        assert db.exec(select(func.count()).where(Subscriber.status == SubscriberStatus.PENDING)).one() > 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_no_route_of_the_preview_answers_with_a_server_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "test-secret-key")
    project = make_project(tmp_path)
    app = create_preview_app(project.config_file, project.engine)
    state = app.state.preview
    add_people(project.engine, "ada@example.org")
    prepare_issue(project.engine, make_config(tmp_path))  # issue 1 exists
    add_summaries(project.engine, 2)  # and the next issue has items
    session_id = "schema-test-desk-session"

    def make_real(case, data):
        # an issue that exists, or any number at all (beyond the largest an issue can have, too)
        number = data.draw(st.sampled_from(["1", "next"]) | st.integers(-5, 10**30).map(str))
        if case.path in ("/", "/email"):
            case.query = {**(case.query or {}), "issue": number}
        if case.path == "/progress":
            case.query = {**(case.query or {}), "issue": data.draw(st.sampled_from(["1", "2"]))}
        if case.method.upper() == "POST":  # past the form token, as the desk's own page posts
            case.cookies = {**(case.cookies or {}), DESK_COOKIE: session_id}
            body = case.body if isinstance(case.body, dict) else {}
            case.body = {**body, "csrf": form_token(state.form_key, session_id)}
            if case.path == "/send-test":
                case.body["issue"] = number
            elif case.path in ("/send", "/resume"):  # never a version or an issue that would really send
                case.body["version"] = str(data.draw(st.integers(1000, 2000)))
                case.body["number"] = str(data.draw(st.integers(2, 5) if case.path == "/send" else st.integers(3, 9)))
            else:
                case.body.setdefault("number", "2")

    state.stop.set()  # the event stream ends after its first event, instead of waiting for changes
    try:
        tried = no_server_error(app, 20, make_real, base_url="http://127.0.0.1:8025")
    finally:
        project.engine.dispose()
    assert tried == {"GET /", "GET /email", "GET /events", "GET /progress", "POST /send-test", "POST /send",
                     "POST /pause", "POST /resume", *(f"POST /desk/{change}" for change in (
                         "move", "leave-out", "bring-back", "lead", "unpin", "note", "subject", "undo"))}
