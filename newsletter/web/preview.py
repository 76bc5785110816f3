"""The editors' preview (``newsletter preview``): the editor's desk, where the next digest is shaped, checked
and sent, and any past issue is shown as it went out.

A FastAPI app of its own, separate from the public site. ``create_preview_app(config_path)`` builds it; the
config file is read again whenever it changes. The page and the routes that change or send the next issue
are :mod:`newsletter.web.desk`; this module is the app around them: what the requests share
(:class:`PreviewState`), who may come in, the email frame, the change events and the test send. A
background thread watches the template folders and the config file (watchfiles) and polls the database;
pages listen on ``/events`` (server-sent events) and bring themselves up to date after any change. A
template or config error is shown in the page with its file and line; the server keeps running.

The preview is for editors: it binds to loopback by default. Bound to any other address it requires the
configured token (``?token=...`` once; a cookie after that, which holds a MAC of the token, not the
token); a client that sends wrong tokens in the URL is shut out for longer and longer
(:class:`~newsletter.web.limits.Backoff`), while a wrong cookie is only cleared. Foreign ``Host`` headers
are refused (DNS rebinding), and so is every request that changes something (every ``POST``) when it comes
from another site: by its ``Origin`` (or ``Sec-Fetch-Site``) header, and by a form token bound to the
browser's desk session cookie, which another site can neither read nor make (:func:`form_token`). No other
site may frame the preview; the page runs only its own script and style (a nonce per answer,
:mod:`newsletter.web.security`).
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
from fastapi import Depends, FastAPI, Form, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from jinja2 import Environment
from sqlalchemy import Engine, Integer, cast, func
from sqlmodel import col, select

from newsletter.backends import OutgoingMessage, SendStatus, create_backend
from newsletter.config import Config, load_config
from newsletter.db import open_database, session
from newsletter.delivery import send_issue
from newsletter.errors import ConfigError, NewsletterError
from newsletter.issues import IssueSample, build_sample, shown_issue
from newsletter.issues.lookup import NOT_DRAFT
from newsletter.message import MessageTemplate, message_parts, recipient_values
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
    redact_logs,
)

log = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
WIDTHS = {"desktop": 600, "phone": 375}
VIEWS = ("html", "text", "source", "headers")
POLL_SECONDS = 0.25  # how often the database and the config file are looked at
COOKIE = "newsletter_preview_token"
DESK_COOKIE = "newsletter_desk"  # a random id per browser: the form token is made from it
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_STALE_FORM = "this page's form is out of date (or came from another site); reload the page and try again"
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
        self.seen_fingerprint: tuple[Any, ...] | None = None  # the database as the version last reflected it
        self.sends: dict[int, SendJob] = {}  # issue number -> its send from the desk
        self.form_key = b""  # set by create_preview_app: signs the form tokens

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

    def database_changed(self, why: str) -> None:
        """A change made through the desk: pages show it at once, and the watcher does not count it again."""
        self.seen_fingerprint = self.fingerprint()
        self.changed(why)

    def start_send(self, number: int) -> None:
        """Send issue ``number`` in a background thread, as ``digest send --issue N`` does (once at a time)."""
        with self._lock:
            job = self.sends.get(number)
            if job is not None and job.thread.is_alive():
                return
            job = SendJob(number, threading.Event())
            job.thread = threading.Thread(target=job.run, args=(self,), name=f"desk-send-{number}", daemon=True)
            self.sends[number] = job
        job.thread.start()

    def stop_sends(self, timeout: float = 30) -> None:
        """Ask every send to finish its messages in flight, and wait for them (at shutdown)."""
        for job in list(self.sends.values()):
            job.stop.set()
        for job in list(self.sends.values()):
            job.thread.join(timeout)

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
        """Changes whenever a summary is added, updated, attached or left out, an issue is prepared or sent or
        changes state, or an editor makes a choice for the next issue (its version)."""
        with session(self.engine) as db:
            summaries = db.exec(
                select(func.count(col(Summary.id)), func.max(Summary.updated_at), func.count(col(Summary.issue_id)),
                       func.sum(cast(col(Summary.excluded), Integer)))
            ).one()
            issues = db.exec(
                select(func.count(col(Issue.id)), func.max(Issue.number), func.count(col(Issue.sent_at)),
                       func.sum(Issue.version))
            ).one()
            states = sorted(db.exec(select(Issue.status, func.count()).group_by(Issue.status)).all())
        return (*summaries, *issues, *states)

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
        self.seen_fingerprint = self.fingerprint()
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
                    if current != self.seen_fingerprint:
                        self.seen_fingerprint = current
                        self.changed("the database")
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


class SendJob:
    """A send started from the desk: :func:`newsletter.delivery.send_issue` in a thread of its own, which
    ``stop`` (set at shutdown) ends after the messages in flight. ``error`` is why it stopped, if it failed."""

    def __init__(self, number: int, stop: threading.Event) -> None:
        self.number = number
        self.stop = stop
        self.error: str | None = None
        self.thread = threading.Thread()

    def run(self, state: PreviewState) -> None:
        try:
            report = send_issue(state.engine, state.config, create_backend(state.config), self.number, stop=self.stop)
            log.info("desk: %s", report.summary_line())
        except NewsletterError as exc:  # the server cannot be reached, the issue was cancelled meanwhile, ...
            self.error = str(exc)
            log.warning("desk: issue #%d: %s", self.number, exc)
        except Exception:  # a bug: logged with its traceback, shown as one line
            self.error = "the send stopped on an unexpected error, written to the preview's log"
            log.exception("desk: sending issue #%d failed", self.number)
        finally:
            state.database_changed(f"issue #{self.number}")

    @property
    def running(self) -> bool:
        return self.thread.is_alive()


def form_token(key: bytes, desk_session: str) -> str:
    """The token every form of the desk carries: an HMAC of the browser's desk session id (a random cookie,
    SameSite=Strict, HttpOnly) under the signing key. Another site can read neither the cookie nor the page,
    so it cannot make a request that carries both (see :func:`require_form_token`)."""
    return hmac.new(key, b"newsletter desk form\0" + desk_session.encode(), hashlib.sha256).hexdigest()


async def require_form_token(request: Request, form_token_: Annotated[str, Form(alias="csrf")] = "") -> None:
    """Refuse a state-changing request (403) whose form token does not match the browser's desk session."""
    state: PreviewState = request.app.state.preview
    desk_session = request.cookies.get(DESK_COOKIE, "")
    expected = form_token(state.form_key, desk_session) if desk_session else ""
    if not expected or not hmac.compare_digest(form_token_.encode(), expected.encode()):
        raise HTTPException(403, _STALE_FORM)


FormChecked = [Depends(require_form_token)]


def create_preview_app(config_path: Path, engine: Engine | None = None, *, require_token: bool = False) -> FastAPI:
    """The preview app for the config file at ``config_path``; ``require_token`` when bound beyond loopback.

    Raises ConfigError for a bad config file, or when a token is required and none is configured;
    NewsletterError when the signing key the cookie is made with cannot be read or created.
    """
    from newsletter.web import desk  # the page and the routes that change the next issue or send it

    redact_logs()
    state = PreviewState(config_path, engine)
    token = state.config.preview.access_token
    if require_token and not token:
        raise ConfigError(
            f"{config_path}: preview.host is not a loopback address, so the preview needs a token: set "
            f"NEWSLETTER_PREVIEW_TOKEN (16+ characters) or preview.token, or keep host 127.0.0.1"
        )
    signing_key = secret_keys(state.config)[-1]
    state.form_key = hashlib.sha256(b"newsletter desk forms\0" + signing_key.encode()).digest()
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
            await asyncio.to_thread(state.stop_sends)  # the messages in flight are recorded, then it ends
            watcher.join(timeout=5)

    app = FastAPI(title=f"{state.config.newsletter.name} preview", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.preview = state

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> Response:
        return PlainTextResponse(describe_invalid(exc), status_code=422)

    @app.exception_handler(HTTPException)
    async def refused(_request: Request, exc: HTTPException) -> Response:
        return PlainTextResponse(str(exc.detail), status_code=exc.status_code, headers=exc.headers)

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
        if request.method not in SAFE_METHODS and _cross_site(request):
            return PlainTextResponse("cross-site request refused", status_code=403)
        fresh = None if request.cookies.get(DESK_COOKIE) else secrets.token_urlsafe(24)
        request.state.desk_session = fresh or request.cookies.get(DESK_COOKIE, "")
        response = await (admit(request, call_next) if require_token and token else call_next(request))
        if fresh and response.status_code < 400:  # the first page: the browser's desk session begins
            response.set_cookie(DESK_COOKIE, fresh, httponly=True, samesite="strict")
        return response

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

    @app.post("/send-test", dependencies=FormChecked)
    async def send_test(to: Annotated[str, Form()] = "", issue: Annotated[str, Form()] = "next") -> RedirectResponse:
        """Send the issue to one address through the configured backend, subject marked [Test]."""
        try:
            notice = await asyncio.to_thread(_send_test, state, to, issue)
            query = _query(issue, "html", "desktop", notice=notice)
        except NewsletterError as exc:
            query = _query(issue, "html", "desktop", error=str(exc))
        return RedirectResponse(f"/?{query}", status_code=303)

    app.include_router(desk.router)

    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on a form post, which the
    # guard above refuses as cross-site
    app.add_middleware(SecurityHeaders, headers={"Content-Security-Policy": PAGE_POLICY,
                                                 "Referrer-Policy": "same-origin", "X-Content-Type-Options": "nosniff"})
    return app


def _cross_site(request: Request) -> bool:
    """Whether a request says it comes from another site: an ``Origin`` that is not this host (``null``
    included), or ``Sec-Fetch-Site: cross-site`` / ``same-site`` (a sibling host is another site here)."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        return True
    return request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none")


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
    values = recipient_values(config, Subscriber(email=address, name="", token=f"preview-{address}"))
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


def issue_numbers(state: PreviewState) -> list[int]:
    """The numbers of every issue prepared so far (drafts aside), newest first."""
    with session(state.engine) as db:
        return list(db.exec(select(Issue.number).where(NOT_DRAFT).order_by(col(Issue.number).desc())))


def sample_parts(sample: IssueSample) -> tuple[str, str, str, str]:
    """(HTML part, text part, raw source, headers) of the sample message, for the page's views."""
    html_part, text = message_parts(sample.message)
    source = sample.message.decode("utf-8", errors="replace").replace("\r\n", "\n")
    headers = BytesHeaderParser(policy=default_policy).parsebytes(sample.message)
    return html_part, text, source, "\n".join(f"{name}: {value}" for name, value in headers.items())


def _query(issue: str, view: str, width: str, **extra: str) -> str:
    return urlencode({"issue": issue, "view": view, "width": width, **extra})


_ENV = Environment(autoescape=True)
_ERROR_FRAME = _ENV.from_string(
    '<!doctype html><html lang="en"><meta charset="utf-8"><body style="font:15px system-ui;color:#7a1010">'
    "<pre style='white-space:pre-wrap'>{{ problem }}</pre></body></html>"
)
