"""E12 (b), issue 18: conv transfer with few labels (configs/e12_conv_transfer.py), for run.py.

A ResNet-8 at width 0.5 trained on CIFAR-10 classes 0-4 (the source, 5 seeds) is transferred to
classes 5-9 with n = 100 or 1,000 labels: its backbone frozen under a new head, or all of it
fine-tuned, against the same net trained from scratch; seed i's target runs start from seed i's
source. Per method and n, the (learning rate, step) with the highest seed-mean val accuracy
(2,500 held-out target training images) is chosen, never test; the claims compare the test
accuracies (515 test images of classes 5-9) at the chosen points, Welch CIs of the differences.

The sources are 5 separate runs, not one `num_seeds=5` program: on this 2-core CPU a vmapped
5-seed ResNet-8 program ran 0.3 steps/s (1.5 seed-steps/s), one seed 7.5 steps/s (`SOURCE_COST`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from normlab.reports import Report, RunResult, Verdict, fmt_mean_ci
from normlab.reports.experiment import train_config
from normlab.sample_stats import welch_ci

CONV = "configs/e12_conv_transfer.py"
METHODS = {"scratch": "from scratch", "frozen": "frozen backbone", "finetune": "fine-tuned"}
# sized to the ~45 min this 2-core CPU had for (b) (see README): the config's 30 source epochs
# (5,280 steps) cut to 500 steps (2.8 epochs), its 1,000 target steps to 200 evaluated every 100
FULL = dict(source_steps=500, target_steps=200, labels=(100, 1_000), seeds=5,
            lrs={"scratch": (0.03, 0.1), "frozen": (0.03, 0.1), "finetune": (0.01, 0.03)})
# measured 2026-12-04 (load ~0 before; batch 128 source, batch 100 target, wall incl. compile)
SOURCE_COST = ("the 5-seed source as one program (num_seeds=5) took 170 s for 50 steps "
               "(0.3 steps/s, 1.5 seed-steps/s), one seed 16 s for 50 steps (7.5 steps/s), a "
               "fine-tuned target (n = 100) 23 s for 100 steps")
FEW, MANY = FULL["labels"]
CLAIM_FEW = (f"with few target labels (n = {FEW}) a pretrained backbone beats training from "
             "scratch (frozen and fine-tuned, each)")
CLAIM_MANY = f"with more target labels (n = {MANY:,}) fine-tuning beats freezing the backbone"


def _spec(method: str, n: int, lr: float, steps: int, seed: int, source: RunResult) -> str:
    spec = f"{CONV}:target,labels={n},lr={lr},steps={steps},seed={seed}"
    if method != "scratch":
        spec += f",source={source.workdir}" + (",freeze" if method == "frozen" else "")
    return spec


def _curves(grid: dict[float, list[RunResult]]) -> dict[str, Any]:
    """Per lr and seed, val and test accuracy at every evaluated step (None where a run has no
    value: it diverged before)."""
    steps = sorted({int(s) for rs in grid.values() for r in rs
                    for s in r.series("val_accuracy")[0]})

    def at(run: RunResult, key: str) -> list[float | None]:
        found = dict(zip(*(a.tolist() for a in run.series(key)), strict=True))
        return [found.get(s) for s in steps]

    return {"lrs": list(grid), "steps": steps,
            "val": [[at(r, "val_accuracy") for r in rs] for rs in grid.values()],
            "test": [[at(r, "test_accuracy") for r in rs] for rs in grid.values()]}


def train_transfer(args, size: dict) -> tuple[dict[str, Any], list[RunResult]]:
    """Trains the sources and every target run; (numbers for results.json, the runs)."""
    seeds = range(size["seeds"])
    sources = [train_config(args, f"c5_source_s{s}", f"{CONV}:steps={size['source_steps']},"
                            f"seed={s}") for s in seeds]
    out: dict[str, Any] = {
        "source_steps": size["source_steps"], "target_steps": size["target_steps"],
        "source_val_accuracy": [r.final("val_accuracy") for r in sources],
        "source_test_accuracy": [r.final("test_accuracy") for r in sources], "curves": {}}
    runs = list(sources)
    for method in METHODS:
        for n in size["labels"]:
            grid = {lr: [train_config(args, f"{method}_n{n}_lr{lr}_s{s}",
                                      _spec(method, n, lr, size["target_steps"], s, sources[s]))
                         for s in seeds] for lr in size["lrs"][method]}
            runs += [r for rs in grid.values() for r in rs]
            out["curves"][f"{method}_n{n}"] = _curves(grid)
    return out, runs


def choose(curves: dict[str, Any]) -> dict[str, Any]:
    """The (lr, step) of the highest seed-mean val accuracy (a point where any seed lacks a
    value is not eligible; ties: the first lr, then the earlier step) and every seed's val and
    test accuracy there."""
    val = np.asarray(curves["val"], np.float64)  # (lrs, seeds, steps); None -> NaN
    mean = val.mean(axis=1)
    i, j = np.unravel_index(np.argmax(np.where(np.isnan(mean), -np.inf, mean)), mean.shape)
    test = np.asarray(curves["test"], np.float64)[i, :, j]
    return {"lr": curves["lrs"][i], "step": curves["steps"][j], "val_mean": float(mean[i, j]),
            "val": val[i, :, j].tolist(), "test": test.tolist()}


def _diff(a: Sequence[float], b: Sequence[float]) -> tuple[str, float]:
    low, high = welch_ci(a, b)
    return (f"{100 * (np.mean(a) - np.mean(b)):+.1f} points, 95% CI "
            f"[{100 * low:+.1f}, {100 * high:+.1f}]"), low


def transfer_verdicts(transfer: dict[str, Any] | None, not_run: str) -> list[Verdict]:
    """The two claims from the stored curves (`choose`); "not tested" with `not_run` (why and
    the cost) when the transfer part was not run."""
    if transfer is None:
        return [Verdict(c, f"not run: {not_run}", "not tested") for c in (CLAIM_FEW, CLAIM_MANY)]
    chosen = {k: choose(c) for k, c in transfer["curves"].items()}
    test = {k: v["test"] for k, v in chosen.items()}
    scratch = test[f"scratch_n{FEW}"]
    lows, parts = [], []
    for method in ("frozen", "finetune"):
        text, low = _diff(test[f"{method}_n{FEW}"], scratch)
        parts.append(f"{METHODS[method]} − scratch {text}")
        lows.append(low)
    wins = sum(low > 0 for low in lows)
    few = Verdict(CLAIM_FEW, "; ".join(parts) + " (test accuracy at the val-chosen points)",
                  ("reproduced", "partly reproduced", "not reproduced")[2 - wins],
                  n=min(len(test[f"{m}_n{FEW}"]) for m in METHODS))
    text, low = _diff(test[f"finetune_n{MANY}"], test[f"frozen_n{MANY}"])
    many = Verdict(CLAIM_MANY, f"fine-tuned − frozen {text}",
                   "reproduced" if low > 0 else "not reproduced",
                   n=min(len(test[f"{m}_n{MANY}"]) for m in ("frozen", "finetune")))
    return [few, many]


def transfer_section(report: Report, transfer: dict[str, Any] | None, not_run: str) -> None:
    """(b)'s heading, setup line and table of the chosen points (or why it was not run)."""
    if transfer is None:
        report.heading("(b) Transfer with few labels: not run")
        report.text(not_run)
        return
    report.heading("(b) Transfer with few labels (CIFAR-10 classes 0-4 → 5-9)")
    report.text(
        f"configs/e12_conv_transfer.py: ResNet-8 at width 0.5; sources trained "
        f"{transfer['source_steps']:,} steps on classes 0-4 (accuracy in %: val "
        f"{fmt_mean_ci(transfer['source_val_accuracy'], '.1f', scale=100)}, test "
        f"{fmt_mean_ci(transfer['source_test_accuracy'], '.1f', scale=100)} on their 485 test "
        f"images); targets {transfer['target_steps']:,} steps, evaluated every 100. Learning "
        "rate and step chosen by the seed-mean val accuracy (2,500 held-out target training "
        "images); test accuracy on the 515 test images of classes 5-9, mean ± 95% CI over seeds.")
    rows = []
    for key, curves in transfer["curves"].items():
        method, n = key.rsplit("_n", 1)
        c = choose(curves)
        rows.append([METHODS[method], f"{int(n):,}", ", ".join(f"{lr:g}" for lr in curves["lrs"]),
                     f"{c['lr']:g}", str(c["step"]), f"{100 * c['val_mean']:.1f}",
                     fmt_mean_ci(c["test"], ".1f", scale=100)])
    report.table(["method", "labels", "lr grid", "chosen lr", "chosen step", "val acc (%)",
                  "test acc (%)"], rows)
