"""The send loop and its ledger: every (issue, subscriber) pair is sent once, and a run can always resume.

``send_issue`` renders the issue once, then repeatedly claims a batch of deliveries (a lease with an owner
and an expiry, taken in a short write transaction), personalises and sends them through the backend, and
records all of the batch's results in one transaction, only to rows the sender still holds. An error
releases the batch for the next run; a crash leaves at most the claimed batch in ``sending`` until its
lease (:data:`LEASE`) expires, after which the next run sends it. Rows already ``sent`` are never claimed.
A batch that takes longer than the lease could be claimed by a second sender running at the same time;
keep batches small enough to finish well within it.

Results map onto the ledger like this: SENT → ``sent``; RETRY → ``retry`` with ``next_attempt_at`` from
:data:`RETRY_SCHEDULE` (``failed`` once the schedule is used up); FAILED → ``failed``. A subscriber who left
the list after the issue was prepared is ``skipped``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, func, or_, update
from sqlmodel import Session, col, select

from newsletter.backends import Backend, OutgoingMessage, SendResult, SendStatus
from newsletter.config import Config
from newsletter.db import session
from newsletter.digest import (
    delivery_counts,
    draft_issue,
    find_issue,
    issue_items,
    period_containing,
    unfinished_issues,
)
from newsletter.errors import DeliveryError, InvalidAddress, NewsletterError
from newsletter.message import build_message, make_message_id
from newsletter.models import Delivery, DeliveryStatus, Issue, IssueStatus, Subscriber, SubscriberStatus, utcnow
from newsletter.render import RecipientValues, RenderedIssue, render_issue
from newsletter.tokens import LinkSigner

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=10)
RETRY_SCHEDULE = (
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=12),
    timedelta(days=1),
)
UNFINISHED = (DeliveryStatus.QUEUED, DeliveryStatus.SENDING, DeliveryStatus.RETRY)

Progress = Callable[[int, int, int], None]  # (issue number, done so far, due when the run started)


@dataclass
class SendReport:
    issue: Issue
    total: int = 0  # deliveries that were due when the run started
    sent: int = 0
    retry: int = 0
    failed: int = 0
    skipped: int = 0
    remaining: int = 0  # still queued, sending or waiting for a retry when the run ended

    def count(self, status: DeliveryStatus) -> None:
        """Count one recorded result (sent, retry or failed)."""
        if status is DeliveryStatus.SENT:
            self.sent += 1
        elif status is DeliveryStatus.RETRY:
            self.retry += 1
        else:
            self.failed += 1

    def summary_line(self) -> str:
        state = "finished" if self.issue.status is IssueStatus.SENT else f"{self.remaining} still to send"
        return (
            f"issue #{self.issue.number}: sent {self.sent}, retry later {self.retry}, failed {self.failed}, "
            f"skipped {self.skipped}; {state}"
        )


def send_unfinished(
    engine: Engine,
    config: Config,
    backend: Backend,
    *,
    batch_size: int = 100,
    progress: Progress | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> list[SendReport]:
    """Send what is due of every unfinished issue, oldest first: what ``digest send`` and the weekly job do.

    Raises NewsletterError when no issue was ever prepared or every issue is already sent.
    """
    with session(engine) as db:
        numbers = [issue.number for issue in unfinished_issues(db)]
        if not numbers:
            latest = find_issue(db)  # raises when nothing was ever prepared
            raise NewsletterError(
                f"issue #{latest.number} is already sent and no newer issue is prepared; "
                f"run `newsletter digest prepare`"
            )
    return [
        send_issue(engine, config, backend, number, batch_size=batch_size, progress=progress, clock=clock)
        for number in numbers
    ]


def send_issue(
    engine: Engine,
    config: Config,
    backend: Backend,
    number: int,
    *,
    batch_size: int = 100,
    progress: Progress | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> SendReport:
    """Send the deliveries of issue ``number`` that are due now; returns what this run did.

    Raises NewsletterError for an unknown issue, and DeliveryError when the backend fails as a whole; the
    claimed batch is then released for the next run, so nothing is lost.
    """
    with session(engine) as db:
        issue = find_issue(db, number)
        items = issue_items(db, issue)
        report = SendReport(issue, total=_due_count(db, issue.id, clock()))
        if issue.status is IssueStatus.PREPARED:
            issue.status = IssueStatus.SENDING
            db.add(issue)
            db.commit()
    composer = _Composer(config, issue, render_issue(config, issue, items))
    owner = f"send-{uuid.uuid4().hex[:12]}"
    done = 0
    if progress:
        progress(issue.number, done, report.total)
    with backend:
        while claimed := _claim(engine, issue.id, owner, batch_size, clock()):
            try:
                _send_batch(engine, backend, composer, claimed, owner, report, clock)
            except BaseException:
                _release(engine, [delivery.id for delivery, _ in claimed], owner)
                raise
            done += len(claimed)
            if progress:
                progress(issue.number, done, report.total)
    _finish(engine, report)
    log.info(report.summary_line())
    return report


def _due(issue_id: int, now: datetime) -> Any:
    """Deliveries of the issue that may be claimed at ``now``."""
    return and_(
        Delivery.issue_id == issue_id,
        or_(
            Delivery.status == DeliveryStatus.QUEUED,
            and_(Delivery.status == DeliveryStatus.RETRY, col(Delivery.next_attempt_at) <= now),
            and_(Delivery.status == DeliveryStatus.SENDING, col(Delivery.lease_expires_at) < now),
        ),
    )


def _due_count(db: Session, issue_id: int, now: datetime) -> int:
    return db.exec(select(func.count()).select_from(Delivery).where(_due(issue_id, now))).one()


def _claim(engine: Engine, issue_id: int, owner: str, limit: int, now: datetime) -> list[tuple[Delivery, Subscriber]]:
    """Lease up to ``limit`` due deliveries to ``owner``; returns only the rows this owner got."""
    with session(engine) as db:
        ids = list(db.exec(select(Delivery.id).where(_due(issue_id, now)).order_by(col(Delivery.id)).limit(limit)))
        if not ids:
            return []
        # The due condition is checked again in the UPDATE: a concurrent sender that claimed a row first wins.
        db.execute(
            update(Delivery)
            .where(col(Delivery.id).in_(ids), _due(issue_id, now))
            .values(status=DeliveryStatus.SENDING, claimed_by=owner, lease_expires_at=now + LEASE, updated_at=now)
        )
        db.commit()
        rows = db.exec(
            select(Delivery, Subscriber)
            .join(Subscriber, col(Subscriber.id) == Delivery.subscriber_id)
            .where(col(Delivery.id).in_(ids), Delivery.claimed_by == owner, Delivery.status == DeliveryStatus.SENDING)
            .order_by(col(Delivery.id))
        )
        return list(rows.all())


class _Composer:
    """Turns a claimed delivery into message bytes; everything per issue is computed once here."""

    def __init__(self, config: Config, issue: Issue, rendered: RenderedIssue) -> None:
        self.config = config
        self.issue = issue
        self.rendered = rendered
        self.links = LinkSigner(config)

    def values(self, subscriber: Subscriber) -> RecipientValues:
        return RecipientValues(
            email=subscriber.email,
            name=subscriber.name or "",
            unsubscribe_url=self.links.unsubscribe_url(subscriber.token),
            preferences_url=self.links.preferences_url(subscriber.token),
        )

    def compose(self, delivery_id: int, subscriber: Subscriber) -> OutgoingMessage:
        message_id = make_message_id(self.config, self.issue.number, subscriber.token)
        data = build_message(self.config, self.rendered, self.values(subscriber), message_id=message_id)
        return OutgoingMessage(delivery_id, self.config.newsletter.sender_address, subscriber.email, message_id, data)


def _send_batch(
    engine: Engine,
    backend: Backend,
    composer: _Composer,
    claimed: Sequence[tuple[Delivery, Subscriber]],
    owner: str,
    report: SendReport,
    clock: Callable[[], datetime],
) -> None:
    messages: list[OutgoingMessage] = []
    skipped: list[int] = []
    unsendable: list[SendResult] = []  # an address no message can be built for fails alone
    for delivery, subscriber in claimed:
        assert delivery.id is not None
        if subscriber.status is not SubscriberStatus.ACTIVE:
            skipped.append(delivery.id)
            continue
        try:
            messages.append(composer.compose(delivery.id, subscriber))
        except InvalidAddress as exc:
            unsendable.append(SendResult(delivery.id, SendStatus.FAILED, str(exc)))
    try:
        results = backend.send(messages) if messages else []
    except NewsletterError:
        raise
    except Exception as exc:
        raise DeliveryError(f"the {backend.describe()} backend failed: {exc}; the batch will be sent again") from exc
    message_ids = {m.delivery_id: m.message_id for m in messages}
    _record(engine, owner, [*results, *unsendable], skipped, message_ids, {d.id: d.attempts for d, _ in claimed},
            report, clock())


def _record(
    engine: Engine,
    owner: str,
    results: Sequence[SendResult],
    skipped: Sequence[int],
    message_ids: dict[int, str],
    attempts: dict[int | None, int],
    report: SendReport,
    now: datetime,
) -> None:
    """Write the batch's results in one transaction, only to rows this sender still holds."""
    done = {"claimed_by": None, "lease_expires_at": None, "updated_at": now}
    held = and_(Delivery.claimed_by == owner, Delivery.status == DeliveryStatus.SENDING)
    with session(engine) as db:
        for result in results:
            tried = attempts[result.delivery_id] + 1
            values: dict[str, Any] = {**done, "attempts": tried, "message_id": message_ids.get(result.delivery_id)}
            if result.status is SendStatus.SENT:
                values |= {"status": DeliveryStatus.SENT, "sent_at": now, "last_error": None}
            elif result.status is SendStatus.RETRY and tried <= len(RETRY_SCHEDULE):
                values |= {
                    "status": DeliveryStatus.RETRY,
                    "next_attempt_at": now + RETRY_SCHEDULE[tried - 1],
                    "last_error": result.detail,
                }
            else:
                gave_up = result.status is SendStatus.RETRY
                detail = f"gave up after {tried} attempts: {result.detail}" if gave_up else result.detail
                values |= {"status": DeliveryStatus.FAILED, "last_error": detail}
            written = db.execute(update(Delivery).where(col(Delivery.id) == result.delivery_id, held).values(**values))
            if written.rowcount:
                report.count(values["status"])
        if skipped:
            written = db.execute(
                update(Delivery)
                .where(col(Delivery.id).in_(skipped), held)
                .values(**done, status=DeliveryStatus.SKIPPED, last_error="subscriber left the list")
            )
            report.skipped += written.rowcount
        db.commit()


def _release(engine: Engine, ids: Sequence[int | None], owner: str) -> None:
    """Give back rows this sender claimed but could not finish, so the next run sends them at once."""
    with session(engine) as db:
        db.execute(
            update(Delivery)
            .where(col(Delivery.id).in_(ids), Delivery.claimed_by == owner, Delivery.status == DeliveryStatus.SENDING)
            .values(status=DeliveryStatus.QUEUED, claimed_by=None, lease_expires_at=None, updated_at=utcnow())
        )
        db.commit()


@dataclass(frozen=True)
class PreviewFiles:
    description: str
    html: Path
    text: Path
    eml: Path


def write_preview(
    engine: Engine, config: Config, out_dir: Path, number: int | None = None, *, now: datetime | None = None
) -> PreviewFiles:
    """Write ``issue.html``, ``issue.txt`` and ``sample.eml`` for an issue, personalised for one recipient
    exactly as the send loop would build it.

    Without ``number``: the next issue as a draft when summaries are waiting and this period has no issue
    yet (nothing is saved), otherwise the newest issue. The sample recipient is the first active
    subscriber, or a made-up reader when the list is empty.
    """
    with session(engine) as db:
        issue: Issue | None = None
        if number is None:
            period = period_containing(now or utcnow(), config.schedule.zone)
            if db.exec(select(Issue.id).where(Issue.period_key == period.key)).first() is None:
                draft, items = draft_issue(db, config, period)
                if items:
                    issue, description = draft, f"draft of issue #{draft.number} (not prepared yet)"
            if issue is None and db.exec(select(Issue.id)).first() is None:
                raise NewsletterError(
                    "nothing to render: no issue was prepared and no summary is waiting; run `newsletter ingest` first"
                )
        if issue is None:
            issue = find_issue(db, number)
            items = issue_items(db, issue)
            description = f"issue #{issue.number} ({issue.status.value})"
        sample = db.exec(
            select(Subscriber).where(Subscriber.status == SubscriberStatus.ACTIVE).order_by(col(Subscriber.id))
        ).first() or Subscriber(email="reader@example.org", name="Sample Reader")
    composer = _Composer(config, issue, render_issue(config, issue, items))
    html, text = composer.rendered.personalise(composer.values(sample))
    message = composer.compose(0, sample)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        files = PreviewFiles(description, out_dir / "issue.html", out_dir / "issue.txt", out_dir / "sample.eml")
        files.html.write_text(html, encoding="utf-8")
        files.text.write_text(text, encoding="utf-8")
        files.eml.write_bytes(message.data)
    except OSError as exc:
        raise NewsletterError(f"cannot write the preview into {out_dir} ({exc.strerror})") from None
    return files


def _finish(engine: Engine, report: SendReport) -> None:
    """Mark the issue sent once no delivery is left to try."""
    with session(engine) as db:
        issue = db.get(Issue, report.issue.id)
        assert issue is not None
        counts = delivery_counts(db, issue)
        report.remaining = sum(counts[status] for status in UNFINISHED)
        if report.remaining == 0 and issue.status is not IssueStatus.SENT:
            issue.status = IssueStatus.SENT
            issue.sent_at = utcnow()
            db.add(issue)
            db.commit()
        report.issue = issue
