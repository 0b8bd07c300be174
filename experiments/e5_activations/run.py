"""E5: activation functions — the BN paper's MNIST net with every activation of SPEC §1.3, a
dying-ReLU arm, and a deep self-normalizing SELU net (SPEC §3 E5).

Part 1 (configs/e4_bn_mnist.py with act=<name>, norm=none): 3 × 100 units, N(0, 0.1²) weights,
batch 60, plain SGD, `SHALLOW_STEPS` steps, each activation at every lr of `LRS` with the seeds
`SEEDS` (one `num_seeds` program per (activation, lr)). Each activation's lr is the one with the
best seed-mean final validation accuracy (the 5,000 training images held out of training:
train[55000:]); its test accuracy at that lr is reported, per seed and as mean ± 95% CI, and
compared with the best activation's by Welch tests. The fraction of saturated units (sigmoid,
tanh) or dead units (every other activation) per hidden layer comes from the built-in
diagnostics on a fixed batch of 1,000 training images, every 100 steps.
Dying-ReLU arm: the same net provoked with `DYING` (negative hidden biases at init) for ReLU
and the variants of `DYING_ACTS`, the same seeds; the dead fraction per layer at the first
diagnostic (step 100) and at the end of training, against part 1's ReLU net at the same lr.
Part 2 (configs/e2_depth.py): 32 × (Dense(128) → act), no normalization, standardized inputs,
SGD momentum 0.9, lr 0.01, `DEEP_STEPS` steps, the seeds `SEEDS`: SELU with LeCun init
(Klambauer et al. 2017) and the same net with ReLU, and the activation statistics of every
layer at init (each seed's init; Kaiming-init ReLU at init only, for reference: E2's grid
answers how deep ReLU nets train).

Budget (measured on the shared 2-core CPU, CPU seconds of one K=5 program ≈ its time alone):
a part-1 program is ~8 s (compile, data, evaluation) + ~4.4 s per 1,000 steps, so 2,000 steps
≈ 17 s: 12 activations × 2 lrs = 24 programs ≈ 410 s, the dying arm 4 × 17 ≈ 70 s; a deep
program is ~8 s + ~80 s per 1,000 steps (32 layers × 5 seeds), 2 × 88 ≈ 180 s. Total ≈ 11
machine-minutes. The steps are cut from 10,000 (part 1) and 3,000 (part 2): in the one-seed
curves of the earlier run, accuracies are within ~1 point of their final values by step 2,000
and the deep SELU net's loss is below a third of the ReLU net's from step ~200 to 3,000.

    python experiments/e5_activations/run.py          # 30 programs of 5 seeds, ~11 min alone
    python experiments/e5_activations/run.py --report-only      # from results.json alone
    python experiments/e5_activations/run.py --tiny --out /tmp/e5    # digits, 2 seeds, seconds
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from normlab.config import load_config
from normlab.nn.activations import make_activation
from normlab.reports import (
    Report,
    RunResult,
    Verdict,
    choose_lr,
    final_metric,
    welch_test,
)
from normlab.reports.experiment import (
    load_results,
    parse_experiment_args,
    record_runs,
    sibling_module,
    train_seeds,
)
from normlab.reports.probes import preacts_at_init
from normlab.sample_stats import mean_ci
from normlab.train.diagnostics import LINEAR, SATURATING

e5_report = sibling_module(__file__, "e5_report")  # the report step
layer_fractions, write_report = e5_report.layer_fractions, e5_report.write_report

SHALLOW = "configs/e4_bn_mnist.py"
DEEP = "configs/e2_depth.py"
ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "gelu",
               "gelu_tanh", "silu", "mish", "identity")  # swish is silu's second name
LRS = (0.1, 0.5)
SEEDS = (0, 1, 2, 3, 4)
SHALLOW_STEPS = 2000
# the provocation: every hidden bias starts at -0.75, at part 1's lr 0.5 (its control: part 1's
# ReLU net at that lr, biases 0). A higher lr alone (0.8, 1.0 at biases 0) diverged on some
# seeds of every activation in trials, before it killed more than a few % of ReLU units.
DYING = {"lr": 0.5, "bias_init": -0.75}
DYING_ACTS = ("relu", "leaky_relu", "elu", "gelu")  # ReLU first: the others are its controls
DEEP_NETS = {  # label: (activation, init); trained
    "SELU, LeCun": ("selu", "lecun_normal"),
    "ReLU, LeCun": ("relu", "lecun_normal"),
}
DEEP_INIT_ONLY = {"ReLU, Kaiming": ("relu", "kaiming_normal")}  # its statistics at init only
DEEP_DEPTH, DEEP_STEPS = 32, 1000
DEAD_MIN = 0.05  # a provoked ReLU net "dies" only if at least this share of its units is dead
ALPHA = 0.05  # a difference counts where its two-sided Welch p is below this
# tiny (digits, 2 seeds): a saturating and a ReLU net in part 1, ReLU vs GELU provoked (on
# digits' 64 inputs leaky ReLU's 0.01 slope brings no unit back within 300 steps, and ELU
# diverges), the deep SELU/ReLU pair at depth 20
TINY = {"acts": ("tanh", "relu"), "lrs": (0.1, 0.5), "seeds": (0, 1), "steps": 300,
        "dying_acts": ("relu", "gelu"), "depth": 20}


def activation_stats_at_init(spec: str, n: int = 256) -> dict[str, list[float]]:
    """Per-layer mean and std of the activations (outputs) at init on n training images."""
    config = load_config(spec)
    act = make_activation(config.model.activation)
    outs = [np.asarray(act(y), np.float64) for y in preacts_at_init(config, n)]
    return {"mean": [float(h.mean()) for h in outs], "std": [float(h.std()) for h in outs]}


def unit_measure(activation: str) -> str | None:
    """The diagnostic that says a unit stopped working: saturated, dead, or none (linear)."""
    if activation in LINEAR:
        return None
    return "saturated_fraction" if activation in SATURATING else "dead_fraction"


def above(a: Sequence[float], b: Sequence[float]) -> tuple[bool, float | None]:
    """(mean(a) > mean(b) with Welch p < `ALPHA`, p); with one value per side the means alone
    decide (p None); two sets without spread differ exactly when their means do (p 0 or 1)."""
    if min(len(a), len(b)) < 2:
        return bool(len(a) and len(b) and np.mean(a) > np.mean(b)), None
    if np.var(a) == 0 and np.var(b) == 0:
        p = 0.0 if np.mean(a) != np.mean(b) else 1.0
    else:
        p = welch_test(a, b).p
    return bool(np.mean(a) > np.mean(b) and p < ALPHA), p


def finite(values: Sequence[float | None]) -> list[float]:
    """The values of the seeds that trained (a diverged seed has None)."""
    return [v for v in values if v is not None]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs E5 (or, with --report-only, reads its results.json) and writes the report; returns
    the results."""
    args = parse_experiment_args(__doc__, __file__, argv)
    report = Report("E5: activation functions", args.out, command=args.command)
    results, runs = (load_results(args.out), None) if args.report_only else collect(args)
    write_report(report, results, runs, verdicts(results), ranking(results))
    return results


def collect(args) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trains E5's programs; (the numbers the report shows, the per-seed runs behind its
    figures)."""
    if args.tiny:
        acts, lrs, seeds, steps = TINY["acts"], TINY["lrs"], TINY["seeds"], TINY["steps"]
        dying_acts, depth = TINY["dying_acts"], TINY["depth"]
        shallow_extra = ",dataset=digits,batch=64"
        deep_extra = f",dataset=digits,depth={depth},width=32,steps={steps},batch=64"
    else:
        acts, lrs, seeds, steps, dying_acts = ACTIVATIONS, LRS, SEEDS, SHALLOW_STEPS, DYING_ACTS
        depth, shallow_extra = DEEP_DEPTH, ""
        deep_extra = f",depth={depth},steps={DEEP_STEPS}"
    # evaluations every 200 steps draw the curves; the diagnostics stay at every 100
    every = {"eval_every_steps": 200}

    def shallow_at(act: str, lr: float, bias: float = 0.0, prefix: str = "") -> list[RunResult]:
        spec = (f"{SHALLOW}:norm=none,act={act},lr={lr},bias_init={bias},steps={steps}"
                f"{shallow_extra}")
        return train_seeds(args, f"{prefix}{act}_lr{lr:g}_seeds{seeds[0]}-{seeds[-1]}", spec, seeds,
                      **every)

    shallow = {(act, lr): shallow_at(act, lr) for act in acts for lr in lrs}
    dying = {act: shallow_at(act, DYING["lr"], DYING["bias_init"], prefix="dying_")
             for act in dying_acts}
    deep = {label: train_seeds(args, f"deep_{act}_{init}_seeds{seeds[0]}-{seeds[-1]}",
                          f"{DEEP}:act={act},init={init},norm=none{deep_extra}", seeds,
                          diag_every_steps=0)  # the deep nets' diagnostics: not reported
            for label, (act, init) in DEEP_NETS.items()}
    deep_init = {label: [activation_stats_at_init(f"{DEEP}:act={act},init={init},norm=none"
                                                  f"{deep_extra},seed={s}") for s in seeds]
                 for label, (act, init) in {**DEEP_NETS, **DEEP_INIT_ONLY}.items()}
    every_run = [r for group in (shallow, dying, deep) for runs in group.values() for r in runs]
    programs = len(shallow) + len(dying) + len(deep)
    results: dict[str, Any] = {
        "setup": {"shallow_steps": steps, "dataset": "digits" if args.tiny else "mnist",
                  "lrs": list(lrs), "seeds": list(seeds), "dying": dict(DYING),
                  "deep_depth": depth, "deep_extra": deep_extra, "alpha": ALPHA,
                  "dead_min": DEAD_MIN},
        "lr_chosen_on": "val_accuracy",
        "shallow": {}, "dying": {}, "deep": {},
        "training_runs": record_runs(args, every_run)
        + f" ({programs} programs of {len(seeds)} seeds, `num_seeds`)",
    }
    for act in acts:
        best = choose_lr({lr: shallow[(act, lr)] for lr in lrs}, "val_accuracy")
        measure = unit_measure(act)
        results["shallow"][act] = {
            "val_accuracy": {f"{lr:g}": [final_metric(r, "val_accuracy")
                                         for r in shallow[(act, lr)]] for lr in lrs},
            "best_lr": best, "measure": measure,
            "test_accuracy": [final_metric(r, "test_accuracy") for r in shallow[(act, best)]],
            **_fractions(shallow[(act, best)], measure)}
    results["dying_control"] = _fractions(shallow[("relu", DYING["lr"])], "dead_fraction",
                                          by_layer=True) if ("relu", DYING["lr"]) in shallow else {}
    for act, runs in dying.items():
        results["dying"][act] = {
            "val_accuracy": [final_metric(r, "val_accuracy") for r in runs],
            "test_accuracy": [final_metric(r, "test_accuracy") for r in runs],
            **_fractions(runs, "dead_fraction", by_layer=True)}
    for label, runs in deep.items():
        results["deep"][label] = {
            "loss_first": [float(r.series("train_loss")[1][0]) if r.records else None
                           for r in runs],
            "loss_final": [final_metric(r, "train_loss") for r in runs],
            "test_accuracy": [final_metric(r, "eval_accuracy") for r in runs]}
    results["deep_init"] = {label: {
        "std_first": [s["std"][0] for s in per_seed], "std_last": [s["std"][-1] for s in per_seed],
        "mean_last": [s["mean"][-1] for s in per_seed],
        # the per-layer profile, mean over the seeds (the figure)
        "std_by_layer": np.mean([s["std"] for s in per_seed], axis=0).tolist()}
        for label, per_seed in deep_init.items()}
    best_runs = {act: shallow[(act, r["best_lr"])] for act, r in results["shallow"].items()}
    return results, {"shallow": best_runs, "dying": dying, "deep": deep}


def _fractions(runs: list[RunResult], measure: str | None,
               by_layer: bool = False) -> dict[str, Any]:
    """Per seed, the measure's fraction (mean over layers; `by_layer`: also each layer's) at the
    first diagnostic and at the end; None for a seed that diverged."""
    if measure is None:
        return {}
    out: dict[str, Any] = {"diag_first_step": None, "first": [], "last": []}
    if by_layer:
        out.update(first_by_layer=[], last_by_layer=[])
    for run in runs:
        steps, per_layer = layer_fractions(run, measure)
        ok = run.diverged is None and len(steps) > 0
        if ok:
            out["diag_first_step"] = int(steps[0])
        out["first"].append(float(per_layer[:, 0].mean()) if ok else None)
        out["last"].append(float(per_layer[:, -1].mean()) if ok else None)
        if by_layer:
            out["first_by_layer"].append(per_layer[:, 0].tolist() if ok else None)
            out["last_by_layer"].append(per_layer[:, -1].tolist() if ok else None)
    return out


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    """E5's claims and what the per-seed numbers in results.json say about them."""
    n = len(results["setup"]["seeds"])
    return [*_shallow_verdicts(results, n), _dying_verdict(results, n),
            *_deep_verdicts(results, n)]


def ranking(results: dict[str, Any]) -> dict[str, Any]:
    """The nonlinear activations by seed-mean test accuracy (each at its chosen lr): the best,
    and for every other its Welch p against the best and whether it is separated below."""
    test = {a: finite(r["test_accuracy"]) for a, r in results["shallow"].items()
            if a not in LINEAR and finite(r["test_accuracy"])}
    best = max(test, key=lambda a: np.mean(test[a]))
    versus = {a: above(test[best], v) for a, v in test.items() if a != best}
    return {"best": best, "p": {a: p for a, (_, p) in versus.items()},
            "below": [a for a, (sep, _) in versus.items() if sep],
            "top": [a for a, (sep, _) in versus.items() if not sep]}


def _share(won: int, of: int) -> str:
    return ("reproduced" if of and won == of else "partly reproduced" if won
            else "not reproduced")


def _ci(values: Sequence[float | None], spec: str = ".4f") -> str:
    """Mean ± 95% CI half-width over the seeds that trained, their count when some did not."""
    kept = finite(values)
    if not kept:
        return f"— (n=0 of {len(values)})"
    ci = f" ± {mean_ci(kept):{spec.lstrip('+')}}" if len(kept) > 1 else ""
    count = "" if len(kept) == len(values) else f" (n={len(kept)} of {len(values)})"
    return f"{np.mean(kept):{spec}}{ci}{count}"


def _shallow_verdicts(results: dict[str, Any], n: int) -> list[Verdict]:
    shallow, rank = results["shallow"], ranking(results)
    best = rank["best"]
    out = [Verdict(
        "the activation changes the test accuracy of the same net (each at its lr chosen on "
        "validation; nonlinear activations)",
        f"best {best} {_ci(shallow[best]['test_accuracy'])}; not separated from it (Welch p ≥ "
        f"{ALPHA:g}): " + (", ".join(rank["top"]) or "none") + "; below it: "
        + (", ".join(f"{a} (p {rank['p'][a]:.2g})" if rank["p"][a] is not None else a
                     for a in rank["below"]) or "none"),
        "reproduced" if rank["below"] else "not reproduced", n)]
    saturating = [a for a, r in shallow.items() if r["measure"] == "saturated_fraction"]
    grows = {a: above(finite(shallow[a]["last"]), finite(shallow[a]["first"]))
             for a in saturating}
    if saturating:
        out.append(Verdict(
            "sigmoid and tanh saturate more as they train",
            "saturated fraction (mean over layers), first diagnostic → end: " + "; ".join(
                f"{a} {_ci(shallow[a]['first'], '.3f')} → {_ci(shallow[a]['last'], '.3f')}"
                for a in saturating),
            _share(sum(won for won, _ in grows.values()), len(saturating)), n))
    return out


def _dying_verdict(results: dict[str, Any], n: int) -> Verdict:
    """ReLU under the provocation vs itself unprovoked and vs every variant (the rule: module
    `DEAD_MIN` and `ALPHA`; a variant with fewer than 2 seeds trained is left out, and said)."""
    dying, setup = results["dying"], results["setup"]
    relu = finite(dying["relu"]["last"])
    calm = finite(results["dying_control"].get("last", []))
    others = [a for a in dying if a != "relu" and len(finite(dying[a]["last"])) >= 2]
    lost = [a for a in dying if a != "relu" and a not in others]
    beats = [a for a in others if above(relu, finite(dying[a]["last"]))[0]]
    provoked = bool(relu) and np.mean(relu) >= setup["dead_min"] and (
        not calm or above(relu, calm)[0])
    prov = f"lr {setup['dying']['lr']:g}, hidden biases {setup['dying']['bias_init']:g} at init"
    evidence = (f"dead fraction at the end (mean over layers), provoked ({prov}): relu "
                f"{_ci(dying['relu']['last'], '.3f')}"
                + "".join(f", {a} {_ci(dying[a]['last'], '.3f')}" for a in others)
                + (f"; relu unprovoked (biases 0) {_ci(calm, '.3f')}" if calm else "")
                + (f"; not compared (fewer than 2 seeds trained): {', '.join(lost)}"
                   if lost else ""))
    return Verdict("ReLU units die when provoked (negative biases at init); leaky and smooth "
                   "variants come back",
                   evidence, _share(len(beats), len(others)) if provoked else "not reproduced",
                   n)


def _deep_verdicts(results: dict[str, Any], n: int) -> list[Verdict]:
    init, deep = results["deep_init"], results["deep"]
    selu_i, relu_i = init["SELU, LeCun"], init["ReLU, LeCun"]
    fixed_point = all(0.7 < s < 1.3 for s in selu_i["std_last"]) and all(
        abs(m) < 0.2 for m in selu_i["mean_last"])
    collapsed = all(last < 0.01 * first
                    for first, last in zip(relu_i["std_first"], relu_i["std_last"], strict=True))
    selu, relu = deep["SELU, LeCun"]["loss_final"], deep["ReLU, LeCun"]["loss_final"]
    # a diverged ReLU seed counts as not trained: its loss is above any finite one
    relu_inf = [np.inf if v is None else v for v in relu]
    trains = len(finite(selu)) == len(selu) and np.mean(selu) < 1.0 and (
        np.isinf(relu_inf).any() or (np.mean(relu_inf) > 2 * np.mean(selu)
                                     and above(relu_inf, selu)[0]))
    return [
        Verdict("deep SELU (LeCun) keeps mean 0, std 1 at init; ReLU's std collapses",
                f"last layer, every seed: SELU std {_ci(selu_i['std_last'], '.3g')}, mean "
                f"{_ci(selu_i['mean_last'], '+.3g')}; ReLU std {_ci(relu_i['std_first'], '.3g')}"
                f" → {_ci(relu_i['std_last'], '.3g')}",
                "reproduced" if fixed_point and collapsed else "not reproduced", n),
        Verdict("deep SELU trains without normalization, the same ReLU net does not (within "
                "the run's steps)",
                f"final train loss {_ci(selu, '.3f')} (SELU) vs {_ci(relu, '.3f')} (ReLU)",
                "reproduced" if trains else "not reproduced", n),
    ]


if __name__ == "__main__":
    main()
