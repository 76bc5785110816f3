"""An issue's states, and the one table of the steps each state allows.

Every command and job that changes an issue's state goes through :func:`transition`: the send loop
(start, finish, pause itself), ``digest pause / resume / cancel / retry-failed`` and the scheduler. A step
the table does not allow is refused with :class:`~newsletter.errors.TransitionRefused`, one line naming the
issue's state and the step (``issue #3 is cancelled; it cannot be resumed (...)``). The next issue is a
``draft`` once an editor made a choice for it (:mod:`newsletter.issues.editorial`: only a draft takes
choices); :func:`newsletter.issues.prepare_in` prepares it, or creates the issue ``prepared`` when there is
no draft::

    draft ──prepare──► prepared ──send──► sending ──finish──► sent ──retry──► sending
    (edit)                 │                │   ▲
                           ├──pause──►  paused ─resume
                           └──cancel──► cancelled ◄──cancel── sending, paused      (cancelled is final)
"""

from __future__ import annotations

import enum
import logging

from sqlalchemy import Engine, and_, or_, update
from sqlmodel import Session, col

from newsletter.db import session
from newsletter.errors import TransitionRefused
from newsletter.issues.lookup import find_issue
from newsletter.models import Delivery, DeliveryStatus, Issue, IssueStatus, utcnow

log = logging.getLogger(__name__)


class Step(enum.StrEnum):
    """What a command or job asks of an issue."""

    SEND = "send"  # the send loop starts a send, or goes on with an interrupted one
    FINISH = "finish"  # the send loop found no delivery left to try
    PAUSE = "pause"  # `digest pause`, or the send loop when too many messages fail
    RESUME = "resume"  # `digest resume`
    CANCEL = "cancel"  # `digest cancel`: what was not sent is skipped
    RETRY = "retry"  # `digest retry-failed`: the failed deliveries are queued again
    EDIT = "edit"  # an editor's choice (order, lead, note, subject): only while the issue is a draft
    PREPARE = "prepare"  # `digest prepare` or a firing: the draft gets its summaries and deliveries


DRAFT, PREPARED, SENDING, SENT = IssueStatus.DRAFT, IssueStatus.PREPARED, IssueStatus.SENDING, IssueStatus.SENT
PAUSED, CANCELLED = IssueStatus.PAUSED, IssueStatus.CANCELLED

# THE table: (state) -> {step: the state it leads to}. A step missing here is refused.
TRANSITIONS: dict[IssueStatus, dict[Step, IssueStatus]] = {
    DRAFT: {Step.EDIT: DRAFT, Step.PREPARE: PREPARED},
    PREPARED: {Step.SEND: SENDING, Step.PAUSE: PAUSED, Step.CANCEL: CANCELLED, Step.RETRY: PREPARED},
    SENDING: {Step.SEND: SENDING, Step.FINISH: SENT, Step.PAUSE: PAUSED, Step.CANCEL: CANCELLED,
              Step.RETRY: SENDING},
    PAUSED: {Step.RESUME: SENDING, Step.CANCEL: CANCELLED, Step.RETRY: PAUSED},
    SENT: {Step.RETRY: SENDING},
    CANCELLED: {},
}

# The states a send may start from (or go on in): what the send loop, workers and the scheduler look for.
SENDABLE = tuple(state for state, steps in TRANSITIONS.items() if Step.SEND in steps)

_PARTICIPLE = {
    Step.SEND: "sent", Step.FINISH: "marked sent", Step.PAUSE: "paused", Step.RESUME: "resumed",
    Step.CANCEL: "cancelled", Step.RETRY: "retried", Step.EDIT: "edited", Step.PREPARE: "prepared again",
}
_WHAT_NOW = {
    DRAFT: "it is the next issue, not prepared yet; `newsletter digest prepare` prepares it",
    PREPARED: "`newsletter digest send` sends it",
    SENDING: "`newsletter digest send` goes on sending it",
    PAUSED: "`newsletter digest resume {n}` lets it go on",
    SENT: "it went out; `newsletter digest retry-failed {n}` queues its failed deliveries again",
    CANCELLED: "nothing more is sent for it; `newsletter digest prepare` makes a new issue",
}


def allows(state: IssueStatus, step: Step) -> bool:
    return step in TRANSITIONS[state]


def refusal(issue: Issue, step: Step) -> str:
    """The one-line message for ``step`` refused in ``issue``'s state."""
    done = "sent again" if step is Step.SEND and issue.status is SENT else _PARTICIPLE[step]
    return (f"issue #{issue.number} is {issue.status.value}; it cannot be {done} "
            f"({_WHAT_NOW[issue.status].format(n=issue.number)})")


def transition(db: Session, issue: Issue, step: Step) -> Issue:
    """Take ``step`` with ``issue`` (a row of ``db``) as :data:`TRANSITIONS` allows, in ``db``'s transaction
    (the caller commits). The UPDATE names the state the step was judged on, so a command racing another
    (a pause while the send loop finishes) is judged again on the state it finds. Raises TransitionRefused.
    """
    while True:
        target = TRANSITIONS[issue.status].get(step)
        if target is None:
            raise TransitionRefused(refusal(issue, step))
        if target is issue.status:
            return issue
        values: dict[str, object] = {"status": target}
        if target is SENT:
            values["sent_at"] = utcnow()
        elif issue.status is SENT:
            values["sent_at"] = None  # retried: it is sent again once the retries are done
        before = issue.status
        changed = db.execute(
            update(Issue).where(col(Issue.id) == issue.id, col(Issue.status) == before).values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount
        db.refresh(issue)
        if changed:
            log.info("issue #%d: %s → %s (%s)", issue.number, before.value, target.value, step.value)
            return issue


def start_sending(db: Session, issue: Issue) -> Issue:
    """The send loop begins (or goes on with) ``issue``: refused when it is paused, cancelled or sent."""
    return transition(db, issue, Step.SEND)


def finish_sending(db: Session, issue: Issue) -> Issue:
    """Mark ``issue`` sent, now that no delivery is left to try. A paused or cancelled issue stays so, and
    so does one another sender finished meanwhile: not an error, the issue is done either way."""
    if not allows(issue.status, Step.FINISH):
        return issue
    try:
        return transition(db, issue, Step.FINISH)
    except TransitionRefused:  # judged again on the state another sender or a command left (issue refreshed)
        return issue


def _step(engine: Engine, number: int | None, step: Step) -> Issue:
    with session(engine) as db:
        issue = transition(db, find_issue(db, number), step)
        db.commit()
        return issue


def pause_issue(engine: Engine, number: int | None = None) -> Issue:
    """Stop sending issue ``number`` (default: the newest); a running sender stops after its current window.
    :func:`resume_issue` lets it go on."""
    return _step(engine, number, Step.PAUSE)


def resume_issue(engine: Engine, number: int | None = None) -> Issue:
    """Let a paused issue be sent again; the next ``digest send`` (or the scheduler) goes on."""
    return _step(engine, number, Step.RESUME)


def cancel_issue(engine: Engine, number: int | None = None) -> tuple[Issue, int]:
    """Cancel an issue: every delivery not yet sent becomes ``skipped``: at once, or for rows a running
    sender holds, when it gives them back (a crashed sender's rows, once their lease expired). Returns how
    many were skipped at once."""
    now = utcnow()
    with session(engine) as db:
        issue = transition(db, find_issue(db, number), Step.CANCEL)
        skipped = db.execute(
            update(Delivery)
            .where(Delivery.issue_id == issue.id,
                   or_(col(Delivery.status).in_([DeliveryStatus.QUEUED, DeliveryStatus.RETRY]),
                       and_(Delivery.status == DeliveryStatus.SENDING, col(Delivery.lease_expires_at) < now)))
            .values(status=DeliveryStatus.SKIPPED, last_error="issue cancelled", claimed_by=None,
                    lease_expires_at=None, updated_at=now)
        ).rowcount
        db.commit()
        return issue, skipped


def retry_failed(engine: Engine, number: int | None = None) -> tuple[Issue, int]:
    """Queue the issue's ``failed`` deliveries again (attempts start over); returns how many. A sent issue
    with failed deliveries is sending again; one with none stays as it is.

    Subscribers who bounced or left are queued too but are skipped at send time, never mailed.
    """
    with session(engine) as db:
        issue = find_issue(db, number)
        if not allows(issue.status, Step.RETRY):
            raise TransitionRefused(refusal(issue, Step.RETRY))
        count = db.execute(
            update(Delivery)
            .where(Delivery.issue_id == issue.id, Delivery.status == DeliveryStatus.FAILED)
            .values(status=DeliveryStatus.QUEUED, attempts=0, next_attempt_at=None, updated_at=utcnow())
        ).rowcount
        if count:
            issue = transition(db, issue, Step.RETRY)
        db.commit()
        return issue, count
