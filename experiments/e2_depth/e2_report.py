"""E2's report step: the report, its figures and the verdicts from results.json alone (run.py
trains and collects; `--report-only` comes here directly). The verdict rules are in run.py's
docstring."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from normlab.config import load_config
from normlab.reports import Report, Verdict, fmt, new_figure, plot_curves, verdict_table
from normlab.reports.experiment import report_results, show_training_runs
from normlab.sample_stats import welch_test

CONFIG = "configs/e2_depth.py"
INITS = {"Kaiming": "kaiming_normal", "LeCun": "lecun_normal"}
PLATEAU = 2.0  # train loss below this = off the chance plateau (ln 10 ≈ 2.303)
PAIR_LR = 1e-2  # E2's and E5's lr
OLD_PAIR = {30: 0.9602, 32: 0.6537}  # their single runs' test accuracy (seed 0, 3,000 steps)


def key(init: str, norm: str, depth: int, lr: float) -> str:
    return f"{init}, {norm}, depth {depth}, lr {lr:g}"


def per_layer_factor(std: Sequence[float]) -> float:
    """Geometric mean of std(layer l+1)/std(layer l): 1 keeps the scale, 1/√2 halves Var."""
    return (std[-1] / std[0]) ** (1 / (len(std) - 1))


def _iqr(q: list[float] | None, spec: str) -> str:
    return "—" if q is None else f"{q[1]:{spec}} ({q[0]:{spec}}–{q[2]:{spec}})"


def write_report(report: Report, results: dict[str, Any], curves: dict | None) -> None:
    """The report from `results` alone; the pair's loss curves drawn from `curves` (None:
    --report-only, the committed figure is embedded)."""
    setup, grid, init_std = results["setup"], results["grid"], results["init_preact_std"]
    n, steps = len(setup["seeds"]), setup["steps"]
    config = load_config(f"{CONFIG}:{setup['extra'].lstrip(',')}")
    report.facts.update({
        "net": f"depth × (Dense({config.model.width}) → [BN] → ReLU) → Dense(10), zero biases",
        "training": f"{config.dataset}, standardized inputs, batch {config.batch_size}, SGD "
                    f"momentum 0.9, constant lr, {steps} steps (the E2/E5 pair "
                    f"{setup['pair_steps']}), seeds {setup['seeds'][0]}–{setup['seeds'][-1]}",
        "grid": f"init {{Kaiming, LeCun}} × depth {{{', '.join(map(str, setup['depths']))}}} × "
                f"lr {{{', '.join(f'{x:g}' for x in setup['lrs'])}}} × {{plain, BN}}, "
                f"{n} seeds each",
        "config": CONFIG,
    })
    show_training_runs(report, results)
    report.text(
        "**Claim** (SPEC §3 E2, He et al. 2015): in a 30-layer plain ReLU net, Kaiming init "
        "(Var(W) = 2/fan_in) keeps the signal's scale through depth and the net trains; "
        "LeCun/\"Xavier\" init (Var(W) = 1/fan_in) halves the second moment at every layer "
        "(2^-30 over 30 layers), the gradients are as small, and training stalls. With BN "
        "after every Dense, the init scale no longer matters and both train. The verdict "
        "rules were fixed before the run (experiments/e2_depth/run.py's docstring).")

    report.heading("At init: pre-activation std by layer")
    caption = f"Pre-activation std by layer at init, no BN (256 training images, mean of {n} seeds)"

    def draw_init_std():
        fig, axes = new_figure(1)
        plot_curves(axes[0], {k: (list(range(1, len(v) + 1)), v) for k, v in init_std.items()},
                    xlabel="layer", ylabel="std of the pre-activation", logy=True)
        return fig

    report.plot("preact_std_at_init.png", caption, None if curves is None else draw_init_std)
    depth = len(next(iter(init_std.values())))
    report.table(["init", "layer 1", f"layer {depth}", "factor per layer"],
                 [[k, v[0], v[-1], per_layer_factor(v)] for k, v in init_std.items()],
                 spec=".3g")
    report.text("Predicted factor per layer: 1 for Kaiming, 1/√2 ≈ 0.707 for LeCun.")

    report.heading("The grid: who leaves the chance plateau")
    rows = [[s["init"], s["norm"], s["depth"], f"{s['lr']:g}", f"{s['left']}/{s['n']}",
             f"{s['wilson'][0]:.2f}–{s['wilson'][1]:.2f}", _iqr(s["accuracy_quartiles"], ".3f"),
             _iqr(s["exit_quartiles"], ".0f"), s["diverged"]]
            for s in sorted(grid.values(), key=lambda s: (s["norm"] != "plain", s["lr"],
                                                          s["depth"], s["init"]))]
    report.table(["init", "norm", "depth", "lr", f"off the plateau by step {steps}",
                  "95% Wilson interval", f"test accuracy at step {steps}, median (IQR)",
                  "exit step, median (IQR), seeds that leave", "diverged"], rows)
    report.text(f"Off the plateau: train loss (mean over 100 steps) below {PLATEAU} at some "
                f"logged step ≤ {steps}; the exit step is the first such step (a resolution "
                f"of 100 steps). IQR: 25th–75th percentile over the {n} seeds.")
    caption = (f"Fraction of {n} seeds off the plateau by step {steps} (Wilson 95% bars) and "
               "median test accuracy (dots: each seed), by depth")
    report.plot("grid.png", caption,
                None if curves is None else functools.partial(_grid_figure, setup, grid))

    if results["pair"]:
        _pair_section(report, results, curves)
    report.heading("Result")
    claims = verdicts(results)
    report.text(verdict_table(claims))
    report_results(report, results, claims)


def _pair_section(report: Report, results: dict[str, Any], curves: dict | None) -> None:
    setup, pair, steps = results["setup"], results["pair"], results["setup"]["steps"]
    report.heading(f"E2 vs E5: depth {setup['pair'][0]} vs {setup['pair'][1]}, same recipe")
    report.table(
        ["depth", f"test accuracy per seed at step {setup['pair_steps']}", "median (IQR)",
         f"off the plateau by step {setup['pair_steps']}", f"seed 0 at step {steps}"],
        [[d, ", ".join(fmt(a, ".3f") for a in p["test_accuracy"]),
          _iqr(p["accuracy_quartiles"], ".3f"), f"{p['left']}/{p['n']}",
          fmt(p["seed0_accuracy_at_grid_steps"], ".3f")] for d, p in pair.items()])
    caption = f"Train loss of each seed, Kaiming, plain, lr {PAIR_LR:g}"

    def draw_pair():
        fig, axes = new_figure(len(curves["pair"]))
        for ax, (d, runs) in zip(axes, curves["pair"].items(), strict=True):
            plot_curves(ax, {f"seed {s}": c for s, c in zip(setup["seeds"], runs, strict=True)},
                        xlabel="step", ylabel="train loss", title=f"depth {d}", logy=True)
        return fig

    report.plot("e2_vs_e5.png", caption, None if curves is None else draw_pair)
    report.text(_pair_text(results))


def _grid_figure(setup: dict[str, Any], grid: dict[str, Any]):
    lrs = setup["lrs"]
    fig, axes = new_figure(len(lrs), 2)
    for col, lr in enumerate(lrs):
        for i, init in enumerate(INITS):
            for norm, line in (("plain", "-"), ("BN", "--")):
                cells = [grid[key(init, norm, d, lr)] for d in setup["depths"]]
                style = {"color": f"C{i}", "linestyle": line, "marker": "o"}
                label = f"{init}, {norm}"
                frac = np.array([c["fraction"] for c in cells])
                low, high = (np.array([c["wilson"][j] for c in cells]) for j in (0, 1))
                axes[col].errorbar(setup["depths"], frac, [frac - low, high - frac],
                                   label=label, capsize=3, **style)
                med = [c["accuracy_quartiles"][1] if c["accuracy_quartiles"] else np.nan
                       for c in cells]
                axes[len(lrs) + col].plot(setup["depths"], med, label=label, **style)
                for d, c in zip(setup["depths"], cells, strict=True):
                    accs = [a for a in c["test_accuracy"] if a is not None]
                    axes[len(lrs) + col].scatter([d + (i - 0.5) * 0.6] * len(accs), accs,
                                                 s=8, color=f"C{i}", alpha=0.5)
        axes[col].set(title=f"lr {lr:g}", xlabel="depth", ylabel="fraction off the plateau",
                      ylim=(-0.05, 1.05))
        axes[len(lrs) + col].set(xlabel="depth", ylabel="test accuracy", ylim=(0, 1))
        for ax in (axes[col], axes[len(lrs) + col]):
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
    return fig


def _spread(values: Sequence[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return max(kept) - min(kept)


def _pair_text(results: dict[str, Any]) -> str:
    """The E2/E5 contradiction, in words that follow from the pair's and the grid's numbers."""
    setup, grid, pair = results["setup"], results["grid"], results["pair"]
    d0, d1 = setup["pair"]
    a, b = (sorted(v for v in pair[str(d)]["test_accuracy"] if v is not None) for d in (d0, d1))
    if not a or not b:
        return "No finished runs to compare."
    old0, old1 = (OLD_PAIR[d] for d in (d0, d1))
    m0, m1 = (pair[str(d)]["accuracy_quartiles"][1] for d in (d0, d1))
    s0, s1 = _spread(a), _spread(b)
    p = welch_test(a, b).p if len(a) > 1 and len(b) > 1 else None
    overlap = min(a) <= max(b) and min(b) <= max(a)
    now0, now1 = (pair[str(d)]["test_accuracy"][setup["seeds"].index(0)] for d in (d0, d1))
    lines = [
        f"E2 (depth {d0}) and E5 (depth {d1}) ran this recipe once each, seed 0, at earlier "
        f"revisions: test accuracy {old0:.3f} and {old1:.3f}, a gap of {old0 - old1:.3f}. Here, "
        f"{len(setup['seeds'])} seeds each at {setup['pair_steps']:,} steps: depth {d0} "
        f"{', '.join(f'{v:.3f}' for v in a)} (median {m0:.3f}), depth {d1} "
        f"{', '.join(f'{v:.3f}' for v in b)} (median {m1:.3f}); the medians differ by "
        f"{m0 - m1:.3f}, Welch p = {fmt(p, '.3f')} for the means; within one depth the seeds "
        f"spread over {s0:.3f} (depth {d0}) and {s1:.3f} (depth {d1}). The two sets "
        + ("overlap: a depth-32 seed can beat a depth-30 seed." if overlap
           else "do not overlap.")]
    old = []
    if abs(now0 - old0) > 0.005 or abs(now1 - old1) > 0.005:
        old.append(f"Seed 0 gives {now0:.3f} and {now1:.3f} at the grid's revision, not the old "
                   f"runs' numbers (the code changed in between), so the old pair is two more "
                   f"draws")
    pooled = a + b
    outside = [f"{name}'s {v:.3f}" for name, v in (("E2", old0), ("E5", old1))
               if not min(pooled) <= v <= max(pooled)]
    if outside:
        verb = "lie" if len(outside) > 1 else "lies"
        old.append(f"{' and '.join(outside)} {verb} outside all {len(pooled)} runs here "
                   f"({min(pooled):.3f}–{max(pooled):.3f})")
    gap_vs_spread = ("larger than" if old0 - old1 > max(s0, s1) else "within")
    old.append(f"the old gap ({old0 - old1:.3f}) is {gap_vs_spread} the seed-to-seed spread of "
               f"one depth ({max(s0, s1):.3f}), and the depth difference of the medians "
               f"({m0 - m1:.3f}) is {'smaller' if m0 - m1 < max(s0, s1) else 'larger'} than it")
    lines.append("; ".join(old) + ".")
    n = len(setup["seeds"])
    lines.append(
        f"So: depth {d1} trains worse than depth {d0} here (the sets apart, p < 0.05)."
        if not overlap and p is not None and p < 0.05 else
        f"So: a depth effect is not resolved at n = {n} ("
        + ("the sets overlap" if overlap else f"Welch p = {fmt(p, '.3f')} ≥ 0.05") + "): the "
        f"old gap of {old0 - old1:.3f} is the seeds' spread at lr {PAIR_LR:g} (up to "
        f"{max(s0, s1):.3f} within one depth) and a median difference of {m0 - m1:.3f} that "
        f"{n} seeds do not resolve"
        + (", and E5's run lies below every seed here" if old1 < min(pooled) else "") + ".")
    cells = {lr: [grid[key("Kaiming", "plain", d, lr)] for d in (d0, d1)]
             for lr in setup["lrs"] if all(key("Kaiming", "plain", d, lr) in grid
                                           for d in (d0, d1))}
    if cells:
        lines.append(f"In the grid at step {setup['steps']} (Kaiming, plain, {len(setup['seeds'])} "
                     "seeds): " + "; ".join(
                         f"lr {lr:g}: depth {d0} {_iqr(c0['accuracy_quartiles'], '.3f')}, range "
                         f"{_spread(c0['test_accuracy']):.3f}, depth {d1} "
                         f"{_iqr(c1['accuracy_quartiles'], '.3f')}, range "
                         f"{_spread(c1['test_accuracy']):.3f}"
                         for lr, (c0, c1) in cells.items()) + " (median (IQR), range = max − min).")
        spread = {lr: max(_spread(c["test_accuracy"]) for c in cs) for lr, cs in cells.items()}
        lines[-1] += (f" The seeds spread least at lr {min(spread, key=spread.get):g} (range up "
                      f"to {min(spread.values()):.3f}), most at lr "
                      f"{max(spread, key=spread.get):g} ({max(spread.values()):.3f}).")
    return "\n\n".join(lines)


def _separated(kaiming: dict[str, Any], lecun: dict[str, Any]) -> bool:
    return kaiming["wilson"][0] > lecun["wilson"][1]


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    """The claims' verdicts, by the rules of the module docstring, from results.json alone."""
    setup, grid = results["setup"], results["grid"]
    n = len(setup["seeds"])
    kaiming, lecun = (per_layer_factor(results["init_preact_std"][k]) for k in INITS)
    kept = abs(kaiming - 1) < 0.1 and abs(lecun - 2**-0.5) < 0.06
    out = [Verdict("at init, std per layer ×1 (Kaiming) vs ×1/√2 (LeCun)",
                   f"×{kaiming:.3f} vs ×{lecun:.3f} (mean over {n} seeds' weights)",
                   "reproduced" if kept else "not reproduced", n=n)]

    cells = [(d, lr) for d in setup["claim_depths"] for lr in setup["lrs"]]
    sep = {c: _separated(grid[key("Kaiming", "plain", *c)], grid[key("LeCun", "plain", *c)])
           for c in cells}
    evidence = "; ".join(
        f"depth {d}, lr {lr:g}: {grid[key('Kaiming', 'plain', d, lr)]['left']}/{n} vs "
        f"{grid[key('LeCun', 'plain', d, lr)]['left']}/{n}" for d, lr in cells)
    hits = sum(sep.values())
    out.append(Verdict(
        "plain net: Kaiming trains, LeCun stalls",
        f"seeds off the plateau within {setup['steps']} steps, Kaiming vs LeCun: {evidence}; "
        f"Wilson 95% intervals apart in {hits} of {len(cells)}",
        "reproduced" if hits == len(cells) else "partly reproduced" if hits
        else "not reproduced", n=n))

    bn = [s for s in grid.values() if s["norm"] == "BN"]
    if bn:
        left, total = sum(s["left"] for s in bn), sum(s["n"] for s in bn)
        medians = [s["accuracy_quartiles"][1] for s in bn if s["accuracy_quartiles"]]
        out.append(Verdict(
            "with BN both inits train",
            f"{left}/{total} BN seeds off the plateau ({len(bn)} settings); median test "
            f"accuracy at step {setup['steps']} per setting "
            f"{fmt(min(medians), '.3f')}–{fmt(max(medians), '.3f')}",
            "reproduced" if left == total else "partly reproduced" if left >= 0.9 * total
            else "not reproduced", n=n))

    if not results["pair"]:
        return out
    shallow, deep = (results["pair"][str(d)] for d in setup["pair"])
    a, b = ([v for v in s["test_accuracy"] if v is not None] for s in (shallow, deep))
    overlap = min(a) <= max(b) and min(b) <= max(a) if a and b else True
    p = welch_test(a, b).p if len(a) > 1 and len(b) > 1 else None
    d0, d1 = setup["pair"]
    out.append(Verdict(
        f"E2 vs E5: depth {d1} trains worse than depth {d0} (Kaiming, plain, lr {PAIR_LR:g})",
        f"test accuracy at step {setup['pair_steps']}: range {fmt(min(a), '.3f')}–"
        f"{fmt(max(a), '.3f')} vs {fmt(min(b), '.3f')}–{fmt(max(b), '.3f')}, Welch p "
        f"{fmt(p, '.2g')}",
        "not reproduced" if overlap else "reproduced" if p is not None and p < 0.05
        else "partly reproduced", n=n))
    return out
