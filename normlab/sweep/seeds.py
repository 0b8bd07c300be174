"""`normlab sweep --group-seeds`: trials that differ only by `seed` run as one `num_seeds` trial.

Among a sweep's `add(...)` calls, those with equal overrides apart from `seed` whose seeds are
consecutive integers s, s + 1, ..., s + K - 1 (K > 1) become one trial with `seed=s,
num_seeds=K` (`normlab.train.seeds`: seed i of it equals the trial with seed s + i), in the place
of the first of them. Anything else stays as it was: a trial without a `seed` override, one
that already sets `num_seeds`, seeds with gaps.

    group_seed_trials([{"lr": 0.1, "seed": 0}, {"lr": 0.1, "seed": 1}, {"lr": 0.5, "seed": 0}])
    # [{"lr": 0.1, "seed": 0, "num_seeds": 2}, {"lr": 0.5, "seed": 0}]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _rest(overrides: dict[str, Any]) -> str:
    """The overrides other than `seed`, as a comparable key."""
    return json.dumps({k: v for k, v in overrides.items() if k != "seed"}, sort_keys=True,
                      default=repr)


def _groupable(overrides: dict[str, Any]) -> bool:
    seed = overrides.get("seed")
    return isinstance(seed, int) and not isinstance(seed, bool) and "num_seeds" not in overrides


def group_seed_trials(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trials' overrides with every group of consecutive seeds merged (module docstring)."""
    groups: dict[str, list[int]] = {}
    for index, overrides in enumerate(trials):
        if _groupable(overrides):
            groups.setdefault(_rest(overrides), []).append(index)
    merged_into: dict[int, dict[str, Any]] = {}
    absorbed: set[int] = set()
    for members in groups.values():
        seeds = sorted(trials[i]["seed"] for i in members)
        if len(members) < 2 or seeds != list(range(seeds[0], seeds[0] + len(seeds))):
            continue
        merged_into[members[0]] = {**trials[members[0]], "seed": seeds[0],
                                   "num_seeds": len(seeds)}
        absorbed.update(members[1:])
    return [merged_into.get(i, overrides) for i, overrides in enumerate(trials)
            if i not in absorbed]


# workdir/seeds/<i>/ of a num_seeds trial (normlab.train.seeds.SEEDS, which is not imported
# here: it loads jax, and `normlab sweep --status` / `normlab report` do not need it)
SEEDS = "seeds"


def metrics_files(workdir: str | Path) -> list[Path]:
    """A trial's metrics.jsonl: its own, or each seed's of a num_seeds trial (seed order)."""
    own = Path(workdir) / "metrics.jsonl"
    folder = Path(workdir) / SEEDS
    if own.exists() or not folder.is_dir():
        return [own]
    return sorted(folder.glob("*/metrics.jsonl"), key=lambda path: int(path.parent.name))


def mean_records(histories: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One record per step: the mean over the histories of each metric logged at that step
    (a seed that logged nothing there, e.g. one that diverged, is left out of its mean)."""
    values: dict[int, dict[str, list[float]]] = {}
    for history in histories:
        for record in history:
            at = values.setdefault(record["step"], {})
            for name, value in record.items():
                if name != "step" and value is not None:
                    at.setdefault(name, []).append(value)
    return [{"step": step, **{name: sum(v) / len(v) for name, v in at.items()}}
            for step, at in sorted(values.items())]
