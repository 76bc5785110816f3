"""What editors do with what came in: list, show, edit (as YAML) and exclude stored summaries.

An edit goes through the same validation and cleaning as ingest (:func:`~newsletter.ingest.base.validate_item`),
and is written in one transaction or not at all. Excluding a summary keeps it out of the next digest
(:func:`newsletter.issues.waiting_summaries` skips it) without deleting it; it can be included again.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

import yaml
from sqlalchemy import Engine
from sqlmodel import col, select

from newsletter.db import session
from newsletter.errors import IngestError, NewsletterError
from newsletter.ingest.base import SummaryIn, validate_item
from newsletter.models import Summary, utcnow

EDITABLE = [name for name in SummaryIn.model_fields if name != "uid"]


def list_summaries(engine: Engine, *, new_only: bool = False) -> list[Summary]:
    """Stored summaries, newest first; ``new_only``: only those not in any issue yet."""
    query = select(Summary).order_by(col(Summary.ingested_at).desc(), col(Summary.id).desc())
    if new_only:
        query = query.where(col(Summary.issue_id).is_(None))
    with session(engine) as db:
        return list(db.exec(query))


def get_summary(engine: Engine, summary_id: int) -> Summary:
    """The summary with this id; NewsletterError if there is none."""
    with session(engine) as db:
        found = db.get(Summary, summary_id)
    if found is None:
        raise NewsletterError(f"no summary with id {summary_id}; see 'newsletter summaries list'")
    return found


def to_yaml(summary: Summary) -> str:
    """The editable fields as YAML, in the order of the summary files (empty fields included)."""
    data: dict[str, Any] = {}
    for name in EDITABLE:
        value = getattr(summary, name)
        if name == "published_at" and value is not None:
            value = (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
        data[name] = value
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def apply_yaml(engine: Engine, summary_id: int, text: str) -> Summary:
    """Validate the edited YAML and store it; IngestError (nothing changed) if it is not a valid summary."""
    where = f"summary {summary_id}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise IngestError(f"{where}: the edit is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if isinstance(data, dict):
        data = {key: value for key, value in data.items() if value is not None}
    item = validate_item(data, where=where)
    with session(engine) as db, db.begin():
        row = db.get(Summary, summary_id)
        if row is None:
            raise NewsletterError(f"no summary with id {summary_id}; it was deleted meanwhile")
        for name, value in item.model_dump(include=set(EDITABLE)).items():
            setattr(row, name, value)
        row.updated_at = utcnow()
    return row


def set_excluded(engine: Engine, summary_id: int, excluded: bool = True) -> Summary:
    """Keep the summary out of (or let it back into) the next digest; NewsletterError if already sent."""
    with session(engine) as db, db.begin():
        row = db.get(Summary, summary_id)
        if row is None:
            raise NewsletterError(f"no summary with id {summary_id}; see 'newsletter summaries list'")
        if row.issue_id is not None:
            raise NewsletterError(f"summary {summary_id} is already in an issue; it cannot be excluded now")
        row.excluded = excluded
        row.updated_at = utcnow()
    return row
