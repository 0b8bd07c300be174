"""The streamed input path in a 2-process job on 127.0.0.1 (2 fake devices each): every process
reads only its own rows of each step's batch, yet the job takes the steps of one process with 4
devices, and evaluation counts every example once over both processes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

WORKER = """
import json, sys
port, processes, index, workdir = sys.argv[1:5]
from normlab.parallel.distributed import initialize
if int(processes) > 1:
    initialize(f"127.0.0.1:{port}", int(processes), int(index), timeout_s=60)
import jax
from normlab.config import apply_overrides, load_config
from normlab.train.loop import train
from normlab.train.metrics import read_metrics
config = load_config("configs/mnist_mlp.py:dataset=digits,norm=batch,runlocal")
apply_overrides(config, ["data.pipeline=stream", "total_steps=10", "log_every_steps=5",
                         "eval_every_steps=10", "eval_batch_size=100", "checkpoint_every_steps=10"])
train(config, workdir, progress=False)
if jax.process_index() == 0:
    print("RESULT " + json.dumps(read_metrics(workdir)))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(port, processes, index, workdir, devices):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1",
           "XLA_FLAGS": f"{os.environ.get('NORMLAB_TEST_XLA_FLAGS', '')} "
                        f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.Popen([sys.executable, "-c", WORKER, str(port), str(processes), str(index),
                             str(workdir)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _records(proc) -> list[dict] | None:
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT "):]) if lines else None


@pytest.mark.slow
def test_two_processes_stream_their_rows_and_train_as_one(tmp_path):
    port = _free_port()
    job = [_start(port, 2, i, tmp_path / "two", devices=2) for i in range(2)]
    single = _start(0, 1, 0, tmp_path / "one", devices=4)
    two, _, one = (_records(p) for p in (*job, single))
    assert [r["step"] for r in two] == [r["step"] for r in one] == [5, 10]
    # the same global batches: float32 summation order may differ between the layouts
    np.testing.assert_allclose([r["train_loss"] for r in two], [r["train_loss"] for r in one],
                               rtol=1e-5)
    assert two[-1]["eval_examples"] == one[-1]["eval_examples"] == 297  # digits test split
    assert two[-1]["eval_accuracy"] == pytest.approx(one[-1]["eval_accuracy"], abs=1e-6)
