"""Public archive of past issues (``/archive``, ``/archive/<number>``), their Atom feed, and the front page
(``/``: the subscribe form with the latest issue).

An archived issue is served exactly as it was first sent: the copy stored with it then
(:mod:`newsletter.issues.archived`), whatever the templates or the summaries became later, with neutral
values where a reader's own would be: no subscriber's address, name or personal link ever appears in it
(the unsubscribe and preferences links point to a page explaining where the personal links are). Only
issues that went out are public. The feed's entries carry the same HTML, so a feed reader shows the digest.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import Engine, and_, exists, or_
from sqlmodel import col, select

from newsletter.dates import format_day
from newsletter.db import session
from newsletter.config import Config
from newsletter.errors import NewsletterError
from newsletter.issues import archived_copy
from newsletter.issues.lookup import shown_items
from newsletter.issues.archived import ArchivedCopy
from newsletter.models import Delivery, DeliveryStatus, Issue, IssueCopy, IssueStatus, utcnow
from newsletter.render import as_utc
from newsletter.web.pages import notice, page, site_root, web_state
from newsletter.web.security import EMAIL_POLICY

log = logging.getLogger(__name__)
router = APIRouter()
# An issue is public once it has reached someone: its "view in browser" link must keep working even if
# the send was later paused or cancelled. One being sent is public too (its copy is stored when sending
# starts), so the link works in the first messages.
_REACHED_SOMEONE = exists().where(Delivery.issue_id == Issue.id, Delivery.status == DeliveryStatus.SENT)
_BEING_SENT = and_(Issue.status == IssueStatus.SENDING, exists().where(IssueCopy.issue_id == Issue.id))
PUBLIC = or_(Issue.status == IssueStatus.SENT, _REACHED_SOMEONE, _BEING_SENT)
FEED_SIZE = 20
ATOM = "http://www.w3.org/2005/Atom"


def store_missing_copies(engine: Engine, config: Config) -> None:
    """Store the archive copy of every public issue sent before copies were kept (at the site's first start
    after the upgrade, rather than at each issue's first visit, whenever that is, with the templates of then).
    An issue whose copy cannot be made is logged and left to :func:`_copy_or_none`."""
    with session(engine) as db:
        missing = list(db.exec(select(Issue).where(PUBLIC, ~exists().where(IssueCopy.issue_id == Issue.id))))
    for issue in missing:
        _copy_or_none(engine, config, issue)


def _copy_or_none(engine: Engine, config: Config, issue: Issue) -> ArchivedCopy | None:
    """The issue's archived copy; None (logged) when it has none and its templates cannot make one now."""
    try:
        return archived_copy(engine, config, issue)
    except NewsletterError as exc:
        log.error("issue #%d has no archived copy and none can be made now (%s); fix the templates, then it is "
                  "made at its next visit", issue.number, exc)
        return None


def _published(issue: Issue) -> datetime:
    return as_utc(issue.sent_at or issue.scheduled_at or issue.created_at)


def _public_issues(request: Request, limit: int | None = None) -> list[Issue]:
    with session(web_state(request).engine) as db:
        query = select(Issue).where(PUBLIC).order_by(col(Issue.number).desc())
        return list(db.exec(query.limit(limit) if limit else query))


@router.get("/", response_class=HTMLResponse)
@router.head("/", response_class=HTMLResponse)  # a route per method: each its own operation id
def front_page(request: Request) -> HTMLResponse:
    """The subscribe page, with the latest issue's subject and titles (where every masthead links)."""
    latest = None
    with session(web_state(request).engine) as db:
        issue = db.exec(select(Issue).where(PUBLIC).order_by(col(Issue.number).desc()).limit(1)).first()
        if issue is not None:
            latest = {"number": issue.number, "subject": issue.subject,
                      "date": format_day(_published(issue).date(), web_state(request).config.newsletter.locale),
                      "titles": [item.title for item in shown_items(db, issue)]}
    return page(request, "subscribe.html", title="Subscribe", email="", name="", error=None, indexable=True,
                latest=latest, feed_url=f"{site_root(request)}/archive/feed.atom")


@router.get("/archive", response_class=HTMLResponse)
@router.head("/archive", response_class=HTMLResponse)
def archive_index(request: Request) -> HTMLResponse:
    """Every issue that went out, newest first."""
    locale = web_state(request).config.newsletter.locale
    issues = [
        {"number": issue.number, "subject": issue.subject, "date": format_day(_published(issue).date(), locale)}
        for issue in _public_issues(request)
    ]
    return page(request, "archive.html", title="Past issues", issues=issues, indexable=True,
                feed_url=f"{site_root(request)}/archive/feed.atom")


@router.get("/archive/feed.atom")
@router.head("/archive/feed.atom")  # feed readers check for changes with HEAD
def archive_feed(request: Request) -> Response:
    """An Atom feed of the newest issues, each linking to its archived page."""
    config = web_state(request).config
    site = config.newsletter.site_url
    issues = _public_issues(request, FEED_SIZE)
    ET.register_namespace("", ATOM)
    feed = ET.Element(f"{{{ATOM}}}feed")
    ET.SubElement(feed, f"{{{ATOM}}}title").text = config.newsletter.name
    ET.SubElement(feed, f"{{{ATOM}}}id").text = f"{site}/archive"
    ET.SubElement(feed, f"{{{ATOM}}}link", href=f"{site}/archive/feed.atom", rel="self")
    ET.SubElement(feed, f"{{{ATOM}}}link", href=f"{site}/archive", rel="alternate", type="text/html")
    ET.SubElement(feed, f"{{{ATOM}}}updated").text = (
        _published(issues[0]) if issues else utcnow()
    ).isoformat()
    ET.SubElement(ET.SubElement(feed, f"{{{ATOM}}}author"), f"{{{ATOM}}}name").text = config.newsletter.name
    for issue in issues:
        entry = ET.SubElement(feed, f"{{{ATOM}}}entry")
        url = f"{site}/archive/{issue.number}"
        ET.SubElement(entry, f"{{{ATOM}}}title").text = issue.subject
        ET.SubElement(entry, f"{{{ATOM}}}id").text = url
        ET.SubElement(entry, f"{{{ATOM}}}link", href=url, rel="alternate", type="text/html")
        ET.SubElement(entry, f"{{{ATOM}}}updated").text = _published(issue).isoformat()
        copy = _copy_or_none(web_state(request).engine, config, issue)
        if copy is not None:
            ET.SubElement(entry, f"{{{ATOM}}}content", type="html").text = copy.html.decode("utf-8")
    body = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
    return Response(body, media_type="application/atom+xml; charset=utf-8")


@router.get("/archive/{number}", response_class=HTMLResponse)
@router.head("/archive/{number}", response_class=HTMLResponse)
def archived_issue(request: Request, number: Annotated[int, Path(ge=1, le=2**31 - 1)]) -> Response:
    """One issue as it was emailed ("view in browser"), without anything personal: the stored bytes."""
    state = web_state(request)
    with session(state.engine) as db:
        issue = db.exec(select(Issue).where(Issue.number == number, PUBLIC)).first()
    if issue is None:
        return notice(request, "No such issue", f"There is no published issue number {number}.", status=404,
                      link_url=f"{site_root(request)}/archive", link_label="All past issues")
    copy = _copy_or_none(state.engine, state.config, issue)
    if copy is None:
        return notice(request, "Not available", f"Issue number {number} cannot be shown right now.", status=503,
                      link_url=f"{site_root(request)}/archive", link_label="All past issues")
    # the email's own inline styles and remote images, nothing else (newsletter.web.security)
    return HTMLResponse(copy.html, headers={"Content-Security-Policy": EMAIL_POLICY})
