"""Reading what the file backend wrote: parsed messages and the links in them."""

from __future__ import annotations

import email
import email.policy
import re
import time
from email.message import EmailMessage
from pathlib import Path


def messages(outbox: Path) -> list[EmailMessage]:
    """Every .eml in ``outbox``, oldest first."""
    files = sorted(outbox.glob("*.eml"), key=lambda path: path.stat().st_mtime_ns) if outbox.is_dir() else []
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in files]  # type: ignore[misc]


def wait_for_messages(outbox: Path, count: int, *, timeout: float = 30) -> list[EmailMessage]:
    """Every .eml in ``outbox`` once there are at least ``count``: mail written after a response (a background
    task) may arrive a moment later, later still on a busy machine. AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while len(found := messages(outbox)) < count:
        assert time.monotonic() < deadline, f"{outbox}: expected {count} messages within {timeout} s, got {len(found)}"
        time.sleep(0.05)
    return found


def text_part(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content()


def html_part(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return part.get_content()


def link(message: EmailMessage, path: str) -> str:
    """The first URL with ``/path/`` in the message's text part."""
    found = re.search(rf"https?://\S+/{path}/\S+", text_part(message))
    assert found, f"no /{path}/ link in:\n{text_part(message)}"
    return found.group(0)
