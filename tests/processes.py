"""A real `newsletter` process whose log (stderr) lines are collected by a thread as they arrive, so a test
can wait for a line: the condition itself, with one deadline for the whole wait, never a fixed sleep."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

TIMEOUT = 60  # seconds for one wait; generous, for a machine shared with other test runs


class LoggedProcess:
    """``python -m newsletter ARGS`` with its stderr lines in ``lines`` (and stdout in ``out`` after
    :meth:`finish`, when ``capture_stdout``)."""

    def __init__(self, *args: str, env: dict[str, str], cwd: Path | None = None, capture_stdout: bool = True,
                 timeout: float = TIMEOUT) -> None:
        self.timeout = timeout
        self.process = subprocess.Popen(
            [sys.executable, "-m", "newsletter", *args], cwd=cwd, env=env, text=True,
            stdout=subprocess.PIPE if capture_stdout else None, stderr=subprocess.PIPE,
        )
        self.lines: list[str] = []
        self.out = ""
        self._cursor = 0  # wait_for_next looks at lines from here on
        self._changed = threading.Condition()
        self._ended = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def seen(self, pattern: str) -> bool:
        with self._changed:
            return any(re.search(pattern, line) for line in self.lines)

    def _wait(self, pattern: str, start: int) -> tuple[int, re.Match[str]]:
        deadline = time.monotonic() + self.timeout
        with self._changed:
            while True:
                for index in range(start, len(self.lines)):
                    if found := re.search(pattern, self.lines[index]):
                        return index, found
                start = len(self.lines)
                assert not self._ended, f"the process ended before logging {pattern!r}:\n{self.log}"
                left = deadline - time.monotonic()
                assert left > 0 and self._changed.wait(timeout=left), f"no {pattern!r} in {self.timeout} s:\n{self.log}"

    def wait_for(self, pattern: str) -> re.Match[str]:
        """The first line so far matching ``pattern``, or the first one logged from now on."""
        return self._wait(pattern, 0)[1]

    def wait_for_next(self, pattern: str) -> str:
        """The next line after the last one this matched that matches ``pattern``."""
        with self._changed:
            index, _ = self._wait(pattern, self._cursor)
            self._cursor = index + 1
            return self.lines[index]

    def finish(self) -> int:
        """Wait for the process to end (stdout read into ``out``); its exit code."""
        if self.process.stdout is not None:
            self.out = self.process.stdout.read()
        code = self.process.wait(timeout=self.timeout)
        with self._changed:
            self._changed.wait_for(lambda: self._ended, timeout=self.timeout)
        return code

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.finish()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
