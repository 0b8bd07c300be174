"""Two processes on 127.0.0.1 train as one 4-device job, like one process with 4 devices.

Each process has 2 fake CPU devices and joins the job through
`normlab.parallel.distributed.initialize` (coordinator bound to loopback only). Both run the
same `train()`: each reads only its rows of every batch, both write the checkpoint, and only
process 0 logs. The 2-process job must give the losses and parameters of a 1-process run on 4
devices (the same global batches; float32 summation order may differ), and its checkpoint must
restore in a 1-process job, which then trains on.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = Path(__file__).resolve().parents[1]

WORKER = """
import json, logging, sys
port, processes, index, workdir, steps = sys.argv[1:6]
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
from normlab.parallel.distributed import initialize
if int(processes) > 1:
    initialize(f"127.0.0.1:{port}", int(processes), int(index), timeout_s=60)
import jax
from normlab.config import apply_overrides, load_config
from normlab.train.loop import train
logging.getLogger("worker").info("process %d of %d ready", jax.process_index(), jax.process_count())
config = load_config("configs/mnist_mlp.py:dataset=digits,norm=batch,runlocal")
apply_overrides(config, [f"total_steps={steps}", "eval_every_steps=0", "log_every_steps=5"])
summary = train(config, workdir, progress=False)
print("RESULT " + json.dumps({"devices": jax.device_count(), **summary["final"]}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(port, processes, index, workdir, steps, devices):
    env = {
        **os.environ,
        # the session's compile flags (conftest's NORMLAB_TEST_XLA_FLAGS), its own device count
        "XLA_FLAGS": f"{os.environ.get('NORMLAB_TEST_XLA_FLAGS', '')} "
        f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONUNBUFFERED": "1",
    }
    args = [str(a) for a in (port, processes, index, workdir, steps)]
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc) -> tuple[dict, str]:
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    result = [line for line in out.splitlines() if line.startswith("RESULT ")]
    return json.loads(result[-1][len("RESULT "):]), out


def _params(workdir: Path, step: int):
    """A checkpoint's params as NumPy arrays (the saving job's devices do not exist here)."""
    path = workdir / "checkpoints" / str(step) / "state"
    checkpointer = ocp.StandardCheckpointer()
    shapes = checkpointer.metadata(path).item_metadata.tree
    target = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), shapes)
    return checkpointer.restore(path, target)["params"]


@pytest.mark.slow
def test_two_processes_train_as_one_job(tmp_path):
    port = _free_port()
    job = [_start(port, 2, i, tmp_path / "two", 10, devices=2) for i in range(2)]
    try:
        (first, log0), (second, log1) = (_finish(p) for p in job)
    finally:
        for p in job:
            if p.poll() is None:
                p.kill()
    assert first["devices"] == second["devices"] == 4
    assert "process 0 of 2 ready" in log0 and "ready" not in log1  # process 0 logs alone
    assert first["train_loss"] == second["train_loss"]

    # one process, 4 devices: the same run, then resume the 2-process job's checkpoint; one
    # after the other, so that the second loads the first's programs from the session's
    # compilation cache (conftest) instead of compiling them again beside it
    reference, _ = _finish(_start(0, 1, 0, tmp_path / "one", 10, devices=4))
    resumed, log = _finish(_start(0, 1, 0, tmp_path / "two", 15, devices=4))
    assert "resumed from the checkpoint at step 10" in log and resumed["devices"] == 4

    np.testing.assert_allclose(first["train_loss"], reference["train_loss"], rtol=1e-6)
    two, one = _params(tmp_path / "two", 10), _params(tmp_path / "one", 10)
    for a, b in zip(sorted(_flat(two).items()), sorted(_flat(one).items()), strict=True):
        assert a[0] == b[0]
        np.testing.assert_allclose(a[1], b[1], rtol=1e-6, atol=1e-7)
    assert (tmp_path / "two" / "checkpoints" / "15").exists()


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}/{key}").items()}
    return {prefix: np.asarray(tree)}
