"""End to end: train + eval, outputs in the workdir, NaN stop, corrupt checkpoints, kill/resume."""

import json
import re
import signal
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from cli_runs import cli, wait_for_checkpoint

from normlab.cli import main as cli_main
from normlab.config import apply_overrides, load_config
from normlab.errors import NonFiniteLossError, NormlabError
from normlab.train.evaluate import evaluate_workdir
from normlab.train.loop import train
from normlab.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
DIGITS = f"{REPO}/configs/mnist_mlp.py:dataset=digits,norm=batch,runlocal"


def _digits_config(*overrides):
    c = load_config(DIGITS)
    apply_overrides(c, overrides)
    return c


def _final_params(workdir: Path) -> dict:
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    tree = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(steps[-1]) / "state")
    return tree["params"]


def test_train_writes_metrics_tensorboard_checkpoints(tmp_path):
    config = _digits_config("total_steps=200", "eval_every_steps=100", "diag_every_steps=10")
    summary = train(config, tmp_path, progress=False)
    assert summary["finished"] and summary["step"] == 200
    # 10 classes: far above chance after 200 steps (BN's running averages need that many)
    assert summary["final"]["eval_accuracy"] > 0.5
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(5, 201, 5))
    for key in (
        "train_loss",
        "train_accuracy",
        "lr",
        "grad_norm",
        "param_norm",
        "update_norm",
        "steps_per_s",
        "examples_per_s",
    ):
        assert key in records[0]
    assert {"eval_loss", "eval_accuracy"} <= set(records[19])
    assert any(k.startswith("diag/") and k.endswith("preact_std") for k in records[1])
    assert (tmp_path / "config.json").exists() and (tmp_path / "summary.json").exists()
    for key in ("command", "device", "git_revision", "time_utc"):
        assert summary[key]
    # TensorBoard files are readable without TensorFlow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval_accuracy")] == [100, 200]
    # eval of the saved checkpoint reproduces the final eval accuracy
    result = evaluate_workdir(tmp_path)
    assert result["eval"]["accuracy"] == pytest.approx(summary["final"]["eval_accuracy"])


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    good = train(_digits_config("total_steps=10"), tmp_path, progress=False)
    bad = _digits_config("total_steps=20", "lr=1e38")
    with pytest.raises(NonFiniteLossError, match=r"at step 1[1-5].*step 10\) is kept"):
        train(bad, tmp_path, progress=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10"]
    kept = evaluate_workdir(tmp_path)["eval"]["accuracy"]
    assert kept == pytest.approx(good["final"]["eval_accuracy"])


def test_nan_stop_never_names_a_diverged_checkpoint(tmp_path):
    # checkpoints after every step: the state saved right before the loss turned non-finite
    # is itself the diverged one (its loss is that of the next step), and must not be named
    every_step = ("steps_per_call=1", "log_every_steps=1", "checkpoint_every_steps=1",
                  "eval_every_steps=0", "keep_checkpoints=100")
    train(_digits_config("total_steps=10", *every_step), tmp_path, progress=False)
    with pytest.raises(NonFiniteLossError, match=r"last good checkpoint \(step (\d+)\)") as err:
        train(_digits_config("total_steps=20", "lr=1e38", *every_step), tmp_path, progress=False)
    named = int(re.search(r"last good checkpoint \(step (\d+)\)", str(err.value)).group(1))
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == named
    kept = evaluate_workdir(tmp_path)["eval"]
    assert np.isfinite(kept["loss"]), f"checkpoint {named} evaluates to loss={kept['loss']}"


def test_corrupt_latest_checkpoint_falls_back(tmp_path, caplog):
    train(_digits_config(), tmp_path, progress=False)  # checkpoints at 10 and 20
    for f in (tmp_path / "checkpoints" / "20" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    resumed = train(_digits_config("total_steps=30"), tmp_path, progress=False)
    assert "step 20 is unreadable" in caplog.text
    assert resumed["step"] == 30
    assert [r["step"] for r in read_metrics(tmp_path)][-4:] == [15, 20, 25, 30]


LONG = [
    "--config",
    f"{REPO}/configs/mnist_mlp.py:dataset=digits,norm=batch,runlocal",
    "--config.total_steps=400",
    "--config.checkpoint_every_steps=40",
    "--no-progress",
]


@pytest.mark.slow
def test_killed_run_resumes_to_identical_parameters(tmp_path):
    # the uninterrupted run and the rerun in this process: the CLI's own `train`, without two
    # more start-ups (a subprocess inherits this process's devices and compile flags)
    long = _digits_config("total_steps=400", "checkpoint_every_steps=40")
    assert train(long, tmp_path / "ref", progress=False)["finished"]

    victim = cli(["train", "--workdir", str(tmp_path / "run"), *LONG])
    wait_for_checkpoint(tmp_path / "run", victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(metrics[-1])["step"] < 400  # really killed mid-run

    assert train(long, tmp_path / "run", progress=False)["finished"]
    ref, got = _final_params(tmp_path / "ref"), _final_params(tmp_path / "run")
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert steps == sorted(set(steps))  # no step logged twice after the resume


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_saves_and_exits_cleanly(tmp_path, sig):
    # SIGTERM is what SLURM sends a pre-empted or timed-out job before it kills it
    proc = cli(["train", "--workdir", str(tmp_path), *LONG, "--config.total_steps=100000"])
    wait_for_checkpoint(tmp_path, proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert f"interrupted ({sig.name}): saved a checkpoint at step" in out
    stopped = int(out.split("saved a checkpoint at step ")[1].split(";")[0])
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert 40 <= steps[-1] == stopped < 100000  # saved where it stopped, not at the last 40


def test_checkpoints_of_another_model_are_not_overwritten(tmp_path):
    train(_digits_config("total_steps=10"), tmp_path, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    refused = r"\[10\] do not fit this config.*nothing was (moved or overwritten|overwritten)"
    with pytest.raises(NormlabError, match=refused):
        train(_digits_config("model.width=50"), tmp_path, progress=False)
    # a refused run writes nothing: config.json still describes the checkpoints
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }


def test_cli_errors_are_one_line(capsys, tmp_path):
    assert (
        cli_main(
            [
                "train",
                "--config",
                f"{DIGITS}",
                "--config.model.norm=btach",
                "--workdir",
                str(tmp_path),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("error: unknown norm 'btach'; valid norm names:")
    assert "Traceback" not in err
    assert cli_main(["eval", "--workdir", str(tmp_path / "none")]) == 1
    assert "no config.json" in capsys.readouterr().err
