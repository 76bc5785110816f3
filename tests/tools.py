"""Programs from outside Python that some tests need (Chromium, Node.js, Postfix, systemd-analyze, ...).

Where one is missing the test is skipped with one line naming the program and how to install it. With
``NEWSLETTER_TEST_REQUIRE_TOOLS=1`` (``.ci/run`` sets it, after installing them all) a missing program
fails the test instead, so CI proves that no test was skipped for want of a tool.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest

REQUIRED = os.environ.get("NEWSLETTER_TEST_REQUIRE_TOOLS") == "1"


def missing(reason: str, *, module: bool = False) -> NoReturn:
    """Skip (or, when tools are required, fail) because a program is missing; ``reason`` says which and how
    to install it. ``module=True`` at module level skips the whole file."""
    if REQUIRED:
        pytest.fail(f"{reason} (NEWSLETTER_TEST_REQUIRE_TOOLS=1 requires every tool)", pytrace=False)
    pytest.skip(reason, allow_module_level=module)


def require(command: str, reason: str) -> str:
    """The path of ``command`` in this virtualenv's bin folder or on PATH, else :func:`missing` with ``reason``."""
    path = shutil.which(command, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if path is None:
        missing(reason)
    return path
