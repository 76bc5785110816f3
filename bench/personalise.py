"""Per-message cost of the message builder (headers written by us, bodies encoded once per issue and
spliced per subscriber), next to what a fresh standard-library EmailMessage per subscriber would cost.

    .venv/bin/python bench/personalise.py [--count N]

Renders the packaged templates with the bundled sample summaries (padded to about 55 KB of HTML, as a
real digest) and prints microseconds per message and messages per second for both ways. The EmailMessage
is only the yardstick here (it is not used to send: its header classes decode encoded-words in data).
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
from newsletter.message import MessageTemplate
from newsletter.render import RecipientValues, RenderedIssue, render_issue
from newsletter.resources import packaged_templates_dir
from tests.helpers import make_issue, make_summaries


def fresh_email_message(config, rendered: RenderedIssue, person: RecipientValues, date: datetime) -> bytes:
    """The yardstick: everything built and encoded again for one subscriber by the standard library."""
    from email.message import EmailMessage, MIMEPart
    from email.policy import SMTP
    from email.utils import format_datetime

    html, text = rendered.personalise(person)
    message = EmailMessage(policy=SMTP)
    message["From"] = config.newsletter.sender
    message["To"] = person.email
    message["Subject"] = rendered.subject
    message["Date"] = format_datetime(date)
    message["Message-ID"] = "<m@example.org>"
    message["List-Unsubscribe"] = f"<{person.unsubscribe_url}>"
    message.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    message.make_alternative()
    part = MIMEPart(policy=SMTP)
    part.set_content(html, subtype="html", charset="utf-8", cte="quoted-printable")
    message.attach(part)
    return message.as_bytes()


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
        fresh_email_message(config, rendered, person, date)
    fresh = (time.perf_counter() - start) / max(args.count // 20, 50)

    start = time.perf_counter()
    for person in people:
        template.personalise(person, message_id="<m@example.org>", date=date)
    spliced = (time.perf_counter() - start) / args.count

    for label, seconds in (("fresh EmailMessage", fresh), ("message builder", spliced)):
        print(f"{label:20} {seconds * 1e6:10.1f} µs/message {1 / seconds:12,.0f} messages/s")


if __name__ == "__main__":
    main()
