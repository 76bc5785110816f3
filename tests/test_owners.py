"""Proof that a claim's owner died: a lock the kernel drops with the process, never a pid.

Owners here are real processes (they take their lock in a child Python process and exit, or keep
running in a PID namespace of their own); the ledger-level consequences are in test_delivery.py and
test_workers.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import make_url

from newsletter.owners import HOST, Owner, boot_id, dead, forget, runtime_folder
from tests.conftest import ROOT
from tests.tools import missing, require

pytestmark = pytest.mark.skipif(boot_id() is None, reason="needs Linux's /proc/sys/kernel/random/boot_id")

HOLD = """
import sys
from pathlib import Path
from newsletter.owners import Owner
owner = Owner(Path(sys.argv[1])).__enter__()
print(owner.name, flush=True)
sys.stdin.readline()  # hold the lock until told to go
"""


def holder(folder: Path, *prefix: str) -> tuple[subprocess.Popen[str], str]:
    """A process holding an owner's lock in ``folder`` (started under ``prefix``, e.g. unshare), and its name."""
    process = subprocess.Popen([*prefix, sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def ended(process: subprocess.Popen[str], how: str) -> None:
    if how == "kill":
        process.kill()
    else:
        assert process.stdin is not None
        process.stdin.close()  # it returns from readline and exits without leaving the context
    process.wait(timeout=30)


def test_an_owner_is_alive_while_its_process_runs_and_proven_dead_once_killed(tmp_path):
    process, name = holder(tmp_path)
    try:
        assert name.startswith(f"{HOST}:{process.pid}:")
        assert dead(tmp_path, [name]) == []
    finally:
        ended(process, "kill")
    assert dead(tmp_path, [name]) == [name]
    forget(tmp_path, [name])
    assert list(tmp_path.iterdir()) == []


def test_a_live_owner_in_another_pid_namespace_is_not_taken_for_dead(tmp_path):
    require("unshare", "needs unshare(1) (util-linux) for a PID namespace")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    if probe.returncode:
        missing(f"cannot create a PID namespace here (needs root): {probe.stderr.decode().strip()}")
    process, name = holder(tmp_path, "unshare", "--pid", "--fork", "--mount-proc", "--kill-child")
    try:
        pid = int(name.split(":")[1])  # its pid in its own namespace: 1, which here is init
        assert pid != process.pid
        assert dead(tmp_path, [name]) == []
    finally:
        ended(process, "exit")  # unshare returns once the process in the namespace has ended
    assert dead(tmp_path, [name]) == [name]


def test_a_pid_that_is_gone_proves_nothing_without_the_lock_file(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    name = f"{HOST}:{gone.stdout.strip()}:{uuid.uuid4().hex[:12]}"
    assert dead(tmp_path, [name]) == []  # perhaps a process in another PID namespace, or on another machine


def test_a_reused_pid_does_not_keep_a_dead_owner_alive(tmp_path):
    process, name = holder(tmp_path)
    ended(process, "kill")
    lock = tmp_path / f"{name.rpartition(':')[2]}.lock"
    reused = f"{HOST}:1:{name.rpartition(':')[2]}"  # the same owner, had its pid been 1 (alive here: init)
    lock.write_text(f"{boot_id()}\n{reused}\n")
    assert dead(tmp_path, [reused]) == [reused]


def test_a_lock_file_from_another_kernel_or_host_proves_nothing(tmp_path):
    process, name = holder(tmp_path)
    ended(process, "kill")
    lock = tmp_path / f"{name.rpartition(':')[2]}.lock"
    lock.write_text(f"{uuid.uuid4()}\n{name}\n")  # a folder shared with another machine of the same name
    assert dead(tmp_path, [name]) == []
    lock.write_text(f"{boot_id()}\n{name}\n")
    elsewhere = "other-host" + name[len(HOST):]
    assert dead(tmp_path, [elsewhere]) == []


def test_a_clean_exit_removes_the_lock_file_and_a_failed_one_leaves_proof(tmp_path):
    with Owner(tmp_path) as owner:
        assert owner.path.exists() and dead(tmp_path, [owner.name]) == []  # held by this process
    assert not owner.path.exists()
    with pytest.raises(RuntimeError), Owner(tmp_path) as failed:
        raise RuntimeError("the database went away before its rows were given back")
    assert dead(tmp_path, [failed.name]) == [failed.name]


def test_without_a_usable_folder_an_owner_still_works_and_is_never_proven_dead(tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the folder should be
    with Owner(blocked / "owners") as owner:
        pass
    assert "its deliveries wait for their lease to expire" in caplog.text
    assert dead(blocked / "owners", [owner.name]) == []


def test_old_lock_files_nobody_holds_are_swept(tmp_path):
    process, name = holder(tmp_path)
    ended(process, "kill")
    old = tmp_path / f"{name.rpartition(':')[2]}.lock"
    os.utime(old, (0, 0))
    with Owner(tmp_path) as owner:
        assert [p.name for p in tmp_path.iterdir()] == [owner.path.name]


def test_the_runtime_folder_is_beside_a_sqlite_database_and_the_users_runtime_folder_for_postgresql(
    tmp_path, monkeypatch
):
    assert runtime_folder(make_url(f"sqlite:///{tmp_path}/news.db")) == tmp_path / ".newsletter-owners"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert runtime_folder(make_url("postgresql+psycopg://u:secret@db/one")) == tmp_path / "newsletter-owners"
