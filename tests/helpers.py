"""Small builders shared by tests: issues and summaries in memory, summaries and subscribers in the database."""

from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from newsletter.db import session
from newsletter.models import Issue, Subscriber, SubscriberStatus, Summary, utcnow

BERLIN = ZoneInfo("Europe/Berlin")


def add_summaries(engine: Engine, count: int, *, category: str = "Neuroscience", at: datetime | None = None) -> None:
    with session(engine) as db:
        start = len(db.exec(select(Summary.id)).all())
        for n in range(start, start + count):
            db.add(
                Summary(
                    uid=f"https://example.org/papers/{n}",
                    title=f"Paper number {n}",
                    url=f"https://example.org/papers/{n}",
                    source="Journal of Examples",
                    category=category,
                    summary=f"What paper {n} found, in two sentences. It matters because of reasons.",
                    key_points=[f"Finding {n}.1", f"Finding {n}.2"],
                    ingested_at=at or utcnow(),
                )
            )
        db.commit()


def add_people(engine: Engine, *emails: str, status: SubscriberStatus = SubscriberStatus.ACTIVE) -> None:
    with session(engine) as db:
        for address in emails:
            db.add(Subscriber(email=address, name=address.split("@")[0].title(), status=status))
        db.commit()


def make_issue(number: int = 12) -> Issue:
    """Covering week 47 of 2026 in Berlin: Monday 16 November 00:00 up to (not including) Monday 23 November."""
    return Issue(
        number=number,
        period_start=datetime(2026, 11, 16, tzinfo=BERLIN).astimezone(UTC),
        period_end=datetime(2026, 11, 23, tzinfo=BERLIN).astimezone(UTC),
        subject="",
    )


def make_summaries() -> list[Summary]:
    return [
        Summary(
            uid="spindles",
            title="Sleep spindles consolidate motor memory in adolescents & adults",
            url="https://journals.example.org/neuro/sleep-spindles?ref=rss&utm_source=feed",
            source="Journal of Neuroscience",
            category="Neuroscience",
            summary=(
                "A longitudinal study of 240 participants shows that sleep spindle density predicts "
                "overnight gains in motor sequence learning, with effects that are larger in teenagers.\n\n"
                "The authors argue for sleep-aware training schedules in schools."
            ),
            key_points=[f"Finding number {n} about spindles and memory consolidation in sleep" for n in range(7)],
            image_url="https://img.example.org/spindles.png",
            image_alt="EEG trace with sleep spindles highlighted",
            published_at=datetime(2026, 11, 17, 9, 30, tzinfo=UTC),
        ),
        Summary(
            uid="ocean",
            title="Ocean heat content reaches a record high",
            url="https://climate.example.org/ocean-heat",
            source="Nature Climate Change",
            category="Climate",
            summary="Upper-ocean heat content rose again in 2026, by 15 ± 3 zettajoules.",
            published_at=datetime(2026, 11, 18, 12, tzinfo=UTC),
        ),
        Summary(
            uid="review",
            title="Reviewers disagree more than editors expect",
            url="https://meta.example.org/peer-review",
            source="Research Integrity",
            category=None,
            summary="An analysis of 10,000 review pairs finds agreement barely above chance.",
        ),
        Summary(
            uid="bats",
            title="Grid cells map three-dimensional space in flying bats",
            url="https://journals.example.org/bats",
            source="Cell",
            category="neuroscience",  # same section as "Neuroscience"
            summary="Bats navigate with grid cells that tile volumes, not just planes.",
            published_at=datetime(2026, 11, 20, 8, tzinfo=UTC),
        ),
    ]


def losing_commit(faults: list[str], writes: Callable[[Session], bool]) -> Callable[[Engine], Session]:
    """A ``session`` factory whose commit of a transaction that ``writes`` (judged on the session) loses the
    connection, once per entry of ``faults``: ``"before"`` the server wrote it (rolled back) or ``"after"``
    (committed, but the answer never came back). A lost answer cannot be produced at will with a real server."""

    class Dropping(Session):
        def commit(self) -> None:
            if not (faults and writes(self)):
                return super().commit()
            if faults.pop() == "after":
                super().commit()
            else:
                self.rollback()
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"),
                                   connection_invalidated=True)

    return lambda bound: Dropping(bound, expire_on_commit=False)
