"""The issue's life, in one place.

- :mod:`~newsletter.issues.states`: the states (prepared → sending → sent, paused, cancelled) and the one
  table of allowed steps every command and job goes through; pause, resume, cancel, retry-failed.
- :mod:`~newsletter.issues.prepare`: the next issue: its draft, and ``prepare``, by an editor at any time
  or by a scheduled firing (:mod:`newsletter.firings`).
- :mod:`~newsletter.issues.editorial`: an editor's choices for the next issue (order, lead, items left
  out, note, subject), kept on its draft row, with a version against lost updates and undo.
- :mod:`~newsletter.issues.sample`: what editors see (the draft whenever summaries are waiting, else the
  newest issue) and the sample messages ``digest check``, ``digest render`` and the preview build.
- :mod:`~newsletter.issues.archived`: the copy of an issue as first sent, which the archive serves.
- :mod:`~newsletter.issues.lookup`: finding issues, their items, what is waiting, delivery counts.

The send loop and its ledger are :mod:`newsletter.delivery`; it asks this package before changing an
issue's state.
"""

from newsletter.issues.archived import ArchivedCopy, archived_copy, has_copy, keep_copy, neutral_values
from newsletter.issues.lookup import (
    IssueStatusReport,
    delivery_counts,
    find_issue,
    issue_items,
    issue_status,
    newest_issue,
    unfinished_issues,
    waiting_summaries,
)
from newsletter.issues.prepare import Draft, PrepareOutcome, PrepareResult, draft, prepare_in, prepare_issue
from newsletter.issues.sample import (
    SAMPLE_READER,
    IssueSample,
    PreviewFiles,
    SampleMessage,
    Shown,
    build_sample,
    sample_readers,
    shown_issue,
    state_and_date,
    write_preview,
)
from newsletter.issues.states import (
    SENDABLE,
    TRANSITIONS,
    Step,
    allows,
    cancel_issue,
    finish_sending,
    pause_issue,
    refusal,
    resume_issue,
    retry_failed,
    start_sending,
    transition,
)

__all__ = [
    "SAMPLE_READER", "SENDABLE", "TRANSITIONS", "ArchivedCopy", "Draft", "IssueSample", "IssueStatusReport",
    "PrepareOutcome", "PrepareResult", "PreviewFiles", "SampleMessage", "Shown", "Step", "allows",
    "archived_copy", "build_sample", "cancel_issue", "delivery_counts", "draft", "find_issue", "finish_sending",
    "has_copy", "issue_items", "issue_status", "keep_copy", "neutral_values", "newest_issue", "pause_issue",
    "prepare_in", "prepare_issue", "refusal", "resume_issue", "retry_failed", "sample_readers", "shown_issue",
    "start_sending", "state_and_date", "transition", "unfinished_issues", "waiting_summaries", "write_preview",
]
