"""Reading issues: one by number, the unfinished ones, their items, the summaries waiting for the next one,
and an issue's delivery report (``digest status``).

A ``draft`` row (the next issue with an editor's choices, :mod:`newsletter.issues.editorial`) is not an
issue yet: it is never "the newest issue" nor unfinished; asked for by its number it is found, so that a
command on it is refused naming its state.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, exists, func, or_
from sqlmodel import Session, col, select

from newsletter.db import session
from newsletter.errors import NewsletterError
from newsletter.models import Delivery, DeliveryStatus, Issue, IssueStatus, Summary
from newsletter.render import display_order


def waiting_summaries(db: Session, before: datetime | None = None) -> list[Summary]:
    """Summaries in no issue yet and not excluded by an editor, oldest first; with ``before``, only those
    ingested before it (what a firing at that time takes)."""
    # THE item-selection query: every issue (a firing's, an editor's, a draft) picks its summaries here.
    query = select(Summary).where(col(Summary.issue_id).is_(None), col(Summary.excluded).is_(False))
    if before is not None:
        query = query.where(col(Summary.ingested_at) < before)
    return list(db.exec(query.order_by(col(Summary.ingested_at), col(Summary.id))))


def issue_items(db: Session, issue: Issue) -> list[Summary]:
    """The summaries of ``issue`` in the order they arrived (the digest shows them in
    :func:`newsletter.render.display_order`)."""
    query = select(Summary).where(Summary.issue_id == issue.id).order_by(col(Summary.ingested_at), col(Summary.id))
    return list(db.exec(query))


def shown_items(db: Session, issue: Issue) -> list[Summary]:
    """The summaries of ``issue`` in the order its digest shows them (its editor's order and lead)."""
    return display_order(issue_items(db, issue), issue.item_order, issue.lead_id)


NOT_DRAFT = Issue.status != IssueStatus.DRAFT
# An issue that reaches readers: any but a draft or one cancelled before anyone got it.
REACHES_READERS = or_(
    col(Issue.status).notin_([IssueStatus.DRAFT, IssueStatus.CANCELLED]),
    exists().where(Delivery.issue_id == Issue.id, Delivery.status == DeliveryStatus.SENT),
)


def newest_issue(db: Session) -> Issue | None:
    """The issue with the highest number, drafts aside."""
    return db.exec(select(Issue).where(NOT_DRAFT).order_by(col(Issue.number).desc()).limit(1)).first()


def next_number(db: Session) -> int:
    """The number the next issue gets: one more than the newest issue's (drafts aside), 1 for the first."""
    newest = newest_issue(db)
    return newest.number + 1 if newest else 1


def draft_row(db: Session) -> Issue | None:
    """The next issue's draft row, if an editor made a choice for it (there is at most one)."""
    return db.exec(select(Issue).where(Issue.status == IssueStatus.DRAFT).limit(1)).first()


def find_issue(db: Session, number: int | None = None) -> Issue:
    """Issue ``number`` (a draft too), or by default the newest one. Raises NewsletterError when there is none."""
    issue = newest_issue(db) if number is None else db.exec(select(Issue).where(Issue.number == number)).first()
    if issue is None:
        if number is not None:
            raise NewsletterError(f"there is no issue #{number}; {_existing_numbers(db)}")
        raise NewsletterError("no issue has been prepared yet; run `newsletter digest prepare` first")
    return issue


def _existing_numbers(db: Session) -> str:
    """Which issue numbers exist, for an error about one that does not."""
    low, high = db.exec(select(func.min(Issue.number), func.max(Issue.number)).where(NOT_DRAFT)).one()
    if high is None:
        return "no issue has been prepared yet; run `newsletter digest prepare` first"
    if low == high:
        return f"the only issue is #{high}"
    return f"issues go from #{low} to #{high}"


def unfinished_issues(db: Session) -> list[Issue]:
    """Issues whose sending has not finished (paused ones included, cancelled ones not), oldest first."""
    query = (
        select(Issue)
        .where(col(Issue.status).not_in((IssueStatus.SENT, IssueStatus.CANCELLED, IssueStatus.DRAFT)))
        .order_by(col(Issue.number))
    )
    return list(db.exec(query))


def delivery_counts(db: Session, issue: Issue) -> dict[DeliveryStatus, int]:
    """How many deliveries of ``issue`` are in each state (every state present, zero if none)."""
    rows = db.exec(
        select(Delivery.status, func.count()).where(Delivery.issue_id == issue.id).group_by(Delivery.status)
    ).all()
    counts = dict.fromkeys(DeliveryStatus, 0)
    counts.update({DeliveryStatus(status): count for status, count in rows})
    return counts


_ADDRESS = re.compile(r"<?[^\s<>@]+@[^\s<>@]+>?")


@dataclass(frozen=True)
class IssueStatusReport:
    issue: Issue
    counts: dict[DeliveryStatus, int]
    rate_per_minute: float | None  # sent messages per minute between the first and the last one
    errors: list[tuple[str, int]]  # last_error with addresses blanked, most frequent first
    next_retry_at: datetime | None


def issue_status(engine: Engine, number: int | None = None, *, top: int = 10) -> IssueStatusReport:
    """Counts by state, sending rate and errors grouped by reason for one issue (default: the newest)."""
    with session(engine) as db:
        issue = find_issue(db, number)
        counts = delivery_counts(db, issue)
        first, last = db.exec(
            select(func.min(Delivery.sent_at), func.max(Delivery.sent_at)).where(Delivery.issue_id == issue.id)
        ).one()
        rate = None
        if first and last and last > first:
            rate = counts[DeliveryStatus.SENT] / ((last - first).total_seconds() / 60)
        reasons = db.exec(
            select(Delivery.last_error).where(
                Delivery.issue_id == issue.id, col(Delivery.last_error).is_not(None),
                col(Delivery.status).in_([DeliveryStatus.FAILED, DeliveryStatus.RETRY, DeliveryStatus.SKIPPED]),
            )
        ).all()
        grouped = Counter(_ADDRESS.sub("<address>", reason or "") for reason in reasons)
        next_retry = db.exec(
            select(func.min(Delivery.next_attempt_at)).where(
                Delivery.issue_id == issue.id, Delivery.status == DeliveryStatus.RETRY
            )
        ).one()
    return IssueStatusReport(issue, counts, rate, grouped.most_common(top), next_retry)
