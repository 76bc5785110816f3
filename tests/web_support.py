"""The public app as users run it: ``newsletter serve`` in a process of its own, its log in a file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml
from playwright.sync_api import expect

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
def newsletter_serve(config_file: Path, *args: str, env: dict[str, str] | None = None,
                     cpus: set[int] | None = None) -> Iterator[Served]:
    """Run ``newsletter serve`` on a free loopback port until the block ends; waits until it answers.
    ``cpus``: the only processors it may run on."""
    port = free_port()
    log_path = config_file.parent / "serve.log"
    environment = {"NEWSLETTER_SECRET_KEY": "web-test-secret-key", **os.environ, **(env or {})}
    with log_path.open("wb") as log:  # a file, not a pipe: a full pipe nobody reads would stop the server
        server = subprocess.Popen(
            [sys.executable, "-m", "newsletter", "serve", "--port", str(port), "--config", str(config_file), *args],
            env=environment, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        if cpus is not None:  # still one thread, starting up: the threads it starts later inherit this
            os.sched_setaffinity(server.pid, cpus)
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


@contextmanager
def served_in_thread(app: Any, port: int | None = None) -> Iterator[str]:
    """``app`` under uvicorn in a thread of this process (so a test can reach into it) on ``port`` (default:
    a free loopback port) until the block ends; yields its base URL once it answers."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start within 30 s"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# An attacker's page that frames ours; onload counts every frame that finished, refused or not.
FRAMING = """<!doctype html><title>Win a prize</title>
<script>window.loaded = 0;</script>
{frames}
<iframe src="/own" onload="window.loaded++"></iframe>"""
REFUSED = "chrome-error://chromewebdata/"  # what Chromium shows in a frame it refused to load


@contextmanager
def another_site(page: str) -> Iterator[str]:
    """A web server of its own on a loopback port (so another origin, and the same address space, which
    Chromium's private network rules look at) answering ``page`` at ``/`` and a page of its own at
    ``/own``; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            body = (page if self.path == "/" else "<p id=own>framed</p>").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def frame_from_another_site(browser: Any, urls: list[str]) -> list[str]:
    """What a page of another site framing ``urls`` and then a page of its own ends up showing in each
    frame: the URL of each frame's document, once every frame has loaded."""
    frames = "\n".join(f'<iframe src="{url}" onload="window.loaded++"></iframe>' for url in urls)
    page = browser.new_page()
    try:
        for url in urls:  # each one loads fine on its own
            assert page.goto(url).ok, url
        with another_site(FRAMING.format(frames=frames)) as origin:
            page.goto(f"{origin}/")
            page.wait_for_function(f"window.loaded === {len(urls) + 1}")
            expect(page.frame_locator("iframe").last.locator("#own")).to_have_text("framed")  # framing works here
            return [frame.url.replace(origin, "<other site>") for frame in page.main_frame.child_frames]
    finally:
        page.close()
