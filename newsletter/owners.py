"""Who holds a claim on deliveries, and proof that a holder on this machine has died.

An owner is named ``host:pid:nonce`` (in the ledger's ``claimed_by``, the log and ``newsletter status``).
The name proves nothing about liveness: two containers sharing the host's name run in separate PID
namespaces, where a pid means nothing to the other, and pids are reused. So before its first claim a sender
takes an exclusive ``flock`` on ``<nonce>.lock`` in the runtime folder (:func:`runtime_folder`) and holds it
until it has given its rows back. The kernel drops that lock when the process dies, however it dies
(``kill -9``, the OOM killer), in whatever PID namespace it ran. Another process that can take the lock
itself therefore knows the owner is gone, and takes its rows over at once; every other case (another
machine, a folder it cannot see, an owner from before this scheme) waits for the lease to expire.

A lock is proof only on the kernel that held it, so the file also records the kernel's boot id: a folder
shared over the network with another machine (or a machine cloned under the same name) proves nothing.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import re
import socket
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from sqlalchemy import URL

log = logging.getLogger(__name__)

HOST = socket.gethostname()
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_NONCE = re.compile(r"^[0-9a-f]{12}$")
STALE_AFTER = 7 * 86400  # seconds: unlocked lock files older than this are swept away


@functools.cache  # a process does not outlive its kernel's boot
def boot_id() -> str | None:
    """This kernel's boot id (Linux), or None where there is none: then nothing is ever proven dead."""
    try:
        return _BOOT_ID.read_text(encoding="ascii").strip() or None
    except OSError:
        return None


def runtime_folder(url: URL) -> Path:
    """Where the senders sharing the database at ``url`` keep their lock files on this machine.

    SQLite: ``.newsletter-owners/`` beside the database file, so that containers sharing the database's
    folder see each other. PostgreSQL: ``$XDG_RUNTIME_DIR/newsletter-owners``, else
    ``/run/newsletter/owners`` when ``/run`` is writable, else ``newsletter-owners-<uid>`` in the temporary
    folder. Lock files are named by a random nonce, so databases may share a folder. Processes that pick
    different folders (other users, a private /tmp) cannot prove each other dead and wait for the lease.
    """
    if url.get_backend_name() == "sqlite" and url.database:
        return Path(url.database).parent / ".newsletter-owners"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "newsletter-owners"
    if os.access("/run", os.W_OK) or Path("/run/newsletter").is_dir():
        return Path("/run/newsletter/owners")
    return Path(tempfile.gettempdir()) / f"newsletter-owners-{os.getuid()}"


def _parse(owner: str) -> tuple[str, str] | None:
    """(host, nonce) of an owner name this scheme wrote, else None."""
    host, _, rest = owner.partition(":")
    nonce = rest.rpartition(":")[2]
    return (host, nonce) if _NONCE.match(nonce) else None


class Owner:
    """This process as the holder of a claim: ``name`` goes into ``claimed_by``; while the context is open
    the lock proving it alive is held.

    Leaving the context normally removes the lock file (every row was given back). Leaving it with an
    exception leaves the file unlocked: rows the sender could not give back (the database went away) are
    then taken over at once by the next sender on this machine. Without a usable runtime folder (read-only,
    no permission) the owner still works; others then wait for its lease.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.name = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / f"{self.name.rpartition(':')[2]}.lock"

    def __enter__(self) -> Owner:
        kernel = boot_id()
        if kernel is None:
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            _sweep(self.folder)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            log.warning("cannot keep a lock file in %s (%s): if this sender dies, its deliveries wait for "
                        "their lease to expire", self.folder, exc.strerror)
            return self
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"{kernel}\n{self.name}\n".encode())
        except OSError as exc:
            os.close(fd)
            log.warning("cannot lock %s (%s): if this sender dies, its deliveries wait for their lease to "
                        "expire", self.path, exc.strerror)
            return self
        self._fd = fd
        return self

    def __exit__(self, kind: type[BaseException] | None, _exc: BaseException | None,
                 _trace: TracebackType | None) -> None:
        if self._fd is None:
            return
        if kind is None:
            self.path.unlink(missing_ok=True)  # unlinked while still locked: nobody mistakes it for a dead owner
        os.close(self._fd)  # releases the lock
        self._fd = None


def dead(folder: Path, owners: Iterable[str]) -> list[str]:
    """The owners among ``owners`` that are proven dead: they wrote a lock file in ``folder`` on this
    machine (same host name, same kernel) that nobody holds any more. Everything else (alive, another machine, no file, an
    owner from an older version) is left out: its rows wait for their lease."""
    kernel = boot_id()
    if kernel is None:
        return []
    proven = []
    for owner, path in _lock_files(folder, owners):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue  # not on this machine, not visible from here, or already cleared
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            recorded = os.read(fd, 512).decode("utf-8", "replace").split("\n")
        except OSError:
            continue  # held: the owner is alive (EWOULDBLOCK), or the file is unreadable: no proof
        finally:
            os.close(fd)
        if recorded[:2] == [kernel, owner]:
            proven.append(owner)
    return proven


def forget(folder: Path, owners: Iterable[str]) -> None:
    """Remove the lock files of dead owners whose rows were taken over."""
    for _owner, path in _lock_files(folder, owners):
        try:
            path.unlink()
        except OSError:
            pass  # another sender took them over and cleared them first


def _lock_files(folder: Path, owners: Iterable[str]) -> Iterable[tuple[str, Path]]:
    """(owner, its lock file) for the owners named by a process on a host of this name."""
    for owner in owners:
        parsed = _parse(owner or "")
        if parsed and parsed[0] == HOST:
            yield owner, folder / f"{parsed[1]}.lock"


def _sweep(folder: Path) -> None:
    """Remove lock files nobody holds that are older than a week: owners killed long ago whose rows were
    finished after their lease (the files of owners whose rows are still leased are removed on take-over)."""
    limit = time.time() - STALE_AFTER
    for path in folder.glob("*.lock"):
        try:
            if path.stat().st_mtime > limit:
                continue
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink()
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.ENOENT):
                log.debug("cannot sweep %s: %s", path, exc)
        finally:
            os.close(fd)
