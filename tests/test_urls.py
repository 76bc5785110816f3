"""The shared URL validator as users meet it: links in summaries are refused at ingest with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from newsletter.checks import link_problem
from newsletter.ingest import ingest_paths


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://news.example.org@evil.example/login", "'news.example.org@' before its host, so it opens evil.example"),
        ("https://editor:hunter2@example.org/paper", "'editor:hunter2@' before its host, so it opens example.org"),
        ("http://@example.org/paper", "'@' before its host"),
    ],
)
def test_a_link_with_a_user_name_or_password_is_refused_at_ingest(engine, tmp_path: Path, url: str, shown: str) -> None:
    path = tmp_path / "items.jsonl"
    good = {"title": "Fine", "summary": "S.", "url": "https://example.org/fine"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"title": "T", "summary": "S.", "url": url}) + "\n")
    report = ingest_paths(engine, [path])
    assert report.added == 0  # the file is rejected whole, nothing half-written
    [rejected] = report.rejected
    message = rejected.message
    assert message.startswith(f"{path}:2: field 'url': {url!r} has ") and shown in message, message
    assert "\n" not in message and "write the link without a user name or password" in message


def test_the_pre_send_check_refuses_such_a_link_in_a_template_too() -> None:
    assert "without a user name or password" in (link_problem("https://news.example.org@evil.example/") or "")
    assert link_problem("https://news.example.org/@ada") is None  # an @ in the path is not a user name
    assert link_problem("mailto:editor@example.org") is None
