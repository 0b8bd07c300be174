"""E2: depth and initialization — plain deep ReLU MLPs on MNIST, Kaiming vs LeCun init, ± BN,
over depth, lr and seeds (SPEC §3 E2; issue 18).

He et al. (2015, Fig. 3): a 30-layer plain ReLU net trains with their (Kaiming) init and stalls
with Xavier's. Here (configs/e2_depth.py): depth × (Dense(128) → [BN] → ReLU) → Dense(10), SGD
with momentum 0.9, batch 128, kaiming_normal (std sqrt(2/fan_in)) or lecun_normal (std
1/sqrt(fan_in), the lecture's "Xavier"; Glorot's xavier_normal is the same for these square
layers).

The grid: 2 inits × depth {20, 30, 32, 40} × lr {3e-3, 1e-2} × {plain, BN} = 32 settings, each
one `train_seeds` program of seeds 0-4, 800 steps, test accuracy at steps 400 and 800. Per
setting: the fraction of seeds that leave the chance plateau (train loss, mean over 100 steps,
< 2.0 at some logged step ≤ 800; ln 10 ≈ 2.30) with its 95% Wilson interval, the median (IQR)
test accuracy at step 800 and the median (IQR) plateau-exit step of the seeds that leave.
The E2 / E5 check, like for like: E2 (depth 30) and E5 (depth 32, `git show
442d6c2:experiments/e5_activations/run.py`: configs/e2_depth.py:act=relu,init=kaiming_normal,
norm=none,depth=32) ran the same recipe, Kaiming, plain, lr 0.01, 3,000 steps, seed 0, and got
96.0% vs 65.4% test accuracy. Those two grid settings run to 3,000 steps (the grid reads them at
step 800: the same trajectories). And at init (no BN): the per-layer pre-activation std on 256
training images, averaged over seeds 0-4's weights. The old one-seed LeCun depth sweep (10-60,
1,500 steps) is gone: the grid's depths 20-40 at two lrs, 5 seeds each, cover its claim.

Budget (measured: a 10-seed depth-30 plain program of 500 steps took 68 CPU-s on the loaded
2-core machine, ≈ 10.6 CPU-ms per seed-step; a program's compile and data ≈ 10 CPU-s): 32 × 5 ×
800 = 128,000 seed-steps, + 2 × 5 × 2,200 = 22,000 for the 3,000-step pair, ≈ 150,000 × ~11 ms
(BN dearer, mean depth 30.5) ≈ 1,650 CPU-s + 32 × 10 s ≈ 33 CPU-minutes, ≈ 20 machine-minutes
with XLA on both cores. 10 seeds for the 16 plain settings (+80 × 800 steps ≈ 15 CPU-minutes)
did not fit; neither did 3,000 steps everywhere. Plateau exits of the old runs came at steps
100-600 (lr 0.01), so 800 steps decide most exits; a later exit counts as "stalled within 800
steps" and the report says so.

Verdict rules (fixed before the run):
- init std: mean factor per layer (geometric mean of std(l+1)/std(l), over 5 seeds' weights)
  within 0.1 of 1 (Kaiming) and within 0.06 of 1/√2 (LeCun): reproduced; else not. n = seeds.
- "plain net: Kaiming trains, LeCun stalls": per (depth, lr), Kaiming's fraction off the plateau
  "exceeds" LeCun's when Kaiming's Wilson lower bound is above LeCun's upper bound. Over the
  depths the paper's claim is about (≥ 30: 30, 32, 40) at both lrs (6 cells): all 6 reproduced,
  ≥ 1 partly reproduced, none not reproduced. n = seeds per cell.
- "with BN both inits train": every BN seed (16 settings) off the plateau: reproduced; ≥ 90% of
  them: partly; else not.
- "E2 vs E5: depth 32 trains worse than depth 30" (3,000 steps, the recipe of both): reproduced
  (a depth effect) if the two sets of 5 seed accuracies do not overlap and Welch's p < 0.05;
  not reproduced if they overlap (96% vs 65% is within seed-to-seed spread); else partly.

    python experiments/e2_depth/run.py              # 32 programs, ~35 CPU-minutes
    python experiments/e2_depth/run.py --tiny --out /tmp/e2    # digits, 30 × 32, seconds
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from normlab.config import load_config
from normlab.reports import (
    Report,
    RunResult,
    Verdict,
    fmt,
    new_figure,
    plot_curves,
    steps_to_reach,
    verdict_table,
)
from normlab.reports.experiment import (
    load_results,
    parse_experiment_args,
    record_runs,
    report_results,
    train_seeds,
)
from normlab.reports.probes import preacts_at_init
from normlab.sample_stats import welch_test, wilson_interval

CONFIG = "configs/e2_depth.py"
INITS = {"Kaiming": "kaiming_normal", "LeCun": "lecun_normal"}
NORMS = {"plain": "none", "BN": "batch"}
PLATEAU = 2.0  # train loss below this = off the chance plateau (ln 10 ≈ 2.303)
FULL = {"depths": (20, 30, 32, 40), "lrs": (3e-3, 1e-2), "seeds": (0, 1, 2, 3, 4),
        "steps": 800, "eval_every": 400, "claim_depths": (30, 32, 40),
        "pair": (30, 32), "pair_steps": 3000, "extra": ""}
# digits, 30 × 32: the claim's depth, seconds of compute; no pair (a fifth program: the test
# checks its rule on given numbers)
# 4 seeds: the fewest whose Wilson intervals can separate (4/4: 0.51–1; 0/4: 0–0.49)
TINY = {"depths": (30,), "lrs": (1e-2,), "seeds": (0, 1, 2, 3), "steps": 300, "eval_every": 300,
        "claim_depths": (30,), "pair": (), "pair_steps": 300,
        "extra": ",dataset=digits,width=32,batch=64"}
PAIR_LR = 1e-2  # E2's and E5's lr


def key(init: str, norm: str, depth: int, lr: float) -> str:
    return f"{init}, {norm}, depth {depth}, lr {lr:g}"


def plateau_exit(run: RunResult, until: int) -> int | None:
    """First logged step ≤ `until` whose mean train loss is below `PLATEAU` (None: never)."""
    steps, loss = run.series("train_loss")
    return steps_to_reach(steps[steps <= until], loss[steps <= until], PLATEAU, below=True)


def _at(run: RunResult, metric: str, step: int) -> float | None:
    steps, values = run.series(metric)
    hit = values[steps == step]
    return float(hit[0]) if len(hit) and np.isfinite(hit[0]) else None


def quartiles(values: Sequence[float | None]) -> list[float] | None:
    """[25th, 50th, 75th] percentiles (linear interpolation) of the values that are not None."""
    kept = [v for v in values if v is not None]
    return [float(q) for q in np.percentile(kept, [25, 50, 75])] if kept else None


def preact_std_at_init(spec: str, seeds: Sequence[int], n: int = 256) -> list[float]:
    """Per-layer std of the pre-activations at init on n standardized training images, the
    mean over the weights of `seeds`."""
    per_seed = [[float(np.std(y)) for y in preacts_at_init(load_config(f"{spec},seed={s}"), n,
                                                           train=True)] for s in seeds]
    return [float(v) for v in np.mean(per_seed, axis=0)]


def per_layer_factor(std: Sequence[float]) -> float:
    """Geometric mean of std(layer l+1)/std(layer l): 1 keeps the scale, 1/√2 halves Var."""
    return (std[-1] / std[0]) ** (1 / (len(std) - 1))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs E2 (or, with --report-only, reads its results.json) and writes the report; returns
    the results."""
    args = parse_experiment_args(__doc__, __file__, argv)
    report = Report("E2: depth — Kaiming vs LeCun init in deep plain and BN ReLU nets",
                    args.out, command=args.command)
    results, curves = (load_results(args.out), None) if args.report_only else collect(args)
    write_report(report, results, curves)
    return results


def summarize_setting(runs: Sequence[RunResult], steps: int) -> dict[str, Any]:
    """One setting's seeds at step `steps`: exits, fraction off the plateau with its Wilson
    interval, accuracies and their quartiles."""
    exits = [plateau_exit(r, steps) for r in runs]
    accs = [_at(r, "eval_accuracy", steps) for r in runs]
    k = sum(e is not None for e in exits)
    return {"n": len(runs), "left": k, "fraction": k / len(runs),
            "wilson": list(wilson_interval(k, len(runs))),
            "exits": exits, "exit_quartiles": quartiles(exits),
            "test_accuracy": accs, "accuracy_quartiles": quartiles(accs),
            "diverged": sum(r.diverged is not None for r in runs)}


def collect(args) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trains E2's programs; (the numbers the report shows, the curves behind its figures)."""
    g = TINY if args.tiny else FULL
    seeds, steps = g["seeds"], g["steps"]
    common = {"diag_every_steps": 0, "eval_every_steps": g["eval_every"]}
    pair_keys = {key("Kaiming", "plain", d, PAIR_LR): d for d in g["pair"]}

    def spec(init: str, norm: str, depth: int, lr: float, n_steps: int) -> str:
        return (f"{CONFIG}:init={INITS[init]},norm={NORMS[norm]},depth={depth},lr={lr},"
                f"steps={n_steps}{g['extra']}")

    programs: dict[str, list[RunResult]] = {}
    in_grid: list[str] = []
    # plain first (the claim), then BN; the pair's two settings run to pair_steps
    for norm in NORMS:
        for lr in g["lrs"]:
            for depth in g["depths"]:
                for init in INITS:
                    k = key(init, norm, depth, lr)
                    in_grid.append(k)
                    n_steps = g["pair_steps"] if k in pair_keys else steps
                    programs[k] = train_seeds(
                        args, f"{norm}_{INITS[init]}_d{depth}_lr{lr:g}",
                        spec(init, norm, depth, lr, n_steps), seeds, **common)
    grid = {k: summarize_setting(programs[k], steps) for k in in_grid}
    for k, s in grid.items():
        init, norm, depth, lr = k.split(", ")
        s.update(init=init, norm=norm, depth=int(depth.split()[1]), lr=float(lr.split()[1]))
    pair = {str(d): {**summarize_setting(programs[k], g["pair_steps"]),
                     "seed0_accuracy_at_grid_steps": _at(programs[k][0], "eval_accuracy", steps)}
            for k, d in pair_keys.items()}
    results: dict[str, Any] = {
        "setup": {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()},
        "init_preact_std": {label: preact_std_at_init(
            f"{CONFIG}:init={init},norm=none{g['extra']}", seeds)  # the config's depth 30
            for label, init in INITS.items()},
        "grid": grid, "pair": pair,
        "training_runs": record_runs(args, [r for runs in programs.values() for r in runs]),
    }
    curves = {"pair": {d: [r.series("train_loss") for r in programs[k]]
                       for k, d in pair_keys.items()}}
    return results, curves


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
    if "training_runs" in results:
        report.facts["training runs"] = results["training_runs"]
    report.text(
        "**Claim** (SPEC §3 E2, He et al. 2015): in a 30-layer plain ReLU net, Kaiming init "
        "(Var(W) = 2/fan_in) keeps the signal's scale through depth and the net trains; "
        "LeCun/\"Xavier\" init (Var(W) = 1/fan_in) halves the second moment at every layer "
        "(2^-30 over 30 layers), the gradients are as small, and training stalls. With BN "
        "after every Dense, the init scale no longer matters and both train. The verdict "
        "rules were fixed before the run (experiments/e2_depth/run.py's docstring).")

    report.heading("At init: pre-activation std by layer")
    caption = f"Pre-activation std by layer at init, no BN (256 training images, mean of {n} seeds)"
    if curves is None:
        report.existing_figure("preact_std_at_init.png", caption)
    else:
        fig, axes = new_figure(1)
        plot_curves(axes[0], {k: (list(range(1, len(v) + 1)), v) for k, v in init_std.items()},
                    xlabel="layer", ylabel="std of the pre-activation", logy=True)
        report.figure(fig, "preact_std_at_init.png", caption)
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
    if curves is None:
        report.existing_figure("grid.png", caption)
    else:
        report.figure(_grid_figure(setup, grid), "grid.png", caption)

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
    if curves is None:
        report.existing_figure("e2_vs_e5.png", caption)
    else:
        fig, axes = new_figure(len(curves["pair"]))
        for ax, (d, runs) in zip(axes, curves["pair"].items(), strict=True):
            plot_curves(ax, {f"seed {s}": c for s, c in zip(setup["seeds"], runs, strict=True)},
                        xlabel="step", ylabel="train loss", title=f"depth {d}", logy=True)
        report.figure(fig, "e2_vs_e5.png", caption)
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


def _pair_text(results: dict[str, Any]) -> str:
    """The E2/E5 contradiction, in words that follow from the pair's and the grid's numbers."""
    setup, grid, pair = results["setup"], results["grid"], results["pair"]
    d0, d1 = setup["pair"]
    a, b = (sorted(v for v in pair[str(d)]["test_accuracy"] if v is not None) for d in (d0, d1))
    lines = [
        f"E2 (depth {d0}) and E5 (depth {d1}) ran this recipe with seed 0 only and reported "
        f"96.0% and 65.4%. Over {len(setup['seeds'])} seeds at {setup['pair_steps']:,} steps, "
        f"the test accuracies are {', '.join(f'{v:.3f}' for v in a)} at depth {d0} and "
        f"{', '.join(f'{v:.3f}' for v in b)} at depth {d1}: "
        + ("the two sets overlap, so the two single runs differ no more than two seeds of one "
           "depth can" if a and b and min(a) <= max(b) and min(b) <= max(a)
           else "the two sets do not overlap")
        + f" (spread within depth {d0}: {max(a) - min(a):.3f}, within depth {d1}: "
          f"{max(b) - min(b):.3f})." if a and b else "No finished runs to compare."]
    both = [(d, lr) for d in (d0, d1) for lr in setup["lrs"]
            if key("Kaiming", "plain", d, lr) in grid]
    if both:
        lines.append(f"In the grid at step {setup['steps']} (Kaiming, plain): " + "; ".join(
            f"depth {d}, lr {lr:g}: median accuracy "
            f"{_iqr(grid[key('Kaiming', 'plain', d, lr)]['accuracy_quartiles'], '.3f')}"
            for d, lr in both) + ".")
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


if __name__ == "__main__":
    main()
