"""The archive's copy of an issue: its HTML and text as first sent, with nothing personal in them.

The send loop stores the copy when it starts sending an issue (:func:`keep_copy`), from the very render the
messages are built from; ``/archive/N`` and the Atom feed serve exactly those bytes from then on, whatever
the templates or the summaries become. Where a reader's values would be (their name, address and personal
links) the copy has neutral ones: the unsubscribe and preferences links point to pages explaining where the
personal links are.

Issues sent before copies were kept (databases upgraded from an earlier version) get theirs the first time
their page is asked for: rendered then, stored, and served unchanged after that (:func:`archived_copy`).
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from newsletter.config import Config
from newsletter.db import session
from newsletter.issues.lookup import issue_items
from newsletter.models import Issue, IssueCopy
from newsletter.render import RecipientValues, RenderedIssue, render_issue

log = logging.getLogger(__name__)


def neutral_values(config: Config) -> RecipientValues:
    """What the copy shows where a reader's own values would be."""
    site = config.newsletter.site_url
    return RecipientValues(email="you", name="", unsubscribe_url=f"{site}/unsubscribe",
                           preferences_url=f"{site}/preferences")


@dataclass(frozen=True)
class ArchivedCopy:
    html: bytes  # UTF-8, exactly as stored
    text: bytes


def has_copy(engine: Engine, issue: Issue) -> bool:
    with session(engine) as db:
        return db.exec(select(IssueCopy.issue_id).where(IssueCopy.issue_id == issue.id)).first() is not None


def keep_copy(engine: Engine, config: Config, issue: Issue, rendered: RenderedIssue) -> None:
    """Store ``rendered`` (every item of ``issue``) as its archive copy, unless one is stored already: the
    first send's copy stays, a resumed or second sender changes nothing."""
    html, text = rendered.personalise(neutral_values(config))
    with session(engine) as db:
        db.add(IssueCopy(issue_id=issue.id, html=zlib.compress(html.encode("utf-8"), 9),
                         text=zlib.compress(text.encode("utf-8"), 9)))
        try:
            db.commit()
        except IntegrityError:  # another sender of the same issue stored it first
            return
    log.info("issue #%d: stored the archive copy (%d bytes of HTML)", issue.number, len(html))


def archived_copy(engine: Engine, config: Config, issue: Issue) -> ArchivedCopy:
    """The stored copy of ``issue``; for an issue sent before copies were kept, rendered now and stored,
    so it never changes after this. Raises TemplateError when that render fails (nothing is stored)."""
    with session(engine) as db:
        stored = db.get(IssueCopy, issue.id)
        if stored is None:
            items = issue_items(db, issue)
    if stored is None:
        log.info("issue #%d was sent before archive copies were kept; storing one rendered now", issue.number)
        keep_copy(engine, config, issue, render_issue(config, issue, items))
        with session(engine) as db:
            stored = db.get(IssueCopy, issue.id)
        assert stored is not None
    return ArchivedCopy(zlib.decompress(stored.html), zlib.decompress(stored.text))
