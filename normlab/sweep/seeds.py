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
