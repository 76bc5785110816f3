"""The editors' preview (``newsletter preview``): the next digest, or any past issue, as it would be sent.

A FastAPI app of its own, separate from the public site. ``create_preview_app(config_path)`` builds it; the
config file is read again whenever it changes. One page shows the email at desktop (600 px) or phone
(375 px) width, or its plain text, raw source or headers, with the pre-send check results and a form that
sends a test through the configured backend. A background thread watches the template folders and the
config file (watchfiles) and polls the summaries in the database; the page listens on ``/events``
(server-sent events) and reloads itself after any change. A template or config error is shown in the page
with its file and line; the server keeps running.

The preview is for editors: it binds to loopback by default. Bound to any other address it requires the
configured token (``?token=...`` once; a cookie after that). Cross-site form posts and foreign ``Host``
headers are refused so that no web page can make it send mail.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import watchfiles
from email_validator import EmailNotValidError, validate_email
from fastapi import FastAPI, Request
from fastapi.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from jinja2 import Environment
from sqlalchemy import Engine, func
from sqlmodel import col, select

from newsletter.backends import OutgoingMessage, SendStatus, create_backend
from newsletter.checks import check_sample, sample_values
from newsletter.config import Config, load_config
from newsletter.db import open_database, session
from newsletter.errors import ConfigError, NewsletterError
from newsletter.issues import IssueSample, build_sample, shown_issue
from newsletter.message import MessageTemplate, message_parts
from newsletter.models import Issue, Subscriber, Summary
from newsletter.render import template_dirs

log = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
WIDTHS = {"desktop": 600, "phone": 375}
VIEWS = ("html", "text", "source", "headers")
POLL_SECONDS = 0.25  # how often the database and the config file are looked at
COOKIE = "newsletter_preview_token"


class PreviewState:
    """What the preview shares between requests and its watcher thread: the current config and a version
    number that goes up whenever a template, the config or a summary changes."""

    def __init__(self, config_path: Path, engine: Engine | None) -> None:
        self.config_path = config_path
        self.config: Config = load_config(config_path)  # a bad file at start is the caller's error
        self.config_error: str | None = None
        self.engine = engine if engine is not None else open_database(self.config)
        self.version = 0
        self.stop = threading.Event()
        self.watching = threading.Event()  # set once the first watch is in place
        self._lock = threading.Lock()
        self._cache: dict[tuple[Any, ...], IssueSample | NewsletterError] = {}
        self._config_stamp = self._stamp()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.config_path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def changed(self, why: str) -> None:
        with self._lock:
            self.version += 1
            self._cache.clear()
        log.info("preview: %s changed, version %d", why, self.version)

    def reload_config_if_changed(self) -> bool:
        stamp = self._stamp()
        if stamp == self._config_stamp:
            return False
        self._config_stamp = stamp
        try:
            self.config = load_config(self.config_path)
            self.config_error = None
        except NewsletterError as exc:
            self.config_error = str(exc)  # shown in the page; the last good config stays in use
        return True

    def fingerprint(self) -> tuple[Any, ...]:
        """Changes whenever a summary is added, updated or attached, or an issue is prepared or sent."""
        with session(self.engine) as db:
            summaries = db.exec(
                select(func.count(col(Summary.id)), func.max(Summary.updated_at), func.count(col(Summary.issue_id)))
            ).one()
            issues = db.exec(
                select(func.count(col(Issue.id)), func.max(Issue.number), func.count(col(Issue.sent_at)))
            ).one()
        return (*summaries, *issues)

    def sample(self, ref: str) -> IssueSample:
        """The issue ``ref`` ("next" or a number) rendered and built for the sample recipient (cached per
        version). Raises NewsletterError (TemplateError with file and line) for the page to show."""
        key = (self.version, self.fingerprint(), ref)
        cached = self._cache.get(key)
        if cached is None:
            try:
                if ref != "next" and not ref.isdigit():
                    raise NewsletterError(f"{ref[:20]!r} is not an issue: choose 'next' or an issue number")
                number = None if ref == "next" else int(ref)
                cached = build_sample(self.config, *shown_issue(self.engine, self.config, number))
            except NewsletterError as exc:
                cached = exc
            self._cache[key] = cached
        if isinstance(cached, NewsletterError):
            raise cached
        return cached

    def watch(self) -> None:
        """Bump the version on every change until ``stop`` is set (the body of the watcher thread)."""
        last = self.fingerprint()
        while not self.stop.is_set():
            dirs = [str(d) for d in template_dirs(self.config)]
            try:
                for changes in watchfiles.watch(
                    *dirs, stop_event=self.stop, debounce=50, step=20,
                    rust_timeout=int(POLL_SECONDS * 1000), yield_on_timeout=True,
                ):  # fmt: skip
                    self.watching.set()  # the first yield comes after the watch is in place
                    if changes:
                        self.changed("a template")
                    if self.reload_config_if_changed():
                        self.changed("the config")
                    current = self.fingerprint()
                    if current != last:
                        last = current
                        self.changed("a summary")
                    if [str(d) for d in template_dirs(self.config)] != dirs:
                        break  # the config now names another templates folder: watch that one
            except Exception as exc:  # a folder removed, the database locked: keep watching, never die
                log.warning("preview: watching stopped (%s); starting again", exc)
                self.changed("something")
                self.stop.wait(1)


def create_preview_app(config_path: Path, engine: Engine | None = None, *, require_token: bool = False) -> FastAPI:
    """The preview app for the config file at ``config_path``; ``require_token`` when bound beyond loopback.

    Raises ConfigError for a bad config file, or when a token is required and none is configured.
    """
    state = PreviewState(config_path, engine)
    token = state.config.preview.access_token
    if require_token and not token:
        raise ConfigError(
            f"{config_path}: preview.host is not a loopback address, so the preview needs a token: set "
            f"NEWSLETTER_PREVIEW_TOKEN (16+ characters) or preview.token, or keep host 127.0.0.1"
        )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        watcher = threading.Thread(target=state.watch, name="preview-watcher", daemon=True)
        watcher.start()
        state.watching.wait(timeout=10)  # serve once edits are seen, so none made after start is missed
        try:
            yield
        finally:
            state.stop.set()
            watcher.join(timeout=5)

    app = FastAPI(title=f"{state.config.newsletter.name} preview", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.preview = state

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
        if not require_token and host not in LOOPBACK:
            return PlainTextResponse("this preview only answers to 127.0.0.1 or localhost", status_code=403)
        if request.method == "POST":
            origin = request.headers.get("origin")
            if origin and urlsplit(origin).netloc != request.headers.get("host"):
                return PlainTextResponse("cross-site request refused", status_code=403)
        if require_token and token:
            given = request.query_params.get("token") or request.cookies.get(COOKIE) or ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                return PlainTextResponse(
                    "this preview needs its token: open it once with ?token=... (preview.token or "
                    "NEWSLETTER_PREVIEW_TOKEN)", status_code=403,
                )
            response: Response = await call_next(request)
            if request.query_params.get("token"):
                response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    def page(
        issue: str = "next", view: str = "html", width: str = "desktop", notice: str = "", error: str = ""
    ) -> HTMLResponse:
        view = view if view in VIEWS else "html"
        width = width if width in WIDTHS else "desktop"
        context: dict[str, Any] = {
            "name": state.config.newsletter.name, "issue": issue, "view": view, "width": width,
            "widths": WIDTHS, "views": VIEWS, "version": state.version, "notice": notice, "form_error": error,
            "numbers": _issue_numbers(state), "problem": state.config_error, "sample": None, "findings": [],
        }  # fmt: skip
        if not state.config_error:
            try:
                sample = state.sample(issue)
                context["sample"] = sample
                context["findings"] = check_sample(state.config, sample)
                context["text"], context["source"], context["headers"] = _parts(sample)
            except NewsletterError as exc:
                context["problem"] = str(exc)
        return HTMLResponse(_PAGE.render(context))

    @app.get("/email", response_class=HTMLResponse)
    def email_html(issue: str = "next") -> HTMLResponse:
        """The HTML part alone, personalised for the sample recipient (what the page's frame shows)."""
        try:
            sample = state.sample(issue)
        except NewsletterError as exc:
            return HTMLResponse(_ERROR_FRAME.render(problem=str(exc)), status_code=200)
        html_part, _text = message_parts(sample.message)
        return HTMLResponse(html_part)

    @app.get("/events")
    async def events(request: Request) -> StreamingResponse:
        """Server-sent events: the current version at once, then each new one."""

        async def stream() -> AsyncIterator[str]:
            seen = -1
            yield "retry: 500\n\n"
            while not state.stop.is_set() and not await request.is_disconnected():
                if state.version != seen:
                    seen = state.version
                    yield f"data: {seen}\n\n"
                await asyncio.sleep(0.1)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @app.post("/send-test")
    async def send_test(request: Request) -> RedirectResponse:
        """Send the issue to one address through the configured backend, subject marked [Test]."""
        form = parse_qs((await request.body()).decode("utf-8", errors="replace"))  # a plain urlencoded form
        to, issue = form.get("to", [""])[0], form.get("issue", ["next"])[0]
        try:
            notice = await asyncio.to_thread(_send_test, state, to, issue)
            query = _query(issue, "html", "desktop", notice=notice)
        except NewsletterError as exc:
            query = _query(issue, "html", "desktop", error=str(exc))
        return RedirectResponse(f"/?{query}", status_code=303)

    return app


def _send_test(state: PreviewState, to: str, ref: str) -> str:
    try:
        address = validate_email(to.strip(), check_deliverability=False, allow_smtputf8=False).normalized
    except EmailNotValidError as exc:
        raise NewsletterError(
            f"{to.strip()[:100]!r} is not an email address ({exc}); type one like you@example.org"
        ) from None
    sample = state.sample(ref)
    config = state.config
    values = sample_values(config, Subscriber(email=address, name="", token=f"preview-{address}"))
    rendered = replace(sample.rendered, subject=f"[Test] {sample.rendered.subject}")
    message_id = f"<preview-{uuid.uuid4().hex}@{config.newsletter.sender_domain}>"
    data = MessageTemplate(config, rendered).personalise(values, message_id=message_id)
    backend = create_backend(config)
    with backend:
        envelope = config.bounces.return_path or config.newsletter.sender_address
        [result] = backend.send([OutgoingMessage(0, envelope, address, message_id, data)])
    if result.status is not SendStatus.SENT:
        raise NewsletterError(f"the {backend.describe()} backend did not send the test to {address}: {result.detail}")
    return f"sent a test of {sample.description} to {address} via {backend.describe()}"


def _issue_numbers(state: PreviewState) -> list[int]:
    with session(state.engine) as db:
        return list(db.exec(select(Issue.number).order_by(col(Issue.number).desc())))


def _parts(sample: IssueSample) -> tuple[str, str, str]:
    """(text part, raw source, headers) of the sample message, for the page's other views."""
    _html, text = message_parts(sample.message)
    source = sample.message.decode("utf-8", errors="replace").replace("\r\n", "\n")
    headers = BytesHeaderParser(policy=default_policy).parsebytes(sample.message)
    return text, source, "\n".join(f"{name}: {value}" for name, value in headers.items())


def _query(issue: str, view: str, width: str, **extra: str) -> str:
    return urlencode({"issue": issue, "view": view, "width": width, **extra})


_ENV = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)

_PAGE = _ENV.from_string("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Preview · {{ name }}</title>
<style>
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.5 system-ui, sans-serif; color: #1f2933; background: #eef1f5; }
  header { background: #fff; border-bottom: 1px solid #dfe3e8; padding: 10px 14px; display: flex; flex-wrap: wrap;
           gap: 8px 18px; align-items: center; }
  header h1 { font-size: 16px; margin: 0; }
  nav { display: flex; flex-wrap: wrap; gap: 4px; }
  nav a { padding: 3px 10px; border: 1px solid #c5ccd6; border-radius: 14px; color: #0f6b66; text-decoration: none; }
  nav a[aria-current="true"] { background: #0f6b66; color: #fff; border-color: #0f6b66; }
  main { padding: 14px; display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
  .frame { max-width: 100%; }
  iframe { display: block; border: 1px solid #c5ccd6; background: #fff; max-width: 100%; height: 80vh; }
  pre { background: #fff; border: 1px solid #c5ccd6; padding: 12px; margin: 0; max-width: 100%; overflow: auto;
        white-space: pre-wrap; word-break: break-all; }
  aside { flex: 1 1 280px; min-width: 0; }
  section { background: #fff; border: 1px solid #dfe3e8; padding: 10px 14px; margin-bottom: 12px; }
  h2 { font-size: 14px; margin: 0 0 6px; text-transform: uppercase; letter-spacing: .5px; color: #4b5563; }
  .problem { background: #fff4f4; border: 1px solid #d64545; color: #7a1010; padding: 12px 14px; white-space: pre-wrap;
             word-break: break-word; flex: 1 1 100%; }
  .notice { background: #effaf5; border: 1px solid #2f855a; padding: 8px 12px; flex: 1 1 100%; }
  .error { color: #9b1c1c; } .warning { color: #8a5a00; }
  ul { margin: 0; padding-left: 18px; } input[type=email] { width: 100%; padding: 6px; margin: 4px 0; }
  button { padding: 6px 14px; background: #0f6b66; color: #fff; border: 0; border-radius: 4px; }
</style>
</head>
<body>
<header>
  <h1>{{ name }} · preview</h1>
  <nav aria-label="Issue">
    <a href="?issue=next&view={{ view }}&width={{ width }}"
       aria-current="{{ 'true' if issue == 'next' else 'false' }}">Next digest</a>
    {% for number in numbers %}
    <a href="?issue={{ number }}&view={{ view }}&width={{ width }}"
       aria-current="{{ 'true' if issue == number|string else 'false' }}">#{{ number }}</a>
    {% endfor %}
  </nav>
  <nav aria-label="Width">
    {% for key, px in widths.items() %}
    <a href="?issue={{ issue }}&view={{ view }}&width={{ key }}" data-width="{{ key }}"
       aria-current="{{ 'true' if width == key else 'false' }}">{{ key|capitalize }} ({{ px }} px)</a>
    {% endfor %}
  </nav>
  <nav aria-label="View">
    {% for key in views %}
    <a href="?issue={{ issue }}&view={{ key }}&width={{ width }}" data-view="{{ key }}"
       aria-current="{{ 'true' if view == key else 'false' }}">{{ {'html': 'HTML', 'text': 'Plain text', 'source': 'Raw source', 'headers': 'Headers'}[key] }}</a>
    {% endfor %}
  </nav>
</header>
<main>
  {% if notice %}<p class="notice" role="status">{{ notice }}</p>{% endif %}
  {% if form_error %}<p class="problem" role="alert">{{ form_error }}</p>{% endif %}
  {% if problem %}
  <div class="problem" role="alert" id="problem">{{ problem }}</div>
  {% else %}
  <div class="frame">
    <p id="description">{{ sample.description }} · subject: <strong id="subject">{{ sample.rendered.subject }}</strong></p>
    {% if view == 'html' %}
    <iframe id="email" title="The email as HTML" src="/email?issue={{ issue }}&amp;v={{ version }}"
            width="{{ widths[width] }}" style="width: {{ widths[width] }}px"></iframe>
    {% elif view == 'text' %}<pre id="text" style="width: {{ widths[width] }}px">{{ text }}</pre>
    {% elif view == 'source' %}<pre id="source">{{ source }}</pre>
    {% else %}<pre id="headers">{{ headers }}</pre>
    {% endif %}
  </div>
  <aside>
    <section id="checks">
      <h2>Pre-send checks</h2>
      {% if findings %}
      <ul>{% for f in findings %}<li class="{{ f.severity.value }}">{{ f.severity.value }}: [{{ f.rule }}] {{ f.where }}: {{ f.message }}</li>{% endfor %}</ul>
      {% else %}<p>All checks pass.</p>{% endif %}
    </section>
    <section>
      <h2>Send a test</h2>
      <form method="post" action="/send-test">
        <label for="to">Send a test to</label>
        <input type="email" id="to" name="to" required placeholder="you@example.org">
        <input type="hidden" name="issue" value="{{ issue }}">
        <button type="submit">Send test</button>
      </form>
    </section>
  </aside>
  {% endif %}
</main>
<script>
  const shown = {{ version }};
  const events = new EventSource("/events");
  events.onopen = () => { document.documentElement.dataset.live = "yes"; };
  events.onmessage = (event) => { if (Number(event.data) !== shown) { location.reload(); } };
</script>
</body>
</html>
""")

_ERROR_FRAME = _ENV.from_string(
    '<!doctype html><html lang="en"><meta charset="utf-8"><body style="font:15px system-ui;color:#7a1010">'
    "<pre style='white-space:pre-wrap'>{{ problem }}</pre></body></html>"
)
