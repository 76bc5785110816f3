"""Counting clicks on the item links of issues (``tracking.clicks``): where a click link leads, and the count.

A click link (``<site_url>/c/<token>``, :meth:`~newsletter.tokens.LinkSigner.click_url`) names an issue, an
item and the hash of the URL it was made for. :class:`Targets` looks the hash up among the issue's own URLs:
the links in its archive copy (stored at the first send and kept for ever) and its items' URLs (while the
summaries exist). A hash found in neither leads nowhere: whatever a token says, nobody is sent anywhere the
issue did not link to.

:class:`ClickRecorder` keeps each click in memory with the network it came from, decides after
:data:`~newsletter.scanners.BURST` seconds whether it looks like a person (:mod:`newsletter.scanners`), and
writes the counts every :data:`FLUSH_SECONDS` in one transaction. What is written depends on the mode:

- without ``tracking.per_subscriber``: two numbers per item link of an issue (``click_count``: clicks, and
  likely human clicks), nothing else: no time, no address, no user agent;
- with it: also a row per click of a known subscriber (``subscriber_click``: who, which link, when, whether
  it looked human), exported and erased with them.

Clicks on an issue nobody has received yet (an editor trying a prepared issue's links) are not counted. The counts are
kept per server process until written: a process killed without its shutdown loses at most the last few
seconds of clicks, and bursts are recognised within one process.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from bisect import bisect_left, bisect_right
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser

from sqlalchemy import Engine, and_, func, insert, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Session, col, select

from newsletter.config import Config
from newsletter.db import describe, session
from newsletter.issues.lookup import issue_items
from newsletter.models import ClickCount, Delivery, Issue, IssueCopy, Subscriber, SubscriberClick
from newsletter.render import item_url
from newsletter.scanners import AFTER_DELIVERY, BURST, EARLY_TOLERANCE, AgentFilter, network
from newsletter.tokens import ClickToken, url_hash

log = logging.getLogger(__name__)

FLUSH_SECONDS = 2.0  # how often counted clicks are written
MAX_PENDING = 200_000  # clicks held at most (a database away for long): beyond, new ones are dropped, logged
CACHED_ISSUES = 256  # issues whose URLs are kept in memory
RELOAD_SECONDS = 1.0  # an unknown hash reloads an issue's URLs at most this often
AGENT_LENGTH = 512  # the part of a User-Agent looked at (real ones are shorter; the verdicts are cached)


# -- where a link leads ---------------------------------------------------------------------------------------


class _Links(HTMLParser):
    """The http(s) links of an HTML page, in document order, with their text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []
        self._open: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = (dict(attrs).get("href") or "").strip() if tag in ("a", "area") else ""
        if href.lower().startswith(("http://", "https://")):
            self._open = [href, ""]

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[1] += data

    def handle_endtag(self, tag: str) -> None:
        if tag in ("a", "area") and self._open is not None:
            self.links.append((self._open[0], " ".join(self._open[1].split())))
            self._open = None


def copy_links(html: bytes) -> list[tuple[str, str]]:
    """(URL, link text) of every http(s) link in an issue's archive copy, in document order."""
    parser = _Links()
    parser.feed(html.decode("utf-8", errors="replace"))
    parser.close()
    return parser.links


@dataclass(frozen=True)
class IssueLinks:
    """The URLs an issue linked to, by :func:`~newsletter.tokens.url_hash`."""

    issue_id: int
    urls: dict[str, str]
    loaded_at: float


def issue_links(db: Session, number: int) -> tuple[int, dict[str, str]] | None:
    """(issue id, {hash: URL}) of issue ``number``: its archive copy's links and its items' URLs; None when
    there is no such issue."""
    issue = db.exec(select(Issue).where(Issue.number == number)).first()
    if issue is None or issue.id is None:
        return None
    urls: dict[str, str] = {}
    copy = db.get(IssueCopy, issue.id)
    if copy is not None:
        for url, _text in copy_links(zlib.decompress(copy.html)):
            urls.setdefault(url_hash(url), url)
    for summary in issue_items(db, issue):
        url = item_url(summary)
        if url:
            urls.setdefault(url_hash(url), url)
    return issue.id, urls


class Targets:
    """Where click tokens lead: :meth:`cached` answers from memory, :meth:`load` reads the database (call it
    from a worker thread). Holds the URLs of the :data:`CACHED_ISSUES` issues clicked most recently."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.clock = clock
        self._issues: OrderedDict[int, IssueLinks] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, token: ClickToken) -> tuple[int, str | None] | None:
        """(issue id, URL or None when the issue never linked to it), or None when the issue's URLs are not in
        memory, or an unknown hash may be worth looking up again (:meth:`load` then)."""
        with self._lock:
            links = self._issues.get(token.issue)
            if links is None:
                return None
            self._issues.move_to_end(token.issue)
        url = links.urls.get(token.url_hash)
        if url is None and self.clock() - links.loaded_at >= RELOAD_SECONDS:
            return None  # an item's URL may have been added since (a summary edited before a later send)
        return links.issue_id, url

    def load(self, token: ClickToken) -> tuple[int, str | None] | None:
        """As :meth:`cached`, from the database (and remembered): None when there is no such issue."""
        with session(self.engine) as db:
            found = issue_links(db, token.issue)
        if found is None:  # only a signed token gets here: not worth remembering
            return None
        links = IssueLinks(found[0], found[1], self.clock())
        with self._lock:
            self._issues[token.issue] = links
            self._issues.move_to_end(token.issue)
            while len(self._issues) > CACHED_ISSUES:
                self._issues.popitem(last=False)
        return links.issue_id, links.urls.get(token.url_hash)


# -- counting -------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Click:
    """One GET of a click link, held in memory until it is classified and counted. ``network`` (for the
    burst rule) is never written anywhere."""

    issue_id: int
    item_id: int
    url_hash: str
    at: float  # seconds since the epoch
    network: str
    scanner_agent: bool
    subscriber: str | None = None  # the subscriber's token, with tracking.per_subscriber only
    early: bool = False  # within AFTER_DELIVERY s after a delivery of the issue (to the subscriber, if known)
    settled: bool = False  # ``early`` is final: every delivery it could depend on is recorded by now
    subscriber_id: int | None = None


_Key = tuple[int, int, str]  # (issue id, item id, url hash)


def _moment(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _seconds(moment: datetime) -> float:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


class ClickRecorder:
    """Clicks held in memory, classified and written in the background (:meth:`run`), see the module docs.

    :meth:`record` is O(1) and touches no database: it is all a click costs its answer. ``clock`` gives
    seconds since the epoch (replaceable in tests).
    """

    def __init__(self, engine: Engine, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.per_subscriber = config.tracking.per_subscriber
        self.agents = AgentFilter(config.tracking.scanner_agents)
        self.clock = clock
        self._pending: list[Click] = []
        self._recent: list[Click] = []  # early clicks counted in the last BURST s, for later ones to compare with
        self._reached: set[int] = set()  # issues someone has received
        self._counts: dict[_Key, list[int]] = {}  # classified, waiting to be written: [clicks, human clicks]
        self._people: list[dict[str, object]] = []  # subscriber_click rows
        self._lock = threading.Lock()  # the pending list, shared with the request handlers
        self._flushing = threading.Lock()
        self._dropped = 0

    def record(self, issue_id: int, token: ClickToken, ip: str | None, user_agent: str | None) -> None:
        """Count a GET of ``token``'s link of issue ``issue_id`` from ``ip`` with ``user_agent`` (neither kept)."""
        scanner = self.agents.is_scanner((user_agent or "")[:AGENT_LENGTH])
        click = Click(issue_id, token.item, token.url_hash, self.clock(), network(ip), scanner,
                      token.subscriber if self.per_subscriber else None)
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                self._dropped += 1
                return
            self._pending.append(click)

    def run(self, stop: threading.Event) -> None:
        """Flush every :data:`FLUSH_SECONDS` until ``stop`` is set, then count and write everything held."""
        while not stop.wait(FLUSH_SECONDS):
            self._flush_logged()
        self._flush_logged(final=True)
        with self._lock:
            lost = len(self._pending) + sum(clicks for clicks, _human in self._counts.values())
        if lost:
            log.error("stopping with %d clicks not written: the database could not be reached", lost)

    def _flush_logged(self, *, final: bool = False) -> None:
        try:
            self.flush(final=final)
        except Exception:  # a bug must not stop the counting for good: the next flush tries again
            log.exception("counting clicks failed; trying again in %g s", FLUSH_SECONDS)

    def flush(self, *, final: bool = False) -> int:
        """Classify the clicks held :data:`BURST` seconds (every one when ``final``), and write them with
        whatever an earlier write could not. Returns how many clicks were written. A database that is away
        is logged (WARNING) and nothing is lost: the next flush tries again."""
        with self._flushing:
            now = self.clock()
            with self._lock:
                pending, self._pending = self._pending, []
                dropped, self._dropped = self._dropped, 0
            if dropped:
                log.warning("%d clicks were not counted: %d were waiting to be written already", dropped, MAX_PENDING)
            due = [click for click in pending if final or click.at <= now - BURST]
            try:
                with session(self.engine) as db:
                    self._settle(db, pending, now)
                    self._reach(db, {click.issue_id for click in due})
            except DBAPIError as exc:
                with self._lock:
                    self._pending[:0] = pending
                log.warning("could not read the deliveries to classify clicks (%s); trying again in %g s",
                            describe(exc), FLUSH_SECONDS)
                return 0
            except BaseException:  # kept for the next flush whatever went wrong
                with self._lock:
                    self._pending[:0] = pending
                raise
            self._classify(due, pending, now)
            with self._lock:
                self._pending[:0] = [click for click in pending if not (final or click.at <= now - BURST)]
            return self._write()

    def _settle(self, db: Session, clicks: Sequence[Click], now: float) -> None:
        """Decide ``early`` for the clicks not settled yet (and whose subscriber they are): a delivery of the
        issue (to the subscriber, when known) sent between AFTER_DELIVERY s before the click and
        EARLY_TOLERANCE s after it."""
        open_ = [click for click in clicks if not click.settled]
        people = self._people_of(db, [click for click in open_ if click.subscriber])
        latest: dict[int, float | None] = {}  # issue -> its latest delivery: most clicks come long after it
        for click in open_:
            person = people.get((click.issue_id, click.subscriber or ""))
            if person is not None:
                click.subscriber_id, sent = person
            else:  # not per subscriber, or a subscriber since erased: any delivery of the issue
                if click.issue_id not in latest:
                    latest[click.issue_id] = self._latest_delivery(db, click.issue_id, None)
                sent = latest[click.issue_id]
                if sent is not None and sent > click.at + EARLY_TOLERANCE:  # still sending: the one before it
                    sent = self._latest_delivery(db, click.issue_id, click.at + EARLY_TOLERANCE)
            click.early = sent is not None and click.at - AFTER_DELIVERY <= sent <= click.at + EARLY_TOLERANCE
            click.settled = now - click.at > EARLY_TOLERANCE

    @staticmethod
    def _latest_delivery(db: Session, issue_id: int, before: float | None) -> float | None:
        """When the issue's latest delivery (sent at ``before`` or earlier) went out; one index seek."""
        query = select(func.max(Delivery.sent_at)).where(Delivery.issue_id == issue_id)
        if before is not None:
            query = query.where(col(Delivery.sent_at) <= _moment(before))
        sent_at = db.exec(query).one()
        return _seconds(sent_at) if sent_at is not None else None

    @staticmethod
    def _people_of(db: Session, clicks: Sequence[Click]) -> dict[tuple[int, str], tuple[int, float | None]]:
        """(issue id, subscriber token) -> (subscriber id, when that issue was delivered to them)."""
        found: dict[tuple[int, str], tuple[int, float | None]] = {}
        wanted: dict[int, set[str]] = defaultdict(set)
        for click in clicks:
            wanted[click.issue_id].add(click.subscriber or "")
        for issue_id, tokens in wanted.items():
            listed = sorted(tokens)
            for start in range(0, len(listed), 500):
                rows = db.exec(
                    select(Subscriber.token, Subscriber.id, Delivery.sent_at)
                    .join(Delivery, and_(col(Delivery.subscriber_id) == Subscriber.id, Delivery.issue_id == issue_id),
                          isouter=True)
                    .where(col(Subscriber.token).in_(listed[start:start + 500]))
                ).all()
                for token, subscriber_id, sent_at in rows:
                    found[(issue_id, token)] = (subscriber_id, _seconds(sent_at) if sent_at else None)
        return found

    def _reach(self, db: Session, issue_ids: Iterable[int]) -> None:
        """Remember which of ``issue_ids`` someone has received (only their clicks are counted)."""
        for issue_id in set(issue_ids) - self._reached:
            if self._latest_delivery(db, issue_id, None) is not None:
                self._reached.add(issue_id)

    def _classify(self, due: Sequence[Click], pending: Sequence[Click], now: float) -> None:
        """Add ``due`` to the counts: a click is likely human unless its agent is a scanner's or it is early
        and another early click on the issue came from its network within BURST seconds."""
        early: dict[tuple[int, str], list[float]] = defaultdict(list)
        for click in (*self._recent, *pending):
            if click.early:
                early[(click.issue_id, click.network)].append(click.at)
        for times in early.values():
            times.sort()
        for click in due:
            if click.issue_id not in self._reached:
                continue  # nobody has received this issue: a test, not a reader
            burst = False
            if click.early:
                times = early[(click.issue_id, click.network)]
                burst = bisect_right(times, click.at + BURST) - bisect_left(times, click.at - BURST) > 1
            human = not (click.scanner_agent or burst)
            counts = self._counts.setdefault((click.issue_id, click.item_id, click.url_hash), [0, 0])
            counts[0] += 1
            counts[1] += human
            if click.subscriber_id is not None:
                self._people.append({
                    "subscriber_id": click.subscriber_id, "issue_id": click.issue_id, "item_id": click.item_id,
                    "url_hash": click.url_hash, "at": _moment(click.at), "likely_human": human})
        self._recent = [click for click in (*self._recent, *due) if click.early and click.at > now - 2 * BURST]

    def _write(self) -> int:
        """Write the counts and the subscribers' clicks in one transaction; kept for the next flush if it fails."""
        if not self._counts and not self._people:
            return 0
        written = sum(clicks for clicks, _human in self._counts.values())
        for attempt in (1, 2):
            try:
                with session(self.engine) as db:
                    self._add_counts(db)
                    if attempt == 2:  # a subscriber erased since their clicks were looked up
                        self._people = [p for p in self._people if db.get(Subscriber, p["subscriber_id"]) is not None]
                    if self._people:  # one executemany: a row object each would cost the answers time (GIL)
                        db.execute(insert(SubscriberClick), self._people)
                    db.commit()
                break
            except IntegrityError:  # another process added the same count first, or an erasure came between
                if attempt == 2:
                    raise
            except DBAPIError as exc:
                log.warning("could not write %d clicks (%s); trying again in %g s", written,
                            describe(exc), FLUSH_SECONDS)
                return 0
        self._counts, self._people = {}, []
        return written

    def _add_counts(self, db: Session) -> None:
        for (issue_id, item_id, hash_), (clicks, human) in self._counts.items():
            changed = db.execute(
                update(ClickCount)
                .where(col(ClickCount.issue_id) == issue_id, col(ClickCount.item_id) == item_id,
                       col(ClickCount.url_hash) == hash_)
                .values(clicks=col(ClickCount.clicks) + clicks, human_clicks=col(ClickCount.human_clicks) + human)
            ).rowcount
            if not changed:
                db.add(ClickCount(issue_id=issue_id, item_id=item_id, url_hash=hash_, clicks=clicks,
                                  human_clicks=human))
                db.flush()
