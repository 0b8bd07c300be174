"""E5: activation functions — the BN paper's MNIST net with every activation of SPEC §1.3, and a
deep self-normalizing SELU net (SPEC §3 E5).

Part 1 (configs/e4_bn_mnist.py with act=<name>, norm=none): 3 × 100 units, N(0, 0.1²) weights,
batch 60, plain SGD, 10,000 steps, at lr 0.1 and 0.5; test accuracy, and the fraction of
saturated units (sigmoid, tanh) or dead units (every other activation) per hidden layer over
training, from the built-in diagnostics on a fixed batch of 1,000 training images.
Part 2 (configs/e2_depth.py): 32 × (Dense(128) → act), no normalization, standardized inputs,
SGD momentum 0.9, lr 0.01, 3,000 steps: SELU with LeCun init (Klambauer et al. 2017), the same
net with ReLU (LeCun init, and Kaiming init for reference), and the activation statistics of
every layer at init.

    python experiments/e5_activations/run.py          # 25 runs, ~30-60 min on a 2-core CPU
    python experiments/e5_activations/run.py --tiny --out /tmp/e5    # digits, seconds
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
    fmt,
    new_figure,
    plot_curves,
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
from normlab.train.diagnostics import LINEAR, SATURATING

SHALLOW = "configs/e4_bn_mnist.py"
DEEP = "configs/e2_depth.py"
ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "gelu",
               "gelu_tanh", "silu", "mish", "identity")  # swish is silu's second name
LRS = (0.1, 0.5)
SHALLOW_STEPS = 10_000
DEEP_NETS = {  # label: (activation, init)
    "SELU, LeCun": ("selu", "lecun_normal"),
    "ReLU, LeCun": ("relu", "lecun_normal"),
    "ReLU, Kaiming": ("relu", "kaiming_normal"),
}
DEEP_DEPTH = 32
# tiny: one saturating activation, and the deep SELU/ReLU pair at depth 20 (digits, seconds)
TINY_ACTS, TINY_DEEP_DEPTH = ("tanh",), 20


def unit_fraction(run: RunResult, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, mean over hidden layers of diag/<layer>/norm_act/<metric>)."""
    keys = sorted(k for k in (run.records[0] if run.records else {})
                  if k.startswith("diag/") and k.endswith("/" + metric))
    if not keys:
        return np.zeros(0, np.int64), np.zeros(0)
    per_layer = [run.series(k) for k in keys]
    return per_layer[0][0], np.mean([v for _, v in per_layer], axis=0)


def activation_stats_at_init(spec: str, n: int = 256) -> dict[str, list[float]]:
    """Per-layer mean and std of the activations (outputs) at init on n training images."""
    config = load_config(spec)
    act = make_activation(config.model.activation)
    outs = [np.asarray(act(y), np.float64) for y in preacts_at_init(config, n)]
    return {"mean": [float(h.mean()) for h in outs], "std": [float(h.std()) for h in outs]}


def _unit_measure(activation: str) -> str | None:
    if activation in LINEAR:
        return None
    return "saturated_fraction" if activation in SATURATING else "dead_fraction"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs E5 (or, with --report-only, reads its results.json) and writes the report; returns
    the results."""
    args = parse_experiment_args(__doc__, __file__, argv)
    report = Report("E5: activation functions", args.out, command=args.command)
    results, runs = (load_results(args.out), None) if args.report_only else collect(args)
    write_report(report, results, runs)
    return results


def collect(args) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trains E5's runs; (the numbers the report shows, the runs behind its figures)."""
    if args.tiny:
        acts, lrs, steps = TINY_ACTS, (0.5,), 300
        shallow_extra = ",dataset=digits,batch=64"
        deep_extra = f",dataset=digits,depth={TINY_DEEP_DEPTH},width=32,steps=300,batch=64"
        deep_nets = {k: v for k, v in DEEP_NETS.items() if "Kaiming" not in k}
        no_diag = {"diag_every_steps": 0}  # the deep nets' diagnostics are not reported
    else:
        acts, lrs, steps = ACTIVATIONS, LRS, SHALLOW_STEPS
        shallow_extra, deep_extra, deep_nets, no_diag = "", f",depth={DEEP_DEPTH}", DEEP_NETS, {}
    shallow = {
        (act, lr): train_config(
            args, f"{act}_lr{lr:g}",
            f"{SHALLOW}:norm=none,act={act},lr={lr},steps={steps}{shallow_extra}")
        for act in acts for lr in lrs
    }
    deep = {label: train_config(args, f"deep_{act}_{init}",
                                f"{DEEP}:act={act},init={init},norm=none{deep_extra}", **no_diag)
            for label, (act, init) in deep_nets.items()}
    deep_init = {label: activation_stats_at_init(f"{DEEP}:act={act},init={init},norm=none"
                                                 f"{deep_extra}")
                 for label, (act, init) in deep_nets.items()}
    diag_steps = unit_fraction(shallow[(acts[0], lrs[0])], "preact_std")[0]
    picked = sorted({0, len(diag_steps) // 10, len(diag_steps) - 1})
    results: dict[str, Any] = {
        "setup": {"shallow_steps": steps, "dataset": "digits" if args.tiny else "mnist",
                  "deep_depth": TINY_DEEP_DEPTH if args.tiny else DEEP_DEPTH,
                  "deep_extra": deep_extra, "lrs": list(lrs),
                  "diag_steps": [int(diag_steps[i]) for i in picked]},
        "lr_chosen_on": "val_accuracy",
        "shallow": {}, "deep": {}, "deep_init": deep_init,
        "training_runs": record_runs(args, [*shallow.values(), *deep.values()]),
    }
    for act in acts:
        accs = {lr: final_metric(shallow[(act, lr)], "test_accuracy") for lr in lrs}
        # the lr is chosen on the validation split; the test accuracy is only reported
        best = choose_lr({lr: shallow[(act, lr)] for lr in lrs}, "val_accuracy")
        measure = _unit_measure(act)
        frac = unit_fraction(shallow[(act, best)], measure) if measure else ([], [])
        results["shallow"][act] = {
            "test_accuracy": {str(k): v for k, v in accs.items()}, "best_lr": best,
            "measure": measure,
            "fraction_first_tenth_last": [frac[1][i] if i < len(frac[1]) else None
                                          for i in picked]}
    for label, run in deep.items():
        loss = run.series("train_loss")[1]
        init_stats = deep_init[label]
        results["deep"][label] = {
            "init_std_first": init_stats["std"][0], "init_std_last": init_stats["std"][-1],
            "init_mean_last": init_stats["mean"][-1],
            "loss_first": float(loss[0]) if len(loss) else None,
            "loss_final": final_metric(run, "train_loss"),
            "test_accuracy": final_metric(run, "eval_accuracy")}
    return results, {"shallow": shallow, "deep": deep}


def write_report(report: Report, results: dict[str, Any], runs: dict[str, Any] | None) -> None:
    """The report from `results` alone; figures drawn from `runs` (None: --report-only, the
    committed figures are embedded)."""
    # results from before "setup" was stored are the full-size run's (the docstring's sizes)
    setup = results.get("setup", {"shallow_steps": SHALLOW_STEPS, "dataset": "mnist",
                                  "deep_depth": DEEP_DEPTH, "deep_extra": f",depth={DEEP_DEPTH}",
                                  "lrs": list(LRS), "diag_steps": [100, 1100, 10000]})
    chosen_on = results.get("lr_chosen_on", "test_accuracy")
    report.facts.update({
        "part 1": f"{SHALLOW}:norm=none,act=…,lr=… — 3 × 100, N(0, 0.1²) init, batch 60, "
                  f"plain SGD, {setup['shallow_steps']} steps, {setup['dataset']}",
        "part 2": f"{DEEP}:act=…,init=…,norm=none{setup['deep_extra']}",
    })
    if "training_runs" in results:
        report.facts["training runs"] = results["training_runs"]
    report.text(
        "**Claim** (SPEC §3 E5 and §1.3): the activations differ in how they train the same "
        "net; sigmoid and tanh saturate, ReLU-like units can die; a deep SELU MLP with LeCun "
        "init trains without any normalization layer (self-normalizing: mean 0 and variance "
        "1 are a stable fixed point of the layer map), while the same ReLU net does not.\n\n"
        "Saturated: |input| > 2.30 for tanh (|tanh| > 0.98) or > 3.89 for sigmoid (σ outside "
        "[0.02, 0.98]), fraction of all units × examples. Dead: a unit whose input is ≤ 0 "
        "for all 1,000 examples of the diagnostic batch (for the smooth or leaky variants: "
        "never leaves its negative regime). Both are averaged over the 3 hidden layers."
    )
    report.heading("Part 1: every activation in the BN paper's net (no BN)")
    lrs = setup["lrs"]
    on = "val" if chosen_on == "val_accuracy" else "TEST"
    rows = [[act, *(r["test_accuracy"][str(lr)] for lr in lrs), f"{r['best_lr']:g}",
             (r["measure"] or "—").replace("_fraction", ""), *r["fraction_first_tenth_last"]]
            for act, r in results["shallow"].items()]
    report.table(["activation", *(f"test acc, lr {lr:g}" for lr in lrs), f"best lr (on {on})",
                  "measure", *(f"at step {s} (best lr)" for s in setup["diag_steps"])], rows,
                 spec=".4f")
    if chosen_on != "val_accuracy":
        report.text("**These results chose each activation's lr on the test set** (they "
                    "predate choosing it on validation): the test accuracies at the chosen lr "
                    "are biased upward, and no ranking of the activations is claimed from them.")
    caption = ("Test accuracy, saturation and dead units over training, each activation at its "
               "better learning rate")
    if runs is None:
        report.existing_figure("activations.png", caption)
    else:
        report.figure(_activations_figure(results, runs["shallow"]), "activations.png",
                      caption)

    report.heading(f"Part 2: a {setup['deep_depth']}-layer net without normalization")
    keys = ["init_std_first", "init_std_last", "init_mean_last", "loss_first", "loss_final",
            "test_accuracy"]
    report.table(["net", "act std, layer 1 (init)", "act std, last layer (init)",
                  "act mean, last layer (init)", "train loss, steps 1–100", "final train loss",
                  "final test accuracy"],
                 [[label, *(d[k] for k in keys)] for label, d in results["deep"].items()],
                 spec=".4g")
    caption = ("Deep nets without normalization: activation std by layer at init (256 "
               "standardized training images) and the train loss")
    if runs is None:
        report.existing_figure("deep_selu.png", caption)
    else:
        fig, axes = new_figure(2)
        plot_curves(axes[0], {k: (list(range(1, len(v["std"]) + 1)), v["std"])
                              for k, v in results["deep_init"].items()},
                    xlabel="layer", ylabel="std of the activations at init", logy=True)
        plot_curves(axes[1], {k: r.series("train_loss") for k, r in runs["deep"].items()},
                    xlabel="step", ylabel="train loss", logy=True)
        report.figure(fig, "deep_selu.png", caption)
    report.heading("Result")
    report.text(_verdict(results))
    claims = verdicts(results)
    report.text(verdict_table(claims))
    report_results(report, results, claims)


def _activations_figure(results: dict[str, Any], shallow: dict):
    acts = list(results["shallow"])
    best = {act: shallow[(act, results["shallow"][act]["best_lr"])] for act in acts}
    fig, axes = new_figure(3)
    # one color and line style per activation, the same in every panel (12 > 10 colors)
    styles = {act: {"color": f"C{i % 10}", "linestyle": "-" if i < 10 else "--"}
              for i, act in enumerate(acts)}
    plot_curves(axes[0], {act: best[act].series("test_accuracy") for act in acts},
                xlabel="step", ylabel="test accuracy (best lr)", ylim=(0.8, 1.0), styles=styles)
    plot_curves(axes[1], {act: unit_fraction(best[act], "saturated_fraction")
                          for act in acts if act in SATURATING},
                xlabel="step", ylabel="saturated fraction (mean over layers)", styles=styles)
    plot_curves(axes[2], {act: unit_fraction(best[act], "dead_fraction")
                          for act in acts if _unit_measure(act) == "dead_fraction"},
                xlabel="step", ylabel="dead-unit fraction (mean over layers)", styles=styles)
    for ax in (axes[0], axes[2]):
        if ax.get_legend_handles_labels()[0]:  # tiny: no ReLU-like net in the dead-unit panel
            ax.legend(fontsize="x-small", ncols=2)
    return fig


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    """The deep-net claims, from the numbers in results.json (one seed each: preliminary)."""
    selu, relu = results["deep"]["SELU, LeCun"], results["deep"]["ReLU, LeCun"]
    fixed_point = 0.7 < selu["init_std_last"] < 1.3 and abs(selu["init_mean_last"]) < 0.2
    collapsed = relu["init_std_last"] < 0.01 * relu["init_std_first"]
    trains = selu["loss_final"] is not None and selu["loss_final"] < 1.0 and (
        relu["loss_final"] is None or relu["loss_final"] > 2 * selu["loss_final"])
    return [
        Verdict("deep SELU (LeCun) keeps mean 0, std 1 at init; ReLU's std collapses",
                f"last layer: SELU std {selu['init_std_last']:.3g}, mean "
                f"{selu['init_mean_last']:+.3g}; ReLU std {relu['init_std_first']:.3g} → "
                f"{relu['init_std_last']:.3g}",
                "reproduced" if fixed_point and collapsed else "not reproduced", n=1),
        Verdict("deep SELU trains without normalization, the same ReLU net does not",
                f"final train loss {fmt(selu['loss_final'], '.3f')} (SELU) vs "
                f"{fmt(relu['loss_final'], '.3f')} (ReLU)",
                "reproduced" if trains else "not reproduced", n=1),
        Verdict("ReLU-like units die", "never provoked (no high-lr or negative-bias arm)",
                "not tested"),
    ]


def _verdict(results: dict[str, Any]) -> str:
    shallow = results["shallow"]
    best = {act: r["test_accuracy"][str(r["best_lr"])] or 0.0 for act, r in shallow.items()}
    ranked = sorted(best, key=best.get, reverse=True)
    # no final value: the loss went non-finite (final_metric's None)
    diverged = sorted(f"{act} (lr {lr})" for act, r in shallow.items()
                      for lr, acc in r["test_accuracy"].items() if acc is None)
    fractions = {act: r["fraction_first_tenth_last"] for act, r in shallow.items()
                 if r["measure"]}
    saturating = [a for a in fractions if shallow[a]["measure"] == "saturated_fraction"]
    dying = [a for a in fractions if a not in saturating]
    max_dead = max((max(f for f in fractions[a] if f is not None) for a in dying), default=0)
    on = ("chosen on validation" if results.get("lr_chosen_on") == "val_accuracy"
          else "chosen on the test set (biased)")
    lines = [
        f"- Test accuracy after the run, at the lr {on}, one seed each: "
        + ", ".join(f"{a} {best[a]:.4f}" for a in ranked) + ".",
        "- Diverged (non-finite loss): " + (", ".join(diverged) or "none") + ".",
        "- Saturation (mean over layers, first / a tenth in / last diagnostic): "
        + "; ".join(f"{a}: " + " / ".join(f"{f:.3f}" for f in fractions[a])
                    for a in saturating) + ".",
        f"- Dead units: at most {max_dead:.3f} of the units of any ReLU-like net, at any "
        "diagnostic point; no run was set up to provoke them (high lr or negative bias init).",
    ]
    for label, d in results["deep"].items():
        state = "diverged" if d["loss_final"] is None else (
            f"final train loss {d['loss_final']:.3f}, test accuracy {d['test_accuracy']:.4f}")
        lines.append(f"- Deep {label}: activation std {d['init_std_first']:.3g} at layer 1 and "
                     f"{d['init_std_last']:.3g} at the last layer at init; {state}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
