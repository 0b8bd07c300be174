"""What each trial of a sweep is doing, from the files it leaves and the SLURM queue.

A trial is `finished` when its workdir's summary.json says so; `pending` or `running` while its
SLURM array task is in the queue (or, locally, while a process holds its lock file); `failed`
when its last attempt exited non-zero (its exit record in `logs/<name>.exit.json` names the
log); `interrupted` when it started but stopped without either (killed, pre-empted, timed out:
rerunning the sweep resumes it from its newest checkpoint); `not started` otherwise.

    statuses = sweep_status(Sweep.load("sweeps/bn"))
    print(format_status(statuses))
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from normlab.sweep.expand import Sweep, Trial
from normlab.sweep.seeds import metrics_files

FINISHED, PENDING, RUNNING = "finished", "pending", "running"
FAILED, INTERRUPTED, NOT_STARTED = "failed", "interrupted", "not started"


def logs_dir(sweep_dir: str | Path) -> Path:
    """`SWEEP/logs`: every trial's log, exit record and lock file."""
    return Path(sweep_dir) / "logs"


def log_path(sweep_dir: str | Path, name: str, rank: int = 0) -> Path:
    """The trial's output (all attempts, appended); process `rank` > 0 of a job gets its own."""
    return logs_dir(sweep_dir) / (f"{name}.log" if rank == 0 else f"{name}.rank{rank}.log")


def exit_path(sweep_dir: str | Path, name: str) -> Path:
    """How the trial's last attempt ended (`write_exit`)."""
    return logs_dir(sweep_dir) / f"{name}.exit.json"


def lock_path(sweep_dir: str | Path, name: str) -> Path:
    """The file a local trial's process holds an `flock` on while it runs."""
    return logs_dir(sweep_dir) / f"{name}.lock"


def read_summary(trial: Trial) -> dict[str, Any] | None:
    """The trial's summary.json (written when a run ends or is interrupted), or None."""
    path = Path(trial.workdir) / "summary.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_finished(trial: Trial) -> bool:
    """Whether the trial's summary.json says `"finished": true` (its run is complete)."""
    summary = read_summary(trial)
    return bool(summary and summary.get("finished"))


def write_exit(sweep_dir: str | Path, name: str, returncode: int, **details: Any) -> None:
    """Records how the trial's last attempt ended (the status reads it back)."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    record = {"returncode": returncode, "log": str(log_path(sweep_dir, name)), "time_utc": now}
    path = exit_path(sweep_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**record, **details}, indent=2))


def clear_exit(sweep_dir: str | Path, name: str) -> None:
    """Forgets the previous attempt's exit (a new attempt starts)."""
    exit_path(sweep_dir, name).unlink(missing_ok=True)


def read_exit(sweep_dir: str | Path, name: str) -> dict[str, Any] | None:
    """The record `write_exit` left, or None."""
    try:
        return json.loads(exit_path(sweep_dir, name).read_text())
    except (OSError, ValueError):
        return None


def lock_held(path: Path) -> bool:
    """Whether some live process holds an exclusive `flock` on `path`."""
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _last_step(trial: Trial) -> int | None:
    """The last logged step (of any seed, for a num_seeds trial); None if nothing is logged."""
    steps = [_last_logged(path) for path in metrics_files(trial.workdir)]
    return max((step for step in steps if step is not None), default=None)


def _last_logged(path: Path) -> int | None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.strip():
            try:
                return int(json.loads(line)["step"])
            except (ValueError, KeyError):
                return None
    return None


@dataclasses.dataclass
class TrialStatus:
    """The state of one trial, its progress, and where to look when it went wrong."""

    name: str
    state: str
    step: int | None = None
    total_steps: int | None = None
    log: str | None = None
    detail: str = ""


def trial_status(sweep: Sweep, trial: Trial, queue: Mapping[str, str] | None = None) -> TrialStatus:
    """The state of `trial`; `queue` maps trial names to SLURM states (PENDING, RUNNING, ...)."""
    summary = read_summary(trial)
    log = log_path(sweep.directory, trial.name)
    log_text = str(log) if log.exists() else None
    total = summary.get("total_steps") if summary else None
    if summary and summary.get("finished"):
        return TrialStatus(trial.name, FINISHED, summary.get("step"), total, log_text)
    step = _last_step(trial)
    queued = (queue or {}).get(trial.name)
    if queued is not None:
        state = PENDING if queued in ("PENDING", "CONFIGURING", "REQUEUED") else RUNNING
        return TrialStatus(trial.name, state, step, total, log_text, f"slurm {queued.lower()}")
    if lock_held(lock_path(sweep.directory, trial.name)):
        return TrialStatus(trial.name, RUNNING, step, total, log_text, "local process")
    ended = read_exit(sweep.directory, trial.name)
    if ended is not None and ended["returncode"] != 0:
        where = [ended["log"]] + ([ended["slurm_log"]] if ended.get("slurm_log") else [])
        detail = f"exit status {ended['returncode']}; see {' and '.join(where)}"
        return TrialStatus(trial.name, FAILED, step, total, ended["log"], detail)
    if log_text or step is not None or Path(trial.workdir).exists():
        detail = "stopped before finishing (killed, pre-empted or timed out); rerun to resume"
        return TrialStatus(trial.name, INTERRUPTED, step, total, log_text, detail)
    return TrialStatus(trial.name, NOT_STARTED)


def sweep_status(sweep: Sweep, queue: Mapping[str, str] | None = None) -> list[TrialStatus]:
    """`trial_status` of every trial, in the sweep's order."""
    return [trial_status(sweep, t, queue) for t in sweep.trials]


def format_status(statuses: list[TrialStatus]) -> str:
    """One line per trial, then the counts of each state."""
    width = max((len(s.name) for s in statuses), default=5)
    lines = []
    for s in statuses:
        progress = f"step {s.step}" if s.step is not None else ""
        if s.step is not None and s.total_steps:
            progress += f"/{s.total_steps}"
        line = f"{s.name:<{width}}  {s.state:<11}  {progress:<16}  {s.detail}".rstrip()
        lines.append(line)
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state] = counts.get(s.state, 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()))
    return "\n".join(lines)
