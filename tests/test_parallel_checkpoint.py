"""Checkpoints restore on another mesh: the trainer end to end, switching parallelism mid-run.

The BN-paper MLP on `digits`: 10 steps with legacy pmap over 8 devices, then the same workdir
resumed to step 20 as a 4-data × 2-stage pipeline; it must end where an uninterrupted 20-step
run on a 4 × 2 data × model mesh ends (SGD, float32 tolerance). Checkpoints hold the canonical
parameter layout, so neither run knows how the other laid out its state.
"""

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from normlab.config import apply_overrides, load_config
from normlab.train.loop import train
from normlab.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
DIGITS = f"{REPO}/configs/mnist_mlp.py:dataset=digits,norm=batch,runlocal"


def _config(*overrides):
    c = load_config(DIGITS)
    apply_overrides(c, ["eval_every_steps=0", "log_every_steps=5", *overrides])
    return c


def _params(workdir: Path, step: int) -> dict:
    return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")[
        "params"
    ]


@pytest.mark.slow
def test_checkpoint_written_on_one_mesh_resumes_on_another(tmp_path):
    run = tmp_path / "switch"
    first = train(_config("total_steps=10", "parallel_mode=pmap"), run, progress=False)
    assert first["step"] == 10
    resumed = train(
        _config("total_steps=20", "mesh.data=4", "mesh.stage=2"), run, progress=False
    )
    assert resumed["finished"] and resumed["step"] == 20
    assert [r["step"] for r in read_metrics(run)] == [5, 10, 15, 20]  # resumed at 10

    straight = tmp_path / "straight"
    train(_config("total_steps=20", "mesh.data=4", "mesh.model=2"), straight, progress=False)
    got, want = _params(run, 20), _params(straight, 20)
    assert jax.tree.structure(got) == jax.tree.structure(want)  # canonical layout on disk
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
