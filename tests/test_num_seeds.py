"""`config.num_seeds = K`: K seeds of one config in one jitted program (`normlab.train.seeds`).

Seed i must be the run of the same config with `seed + i`: its own init, data order, dropout
and augmentation draws. On XLA:CPU the vmapped program is bit-equal to the separate runs today;
the tests allow float32 rounding (rtol 1e-6, atol 1e-7: a few ulps) because `vmap` turns the
matmuls into batched ones, which a backend may sum in another order — a different seed, batch
or dropout mask would differ by whole percents, far above that.
"""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy import stats as scipy_stats

from normlab.train.evaluate import evaluate_workdir
from normlab.train.loop import train
from normlab.train.run import build_run
from normlab.train.saved import load_saved
from normlab.train.validate import validate

RTOL, ATOL = 1e-6, 1e-7
SEED = 5


def _config(digits_config, *overrides):
    config = digits_config(*overrides)
    # every source of per-seed randomness: init, batch order, dropout and augmentation
    config.model.dropout_rate = 0.1
    config.augment = {"brightness": {"max_delta": 0.1}}
    return config


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["data.pipeline=stream"], "data.pipeline='stream'"),
        (["parallel_mode=pmap"], "parallel_mode='pmap'"),
        (["mesh.model=2", "mesh.data=4"], "mesh.model=2"),
        (["mesh.stage=2", "mesh.data=4"], "mesh.stage=2"),
        (["schedule.name=cyclic_cosine"], "schedule.name='cyclic_cosine'"),
        (["init_from.workdir=runs/source"], "init_from.workdir='runs/source'"),
    ],
    ids=["stream", "pmap", "tensor", "pipeline", "snapshot", "init_from"],
)
def test_validate_refuses_what_the_seed_program_cannot_run(digits_config, overrides, field):
    config = digits_config("num_seeds=2", *overrides)
    with pytest.raises(ValueError, match=rf"num_seeds=2 cannot run with {field}; .* num_seeds=1"):
        validate(config)
    validate(digits_config(*overrides))  # the same config with one seed is valid


def test_num_seeds_must_be_positive(digits_config):
    with pytest.raises(ValueError, match="num_seeds must be an integer >= 1, got 0"):
        validate(digits_config("num_seeds=0"))


def _steps(run, chunks=(10, 10)):
    """Per-step metrics of `chunks` chunks from the run's start, concatenated on the step axis."""
    out, step = [], 0
    for k in chunks:
        out.append(run.train_chunk(step, k))
        step += k
    return {name: np.concatenate([m[name] for m in out], axis=-1) for name in out[0]}


def test_each_seed_equals_its_own_run(digits_config):
    """K=2 seeds (5, 6) on the 8-device mesh (batch sharded, seed axis replicated) vs two
    separate runs: every per-step metric, the parameters, BN statistics and the evaluation."""
    seeds_run = build_run(_config(digits_config, "num_seeds=2", f"seed={SEED}"))
    metrics = _steps(seeds_run)
    assert metrics["train_loss"].shape == (2, 20)
    evals = seeds_run.evaluate()
    leaf = jax.tree.leaves(seeds_run.state.params)[0]
    assert leaf.sharding.is_fully_replicated and leaf.shape[0] == 2
    for i in range(2):
        single = build_run(_config(digits_config, f"seed={SEED + i}"))
        expected = _steps(single)
        for name, values in expected.items():
            np.testing.assert_allclose(metrics[name][i], values, rtol=RTOL, atol=ATOL, err_msg=name)
        mine = jax.tree.map(lambda a, i=i: np.asarray(a[i]), seeds_run.state)
        for got, want in zip(jax.tree.leaves(mine), jax.tree.leaves(single.state), strict=True):
            np.testing.assert_allclose(got, np.asarray(want), rtol=RTOL, atol=ATOL)
        for name, value in single.evaluate().items():
            np.testing.assert_allclose(evals[name][i], value, rtol=RTOL, atol=ATOL, err_msg=name)
    # the seeds are different runs (a shared seed would pass the checks above as well)
    assert np.min(np.abs(metrics["train_loss"][0] - metrics["train_loss"][1])) > 1e-3


@pytest.fixture(scope="module")
def seeds_workdir(tmp_path_factory, digits_config):
    """A finished 20-step K=3 digits run (checkpoints at 10 and 20) and its config."""
    config = _config(digits_config, "num_seeds=3", f"seed={SEED}")
    workdir = tmp_path_factory.mktemp("seeds")
    summary = train(config, workdir, progress=False)
    return config, workdir, summary


def _records(folder: Path) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    timing = ("steps_per_s", "examples_per_s")
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in lines]


def test_workdir_holds_each_seed_and_the_summary_across_seeds(seeds_workdir):
    config, workdir, summary = seeds_workdir
    per_seed = []
    for i in range(3):
        folder = workdir / "seeds" / str(i)
        seed_config = json.loads((folder / "config.json").read_text())
        assert (seed_config["seed"], seed_config["num_seeds"]) == (SEED + i, 1)
        per_seed.append(json.loads((folder / "summary.json").read_text()))
        # the seed's summary is its own metrics history's last / best values
        records = _records(folder)
        assert per_seed[i]["final"]["eval_accuracy"] == records[-1]["eval_accuracy"]
        assert records[-1]["step"] == 20 and per_seed[i]["finished"]
    assert json.loads((workdir / "summary.json").read_text()) == summary
    assert summary["num_seeds"] == 3 and summary["seeds"]["seed"] == [5, 6, 7]
    for kind in ("final", "best"):
        for name in ("eval_accuracy", "train_accuracy"):
            values = np.array([s[kind][name] for s in per_seed], np.float64)
            sd = np.sqrt(np.sum((values - values.mean()) ** 2) / 2)  # sample sd, n - 1 = 2
            half = scipy_stats.t.ppf(0.975, df=2) * sd / np.sqrt(3)
            spread = summary["seeds"][kind][name]
            assert spread["values"] == values.tolist() and spread["n"] == 3
            np.testing.assert_allclose(
                [spread["mean"], spread["sd"], spread["ci95"], summary[kind][name]],
                [values.mean(), sd, half, values.mean()], rtol=1e-12,
            )
    assert len(set(summary["seeds"]["final"]["train_loss"]["values"])) == 3  # distinct seeds


def test_resume_after_a_kill_is_exact(seeds_workdir, tmp_path):
    """A kill after the checkpoint at step 10 (the one at 20 never written, seed 1's metrics
    file cut mid-line): the rerun resumes at 10 and writes the uninterrupted run's records."""
    config, workdir, summary = seeds_workdir
    killed = tmp_path / "killed"
    shutil.copytree(workdir, killed)
    shutil.rmtree(killed / "checkpoints" / "20")
    (killed / "summary.json").unlink()
    with (killed / "seeds" / "1" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 25, "train_lo')
    resumed = train(config, killed, progress=False)
    for i in range(3):
        assert _records(killed / "seeds" / str(i)) == _records(workdir / "seeds" / str(i))
    timing = ("steps_per_s", "examples_per_s")
    for kind in ("final", "best"):
        got, want = (
            {k: v for k, v in s["seeds"][kind].items() if k not in timing}
            for s in (resumed, summary)
        )
        assert got == want


def test_eval_names_a_seed(seeds_workdir):
    """`normlab eval` of the K-seed workdir says how to pick a seed; `<workdir>/seeds/<i>`
    evaluates seed i's slice of the one checkpoint."""
    _, workdir, _ = seeds_workdir
    with pytest.raises(ValueError, match=r"holds 3 seeds .*seeds/<i> \(i = 0\.\.2\)"):
        load_saved(workdir)
    result = evaluate_workdir(workdir / "seeds" / "2")
    final = _records(workdir / "seeds" / "2")[-1]
    np.testing.assert_allclose(result["eval"]["accuracy"], final["eval_accuracy"], rtol=1e-12)
    np.testing.assert_allclose(result["eval"]["loss"], final["eval_loss"], rtol=1e-6)
    saved = load_saved(workdir / "seeds" / "2")
    assert saved.config.seed == SEED + 2 and saved.config.num_seeds == 1
    assert saved.run.evaluate() == {f"eval_{k}": v for k, v in result["eval"].items()}
