"""Shared by the click tests: an issue sent with click counting on, and the links in what readers got."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import lxml.html
from sqlalchemy import Engine, update
from sqlmodel import col, select

from newsletter.backends import create_backend
from newsletter.config import Config
from newsletter.db import session
from newsletter.delivery import send_unfinished
from newsletter.issues import prepare_issue
from newsletter.models import ClickCount, Delivery, Issue, Summary, utcnow
from tests import outbox
from tests.conftest import make_config
from tests.helpers import add_people, add_summaries

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
SCANNER_AGENT = "Mozilla/5.0 (compatible; GoogleImageProxy)"  # Gmail's image proxy


def tracked(base_dir: Path, **tracking: Any) -> Config:
    """The test config with click counting on (and ``tracking`` settings)."""
    return make_config(base_dir, tracking={"clicks": True, **tracking})


def send_issue(config: Config, engine: Engine, *people: str, summaries: int = 2) -> list[EmailMessage]:
    """Add ``summaries`` summaries (and ``people``), prepare the next issue and send it through the file
    backend; returns the messages of this issue."""
    add_summaries(engine, summaries)
    add_people(engine, *people)
    number = prepare_issue(engine, config).issue.number  # type: ignore[union-attr]
    send_unfinished(engine, config, create_backend(config))
    return [m for m in outbox.messages(config.resolve("outbox")) if m["Message-ID"].startswith(f"<issue-{number}.")]


def html_links(message: EmailMessage) -> list[str]:
    """Every href of the message's HTML part, as lxml (not our parser) reads them, in document order."""
    return [link for _element, attribute, link, _pos in lxml.html.fromstring(outbox.html_part(message)).iterlinks()
            if attribute == "href"]


def text_links(message: EmailMessage) -> list[str]:
    return re.findall(r"https?://\S+", outbox.text_part(message))


def click_links(message: EmailMessage) -> list[str]:
    """The click links (``/c/``) of both parts, HTML first."""
    return [link for link in [*html_links(message), *text_links(message)] if "/c/" in link]


def path(url: str) -> str:
    return urlsplit(url).path


def item_urls(engine: Engine, number: int) -> set[str]:
    with session(engine) as db:
        issue = db.exec(select(Issue).where(Issue.number == number)).one()
        return {s.url for s in db.exec(select(Summary).where(Summary.issue_id == issue.id)) if s.url}


def delivered_ago(engine: Engine, ago: timedelta) -> datetime:
    """Pretend every delivery went out ``ago`` ago; returns that time."""
    moment = utcnow() - ago
    with session(engine) as db:
        db.execute(update(Delivery).where(col(Delivery.sent_at).is_not(None)).values(sent_at=moment))
        db.commit()
    return moment


def counts(engine: Engine) -> dict[str, tuple[int, int]]:
    """{item's URL: (clicks, likely human clicks)} from the database."""
    with session(engine) as db:
        rows = db.exec(select(ClickCount, Summary).join(Summary, col(Summary.id) == ClickCount.item_id)).all()
        return {summary.url or "": (row.clicks, row.human_clicks) for row, summary in rows}
