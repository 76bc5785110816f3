"""The README's first command, run as a newcomer runs it: in a fresh copy of the project, with a fresh
virtualenv, nothing set in the environment. It must install, run the demo, print nothing that reads as
trouble, and end with a hint whose command works as printed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
LEFT_OUT = shutil.ignore_patterns(".venv", ".git", "node_modules", "__pycache__", "*.db", "*.db-*", ".secret-key",
                                  "newsletter-demo", ".hypothesis", ".pytest_cache", "outbox", "tests")


def readme_command(heading: str) -> str:
    """The first ```sh block after ``heading`` in the README."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"{re.escape(heading)}.*?```sh\n(.*?)\n```", readme, re.DOTALL)
    assert found, f"no sh block after {heading!r} in README.md"
    return found.group(1)


def test_the_first_command_installs_runs_the_demo_quietly_and_its_hint_works(tmp_path: Path) -> None:
    project = tmp_path / "my projects" / "newsletter"  # a space in the path: the hint must still work as printed
    shutil.copytree(ROOT, project, ignore=LEFT_OUT)
    environment = {name: value for name, value in os.environ.items() if not name.startswith("NEWSLETTER_")}
    first = subprocess.run(["bash", "-c", readme_command("## The two commands")], cwd=project, env=environment,
                           capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "does not provide the extra" not in first.stdout + first.stderr  # pip's lxml html_clean warning

    demo = first.stdout[first.stdout.index("summaries: "):]  # what the demo printed, after pip's output
    assert "WARNING" not in demo and "Traceback" not in demo + first.stderr[-2000:], demo
    assert len(list((project / "newsletter-demo" / "outbox").glob("*.eml"))) == 6
    hint = re.search(r"^Try the other commands on it: (.*)$", demo, re.MULTILINE)
    assert hint, demo
    assert hint.group(1).startswith(".venv/bin/newsletter ")  # not on PATH: the command as it will work
    status = subprocess.run(["bash", "-c", hint.group(1)], cwd=project, env=environment, capture_output=True,
                            text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert re.search(r"issue #1 .*sent", status.stdout), status.stdout
