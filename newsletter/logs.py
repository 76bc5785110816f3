"""Log setup for every command: to stderr, as plain lines or as one JSON object per line.

``schedule.log_format: json`` suits journald/Docker log collectors; each record becomes
``{"time", "level", "logger", "message"}`` plus ``"traceback"`` when there is one, plus the fields a line
carries for machines (``FIELDS``: a job's name, outcome and duration; a send's counts), which the plain
line says in words.

Email addresses are personal data: a line at INFO or above shows ``<address>`` in their place (message and
traceback alike); only ``-v``'s DEBUG lines (none by default) show them. Link tokens never reach our lines,
and the web apps redact them from the access log (:mod:`newsletter.web.security`).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Literal

HANDLER_NAME = "newsletter-stderr"
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Machine-readable fields a record may carry (logging's ``extra=``), copied into the JSON entry.
FIELDS = ("job", "outcome", "seconds", "issue", "sent", "retry", "failed", "skipped", "remaining")
_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def redact_addresses(text: str) -> str:
    """``text`` with every email address replaced by ``<address>``."""
    return _ADDRESS.sub("<address>", text)


def _shown(record: logging.LogRecord, text: str) -> str:
    return text if record.levelno <= logging.DEBUG else redact_addresses(text)


class PlainFormatter(logging.Formatter):
    """``time LEVEL logger: message``; addresses hidden above DEBUG."""

    def __init__(self) -> None:
        super().__init__(PLAIN_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return _shown(record, super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the time in UTC, ISO 8601; addresses hidden above DEBUG."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": _shown(record, record.getMessage()),
        }
        entry |= {name: getattr(record, name) for name in FIELDS if hasattr(record, name)}
        if record.exc_info:
            entry["traceback"] = _shown(record, self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: int, log_format: Literal["plain", "json"] = "plain") -> None:
    """Send every log record at ``level`` or above to stderr in ``log_format``, replacing earlier setup."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else PlainFormatter())
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:  # others' handlers (pytest's) stay
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # APScheduler logs every job start at INFO, Alembic its set-up on every start ("Context impl
    # SQLiteImpl"); our jobs log what they did and db.upgrade which migrations it applied.
    for chatty in ("apscheduler", "alembic"):
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING))
