"""The subscriber's pages: subscribe (double opt-in), confirm, one-click unsubscribe (RFC 8058), preferences.

Handlers parse the request, call :mod:`newsletter.subscriptions`, and render a page; they never reveal
whether an address is on the list. Token pages answer 400 for a tampered link, 410 for an expired
confirmation link and 404 for a subscriber who no longer exists, always with a page a person can read.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, BackgroundTasks, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from newsletter.config import Config
from newsletter.db import Patience, patiently, session
from newsletter.errors import (
    DatabaseUnavailable,
    ExpiredToken,
    InvalidAddress,
    InvalidToken,
    NewsletterError,
)
from newsletter.models import Subscriber, SubscriberStatus
from newsletter.render import tracking_notice
from newsletter.subscribers import clean_text, normalise_address
from newsletter.subscriptions import (
    Confirmation,
    Consent,
    confirm_subscription,
    find_by_token,
    known_topics,
    may_subscribe_again,
    release_confirmation,
    request_subscription,
    unsubscribe_by_token,
    update_preferences,
)
from newsletter.tokens import CONFIRM, PREFERENCES, UNSUBSCRIBE, LinkSigner
from newsletter.web import mail
from newsletter.web.limits import Backoff, RateLimiter

log = logging.getLogger(__name__)

router = APIRouter()
PAGES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape(default=True)
)
EVERY = {"weekly": "every week", "daily": "every day", "monthly": "every month"}  # by schedule.cadence
RATE_WINDOW = 3600.0  # seconds: web.subscribe_limit_per_ip requests per client per hour


@dataclass
class WebState:
    """What the handlers need, kept on ``app.state.web``; ``clock`` is replaceable in tests."""

    config: Config
    engine: Engine
    clock: Callable[[], datetime]
    signer: LinkSigner
    limiter: RateLimiter  # subscribe requests per client
    backoff: Backoff  # wrong API tokens per client


def web_state(request: Request) -> WebState:
    return request.app.state.web  # type: ignore[no-any-return]


def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """Render one of the site's page templates (autoescaped) with the newsletter's details."""
    config = web_state(request).config
    defaults = {"newsletter": config.newsletter, "site_root": site_root(request), "feed_url": None, "indexable": False,
                "latest": None, "every": EVERY[config.schedule.cadence],
                "tracking": tracking_notice(config.tracking.clicks, config.tracking.per_subscriber)}
    html = PAGES.get_template(template).render({**defaults, **context})
    return HTMLResponse(html, status_code=status)


def notice(request: Request, title: str, *paragraphs: str, status: int = 200, **context: Any) -> HTMLResponse:
    return page(request, "notice.html", status, title=title, paragraphs=paragraphs, **context)


def _bad_link(request: Request, exc: InvalidToken, what: str) -> HTMLResponse:
    if isinstance(exc, ExpiredToken):
        return notice(request, "This link has expired",
                      f"For your safety, {what} links work for {web_state(request).config.web.confirm_expiry_days} days.",
                      "Subscribe again and we will send you a fresh one.",
                      status=410, link_url=f"{site_root(request)}/subscribe", link_label="Subscribe again")
    return notice(request, "This link does not work",
                  "It may have been cut short or changed when it was copied. Open it again from the email, "
                  "or copy the whole address into your browser.", status=400)


def _unknown(request: Request) -> HTMLResponse:
    return notice(request, "We could not find this subscription",
                  "It may have been erased at your request. Nothing more will be sent to you from this list.",
                  status=404, link_url=f"{site_root(request)}/subscribe", link_label="Subscribe")


def site_root(request: Request) -> str:
    """The path part of ``newsletter.site_url``, without a trailing slash ("" at a domain's root)."""
    return urlsplit(web_state(request).config.newsletter.site_url).path.rstrip("/")


def _client(request: Request) -> tuple[str | None, str | None]:
    """The client's IP (as uvicorn saw it, after trusted proxy headers) and user agent (shortened)."""
    ip = request.client.host if request.client else None
    return ip, clean_text(request.headers.get("user-agent"), 500)


# -- subscribe ------------------------------------------------------------------------------------------


@router.get("/subscribe", response_class=HTMLResponse)
def subscribe_form(request: Request) -> HTMLResponse:
    """The subscribe page."""
    return page(request, "subscribe.html", title="Subscribe", email="", name="", error=None, indexable=True)


@router.post("/subscribe", response_class=HTMLResponse)
def subscribe(
    request: Request,
    background: BackgroundTasks,
    email: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "",
    website: Annotated[str, Form()] = "",
    source: Annotated[str, Form()] = "",
) -> HTMLResponse:
    """Subscribe form endpoint (usable from another site's form): creates a pending subscriber and sends a
    confirmation email. The answer, and how long it takes, is the same whether or not the address is
    already on the list: only what depends on the request alone (rate limit, honeypot, the address's
    syntax) happens before the answer; the database and the email come after it."""
    state = web_state(request)
    ip, user_agent = _client(request)
    if not state.limiter.allow(ip):
        log.warning("subscribe rate limit reached for an IP address")
        return notice(request, "Too many requests",
                      "Too many subscription requests came from your network. Please try again in an hour.",
                      status=429)
    check_inbox = notice(request, "Check your inbox",
                         "If this address can subscribe, we have sent it an email with a confirmation link. "
                         "Click it to start receiving the newsletter.",
                         "Nothing arrived within a few minutes? Look in your spam folder, then ask again.")
    if website.strip():
        log.info("subscribe form honeypot filled; ignoring the request")
        return check_inbox
    try:
        address = normalise_address(email[:400])
    except InvalidAddress:
        return page(request, "subscribe.html", 400, title="Subscribe", email=clean_text(email, 400) or "",
                    name=clean_text(name, 200) or "",
                    error="That does not look like an email address. Please check it and try again.")
    consent = Consent(source=clean_text(source, 100) or "web form", ip=ip, user_agent=user_agent)
    background.add_task(_subscribe_after_answering, state, address, name, consent, state.clock())
    return check_inbox


def _subscribe_after_answering(state: WebState, address: str, name: str, consent: Consent, now: datetime) -> None:
    """Record the request and send the confirmation, if the address gets one. Runs after the answer went
    out, so nobody sees an error: a database that is busy or away for a moment is waited for, up to
    :data:`SIGN_UP_WAIT` (:func:`~newsletter.db.patiently`, one WARNING per try); anything else, or a
    database still away then, is logged at ERROR with its reason (the address only at DEBUG)."""
    try:
        subscriber = patiently(lambda: _record_request(state.engine, address, name, consent, now),
                               Patience(SIGN_UP_WAIT))
    except DatabaseUnavailable as exc:
        log.error("could not record a subscription request: the database was still unavailable after %g s (the "
                  "reason is in the warnings above), so the address got no confirmation email; the person will "
                  "have to subscribe again", SIGN_UP_WAIT.total_seconds())
        log.debug("the lost subscription request was for %s", address, exc_info=exc)
        return
    except Exception as exc:  # a bug: nobody waits for the answer any more, the log is the only place to tell
        _lost(address, exc)
        return
    if subscriber is not None:
        _send_confirmation(state, subscriber)


# How long a subscription request that met a busy or unreachable database is tried again (on SQLite each try
# first waits out the busy timeout). Short, unlike a send's database.outage_limit: the request runs after
# its answer, on one of the server's worker threads, and nobody is waiting for it.
SIGN_UP_WAIT = timedelta(seconds=30)


def _record_request(engine: Engine, address: str, name: str, consent: Consent, now: datetime) -> Subscriber | None:
    """:func:`request_subscription`, once more at once when a concurrent request for the same new address
    inserted it first (a unique violation, rolled back whole): the second try finds the row."""
    try:
        return request_subscription(engine, address, name, consent, now=now)
    except IntegrityError:
        return request_subscription(engine, address, name, consent, now=now)


def _reason(exc: BaseException, address: str) -> str:
    """What went wrong, on one line, where in our code, and without the address: the database's own
    message for a database error (SQLAlchemy's text would add the statement's parameters)."""
    text = str(exc.orig) if isinstance(exc, DBAPIError) else str(exc)
    text = re.sub(re.escape(address), "<the address>", " ".join(text.split()), flags=re.IGNORECASE)
    ours = [frame for frame in traceback.extract_tb(exc.__traceback__) if "/newsletter/" in frame.filename]
    where = f" at {Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else ""
    return f"{type(exc).__name__}{where}: {text[:300]}"


def _lost(address: str, exc: BaseException) -> None:
    log.error("could not record a subscription request, so the address got no confirmation email (%s); the "
              "person will have to subscribe again", _reason(exc, address))
    log.debug("the lost subscription request was for %s", address, exc_info=exc)


def _send_confirmation(state: WebState, subscriber: Subscriber) -> None:
    """Send the confirmation; when it cannot be sent, free the 24-hour slot so that asking again sends it
    (waiting out a busy database like the request itself)."""
    try:
        mail.send_confirmation(state.config, state.signer, subscriber)
    except NewsletterError as exc:
        log.error("could not send a confirmation email: %s", exc)
        try:
            patiently(lambda: release_confirmation(state.engine, subscriber), Patience(SIGN_UP_WAIT))
        except DatabaseUnavailable:
            log.error("the database was still unavailable after %g s, so asking again sends the confirmation "
                      "only after 24 hours", SIGN_UP_WAIT.total_seconds())


# -- confirm --------------------------------------------------------------------------------------------


@router.get("/confirm/{token}", response_class=HTMLResponse)
def confirm_page(request: Request, token: str) -> HTMLResponse:
    """Shows a button that confirms: a GET changes nothing, so mail scanners that open links cannot
    confirm a subscription that nobody asked for."""
    state = web_state(request)
    try:
        state.signer.verify(CONFIRM, token)
    except InvalidToken as exc:
        return _bad_link(request, exc, "confirmation")
    letter, cadence = state.config.newsletter.name, EVERY[state.config.schedule.cadence]
    return notice(request, "Confirm your subscription", f"One more click and {letter} will arrive {cadence}.",
                  action_url=f"{site_root(request)}/confirm/{token}", action_fields=[],
                  action_label="Confirm my subscription")


@router.post("/confirm/{token}", response_class=HTMLResponse)
def confirm(request: Request, token: str) -> Response:
    """Activates the subscription and sends the welcome email, then shows the preferences page."""
    state = web_state(request)
    try:
        subscriber_token = state.signer.verify(CONFIRM, token)
    except InvalidToken as exc:
        return _bad_link(request, exc, "confirmation")
    ip, user_agent = _client(request)
    found = confirm_subscription(state.engine, subscriber_token, ip=ip, user_agent=user_agent, now=state.clock())
    if found is None:
        return _unknown(request)
    subscriber, outcome = found
    if outcome is Confirmation.NOT_PENDING:
        return notice(request, "Nothing to confirm",
                      "This address left the list after this link was sent, so the link no longer subscribes it.",
                      link_url=f"{site_root(request)}/subscribe", link_label="Subscribe again")
    if outcome is Confirmation.CONFIRMED and state.config.web.welcome_email:
        try:
            mail.send_welcome(state.config, state.signer, subscriber)
        except NewsletterError as exc:  # the subscription stands; the welcome is a courtesy
            log.error("could not send a welcome email: %s", exc)
    preferences = state.signer.sign(PREFERENCES, subscriber.token)
    return RedirectResponse(f"{site_root(request)}/preferences/{preferences}?welcome=1", status_code=303)


# -- unsubscribe (RFC 8058) -----------------------------------------------------------------------------


@router.get("/unsubscribe", response_class=HTMLResponse)
@router.get("/preferences", response_class=HTMLResponse)
def manage_help(request: Request) -> HTMLResponse:
    """Where links in archived issues point: explains how to manage a subscription."""
    return notice(request, "Manage your subscription",
                  "To unsubscribe or choose your topics, use the links at the bottom of any email you received "
                  "from us: they are personal, so no login is needed.",
                  link_url=f"{site_root(request)}/subscribe", link_label="Not subscribed yet? Subscribe")


def _linked_subscriber(request: Request, purpose: str, token: str, what: str) -> Subscriber | HTMLResponse:
    """The subscriber a signed link points at, or the friendly page to answer with (400 tampered, 404 gone)."""
    state = web_state(request)
    try:
        subscriber_token = state.signer.verify(purpose, token)
    except InvalidToken as exc:
        return _bad_link(request, exc, what)
    with session(state.engine) as db:
        subscriber = find_by_token(db, subscriber_token)
    return _unknown(request) if subscriber is None else subscriber


@router.get("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe_page(request: Request, token: str) -> HTMLResponse:
    """A page with an unsubscribe button; a GET never changes anything (link scanners open links)."""
    subscriber = _linked_subscriber(request, UNSUBSCRIBE, token, "unsubscribe")
    if isinstance(subscriber, HTMLResponse):
        return subscriber
    if subscriber.status is not SubscriberStatus.ACTIVE and subscriber.status is not SubscriberStatus.PENDING:
        return notice(request, "You are unsubscribed", f"{subscriber.email} receives nothing more from this list.",
                      **_rejoin_link(request, subscriber, "Subscribe again"))
    letter = web_state(request).config.newsletter.name
    return notice(request, "Unsubscribe?", f"Stop sending {letter} to {subscriber.email}.",
                  action_url=f"{site_root(request)}/unsubscribe/{token}",
                  action_fields=[("List-Unsubscribe", "One-Click")], action_label="Unsubscribe",
                  link_url=_preferences_url(request, subscriber), link_label="Or choose fewer topics instead")


@router.post("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe(request: Request, token: str) -> HTMLResponse:
    """RFC 8058 one-click unsubscribe: no cookie, no login, 200 and never a redirect; idempotent.

    Mail providers post ``List-Unsubscribe=One-Click`` (form-urlencoded or multipart); the body is not
    needed to act, so it is not parsed."""
    state = web_state(request)
    try:
        subscriber_token = state.signer.verify(UNSUBSCRIBE, token)
    except InvalidToken as exc:
        return _bad_link(request, exc, "unsubscribe")
    subscriber = unsubscribe_by_token(state.engine, subscriber_token, via="one-click")
    if subscriber is None:  # erased: already receives nothing, which is what was asked
        return notice(request, "You are unsubscribed", "Nothing more will be sent to you from this list.")
    return notice(request, "You are unsubscribed", f"{subscriber.email} will receive nothing more from this list.",
                  **_rejoin_link(request, subscriber, "Changed your mind? Subscribe again"))


def _rejoin_link(request: Request, subscriber: Subscriber, label: str) -> dict[str, str]:
    """The link to the subscribe form, for those the form can take back (not who bounced or complained)."""
    if not may_subscribe_again(subscriber):
        return {}
    return {"link_url": f"{site_root(request)}/subscribe", "link_label": label}


# -- preferences ----------------------------------------------------------------------------------------


def _preferences_url(request: Request, subscriber: Subscriber) -> str:
    return f"{site_root(request)}/preferences/{web_state(request).signer.sign(PREFERENCES, subscriber.token)}"


def _preferences_page(request: Request, token: str, subscriber: Subscriber, status: int = 200,
                      **flags: Any) -> HTMLResponse:
    state = web_state(request)
    topics = known_topics(state.engine)
    chosen = set(subscriber.topics)
    topics += [topic for topic in subscriber.topics if topic not in topics]  # a topic that has no summaries now
    return page(request, "preferences.html", status, title="Your preferences", subscriber=subscriber,
                topics=topics, chosen=chosen, action_url=f"{site_root(request)}/preferences/{token}",
                unsubscribe_url=f"{site_root(request)}/unsubscribe/{state.signer.sign(UNSUBSCRIBE, subscriber.token)}",
                welcome=flags.get("welcome", False), saved=flags.get("saved", False), error=flags.get("error"))


@router.get("/preferences/{token}", response_class=HTMLResponse)
def preferences_page(request: Request, token: str, welcome: bool = False, saved: bool = False) -> HTMLResponse:
    """The subscriber's page: name, topics, unsubscribe."""
    subscriber = _linked_subscriber(request, PREFERENCES, token, "preferences")
    if isinstance(subscriber, HTMLResponse):
        return subscriber
    return _preferences_page(request, token, subscriber, welcome=welcome, saved=saved)


@router.post("/preferences/{token}", response_class=HTMLResponse)
def save_preferences(
    request: Request,
    token: str,
    name: Annotated[str, Form()] = "",
    topics: Annotated[list[str], Form()] = [],  # noqa: B006  (FastAPI copies defaults)
) -> Response:
    """Saves name and topics (none ticked: every topic), then shows the page again."""
    subscriber = _linked_subscriber(request, PREFERENCES, token, "preferences")
    if isinstance(subscriber, HTMLResponse):
        return subscriber
    allowed = set(known_topics(web_state(request).engine)) | set(subscriber.topics)
    unknown = [topic for topic in topics if topic not in allowed]
    if unknown:
        return _preferences_page(request, token, subscriber, 400,
                                 error=f"There is no topic called {unknown[0][:100]!r}; pick from the list.")
    update_preferences(web_state(request).engine, subscriber.token, name, topics)
    return RedirectResponse(f"{site_root(request)}/preferences/{token}?saved=1", status_code=303)
