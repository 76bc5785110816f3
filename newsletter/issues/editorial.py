"""An editor's choices for the next issue: the order of its items, the lead item, the items left out, a note
above the items and a subject of their own. The desk (``newsletter preview``) and ``digest order / note /
subject`` make them through these functions.

The choices live on the next issue's ``draft`` row, which the first choice creates; preparing the issue
keeps them (:func:`newsletter.issues.prepare_in`), so the real send shows exactly what the editor shaped.
Leaving an item out is ``summaries exclude``: the summary stays waiting, excluded, until it is brought back.

Every change may name the draft it was made on (:class:`Seen`: its number and version, what the editor's
page showed). If the draft changed since (another tab, a command, an issue prepared meanwhile), nothing is
changed and :class:`~newsletter.errors.Conflict` says so; nobody overwrites a change they have not seen. A
command, which reads and changes in one go, names none. Each change can be undone, the last first: the
draft keeps the choices from before each of its last :data:`UNDO_DEPTH` changes (the undo itself is a
change, and cannot be undone).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from newsletter.db import session
from newsletter.errors import Conflict, NewsletterError
from newsletter.issues.lookup import draft_row, next_number, waiting_summaries
from newsletter.message import single_line
from newsletter.models import Issue, IssueStatus, Summary, utcnow
from newsletter.note import clean_note, note_problem
from newsletter.render import SUBJECT_LIMIT, as_utc, display_order

log = logging.getLogger(__name__)

UNDO_DEPTH = 20
CHANGED_ELSEWHERE = "the next issue was changed elsewhere since this page showed it; reload to see the change"


@dataclass(frozen=True)
class Seen:
    """The draft a change was made on: the next issue's number and the version of its choices (0: none)."""

    number: int
    version: int


@dataclass(frozen=True)
class Choices:
    order: tuple[int, ...] = ()
    lead: int | None = None
    note: str | None = None
    subject: str | None = None

    @classmethod
    def of(cls, issue: Issue | None) -> Choices:
        if issue is None:
            return cls()
        return cls(tuple(issue.item_order or ()), issue.lead_id, issue.note, issue.subject_override)

    def as_json(self) -> dict[str, Any]:
        return {"order": list(self.order), "lead": self.lead, "note": self.note, "subject": self.subject}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Choices:
        return cls(tuple(data.get("order") or ()), data.get("lead"), data.get("note"), data.get("subject"))


# A change: from the next issue as it stands, (what it does in words, the choices after it, the items it
# leaves out (True) or brings back (False)). Raises NewsletterError when it makes no sense.
Change = Callable[["NextIssue"], tuple[str, "Choices", dict[int, bool]]]


@dataclass(frozen=True)
class NextIssue:
    """The next issue as its editor shapes it."""

    number: int
    version: int  # 0 until the first choice
    items: list[Summary]  # what it will carry, in the digest's order (the lead first)
    left_out: list[Summary]  # waiting but left out, oldest first
    choices: Choices
    undo_label: str | None  # what undo would take back, or None
    done: str = ""  # what the change that led here did, in words ("moved “X” up")

    @property
    def seen(self) -> Seen:
        return Seen(self.number, self.version)

    @property
    def lead(self) -> Summary | None:
        return next((item for item in self.items if item.id == self.choices.lead), None)

    def title(self, summary_id: int) -> str:
        found = next((s for s in [*self.items, *self.left_out] if s.id == summary_id), None)
        if found is None:
            raise NewsletterError(f"summary {summary_id} is not waiting for the next issue; see `newsletter "
                                  f"digest order` for the ones that are")
        return found.title


def next_issue_state(engine: Engine) -> NextIssue:
    """The next issue with the editor's choices, as it stands."""
    with session(engine) as db:
        return _state(db, draft_row(db))


def _state(db: Session, row: Issue | None) -> NextIssue:
    waiting = waiting_summaries(db)
    left_out = list(db.exec(select(Summary).where(col(Summary.issue_id).is_(None), col(Summary.excluded).is_(True))
                            .order_by(col(Summary.ingested_at), col(Summary.id))))
    if row is None:
        return NextIssue(next_number(db), 0, display_order(waiting), left_out, Choices(), None)
    history = row.undo or []
    return NextIssue(row.number, row.version, display_order(waiting, row.item_order, row.lead_id), left_out,
                     Choices.of(row),
                     history[-1]["label"] if history else None)


# -- the changes ------------------------------------------------------------------------------------------


def move(engine: Engine, summary_id: int, position: int, *, seen: Seen | None = None) -> NextIssue:
    """Show item ``summary_id`` at ``position`` (0 is first; below the lead item when there is one)."""
    return _change(engine, seen, moving(summary_id, position))


def moving(summary_id: int, position: int) -> Change:
    def change(state: NextIssue) -> tuple[str, Choices, dict[int, bool]]:
        ids = _ids(state.items)
        if summary_id not in ids:
            raise NewsletterError(f"{_quoted(state.title(summary_id))} is left out; bring it back to place it")
        if summary_id == state.choices.lead:
            raise NewsletterError(f"{_quoted(state.title(summary_id))} is the lead item, always first; unpin it "
                                  f"to move it")
        old = ids.index(summary_id)
        ids.remove(summary_id)
        lowest = 1 if state.lead is not None else 0
        ids.insert(min(max(position, lowest), len(ids)), summary_id)
        direction = "up" if ids.index(summary_id) < old else "down"
        return f"moved {_quoted(state.title(summary_id))} {direction}", _ordered(state, ids), {}

    return change


def reorder(engine: Engine, first: Sequence[int], *, seen: Seen | None = None) -> NextIssue:
    """Show the items ``first`` first, in that order (after the lead item); the others keep their order."""
    return _change(engine, seen, reordering(first))


def reordering(first: Sequence[int]) -> Change:
    def change(state: NextIssue) -> tuple[str, Choices, dict[int, bool]]:
        ids = _ids(state.items)
        for summary_id in first:
            if summary_id not in ids:
                raise NewsletterError(f"{_quoted(state.title(summary_id))} is left out; bring it back to place it")
        if len(set(first)) != len(first):
            raise NewsletterError("an item is named twice; name each once, in the order they should be shown")
        lead = [i for i in ids if i == state.choices.lead and i not in first]
        rest = [i for i in ids if i not in first and i not in lead]
        return "changed the order", _ordered(state, [*lead, *first, *rest]), {}

    return change


def leave_out(engine: Engine, summary_id: int, out: bool = True, *, seen: Seen | None = None) -> NextIssue:
    """Leave item ``summary_id`` out of the next issue (``out``) or bring it back (to its earlier place)."""
    return _change(engine, seen, leaving_out(summary_id, out))


def leaving_out(summary_id: int, out: bool = True) -> Change:
    def change(state: NextIssue) -> tuple[str, Choices, dict[int, bool]]:
        title = _quoted(state.title(summary_id))
        is_out = any(item.id == summary_id for item in state.left_out)
        if is_out == out:
            raise NewsletterError(f"{title} is {'already left out' if out else 'in the next issue already'}")
        lead = None if out and state.choices.lead == summary_id else state.choices.lead
        return (f"{'left out' if out else 'brought back'} {title}", replace(state.choices, lead=lead),
                {summary_id: out})

    return change


def set_lead(engine: Engine, summary_id: int | None, *, seen: Seen | None = None) -> NextIssue:
    """Make item ``summary_id`` the lead (first, and named by the default subject); None: no lead item."""
    return _change(engine, seen, leading(summary_id))


def leading(summary_id: int | None) -> Change:
    def change(state: NextIssue) -> tuple[str, Choices, dict[int, bool]]:
        if summary_id is None:
            if state.lead is None:
                raise NewsletterError("there is no lead item to unpin")
            return f"unpinned {_quoted(state.lead.title)}", replace(state.choices, lead=None), {}
        if all(item.id != summary_id for item in state.items):
            raise NewsletterError(f"{_quoted(state.title(summary_id))} is left out; bring it back to make it the lead")
        ids = _ids(state.items)  # the former lead keeps its place, first among the rest
        return (f"made {_quoted(state.title(summary_id))} the lead",
                replace(_ordered(state, ids), lead=summary_id), {})

    return change


def arrange(engine: Engine, steps: Sequence[Change], *, seen: Seen | None = None) -> NextIssue:
    """Make ``steps`` (from :func:`moving`, :func:`reordering`, :func:`leaving_out`, :func:`leading`) one
    after the other, as one change: all of them, or none when one makes no sense."""

    def change(state: NextIssue) -> tuple[str, Choices, dict[int, bool]]:
        labels, excluded = [], {}
        for step in steps:
            label, choices, flags = step(state)
            labels.append(label)
            excluded.update(flags)
            state = _with(state, choices, flags)
        return "; ".join(labels), state.choices, excluded

    return _change(engine, seen, change)


def _with(state: NextIssue, choices: Choices, flags: dict[int, bool]) -> NextIssue:
    """``state`` after a step: ``choices`` made, the items of ``flags`` left out (True) or brought back."""
    every = sorted([*state.items, *state.left_out], key=lambda s: (as_utc(s.ingested_at), s.id or 0))
    out = {s.id for s in state.left_out} | {k for k, v in flags.items() if v}
    out -= {k for k, v in flags.items() if not v}
    return replace(state, items=display_order([s for s in every if s.id not in out], choices.order, choices.lead),
                   left_out=[s for s in every if s.id in out], choices=choices)


def set_note(engine: Engine, text: str | None, *, seen: Seen | None = None) -> NextIssue:
    """The editor's note (Markdown) shown above the items; empty or None: no note."""
    cleaned = clean_note(text)
    problem = note_problem(cleaned or "")
    if problem:
        raise NewsletterError(problem)

    def change(state: NextIssue) -> tuple[str, Choices, dict[int, bool]]:
        what = "removed the note" if cleaned is None else "changed the note" if state.choices.note else "wrote a note"
        return what, replace(state.choices, note=cleaned), {}

    return _change(engine, seen, change)


def set_subject(engine: Engine, text: str | None, *, seen: Seen | None = None) -> NextIssue:
    """The subject of the next issue, instead of the template's; empty or None: the template's again."""
    subject = single_line(text) or None
    if subject is not None and len(subject) > SUBJECT_LIMIT:
        raise NewsletterError(f"the subject is {len(subject)} characters; keep it to {SUBJECT_LIMIT} (mail clients "
                              f"cut longer ones, and the pre-send check refuses them)")

    def change(state: NextIssue) -> tuple[str, Choices, dict[int, bool]]:
        what = "went back to the template's subject" if subject is None else f"set the subject to {_quoted(subject)}"
        return what, replace(state.choices, subject=subject), {}

    return _change(engine, seen, change)


def undo(engine: Engine, *, seen: Seen | None = None) -> NextIssue:
    """Take back the last change (see :func:`next_issue_state`'s ``undo_label``)."""
    return _change(engine, seen, None)


def _ordered(state: NextIssue, ids: list[int]) -> Choices:
    """The choices with ``ids`` as the order, keeping the places of the items left out (so an item brought
    back returns where it was)."""
    known = [i for i in state.choices.order if i in {s.id for s in state.left_out}]
    return replace(state.choices, order=tuple(ids + known))


def _ids(items: Sequence[Summary]) -> list[int]:
    return [item.id for item in items if item.id is not None]


def _quoted(title: str) -> str:
    short = title if len(title) <= 60 else title[:59].rsplit(" ", 1)[0] + "…"
    return f"“{short}”"


# -- one change, in one transaction -------------------------------------------------------------------------


def _change(engine: Engine, seen: Seen | None, change: Change | None) -> NextIssue:
    """Make ``change`` (None: undo the last one) on the draft ``seen``, creating the draft row if needed.

    The row's version is taken first, in the statement that checks it, so two changes made on the same
    version cannot both pass. Raises Conflict when the draft is not the one ``seen``, NewsletterError when
    the change makes no sense (an item not waiting, nothing to undo)."""
    for attempt in range(2):
        with session(engine) as db:
            try:
                row = _claim(db, seen)
            except IntegrityError:  # another change created the draft row at the same moment
                db.rollback()
                if seen is not None or attempt:
                    raise Conflict(CHANGED_ELSEWHERE) from None
                continue
            state = _state(db, row)
            if change is None:
                label, after, excluded = _undone(row)
            else:
                label, after, excluded = change(state)
                was_out = {s.id for s in state.left_out}
                history = [*(row.undo or []), {"label": label, "choices": Choices.of(row).as_json(),
                                                "excluded": {str(k): k in was_out for k in excluded}}]
                row.undo = history[-UNDO_DEPTH:]
            _write(db, row, after, excluded, state)
            db.commit()
            log.info("next issue #%d, version %d: %s", row.number, row.version, label)
            return replace(_state(db, row), done=label)
    raise AssertionError("unreachable")


def _claim(db: Session, seen: Seen | None) -> Issue:
    """The draft row, its version already raised by one in this transaction (a write first, so that
    SQLite takes its write lock before anything is read); a new row (version 1) when there is none."""
    row = draft_row(db)
    if row is None:
        number = next_number(db)
        if seen is not None and (seen.number, seen.version) != (number, 0):
            raise Conflict(CHANGED_ELSEWHERE)
        now = utcnow()
        row = Issue(number=number, status=IssueStatus.DRAFT, period_start=now, period_end=now, subject="",
                    version=1)
        db.add(row)
        db.flush()  # IntegrityError: the number was taken meanwhile (a draft, or a prepared issue)
        return row
    query = update(Issue).where(col(Issue.id) == row.id, col(Issue.status) == IssueStatus.DRAFT)
    if seen is not None:
        if seen.number != row.number:
            raise Conflict(CHANGED_ELSEWHERE)
        query = query.where(col(Issue.version) == seen.version)
    taken = db.execute(query.values(version=col(Issue.version) + 1).execution_options(synchronize_session=False))
    if not taken.rowcount:  # type: ignore[attr-defined]
        raise Conflict(CHANGED_ELSEWHERE)
    db.refresh(row)
    return row


def _undone(row: Issue) -> tuple[str, Choices, dict[int, bool]]:
    history = list(row.undo or [])
    if not history:
        raise NewsletterError("there is nothing to undo")
    last = history.pop()
    row.undo = history
    excluded = {int(k): bool(v) for k, v in (last.get("excluded") or {}).items()}
    return f"undid: {last['label']}", Choices.from_json(last["choices"]), excluded


def _write(db: Session, row: Issue, after: Choices, excluded: dict[int, bool], state: NextIssue) -> None:
    """Store ``after`` on the draft and set the ``excluded`` flags (of summaries still waiting only)."""
    known = {s.id for s in [*state.items, *state.left_out]}
    row.item_order = [i for i in after.order if i in known]  # an item sent meanwhile has no place any more
    row.lead_id = after.lead if after.lead in known else None
    row.note, row.subject_override = after.note, after.subject
    db.add(row)
    for summary_id, out in excluded.items():
        db.execute(update(Summary).where(col(Summary.id) == summary_id, col(Summary.issue_id).is_(None))
                   .values(excluded=out, updated_at=utcnow()).execution_options(synchronize_session=False))
