"""What rendering costs: MJML compiled once per issue, then per message only substitution and MIME.

Run: ``.venv/bin/python bench/render_bench.py [messages]`` (default 2000). It renders the bundled sample
summaries with the default templates and prints the one-off compile time and the cost per message of
personalising the HTML and text alone and of building the whole message as delivery does (spliced into the
bytes of ``newsletter.message.MessageTemplate``, encoded once per issue).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlmodel import col, select

from newsletter.config import config_from_mapping
from newsletter.db import open_database, session
from newsletter.demo import DEMO_SETTINGS
from newsletter.ingest import ingest_paths
from newsletter.message import MessageTemplate
from newsletter.models import Issue, Summary
from newsletter.render import RecipientValues, render_issue
from newsletter.resources import packaged_templates_dir, sample_summaries_dir


def main(messages: int) -> None:
    os.environ.setdefault("NEWSLETTER_SECRET_KEY", "bench")
    with tempfile.TemporaryDirectory() as folder:
        config = config_from_mapping(
            {**DEMO_SETTINGS, "templates": str(packaged_templates_dir())}, base_dir=Path(folder), source="bench"
        )
        engine = open_database(config)
        ingest_paths(engine, [sample_summaries_dir()])
        with session(engine) as db:
            items = list(db.exec(select(Summary).order_by(col(Summary.id))))
        engine.dispose()
    issue = Issue(number=1, period_start=datetime(2026, 11, 16, tzinfo=UTC),
                  period_end=datetime(2026, 11, 23, tzinfo=UTC), subject="")  # fmt: skip

    compile_times = []
    for _ in range(5):
        start = time.perf_counter()
        rendered = render_issue(config, issue, items)
        compile_times.append(time.perf_counter() - start)
    people = [
        RecipientValues(f"reader{n}@example.org", f"Reader {n}", f"https://news.example.org/unsubscribe/t{n:08d}",
                        f"https://news.example.org/preferences/t{n:08d}")
        for n in range(messages)
    ]  # fmt: skip

    start = time.perf_counter()
    for values in people:
        rendered.personalise(values)
    personalise = (time.perf_counter() - start) / messages

    start = time.perf_counter()
    template = MessageTemplate(config, rendered)  # once per issue, counted in the per-message figure
    size = 0
    for n, values in enumerate(people):
        size += len(template.personalise(values, message_id=f"<issue-1.{n}@example.org>"))
    build = (time.perf_counter() - start) / messages

    print(f"items: {len(items)}, HTML: {len(rendered.html) / 1024:.1f} KB, messages: {messages}")
    print(f"render + compile once per issue: {statistics.median(compile_times) * 1000:.1f} ms (median of 5)")
    print(f"personalise per message:         {personalise * 1e6:.0f} µs")
    print(f"whole message per message:       {build * 1e6:.0f} µs ({size / messages / 1024:.1f} KB each)")
    print(f"compiling per message instead would add {statistics.median(compile_times) * 1000:.1f} ms each")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
