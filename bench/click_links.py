"""What click counting costs each message: the send loop's composer with tracking off, with clicks counted
(one token per item, written into the encoded issue once) and per subscriber (one per item and reader,
signed and spliced in for every message).

    .venv/bin/python -m bench.click_links [--count 2000] [--summaries 10]

Builds an issue of ``--summaries`` summaries in memory (saved-looking: ids set, no database), renders it
once per mode and composes ``--count`` messages with :class:`newsletter.message.Composer`, exactly as the
send loop does. Prints microseconds per message, median of five rounds, for each mode.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from newsletter.config import config_from_mapping
from newsletter.demo import DEMO_SETTINGS
from newsletter.message import Composer
from newsletter.models import Subscriber, Summary, new_token
from newsletter.resources import packaged_templates_dir
from tests.helpers import make_issue

MODES = {"off": {}, "clicks": {"clicks": True}, "per subscriber": {"clicks": True, "per_subscriber": True}}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.click_links", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="messages per round")
    parser.add_argument("--summaries", type=int, default=10, help="items in the issue")
    args = parser.parse_args()
    os.environ.setdefault("NEWSLETTER_SECRET_KEY", "bench")
    issue = make_issue()
    issue.id = 1
    items = [Summary(id=n + 1, uid=f"paper-{n}", title=f"Paper number {n} on something that matters",
                     url=f"https://journals.example.org/papers/{n}?ref=digest", summary="What it found. " * 8)
             for n in range(args.summaries)]
    readers = [Subscriber(email=f"reader{n:05d}@example.org", name=f"Reader {n}", token=new_token())
               for n in range(args.count)]
    print(f"{args.summaries} items, {args.count:,} messages per round, median of 5 rounds")
    for mode, tracking in MODES.items():
        config = config_from_mapping({**DEMO_SETTINGS, "templates": str(packaged_templates_dir()),
                                      "tracking": tracking}, base_dir=Path(tempfile.gettempdir()), source="bench")
        composer = Composer(config, issue, items)
        template = composer.template([])
        assert template is not None
        rounds = []
        for _ in range(5):
            start = time.perf_counter()
            for reader in readers:
                composer.compose(0, reader, template)
            rounds.append((time.perf_counter() - start) / len(readers))
        print(f"{mode:15} {statistics.median(rounds) * 1e6:8.1f} µs/message")


if __name__ == "__main__":
    main()
