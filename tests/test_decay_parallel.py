"""Weight decay is decided by what a leaf is, so every parallel layout decays the same leaves.

The pipeline stacks a run of identical layers, so a norm's γ/β of shape (C,) becomes
(layers, C): a decay mask decided by ndim would decay it there and not on one device, and the
pipeline would train another objective (issue 15 item 1). The unit tests check the mask on the
canonical and the stacked trees of a ResNet and an MLP with BN; the end-to-end test trains each
parallel mode with each penalty through `train()` and compares the per-step train loss with
one device.

Tolerance of the end-to-end test: float32 summation order differs between layouts, a few ulp
per reduction (rtol 2e-6 in tests/test_parallel_equivalence.py); 1e-5 here. Decaying the 2 × 100
stacked BN scales (γ = 1) wrongly changes the loss at step 1 by ½·l2·200 = 0.05 (l2 = 5e-4) or
l1·200 = 0.02, ~1e-2 relative; decoupled decay shrinks those γ by lr·λ per step, which moves
the loss at step 2 by ~1e-3 relative.
"""

from pathlib import Path

import jax
import numpy as np
import pytest

from normlab.config import apply_overrides, load_config
from normlab.models.mlp import MLP
from normlab.models.resnet import ResNet
from normlab.nn.penalties import default_decay_mask
from normlab.parallel.pipeline import stack_layers
from normlab.train.loop import train
from normlab.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
DIGITS = f"{REPO}/configs/mnist_mlp.py:dataset=digits,norm=batch,runlocal"
STEPS = 3


def _paths_and_mask(params):
    mask = default_decay_mask(params)
    flat_params = jax.tree_util.tree_leaves_with_path(params)
    flat_mask = jax.tree.leaves(mask)
    assert len(flat_params) == len(flat_mask)
    return [(path, leaf, bool(m)) for (path, leaf), m in zip(flat_params, flat_mask, strict=True)]


def _check_exactly_kernels(params):
    rows = _paths_and_mask(params)
    names = {path[-1].key for path, _, _ in rows}
    assert {"kernel", "scale", "bias"} <= names  # the tree really has norm params
    for path, _, decayed in rows:
        assert decayed == (path[-1].key == "kernel"), jax.tree_util.keystr(path)


MODELS = {
    "resnet8 BN": lambda: ResNet(stage_sizes=(1, 3, 1), base_width=4, num_classes=10,
                                 norm="batch"),
    "mlp BN": lambda: MLP(num_classes=10, depth=4, width=8, norm="batch", use_bias=True),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def canonical_and_stacked(request):
    model = MODELS[request.param]()
    x = np.zeros((2, 8, 8, 1), np.float32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]
    stacked = stack_layers(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params),
                           model.pipeline_segments())
    return params, stacked


def test_mask_marks_exactly_the_kernels_canonical(canonical_and_stacked):
    params, _ = canonical_and_stacked
    _check_exactly_kernels(params)


def test_mask_marks_exactly_the_kernels_pipeline_stacked(canonical_and_stacked):
    _, stacked = canonical_and_stacked
    rows = _paths_and_mask(stacked)
    # the stacked layout really has 2-D norm scales (the case a shape rule gets wrong)
    assert any(path[-1].key == "scale" and leaf.ndim == 2 for path, leaf, _ in rows)
    _check_exactly_kernels(stacked)


# Each penalty path (L2 and L1 in the loss, decoupled decay in the optimizer) reads the mask; one
# run with all three on checks them at once (a wrong mask in any moves the loss), and decoupled
# decay under Adam, where it differs from L2.
PENALTIES = {
    "l2 + l1 + decoupled (sgd)": ["weight_decay.l2=5e-4", "weight_decay.l1=1e-4",
                                  "weight_decay.decoupled=0.05"],
    "decoupled (adam)": ["weight_decay.decoupled=0.05", "optimizer.name=adam", "lr=0.01"],
}
# data parallelism under jit keeps the canonical layout (nothing to get wrong here); pmap
# replicates it per device; tensor and pipeline parallelism change what a leaf looks like
MODES = {
    "data 8 (pmap)": ["mesh.data=8", "parallel_mode=pmap"],
    "data 4 × model 2": ["mesh.data=4", "mesh.model=2"],
    "data 4 × stage 2": ["mesh.data=4", "mesh.stage=2"],
}


def _losses(tmp_path_factory, overrides, devices):
    c = load_config(DIGITS)
    apply_overrides(c, [f"total_steps={STEPS}", "steps_per_call=1", "log_every_steps=1",
                        "eval_every_steps=0", "checkpoint_every_steps=0", *overrides])
    workdir = tmp_path_factory.mktemp("decay")
    train(c, workdir, progress=False, devices=devices)
    records = [r for r in read_metrics(workdir) if "train_loss" in r]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    # the loss, and the penalty terms in it (train_l2, train_l1) where they are on
    keys = [k for k in ("train_loss", "train_l2", "train_l1") if k in records[0]]
    return {k: np.array([r[k] for r in records], np.float64) for k in keys}


_REFERENCE: dict = {}  # one-device losses, per penalty


@pytest.mark.slow
@pytest.mark.parametrize("penalty", sorted(PENALTIES))
@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_parallel_mode_trains_the_one_device_objective(tmp_path_factory, penalty, mode):
    if penalty not in _REFERENCE:
        _REFERENCE[penalty] = _losses(tmp_path_factory, PENALTIES[penalty], jax.devices()[:1])
    reference = _REFERENCE[penalty]
    for term in ("train_l2", "train_l1"):  # on where configured, and not negligible
        assert (term in reference) == (term[6:] in penalty)
        assert term not in reference or reference[term].min() > 1e-3
    got = _losses(tmp_path_factory, PENALTIES[penalty] + MODES[mode], None)
    assert sorted(got) == sorted(reference)
    for key in reference:
        np.testing.assert_allclose(got[key], reference[key], rtol=1e-5,
                                   err_msg=f"{mode}, {penalty}: {key}")


def test_adamw_decays_only_kernels():
    # AdamW's own decay takes the run's mask too: with zero gradients the update is the decay
    # alone, −lr·λ·w on kernels and exactly 0 on biases and norm parameters
    from normlab.train.optim import build_optimizer

    params = {"dense": {"kernel": np.full((2, 3), 2.0, np.float32),
                        "bias": np.ones(3, np.float32)},
              "norm": {"scale": np.ones(3, np.float32), "bias": np.ones(3, np.float32)}}
    tx, _ = build_optimizer({"name": "adamw", "weight_decay": 0.1}, {"name": "constant"},
                            base_lr=0.5, total_steps=10, decay_mask=default_decay_mask)
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.5 * 0.1 * 2.0, rtol=1e-6)
    for leaf in (updates["dense"]["bias"], updates["norm"]["scale"], updates["norm"]["bias"]):
        np.testing.assert_array_equal(leaf, 0.0)
