"""E5's report step: the tables and figures from results.json (and, after training, the runs
behind the figures), and the per-layer diagnostic series both read. Imported by run.py, beside
it (a name no other experiment's module has: several experiments load in one test process)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from normlab.reports import (
    Report,
    RunResult,
    Verdict,
    fmt_mean_ci,
    new_figure,
    plot_curves,
    verdict_table,
)
from normlab.reports.experiment import report_results
from normlab.train.diagnostics import SATURATING

SHALLOW, DEEP = "configs/e4_bn_mnist.py", "configs/e2_depth.py"


def _cell(values: Sequence[float | None], spec: str = ".4f") -> str:
    return fmt_mean_ci(values, spec, show_n=False) + (
        "" if None not in values else f" ({sum(v is None for v in values)} diverged)")


def _p(p: float | None) -> str:
    return "—" if p is None else f"{p:.2g}"


def layer_fractions(run: RunResult, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, the (layers, steps) array of diag/<layer>/norm_act/<metric>)."""
    keys = sorted(k for k in (run.records[0] if run.records else {})
                  if k.startswith("diag/") and k.endswith("/" + metric))
    if not keys:
        return np.zeros(0, np.int64), np.zeros((0, 0))
    per_layer = [run.series(k) for k in keys]
    return per_layer[0][0], np.asarray([v for _, v in per_layer])


def unit_fraction(run: RunResult, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, mean over hidden layers of diag/<layer>/norm_act/<metric>)."""
    steps, per_layer = layer_fractions(run, metric)
    return steps, per_layer.mean(0) if len(per_layer) else np.zeros(0)


def seed_mean(runs: Sequence[RunResult], key: str,
              pick: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(steps, the mean over the seeds that trained of `key`'s series, or of `pick(run)`'s)."""
    series = [pick(r) if pick else r.series(key) for r in runs
              if r.diverged is None and r.records]
    if not series:
        return np.zeros(0), np.zeros(0)
    length = min(len(s[0]) for s in series)
    return series[0][0][:length], np.mean([s[1][:length] for s in series], axis=0)


def write_report(report: Report, results: dict[str, Any], runs: dict[str, Any] | None,
                 claims: list[Verdict], rank: dict[str, Any]) -> None:
    """The report from `results` alone; figures drawn from `runs` (None: --report-only, the
    committed figures are embedded). `claims`: the verdicts; `rank`: run.py's `ranking`."""
    setup = results["setup"]
    n = len(setup["seeds"])
    dying = setup["dying"]
    report.facts.update({
        "part 1": f"{SHALLOW}:norm=none,act=…,lr=… — 3 × 100, N(0, 0.1²) init, batch 60, "
                  f"plain SGD, {setup['shallow_steps']} steps, {setup['dataset']}, lr "
                  f"{' or '.join(f'{lr:g}' for lr in setup['lrs'])} chosen per activation on "
                  "the seed-mean final validation accuracy",
        "dying-ReLU arm": f"the same net at lr {dying['lr']:g}, hidden biases "
                          f"{dying['bias_init']:g} at init",
        "part 2": f"{DEEP}:act=…,init=…,norm=none{setup['deep_extra']}",
        "seeds": f"{setup['seeds']} (n={n} per setting, one `num_seeds` program each); every "
                 "± is a 95% Student-t CI over the seeds",
    })
    report.facts["training runs"] = results["training_runs"]
    report.text(
        "**Claim** (SPEC §3 E5 and §1.3): the activations differ in how they train the same "
        "net; sigmoid and tanh saturate, ReLU units can die; a deep SELU MLP with LeCun init "
        "trains without any normalization layer (self-normalizing: mean 0 and variance 1 are a "
        "stable fixed point of the layer map), while the same ReLU net does not.\n\n"
        "Saturated: |input| > 2.30 for tanh (|tanh| > 0.98) or > 3.89 for sigmoid (σ outside "
        "[0.02, 0.98]), fraction of all units × examples. Dead: a unit whose input is ≤ 0 "
        "for all 1,000 examples of the diagnostic batch (for the smooth or leaky variants: "
        "never leaves its negative regime). Both from the training system's diagnostics "
        "every 100 steps, averaged over the 3 hidden layers unless a layer is named."
    )
    _part1(report, results, runs, n, rank)
    _dying(report, results, runs, n)
    _deep(report, results, runs, n)
    report.heading("Result")
    report.text(verdict_table(claims) + "\n\n" + _rules(setup))
    report_results(report, results, claims)


def _part1(report: Report, results: dict[str, Any], runs: dict | None, n: int,
           rank: dict[str, Any]) -> None:
    setup, shallow = results["setup"], results["shallow"]
    report.heading("Part 1: every activation in the BN paper's net (no BN)")
    lrs = [f"{lr:g}" for lr in setup["lrs"]]
    rows = []
    for act, r in shallow.items():
        p = "best" if act == rank["best"] else _p(rank["p"].get(act))
        rows.append([act, *(_cell(r["val_accuracy"][lr]) for lr in lrs), f"{r['best_lr']:g}",
                     _cell(r["test_accuracy"]), p, n,
                     (r["measure"] or "—").replace("_fraction", ""),
                     *((_cell(r["first"], ".3f"), _cell(r["last"], ".3f")) if r["measure"]
                       else ("—", "—"))])
    first = next((r["diag_first_step"] for r in shallow.values() if r.get("diag_first_step")),
                 100)
    report.table(["activation", *(f"val acc, lr {lr}" for lr in lrs), "lr (on val)",
                  "test acc at that lr", "Welch p vs best", "n", "measure",
                  f"fraction at step {first}", f"at step {setup['shallow_steps']}"], rows)
    report.text(
        f"Test accuracy ranking: {rank['best']} has the highest seed mean; the activations "
        f"whose Welch p against it is ≥ {setup['alpha']:g} ("
        + (", ".join(rank["top"]) or "none") + ") are not separated from it, and no order "
        "among them is claimed. p values are per pair, uncorrected for the "
        f"{len(rank['p'])} comparisons with the best" + _corrected(rank, setup["alpha"]) + " "
        + _grid_edge(shallow, setup["lrs"]))
    caption = (f"Test accuracy, saturation and dead units over training, mean over the {n} "
               "seeds, each activation at its lr chosen on validation")
    report.plot("activations.png", caption,
                None if runs is None else functools.partial(_activations_figure, runs, shallow))


def _corrected(rank: dict[str, Any], alpha: float) -> str:
    """Which separations from the best would not survive a Bonferroni correction."""
    m = len(rank["p"])
    weak = [a for a in rank["below"] if rank["p"][a] is not None and rank["p"][a] >= alpha / m]
    return (f": with Bonferroni's α/{m} = {alpha / m:.2g}, " + ", ".join(weak)
            + " would not be separated." if weak and m > 1 else ".")


def _grid_edge(shallow: dict[str, Any], lrs: Sequence[float]) -> str:
    """The activations whose chosen lr is the grid's largest: their best may lie above it."""
    top = [a for a, r in shallow.items() if r["best_lr"] == max(lrs)]
    if len(lrs) < 2 or not top:
        return ""
    grid = " and ".join(f"{lr:g}" for lr in lrs)
    return (f"{len(top)} of the {len(shallow)} activations chose lr {max(lrs):g}, the grid's "
            "largest (" + ", ".join(top) + "): their best lr may lie above it, so the "
            f"comparison is of each activation at the better of {grid}.")


def _dying(report: Report, results: dict[str, Any], runs: dict | None, n: int) -> None:
    setup, dying = results["setup"], results["dying"]
    report.heading("Dying ReLUs, provoked")
    report.text(
        f"Part 1's net at its lr {setup['dying']['lr']:g} with every hidden bias starting at "
        f"{setup['dying']['bias_init']:g} (instead of 0), {setup['shallow_steps']} steps: ReLU "
        "and variants that keep a gradient in their negative regime, under the same "
        "provocation; the control is part 1's ReLU net at the same lr with biases 0. Dead "
        "fraction per hidden layer at the first diagnostic and at the end (mean ± CI over the "
        "seeds that trained; a diverged seed has no fraction). A dead ReLU unit passes no "
        "gradient: it can only come back when the layers below it change, and a layer whose "
        "every unit is dead passes none to any layer below.")
    layers = max((len(v) for r in dying.values() for v in r["last_by_layer"] if v), default=0)
    rows = []
    control = results.get("dying_control") or {}
    arms = {**dying, **({"relu, biases 0 (control)": control} if control else {})}
    for act, r in arms.items():
        by_layer = [[None if v is None else v[i] for v in r[k]] for k in ("first_by_layer",
                    "last_by_layer") for i in range(layers)]
        accs = (_cell(r["val_accuracy"]), _cell(r["test_accuracy"])) if act in dying else (
            "part 1", "part 1")
        rows.append([act, sum(v is not None for v in r["last"]), *accs,
                     *(fmt_mean_ci(v, ".3f", show_n=False) for v in by_layer),
                     fmt_mean_ci(r["last"], ".3f", show_n=False)])
    step = next((r["diag_first_step"] for r in dying.values() if r["diag_first_step"]), 100)
    report.table(["activation", "n trained", "val acc", "test acc",
                  *(f"layer {i + 1}, step {step}" for i in range(layers)),
                  *(f"layer {i + 1}, end" for i in range(layers)), "mean over layers, end"],
                 rows)
    caption = ("Dead-unit fraction per hidden layer over training under the provocation, "
               "mean over the seeds that trained")
    report.plot("dying_relu.png", caption,
                None if runs is None else functools.partial(_dying_relu_figure, runs, layers))


def _deep(report: Report, results: dict[str, Any], runs: dict | None, n: int) -> None:
    setup, deep, init = results["setup"], results["deep"], results["deep_init"]
    report.heading(f"Part 2: a {setup['deep_depth']}-layer net without normalization")
    rows = [[label, n, *(fmt_mean_ci(d[k], ".3g", show_n=False)
                         for k in ("std_first", "std_last", "mean_last")),
             *((_cell(deep[label][k], ".4g") for k in ("loss_first", "loss_final",
                                                         "test_accuracy"))
               if label in deep else ("not trained",) * 3)]
            for label, d in init.items()]
    report.table(["net", "n", "act std, layer 1 (init)", "act std, last layer (init)",
                  "act mean, last layer (init)", "train loss, steps 1–100",
                  "final train loss", "final test accuracy"], rows)
    report.text(
        "The Kaiming-init ReLU net is shown at init only: how deep ReLU nets train with each "
        "init, lr and BN is E2's depth × init × lr × BN grid with seeds "
        "(experiments/e2_depth/report.md), which supersedes E5's earlier one-seed depth-32 "
        "Kaiming run.")
    caption = (f"Deep nets without normalization: activation std by layer at init (256 "
               f"standardized training images, mean over the {n} seeds' inits) and the train "
               "loss (seed mean)")
    report.plot("deep_selu.png", caption,
                None if runs is None else functools.partial(_deep_selu_figure, runs, init))



def _activations_figure(runs: dict[str, Any], shallow: dict[str, Any]) -> Any:
    best = runs["shallow"]
    acts = list(best)
    fig, axes = new_figure(3)
    # one color and line style per activation, the same in every panel (12 > 10 colors)
    styles = {act: {"color": f"C{i % 10}", "linestyle": "-" if i < 10 else "--"}
              for i, act in enumerate(acts)}
    plot_curves(axes[0], {a: seed_mean(best[a], "test_accuracy") for a in acts},
                xlabel="step", ylabel="test accuracy (seed mean)", ylim=(0.8, 1.0),
                styles=styles)
    plot_curves(axes[1], {a: seed_mean(best[a], "", lambda r: unit_fraction(
        r, "saturated_fraction")) for a in acts if a in SATURATING},
                xlabel="step", ylabel="saturated fraction", styles=styles)
    plot_curves(axes[2], {a: seed_mean(best[a], "", lambda r: unit_fraction(
        r, "dead_fraction")) for a in acts if shallow[a]["measure"] == "dead_fraction"},
                xlabel="step", ylabel="dead-unit fraction", styles=styles)
    for ax in (axes[0], axes[2]):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small", ncols=2)
    return fig


def _dying_relu_figure(runs: dict[str, Any], layers: int) -> Any:
    fig, axes = new_figure(max(layers, 1))
    for i, ax in enumerate(axes):
        plot_curves(ax, {a: seed_mean(rs, "", lambda r, i=i: (
            layer_fractions(r, "dead_fraction")[0],
            layer_fractions(r, "dead_fraction")[1][i])) for a, rs in runs["dying"].items()},
            xlabel="step", ylabel="dead fraction", title=f"layer {i + 1}")
    return fig


def _deep_selu_figure(runs: dict[str, Any], init: dict[str, Any]) -> Any:
    fig, axes = new_figure(2)
    plot_curves(axes[0], {k: (list(range(1, len(v["std_by_layer"]) + 1)), v["std_by_layer"])
                          for k, v in init.items()},
                xlabel="layer", ylabel="std of the activations at init", logy=True)
    plot_curves(axes[1], {k: seed_mean(rs, "train_loss") for k, rs in runs["deep"].items()},
                xlabel="step", ylabel="train loss", logy=True)
    return fig


def _rules(setup: dict[str, Any]) -> str:
    return (
        f"Rules. A difference counts where the seed means differ in the claimed direction with "
        f"a two-sided Welch p < {setup['alpha']:g}. Activations: reproduced when some nonlinear "
        "activation is separated below the best. Saturation: the saturated fraction at the "
        "end above the one at the first diagnostic, for sigmoid and tanh (partly: one of "
        f"them). Dying ReLUs: the provoked ReLU net's dead fraction at the end is ≥ "
        f"{setup['dead_min']:g} and above the unprovoked ReLU's of part 1; reproduced when it "
        "is also above every variant's (seeds that trained), partly when above some. Deep "
        "nets: every seed's last-layer SELU std in (0.7, 1.3) with |mean| < 0.2, and every "
        "seed's ReLU std shrinking below 1% of its layer-1 value; SELU's final train loss < 1 "
        "with the ReLU net's above twice it (Welch). The lr of part 1 is chosen on validation; "
        "every claim is on test accuracy or training quantities.")
