"""Transfer learning through the training system (`config.init_from`): exact backbone loading,
a fresh head, a frozen backbone that does not move, resume precedence, and the errors."""

import shutil
from pathlib import Path

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from normlab.config import apply_overrides, load_config
from normlab.models.mlp import MLP
from normlab.train.init_from import load_source, transfer_state
from normlab.train.loop import train
from normlab.train.state import init_state
from normlab.train.validate import validate

REPO = Path(__file__).resolve().parents[1]
DIGITS = f"{REPO}/configs/mnist_mlp.py:dataset=digits,norm=batch,runlocal"
BACKBONE = ("layer_00", "layer_01", "layer_02")


def _config(*overrides):
    c = load_config(DIGITS)
    apply_overrides(c, overrides)
    return c


def _saved(workdir: Path, step: int | None = None) -> dict:
    """The raw state tree of a checkpoint, read with orbax alone (not through normlab)."""
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    step = steps[-1] if step is None else step
    return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")


def _assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _differs(a, b) -> bool:
    return any(
        not np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A finished 20-step digits run (MLP 3 × 100 with BN): the transfer source."""
    workdir = tmp_path_factory.mktemp("source")
    train(_config(), workdir, progress=False)
    return workdir


def test_transfer_state_loads_exactly_the_backbone_and_a_new_head(source, tmp_path):
    # a 3-class model on the 10-class source: the head gets another shape
    config = _config(f"init_from.workdir={source}")
    model = MLP(num_classes=3, **{k: v for k, v in config.model.items() if k != "name"})
    tx = optax.sgd(0.1, momentum=0.9)
    x = np.zeros((1, 8, 8, 1), np.float32)
    fresh = init_state(model, tx, jax.random.PRNGKey(7), x)
    state = transfer_state(fresh, load_source(config.init_from), "head", tx)
    src = _saved(source)
    assert sorted(state.params) == sorted(src["params"]) == sorted([*BACKBONE, "head"])
    for name in BACKBONE:
        _assert_trees_equal(state.params[name], src["params"][name])
        _assert_trees_equal(state.batch_stats[name], src["batch_stats"][name])
    _assert_trees_equal(state.params["head"], fresh.params["head"])
    assert state.params["head"]["kernel"].shape == (100, 3)
    assert src["params"]["head"]["kernel"].shape == (100, 10)
    # a fresh optimizer: zero momentum for every param
    assert all(not np.any(np.asarray(m)) for m in jax.tree.leaves(state.opt_state))
    # the transferred model runs
    logits = model.apply(state.variables(), np.ones((4, 8, 8, 1), np.float32), train=False)
    assert logits.shape == (4, 3)


def _run(workdir: Path, source: Path, *overrides) -> dict:
    return train(_config(f"init_from.workdir={source}", *overrides), workdir, progress=False)


@pytest.fixture(scope="module")
def frozen(source, tmp_path_factory) -> Path:
    """A 20-step transfer run with a frozen backbone (checkpoints at steps 10 and 20)."""
    workdir = tmp_path_factory.mktemp("frozen")
    assert _run(workdir, source, "init_from.freeze_backbone=True")["finished"]
    return workdir


def test_frozen_backbone_stays_put_while_the_head_trains(source, frozen):
    src, got = _saved(source), _saved(frozen)
    for name in BACKBONE:  # params and BN running statistics exactly as in the source
        _assert_trees_equal(got["params"][name], src["params"][name])
        _assert_trees_equal(got["batch_stats"][name], src["batch_stats"][name])
    first = _saved(frozen, 10)  # the head moves between the checkpoints at steps 10 and 20
    assert _differs(first["params"]["head"], got["params"]["head"])
    assert _differs(src["params"]["head"], got["params"]["head"])


def test_unfrozen_transfer_trains_everything(source, tmp_path):
    _run(tmp_path, source, "total_steps=10")
    src, got = _saved(source), _saved(tmp_path)
    for name in BACKBONE:
        assert _differs(got["params"][name], src["params"][name])
        assert _differs(got["batch_stats"][name], src["batch_stats"][name])


def test_resume_takes_precedence_over_init_from(source, frozen, tmp_path):
    # `frozen`'s run, stopped after 10 steps, resumed after its source is gone
    moved = tmp_path / "moved_source"
    shutil.copytree(source, moved)
    _run(tmp_path / "run", moved, "init_from.freeze_backbone=True", "total_steps=10")
    shutil.rmtree(moved)
    resumed = _run(tmp_path / "run", moved, "init_from.freeze_backbone=True")
    assert resumed["step"] == 20
    _assert_trees_equal(_saved(tmp_path / "run")["params"], _saved(frozen)["params"])


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no such run.*does not exist"):
        _run(tmp_path / "run", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a normlab workdir"):
        _run(tmp_path / "run2", tmp_path / "empty")


def test_source_without_checkpoints_is_a_clear_error(tmp_path):
    unsaved = tmp_path / "unsaved"
    unsaved.mkdir()
    (unsaved / "config.json").write_text(_config().to_json())
    with pytest.raises(ValueError, match="has no checkpoints"):
        _run(tmp_path / "run", unsaved)


def test_unknown_head_lists_the_params_entries(source, tmp_path):
    with pytest.raises(ValueError, match=r"head='classifier'.*head, layer_00, layer_01, layer_02"):
        _run(tmp_path, source, "init_from.head=classifier")


def test_other_architecture_is_a_clear_error(source, tmp_path):
    shapes = r"'layer_00'.*has shape \(100,\) in the source and \(50,\) in this model"
    with pytest.raises(ValueError, match=shapes):
        _run(tmp_path, source, "model.width=50")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["init_from.freeze_backbone=True"], "freeze_backbone=True needs init_from.workdir"),
        (["init_from.head="], "init_from.head must name"),
    ],
)
def test_init_from_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        validate(_config(*overrides))
