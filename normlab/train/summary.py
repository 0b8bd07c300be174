"""`summary.json`: a run's final and best metrics, from its whole metrics history.

Built from `workdir/metrics.jsonl` (every session's records: a resumed or rerun run keeps the
records before its resume step), so a kill + resume or a rerun of a finished run gives the same
summary as one uninterrupted run:

    final[name] = the last logged (finite) value of every metric
    best[name]  = the maximum over the history of every metric whose name ends in "accuracy"
                  (only accuracies: a "best loss" would mix train and eval meanings)

Wall time: `wall_seconds_this_session` (this call's `seconds`) and `wall_seconds_total`, this
session plus every earlier session recorded in `workdir/sessions.json` (`MetricWriter`), killed
ones included up to their last record. Sweep reports (`normlab.sweep.collect`) read these keys.

    summary = summarize(workdir, step=200, total_steps=200, seconds=31.5)

A K-seed run (`num_seeds`, `normlab.train.seeds`) has one such summary per seed, from
`workdir/seeds/<i>/`, and `across_seeds` makes the run's own: `final` and `best` are the means
over the seeds of each seed's final and best (the single-seed keys' meaning, averaged), and a
`seeds` block holds, per metric, every seed's value with n, mean, sample sd and the half-width
of the 95% Student-t CI of the mean (`normlab.sample_stats`; seeds without a finite value are
left out of n). A diverged seed (its summary has `diverged`, the reason) counts in `best` but
not in `final`, as `normlab.reports.stats.final_metric` / `best_metric` count a diverged run.

    summary = across_seeds([summarize(f, ...) for f in seed_folders], seeds=[0, 1, 2])
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from normlab import sample_stats
from normlab.train.metrics import read_metrics, read_sessions
from normlab.train.run_info import run_info


def final_and_best(records: list[dict]) -> tuple[dict[str, float], dict[str, float]]:
    """(final, best) of metric records `{"step": int, name: float | None}` (see module doc)."""
    final: dict[str, float] = {}
    best: dict[str, float] = {}
    for record in records:
        for name, value in record.items():
            if name == "step" or value is None:  # None: a non-finite value
                continue
            final[name] = value
            if name.endswith("accuracy"):
                best[name] = max(best.get(name, value), value)
    return final, best


def summarize(
    workdir: str | Path, *, step: int, total_steps: int, seconds: float
) -> dict[str, Any]:
    """The summary of the run in `workdir` after a session that ended at `step` and took
    `seconds`: finished, step, total_steps, final, best, wall times and provenance."""
    workdir = Path(workdir)
    has_metrics = (workdir / "metrics.jsonl").exists()  # absent on other hosts' disks
    final, best = final_and_best(read_metrics(workdir) if has_metrics else [])
    # The last recorded session is this one; its own `seconds` (from the start of train())
    # also covers what happened before its metric writer opened.
    earlier = sum(float(s["seconds"]) for s in read_sessions(workdir)[:-1])
    return {
        "finished": step >= total_steps,
        "step": step,
        "total_steps": total_steps,
        "final": final,
        "best": best,
        "wall_seconds_this_session": seconds,
        "wall_seconds_total": earlier + seconds,
        **run_info(),
    }


def _spread(values: list[float | None]) -> dict[str, Any]:
    """Every seed's value (None: none logged) with n, mean, sd and the 95% CI half-width."""
    summary = sample_stats.summarize(values)
    finite = lambda x: x if math.isfinite(x) else None  # noqa: E731 - JSON has no NaN
    return {"values": values, "n": summary.n, "mean": finite(summary.mean),
            "sd": finite(summary.sd), "ci95": finite(summary.ci)}


def across_seeds(per_seed: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """The summary of a K-seed run from its seeds' summaries (see the module docstring)."""
    spread = {}
    for kind in ("final", "best"):
        names = list(dict.fromkeys(name for s in per_seed for name in s[kind]))
        spread[kind] = {
            name: _spread([
                None if kind == "final" and "diverged" in s else s[kind].get(name)
                for s in per_seed
            ])
            for name in names
        }
    first = per_seed[0]  # one program: every seed has the same wall times
    # a diverged seed's step is where it stopped; the program went on with the others
    going = next((s for s in per_seed if "diverged" not in s), first)
    return {
        "finished": going["step"] >= going["total_steps"],
        "step": going["step"],
        "total_steps": going["total_steps"],
        "final": {name: v["mean"] for name, v in spread["final"].items()},
        "best": {name: v["mean"] for name, v in spread["best"].items()},
        "num_seeds": len(seeds),
        "seeds": {
            "seed": seeds,
            "diverged": [i for i, s in enumerate(per_seed) if "diverged" in s],
            **spread,
        },
        "wall_seconds_this_session": first["wall_seconds_this_session"],
        "wall_seconds_total": first["wall_seconds_total"],
        **run_info(),
    }
