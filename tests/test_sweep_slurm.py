"""The SLURM backend against a real single-node SLURM cluster started by this module.

The cluster (munged, slurmctld, slurmd on 127.0.0.1, from scripts/slurm_local.sh) starts once
for the module and is stopped by PID at teardown. Without the slurm binaries (or not as root)
the cluster tests are skipped, except under CI=true, where that is a failure: CI installs them.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from normlab.sweep.collect import trial_rows
from normlab.sweep.distributed import slurm_job_layout
from normlab.sweep.expand import Sweep, expand
from normlab.sweep.slurm import SlurmResources, resources_for
from normlab.sweep.status import FINISHED, is_finished, log_path

ROOT = Path(__file__).resolve().parents[1]
MNIST = str(ROOT / "configs" / "mnist_mlp.py")
SPEC = f"{MNIST}:dataset=digits,runlocal"
SCRIPT = ROOT / "scripts" / "slurm_local.sh"
BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "srun")
NORMLAB = [sys.executable, "-m", "normlab.sweep.command"]  # same parser as `normlab sweep`
# one device per trial, compiled with the session's flags (conftest's NORMLAB_TEST_XLA_FLAGS)
ONE_DEVICE = (os.environ.get("NORMLAB_TEST_XLA_FLAGS", "")
              + " --xla_force_host_platform_device_count=1").strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm():
    """A running single-node cluster; SLURM_CONF points at it for the module's tests."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    reason = ""
    if missing:
        reason = f"SLURM is not installed ({', '.join(missing)} missing): apt-get install "
        reason += "slurmctld slurmd slurm-client munge"
    elif os.geteuid() != 0:
        reason = "the local SLURM cluster runs its daemons as root"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the SLURM tests: {reason}")
        pytest.skip(reason)
    # not under pytest's tmp folders: munged wants every parent of its socket open to all
    state = Path(tempfile.mkdtemp(prefix="normlab-slurm-"))
    settings = {"SLURMCTLD_PORT": str(free_port()), "SLURMD_PORT": str(free_port())}
    settings["SLURM_LOCAL_CPUS"] = "4"  # 2 cores, 4 CPUs offered: tiny trials mostly wait
    start = subprocess.run(
        ["bash", str(SCRIPT), "start", str(state)],
        env={**os.environ, **settings},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert start.returncode == 0, start.stderr
    assert start.stdout.strip() == f"export SLURM_CONF={state / 'slurm.conf'}"
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    pids = [int((state / f).read_text()) for f in ("slurmctld.pid", "slurmd.pid")]
    try:
        yield state
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(state)], timeout=120, check=True)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        for pid in pids:  # stopped by PID: the daemons are gone
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        shutil.rmtree(state)


def wait_until_gone(job_id: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
        if out.returncode == 0 and not out.stdout.strip():
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still queued after {timeout_s} s")


@pytest.mark.slow
def test_four_trial_sweep_as_one_job_array(slurm, tmp_path):
    workdir = tmp_path / "sw"
    cmd = [*NORMLAB, "sweep", "--config", SPEC, "--workdir", str(workdir), "--backend=slurm"]
    cmd += ["--slurm.max_parallel=3", "--slurm.time=10", "--slurm.mem_gb=1.5"]
    env = {**os.environ, "XLA_FLAGS": ONE_DEVICE}  # sbatch passes it on to the trials
    submitted = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    sweep = Sweep.load(workdir)
    (record,) = sweep.submissions
    assert f"submitted job array {record['job_id']}: 4 trial(s)" in submitted.stdout
    script = (workdir / "slurm" / f"{record['job_id']}_submission.sh").read_text()
    assert "#SBATCH --array=0-3%3" in script and "#SBATCH --mem=1536M" in script
    assert "#SBATCH --time=10" in script

    # the submitting command has exited; a rerun now leaves the queued trials alone
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert again.returncode == 0 and "4 trial(s) still queued or running" in again.stdout
    assert len(Sweep.load(workdir).submissions) == 1
    status = subprocess.run([*NORMLAB, "sweep", "--workdir", str(workdir), "--status"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert status.returncode == 0
    lines = status.stdout.splitlines()[:4]
    states = [line.split()[1] for line in lines]
    # a 20-step trial can finish before `--status` runs on a loaded machine; every other trial's
    # state must come from the queue
    assert all("slurm" in line for line, state in zip(lines, states, strict=True)
               if state != FINISHED)
    assert states.count("running") <= 3  # the array's limit
    if FINISHED not in states:  # nothing has freed a slot yet: the fourth trial waits
        assert states.count("pending") >= 1

    waited = subprocess.run([*NORMLAB, "sweep", "--workdir", str(workdir), "--wait"],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert waited.stdout.strip().endswith("4 finished")
    for i, trial in enumerate(sweep.trials):
        exit_record = json.loads((workdir / "logs" / f"{trial.name}.exit.json").read_text())
        assert exit_record["returncode"] == 0 and exit_record["job_id"] == f"{record['job_id']}_{i}"
        assert f"slurm job {record['job_id']}_{i}" in log_path(workdir, trial.name).read_text()

    report = subprocess.run([*NORMLAB, "report", str(workdir), "--metrics", "train_loss"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert report.returncode == 0, report.stderr
    rows = trial_rows(Sweep.load(workdir))
    assert len(rows) == 4 and all(r["status"] == FINISHED and r["step"] == 20 for r in rows)
    assert all(0 <= r["final_eval_accuracy"] <= 1 and r["final_train_loss"] > 0 for r in rows)
    table = (workdir / "report" / "results.md").read_text()
    assert sum(line.startswith("| norm=") for line in table.splitlines()) == 4


@pytest.mark.slow
def test_two_tasks_form_one_jax_job(slurm, tmp_path):
    # srun'd tasks join through normlab.sweep.distributed.initialize: 2 processes × 2 devices
    out = tmp_path / "check"
    job = subprocess.run(
        [
            "sbatch", "--parsable", "--ntasks=2", "--time=5", f"--output={tmp_path}/check.out",
            "--export=ALL,XLA_FLAGS=--xla_force_host_platform_device_count=2",
            "--wrap", f"srun {sys.executable} -m normlab.sweep.distributed --check {out}",
        ],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout.strip()  # fmt: skip
    wait_until_gone(job)
    seen = [json.loads((out / f"process_{i}.json").read_text()) for i in range(2)]
    for i, report in enumerate(seen):
        assert report["process_index"] == i and report["process_count"] == 2
        assert report["local_device_count"] == 2 and report["device_count"] == 4
        assert report["gathered_process_indices"] == [0, 1]  # a collective across processes

    # a whole training trial with 2 tasks through the sweep: one run over 4 devices
    config = tmp_path / "one.py"
    config.write_text(
        f"from normlab.config import load_module\nget_config = load_module({MNIST!r}).get_config\n"
        "def sweep(add, arg=None):\n    add(lr=0.1)\n"
    )
    spec = f"{config}:dataset=digits,runlocal"
    workdir = tmp_path / "sw"
    run = subprocess.run(
        [
            *NORMLAB, "sweep", "--config", spec, "--workdir", str(workdir), "--backend=slurm",
            "--slurm.tasks_per_node=2", "--slurm.time=10", "--wait",
            "--slurm.setup=export XLA_FLAGS=--xla_force_host_platform_device_count=2",
        ],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    (trial,) = expand(spec, workdir, processes=2)
    assert is_finished(trial)
    summary = json.loads((Path(trial.workdir) / "summary.json").read_text())
    assert summary["device"].startswith("4 × cpu")  # both processes' devices in one job
    assert "finished step 20/20" in log_path(workdir, trial.name, rank=1).read_text()


def test_resources_time_and_checks():
    assert SlurmResources(time="90").minutes() == 90
    assert SlurmResources(time="1:30:00").minutes() == 90
    assert SlurmResources(time="1-00:00:01").minutes() == 1441
    with pytest.raises(ValueError, match=r"--slurm.time must be minutes or \[D-\]HH:MM:SS"):
        SlurmResources(time="soon").minutes()
    with pytest.raises(ValueError, match=r"--slurm.nodes must be at least 1, got 0"):
        SlurmResources(nodes=0).check()
    with pytest.raises(ValueError, match=r"--slurm.gpus_per_trial must be .* got 3"):
        SlurmResources(nodes=2, gpus_per_trial=3).check()
    with pytest.raises(ValueError, match=r"--slurm.mem_gb must be positive, got -1"):
        SlurmResources(mem_gb=-1).check()
    params = SlurmResources(
        partition="gpu", nodes=2, tasks_per_node=4, gpus_per_trial=8, mem_gb=2, max_parallel=3
    ).executor_parameters()
    assert params == {
        "time": 60,
        "nodes": 2,
        "ntasks_per_node": 4,
        "cpus_per_task": 1,
        "array_parallelism": 3,
        "partition": "gpu",
        "mem": "2048M",
        "gpus_per_node": 4,
    }
    assert SlurmResources(nodes=2, tasks_per_node=4).processes == 8


def test_resources_from_config_then_flags(tmp_path):
    config = tmp_path / "with_slurm.py"
    config.write_text(
        f"from normlab.config import load_module\nget_config = load_module({MNIST!r}).get_config\n"
        "def slurm(arg):\n"
        "    short = arg == 'runlocal'\n"
        "    return {'partition': 'gpu', 'time': '30' if short else '600', 'nodes': 2}\n"
    )
    r = resources_for(f"{config}:runlocal", {"nodes": 1, "qos": None})
    assert (r.partition, r.time, r.nodes, r.qos) == ("gpu", "30", 1, None)
    assert resources_for(str(config), {}).time == "600"
    with pytest.raises(ValueError, match=r"unknown SLURM resource\(s\) \['gpus'\]"):
        resources_for(None, {"gpus": 1})


def test_slurm_job_layout():
    env = {"SLURM_JOB_ID": "4100", "SLURM_NTASKS": "4", "SLURM_PROCID": "3"}
    layout = slurm_job_layout({**env, "SLURM_STEP_NUM_NODES": "2"})
    assert layout == {"process_id": 3, "num_processes": 4, "num_nodes": 2, "port": 61444}
    assert slurm_job_layout(env)["num_nodes"] == 1
    with pytest.raises(ValueError, match=r"not inside a SLURM task \(SLURM_PROCID unset\)"):
        slurm_job_layout({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"})
