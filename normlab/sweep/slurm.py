"""The SLURM backend: one submitit job array per submission, a trial per array task.

    resources = resources_for(spec, {"partition": "gpu", "gpus_per_trial": 1, "max_parallel": 16})
    record = submit(sweep, trials, resources)      # sbatch --array=0-N%16, recorded in sweep.json
    queue_states(sweep)                            # {"norm=batch,lr=0.1": "RUNNING", ...}
    wait(sweep)                                    # until none of the sweep's tasks is queued

Resources come from defaults, then the config file's optional `slurm(arg) -> dict`, then the
`--slurm.*` flags (see `SlurmResources`). A trial with several tasks (`nodes * tasks_per_node`
> 1) runs `normlab.sweep.distributed` in every task, which forms one JAX job.

Inside the job, `TrialRunner` runs the trial's command as a subprocess, appending its output to
`logs/<name>.log` and its exit status to `logs/<name>.exit.json`. On pre-emption or a coming
time-out SLURM sends SIGUSR2: submitit calls `TrialRunner.checkpoint`, which asks the trial to
save (one SIGINT) and requeues the task; the requeued task resumes from that checkpoint. The
submitting command may exit: the queue (squeue) and the files are the whole state, so
`normlab sweep --status/--wait` picks the sweep up from any shell.
"""

from __future__ import annotations

import dataclasses
import datetime
import getpass
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import submitit

from normlab.config import load_module, split_spec
from normlab.sweep.expand import Sweep, Trial
from normlab.sweep.local import die_with_parent
from normlab.sweep.status import (
    FAILED,
    clear_exit,
    is_finished,
    log_path,
    sweep_status,
    write_exit,
)

_CHILD: subprocess.Popen | None = None  # the running trial, for the pre-emption handler
_STOP_SENT = False  # a second SIGINT would kill the trial before it saves


@dataclasses.dataclass
class SlurmResources:
    """What each trial (array task) asks SLURM for.

    `time` is minutes or `[D-]HH:MM:SS`; `mem_gb` per node (None: the cluster's default);
    `gpus_per_trial` is split evenly over `nodes`; `max_parallel` caps how many array tasks run
    at once; `setup` lines run in the batch script before the trial (e.g. `module load cuda`).
    """

    partition: str | None = None
    time: str = "60"
    cpus_per_task: int = 1
    mem_gb: float | None = None
    gpus_per_trial: int = 0
    nodes: int = 1
    tasks_per_node: int = 1
    max_parallel: int = 16
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list[str] = dataclasses.field(default_factory=list)

    @property
    def processes(self) -> int:
        """Processes per trial: one JAX process per task."""
        return self.nodes * self.tasks_per_node

    def minutes(self) -> int:
        """`time` in whole minutes (rounded up)."""
        text = str(self.time).strip()
        match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d+):(\d+)", text)
        if match:
            days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
            return max(1, days * 1440 + hours * 60 + minutes + (seconds > 0))
        if text.isdigit() and int(text) > 0:
            return int(text)
        raise ValueError(f"--slurm.time must be minutes or [D-]HH:MM:SS, got {self.time!r}")

    def check(self) -> None:
        """Raises ValueError naming the first bad field."""
        self.minutes()
        for name in ("cpus_per_task", "nodes", "tasks_per_node", "max_parallel"):
            if getattr(self, name) < 1:
                raise ValueError(f"--slurm.{name} must be at least 1, got {getattr(self, name)}")
        if self.gpus_per_trial < 0 or self.gpus_per_trial % self.nodes:
            raise ValueError(
                f"--slurm.gpus_per_trial must be a non-negative multiple of --slurm.nodes "
                f"({self.nodes}), got {self.gpus_per_trial}"
            )
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise ValueError(f"--slurm.mem_gb must be positive, got {self.mem_gb}")

    def executor_parameters(self) -> dict[str, Any]:
        """Keyword arguments of `submitit.SlurmExecutor.update_parameters`."""
        self.check()
        params: dict[str, Any] = {
            "time": self.minutes(),
            "nodes": self.nodes,
            "ntasks_per_node": self.tasks_per_node,
            "cpus_per_task": self.cpus_per_task,
            "array_parallelism": self.max_parallel,
        }
        optional = {
            "partition": self.partition,
            "account": self.account,
            "qos": self.qos,
            "constraint": self.constraint,
            "mem": f"{round(self.mem_gb * 1024)}M" if self.mem_gb else None,
            "gpus_per_node": self.gpus_per_trial // self.nodes if self.gpus_per_trial else None,
            "setup": list(self.setup) or None,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        return params


def resources_for(spec: str | None, flags: dict[str, Any]) -> SlurmResources:
    """Defaults, overridden by the config file's `slurm(arg)` dict, overridden by `flags`."""
    valid = {f.name for f in dataclasses.fields(SlurmResources)}
    merged: dict[str, Any] = {}
    if spec is not None:
        path, arg = split_spec(spec)
        from_config = getattr(load_module(path), "slurm", None)
        if from_config is not None:
            merged.update(from_config(arg))
    merged.update({k: v for k, v in flags.items() if v is not None})
    unknown = sorted(set(merged) - valid)
    if unknown:
        raise ValueError(f"unknown SLURM resource(s) {unknown}; valid: {', '.join(sorted(valid))}")
    resources = SlurmResources(**merged)
    resources.check()
    return resources


def _trial_preexec() -> None:
    """In the trial process, before exec: SIGUSR2 and SIGTERM are for the parent, which turns
    them into one SIGINT (save and exit); SIGINT too if the parent dies."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()


def _child_exited(process: subprocess.Popen) -> bool:
    """Whether the child has exited, without reaping it (its `wait` may be in progress)."""
    try:
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _stop_child(timeout_s: float) -> None:
    """One SIGINT to the running trial, then up to `timeout_s` for it to save and exit."""
    global _STOP_SENT
    if _CHILD is None or _child_exited(_CHILD):
        return
    if not _STOP_SENT:
        _CHILD.send_signal(signal.SIGINT)
        _STOP_SENT = True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not _child_exited(_CHILD):
        time.sleep(0.1)


class TrialFailedError(RuntimeError):
    """A trial's command exited non-zero (the message names its log)."""


class TrialRunner(submitit.helpers.Checkpointable):
    """The function each array task runs: `runner(sweep_dir, trial_json) -> summary dict`."""

    def __call__(self, sweep_dir: str, trial_json: dict[str, Any]) -> dict[str, Any]:
        global _CHILD
        trial = Trial.from_json(trial_json)
        env = submitit.JobEnvironment()
        rank = env.global_rank
        if is_finished(trial):  # e.g. a requeued task whose trial finished meanwhile
            return {"finished": True}
        if rank == 0:
            clear_exit(sweep_dir, trial.name)
        log = log_path(sweep_dir, trial.name, rank)
        log.parent.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        with log.open("a") as f:
            f.write(f"=== {now} UTC on {socket.gethostname()} (slurm job {env.job_id}, ")
            f.write(f"task {rank}/{env.num_tasks}): {subprocess.list2cmdline(trial.command)}\n")
            f.flush()
            _CHILD = subprocess.Popen(
                trial.command,
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=_trial_preexec,
            )
            # SLURM's SIGTERM (scancel, pre-emption) becomes one SIGINT: the trial saves
            signal.signal(signal.SIGTERM, lambda signum, frame: _stop_child(0))
            code = _CHILD.wait()
        if rank == 0:
            write_exit(
                sweep_dir,
                trial.name,
                code,
                job_id=env.job_id,
                slurm_log=str(env.paths.stderr),
                host=socket.gethostname(),
            )
        if code != 0:
            raise TrialFailedError(f"trial {trial.name} exited with status {code}; log: {log}")
        return {"finished": is_finished(trial)}

    def checkpoint(self, sweep_dir: str, trial_json: dict[str, Any]):
        """Pre-emption / time-out: one SIGINT makes the trial save and exit; then requeue."""
        _stop_child(timeout_s=60)  # SLURM kills the job 90 s after SIGUSR2
        return submitit.helpers.DelayedSubmission(self, sweep_dir, trial_json)


def submit(sweep: Sweep, trials: list[Trial], resources: SlurmResources) -> dict[str, Any]:
    """Submits `trials` as one job array (sbatch through submitit); records it in sweep.json."""
    if not trials:
        raise ValueError("no trial to submit")
    folder = sweep.directory / "slurm"
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=3)
    executor.update_parameters(
        job_name=f"normlab-{sweep.directory.name}", **resources.executor_parameters()
    )
    try:
        jobs = executor.map_array(
            TrialRunner(), [str(sweep.directory)] * len(trials), [t.to_json() for t in trials]
        )
    except (subprocess.CalledProcessError, FileNotFoundError) as err:
        raise ValueError(f"sbatch failed: {err}; is SLURM reachable (sinfo)?") from err
    record = {
        "backend": "slurm",
        "job_id": jobs[0].job_id.split("_")[0],
        "trials": [t.name for t in trials],
        "folder": str(folder),
        "time_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "resources": dataclasses.asdict(resources),
    }
    sweep.submissions.append(record)
    sweep.save()
    return record


def queue_states(sweep: Sweep) -> dict[str, str]:
    """SLURM state of each of the sweep's trials still in the queue (PENDING, RUNNING, ...)."""
    by_job = {s["job_id"]: s["trials"] for s in sweep.submissions if s["backend"] == "slurm"}
    if not by_job:
        return {}
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired) as err:
        detail = getattr(err, "stderr", "") or err
        raise ValueError(f"squeue failed ({str(detail).strip()}); is SLURM reachable?") from err
    states: dict[str, str] = {}
    for line in out.splitlines():
        job, _, state = line.strip().partition("|")
        array_id, _, index = job.partition("_")
        names = by_job.get(array_id)
        if names is None or (index and not index.isdigit()):
            continue
        i = int(index or 0)
        if i < len(names):
            states[names[i]] = state
    return states


def wait(
    sweep: Sweep, *, poll_s: float = 2.0, echo: Callable[[str], None] = print
) -> dict[str, str]:
    """Polls the queue until none of the sweep's trials is in it; echoes each change of state.

    Returns each trial's final state (finished, failed, interrupted, not started).
    """
    last: dict[str, str] = {}
    while True:
        queue = queue_states(sweep)
        for s in sweep_status(sweep, queue):
            if last.get(s.name) != s.state:
                echo(f"{s.name}: {s.state}" + (f" ({s.detail})" if s.state == FAILED else ""))
                last[s.name] = s.state
        if not queue:
            return last
        time.sleep(poll_s)
