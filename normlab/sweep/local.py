"""The local backend: trials as `normlab train` subprocesses, `parallel` at a time.

    results = run_local(sweep, sweep.trials, parallel=2)   # {"norm=batch,lr=0.1": "finished", ...}

Each trial's output goes to `logs/<name>.log` (appended, one header per attempt) and its exit
status to `logs/<name>.exit.json`. A failed trial does not stop the others.

Faults: each running trial holds an `flock` on `logs/<name>.lock` that its process inherits, so
a second sweep command on the same directory waits for a trial still running instead of running
it twice. Ctrl-C or SIGTERM forwards one SIGINT to every trial (each saves a checkpoint and
exits); if the sweep command itself is killed, its trials get SIGINT from the kernel
(PR_SET_PDEATHSIG) and do the same. Rerunning the sweep resumes them from their checkpoints.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from normlab.sweep.expand import Sweep, Trial
from normlab.sweep.status import (
    FAILED,
    FINISHED,
    INTERRUPTED,
    clear_exit,
    is_finished,
    lock_path,
    log_path,
    write_exit,
)

_PR_SET_PDEATHSIG = 1
_STOP_GRACE_S = 60.0


def die_with_parent() -> None:
    """Runs in the child before exec: SIGINT it when the sweep process dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGINT))


def try_lock(sweep_dir: Path, name: str) -> int | None:
    """An fd holding the trial's exclusive lock, or None if another process holds it."""
    path = lock_path(sweep_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _header(trial: Trial, how: str) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    command = subprocess.list2cmdline(trial.command)
    return f"=== {now} UTC on {socket.gethostname()} ({how}): {command}\n"


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


class _Running:
    def __init__(self, trial: Trial, process: subprocess.Popen, lock_fd: int, log_file):
        self.trial, self.process, self.lock_fd, self.log_file = trial, process, lock_fd, log_file
        self.started = time.perf_counter()

    def close(self) -> None:
        self.log_file.close()
        os.close(self.lock_fd)  # the lock goes with the last fd: the child's is closed by now


def _start(sweep: Sweep, trial: Trial, lock_fd: int) -> _Running:
    log = log_path(sweep.directory, trial.name)
    log_file = log.open("a")
    log_file.write(_header(trial, "local"))
    log_file.flush()
    clear_exit(sweep.directory, trial.name)
    process = subprocess.Popen(
        trial.command,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        pass_fds=(lock_fd,),
        start_new_session=True,  # Ctrl-C reaches the sweep only; it forwards one SIGINT
        preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
    )
    return _Running(trial, process, lock_fd, log_file)


def _stop_all(running: list[_Running], echo: Callable[[str], None]) -> None:
    """One SIGINT to each trial (it saves and exits), SIGKILL after a grace period."""
    for r in running:
        with contextlib.suppress(ProcessLookupError):
            r.process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + _STOP_GRACE_S
    for r in running:
        try:
            r.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            r.process.kill()
            r.process.wait()
        r.close()
        echo(f"stopped {r.trial.name}; rerun the sweep to resume it")


@contextlib.contextmanager
def _sigterm_as_interrupt():
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_local(
    sweep: Sweep,
    trials: list[Trial],
    parallel: int = 1,
    *,
    echo: Callable[[str], None] = print,
    poll_s: float = 0.2,
) -> dict[str, str]:
    """Runs the unfinished `trials`, `parallel` at a time; returns each one's final state.

    States are "finished", "failed" (non-zero exit; the log says why) or "interrupted".
    Ctrl-C / SIGTERM stops every trial cleanly and raises KeyboardInterrupt.
    """
    if parallel < 1:
        raise ValueError(f"--local.parallel must be at least 1, got {parallel}")
    pending = list(trials)
    running: list[_Running] = []
    results: dict[str, str] = {}
    total = len(trials)
    waiting_note: set[str] = set()
    with _sigterm_as_interrupt():
        try:
            while pending or running:
                for trial in list(pending):
                    if len(running) >= parallel:
                        break
                    fd = try_lock(sweep.directory, trial.name)
                    if fd is None:  # another sweep command's process is running it
                        if trial.name not in waiting_note:
                            echo(f"waiting for {trial.name}: another process is running it")
                            waiting_note.add(trial.name)
                        continue
                    pending.remove(trial)
                    if is_finished(trial):
                        os.close(fd)
                        results[trial.name] = FINISHED
                        echo(f"[{len(results)}/{total}] {trial.name} already finished")
                        continue
                    running.append(_start(sweep, trial, fd))
                    echo(f"started {trial.name}")
                for r in list(running):
                    code = r.process.poll()
                    if code is None:
                        continue
                    running.remove(r)
                    r.close()
                    results[r.trial.name] = _record(sweep, r, code, len(results) + 1, total, echo)
                time.sleep(poll_s)
        except KeyboardInterrupt:
            _stop_all(running, echo)
            raise
    return results


def _record(sweep: Sweep, r: _Running, code: int, index: int, total: int, echo) -> str:
    name = r.trial.name
    seconds = time.perf_counter() - r.started
    write_exit(sweep.directory, name, code, seconds=seconds, host=socket.gethostname())
    log = log_path(sweep.directory, name)
    if is_finished(r.trial):
        echo(f"[{index}/{total}] {name} finished in {seconds:.1f} s")
        return FINISHED
    if code != 0:
        echo(f"[{index}/{total}] {name} FAILED (exit status {code}): {_last_line(log)}; log: {log}")
        return FAILED
    echo(f"[{index}/{total}] {name} stopped before finishing; log: {log}")
    return INTERRUPTED
