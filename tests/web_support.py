"""The public app as users run it: ``newsletter serve`` in a process of its own, its log in a file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import ROOT

SETTINGS: dict[str, Any] = {
    "newsletter": {"name": "Research Weekly", "sender": "Research Weekly <digest@example.org>",
                   "postal_address": "1 Example Street, Example City", "site_url": "https://news.example.org"},
    "database": {"url": "sqlite:///newsletter.db"},
    "templates": str(ROOT / "templates"),
    "backend": {"name": "file", "options": {"outbox": "outbox"}},
}  # fmt: skip


def write_config(folder: Path, **sections: Any) -> Path:
    """``config.yaml`` in ``folder``: SETTINGS with ``sections`` replacing whole top-level sections."""
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({**SETTINGS, **sections}), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    base: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@contextmanager
def newsletter_serve(config_file: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    """Run ``newsletter serve`` on a free loopback port until the block ends; waits until it answers."""
    port = free_port()
    log_path = config_file.parent / "serve.log"
    environment = {"NEWSLETTER_SECRET_KEY": "web-test-secret-key", **os.environ, **(env or {})}
    with log_path.open("wb") as log:  # a file, not a pipe: a full pipe nobody reads would stop the server
        server = subprocess.Popen(
            [sys.executable, "-m", "newsletter", "serve", "--port", str(port), "--config", str(config_file), *args],
            env=environment, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        served = Served(f"http://127.0.0.1:{port}", log_path)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None, served.log_text()
                try:
                    if httpx.get(f"{served.base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "newsletter serve did not answer within 60 s"
                time.sleep(0.05)
            yield served
        finally:
            server.terminate()
            server.wait(timeout=20)

