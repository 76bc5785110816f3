"""The send loop and its ledger: every (issue, subscriber) pair is sent once, and a run can always resume.

``send_issue`` repeatedly claims a batch of deliveries (a lease with an owner and an expiry, taken in a
short write transaction) and streams it to the backend: at most ``backend.max_in_flight`` ×
``delivery.in_flight_factor`` messages are handed over whose results are not yet written. Results are
written every few milliseconds in one transaction, only to rows the sender still holds, and each write
frees places for the next messages, composed meanwhile (see :class:`_Loop`). So a crash (even
``kill -9``) can leave at most that many messages ambiguous: they may have gone out without their result
being written, and are sent again by the next run (their deterministic Message-ID makes the copy
recognisable). Claimed rows not yet handed over go back to ``queued``.

The next run takes over a dead sender's rows when its lease (``delivery.lease``) expires, or at once when
the owner was a process on this machine that is proven dead (its lock file is free, see
:mod:`newsletter.owners`). Rows already ``sent`` are never claimed.

Results map onto the ledger like this: SENT → ``sent``; RETRY → ``retry`` with ``next_attempt_at`` from
``delivery.retry_schedule`` (``failed`` once the schedule is used up); FAILED (5xx) → ``failed`` and a
hard bounce for the subscriber. A subscriber who left the list after the issue was prepared, or none of
whose topics has an item in the issue, is ``skipped`` with the reason in ``last_error``.

The loop stops handing over messages when asked to (``stop``, set by SIGTERM/Ctrl-C), when the issue is
paused or cancelled by another command (read after every write), or when more than
``delivery.pause_error_rate`` of the last ``delivery.pause_window`` results were failures: then it pauses
the issue itself and says so. The messages already handed over are finished and written first.
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, case, exists, func, or_, update
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col, select

from newsletter import owners
from newsletter.backends import Backend, OutgoingMessage, SendResult, SendStatus
from newsletter.backends.base import Stream
from newsletter.bounces import record_bounce
from newsletter.config import Config
from newsletter.db import Patience, database_fault, patiently, session
from newsletter.errors import DatabaseFull, DatabaseUnavailable, DeliveryError, NewsletterError
from newsletter.issues import (
    SENDABLE,
    delivery_counts,
    find_issue,
    finish_sending,
    has_copy,
    issue_items,
    keep_copy,
    pause_issue,
    start_sending,
    unfinished_issues,
    waiting_summaries,
)
from newsletter.issues.prepare import counted
from newsletter.message import Composer, single_line
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    Subscriber,
    SubscriberStatus,
    Summary,
    utcnow,
)

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=10)  # the default of delivery.lease
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
    bounced: int = 0  # subscribers this run marked bounced (5xx)
    stopped: str = ""  # why the run stopped early ("" when it ran out of due deliveries)

    def count(self, status: DeliveryStatus) -> None:
        """Count one recorded result that was not sent (retry or failed); sent ones are counted in bulk."""
        if status is DeliveryStatus.RETRY:
            self.retry += 1
        else:
            self.failed += 1

    def summary_line(self) -> str:
        if self.issue.status is IssueStatus.SENT:
            state = "finished"
        elif self.issue.status in (IssueStatus.PAUSED, IssueStatus.CANCELLED):
            state = f"{self.issue.status.value}, {self.remaining} not sent"
        else:
            state = f"{self.remaining} still to send"
        line = (
            f"issue #{self.issue.number}: sent {self.sent}, retry later {self.retry}, failed {self.failed}, "
            f"skipped {self.skipped}; {state}"
        )
        return f"{line} ({self.stopped})" if self.stopped else line


def send_unfinished(
    engine: Engine,
    config: Config,
    backend: Backend,
    *,
    batch_size: int | None = None,
    progress: Progress | None = None,
    clock: Callable[[], datetime] = utcnow,
    stop: threading.Event | None = None,
) -> list[SendReport]:
    """Send what is due of every unfinished issue, oldest first: what ``digest send`` and the scheduler's
    retry job do. Paused and cancelled issues are left alone.

    Raises NewsletterError when no issue was ever prepared, or none is left to send.
    """
    with session(engine) as db:
        issues = unfinished_issues(db)
        numbers = [issue.number for issue in issues if issue.status in SENDABLE]
        if not numbers:
            paused = [f"#{i.number}" for i in issues if i.status is IssueStatus.PAUSED]
            if paused:
                raise NewsletterError(
                    f"issue {', '.join(paused)} is paused; run `newsletter digest resume N` to go on sending"
                )
            latest = find_issue(db)  # raises when nothing was ever prepared
            waiting = len(waiting_summaries(db))
            then = (f"{counted(waiting, 'summary')} {'is' if waiting == 1 else 'are'} waiting: `newsletter digest "
                    f"prepare` makes the next issue" if waiting else "no summary is waiting for a next one")
            raise NewsletterError(
                f"issue #{latest.number} is already {latest.status.value} and no newer issue is prepared; {then}"
            )
    reports = []
    for number in numbers:
        reports.append(send_issue(engine, config, backend, number, batch_size=batch_size, progress=progress,
                                  clock=clock, stop=stop))
        if stop is not None and stop.is_set():
            break
    return reports


def send_issue(
    engine: Engine,
    config: Config,
    backend: Backend,
    number: int,
    *,
    batch_size: int | None = None,
    progress: Progress | None = None,
    clock: Callable[[], datetime] = utcnow,
    stop: threading.Event | None = None,
    patience: Patience | None = None,
) -> SendReport:
    """Send the deliveries of issue ``number`` that are due now; returns what this run did. The first send
    of an issue stores the archive's copy of it (:func:`newsletter.issues.keep_copy`).

    A database that goes away meanwhile is waited for as ``patience`` allows (default:
    ``database.outage_limit``, ended early by ``stop``), each ledger write tried again as a whole.

    Raises NewsletterError for an unknown issue, TransitionRefused for a paused, cancelled or sent one,
    DeliveryError when the backend fails as a whole (the claimed batch is then released for the next run, so
    nothing is lost), and DatabaseUnavailable / DatabaseFull when the database stays away longer or its disk
    is full.
    """
    patience = patience or Patience(config.database.outage_limit_time, stop)
    started = time.monotonic()
    issue, items, report = patiently(lambda: _start(engine, number, clock()), patience)
    composer = Composer(config, issue, items, backend.extra_headers(), dot_stuffed=backend.wants_dot_stuffed)
    if not patiently(lambda: has_copy(engine, issue), patience):
        everything = composer.template([])  # the render the messages are built from: no extra MJML compile
        assert everything is not None  # an issue has at least one item
        # keep_copy keeps the first copy stored, so a try again after a lost commit changes nothing
        patiently(lambda: keep_copy(engine, config, issue, everything.rendered), patience)
    if progress:
        progress(issue.number, 0, report.total)
    with backend, owners.Owner(owners.runtime_folder(engine.url)) as owner:
        loop = _Loop(engine, config, backend, composer, report, clock, stop, owner.name, patience)
        loop.run(batch_size or config.delivery.batch_size, progress)
    patiently(lambda: _finish(engine, report), patience)
    seconds = round(time.monotonic() - started, 3)
    log.info("%s (%.1f s)", report.summary_line(), seconds, extra={
        "issue": issue.number, "sent": report.sent, "retry": report.retry, "failed": report.failed,
        "skipped": report.skipped, "remaining": report.remaining, "seconds": seconds})
    return report


def _start(engine: Engine, number: int, now: datetime) -> tuple[Issue, list[Summary], SendReport]:
    """The issue to send (refused when it is not sendable), its items and an empty report; marks it sending."""
    with session(engine) as db:
        issue = start_sending(db, find_issue(db, number))
        items = issue_items(db, issue)
        report = SendReport(issue, total=_due_count(db, issue.id, now))
        db.commit()
    return issue, items, report


def work(
    engine: Engine,
    config: Config,
    backend: Backend,
    *,
    ready: Callable[[int], bool] = lambda number: True,
    until_done: bool = False,
    poll: float = 5.0,
    recheck: float = 60.0,
    batch_size: int | None = None,
    clock: Callable[[], datetime] = utcnow,
    stop: threading.Event | None = None,
) -> list[SendReport]:
    """What ``newsletter worker`` does: send the due deliveries of every prepared or sending issue, side by
    side with any number of other workers sharing the database, until ``stop`` is set.

    Between passes it waits ``poll`` seconds, so it picks up new issues, retries that come due and rows
    whose holder died (lease expired, or a process on this machine proven dead). ``ready(number)`` is asked
    before an issue's first message (the pre-send checks); an issue it refuses is left alone and asked
    about again after ``recheck`` seconds, so a fixed template is picked up without a restart. When the
    backend fails as a whole (a server that is down, a refused login) the error is logged and the issue
    tried again on the next pass. A database that goes away is waited for (see :func:`~newsletter.db.patiently`):
    for ever, or with ``until_done`` for ``database.outage_limit``. With ``until_done`` it returns once no
    issue it may send has a queued or leased delivery (retries waiting for their time do not count), and
    raises the backend's DeliveryError instead of waiting for the server, and DatabaseUnavailable or
    DatabaseFull instead of waiting longer. Returns one report per issue and pass that found something to do.
    """
    stop = stop or threading.Event()
    patience = Patience(config.database.outage_limit_time if until_done else None, stop)
    approved: set[int] = set()
    refused_at: dict[int, float] = {}  # issue number -> when ready() last refused it (monotonic)
    reports: list[SendReport] = []

    def look() -> tuple[list[Issue], set[int]]:
        with session(engine) as db:
            issues = [issue for issue in unfinished_issues(db) if issue.status in SENDABLE]
            return issues, {i.number for i in issues if _due_count(db, i.id, clock())}

    try:
        while not stop.is_set():
            issues, due = patiently(look, patience)
            for number in [issue.number for issue in issues]:
                if not _work_on(number, due, approved, refused_at, recheck, ready, patience):
                    continue
                try:
                    report = send_issue(engine, config, backend, number, batch_size=batch_size, clock=clock,
                                        stop=stop, patience=patience)
                except (DeliveryError, DatabaseFull) as exc:
                    if until_done:
                        raise
                    log.error("issue #%d: %s; trying again in %g s", number, exc, poll)
                    continue
                except DatabaseUnavailable:  # beyond the limit (--until-done), or stopped while waiting
                    raise
                except NewsletterError as exc:  # paused or cancelled since the list was read
                    log.info("issue #%d: %s", number, exc)
                    continue
                if report.total:
                    reports.append(report)
            numbers = [i.number for i in issues if i.number not in refused_at]
            if until_done and not patiently(lambda: _leftover(engine, numbers), patience):
                break
            stop.wait(poll)
    except DatabaseUnavailable as exc:
        if not stop.is_set():
            raise
        log.warning("%s; stopping", exc)  # asked to stop while waiting for the database
    return reports


def _work_on(number: int, due: set[int], approved: set[int], refused_at: dict[int, float], recheck: float,
             ready: Callable[[int], bool], patience: Patience) -> bool:
    """Whether a worker's pass sends issue ``number``: something is due and it passed ``ready`` (asked
    again ``recheck`` seconds after a refusal)."""
    if number not in due:  # nothing to claim: do not connect to the server for nothing
        return False
    if number not in approved:
        if number in refused_at and time.monotonic() - refused_at[number] < recheck:
            return False
        if not patiently(lambda: ready(number), patience):
            refused_at[number] = time.monotonic()
            return False
        approved.add(number)
        refused_at.pop(number, None)
    return True


def _leftover(engine: Engine, numbers: Sequence[int]) -> int:
    """Queued or leased deliveries of the sendable issues among ``numbers``."""
    with session(engine) as db:
        return db.exec(
            select(func.count()).select_from(Delivery).join(Issue, col(Issue.id) == Delivery.issue_id).where(
                col(Issue.number).in_(numbers), col(Issue.status).in_(SENDABLE),
                col(Delivery.status).in_([DeliveryStatus.QUEUED, DeliveryStatus.SENDING]),
            )
        ).one()


def _due_kinds(now: datetime) -> tuple[Any, ...]:
    """The states in which a delivery may be claimed at ``now``: queued, a retry whose time has come, or
    sending under a lease that expired."""
    return (
        Delivery.status == DeliveryStatus.QUEUED,
        and_(Delivery.status == DeliveryStatus.RETRY, col(Delivery.next_attempt_at) <= now),
        and_(Delivery.status == DeliveryStatus.SENDING, col(Delivery.lease_expires_at) < now),
    )


def _due(issue_id: int | None, now: datetime) -> Any:
    """Deliveries of the issue that may be claimed at ``now``."""
    return and_(Delivery.issue_id == issue_id, or_(*_due_kinds(now)))


def _due_count(db: Session, issue_id: int | None, now: datetime) -> int:
    orphaned = db.exec(
        select(func.count()).select_from(Delivery).where(
            Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.SENDING,
            col(Delivery.claimed_by).in_(_dead_owners(db, issue_id)),
        )
    ).one()
    return db.exec(select(func.count()).select_from(Delivery).where(_due(issue_id, now))).one() + orphaned


def due_now(db: Session, issue: Issue, now: datetime | None = None) -> int:
    """How many deliveries of ``issue`` a send at ``now`` would claim (0: a send would do nothing)."""
    return _due_count(db, issue.id, now or utcnow())


def _dead_owners(db: Session, issue_id: int | None) -> list[str]:
    """Owners of ``sending`` rows proven dead: processes of this machine whose lock is free (a pid proves
    nothing: another PID namespace, a reused pid). Others' rows wait for their lease."""
    holders = db.exec(
        select(Delivery.claimed_by).where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.SENDING)
        .distinct()
    ).all()
    return owners.dead(owners.runtime_folder(db.get_bind().url), [holder for holder in holders if holder])


def _claimable(db: Session, issue_id: int | None, now: datetime, limit: int) -> list[int]:
    """Up to ``limit`` ids of due deliveries, in id order: queued ones first, then retries whose time has
    come, then rows whose lease expired. Each kind is read along the (issue, status, id) index, so a claim
    costs the same at the millionth row as at the first (one query over all three kinds made the database
    sort every due row of the issue for each claim)."""
    ids: list[int] = []
    for kind in _due_kinds(now):
        if len(ids) >= limit:
            break
        ids += db.exec(
            select(Delivery.id).where(Delivery.issue_id == issue_id, kind).order_by(col(Delivery.id))
            .limit(limit - len(ids)).with_for_update(skip_locked=True)
        ).all()
    return ids


def _claim(engine: Engine, issue_id: int | None, owner: str, limit: int, now: datetime,
           lease: timedelta) -> list[Recipient]:
    """Lease up to ``limit`` due deliveries to ``owner``; returns only the rows this owner got."""
    with session(engine) as db:
        dead = _dead_owners(db, issue_id)
        if dead:
            log.warning("taking over deliveries of sender(s) that are no longer running: %s", ", ".join(dead))
            db.execute(
                update(Delivery)
                .where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.SENDING,
                       col(Delivery.claimed_by).in_(dead))
                .values(status=DeliveryStatus.QUEUED, claimed_by=None, lease_expires_at=None, updated_at=now)
            )
            db.commit()
            owners.forget(owners.runtime_folder(engine.url), dead)
        # PostgreSQL: FOR UPDATE SKIP LOCKED lets concurrent workers each take different rows without waiting.
        # SQLite ignores it; its short write transaction and the due condition checked again in the UPDATE
        # make a concurrent sender that claimed a row first win.
        while True:
            ids = _claimable(db, issue_id, now, limit)
            if not ids:
                return []
            db.execute(
                update(Delivery)
                # by id alone: with the issue in the condition SQLite scans the issue's whole index
                .where(col(Delivery.id).in_(ids), or_(*_due_kinds(now)))
                .values(status=DeliveryStatus.SENDING, claimed_by=owner, lease_expires_at=now + lease, updated_at=now)
            )
            db.commit()
            rows = db.execute(
                select(Delivery.id, Delivery.attempts, Subscriber.id, Subscriber.email, Subscriber.name,
                       Subscriber.status, Subscriber.topics, Subscriber.token)
                .join(Subscriber, col(Subscriber.id) == Delivery.subscriber_id)
                .where(col(Delivery.id).in_(ids), Delivery.claimed_by == owner,
                       Delivery.status == DeliveryStatus.SENDING)
                .order_by(col(Delivery.id))
            ).all()
            if rows:  # else other senders took every one of them first: look again
                return [Recipient(*row) for row in rows]


@dataclass(frozen=True)
class Recipient:
    """One claimed delivery and what the loop needs of its subscriber: plain values, not ORM objects
    (building two SQLModel instances per row was a tenth of the sender's time)."""

    delivery_id: int
    attempts: int
    subscriber_id: int
    email: str
    name: str | None
    status: SubscriberStatus
    topics: list[str]
    token: str


@dataclass
class _Window:
    """Outcomes of claimed deliveries written to the ledger together, in one transaction."""

    claimed: list[Recipient] = field(default_factory=list)
    results: list[SendResult] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)  # delivery id -> reason
    bounce: set[int] = field(default_factory=set)  # delivery ids whose FAILED result is a hard bounce
    message_ids: dict[int, str] = field(default_factory=dict)
    handed_over: int = 0  # how many of the results are for messages the backend was given

    def __len__(self) -> int:
        return len(self.claimed)


# How long results wait for the ledger at most while places are left; half the places holding results
# that wait for it makes the write happen at once.
WRITE_EVERY = 0.005


class _Loop:
    """Claims batches and streams them to the backend (:meth:`Backend.stream`), with at most ``places``
    (``max_in_flight`` × ``delivery.in_flight_factor``) messages handed over whose results are not written.

    The next messages are composed while the backend sends, and handed over as places come free; results
    are written in one transaction every few milliseconds (:data:`WRITE_EVERY`), or at once when half the
    places hold results that wait for the ledger, so a backend that takes messages one by one (SMTP) never
    waits for the ledger. A backend that sends windows (the default stream) is given the next full window
    once the last one is written. The issue's status is read after every write, and the lease extended.
    """

    def __init__(self, engine: Engine, config: Config, backend: Backend, composer: Composer, report: SendReport,
                 clock: Callable[[], datetime], stop: threading.Event | None, owner: str, patience: Patience) -> None:
        self.engine, self.config, self.backend, self.composer = engine, config, backend, composer
        self.report, self.clock, self.stop = report, clock, stop
        self.owner, self.patience = owner, patience
        self.database_failed = False  # the database stayed away longer than patience allows
        self.recent: deque[bool] = deque(maxlen=config.delivery.pause_window)  # True = an error
        self.failures = 0  # how many of ``recent`` are errors
        self.expires_at = clock()  # when the lease on the rows held runs out (set by each claim)
        self.held: set[int] | None = None  # the batch's rows still held, once the lease ran out (None: all)
        self._status = select(Issue.status).where(Issue.id == report.issue.id)
        self.done = 0  # claimed rows finished: written, or left to a sender that took them over

    def run(self, batch_size: int, progress: Progress | None) -> None:
        issue_id, lease = self.report.issue.id, self.config.delivery.lease_time
        in_flight = self.backend.max_in_flight
        places = in_flight * self.config.delivery.in_flight_factor if in_flight else batch_size
        todo: deque[Recipient] = deque()  # claimed, not composed yet
        composed: deque[tuple[Recipient, OutgoingMessage]] = deque()  # not handed over yet
        out: dict[int, tuple[Recipient, str]] = {}  # handed over, no result yet: the row and its Message-ID
        unfinished: dict[int, Recipient] = {}  # claimed, not written: given back at the end
        self.waiting = _Window()  # outcomes for the next write
        self.last_write = time.monotonic()
        stopping = exhausted = False
        stream = self.backend.stream()
        try:
            while True:
                if not (todo or composed or stopping or exhausted):
                    if self._should_stop():
                        stopping = True
                    elif claimed := self._db(
                            lambda: _claim(self.engine, issue_id, self.owner, batch_size, self.clock(), lease)):
                        self._claimed(claimed, lease, holding=bool(unfinished))
                        todo.extend(claimed)
                        unfinished.update((person.delivery_id, person) for person in claimed)
                    else:
                        exhausted = True
                free = places - len(out) - self.waiting.handed_over
                if composed and not stopping and free > 0 and (len(composed) >= free or not todo) and stream.ready():
                    handing = [composed.popleft() for _ in range(min(free, len(composed)))]
                    if self.held is not None:
                        handing = self._leave_taken_over(handing, unfinished)
                    out.update((person.delivery_id, (person, message.message_id)) for person, message in handing)
                    stream.put([message for _, message in handing])
                while todo and len(composed) < places and not stopping:  # composed ahead, in one go
                    self._compose(todo.popleft(), composed)
                if out:  # woken once half the places hold results, or when the next write is due
                    wait = max(self.last_write + WRITE_EVERY - time.monotonic(), 0) if self.waiting else None
                    self._arrived(stream.take(wait, max(1, places // 2 - self.waiting.handed_over)), out)
                if self.waiting and (stopping or not out or 2 * self.waiting.handed_over >= places
                                     or time.monotonic() - self.last_write >= WRITE_EVERY):
                    status = self._write(unfinished, progress)
                    stopping = stopping or self._should_stop(status)
                    self._keep_lease()
                if not (out or self.waiting) and (stopping or exhausted and not (todo or composed)):
                    break
        except BaseException as exc:
            if out and not isinstance(exc, DeliveryError):
                self._drain(stream, out)  # this thread failed with messages out: try to keep their results
            if self.waiting:
                try:
                    self._write(unfinished, progress)
                except NewsletterError as exc:  # the database is gone for good, or its disk is full
                    log.error("could not record the results of the messages in flight (%s); they will be sent "
                              "again", exc)
                except Exception:
                    log.exception("could not record the results of the messages in flight; they will be sent again")
            raise
        finally:
            stream.close()
            # rows stopped early, or whose messages failed, go back to the queue for the next run
            self._give_back(list(unfinished.values()))

    def _claimed(self, claimed: Sequence[Recipient], lease: timedelta, *, holding: bool) -> None:
        """A new batch: its lease runs out ``lease`` from now (or when an earlier batch's does, if rows of it
        are still out), and all its rows are held."""
        expires_at = self.clock() + lease
        self.expires_at = min(self.expires_at, expires_at) if holding else expires_at
        self.held = None

    def _arrived(self, results: Sequence[SendResult], out: dict[int, tuple[Recipient, str]]) -> None:
        for result in results:
            person, message_id = out.pop(result.delivery_id)
            self.waiting.claimed.append(person)
            self.waiting.results.append(result)
            self.waiting.message_ids[result.delivery_id] = message_id
            self.waiting.handed_over += 1
            if result.status is SendStatus.FAILED and result.bounce:
                self.waiting.bounce.add(result.delivery_id)

    def _drain(self, stream: Stream, out: dict[int, tuple[Recipient, str]]) -> None:
        """Wait for the results of the messages out (the backend's own timeouts bound the wait)."""
        try:
            while out and (results := stream.take(None)):
                self._arrived(results, out)
        except Exception as exc:  # noqa: BLE001  the backend failed too: what is left goes back to the queue
            log.error("could not wait for the messages in flight (%s)", exc)

    def _write(self, unfinished: dict[int, Recipient], progress: Progress | None) -> IssueStatus:
        """Write the outcomes waiting, in one transaction; the issue's status read in it."""
        window, self.waiting = self.waiting, _Window()
        try:
            status: IssueStatus = self._db(lambda: self._record_once(window))
        except BaseException:
            self.waiting = window  # not written: the caller may try once more
            raise
        self.last_write = time.monotonic()
        for person in window.claimed:
            del unfinished[person.delivery_id]
        self.done += len(window)
        if progress:
            progress(self.report.issue.number, self.done, self.report.total)
        self._watch_errors(window.results)
        return status

    def _db(self, call: Callable[[], Any]) -> Any:
        """``call()``, one unit of ledger work, tried again while the database is unavailable, as long as
        ``patience`` allows. Once the database has failed the loop, the clean-up gets a single try."""
        try:
            if not self.database_failed:
                return patiently(call, self.patience)
            try:
                return call()
            except DBAPIError as exc:
                raise (database_fault(exc) or exc) from None
        except (DatabaseUnavailable, DatabaseFull):
            self.database_failed = True
            raise

    def _give_back(self, claimed: Sequence[Recipient]) -> None:
        """Release the batch's rows not finished; when the database already failed the loop, a failure here
        is logged and the loop's own error goes on (the lock file left free lets the next sender on this
        machine take the rows over at once)."""
        failing = self.database_failed
        try:
            self._db(lambda: _release(self.engine, [r.delivery_id for r in claimed], self.owner))
        except (DatabaseUnavailable, DatabaseFull):
            if not failing:
                raise
            log.error("could not give back the claimed deliveries either: the next sender on this machine takes "
                      "them over at once, others once their lease expires")

    def _should_stop(self, status: IssueStatus | None = None) -> bool:
        """Whether to stop: asked to, paused by the error rate, or the issue paused or cancelled by another
        command (``status``, read after the last write, or now)."""
        if self.report.stopped:
            return True
        if self.stop is not None and self.stop.is_set():
            self.report.stopped = "stopped on request; in-flight messages were recorded"
            return True
        if status is None:
            status = self._db(self._issue_status)
        if status not in SENDABLE:
            self.report.stopped = f"the issue was {status.value} by another command"
            return True
        return False

    def _issue_status(self) -> IssueStatus:
        with self.engine.connect() as connection:  # before a claim: a plain connection costs half a Session
            return connection.execute(self._status).scalar_one()

    def _keep_lease(self) -> None:
        """Once a tenth of the lease is used up, extend it on the rows of the batch this sender still holds
        (after a write of results, so at most one UPDATE per tenth of the lease), so a batch that takes longer
        than ``delivery.lease`` (a slow server, a rate limit) is not taken over, and sent a second time, by
        another sender while this one is still working through it; only messages that stay on the wire
        without a result for nine tenths of the lease can outlast it.

        If the lease had already run out, another sender may have taken over rows of the batch meanwhile:
        ``self.held`` then says which rows are still this sender's.
        """
        lease = self.config.delivery.lease_time
        if self.clock() < self.expires_at - lease * 0.9:
            return

        def extend() -> tuple[datetime, set[int]]:
            now = self.clock()  # read again on every try: a wait for the database may have used up the lease
            with session(self.engine) as db:
                held = set(db.execute(
                    update(Delivery)
                    .where(Delivery.issue_id == self.report.issue.id, Delivery.claimed_by == self.owner,
                           Delivery.status == DeliveryStatus.SENDING)
                    .values(lease_expires_at=now + lease)
                    .returning(Delivery.id)
                    .execution_options(synchronize_session=False)
                ).scalars())
                db.commit()
            return now, held

        now, held = self._db(extend)
        ran_out = now >= self.expires_at
        if ran_out:
            self.held = held
        self.expires_at = now + lease

    def _leave_taken_over(self, handing: list[tuple[Recipient, OutgoingMessage]],
                          unfinished: dict[int, Recipient]) -> list[tuple[Recipient, OutgoingMessage]]:
        """``handing`` without the messages of rows another sender took over: they are its to send now
        (what is recorded for them is ignored anyway, since :func:`_record` writes only to rows still held)."""
        assert self.held is not None
        kept = [(person, message) for person, message in handing if person.delivery_id in self.held]
        if len(kept) < len(handing):
            log.warning("issue #%d: %d deliveries were taken over by another sender while this one's lease had "
                        "run out; leaving them to it", self.report.issue.number, len(handing) - len(kept))
            for person, _ in handing:
                if person.delivery_id not in self.held:
                    del unfinished[person.delivery_id]
                    self.done += 1
        return kept

    def _compose(self, person: Recipient, composed: deque[tuple[Recipient, OutgoingMessage]]) -> None:
        """The message for one claimed row, added to ``composed``; or its outcome, waiting for the next write
        (skipped, or failed when its address or values cannot make a message). Any other error is a bug
        that would hit the next subscribers too: it stops the send (the messages out are still finished and
        written, the rest go back to the queue) rather than failing subscribers for good."""
        if person.status is not SubscriberStatus.ACTIVE:
            self.waiting.claimed.append(person)
            self.waiting.skipped[person.delivery_id] = f"subscriber is {person.status.value}"
            return
        template = self.composer.template(person.topics)
        if template is None:
            self.waiting.claimed.append(person)
            self.waiting.skipped[person.delivery_id] = f"no items this issue for topics: {', '.join(person.topics)}"
            return
        try:
            message = self.composer.compose(person.delivery_id, person, template)
        except ValueError as exc:  # InvalidAddress is one: this subscriber's message fails alone, with its reason
            self.waiting.claimed.append(person)
            self.waiting.results.append(SendResult(person.delivery_id, SendStatus.FAILED,
                                                   f"the message could not be built: {exc}", bounce=False))
            return
        composed.append((person, message))

    def _record_once(self, window: _Window) -> IssueStatus:
        """One try at :func:`_record`; the report's counts are put back when it fails, so a try again counts once."""
        before = copy.copy(self.report)
        try:
            return _record(self.engine, self.config, self.owner, window, self.report, self.clock())
        except BaseException:
            vars(self.report).update(vars(before))
            raise

    def _watch_errors(self, results: Sequence[SendResult]) -> None:
        """Pause the issue when more than ``delivery.pause_error_rate`` of the last ``delivery.pause_window``
        results were failures, at any point in the stream of results (however they are grouped in writes)."""
        limit = self.config.delivery.pause_error_rate
        rate = 0.0
        for result in results:
            if len(self.recent) == self.recent.maxlen:
                self.failures -= self.recent[0]
            self.recent.append(result.status is not SendStatus.SENT)
            self.failures += self.recent[-1]
            if len(self.recent) == self.recent.maxlen and self.failures / len(self.recent) > limit:
                rate = self.failures / len(self.recent)
                break
        if rate and not self.report.stopped.startswith("paused: "):  # once per run
            reason = (
                f"paused: {rate:.0%} of the last {len(self.recent)} messages failed (limit {limit:.0%}); "
                f"check `newsletter digest status {self.report.issue.number}`, then "
                f"`newsletter digest resume {self.report.issue.number}`"
            )
            try:
                pause_issue(self.engine, self.report.issue.number)
            except NewsletterError:  # another sender or an operator paused or cancelled it first
                pass
            log.warning("issue #%d %s", self.report.issue.number, reason)
            self.report.stopped = reason


_TABLE = Delivery.__table__  # type: ignore[attr-defined]
_HELD = and_(_TABLE.c.claimed_by == bindparam("owner"), _TABLE.c.status == DeliveryStatus.SENDING)
_AT_MOST = 200  # rows per UPDATE of sent rows: far below any database's limit on parameters


@functools.lru_cache(maxsize=_AT_MOST)
def _sent_update(rows: int) -> Any:
    """One UPDATE for ``rows`` sent rows held by this sender, each with its Message-ID (a CASE over the ids).

    One statement per write, built once per number of rows: an ORM UPDATE per row was most of the sender's
    time, and an executemany of one value per row cost a round trip through the database driver, and a
    turn at the interpreter's lock, per row.
    """
    ids = [bindparam(f"id{n}") for n in range(rows)]
    message_ids = case(*((row, bindparam(f"mid{n}")) for n, row in enumerate(ids)), value=_TABLE.c.id)
    return update(_TABLE).where(_TABLE.c.id.in_(ids), _HELD).values(
        status=DeliveryStatus.SENT, attempts=_TABLE.c.attempts + 1, message_id=message_ids,
        sent_at=bindparam("now"), updated_at=bindparam("now"), claimed_by=None, lease_expires_at=None,
        last_error=None)


def _write_sent(connection: Connection, owner: str, sent: Sequence[SendResult], message_ids: dict[int, str],
                now: datetime) -> int:
    """Mark ``sent`` rows this sender still holds as sent; how many it held."""
    written = 0
    for start in range(0, len(sent), _AT_MOST):
        part = sent[start:start + _AT_MOST]
        values: dict[str, Any] = {"owner": owner, "now": now}
        for n, result in enumerate(part):
            values[f"id{n}"] = result.delivery_id
            values[f"mid{n}"] = message_ids.get(result.delivery_id)
        written += connection.execute(_sent_update(len(part)), values).rowcount
    return written


def _record(engine: Engine, config: Config, owner: str, window: _Window, report: SendReport,
            now: datetime) -> IssueStatus:
    """Write the outcomes in one transaction, only to rows this sender still holds (a row whose lease ran
    out may have been taken over: its ``attempts`` is then the other sender's to count); returns the issue's
    status, read in the same transaction."""
    status = select(Issue.status).where(Issue.id == report.issue.id)
    sent = [r for r in window.results if r.status is SendStatus.SENT]
    if len(sent) == len(window.claimed):  # the common case: a plain connection, one UPDATE
        with engine.begin() as connection:
            report.sent += _write_sent(connection, owner, sent, window.message_ids, now)
            return connection.execute(status).scalar_one()
    attempts = {r.delivery_id: r.attempts for r in window.claimed}
    subscribers = {r.delivery_id: r.subscriber_id for r in window.claimed}
    done = {"claimed_by": None, "lease_expires_at": None, "updated_at": now}
    held = and_(Delivery.claimed_by == owner, Delivery.status == DeliveryStatus.SENDING)
    schedule = config.delivery.retry_delays
    with session(engine) as db:
        report.sent += _write_sent(db.connection(), owner, sent, window.message_ids, now)
        for result in window.results:
            if result.status is SendStatus.SENT:
                continue
            tried = attempts[result.delivery_id] + 1
            reply = single_line(result.detail)  # outside text: no NUL (PostgreSQL cannot store it), one line
            values: dict[str, Any] = {
                **done, "attempts": tried, "message_id": window.message_ids.get(result.delivery_id)
            }
            if result.status is SendStatus.RETRY and tried <= len(schedule):
                values |= {
                    "status": DeliveryStatus.RETRY,
                    "next_attempt_at": now + schedule[tried - 1],
                    "last_error": reply,
                }
            else:
                gave_up = result.status is SendStatus.RETRY
                detail = f"gave up after {tried} attempts: {reply}" if gave_up else reply
                values |= {"status": DeliveryStatus.FAILED, "last_error": detail}
            written = db.execute(update(Delivery).where(col(Delivery.id) == result.delivery_id, held).values(**values))
            if not written.rowcount:
                continue
            report.count(values["status"])
            if result.delivery_id in window.bounce:
                subscriber = db.get(Subscriber, subscribers[result.delivery_id])
                assert subscriber is not None
                detail = {"reason": reply, "issue": str(report.issue.number), "source": "smtp"}
                report.bounced += record_bounce(db, config, subscriber, hard=True, detail=detail, now=now)
        for delivery_id, reason in window.skipped.items():
            written = db.execute(
                update(Delivery)
                .where(col(Delivery.id) == delivery_id, held)
                .values(**done, status=DeliveryStatus.SKIPPED, last_error=reason)
            )
            report.skipped += written.rowcount
        issue_status = db.exec(status).one()
        db.commit()
    return issue_status


def _release(engine: Engine, ids: Sequence[int | None], owner: str) -> None:
    """Give back rows this sender claimed but could not finish, so the next run sends them at once; rows
    of an issue cancelled meanwhile become ``skipped`` instead."""
    held = and_(col(Delivery.id).in_(ids), Delivery.claimed_by == owner, Delivery.status == DeliveryStatus.SENDING)
    cancelled = exists().where(Issue.id == Delivery.issue_id, Issue.status == IssueStatus.CANCELLED)
    with session(engine) as db:
        db.execute(
            update(Delivery)
            .where(held, cancelled)
            .values(status=DeliveryStatus.SKIPPED, last_error="issue cancelled", claimed_by=None,
                    lease_expires_at=None, updated_at=utcnow())
        )
        db.execute(
            update(Delivery)
            .where(held)
            .values(status=DeliveryStatus.QUEUED, claimed_by=None, lease_expires_at=None, updated_at=utcnow())
        )
        db.commit()


def _finish(engine: Engine, report: SendReport) -> None:
    """Mark the issue sent once no delivery is left to try (a paused or cancelled issue stays so)."""
    with session(engine) as db:
        issue = db.get(Issue, report.issue.id)
        assert issue is not None
        counts = delivery_counts(db, issue)
        report.remaining = sum(counts[status] for status in UNFINISHED)
        if report.remaining == 0:
            issue = finish_sending(db, issue)
            db.commit()
        report.issue = issue
