"""How long the preview takes to notice a change: a template edit, a new summary, a config edit.

Run: ``.venv/bin/python -m bench.preview_reload [rounds]`` (default 20). It builds a project folder with a
copy of the default templates and the sample summaries, starts the preview's watcher as ``newsletter
preview`` does, makes each kind of change ``rounds`` times and prints the median and the slowest time from
the change to the new version that makes open pages reload. The promise is "within about half a second";
the tests only check that every change is noticed.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from newsletter.demo import DEMO_SETTINGS
from newsletter.ingest import ingest_paths
from newsletter.resources import packaged_templates_dir, sample_summaries_dir
from newsletter.web.preview_state import PreviewState

DEADLINE = 30.0


def _time_change(state: PreviewState, change: Callable[[int], None], round_number: int) -> float:
    """Seconds from ``change`` to the version bump it causes."""
    version = state.version
    started = time.monotonic()
    change(round_number)
    while state.version == version:
        if time.monotonic() - started > DEADLINE:
            raise SystemExit(f"no reload within {DEADLINE} s")
        time.sleep(0.005)
    took = time.monotonic() - started
    time.sleep(0.3)  # let the watcher settle so one change is not counted into the next
    return took


def main(rounds: int) -> None:
    os.environ.setdefault("NEWSLETTER_SECRET_KEY", "bench")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        templates = root / "templates"
        shutil.copytree(packaged_templates_dir(), templates)
        config_file = root / "config.yaml"
        config_file.write_text(yaml.safe_dump({**DEMO_SETTINGS, "templates": "templates"}), encoding="utf-8")
        state = PreviewState(config_file, None)
        ingest_paths(state.engine, [sample_summaries_dir()])
        watcher = threading.Thread(target=state.watch, daemon=True)
        watcher.start()
        state.watching.wait(DEADLINE)
        time.sleep(0.3)
        header = templates / "partials" / "header.mjml.j2"
        summary_folder = root / "incoming"
        summary_folder.mkdir()

        def edit_template(n: int) -> None:
            header.write_text(header.read_text(encoding="utf-8") + f"\n{{# edit {n} #}}", encoding="utf-8")

        def add_summary(n: int) -> None:
            page = summary_folder / f"bench-{n}.md"
            page.write_text(
                f"---\ntitle: Benchmark summary {n}\nurl: https://example.org/bench/{n}\nsource: Bench\n---\n"
                "A summary written by the benchmark.\n",
                encoding="utf-8",
            )
            ingest_paths(state.engine, [page])

        def edit_config(n: int) -> None:
            config_file.write_text(config_file.read_text(encoding="utf-8") + f"# edit {n}\n", encoding="utf-8")

        print(f"preview reload, {rounds} changes of each kind (seconds from the change to the reload signal)")
        for name, change in (("template edit", edit_template), ("new summary", add_summary),
                             ("config edit", edit_config)):
            times = [_time_change(state, change, n) for n in range(rounds)]
            print(f"  {name:<14} median {statistics.median(times):.3f}  max {max(times):.3f}")
        state.stop.set()
        watcher.join(timeout=10)
        state.engine.dispose()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
