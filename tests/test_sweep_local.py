"""The local backend end to end: real `normlab train` trials in parallel processes.

A 4-trial sweep (mnist_mlp on digits, two short trials and two long ones) is killed midway and
rerun: the rerun runs only what was missing, resuming interrupted trials from their checkpoints,
and the report has the 4 trials. A trial whose loss becomes NaN fails without stopping the other.
"""

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from normlab.cli import build_parser
from normlab.sweep import command
from normlab.sweep.collect import trial_rows
from normlab.sweep.expand import Sweep, expand
from normlab.sweep.status import FAILED, FINISHED, is_finished, lock_held, lock_path, log_path

ROOT = Path(__file__).resolve().parents[1]
MNIST = str(ROOT / "configs" / "mnist_mlp.py")
# trials: 1 device, compiled with the session's flags (conftest's NORMLAB_TEST_XLA_FLAGS)
ENV = {**os.environ, "XLA_FLAGS": os.environ.get("NORMLAB_TEST_XLA_FLAGS", "")
       + " --xla_force_host_platform_device_count=1"}


def normlab_command() -> list[str]:
    """`python -m normlab` once the CLI has the sweep commands, else their own entry point."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(["report", "x"])
    except SystemExit:
        return [sys.executable, "-m", "normlab.sweep.command"]
    return [sys.executable, "-m", "normlab"]


def checkpoint_steps(workdir: str) -> list[int]:
    folder = Path(workdir) / "checkpoints"
    return (
        sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []
    )


def headers(sweep_dir: Path, name: str) -> int:
    """How many attempts the trial's log records."""
    path = log_path(sweep_dir, name)
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(line.startswith("=== ") for line in lines)


@pytest.mark.slow
def test_killed_local_sweep_resumes_only_what_is_missing(tmp_path):
    config = tmp_path / "uneven.py"
    config.write_text(
        "from normlab.config import load_module\n"
        f"get_config = load_module({MNIST!r}).get_config\n\n"
        "def sweep(add, arg=None):\n"
        "    for norm in ('none', 'batch'):\n"
        "        add(model__norm=norm, lr=0.1)  # 20 steps: finished before the kill\n"
        "        add(model__norm=norm, lr=0.5, total_steps=300)  # still running at the kill\n"
    )
    spec = f"{config}:dataset=digits,runlocal"
    workdir = tmp_path / "sw"
    trials = expand(spec, workdir)
    assert len(trials) == 4
    cmd = [*normlab_command(), "sweep", "--config", spec, "--workdir", str(workdir)]
    cmd.append("--local.parallel=4")

    with (tmp_path / "first.txt").open("w") as out:
        first = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=ENV)
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and first.poll() is None:
            done = [t for t in trials if is_finished(t)]
            midway = [t for t in trials if not is_finished(t) and checkpoint_steps(t.workdir)]
            if len(done) == 2 and len(midway) == 2:
                break
            time.sleep(0.2)
        assert first.poll() is None, "the sweep ended before it could be killed midway"
        first.kill()  # SIGKILL: no clean-up in the sweep process; its trials get SIGINT
        first.wait()
    while any(lock_held(lock_path(workdir, t.name)) for t in trials):  # trials saving and exiting
        time.sleep(0.2)
    finished_before = {t.name for t in trials if is_finished(t)}
    started = {t.name for t in trials if headers(workdir, t.name)}
    assert finished_before == {t.name for t in trials if "total_steps" not in t.overrides}
    summaries = {n: (workdir / n / "summary.json").stat().st_mtime_ns for n in finished_before}

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=ENV)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"4 trials, {len(finished_before)} finished" in rerun.stdout
    for trial in trials:
        if trial.name in finished_before:  # not run again
            assert headers(workdir, trial.name) == 1
            assert (Path(trial.workdir) / "summary.json").stat().st_mtime_ns == summaries[
                trial.name
            ]
        else:
            assert headers(workdir, trial.name) == 1 + (trial.name in started)
    resumed = [
        t.name
        for t in trials
        if "resumed from the checkpoint at step" in log_path(workdir, t.name).read_text()
    ]
    assert set(resumed) == started - finished_before == {t.name for t in trials} - finished_before
    for name in resumed:  # the metrics of a resumed run continue without repeating a step
        steps = [json.loads(line)["step"] for line in (workdir / name / "metrics.jsonl").open()]
        assert steps == sorted(set(steps)) and steps[-1] == 300

    assert command.main(["report", str(workdir), "--metrics", "eval_accuracy"]) == 0
    rows = trial_rows(Sweep.load(workdir))
    assert len(rows) == 4 and all(r["status"] == FINISHED for r in rows)
    assert sorted(r["step"] for r in rows) == [20, 20, 300, 300]
    assert all(0 <= r["final_eval_accuracy"] <= 1 for r in rows)
    assert (workdir / "report" / "curves_eval_accuracy.png").exists()


@pytest.mark.slow
def test_a_failing_trial_is_reported_and_the_others_finish(tmp_path):
    config = tmp_path / "failing.py"
    config.write_text(
        "from normlab.config import load_module\n"
        f"get_config = load_module({MNIST!r}).get_config\n\n"
        "def sweep(add, arg=None):\n"
        "    add(lr=0.1)\n"
        "    add(model__activation='relu', model__norm='none', lr=1e30)  # NaN at step 2\n"
    )
    workdir = tmp_path / "sw"
    spec = f"{config}:dataset=digits,runlocal"
    cmd = [*normlab_command(), "sweep", "--config", spec, "--workdir", str(workdir)]
    run = subprocess.run(
        [*cmd, "--local.parallel=2"], capture_output=True, text=True, timeout=300, env=ENV
    )
    good, bad = expand(spec, workdir)
    bad_log = log_path(workdir, bad.name)
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"{bad.name} FAILED (exit status 1)" in run.stdout and str(bad_log) in run.stdout
    assert f"{good.name} finished" in run.stdout
    assert is_finished(good) and not is_finished(bad)
    assert "non-finite training loss" in bad_log.read_text()

    status = subprocess.run([*cmd[:-4], "--workdir", str(workdir), "--status"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    line = next(x for x in status.stdout.splitlines() if x.startswith(bad.name))
    assert FAILED in line and str(bad_log) in line
    rows = {r["trial"]: r for r in trial_rows(Sweep.load(workdir))}
    assert rows[bad.name]["status"] == FAILED and rows[bad.name]["log"] == str(bad_log)
    assert rows[good.name]["status"] == FINISHED and "log" not in rows[good.name]
