"""E4: the BatchNorm paper on MNIST (Ioffe & Szegedy 2015, §4.1, Fig. 1) — SPEC §3 E4.

The paper's net (3 × 100 sigmoid, small Gaussian init, batch 60, SGD) with and without BN,
trained through the training system (configs/e4_bn_mnist.py), 5 seeds per setting (one
`num_seeds` program each). The paper ran 50,000 steps; this run stops at `STEPS` = 4,000 (the
committed 50k single-seed records decide every claim but the 98% one within 5,000 steps; the
machine budget was 20 minutes). The learning rate is chosen for the *baseline* on validation
(5,000 held-out training images): lr* = the `LR_GRID` lr with the best seed-mean final val
accuracy. Both nets also run at `HIGH_LRS` (10, 60: 5× and 30× the earlier lr* of 2, the paper's
BN-x5 / BN-x30), so "BN allows a higher lr" has its control. Claims are read on test. The grid's
runs record the 15/50/85th percentiles of every unit of the last hidden layer's sigmoid input
(`config.diag_unit_layers`), so the drift claim is measured over all 100 units of each seed.

    python experiments/e4_bn_mnist/run.py              # 10 programs × 5 seeds × 4k steps
    python experiments/e4_bn_mnist/run.py --reuse      # reuse finished runs of the same code
    python experiments/e4_bn_mnist/run.py --report-only  # from results.json alone
    python experiments/e4_bn_mnist/run.py --tiny --out /tmp/e4    # digits, 2 seeds, seconds
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from normlab.reports import (
    Report,
    RunResult,
    Verdict,
    choose_lr,
    final_metric,
    fmt,
    fmt_mean_ci,
    new_figure,
    plot_curves,
    steps_to_reach,
    steps_to_reach_across,
    verdict_table,
)
from normlab.reports.experiment import (
    load_results,
    parse_experiment_args,
    record_runs,
    report_results,
    train_seeds,
)
from normlab.sample_stats import welch_test

CONFIG = "configs/e4_bn_mnist.py"
LR_GRID = (1.0, 2.0, 4.0)  # where lr* is chosen
HIGH_LRS = (10.0, 60.0)  # the control of "BN allows a higher lr": both nets run there
STEPS = 4000
SEEDS = 5
THRESHOLDS = (0.90, 0.95, 0.97)
CHANCE = 0.2  # final test accuracy below this: "stays at chance" (10 classes)
LAYER = "layer_02/norm_act"  # the last hidden layer: every unit's percentiles recorded (grid)
UNITS = 100
PERCENTILES = ("p15", "p50", "p85")
AHEAD_AFTER = 1000  # "higher throughout": the seed-mean BN curve above at every eval after this
NETS = {"no BN": "none", "BN": "batch"}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs E4 (or, with --report-only, reads its results.json) and writes the report; returns
    the results."""
    args = parse_experiment_args(__doc__, __file__, argv)
    report = Report("E4: BatchNorm on MNIST (Ioffe & Szegedy 2015, Fig. 1)", args.out,
                    command=args.command)
    results, runs = (load_results(args.out), None) if args.report_only else collect(args)
    write_report(report, results, runs)
    return results


def unit_drift(run: RunResult, after: int) -> dict[str, list[float]] | None:
    """Each unit's drift: the mean over p15/p50/p85 of its sigmoid input of |p(t) − p(T)| over
    the evaluations t ≥ `after` (T: the last one, where the distribution ends up); and its
    final spread p85(T) − p15(T), the scale control (BN changes the inputs' scale). None when
    the run did not record every unit or a value is missing (a non-finite run)."""
    drifts, spreads = np.zeros(UNITS), np.zeros(UNITS)
    for u in range(UNITS):
        for p in PERCENTILES:
            steps, values = run.series(f"diag/{LAYER}/{p}/u{u:02d}")
            late = values[steps >= after]
            if not len(late) or len(steps) != len(run.series("test_accuracy")[0]):
                return None
            drifts[u] += np.mean(np.abs(late - late[-1])) / len(PERCENTILES)
            spreads[u] += {"p15": -late[-1], "p50": 0.0, "p85": late[-1]}[p]
    return {"drift": [round(float(d), 6) for d in drifts],
            "spread": [round(float(w), 6) for w in spreads]}


def _setting(runs: list[RunResult], after: int) -> dict[str, Any]:
    """One (net, lr) over its seeds: per-seed finals, steps-to, drift, curves."""
    curves = [r.series("test_accuracy") for r in runs]
    return {
        "n": len(runs), "diverged": [bool(r.diverged) for r in runs],
        "final_val": [final_metric(r, "val_accuracy") for r in runs],
        "final_test": [final_metric(r, "test_accuracy") for r in runs],
        "steps_to": {f"{t:g}": [steps_to_reach(*c, t) for c in curves] for t in THRESHOLDS},
        "steps_to_median_ci": {f"{t:g}": list(_median_ci(runs, t)) for t in THRESHOLDS},
        "unit_drift": [unit_drift(r, after) for r in runs],
        "steps": curves[0][0].tolist(),
        "test_accuracy": [c[1].tolist() for c in curves],
    }


def _median_ci(runs: list[RunResult], t: float) -> tuple[float, float, float, int]:
    s = steps_to_reach_across(runs, "test_accuracy", t)
    return s.median, s.low, s.high, s.reached


def collect(args) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trains E4's programs; (the numbers the report shows, the runs behind its figures)."""
    tiny = ",dataset=digits,steps=600,batch=64" if args.tiny else f",steps={STEPS}"
    grid, high = ((0.5,), ()) if args.tiny else (LR_GRID, HIGH_LRS)
    seeds = range(2 if args.tiny else SEEDS)
    after = 300 if args.tiny else AHEAD_AFTER
    runs = {(net, g): train_seeds(args, f"{'bn' if norm == 'batch' else 'plain'}_lr{g:g}",
                                  f"{CONFIG}:norm={norm},lr={g}{tiny}", seeds,
                                  diag_unit_layers=LAYER if g in grid else "")
            for g in (*grid, *high) for net, norm in NETS.items()}
    lr = choose_lr({g: runs["no BN", g] for g in grid}, "val_accuracy")
    results: dict[str, Any] = {
        "tiny": args.tiny, "lr_star": lr, "grid": [float(g) for g in grid],
        "high_lrs": [float(g) for g in high], "ahead_after": after,
        "steps_total": 600 if args.tiny else STEPS,
        "settings": {f"{net} @ {g:g}": _setting(r, after) for (net, g), r in runs.items()},
        "training_runs": record_runs(args, [r for rs in runs.values() for r in rs]),
    }
    return results, {"runs": runs}


def _mean_curve(setting: dict[str, Any]) -> np.ndarray:
    return np.mean(np.asarray(setting["test_accuracy"], np.float64), axis=0)


def _finite(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and np.isfinite(v)]


def _welch(a: Sequence[float | None], b: Sequence[float | None]):
    a, b = _finite(a), _finite(b)
    return welch_test(a, b) if min(len(a), len(b)) > 1 else None


def _state(s: dict[str, Any]) -> str:
    """A setting called by its numbers: diverged only with a non-finite loss."""
    k, n = sum(s["diverged"]), s["n"]
    finals = _finite(s["final_test"])
    if k == n:
        return f"diverged ({n} of {n} seeds, non-finite loss)"
    chance = sum(f < CHANCE for f in finals)
    words = f"{k} of {n} diverged; " if k else ""
    if chance:
        words += f"{chance} of {n} stay at chance (final test < {CHANCE:g}); "
    return words + f"final test {fmt_mean_ci(finals, '.4f')}"


def seed_drift(s: dict[str, Any], relative: bool = False) -> list[float | None]:
    """Per seed, the mean drift over its units (None: units not recorded); `relative`: of
    each unit's drift divided by its final spread p85 − p15."""
    return [None if d is None else
            float(np.mean(np.divide(d["drift"], d["spread"]) if relative else d["drift"]))
            for d in s["unit_drift"]]


def fraction_smaller(bn: dict[str, Any], plain: dict[str, Any]) -> list[float | None]:
    """Per seed i, the fraction of (BN unit, no-BN unit) pairs of seed i in which the BN unit
    drifts less (ties count half; 0.5: no difference). Units of two nets are not matched, so
    every pair counts: the Mann-Whitney probability P(d_BN < d_noBN)."""
    out = []
    for b, p in zip(bn["unit_drift"], plain["unit_drift"], strict=True):
        if b is None or p is None:
            out.append(None)
            continue
        b, p = np.asarray(b["drift"])[:, None], np.asarray(p["drift"])[None, :]
        out.append(float(np.mean((b < p) + 0.5 * (b == p))))
    return out


def _learns(s: dict[str, Any]) -> bool:
    finals = _finite(s["final_test"])
    return len(finals) == s["n"] and min(finals) > 0.9


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    """The paper's claims, from results.json, over the seeds of each setting."""
    lr, st = results["lr_star"], results["settings"]
    plain, bn = st[f"no BN @ {lr:g}"], st[f"BN @ {lr:g}"]
    n = min(plain["n"], bn["n"])
    after = results["ahead_after"]
    steps = np.asarray(bn["steps"])
    gap = (_mean_curve(bn) - _mean_curve(plain))[steps > after]
    ahead = bool(len(gap)) and bool(np.all(gap > 0))
    w = _welch(bn["final_test"], plain["final_test"])
    final_better = w is not None and w.p < 0.05 and w.t > 0
    out = [Verdict(
        f"BN's test accuracy is higher throughout (lr* {lr:g})",
        f"rule: seed-mean BN curve above at every evaluation after step {after} "
        f"({'yes' if ahead else 'no'}: {np.mean(gap > 0):.0%} of them, min gap "
        f"{fmt(float(gap.min()) if len(gap) else None, '.4f')}) and final higher by Welch "
        f"p < 0.05 ({fmt_mean_ci(bn['final_test'], '.4f')} vs "
        f"{fmt_mean_ci(plain['final_test'], '.4f')}, p = "
        f"{fmt(w.p if w else None, '.2g')})",
        "reproduced" if ahead and final_better else
        "partly reproduced" if ahead or final_better else "not reproduced", n=n)]
    t = "0.9" if results.get("tiny") else "0.97"
    (mp, lp, hp, rp), (mb, lb, hb, rb) = (s["steps_to_median_ci"][t] for s in (plain, bn))
    out.append(Verdict(
        f"BN reaches {float(t):.0%} in fewer steps (lr* {lr:g})",
        f"median steps (bootstrap 95% CI): BN {fmt(mb, '.0f')} [{fmt(lb, '.0f')}, "
        f"{fmt(hb, '.0f')}] ({rb}/{bn['n']} reach it) vs {fmt(mp, '.0f')} [{fmt(lp, '.0f')}, "
        f"{fmt(hp, '.0f')}] ({rp}/{plain['n']}) without BN (inf: not within "
        f"{results['steps_total']} steps)",
        "reproduced" if hb < lp else "partly reproduced" if mb < mp else "not reproduced",
        n=n))
    highs = [(g, st[f"no BN @ {g:g}"], st[f"BN @ {g:g}"]) for g in results["high_lrs"]]
    if highs:
        wins = [g for g, p, b in highs if _learns(b) and not _learns(p)]
        out.append(Verdict(
            "BN allows a higher lr (both nets at lr " + ", ".join(f"{g:g}" for g, *_ in highs)
            + ")",
            "; ".join(f"lr {g:g}: BN {_state(b)}, no BN {_state(p)}" for g, p, b in highs),
            "reproduced" if wins else "not reproduced", n=n))
    db, dp = seed_drift(bn), seed_drift(plain)
    wd = _welch(db, dp)
    smaller = wd is not None and wd.p < 0.05 and wd.t < 0
    fractions = _finite(fraction_smaller(bn, plain))
    every_seed = len(fractions) == n and min(fractions) > 0.5
    rb, rp = seed_drift(bn, relative=True), seed_drift(plain, relative=True)
    wr = _welch(rb, rp)
    out.append(Verdict(
        f"BN's sigmoid-input percentiles drift less (lr* {lr:g}, all {UNITS} last-layer units)",
        f"rule: a unit's drift = mean over p15/50/85 of |p(t) − p(end)| over evaluations from "
        f"step {after}; seed mean over units: BN {fmt_mean_ci(db, '.3f')} vs no BN "
        f"{fmt_mean_ci(dp, '.3f')}, Welch p = {fmt(wd.p if wd else None, '.2g')}; "
        "P(BN unit drifts less than a no-BN unit) per seed: "
        + ", ".join(f"{f:.2f}" for f in fractions) + " (> 0.5 in "
        f"{sum(f > 0.5 for f in fractions)}/{n} seeds); scale control, each unit's drift / its "
        f"final p85 − p15: BN {fmt_mean_ci(rb, '.3f')} vs no BN {fmt_mean_ci(rp, '.3f')}, "
        f"Welch p = {fmt(wr.p if wr else None, '.2g')}",
        "reproduced" if smaller and every_seed else
        "partly reproduced" if smaller or every_seed else "not reproduced", n=n))
    return out


def write_report(report: Report, results: dict[str, Any], figures: dict | None) -> None:
    """The report from `results` alone; figures drawn from the runs in `figures` (None:
    --report-only, the committed figures are embedded)."""
    tiny, lr, st = results.get("tiny", False), results["lr_star"], results["settings"]
    report.facts.update({
        "data": "digits (tiny)" if tiny else
                "MNIST: train on train[:55000], validation train[55000:], test = 10,000 test",
        "net": "3 × 100 hidden, sigmoid, N(0, 0.1²) weights, zero biases, batch 60, plain "
               f"SGD, constant lr, {results['steps_total']:,} steps (the paper: 50,000)",
        "seeds": f"{st[f'BN @ {lr:g}']['n']} per setting (one num_seeds program each)",
        "config": CONFIG, "training runs": results["training_runs"],
    })
    report.text(
        "**Claim** (SPEC §3 E4; the paper's §4.1): with BN the net has higher test accuracy "
        "throughout training and reaches a given accuracy in far fewer steps; the 15/50/85th "
        "percentiles of a last-hidden-layer sigmoid input are stable with BN and drift without. "
        "BN also allows higher learning rates (BN-x5, BN-x30).\n\n"
        f"**Design**: lr* = {lr:g}, the best seed-mean final *validation* accuracy of the no-BN "
        f"net over {results['grid']}; both nets also at {results['high_lrs']} (5× and 30× the "
        "single-seed lr* of 2 found at 50k steps). \"Diverged\" means a non-finite loss only. "
        "Every cell: mean ± 95% Student-t CI over seeds (n); steps-to: median and percentile "
        "bootstrap 95% CI over seeds (inf: not reached)."
    )
    report.heading("Every setting")
    rows = []
    for key, s in st.items():
        med = s["steps_to_median_ci"]
        rows.append([key + (" ← lr*" if key.endswith(f"@ {lr:g}") and
                            float(key.split("@ ")[1]) == lr else ""),
                     fmt_mean_ci(s["final_val"], ".4f"), _state(s),
                     *(f"{fmt(m, '.0f')} [{fmt(lo, '.0f')}, {fmt(hi, '.0f')}] ({r}/{s['n']})"
                       for m, lo, hi, r in (med[f"{t:g}"] for t in THRESHOLDS)),
                     fmt_mean_ci(_finite(seed_drift(s)), ".3f") if _finite(seed_drift(s))
                     else "not recorded"])
    report.table(["net @ lr", "final val", "final test", *(f"→{t:.0%}" for t in THRESHOLDS),
                  f"drift (mean of {UNITS} units)"], rows)
    report.text("\"→95%\": the first step with test accuracy ≥ 95% (evaluated every 100 "
                "steps). Drift of a unit: the mean over p15/50/85 of its sigmoid input (last "
                "hidden layer, on a fixed batch of 1,000 training images in eval mode) of "
                f"|p(t) − p(end)| over the evaluations from step {results['ahead_after']}; the "
                f"cell: mean ± 95% CI over seeds of each seed's mean over its {UNITS} units "
                "(recorded for the lr-grid runs only).")
    bn, plain = st[f"BN @ {lr:g}"], st[f"no BN @ {lr:g}"]
    report.table(["seed", "BN drift (unit mean)", "no BN drift (unit mean)",
                  "P(BN unit drifts less)", "BN drift / spread", "no BN drift / spread"],
                 [[str(i), *(fmt(v, ".3f") for v in row[:2]), fmt(row[2], ".2f"),
                   *(fmt(v, ".3f") for v in row[3:])]
                  for i, row in enumerate(zip(seed_drift(bn), seed_drift(plain),
                                              fraction_smaller(bn, plain),
                                              seed_drift(bn, True), seed_drift(plain, True),
                                              strict=True))])
    report.text(f"Per seed at lr* = {lr:g}: P(BN unit drifts less) is the fraction of the "
                f"{UNITS}×{UNITS} (BN unit, no-BN unit) pairs of that seed in which the BN unit's "
                "drift is smaller (ties half; the units of two nets are not matched). Drift / "
                "spread: the mean over units of each unit's drift divided by its final "
                "p85 − p15 (a scale-free control: BN sets the inputs' scale).")
    caption = (f"Seed-mean test accuracy vs step at lr* = {lr:g} (the paper's Fig. 1a) and at "
               "the high learning rates, with and without BN")

    def draw_accuracy():
        lrs = [lr, *results["high_lrs"]]
        fig, axes = new_figure(len(lrs))
        for ax, g in zip(axes, lrs, strict=True):
            plot_curves(ax, {f"{net} (lr {g:g})": (np.asarray(st[f"{net} @ {g:g}"]["steps"]),
                                                   _mean_curve(st[f"{net} @ {g:g}"]))
                             for net in NETS},
                        xlabel="step", ylabel="test accuracy (seed mean)", ylim=(0.0, 1.0),
                        title=f"lr {g:g}")
        return fig

    report.plot("test_accuracy.png", caption, None if figures is None else draw_accuracy)
    caption = ("15th, 50th and 85th percentiles of the input to unit 0 of the last hidden "
               f"layer's sigmoid at lr* = {lr:g}, seed 0 (Fig. 1b, c)")

    def draw_percentiles():
        fig, axes = new_figure(2, sharey=True)
        for ax, net in zip(axes, NETS, strict=True):
            run = figures["runs"][net, lr][0]
            for p in PERCENTILES:
                ax.plot(*run.series(f"diag/{LAYER}/{p}"), color="C0", label=p)
            ax.set_title(f"{net}, lr {lr:g}, seed 0")
            ax.set_xlabel("step")
            ax.set_ylabel("sigmoid input, last hidden layer, unit 0")
            ax.grid(True, alpha=0.3)
        return fig

    report.plot("sigmoid_input_percentiles.png", caption,
                None if figures is None else draw_percentiles)
    caption = (f"Per-unit drift of the last hidden layer's sigmoid input at lr* = {lr:g}, every "
               f"unit of every seed (n = {UNITS} × seeds per net)")

    def draw_drift():
        fig, (ax,) = new_figure(1)
        pooled = {net: np.concatenate([d["drift"] for d in st[f"{net} @ {lr:g}"]["unit_drift"]
                                       if d is not None]) for net in NETS}
        bins = np.histogram_bin_edges(np.concatenate(list(pooled.values())), bins=40)
        for i, (net, d) in enumerate(pooled.items()):
            ax.hist(d, bins=bins, alpha=0.6, color=f"C{i}", label=net)
        ax.set_xlabel("unit drift: mean over p15/50/85 of |p(t) − p(end)|")
        ax.set_ylabel("units")
        ax.legend()
        ax.grid(True, alpha=0.3)
        return fig

    report.plot("unit_drift.png", caption, None if figures is None else draw_drift)
    report.heading("Verdicts")
    claims = verdicts(results)
    report.text(verdict_table(claims))
    report_results(report, results, claims)


if __name__ == "__main__":
    main()
