"""Sweep expansion: trials from `sweep(add, arg)`, names, validation up front, dry run."""

import json
import shlex
import sys
from pathlib import Path

import pytest

from normlab.config import apply_overrides, load_config
from normlab.sweep import command
from normlab.sweep.expand import Sweep, Trial, expand, format_value, trial_name

ROOT = Path(__file__).resolve().parents[1]
MNIST = str(ROOT / "configs" / "mnist_mlp.py")
SPEC = f"{MNIST}:dataset=digits,runlocal"


def write_config(tmp_path: Path, sweep_body: str, name: str = "swept.py") -> Path:
    """A config file reusing mnist_mlp's get_config with the given sweep body."""
    path = tmp_path / name
    path.write_text(
        "from normlab.config import load_module\n"
        f"get_config = load_module({MNIST!r}).get_config\n\n"
        "def sweep(add, arg=None):\n" + "".join(f"    {line}\n" for line in sweep_body.splitlines())
    )
    return path


def test_mnist_sweep_expands_to_four_validated_trials(tmp_path):
    trials = expand(SPEC, tmp_path / "sw")
    expected = [(n, lr) for n in ("none", "batch") for lr in (0.1, 0.5)]
    assert [(t.overrides["model.norm"], t.overrides["lr"]) for t in trials] == expected
    assert [t.name for t in trials] == [f"norm={n},lr={lr}" for n, lr in expected]
    for trial, (norm, lr) in zip(trials, expected, strict=True):
        assert trial.workdir == str((tmp_path / "sw").resolve() / trial.name)
        assert trial.command[:4] == [sys.executable, "-m", "normlab", "train"]
        args = trial.command[4:]
        assert args[args.index("--config") + 1] == SPEC  # absolute path, arguments kept
        assert args[args.index("--workdir") + 1] == trial.workdir
        assert f"--config.model.norm={norm}" in args and f"--config.lr={lr}" in args


def test_multi_process_trials_use_the_distributed_entry_point(tmp_path):
    (trial, *_) = expand(SPEC, tmp_path, processes=2)
    assert trial.command[:3] == [sys.executable, "-m", "normlab.sweep.distributed"]
    assert "train" not in trial.command


def test_bad_overrides_are_all_reported_before_anything_runs(tmp_path):
    config = write_config(
        tmp_path,
        'add(lr=0.1)\nadd(model__norm="nonorm")\nadd(lr="fast")\nadd(**{"model.widht": 3})',
    )
    with pytest.raises(ValueError) as info:
        expand(str(config), tmp_path / "sw")
    message = str(info.value)
    assert "3 bad trial(s)" in message and "nothing was run" in message
    assert "trial 1" in message and "nonorm" in message and "batch" in message  # valid names
    assert "trial 2" in message and "expected a float" in message
    assert "trial 3" in message and "widht" in message
    assert "trial 0" not in message

    # the command fails with one error line and writes nothing
    status = command.main(["sweep", "--config", str(config), "--workdir", str(tmp_path / "sw")])
    assert status == 1
    assert not (tmp_path / "sw").exists()


def test_unsupported_value_type_duplicates_and_missing_sweep(tmp_path):
    with pytest.raises(ValueError, match=r"values must be str, int, float, bool"):
        format_value("lr", {"a": 1})
    dup = write_config(tmp_path, "add(lr=0.1)\nadd(lr=0.1)", "dup.py")
    with pytest.raises(ValueError, match=r"repeats trial 0"):
        expand(str(dup), tmp_path / "sw")
    empty = write_config(tmp_path, "pass", "empty.py")
    with pytest.raises(ValueError, match=r"added no trial"):
        expand(str(empty), tmp_path / "sw")
    plain = tmp_path / "plain.py"
    plain.write_text(
        f"from normlab.config import load_module\nget_config = load_module({MNIST!r}).get_config\n"
    )
    with pytest.raises(ValueError, match=r"defines no sweep\(add, arg\)"):
        expand(str(plain), tmp_path / "sw")


def test_sweep_receives_the_config_argument(tmp_path):
    config = write_config(tmp_path, "for lr in ((0.1, 0.2) if 'runlocal' in arg else (1.0,)):\n"
                          "    add(lr=lr)")  # fmt: skip
    assert [t.overrides for t in expand(f"{config}:runlocal", tmp_path)] == [
        {"lr": 0.1},
        {"lr": 0.2},
    ]


def test_values_round_trip_through_the_command_line(tmp_path):
    config = write_config(
        tmp_path, 'add(seed=3, lr=1e-05, model__norm="group+proxy", mesh__data=2)'
    )
    (trial,) = expand(str(config), tmp_path)
    assert trial.assignments == ["seed=3", "lr=1e-05", "model.norm=group+proxy", "mesh.data=2"]
    built = load_config(str(config))
    apply_overrides(built, trial.assignments)
    assert (built.seed, built.lr, built.model.norm, built.mesh.data) == (3, 1e-05, "group+proxy", 2)
    assert isinstance(built.seed, int) and isinstance(built.lr, float)
    assert [format_value("k", v) for v in (True, False, None, (1, 2), "s")] == [
        "true",
        "false",
        "None",
        "(1, 2)",
        "s",
    ]


def test_trial_names():
    assert trial_name({}) == "base"
    assert trial_name({"model.norm": "batch", "lr": 0.1}) == "norm=batch,lr=0.1"
    # last components collide: full keys are used
    assert trial_name({"model.lr": 1, "lr": 2}) == "model.lr=1,lr=2"
    assert trial_name({"flag": True, "path": "a/b c"}) == "flag=true,path=a_b_c"
    long = trial_name({f"key{i}": "x" * 20 for i in range(10)})
    assert len(long) == 120 and long[-9] == "-"
    assert long != trial_name({f"key{i}": "x" * 20 for i in range(11)})


def test_dry_run_prints_each_command_and_writes_nothing(tmp_path, capsys):
    workdir = tmp_path / "sw"
    status = command.main(["sweep", "--config", SPEC, "--workdir", str(workdir), "--dry-run"])
    assert status == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert [shlex.split(line) for line in printed] == [t.command for t in expand(SPEC, workdir)]
    assert not workdir.exists()


def test_sweep_json_round_trip_keeps_submissions(tmp_path):
    trials = expand(SPEC, tmp_path)
    sweep = Sweep.create(tmp_path, SPEC, trials)
    sweep.submissions.append({"backend": "slurm", "job_id": "7", "trials": [trials[0].name]})
    sweep.save()
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert data["config"] == SPEC and len(data["trials"]) == 4
    again = Sweep.create(tmp_path, SPEC, trials[:2])  # a rerun keeps the submission history
    assert again.submissions == sweep.submissions and again.created_utc == sweep.created_utc
    loaded = Sweep.load(tmp_path)
    assert [Trial.from_json(t.to_json()) for t in loaded.trials] == trials
    assert loaded.trial(trials[1].name) == trials[1]
    with pytest.raises(ValueError, match=r"no trial 'x'"):
        loaded.trial("x")
    with pytest.raises(ValueError, match=r"is not a sweep directory"):
        Sweep.load(tmp_path / "nowhere")
