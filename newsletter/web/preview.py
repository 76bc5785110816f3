"""The editors' preview (``newsletter preview``): the next digest, or any past issue, as it would be sent.

A FastAPI app of its own, separate from the public site. ``create_preview_app(config_path)`` builds it; the
config file is read again whenever it changes. One page shows the email at desktop (600 px) or phone
(375 px) width, or its plain text, raw source or headers, with the pre-send check results and a form that
sends a test through the configured backend. A background thread watches the template folders and the
config file (watchfiles) and polls the summaries in the database; the page listens on ``/events``
(server-sent events) and reloads itself after any change. A template or config error is shown in the page
with its file and line; the server keeps running.

The preview is for editors: it binds to loopback by default. Bound to any other address it requires the
configured token (``?token=...`` once; a cookie after that, which holds a MAC of the token, not the
token); a client that sends wrong tokens in the URL is shut out for longer and longer
(:class:`~newsletter.web.limits.Backoff`), while a wrong cookie is only cleared. Cross-site form posts and foreign
``Host`` headers are refused so that no web page can make it send mail, and no other site may frame it.
The page runs only its own script and style (a nonce per answer, :mod:`newsletter.web.security`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import re
import secrets
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import watchfiles
from email_validator import EmailNotValidError, validate_email
from fastapi import FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
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
from newsletter.click_report import issue_clicks
from newsletter.config import Config, load_config
from newsletter.db import open_database, session
from newsletter.errors import ConfigError, NewsletterError
from newsletter.issues import IssueSample, build_sample, shown_issue
from newsletter.message import MessageTemplate, message_parts
from newsletter.models import Issue, Subscriber, Summary
from newsletter.render import template_dirs
from newsletter.tokens import secret_keys
from newsletter.web.limits import Backoff
from newsletter.web.security import (
    EMAIL_POLICY,
    PAGE_POLICY,
    SecurityHeaders,
    describe_invalid,
    framed_by_self,
    preview_policy,
    redact_logs,
)

log = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
WIDTHS = {"desktop": 600, "phone": 375}
VIEWS = ("html", "text", "source", "headers")
POLL_SECONDS = 0.25  # how often the database and the config file are looked at
COOKIE = "newsletter_preview_token"
_NEEDS_TOKEN = "this preview needs its token: open it once with ?token=... (preview.token or NEWSLETTER_PREVIEW_TOKEN)"
LARGEST_ISSUE = 2**31 - 1  # the issue number column's range on PostgreSQL


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
        self.backoff = Backoff()  # wrong tokens per client; ``clock`` replaceable in tests

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
                problem = ref_problem(ref)
                if problem:
                    raise NewsletterError(problem)
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


def ref_problem(ref: str) -> str | None:
    """Why ``ref`` (the ``issue`` parameter) cannot name an issue, or None: "next" or a number in range."""
    if ref == "next":
        return None
    if not re.fullmatch(r"[0-9]{1,40}", ref):
        return f"{ref[:20]!r} is not an issue: choose 'next' or an issue number"
    if int(ref) > LARGEST_ISSUE:
        return f"there is no issue #{ref}: issue numbers go up to {LARGEST_ISSUE:,}"
    return None


def create_preview_app(config_path: Path, engine: Engine | None = None, *, require_token: bool = False) -> FastAPI:
    """The preview app for the config file at ``config_path``; ``require_token`` when bound beyond loopback.

    Raises ConfigError for a bad config file, or when a token is required and none is configured;
    NewsletterError when the signing key the cookie is made with cannot be read or created.
    """
    redact_logs()
    state = PreviewState(config_path, engine)
    token = state.config.preview.access_token
    if require_token and not token:
        raise ConfigError(
            f"{config_path}: preview.host is not a loopback address, so the preview needs a token: set "
            f"NEWSLETTER_PREVIEW_TOKEN (16+ characters) or preview.token, or keep host 127.0.0.1"
        )
    session_value = _session_value(state.config, token) if require_token and token else ""

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

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> Response:
        return PlainTextResponse(describe_invalid(exc), status_code=422)

    async def admit(request: Request, call_next: Any) -> Response:
        """Let an editor in: by the session cookie, or by the token in the URL (which sets the cookie).

        Only a URL token is a guess at the token, so only it counts towards the back-off. The cookie holds
        a MAC of the token (:func:`_session_value`), not the token, so trying cookies guesses nothing: a
        wrong one (a tab left open over a change of token, or a neighbour behind the same NAT) is cleared and
        refused without counting, and an editor with the right one is let in even while their address is
        shut out by someone else's wrong guesses."""
        cookie = request.cookies.get(COOKIE)
        if cookie is not None and hmac.compare_digest(cookie.encode(), session_value.encode()):
            return await call_next(request)
        given = request.query_params.get("token")
        client = request.client.host if request.client else None
        if given:
            wait = state.backoff.retry_after(client)
            if wait:  # refused unread: while shut out, a right guess looks like a wrong one
                seconds = math.ceil(wait)
                refused = PlainTextResponse(f"too many wrong tokens from your address; try again in {seconds} s",
                                            status_code=429, headers={"Retry-After": str(seconds)})
            elif hmac.compare_digest(given.encode(), token.encode()):
                state.backoff.succeeded(client)
                response: Response = await call_next(request)
                response.set_cookie(COOKIE, session_value, httponly=True, samesite="strict")
                return response
            else:
                state.backoff.failed(client)
                refused = PlainTextResponse(_NEEDS_TOKEN, status_code=403)
        elif cookie is not None:
            refused = PlainTextResponse("this preview's token has changed since you opened it: open it again with "
                                        "?token=... (preview.token or NEWSLETTER_PREVIEW_TOKEN)", status_code=403)
        else:  # no token at all is not a guess
            refused = PlainTextResponse(_NEEDS_TOKEN, status_code=403)
        if cookie is not None:  # so an open tab stops sending it
            refused.delete_cookie(COOKIE, httponly=True, samesite="strict")
        return refused

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        if not require_token and _hostname(request.headers.get("host") or "") not in LOOPBACK:
            return PlainTextResponse("this preview only answers to 127.0.0.1 or localhost", status_code=403)
        if request.method == "POST":
            origin = request.headers.get("origin")
            if origin and urlsplit(origin).netloc != request.headers.get("host"):
                return PlainTextResponse("cross-site request refused", status_code=403)
        if require_token and token:
            return await admit(request, call_next)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    def page(
        issue: str = "next", view: str = "html", width: str = "desktop", notice: str = "", error: str = ""
    ) -> HTMLResponse:
        view = view if view in VIEWS else "html"
        width = width if width in WIDTHS else "desktop"
        nonce = secrets.token_urlsafe(18)
        bad_ref = ref_problem(issue)
        context: dict[str, Any] = {
            "name": state.config.newsletter.name, "issue": issue, "view": view, "width": width,
            "widths": WIDTHS, "views": VIEWS, "version": state.version, "notice": notice, "form_error": error,
            "numbers": _issue_numbers(state), "problem": state.config_error or bad_ref, "sample": None,
            "findings": [], "nonce": nonce, "clicks": None,
        }  # fmt: skip
        if not context["problem"]:
            try:
                sample = state.sample(issue)
                context["sample"] = sample
                context["findings"] = check_sample(state.config, sample)
                context["text"], context["source"], context["headers"] = _parts(sample)
                if issue != "next":  # a past issue: its clicks beside its items
                    context["clicks"] = issue_clicks(state.engine, state.config, int(issue))
            except NewsletterError as exc:
                context["problem"] = str(exc)
        return HTMLResponse(_PAGE.render(context), status_code=400 if bad_ref else 200,
                            headers={"Content-Security-Policy": preview_policy(nonce)})

    @app.get("/email", response_class=HTMLResponse)
    def email_html(issue: str = "next") -> HTMLResponse:
        """The HTML part alone, personalised for the sample recipient (what the page's frame shows)."""
        # an email's inline styles and remote images; framed by the preview page, by no one else
        headers = {"Content-Security-Policy": framed_by_self(EMAIL_POLICY)}
        try:
            sample = state.sample(issue)
        except NewsletterError as exc:
            status = 400 if ref_problem(issue) else 200
            return HTMLResponse(_ERROR_FRAME.render(problem=str(exc)), status_code=status, headers=headers)
        html_part, _text = message_parts(sample.message)
        return HTMLResponse(html_part, headers=headers)

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
    async def send_test(to: Annotated[str, Form()] = "", issue: Annotated[str, Form()] = "next") -> RedirectResponse:
        """Send the issue to one address through the configured backend, subject marked [Test]."""
        try:
            notice = await asyncio.to_thread(_send_test, state, to, issue)
            query = _query(issue, "html", "desktop", notice=notice)
        except NewsletterError as exc:
            query = _query(issue, "html", "desktop", error=str(exc))
        return RedirectResponse(f"/?{query}", status_code=303)

    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on a form post, which the
    # guard above refuses as cross-site
    app.add_middleware(SecurityHeaders, headers={"Content-Security-Policy": PAGE_POLICY,
                                                 "Referrer-Policy": "same-origin", "X-Content-Type-Options": "nosniff"})
    return app


def _session_value(config: Config, token: str) -> str:
    """What the preview's cookie holds: an HMAC-SHA256 of the token under the site's signing key.

    Nobody can make it without that key, so a cookie cannot be used to guess the token (a cookie is
    never counted as a guess); it changes when the token or the signing key does."""
    key = secret_keys(config)[-1].encode()
    return hmac.new(key, b"newsletter preview session\0" + token.encode(), hashlib.sha256).hexdigest()


def _hostname(host: str) -> str:
    """The name or address of a ``Host`` header without its port: ``[::1]:8025`` and ``[::1]`` give ``::1``."""
    if host.startswith("["):
        address, bracket, rest = host[1:].partition("]")
        return address if bracket and (not rest or re.fullmatch(r":[0-9]{1,5}", rest)) else ""
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


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
<style nonce="{{ nonce }}">
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
  {% for key, px in widths.items() %}.width-{{ key }} { width: {{ px }}px; }
  {% endfor %}
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
            width="{{ widths[width] }}" class="width-{{ width }}"></iframe>
    {% elif view == 'text' %}<pre id="text" class="width-{{ width }}">{{ text }}</pre>
    {% elif view == 'source' %}<pre id="source">{{ source }}</pre>
    {% else %}<pre id="headers">{{ headers }}</pre>
    {% endif %}
  </div>
  <aside>
    {% if clicks %}
    <section id="clicks">
      <h2>Clicks</h2>
      <p>{{ clicks.summary_line() }}</p>
      {% if clicks.counted or clicks.clicks %}
      <ul>{% for item in clicks.items %}
        <li>{{ item.position or "?" }}. {{ item.title }}: <strong>{{ item.clicks }}</strong> ({{ item.human_clicks }} likely human)</li>
      {% endfor %}</ul>
      {% endif %}
    </section>
    {% endif %}
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
<script nonce="{{ nonce }}">
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
