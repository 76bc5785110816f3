"""How long a change made in the editor's desk takes to show: from the click to the page and the email up to date.

Run: ``.venv/bin/python -m bench.desk_change [rounds]`` (default 20). It builds a project folder with a copy of
the default templates and the ten sample summaries, serves the desk (``newsletter preview``'s app, in this
process, over HTTP on loopback) and, ``rounds`` times for each kind of change, does what the page's script
does after a click: POST the change, then fetch the page's regions and the email frame. It prints the
median and the slowest time for each kind. The promise is "within a second"; the tests only check that
every change is shown.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import uvicorn
import yaml

from newsletter.demo import DEMO_SETTINGS
from newsletter.ingest import ingest_paths
from newsletter.resources import packaged_templates_dir, sample_summaries_dir
from newsletter.web.preview import create_preview_app


def main(rounds: int) -> None:
    os.environ.setdefault("NEWSLETTER_SECRET_KEY", "bench")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        shutil.copytree(packaged_templates_dir(), root / "templates")
        config_file = root / "config.yaml"
        config_file.write_text(yaml.safe_dump({**DEMO_SETTINGS, "templates": "templates"}), encoding="utf-8")
        app = create_preview_app(config_file)
        ingest_paths(app.state.preview.engine, [sample_summaries_dir()])
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        try:
            with httpx.Client(base_url=base, headers={"Origin": base}) as client:
                _measure(client, rounds)
        finally:
            app.state.preview.stop.set()
            server.should_exit = True
            thread.join(timeout=10)


def _measure(client: httpx.Client, rounds: int) -> None:
    page = client.get("/").text
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page)[1]  # type: ignore[index]
    ids = [int(n) for n in re.findall(r'<li id="item-(\d+)" class="item', page)]
    state = {"number": re.search(r'data-number="(\d+)"', page)[1], "version": "0"}  # type: ignore[index]

    def change(route: str, **fields: object) -> float:
        """Seconds from the POST to the page's regions and the email frame fetched afresh."""
        started = time.perf_counter()
        answer = client.post(route, data={"csrf": token, **state, **{k: str(v) for k, v in fields.items()}},
                             headers={"X-Desk": "1"})
        answer.raise_for_status()
        state["version"] = str(answer.json()["version"])
        fragment = client.get("/", headers={"X-Desk": "refresh"}).text
        frame = re.search(r'<iframe id="email"[^>]* src="([^"]+)"', fragment)[1]  # type: ignore[index]
        client.get(frame.replace("&amp;", "&")).raise_for_status()
        return time.perf_counter() - started

    kinds: list[tuple[str, Callable[[int], float]]] = [
        ("move an item", lambda n: change("/desk/move", id=ids[n % len(ids)], position=(n * 3) % len(ids))),
        ("leave one out", lambda n: change("/desk/leave-out", id=ids[-1])
         + change("/desk/bring-back", id=ids[-1])),
        ("save the note", lambda n: change("/desk/note", text=f"A note, round {n}: **bold** and a [link](https://example.org).")),
        ("undo", lambda n: change("/desk/note", text=f"note {n}") + change("/desk/undo")),
    ]
    print(f"desk changes on the 10 sample summaries, {rounds} rounds of each kind (seconds from the click to "
          f"the page and the email up to date)")
    for name, kind in kinds:
        times = [kind(n) for n in range(rounds)]
        if name in ("leave one out", "undo"):  # two changes a round: each is half
            times = [t / 2 for t in times]
        print(f"  {name:<14} median {statistics.median(times):.3f}  max {max(times):.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
