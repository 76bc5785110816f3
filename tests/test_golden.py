"""Golden output: the bundled samples rendered through the default templates, compared whole.

Only our own output is compared (the subject and the plain-text part); the compiled HTML depends on the
installed mjml-python version. After an intended template change, regenerate with
``NEWSLETTER_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py`` and review the diff.
"""

import os
from datetime import UTC, datetime
from pathlib import Path

from sqlmodel import col, select

from newsletter.db import session
from newsletter.ingest import ingest_paths
from newsletter.models import Issue, Summary
from newsletter.render import RecipientValues, render_issue
from newsletter.resources import sample_summaries_dir

GOLDEN = Path(__file__).parent / "golden" / "digest.txt"


def test_default_templates_render_the_samples_as_recorded(config, engine):
    assert ingest_paths(engine, [sample_summaries_dir()]).rejected == []
    with session(engine) as db:
        items = list(db.exec(select(Summary).order_by(col(Summary.id))))
    issue = Issue(
        number=7,
        period_start=datetime(2026, 11, 15, 23, tzinfo=UTC),  # Monday 16 November, 00:00 in Berlin
        period_end=datetime(2026, 11, 22, 23, tzinfo=UTC),
        subject="",
    )
    rendered = render_issue(config, issue, items)
    _html, text = rendered.personalise(
        RecipientValues(
            "ada@example.org",
            "Ada",
            "https://news.example.org/unsubscribe/TOKEN",
            "https://news.example.org/preferences/TOKEN",
        )
    )
    actual = f"Subject: {rendered.subject}\nPreheader: {rendered.preheader}\n\n{text}"
    if os.environ.get("NEWSLETTER_UPDATE_GOLDEN"):
        GOLDEN.write_text(actual, encoding="utf-8")
    assert actual == GOLDEN.read_text(encoding="utf-8")
