"""How long the commands people type most take to start: each run as a whole process, several times.

    .venv/bin/python -m bench.startup [--runs 15]

Builds the demo (``newsletter demo``) in a temporary folder, then runs ``newsletter --help``, ``status``,
``summaries list`` and ``digest render --out DIR`` against the demo's config and database, each ``--runs``
times (the commands interleaved, so a busy moment of the machine falls on all of them alike), and prints
the median and the fastest wall time of each, from the process's start to its exit. Last, the median time
``python -c "import newsletter.cli"`` takes (the part every command pays before it does anything).

``digest render`` compiles the issue's MJML and writes three files: its figure is the whole command, not a
time to first output. See docs/benchmarks.md, "Start-up".
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NEWSLETTER = [sys.executable, "-m", "newsletter"]


def commands(demo: Path, out: Path) -> dict[str, list[str]]:
    """The timed commands, by label."""
    config = ["--config", str(demo / "config.yaml")]
    return {
        "newsletter --help": [*NEWSLETTER, "--help"],
        "newsletter status": [*NEWSLETTER, "status", *config],
        "newsletter summaries list": [*NEWSLETTER, "summaries", "list", *config],
        "newsletter digest render": [*NEWSLETTER, "digest", "render", "--out", str(out), *config],
        'python -c "import newsletter.cli"': [sys.executable, "-c", "import newsletter.cli"],
    }


def timed(argv: list[str], cwd: Path) -> float:
    """Seconds from starting ``argv`` to its exit; a failing command stops the benchmark."""
    began = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - began
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each command (default 15)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        folder = Path(tmp)
        demo = folder / "demo"
        subprocess.run([*NEWSLETTER, "demo", "--dir", str(demo)], cwd=folder, check=True,
                       stdout=subprocess.DEVNULL)
        timed_commands = commands(demo, folder / "rendered")
        for argv in timed_commands.values():  # warm the page cache and the .pyc files
            timed(argv, folder)
        times: dict[str, list[float]] = {label: [] for label in timed_commands}
        for _ in range(args.runs):
            for label, argv in timed_commands.items():
                times[label].append(timed(argv, folder))
    print(f"{'command':<36} {'median':>8} {'fastest':>8}   ({args.runs} runs each, whole process)")
    for label, values in times.items():
        print(f"{label:<36} {statistics.median(values):>7.3f}s {min(values):>7.3f}s")


if __name__ == "__main__":
    main()
