"""Ingesting Markdown at an editor's scale: files per second for 1,000 and 10,000 generated summaries.

    .venv/bin/python -m bench.ingest [--sizes 1000 10000] [--seed 19]

Writes ``N`` Markdown summaries into a temporary folder (front matter with title, source, date, link,
category and tags; a summary paragraph; a "Key findings" list; a caveats section: the shape of the bundled
samples, each with its own text and link), then ingests the folder into a fresh SQLite database twice:

- the whole command, ``newsletter ingest FOLDER`` in a process of its own (start-up, reading, the
  database, the progress bar), timed from start to exit;
- in-process, :func:`newsletter.ingest.ingest_paths` alone, on another fresh database.

Prints the wall time, files per second and CPU time (user + system) of each, and checks that every file went
in. On a machine others share, the wall time also holds their work: the CPU time does not. See
docs/benchmarks.md, "Ingesting Markdown".
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from newsletter.config import load_config
from newsletter.db import open_database
from newsletter.ingest import ingest_paths

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("sleep memory cortex neurons ageing muscle repair retina imaging cognition trial cohort signal "
         "protein marker dose response adults children cells fibres spindle density recall bias sample").split()
SOURCES = ("Journal of Sleep and Memory", "Ageing Cell Reports", "Retina Today", "Cognition Letters")


def sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + "."


def summary_file(number: int, rng: random.Random) -> str:
    """One summary in the bundled samples' shape, unique by its title and link."""
    day = 1 + number % 28
    paragraph = " ".join(sentence(rng, rng.randint(10, 20)) for _ in range(4))
    findings = "\n".join(f"- {sentence(rng, rng.randint(8, 14))}" for _ in range(4))
    caveats = " ".join(sentence(rng, rng.randint(10, 18)) for _ in range(2))
    return (
        "---\n"
        f"title: Study {number}, {sentence(rng, 8)}\n"
        f"source: {rng.choice(SOURCES)}\n"
        f"published_at: 2026-11-{day:02d}T07:30:00+01:00\n"
        f"url: https://example.org/papers/{number}-{rng.choice(WORDS)}?utm_source=newsletter\n"
        f"category: {rng.choice(('Neuroscience', 'Ageing', 'Ophthalmology'))}\n"
        f"tags: {rng.choice(WORDS)}, {rng.choice(WORDS)}\n"
        "---\n"
        f"{paragraph}\n\n## Key findings\n\n{findings}\n\n## Caveats\n\n{caveats}\n"
    )


def write_files(folder: Path, count: int, seed: int) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for number in range(count):
        (folder / f"{number:05d}.md").write_text(summary_file(number, rng), encoding="utf-8")


def write_config(folder: Path, name: str) -> Path:
    path = folder / f"{name}.yaml"
    settings = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    settings["database"] = {"url": f"sqlite:///{name}.db"}
    settings["templates"] = str(ROOT / "templates")
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def whole_command(folder: Path, files: Path, count: int) -> tuple[float, float]:
    config = write_config(folder, "command")
    env = {**os.environ, "NEWSLETTER_SECRET_KEY": "bench-secret", "COLUMNS": "100"}
    subprocess.run([sys.executable, "-m", "newsletter", "status", "--config", str(config)], check=True, env=env,
                   stdout=subprocess.DEVNULL)  # the schema created before the clock starts, as on every later run
    cpu, began = _children_cpu(), time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "newsletter", "ingest", str(files), "--config", str(config)],
                            env=env, capture_output=True, text=True)
    elapsed, cpu = time.perf_counter() - began, _children_cpu() - cpu
    if result.returncode != 0 or f"added {count}," not in result.stdout:
        sys.exit(f"newsletter ingest failed ({result.returncode}): {result.stdout}{result.stderr}")
    return elapsed, cpu


def in_process(folder: Path, files: Path, count: int) -> tuple[float, float]:
    os.environ.setdefault("NEWSLETTER_SECRET_KEY", "bench-secret")
    config = load_config(write_config(folder, "inprocess"))
    engine = open_database(config)
    try:
        cpu, began = time.process_time(), time.perf_counter()
        report = ingest_paths(engine, [files], settings=config.ingest)
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    finally:
        engine.dispose()
    if report.added != count or report.rejected:
        sys.exit(f"ingest_paths: {report.summary_line()}")
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000], help="files per run")
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args()
    print(f"{'files':>7}  {'how':<30} {'wall':>8} {'files/s':>9} {'cpu':>8}")
    for count in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
            folder = Path(tmp)
            files = folder / "summaries"
            write_files(files, count, args.seed)
            for how, run in (("newsletter ingest (process)", whole_command), ("ingest_paths (in-process)", in_process)):
                elapsed, cpu = run(folder, files, count)
                print(f"{count:>7,}  {how:<30} {elapsed:>7.2f}s {count / elapsed:>9,.0f} {cpu:>7.2f}s")


if __name__ == "__main__":
    main()
