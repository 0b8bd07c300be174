"""The workdir of a run: checked before anything is written, and locked while a run uses it.

Two trainings writing one workdir corrupt each other (duplicate steps in metrics.jsonl, orbax
failing on the other run's temporary checkpoint folders), so `train()` holds `WorkdirLock` for
the whole run and a second run fails at once, naming the holder:

    workdir = prepare_workdir("runs/a")          # NormlabError if a file, not writable, ...
    with WorkdirLock(workdir, enabled=jax.process_index() == 0):
        ...                                      # this run alone writes in runs/a

The lock is `fcntl.flock` on `workdir/.lock`, which holds the holder's pid, host and start
time. The kernel releases a flock when its process dies (even by kill -9), so the lock of a
dead run is simply taken over. Where the file system does not support flock (some network
file systems), the file's contents are the lock: a holder on this host that is no longer
running is taken over; a holder on another host cannot be checked, so the error says to delete
the file if that run is gone.

In a multi-process job only process 0 locks (`enabled=False` on the others): the processes of
one job share the workdir by design, and process 0 stands for the job.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import tempfile
from pathlib import Path
from types import TracebackType

from normlab.errors import NormlabError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
# flock not available on this file system: fall back to the pid in the file
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}


def prepare_workdir(path: str | os.PathLike) -> Path:
    """Creates the workdir `path` if needed and checks that a run can write there; returns it
    (absolute). Raises `NormlabError` naming the problem when it is a file, cannot be created
    or is not writable (tested by writing a file: permission bits do not stop root, a read-only
    mount does)."""
    workdir = Path(path).expanduser().absolute()
    if workdir.exists() and not workdir.is_dir():
        raise NormlabError(f"workdir {workdir} is a file, not a folder; choose another --workdir")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NormlabError(
            f"cannot create the workdir {workdir}: {err.strerror or err}; choose another "
            "--workdir"
        ) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=workdir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise NormlabError(
            f"workdir {workdir} is not writable: {err.strerror or err}; choose another "
            "--workdir or fix its permissions"
        ) from None
    return workdir


class WorkdirLock:
    """An exclusive lock on `workdir` for one run (see the module docstring); a context manager.

    Raises `NormlabError` on entry when another live run holds it. `enabled=False` (processes
    other than 0 of a multi-process job) makes it do nothing.
    """

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True):
        self.path = Path(workdir) / LOCK_FILE
        self.enabled = enabled
        self._file = None

    def __enter__(self) -> WorkdirLock:
        if not self.enabled:
            return self
        # "a+": opening must not erase the holder's record before we know we hold the lock
        f = self.path.open("a+")
        try:
            previous = _read_holder(f)
            if _try_flock(f):
                if previous:
                    log.info("took over the lock of %s (that run is gone)", _describe(previous))
            elif previous and _alive(previous):
                raise NormlabError(_held_message(self.path, previous))
            # else: no flock here and the recorded holder is gone (or none is recorded)
            f.seek(0)
            f.truncate()
            f.write(json.dumps(_this_holder()))
            f.flush()
        except BaseException:
            f.close()
            raise
        self._file = f
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is None:
            return
        # Empty the record first: without flock an empty file is what "free" means.
        self._file.seek(0)
        self._file.truncate()
        self._file.flush()
        with contextlib.suppress(OSError):
            fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None


def _try_flock(f) -> bool:
    """True when the flock was taken; False when flock is not supported here.

    Raises `NormlabError` when another process holds it."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise NormlabError(_held_message(Path(f.name), _read_holder(f))) from None
    except OSError as err:
        if err.errno in _NO_FLOCK:
            return False
        raise
    return True


def _this_holder() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _read_holder(f) -> dict:
    f.seek(0)
    text = f.read().strip()
    if not text:
        return {}
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {"unreadable": text[:80]}
    return holder if isinstance(holder, dict) else {"unreadable": text[:80]}


def _alive(holder: dict) -> bool:
    """Whether the recorded holder may still run: on this host, its pid exists; elsewhere it
    cannot be checked, so it counts as running."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _describe(holder: dict) -> str:
    if "unreadable" in holder:
        return f"an unknown process (the lock file says {holder['unreadable']!r})"
    return (
        f"process {holder.get('pid', '?')} on {holder.get('host', '?')} "
        f"(since {holder.get('since', '?')})"
    )


def _held_message(path: Path, holder: dict) -> str:
    who = _describe(holder) if holder else "another process"
    return (
        f"workdir {path.parent} is in use by {who}: two runs in one workdir would overwrite "
        f"each other. Wait for it to finish, stop it, or use another --workdir (if that run is "
        f"gone and this persists, delete {path})."
    )
