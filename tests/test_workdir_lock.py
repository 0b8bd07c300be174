"""WorkdirLock between real processes (held, stale after kill -9, no-flock fallback) and the
checks of prepare_workdir (a file, a read-only folder, a parent that is a file)."""

import errno
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from normlab.errors import NormlabError
from normlab.train import workdir as workdir_module
from normlab.train.workdir import LOCK_FILE, WorkdirLock, prepare_workdir

REPO = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from normlab.train.workdir import WorkdirLock
with WorkdirLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
print("released", flush=True)
"""


def _holder(workdir: Path, seconds: float = 60.0) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(workdir), str(seconds)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line = proc.stdout.readline()
    assert line.strip() == "locked", line + proc.stdout.read()
    return proc


def test_second_process_fails_at_once_naming_the_holder(tmp_path):
    first = _holder(tmp_path)
    try:
        second = subprocess.run(
            [sys.executable, "-c", HOLD, str(tmp_path), "0"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0 and "locked" not in second.stdout
        assert "NormlabError" in second.stderr
        message = second.stderr.strip().splitlines()[-1]
        assert f"in use by process {first.pid} on {socket.gethostname()} (since " in message
        assert str(tmp_path) in message
        # and in this process too (another open file description of the same lock file)
        with pytest.raises(NormlabError, match=f"process {first.pid} "):
            WorkdirLock(tmp_path).__enter__()
    finally:
        first.kill()
        first.wait()


def test_lock_released_on_exit_and_record_cleared(tmp_path):
    with WorkdirLock(tmp_path):
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert (tmp_path / LOCK_FILE).read_text() == ""
    with WorkdirLock(tmp_path):  # free again
        pass


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
    dead = _holder(tmp_path)
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == dead.pid  # left behind
    with caplog.at_level(logging.INFO, logger="normlab.train.workdir"), WorkdirLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"took over the lock of process {dead.pid}" in caplog.text


def test_disabled_lock_does_nothing(tmp_path):
    with WorkdirLock(tmp_path), WorkdirLock(tmp_path, enabled=False):
        pass  # process > 0 of a job shares process 0's workdir


@pytest.fixture
def no_flock(monkeypatch):
    """A file system without flock support (some network file systems)."""

    def flock(f, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(workdir_module.fcntl, "flock", flock)


def _write_record(workdir: Path, pid: int, host: str) -> None:
    record = {"pid": pid, "host": host, "since": "2024-01-01T00:00:00+00:00"}
    (workdir / LOCK_FILE).write_text(json.dumps(record))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_without_flock_the_record_is_the_lock(tmp_path, no_flock):
    _write_record(tmp_path, _dead_pid(), socket.gethostname())
    with WorkdirLock(tmp_path):  # a dead holder on this host: taken over
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_record(tmp_path, sleeper.pid, socket.gethostname())
        with pytest.raises(NormlabError, match=f"in use by process {sleeper.pid} "):
            WorkdirLock(tmp_path).__enter__()
    finally:
        sleeper.kill()
        sleeper.wait()
    # on another host the pid cannot be checked: refused, and the message says what to delete
    _write_record(tmp_path, 1, "elsewhere.example")
    lock_file = tmp_path / LOCK_FILE
    with pytest.raises(NormlabError, match=rf"on elsewhere\.example .*delete {lock_file}"):
        WorkdirLock(tmp_path).__enter__()


def test_flock_is_released_when_the_holder_exits(tmp_path):
    proc = _holder(tmp_path, seconds=0.0)
    assert proc.stdout.readline().strip() == "released"
    proc.wait()
    with (tmp_path / LOCK_FILE).open("a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still held


def test_prepare_workdir_creates_and_returns_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    made = prepare_workdir("runs/a")
    assert made == tmp_path / "runs" / "a" and made.is_dir() and made.is_absolute()
    assert list(made.iterdir()) == []  # the write probe is gone


def test_prepare_workdir_rejects_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(NormlabError, match=f"workdir {target} is a file, not a folder"):
        prepare_workdir(target)
    with pytest.raises(NormlabError, match=f"cannot create the workdir {target / 'sub'}"):
        prepare_workdir(target / "sub")


def test_prepare_workdir_rejects_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        probe = folder / "probe"
        try:
            probe.write_text("x")
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip("permission bits do not stop this user (root): no read-only folder")
        with pytest.raises(NormlabError, match=f"workdir {folder} is not writable"):
            prepare_workdir(folder)
    finally:
        folder.chmod(0o755)


def test_prepare_workdir_names_a_failed_write(tmp_path, monkeypatch):
    """What a read-only mount does even to root: the write probe fails."""

    def refuse(**kw):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(workdir_module.tempfile, "mkstemp", refuse)
    with pytest.raises(NormlabError, match=f"{tmp_path} is not writable: Read-only file system"):
        prepare_workdir(tmp_path)


def test_second_lock_fails_fast(tmp_path):
    """'At once': the refusal does not wait for the holder."""
    first = _holder(tmp_path)
    try:
        start = time.monotonic()
        with pytest.raises(NormlabError):
            WorkdirLock(tmp_path).__enter__()
        assert time.monotonic() - start < 5.0
    finally:
        first.kill()
        first.wait()
