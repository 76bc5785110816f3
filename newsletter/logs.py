"""Log setup for every command: to stderr, as plain lines or as one JSON object per line.

``schedule.log_format: json`` suits journald/Docker log collectors; each record becomes
``{"time", "level", "logger", "message"}`` plus ``"traceback"`` when there is one.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

HANDLER_NAME = "newsletter-stderr"
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the time in UTC, ISO 8601."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: int, log_format: Literal["plain", "json"] = "plain") -> None:
    """Send every log record at ``level`` or above to stderr in ``log_format``, replacing earlier setup."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(PLAIN_FORMAT))
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
