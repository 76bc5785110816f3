"""A project folder for preview tests: config file, a copy of the templates to edit, summaries in the database."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from sqlalchemy import Engine

from newsletter.db import open_database
from newsletter.demo import DEMO_SETTINGS
from tests.conftest import ROOT, make_config
from tests.helpers import add_summaries


@dataclass
class Project:
    root: Path
    config_file: Path
    templates: Path
    engine: Engine

    def edit(self, name: str, old: str, new: str) -> None:
        path = self.templates / name
        text = path.read_text(encoding="utf-8")
        assert old in text, f"{old!r} not in {name}"
        path.write_text(text.replace(old, new), encoding="utf-8")


def make_project(root: Path, summaries: int = 3) -> Project:
    templates = root / "templates"
    shutil.copytree(ROOT / "templates", templates)
    settings = {**DEMO_SETTINGS, "templates": "templates", "backend": {"name": "file", "options": {"outbox": "outbox"}}}
    config_file = root / "config.yaml"
    config_file.write_text(yaml.safe_dump(settings), encoding="utf-8")
    engine = open_database(make_config(root, **settings))
    add_summaries(engine, summaries)
    return Project(root, config_file, templates, engine)


def wait_for(condition: Callable[[], object], timeout: float = 30.0) -> float:
    """Seconds until ``condition()`` is true; AssertionError after ``timeout`` (generous: a busy machine is
    slow; how fast the preview reacts is measured by ``python -m bench.preview_reload``, not here)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - start


def form_token(client: object, path: str = "/") -> str:
    """The form token of the page at ``path``, as the page's forms carry it (a first visit also sets the desk
    session cookie the token belongs to)."""
    page = client.get(path).text  # type: ignore[attr-defined]
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert match, "no form token in the page"
    return match.group(1)
