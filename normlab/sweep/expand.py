"""A config file's `sweep(add, arg)` → trials (name, overrides, workdir, command) and sweep.json.

A config file that defines

    def sweep(add, arg=None):
        for norm in ("none", "batch"):
            for lr in (0.1, 0.5):
                add(model__norm=norm, lr=lr)        # same as add(**{"model.norm": norm, "lr": lr})

has four trials. Each `add(**overrides)` is one trial; its keys are config fields (`__` stands for
`.`) and become `--config.key=value` overrides of `get_config(arg)`, where `arg` is the text after
the colon of the config spec, handed to `sweep` too. Products, zips and lists are plain Python.
Every trial's config is built and validated here, so a bad override fails before anything runs:

    trials = expand("configs/mnist_mlp.py:dataset=digits,runlocal", "sweeps/bn")
    trials[0].name, trials[0].command    # "norm=none,lr=0.1", ("python", "-m", "normlab", ...)
    Sweep.create("sweeps/bn", spec, trials).save()     # writes sweeps/bn/sweep.json
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from normlab.config import (
    apply_overrides,
    call_config_function,
    load_config,
    load_module,
    split_spec,
)
from normlab.errors import NormlabError
from normlab.jsonfile import read_json
from normlab.sweep.seeds import group_seed_trials

SWEEP_FILE = "sweep.json"
_NAME_LIMIT = 120


@dataclasses.dataclass
class Trial:
    """One run of a sweep: `command` trains the config with `assignments` in `workdir`."""

    name: str
    overrides: dict[str, Any]
    assignments: list[str]
    workdir: str
    command: list[str]

    def to_json(self) -> dict[str, Any]:
        """The trial as sweep.json stores it (`Trial.from_json` reads it back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Trial:
        """The inverse of `to_json`."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


def format_value(key: str, value: Any) -> str:
    """The command-line text of an override value, which `apply_overrides` parses back.

    `format_value("lr", 0.1) == "0.1"`, `format_value("model.preact", True) == "true"`.
    """
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float | tuple | list):
        return repr(value)
    raise ValueError(
        f"sweep override {key}={value!r}: values must be str, int, float, bool, None, tuple or "
        f"list, got {type(value).__name__}"
    )


def _key(key: str) -> str:
    """`model__norm` → `model.norm` (keyword arguments cannot hold dots)."""
    return key.replace("__", ".")


def trial_name(overrides: dict[str, Any]) -> str:
    """`{"model.norm": "batch", "lr": 0.1}` → `"norm=batch,lr=0.1"` (a safe directory name).

    Keys are shortened to their last component unless two of them would then coincide; names
    longer than 120 characters are cut and end in a hash of the whole name.
    """
    if not overrides:
        return "base"
    keys = [_key(k) for k in overrides]
    last = [k.rsplit(".", 1)[-1] for k in keys]
    short = last if len(set(last)) == len(last) else keys
    parts = []
    for label, value in zip(short, overrides.values(), strict=True):
        parts.append(f"{label}={format_value(label, value)}")
    name = re.sub(r"[^A-Za-z0-9._+=,-]", "_", ",".join(parts))
    if len(name) > _NAME_LIMIT:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[: _NAME_LIMIT - 9]}-{digest}"
    return name


def sweep_overrides(spec: str) -> list[dict[str, Any]]:
    """Calls the spec's `sweep(add, arg)` and returns the overrides of each `add` call, in order."""
    path, arg = split_spec(spec)
    module = load_module(path)
    sweep_fn: Callable | None = getattr(module, "sweep", None)
    if sweep_fn is None:
        raise ValueError(f"config file {path!r} defines no sweep(add, arg); nothing to sweep")
    found: list[dict[str, Any]] = []

    def add(**overrides: Any) -> None:
        found.append({_key(k): v for k, v in overrides.items()})

    call_config_function(path, sweep_fn, add, arg)
    if not found:
        raise ValueError(f"sweep(add, arg) in {path!r} added no trial (arg={arg!r})")
    return found


def absolute_spec(spec: str) -> str:
    """The spec with an absolute file path, so that trials run from any directory."""
    path, arg = split_spec(spec)
    absolute = str(Path(path).resolve())
    return absolute if arg is None else f"{absolute}:{arg}"


def trial_command(spec: str, workdir: str, assignments: list[str], processes: int = 1) -> list[str]:
    """`python -m normlab train ...` for one process; the multi-process entry point otherwise."""
    module = "normlab" if processes == 1 else "normlab.sweep.distributed"
    head = [sys.executable, "-m", module] + (["train"] if processes == 1 else [])
    return [
        *head,
        "--config",
        spec,
        "--workdir",
        workdir,
        "--no-progress",
        *(f"--config.{a}" for a in assignments),
    ]


def expand(
    spec: str, sweep_dir: str | Path, *, processes: int = 1, group_seeds: bool = False
) -> list[Trial]:
    """The trials of `spec`'s sweep, each validated; raises ValueError listing every bad trial.

    `processes` > 1 makes each trial one multi-process JAX job (see `normlab.sweep.distributed`).
    `group_seeds`: trials that differ only by consecutive seeds become one `num_seeds` trial
    (`normlab.sweep.seeds`; one process only).
    """
    from normlab.train.validate import validate  # imports jax: only when a sweep is expanded

    spec = absolute_spec(spec)
    sweep_dir = Path(sweep_dir).resolve()
    trials: list[Trial] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    found = sweep_overrides(spec)
    if group_seeds:
        if processes != 1:
            raise ValueError(f"group_seeds runs a trial's seeds in one process; this sweep's "
                             f"trials have {processes} processes: drop --group-seeds")
        found = group_seed_trials(found)
    for index, overrides in enumerate(found):
        try:
            assignments = [f"{k}={format_value(k, v)}" for k, v in overrides.items()]
            name = trial_name(overrides)
            config = load_config(spec)
            apply_overrides(config, assignments)
            validate(config)
        except ValueError as err:
            problems.append(f"trial {index} {overrides}: {err}")
            continue
        if name in seen:
            problems.append(f"trial {index} {overrides} repeats trial {seen[name]} ({name})")
            continue
        seen[name] = index
        workdir = str(sweep_dir / name)
        command = trial_command(spec, workdir, assignments, processes)
        trials.append(Trial(name, overrides, assignments, workdir, command))
    if problems:
        raise ValueError(
            f"{len(problems)} bad trial(s) in the sweep of {spec}; nothing was run:\n  "
            + "\n  ".join(problems)
        )
    return trials


@dataclasses.dataclass
class Sweep:
    """A sweep directory's record (`sweep.json`): config, trials and every submission."""

    directory: Path
    config: str
    trials: list[Trial]
    submissions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    created_utc: str = ""

    @classmethod
    def create(cls, directory: str | Path, spec: str, trials: list[Trial]) -> Sweep:
        """A record for `trials`, keeping the submissions of an existing sweep.json there."""
        directory = Path(directory).resolve()
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        previous = cls.load(directory) if (directory / SWEEP_FILE).exists() else None
        return cls(
            directory,
            absolute_spec(spec),
            trials,
            previous.submissions if previous else [],
            previous.created_utc if previous else now,
        )

    @classmethod
    def load(cls, directory: str | Path) -> Sweep:
        """Reads `directory/sweep.json`; a missing file is a ValueError naming it."""
        directory = Path(directory).resolve()
        path = directory / SWEEP_FILE
        if not path.is_file():
            raise ValueError(f"{path} does not exist: {directory} is not a sweep directory")
        data = read_json(path)
        try:
            return cls(
                directory,
                data["config"],
                [Trial.from_json(t) for t in data["trials"]],
                data.get("submissions", []),
                data.get("created_utc", ""),
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise NormlabError(
                f"{path} is not a sweep record (bad or missing field {err}); rerun the "
                "`normlab sweep` command with --config to rewrite it"
            ) from None

    def save(self) -> None:
        """Writes sweep.json atomically (a reader never sees half a file)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        data = {
            "config": self.config,
            "created_utc": self.created_utc,
            "trials": [t.to_json() for t in self.trials],
            "submissions": self.submissions,
        }
        tmp = self.directory / (SWEEP_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.directory / SWEEP_FILE)

    def trial(self, name: str) -> Trial:
        """The trial called `name`; ValueError if there is none."""
        for t in self.trials:
            if t.name == name:
                return t
        raise ValueError(f"no trial {name!r} in {self.directory}")
