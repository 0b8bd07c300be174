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

from normlab.errors import NonFiniteLossError
from normlab.sweep.expand import expand
from normlab.train.evaluate import evaluate_workdir
from normlab.train.loop import train
from normlab.train.run import build_run
from normlab.train.saved import load_saved
from normlab.train.validate import validate

REPO = Path(__file__).resolve().parents[1]
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
    """K=2 seeds (5, 6) on the 8-device mesh (batch sharded, seed axis replicated): seed 6 vs
    its separate run in every per-step metric, the parameters, BN statistics and the evaluation
    (both seeds of a K=2 run against their own runs' records: the diverged-seed test)."""
    seeds_run = build_run(_config(digits_config, "num_seeds=2", f"seed={SEED}"))
    metrics = _steps(seeds_run)
    assert metrics["train_loss"].shape == (2, 20)
    evals = seeds_run.evaluate()
    leaf = jax.tree.leaves(seeds_run.state.params)[0]
    assert leaf.sharding.is_fully_replicated and leaf.shape[0] == 2
    # each seed's batch is sharded over the 8 devices: the gradients are all-reduced
    program = seeds_run.chunk.lower(seeds_run.state, *seeds_run.seed_batches.chunk_args(20, 10))
    assert "all-reduce" in program.compile().as_text()
    i = 1
    single = build_run(_config(digits_config, f"seed={SEED + i}"))
    expected = _steps(single)
    for name, values in expected.items():
        np.testing.assert_allclose(metrics[name][i], values, rtol=RTOL, atol=ATOL, err_msg=name)
    mine = jax.tree.map(lambda a: np.asarray(a[i]), seeds_run.state)
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


def _unstable(*overrides):
    """A plain ReLU MLP at lr 3 on digits: seed 7 diverges at step 11, seed 6 trains on."""
    from normlab.config import apply_overrides, load_config

    config = load_config(f"{REPO}/configs/mnist_mlp.py:dataset=digits,norm=none,act=relu,runlocal")
    apply_overrides(config, ["lr=3.0", "checkpoint_every_steps=5", "keep_checkpoints=5",
                             *overrides])
    return config


def test_a_diverged_seed_stops_as_its_own_run_while_the_others_go_on(tmp_path):
    alone = {}
    for seed in (6, 7):
        try:
            train(_unstable(f"seed={seed}"), tmp_path / str(seed), progress=False)
            alone[seed] = None
        except NonFiniteLossError as err:
            alone[seed] = str(err)
    assert alone[6] is None and "at step 11" in alone[7], alone  # the premise of this test
    workdir = tmp_path / "seeds"
    summary = train(_unstable("seed=6", "num_seeds=2"), workdir, progress=False)
    assert summary["finished"] and summary["seeds"]["diverged"] == [1]
    for i, seed in enumerate((6, 7)):
        assert _records(workdir / "seeds" / str(i)) == _records(tmp_path / str(seed))
    marker = json.loads((workdir / "seeds" / "1" / "diverged.json").read_text())
    assert marker["last_good_step"] == 10 and "seed 1 (seed=7)" in marker["message"]
    assert "non-finite training loss (nan) at step 11" in marker["message"]
    seed_summary = json.loads((workdir / "seeds" / "1" / "summary.json").read_text())
    assert not seed_summary["finished"] and seed_summary["step"] == 10
    # the diverged seed is out of `final`, as a diverged run is (reports.stats.final_metric)
    final_loss = summary["seeds"]["final"]["train_loss"]
    assert final_loss["values"][1] is None and final_loss["n"] == 1
    assert summary["final"]["train_loss"] == final_loss["values"][0]
    # resumed before the divergence (checkpoint 5): replayed, marked again, the same files
    before = {i: _records(workdir / "seeds" / str(i)) for i in range(2)}
    for step in (10, 15, 20):
        shutil.rmtree(workdir / "checkpoints" / str(step))
    again = train(_unstable("seed=6", "num_seeds=2"), workdir, progress=False)
    assert again["seeds"]["diverged"] == [1]
    assert {i: _records(workdir / "seeds" / str(i)) for i in range(2)} == before


def test_sweep_groups_trials_that_differ_only_by_consecutive_seeds(tmp_path):
    config = tmp_path / "swept.py"
    config.write_text(
        "from normlab.config import load_module\n"
        f"get_config = load_module({str(REPO / 'configs' / 'mnist_mlp.py')!r}).get_config\n\n"
        "def sweep(add, arg=None):\n"
        "    for norm in ('none', 'batch'):\n"
        "        for seed in (2, 0, 1):\n"
        "            add(model__norm=norm, seed=seed)\n"
        "    add(lr=0.3, seed=0)\n"
        "    add(lr=0.3, seed=2)\n"  # not consecutive with seed 0: two trials
        "    add(lr=0.7)\n"
    )
    spec = f"{config}:dataset=digits,runlocal"
    trials = expand(spec, tmp_path / "sw", group_seeds=True)
    assert [t.overrides for t in trials] == [
        {"model.norm": "none", "seed": 0, "num_seeds": 3},
        {"model.norm": "batch", "seed": 0, "num_seeds": 3},
        {"lr": 0.3, "seed": 0},
        {"lr": 0.3, "seed": 2},
        {"lr": 0.7},
    ]
    assert trials[0].name == "norm=none,seed=0,num_seeds=3"
    assert "--config.num_seeds=3" in trials[0].command and "--config.seed=0" in trials[0].command
    assert len(expand(spec, tmp_path / "sw")) == 9  # without the flag: every add() a trial
    with pytest.raises(ValueError, match="drop --group-seeds"):
        expand(spec, tmp_path / "sw", processes=2, group_seeds=True)


def test_bench_seeds_needs_two_seeds_to_compare(capsys):
    from normlab.bench import command

    assert command.main(["--seeds", "--num-seeds", "1"]) == 1
    assert "--num-seeds must be >= 2 to compare against separate runs, got 1" in (
        capsys.readouterr().err
    )


def test_sweep_report_of_a_seeds_trial(seeds_workdir, tmp_path):
    """`normlab report`'s row of a num_seeds trial: the across-seed means with their CI and n;
    its curve is the per-step mean over the seeds' records."""
    from normlab.sweep import collect
    from normlab.sweep.expand import Sweep, Trial

    _, workdir, summary = seeds_workdir
    trial = Trial("seed=5,num_seeds=3", {"seed": 5, "num_seeds": 3}, [], str(workdir), [])
    (row,) = collect.trial_rows(Sweep(tmp_path, "spec", [trial]))
    assert (row["status"], row["step"]) == ("finished", 20)
    spread = summary["seeds"]["final"]["eval_accuracy"]
    assert row["final_eval_accuracy"] == spread["mean"]
    assert (row["final_eval_accuracy_ci95"], row["final_eval_accuracy_n"]) == (spread["ci95"], 3)
    history = collect._history(trial)
    curve = [(r["step"], r["eval_accuracy"]) for r in history if "eval_accuracy" in r]
    per_seed = [[r["eval_accuracy"] for r in _records(workdir / "seeds" / str(i))
                 if "eval_accuracy" in r] for i in range(3)]
    assert [step for step, _ in curve] == [10, 20]
    np.testing.assert_allclose([v for _, v in curve], np.mean(per_seed, axis=0), rtol=1e-12)


def test_a_program_whose_first_seed_diverged_is_finished_when_the_others_are():
    from normlab.train.summary import across_seeds

    def seed_summary(step, loss, diverged=False):
        s = {"step": step, "total_steps": 20, "final": {"train_loss": loss},
             "best": {"train_loss": loss}, "wall_seconds_this_session": 3.0,
             "wall_seconds_total": 3.0, "finished": step >= 20}
        return {**s, "diverged": "nan at step 11"} if diverged else s

    summary = across_seeds([seed_summary(10, 2.0, diverged=True), seed_summary(20, 0.5),
                            seed_summary(20, 0.7)], [3, 4, 5])
    assert summary["finished"] and summary["step"] == 20
    assert summary["seeds"]["diverged"] == [0]
    assert summary["final"]["train_loss"] == pytest.approx(0.6)  # the diverged seed left out
    every = across_seeds([seed_summary(10, 2.0, diverged=True)] * 2, [0, 1])
    assert not every["finished"] and every["step"] == 10
