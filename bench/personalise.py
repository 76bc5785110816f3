"""Per-message cost: a fresh EmailMessage per subscriber versus splicing into bytes encoded once.

    .venv/bin/python bench/personalise.py [--count N]

Renders the packaged templates with the bundled sample summaries (padded to about 55 KB of HTML, as a
real digest) and prints microseconds per message and messages per second for both ways.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from newsletter.config import config_from_mapping
from newsletter.demo import DEMO_SETTINGS
from newsletter.message import MessageTemplate, build_message
from newsletter.render import RecipientValues, RenderedIssue, render_issue
from newsletter.resources import packaged_templates_dir
from tests.helpers import make_issue, make_summaries


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    os.environ.setdefault("NEWSLETTER_SECRET_KEY", "bench")
    config = config_from_mapping(
        {**DEMO_SETTINGS, "templates": str(packaged_templates_dir())}, base_dir=Path(tempfile.gettempdir()),
        source="bench",
    )
    rendered = render_issue(config, make_issue(), make_summaries())
    padding = "<p>" + "Padding text to reach a realistic digest size. " * 20 + "</p>"
    while len(rendered.html.encode()) < 55_000:
        html = rendered.html.replace("</body>", padding + "</body>")
        rendered = RenderedIssue(rendered.subject, rendered.preheader, html, rendered.text, rendered.markers)
    people = [
        RecipientValues(f"reader{n}@example.org", f"Reader {n}", f"https://news.example.org/unsubscribe/tok{n:08d}",
                        f"https://news.example.org/preferences/tok{n:08d}")
        for n in range(args.count)
    ]
    date = datetime.now(UTC)
    template = MessageTemplate(config, rendered)
    size = len(template.personalise(people[0], message_id="<m@example.org>", date=date))
    print(f"HTML {len(rendered.html.encode()):,} bytes, message {size:,} bytes, {args.count} recipients")

    start = time.perf_counter()
    for person in people[: max(args.count // 20, 50)]:
        build_message(config, rendered, person, message_id="<m@example.org>", date=date)
    fresh = (time.perf_counter() - start) / max(args.count // 20, 50)

    start = time.perf_counter()
    for person in people:
        template.personalise(person, message_id="<m@example.org>", date=date)
    spliced = (time.perf_counter() - start) / args.count

    for label, seconds in (("fresh EmailMessage", fresh), ("splice into bytes", spliced)):
        print(f"{label:20} {seconds * 1e6:10.1f} µs/message {1 / seconds:12,.0f} messages/s")


if __name__ == "__main__":
    main()
