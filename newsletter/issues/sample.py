"""What editors see: the issue ``digest render``, ``digest check`` and the preview show, built for a few
real readers exactly as the send loop would build their messages.

By default that is the draft of the next issue whenever summaries are waiting (what will go out next), else
the newest issue, labelled with its state and date.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from newsletter.backends import create_backend
from newsletter.config import Config
from newsletter.dates import format_day
from newsletter.db import session
from newsletter.errors import NewsletterError
from newsletter.issues.lookup import find_issue, issue_items, newest_issue
from newsletter.issues.prepare import draft
from newsletter.message import Composer, MessageTemplate, message_parts
from newsletter.models import Issue, IssueStatus, Subscriber, SubscriberStatus, Summary
from newsletter.render import RecipientValues, RenderedIssue, as_utc, render_issue

SAMPLE_READER = Subscriber(email="reader@example.org", name="Sample Reader", token="sample-reader")


class Shown(NamedTuple):
    """An issue as editors see it: the issue (unsaved for a draft), its items, how to describe it, and the
    sample readers its messages are built for."""

    issue: Issue
    items: list[Summary]
    description: str  # "draft of issue #8 (not prepared yet)" or "issue #7 (sent 23 November 2026)"
    readers: list[Subscriber]


def shown_issue(engine: Engine, config: Config, number: int | None = None, *, now: datetime | None = None) -> Shown:
    """Issue ``number``; by default the draft of the next issue when summaries are waiting at ``now``, else
    the newest issue. Raises NewsletterError when there is no such issue, or nothing at all to show.

    The sample readers are the first active subscriber and those with the longest name and the longest
    address (or a made-up reader for an empty list). Raises TemplateError from a draft's subject.
    """
    with session(engine) as db:
        if number is None:
            upcoming = draft(db, config, now=now)
            if upcoming is not None:
                description = f"draft of issue #{upcoming.issue.number} (not prepared yet)"
                return Shown(upcoming.issue, upcoming.items, description, sample_readers(db))
            if newest_issue(db) is None:
                raise NewsletterError(
                    "nothing to show: no issue was prepared and no summary is waiting; run `newsletter ingest` first"
                )
        issue = find_issue(db, number)
        if issue.status is IssueStatus.DRAFT:  # the next issue, by its number
            upcoming = draft(db, config, now=now)
            if upcoming is None:
                raise NewsletterError(f"issue #{issue.number} is the next issue, and no summary is waiting for it yet")
            return Shown(upcoming.issue, upcoming.items, f"draft of issue #{issue.number} (not prepared yet)",
                         sample_readers(db))
        return Shown(issue, issue_items(db, issue), f"issue #{issue.number} ({state_and_date(config, issue)})",
                     sample_readers(db))


def state_and_date(config: Config, issue: Issue) -> str:
    """``sent 23 November 2026`` or ``paused, prepared 23 November 2026``: an issue's state and its date in
    the configured timezone."""
    locale = config.newsletter.locale
    if issue.status is IssueStatus.SENT and issue.sent_at is not None:
        return f"sent {format_day(as_utc(issue.sent_at).astimezone(config.schedule.zone).date(), locale)}"
    prepared = format_day(as_utc(issue.created_at).astimezone(config.schedule.zone).date(), locale)
    if issue.status is IssueStatus.PREPARED:
        return f"prepared {prepared}, not sent yet"
    return f"{issue.status.value}, prepared {prepared}"


def sample_readers(db: Session) -> list[Subscriber]:
    """The first active subscriber, the one with the longest name and the one with the longest address."""
    active = select(Subscriber).where(Subscriber.status == SubscriberStatus.ACTIVE)
    # limit(1): the ORM buffers a whole result, so .first() alone would load every subscriber
    orders = (
        (col(Subscriber.id),),
        (func.coalesce(func.length(Subscriber.name), 0).desc(), col(Subscriber.id)),
        (func.length(Subscriber.email).desc(), col(Subscriber.id)),
    )
    found: dict[int | None, Subscriber] = {}
    for order in orders:
        person = db.exec(active.order_by(*order).limit(1)).first()
        if person is not None:
            found.setdefault(person.id, person)
    return list(found.values()) or [SAMPLE_READER]


@dataclass(frozen=True)
class SampleMessage:
    """One sample reader's message, exactly as the send loop builds it."""

    recipient: Subscriber
    values: RecipientValues
    rendered: RenderedIssue  # for the reader's topics
    data: bytes


@dataclass(frozen=True)
class IssueSample:
    """An issue rendered once plus the messages of a few sample readers (the first is the one shown)."""

    issue: Issue
    items: list[Summary]
    description: str
    rendered: RenderedIssue  # every item
    messages: list[SampleMessage]
    unbuildable: list[tuple[str, str]]  # (address, why) of sample readers no message can be built for
    extra_headers: tuple[str, ...] = ()  # the names of the headers the backend adds to every message

    @property
    def values(self) -> RecipientValues:
        return self.messages[0].values

    @property
    def message(self) -> bytes:
        return self.messages[0].data


def build_sample(
    config: Config, issue: Issue, items: list[Summary], description: str, readers: Sequence[Subscriber]
) -> IssueSample:
    """Render ``issue`` and build each of ``readers``' messages with the send loop's own
    :class:`~newsletter.message.Composer` (for their topics; everything when none of theirs has an item),
    with the configured backend's extra headers, as the send builds them (a DKIM signature is added by the
    backend as it sends).

    Raises TemplateError when a template fails.
    """
    extra_headers = create_backend(config).extra_headers()
    composer = Composer(config, issue, items, extra_headers)
    everything = composer.template([]) or MessageTemplate(config, render_issue(config, issue, items))
    messages, unbuildable = [], []
    for person in [*readers, SAMPLE_READER]:
        if messages and person is SAMPLE_READER:
            break  # the made-up reader only stands in when no real one could be shown
        template = composer.template(person.topics or []) or everything
        try:
            data = composer.compose(0, person, template).data
        except ValueError as exc:  # InvalidAddress: the send loop fails this one alone
            unbuildable.append((person.email, str(exc)))
            continue
        messages.append(SampleMessage(person, composer.values(person, template), template.rendered, data))
    return IssueSample(issue, items, description, everything.rendered, messages, unbuildable, tuple(extra_headers))


@dataclass(frozen=True)
class PreviewFiles:
    description: str
    html: Path
    text: Path
    eml: Path


def write_preview(
    engine: Engine, config: Config, out_dir: Path, number: int | None = None, *, now: datetime | None = None
) -> PreviewFiles:
    """``digest render``: write ``issue.html``, ``issue.txt`` and ``sample.eml`` for the issue
    :func:`shown_issue` picks, personalised for its first sample reader exactly as the send loop would
    build the message. Nothing is saved."""
    sample = build_sample(config, *shown_issue(engine, config, number, now=now))
    html, text = message_parts(sample.message)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        files = PreviewFiles(sample.description, out_dir / "issue.html", out_dir / "issue.txt", out_dir / "sample.eml")
        files.html.write_text(html, encoding="utf-8")
        files.text.write_text(text, encoding="utf-8")
        files.eml.write_bytes(sample.message)
    except OSError as exc:
        raise NewsletterError(
            f"cannot write the preview into {out_dir} ({exc.strerror}); choose another --out"
        ) from None
    return files
