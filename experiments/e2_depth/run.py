"""E2: depth and initialization — a 30-layer plain ReLU MLP on MNIST (SPEC §3 E2).

He et al. (2015, Fig. 3): a 30-layer plain ReLU net trains with their (Kaiming) init and stalls
with Xavier's. Here (configs/e2_depth.py): 30 × (Dense(128) → ReLU), SGD with momentum 0.9 at
lr 0.01, batch 128, 3,000 steps, with kaiming_normal (std sqrt(2/fan_in)) or lecun_normal (std
1/sqrt(fan_in), the lecture's "Xavier"; Glorot's xavier_normal is the same for these square
layers), without and with BatchNorm. Also: the per-layer pre-activation std at init, and how
long the LeCun net stays on the chance plateau as the depth grows.

    python experiments/e2_depth/run.py              # 9 runs, ~30-40 min on a loaded 2-core CPU
    python experiments/e2_depth/run.py --tiny --out /tmp/e2    # digits, 30 × 32, plain pair
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
    final_metric,
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
    train_config,
)
from normlab.reports.probes import preacts_at_init

CONFIG = "configs/e2_depth.py"
INITS = {"Kaiming": "kaiming_normal", "LeCun (\"Xavier\")": "lecun_normal"}
NORMS = {"plain": "none", "BN": "batch"}
SWEEP_DEPTHS = (10, 20, 40, 60)
SWEEP_STEPS = 1500
PLATEAU = 2.0  # train loss below this = off the chance plateau (ln 10 ≈ 2.303)
# digits, 30 × 32: the same depth (the claim is about depth), seconds of compute
TINY = ",dataset=digits,depth=30,width=32,steps=300,batch=64"


def plateau_exit(run: RunResult) -> int | None:
    """First logged step whose mean train loss is below `PLATEAU` (None: never)."""
    return steps_to_reach(*run.series("train_loss"), PLATEAU, below=True)


def _at(run: RunResult, key: str, step: int) -> float | None:
    steps, values = run.series(key)
    return float(values[steps == step][0]) if np.any(steps == step) else None


def preact_std_at_init(spec: str, n: int = 256) -> list[float]:
    """Per-layer std of the pre-activations at init on n standardized training images."""
    return [float(np.std(y)) for y in preacts_at_init(load_config(f"{CONFIG}:{spec}"), n,
                                                       train=True)]


def per_layer_factor(std: Sequence[float]) -> float:
    """Geometric mean of std(layer l+1)/std(layer l): 1 keeps the scale, 1/√2 halves Var."""
    return (std[-1] / std[0]) ** (1 / (len(std) - 1))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs E2 (or, with --report-only, reads its results.json) and writes the report; returns
    the results."""
    args = parse_experiment_args(__doc__, __file__, argv)
    report = Report("E2: depth — Kaiming vs LeCun/Xavier init in a 30-layer ReLU net", args.out,
                    command=args.command)
    results, runs = (load_results(args.out), None) if args.report_only else collect(args)
    write_report(report, args, results, runs)
    return results


def collect(args) -> tuple[dict[str, Any], dict[str, dict]]:
    """Trains E2's runs; (the numbers the report shows, the runs behind its figures)."""
    tiny = TINY if args.tiny else ""
    norms = {"plain": "none"} if args.tiny else NORMS  # tiny: the plain pair, the claim
    # tiny: no mid-run diagnostics (the report uses none; their compile is the cost)
    extra = {"diag_every_steps": 0} if args.tiny else {}
    main_runs = {
        f"{init_label}, {norm_label}": train_config(
            args, f"{norm}_{init}", f"{CONFIG}:init={init},norm={norm}{tiny}", **extra)
        for norm_label, norm in norms.items() for init_label, init in INITS.items()
    }
    depth_runs: dict[str, RunResult] = {}
    if not args.tiny:
        for depth in SWEEP_DEPTHS:
            depth_runs[f"LeCun_{depth}"] = train_config(
                args, f"sweep_lecun_d{depth}",
                f"{CONFIG}:init=lecun_normal,depth={depth},steps={SWEEP_STEPS}")
        depth_runs[f"Kaiming_{SWEEP_DEPTHS[-1]}"] = train_config(
            args, f"sweep_kaiming_d{SWEEP_DEPTHS[-1]}",
            f"{CONFIG}:init=kaiming_normal,depth={SWEEP_DEPTHS[-1]},steps={SWEEP_STEPS}")
    results: dict[str, Any] = {
        "init_preact_std": {label: preact_std_at_init(f"init={init},norm=none{tiny}")
                            for label, init in INITS.items()},
        "runs": {},
        "training_runs": record_runs(args, [*main_runs.values(), *depth_runs.values()]),
    }
    for label, run in main_runs.items():
        loss = run.series("train_loss")[1]
        results["runs"][label] = {
            "loss@100": float(loss[0]) if len(loss) else None,
            "loss@end": final_metric(run, "train_loss"),
            "plateau_exit": plateau_exit(run),
            "test_accuracy": final_metric(run, "eval_accuracy"),
            "diverged": run.diverged,
        }
    if depth_runs:
        # the 30-layer LeCun run of the main comparison, read at the sweep's length
        depth_runs = {**dict(list(depth_runs.items())[:2]),
                      "LeCun_30": main_runs["LeCun (\"Xavier\"), plain"],
                      **dict(list(depth_runs.items())[2:])}
        results["depth_sweep"] = {
            key: {"plateau_exit": plateau_exit(r),
                  f"train_loss@{SWEEP_STEPS}": _at(r, "train_loss", SWEEP_STEPS),
                  f"test_accuracy@{SWEEP_STEPS}": _at(r, "eval_accuracy", SWEEP_STEPS)}
            for key, r in depth_runs.items()}
    curves = {"main": {k: {"train_loss": r.series("train_loss"),
                           "eval_accuracy": r.series("eval_accuracy")}
                       for k, r in main_runs.items()},
              "depth": {k: r.series("train_loss") for k, r in depth_runs.items()
                        if k != "LeCun_30"}}
    return results, curves


def write_report(report: Report, args, results: dict[str, Any], curves: dict | None) -> None:
    """The report from `results` alone; figures drawn from `curves` (None: --report-only, the
    committed figures are embedded)."""
    init_std = results["init_preact_std"]
    config = load_config(f"{CONFIG}:{TINY.lstrip(',') if args.tiny else ''}")
    report.facts.update({
        "net": f"{config.model.depth} × (Dense({config.model.width}) → [BN] → ReLU) → "
               f"Dense(10), zero biases",
        "training": f"{config.dataset}, standardized inputs, batch {config.batch_size}, SGD "
                    f"momentum 0.9, lr {config.lr:g}, {config.total_steps} steps, seed 0",
        "config": CONFIG,
    })
    if "training_runs" in results:
        report.facts["training runs"] = results["training_runs"]
    report.text(
        "**Claim** (SPEC §3 E2, He et al. 2015): in a 30-layer plain ReLU net, Kaiming init "
        "(Var(W) = 2/fan_in) keeps the signal's scale through depth and the net trains; "
        "Xavier/LeCun init (Var(W) = 1/fan_in) halves the second moment at every layer "
        "(2^-30 over 30 layers), the gradients are as small, and training stalls. With BN "
        "after every Dense, the init scale no longer matters and both train."
    )
    report.heading("At init: pre-activation std by layer")
    caption = "Pre-activation std by layer at init, no BN (256 training images)"
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

    report.heading("Training")
    report.table(["run", "train loss, steps 1–100", f"first step with loss < {PLATEAU}",
                  "final train loss", "final test accuracy"],
                 [[label, r["loss@100"], r["plateau_exit"], r["loss@end"], r["test_accuracy"]]
                  for label, r in results["runs"].items()], spec=".4f")
    caption = "Train loss (log scale) and test accuracy"
    if curves is None:
        report.existing_figure("training.png", caption)
    else:
        fig, axes = new_figure(2)
        plot_curves(axes[0], {k: c["train_loss"] for k, c in curves["main"].items()},
                    xlabel="step", ylabel="train loss (mean over 100 steps)", logy=True)
        plot_curves(axes[1], {k: c["eval_accuracy"] for k, c in curves["main"].items()},
                    xlabel="step", ylabel="test accuracy", ylim=(0.0, 1.0))
        report.figure(fig, "training.png", caption)

    if "depth_sweep" in results:
        report.heading("How long the plain net stalls, by depth")
        rows = [[*key.split("_"), r["plateau_exit"], r[f"train_loss@{SWEEP_STEPS}"],
                 r[f"test_accuracy@{SWEEP_STEPS}"]] for key, r in results["depth_sweep"].items()]
        report.table(["init", "depth", f"first step with loss < {PLATEAU}",
                      f"train loss at {SWEEP_STEPS}", f"test accuracy at {SWEEP_STEPS}"],
                     rows, spec=".4f")
        if "depth_sweep_note" in results:
            report.text(f"({results['depth_sweep_note']}.)")
        caption = ("Plain nets of other depths (same width, lr); curves stuck at the chance "
                   "loss ln 10 overlap")
        if curves is None:
            report.existing_figure("depth_sweep.png", caption)
        else:
            fig, axes = new_figure(1)
            plot_curves(axes[0], {k.replace("_", ", depth "): c
                                  for k, c in curves["depth"].items()},
                        xlabel="step", ylabel="train loss", logy=True)
            report.figure(fig, "depth_sweep.png", caption)
    report.heading("Result")
    report.text(_verdict(results))
    claims = verdicts(results)
    report.text(verdict_table(claims))
    report_results(report, results, claims)


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    """The claims' verdicts, from the numbers in results.json (one seed each: preliminary)."""
    kaiming, lecun = (per_layer_factor(results["init_preact_std"][k]) for k in INITS)
    kept = 0.9 < kaiming < 1.1 and abs(lecun - 2**-0.5) < 0.06
    runs = results["runs"]
    k_exit = runs["Kaiming, plain"]["plateau_exit"]
    l_exit = runs["LeCun (\"Xavier\"), plain"]["plateau_exit"]
    trains = ("not reproduced" if k_exit is None else "reproduced" if l_exit is None
              else "partly reproduced" if l_exit > k_exit else "not reproduced")
    evidence = f"off the plateau (loss < {PLATEAU}) at step {k_exit} vs {l_exit}"
    deep_kaiming = results.get("depth_sweep", {}).get(f"Kaiming_{SWEEP_DEPTHS[-1]}")
    if deep_kaiming is not None:  # the same recipe deeper: does Kaiming still train?
        evidence += (f"; Kaiming at depth {SWEEP_DEPTHS[-1]}: test accuracy "
                     f"{fmt(deep_kaiming[f'test_accuracy@{SWEEP_STEPS}'], '.4f')} "
                     f"at step {SWEEP_STEPS}")
    out = [
        Verdict("at init, std per layer ×1 (Kaiming) vs ×1/√2 (LeCun)",
                f"×{kaiming:.3f} vs ×{lecun:.3f}",
                "reproduced" if kept else "not reproduced", n=1),
        Verdict("plain net: Kaiming trains, LeCun stalls", evidence, trains, n=1),
    ]
    if "Kaiming, BN" in runs:
        accs = [runs[f"{i}, BN"]["test_accuracy"] for i in INITS]  # None: diverged
        out.append(Verdict("with BN both inits train",
                           "test accuracy " + " vs ".join(fmt(a, ".4f") for a in accs),
                           "reproduced" if min(a or 0.0 for a in accs) > 0.9
                           else "not reproduced", n=1))
    return out


def _verdict(results: dict[str, Any]) -> str:
    def describe(label: str, r: dict[str, Any]) -> str:
        stalled = ("never leaves the chance plateau" if r["plateau_exit"] is None
                   else f"first gets below loss {PLATEAU} at step {r['plateau_exit']}")
        return (f"{label}: {stalled}; final train loss {fmt(r['loss@end'], '.3f')}, test "
                f"accuracy {fmt(r['test_accuracy'], '.4f')}")

    lines = [f"- {describe(label, r)}." for label, r in results["runs"].items()]
    sweep = results.get("depth_sweep", {})
    if sweep:
        lines.append(f"- Plain nets by depth ({SWEEP_STEPS:,} steps): " + ", ".join(
            f"{key.replace('_', ' at depth ')}: "
            + (f"off the plateau at step {r['plateau_exit']}" if r["plateau_exit"]
               else "stalled throughout")
            + f", test accuracy {fmt(r[f'test_accuracy@{SWEEP_STEPS}'], '.4f')}"
            for key, r in sweep.items()) + ".")
    lines.append("- One seed per run, and a single unstable run can turn a verdict (E5's report "
                 "trains a Kaiming ReLU net of the same recipe at depth 32), hence "
                 "\"preliminary\".")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
