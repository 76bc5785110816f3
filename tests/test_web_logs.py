"""Whoever reads the logs cannot use the links in them: token path segments and query values are redacted in
every line, read from the real log output of ``newsletter serve`` and of the preview under uvicorn."""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlmodel import select

from newsletter.config import load_config
from newsletter.db import open_database, session
from newsletter.models import Subscriber
from newsletter.tokens import CONFIRM, PREFERENCES, UNSUBSCRIBE, LinkSigner
from newsletter.web.preview import create_preview_app
from newsletter.web.security import redact
from tests.helpers import add_people
from tests.preview_support import make_project
from tests.web_support import free_port, newsletter_serve, write_config


def test_redact_hides_token_segments_and_query_values_and_keeps_the_rest() -> None:
    assert redact('127.0.0.1:5 - "GET /unsubscribe/abc.def-_1 HTTP/1.1" 200') == (
        '127.0.0.1:5 - "GET /unsubscribe/… HTTP/1.1" 200')
    assert redact("/preferences/tok.sig?welcome=1&saved=yes") == "/preferences/…?welcome=…&saved=…"
    assert redact("/news/confirm/tok/extra") == "/news/confirm/…/extra"  # behind a path prefix too
    assert redact("/%63onfirm/tok") == "/%63onfirm/…"  # percent-encoded, as routing decodes it
    assert redact("/?token=s3cret-preview-token-1") == "/?token=…"
    assert redact("/c/WzEsMiwiaCJd.sig") == "/c/…"  # a click link's token, which may name its subscriber
    assert redact("/archive/12 and /subscribe") == "/archive/12 and /subscribe"
    assert redact("GET /unsubscribe HTTP/1.1") == "GET /unsubscribe HTTP/1.1"  # no token: nothing to hide


def test_newsletter_serve_logs_no_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "log-test-secret-key")  # the server's, so the links work
    config_file = write_config(tmp_path, tracking={"clicks": True, "per_subscriber": True})
    engine = open_database(load_config(config_file))
    add_people(engine, "ada@example.org")
    with session(engine) as db:
        token = db.exec(select(Subscriber.token)).one()
    engine.dispose()
    with newsletter_serve(config_file) as served:
        signer = LinkSigner(load_config(config_file))
        secrets = [signer.sign(purpose, token) for purpose in (CONFIRM, UNSUBSCRIBE, PREFERENCES)]
        secrets.append(signer.click_url(1, 1, "https://example.org/paper", token).rsplit("/", 1)[1])
        paths = [f"/confirm/{secrets[0]}", f"/unsubscribe/{secrets[1]}", f"/preferences/{secrets[2]}?welcome=1",
                 f"/preferences/{secrets[2]}/nothing-here"]
        with httpx.Client(base_url=served.base) as client:
            client.get(f"/c/{secrets[3]}")  # a click link: first, so its line would be in the log before the rest
            for path in paths:
                client.get(path)
            client.post(f"/unsubscribe/{secrets[1]}", data={"List-Unsubscribe": "One-Click"})
            client.get("/subscribe?email=ada%40example.org")
        deadline = time.monotonic() + 10
        while served.log_text().count(" HTTP/1.1") < len(paths) + 2:  # the access log is written after the answer
            assert time.monotonic() < deadline, served.log_text()
            time.sleep(0.02)
    log = served.log_text()
    assert '"GET /confirm/… HTTP/1.1" 200' in log and '"POST /unsubscribe/… HTTP/1.1" 200' in log
    assert '"GET /preferences/…?welcome=… HTTP/1.1" 200' in log and "/subscribe?email=… " in log
    assert "/c/" not in log  # a click leaves no line: its address and time would tie it to a person
    for secret in (*secrets, token, "ada%40example.org"):
        assert secret not in log


@pytest.fixture
def uvicorn_log() -> Iterator[io.StringIO]:
    """Everything the server side (uvicorn and newsletter) logs while the test runs, at every level; not the
    test's own HTTP client, which logs the URLs it asks for. The handler sits on each logger, since an
    earlier uvicorn in this process may have stopped its loggers from propagating to the root."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    loggers = [logging.getLogger(name) for name in ("uvicorn.access", "uvicorn.error", "newsletter")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield stream
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_the_preview_under_uvicorn_logs_no_token(tmp_path: Path, monkeypatch, uvicorn_log: io.StringIO) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "test-secret-key")
    secret = "preview-token-for-the-log-test"
    monkeypatch.setenv("NEWSLETTER_PREVIEW_TOKEN", secret)
    project = make_project(tmp_path)
    app = create_preview_app(project.config_file, project.engine, require_token=True)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="debug",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the preview did not start"
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            assert client.get(f"/email?token={secret}").status_code == 200
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:  # no cookie: a guess
            assert client.get("/email?token=a-wrong-guess-of-some-length").status_code == 403
    finally:
        app.state.preview.stop.set()
        server.should_exit = True
        thread.join(timeout=10)
        project.engine.dispose()
    log = uvicorn_log.getvalue()
    assert re.search(r'"GET /email\?token=… HTTP/1.1" 200', log), log
    assert secret not in log and "a-wrong-guess" not in log
