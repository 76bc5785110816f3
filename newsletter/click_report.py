"""What editors see of the clicks (``digest status``, ``digest clicks``, ``status --json``, the preview) and
what a subscriber's data export holds of theirs.

Each item link of an issue has two numbers: **clicks** (every ``GET`` of the link) and **likely human
clicks** (those neither from a known scanner's user agent nor part of a burst from one network right after
delivery; :mod:`newsletter.scanners`). An item is named by its summary while that exists; once it is gone,
by the link in the issue's archive copy (its URL and link text).
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from newsletter.clicks import copy_links
from newsletter.config import Config
from newsletter.db import session
from newsletter.issues.lookup import NOT_DRAFT, find_issue, shown_items
from newsletter.models import ClickCount, Issue, IssueCopy, SubscriberClick
from newsletter.render import as_utc, item_url
from newsletter.tokens import url_hash

CSV_COLUMNS = ["issue", "item", "title", "url", "clicks", "likely_human_clicks"]


@dataclass(frozen=True)
class ItemClicks:
    """The clicks on one item link. ``position``: the item's place in the issue (1 is the first), None for a
    link whose summary is gone."""

    position: int | None
    title: str
    url: str
    clicks: int
    human_clicks: int
    item_id: int | None = None  # the summary's id


@dataclass(frozen=True)
class IssueClicks:
    """An issue's clicks, item by item. ``counted``: clicks are being counted now (``tracking.clicks``)."""

    number: int
    subject: str
    counted: bool
    items: list[ItemClicks]

    @property
    def clicks(self) -> int:
        return sum(item.clicks for item in self.items)

    @property
    def human_clicks(self) -> int:
        return sum(item.human_clicks for item in self.items)

    def by_item(self) -> dict[int, tuple[int, int]]:
        """Summary id -> (clicks, likely human clicks) over all of that item's links (an item whose URL was
        corrected after sending has two)."""
        totals: dict[int, tuple[int, int]] = {}
        for item in self.items:
            if item.item_id is not None:
                clicks, human = totals.get(item.item_id, (0, 0))
                totals[item.item_id] = (clicks + item.clicks, human + item.human_clicks)
        return totals

    def as_json(self) -> dict[str, Any]:
        """JSON-ready, as ``status --json`` shows it."""
        return {
            "counted": self.counted, "clicks": self.clicks, "likely_human_clicks": self.human_clicks,
            "items": [{"item": item.position, "title": item.title, "url": item.url, "clicks": item.clicks,
                       "likely_human_clicks": item.human_clicks} for item in self.items],
        }

    def summary_line(self) -> str:
        """``clicks: 12, likely human 9`` or why there are none."""
        if not self.counted and not self.clicks:
            return "clicks: not counted (tracking.clicks is off; see docs/engagement.md)"
        return f"clicks: {self.clicks:,}, likely human {self.human_clicks:,}"


def _named_links(db: Session, issue: Issue) -> dict[tuple[int, str], tuple[int | None, str, str]]:
    """(item id, URL hash) -> (position in the digest, title, URL) for the issue's items (with a link) as they
    are now."""
    named: dict[tuple[int, str], tuple[int | None, str, str]] = {}
    for position, summary in enumerate(shown_items(db, issue), start=1):
        url = item_url(summary)
        if url and summary.id is not None:
            named[(summary.id, url_hash(url))] = (position, " ".join(summary.title.split()), url)
    return named


def _copied_links(db: Session, issue: Issue) -> dict[str, tuple[str, str]]:
    """URL hash -> (URL, link text) of the links in the issue's archive copy (the first link to each URL)."""
    copy = db.get(IssueCopy, issue.id)
    found: dict[str, tuple[str, str]] = {}
    for url, text in copy_links(zlib.decompress(copy.html)) if copy is not None else []:
        found.setdefault(url_hash(url), (url, text or url))
    return found


def _positions(named: dict[tuple[int, str], tuple[int | None, str, str]]) -> dict[int, int | None]:
    return {item_id: place for (item_id, _hash), (place, _title, _url) in named.items()}


def _issue_clicks(db: Session, config: Config, issue: Issue) -> IssueClicks:
    named = _named_links(db, issue)
    rows = db.exec(select(ClickCount).where(ClickCount.issue_id == issue.id)).all()
    counts = {(row.item_id, row.url_hash): (row.clicks, row.human_clicks) for row in rows}
    items = [ItemClicks(place, title, url, *counts.pop(key, (0, 0)), item_id=key[0])
             for key, (place, title, url) in named.items()]
    if counts:  # links whose item is gone, or whose URL was changed since: named as the archive copy has them
        copied, places = _copied_links(db, issue), _positions(named)
        for (item_id, hash_), (clicks, human) in counts.items():
            url, title = copied.get(hash_, ("(a link no longer in the issue)", "(unknown)"))
            items.append(ItemClicks(places.get(item_id), title, url, clicks, human, item_id=item_id))
        items.sort(key=lambda item: (item.position is None, item.position or 0))
    return IssueClicks(issue.number, issue.subject, config.tracking.clicks, items)


def issue_clicks(engine: Engine, config: Config, number: int | None = None) -> IssueClicks:
    """The clicks of issue ``number`` (default: the newest), item by item in the issue's order. Raises
    NewsletterError when there is no such issue."""
    with session(engine) as db:
        return _issue_clicks(db, config, find_issue(db, number))


def every_issue_clicks(engine: Engine, config: Config) -> list[IssueClicks]:
    """The clicks of every issue, oldest first (the editor's draft of the next one is no issue yet)."""
    with session(engine) as db:
        issues = db.exec(select(Issue).where(NOT_DRAFT).order_by(col(Issue.number)))
        return [_issue_clicks(db, config, issue) for issue in issues]


def write_csv(reports: Sequence[IssueClicks], handle: TextIO) -> int:
    """``reports`` as CSV (:data:`CSV_COLUMNS`, one row per item link); returns how many rows."""
    writer = csv.writer(handle)
    writer.writerow(CSV_COLUMNS)
    rows = 0
    for report in reports:
        for item in report.items:
            writer.writerow([report.number, "" if item.position is None else item.position, _cell(item.title),
                             item.url, item.clicks, item.human_clicks])
            rows += 1
    return rows


def _cell(text: str) -> str:
    """A title safe to open in a spreadsheet: one that starts like a formula is quoted with an apostrophe."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def person_clicks(db: Session, subscriber_id: int) -> list[dict[str, Any]]:
    """A subscriber's recorded clicks (``tracking.per_subscriber``), oldest first, JSON-ready."""
    rows = db.exec(
        select(SubscriberClick, Issue).join(Issue, col(Issue.id) == SubscriberClick.issue_id)
        .where(SubscriberClick.subscriber_id == subscriber_id)
        .order_by(col(SubscriberClick.at), col(SubscriberClick.id))
    ).all()
    names: dict[int, tuple[dict[tuple[int, str], tuple[int | None, str, str]], dict[str, tuple[str, str]]]] = {}
    found = []
    for click, issue in rows:
        if issue.number not in names:
            names[issue.number] = (_named_links(db, issue), _copied_links(db, issue))
        named, copied = names[issue.number]
        if (click.item_id, click.url_hash) in named:
            _place, title, url = named[(click.item_id, click.url_hash)]
        else:
            url, title = copied.get(click.url_hash, ("(a link no longer in the issue)", "(unknown)"))
        found.append({"issue": issue.number, "title": title, "url": url, "at": as_utc(click.at).isoformat(),
                      "likely_human": click.likely_human})
    return found
