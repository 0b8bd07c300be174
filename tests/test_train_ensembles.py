"""Snapshot ensembles through the training system (the "snapshot" schedule and the snapshots it
saves) and ensemble evaluation of saved runs and snapshots (`evaluate_ensemble`)."""

import argparse
import math
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from normlab.config import apply_overrides, load_config
from normlab.data.datasets import load_arrays
from normlab.registry import MODELS, SCHEDULES
from normlab.train.ensemble_eval import add_subcommand, evaluate_ensemble
from normlab.train.loop import train
from normlab.train.metrics import read_metrics
from normlab.train.optim import build_schedule, snapshot_steps
from normlab.train.saved import load_saved, snapshot_paths

REPO = Path(__file__).resolve().parents[1]
DIGITS = f"{REPO}/configs/mnist_mlp.py:dataset=digits,norm=batch,runlocal"
SNAPSHOT = ("lr=0.5", "total_steps=30", "keep_checkpoints=1")


def _config(*overrides, snapshots: int = 0):
    c = load_config(DIGITS)
    if snapshots:
        c.schedule = {"name": "snapshot", "num_snapshots": snapshots, "warmup_steps": 0}
    apply_overrides(c, overrides)
    return c


def _np_snapshot_lr(t, total, m, lr0, warmup=0):
    """Huang et al. 2017, eq. (2), after a linear warm-up; t = updates already applied."""
    if t < warmup:
        return lr0 * t / warmup
    c = math.ceil((total - warmup) / m)
    return lr0 / 2 * (math.cos(math.pi * ((t - warmup) % c) / c) + 1)


@pytest.mark.parametrize(
    ("total", "m", "lr0", "warmup"), [(300, 3, 0.1, 0), (100, 4, 0.5, 0), (107, 5, 2.0, 7)]
)
@pytest.mark.parametrize("name", ["snapshot", "cyclic_cosine"])
def test_snapshot_schedule_and_steps_match_the_formula(name, total, m, lr0, warmup):
    fn = build_schedule(name, lr0, total, warmup_steps=warmup, num_snapshots=m)
    ts = np.arange(total + 1)
    want = np.array([_np_snapshot_lr(t, total, m, lr0, warmup) for t in ts])
    np.testing.assert_allclose(np.array([fn(t) for t in ts]), want, rtol=1e-5, atol=1e-6)
    c = math.ceil((total - warmup) / m)
    expected = [warmup + min(k * c, total - warmup) for k in range(1, m + 1)]
    schedule = {"name": name, "num_snapshots": m, "warmup_steps": warmup}
    assert snapshot_steps(schedule, total) == expected
    assert expected[-1] == total


def test_snapshot_schedule_is_registered_and_other_schedules_have_no_snapshots():
    assert SCHEDULES.get("snapshot") is SCHEDULES.get("cyclic_cosine")
    assert snapshot_steps({"name": "cosine"}, 100) == []


@pytest.fixture(scope="module")
def snap_run(tmp_path_factory) -> Path:
    """30 steps, 3 cycles of 10 (steps_per_call 5), keeping only the newest checkpoint."""
    workdir = tmp_path_factory.mktemp("snap")
    train(_config(*SNAPSHOT, snapshots=3), workdir, progress=False)
    return workdir


@pytest.fixture(scope="module")
def other_run(tmp_path_factory) -> Path:
    """An independently trained member: the same net, another seed, a constant lr."""
    workdir = tmp_path_factory.mktemp("seed1")
    train(_config("seed=1", "total_steps=20"), workdir, progress=False)
    return workdir


def _raw_state(path: Path) -> dict:
    return ocp.StandardCheckpointer().restore(path / "state")


def test_snapshots_are_saved_at_cycle_ends_and_kept(snap_run):
    assert [p.name for p in snapshot_paths(snap_run)] == ["10", "20", "30"]
    # the periodic checkpoints are garbage-collected (keep_checkpoints=1), the snapshots not
    checkpoints = sorted(p.name for p in (snap_run / "checkpoints").iterdir() if p.name.isdigit())
    assert checkpoints == ["30"]
    last = _raw_state(snap_run / "snapshots" / "30")["params"]
    final = _raw_state(snap_run / "checkpoints" / "30")["params"]
    for a, b in zip(jax.tree.leaves(last), jax.tree.leaves(final), strict=True):
        np.testing.assert_array_equal(a, b)
    first = _raw_state(snap_run / "snapshots" / "10")["params"]
    assert not np.array_equal(first["head"]["kernel"], last["head"]["kernel"])
    # the logged lr (of the last step of each 5-step chunk, t = step − 1) follows eq. (2)
    for record in read_metrics(snap_run):
        want = _np_snapshot_lr(record["step"] - 1, 30, 3, 0.5)
        assert record["lr"] == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert load_saved(snap_run / "snapshots" / "20").step == 20


def test_misaligned_snapshots_are_rejected_before_training(tmp_path):
    # 4 cycles of ceil(30/4) = 8 steps do not end on the 5-step chunks
    config = _config(*SNAPSHOT, snapshots=4)
    with pytest.raises(ValueError, match=r"num_snapshots=4.*\[8, 16, 24, 30\].*steps_per_call=5"):
        train(config, tmp_path, progress=False)
    assert not (tmp_path / "checkpoints").exists()


def _np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _member_logits(paths):
    """Each member's test logits, from its orbax files and a model built here."""
    config = load_config(DIGITS)
    model = MODELS.build("mlp", num_classes=10,
                         **{k: v for k, v in config.model.items() if k != "name"})
    images, labels = load_arrays("digits", "test")
    x = images.astype(np.float32) / 255.0  # the config's preprocessing is "none"
    out = []
    for path in paths:
        raw = _raw_state(path)
        variables = {"params": raw["params"], "batch_stats": raw["batch_stats"]}
        out.append(np.asarray(model.apply(variables, x, train=False), np.float64))
    return np.stack(out), labels


@pytest.mark.parametrize("average", ["probs", "logits"])
def test_ensemble_of_snapshots_matches_numpy(snap_run, average):
    paths = snapshot_paths(snap_run)
    logits_KNC, labels = _member_logits(paths)
    if average == "probs":
        p_NC = np.mean(np.exp(_np_log_softmax(logits_KNC)), axis=0)
    else:
        p_NC = np.exp(_np_log_softmax(np.mean(logits_KNC, axis=0)))
    want_acc = np.mean(np.argmax(p_NC, -1) == labels)
    want_nll = -np.mean(np.log(p_NC[np.arange(len(labels)), labels]))
    result = evaluate_ensemble(paths, "test", average=average, batch_size=100)  # 297 = 2×100+97
    assert result["num_members"] == 3 and result["split"] == "test"
    assert result["accuracy"] == pytest.approx(want_acc, abs=1e-12)
    assert result["loss"] == pytest.approx(want_nll, rel=1e-5)
    member_acc = np.mean(np.argmax(logits_KNC, -1) == labels, axis=1)
    np.testing.assert_allclose(result["member_accuracies"], member_acc, atol=1e-12)
    member_nll = -np.mean(_np_log_softmax(logits_KNC)[:, np.arange(len(labels)), labels], axis=1)
    np.testing.assert_allclose(result["member_losses"], member_nll, rtol=1e-5)


def test_ensemble_of_independent_runs_matches_numpy(snap_run, other_run):
    members = [snap_run, other_run]  # workdirs: their newest checkpoints
    paths = [snap_run / "checkpoints" / "30", other_run / "checkpoints" / "20"]
    logits_KNC, labels = _member_logits(paths)
    p_NC = np.mean(np.exp(_np_log_softmax(logits_KNC)), axis=0)
    result = evaluate_ensemble(members)  # the config's first eval split: digits "test"
    assert result["accuracy"] == pytest.approx(np.mean(np.argmax(p_NC, -1) == labels))
    want_nll = -np.mean(np.log(p_NC[np.arange(len(labels)), labels]))
    assert result["loss"] == pytest.approx(want_nll, rel=1e-5)


def test_ensemble_command(snap_run, capsys):
    parser = argparse.ArgumentParser(prog="normlab")
    add_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["ensemble", str(snap_run), "--snapshots", "--split", "test"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.count("member ") == 3 and "ensemble of 3 (probs) on test: accuracy=" in out


def test_ensemble_errors(snap_run, tmp_path):
    with pytest.raises(ValueError, match="average must be one of"):
        evaluate_ensemble([snap_run], average="vote")
    with pytest.raises(ValueError, match="at least one"):
        evaluate_ensemble([])
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        evaluate_ensemble([snap_run], batch_size=0)
    with pytest.raises(ValueError, match=r"no complete state at step 15.*\[10, 20, 30\]"):
        load_saved(snap_run / "snapshots" / "15")
    with pytest.raises(ValueError, match="neither a normlab workdir"):
        load_saved(snap_run / "metrics.jsonl")
    with pytest.raises(ValueError, match="has no snapshots"):
        snapshot_paths(tmp_path)


def test_members_must_share_the_model(snap_run, tmp_path):
    train(_config("total_steps=5", "model.width=20"), tmp_path, progress=False)
    with pytest.raises(ValueError, match="members must share the model"):
        evaluate_ensemble([snap_run, tmp_path])
