"""What the editors' preview shares between its requests, its watcher thread and its sends
(:class:`PreviewState`), and what every desk form carries (:func:`form_token`, :data:`FormChecked`).

The app around it is :mod:`newsletter.web.preview`; the page and the routes that change or send the next
issue are :mod:`newsletter.web.desk`. Both build on this module, which imports neither.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Annotated, Any

import watchfiles
from fastapi import Depends, Form, Request
from fastapi.exceptions import HTTPException
from sqlalchemy import Engine, Integer, cast, func
from sqlmodel import col, select

from newsletter.backends import create_backend
from newsletter.checks import Finding, check_sample
from newsletter.config import Config, load_config
from newsletter.db import open_database, session
from newsletter.delivery import send_issue
from newsletter.errors import NewsletterError
from newsletter.issues import IssueSample, build_sample, shown_issue
from newsletter.issues.lookup import NOT_DRAFT
from newsletter.message import message_parts
from newsletter.models import Issue, Summary
from newsletter.render import template_dirs
from newsletter.web.limits import Backoff

log = logging.getLogger(__name__)

WIDTHS = {"desktop": 600, "phone": 375}
VIEWS = ("html", "text", "source", "headers")
POLL_SECONDS = 0.25  # how often the database and the config file are looked at
DESK_COOKIE = "newsletter_desk"  # a random id per browser: the form token is made from it
STALE_FORM = "this page's form is out of date (or came from another site); reload the page and try again"
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
        self._findings: dict[int, tuple[IssueSample, list[Finding]]] = {}  # id(sample) -> its pre-send checks
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
            self._findings.clear()
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

    def findings(self, sample: IssueSample) -> list[Finding]:
        """The pre-send checks of ``sample`` (from :meth:`sample`), worked out once per sample: every open
        tab asks again after each change."""
        cached = self._findings.get(id(sample))
        if cached is None or cached[0] is not sample:
            cached = self._findings[id(sample)] = (sample, check_sample(self.config, sample))
        return cached[1]

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
        raise HTTPException(403, STALE_FORM)


FormChecked = [Depends(require_form_token)]


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
