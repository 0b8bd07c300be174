"""E12: ensembles and transfer learning with few labels — SPEC §3 E12, §1.9.

(a) Ensembles on Fashion-MNIST, all with configs/e12_ensembles_transfer.py (MLP 3 × 128 ReLU +
BN): K = 5 nets trained independently (seeds 0..4, T = 10,000 steps, cosine schedule) vs each
of them alone and vs one net trained K·T steps (the ensemble's compute); and snapshot ensembles
(Huang et al. 2017): one run of T steps with M = 5 cosine cycles, its 5 end-of-cycle snapshots
averaged, vs the single cosine run of the same T steps (3 seeds). Ensembles average the
members' probabilities (`normlab.train.ensemble_eval.evaluate_ensemble`); test accuracy and
NLL on the 10,000 test images.

(b) Transfer with few labels, both directions: a source net trained on all of MNIST (or
Fashion-MNIST: (a)'s seed-0 net), then a target net trained on the first n ∈ {100, 500, 1000,
5000} training images of the other data set for 1,000 steps: from scratch (lr 0.1), with the
source's backbone frozen and a new head (linear probe, lr 0.1), or fully fine-tuned from the
source (lr 0.01); 3 seeds each. Test accuracy on the target's 10,000 test images.

    python experiments/e12_ensembles_transfer/run.py          # 85 runs, ~15 min CPU
    python experiments/e12_ensembles_transfer/run.py --reuse  # rewrite the report from the runs
    python experiments/e12_ensembles_transfer/run.py --tiny --out /tmp/e12   # digits, ~1 min
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from normlab.reports import (
    Report,
    RunResult,
    describe_runs,
    fmt_mean_ci,
    new_figure,
    plot_curves,
    summarize,
)
from normlab.reports.experiment import parse_experiment_args, train_config
from normlab.train.ensemble_eval import evaluate_ensemble
from normlab.train.saved import snapshot_paths

CONFIG = "configs/e12_ensembles_transfer.py"
METHODS = {  # label: config arguments added to the target run
    "scratch": "lr=0.1",
    "frozen backbone": "lr=0.1,freeze,source={source}",
    "fine-tuned": "lr=0.01,source={source}",
}
FULL = dict(dataset="fashion_mnist", steps=10_000, members=5, snapshots=5, snap_seeds=(0, 1, 2),
            labels=(100, 500, 1000, 5000), target_steps=1000, seeds=(0, 1, 2))
TINY = dict(dataset="digits", steps=300, members=3, snapshots=3, snap_seeds=(0,),
            labels=(32,), target_steps=300, seeds=(0,))


def _run(args, name: str, arg: str, **fields: Any) -> RunResult:
    """`CONFIG:arg` trained in args.runs/name (one device with --tiny: `train_config`)."""
    return train_config(args, name, f"{CONFIG}:{arg}", **fields)


def _pm(values: Sequence[float], scale: float = 1.0, spec: str = ".2f") -> str:
    return fmt_mean_ci(values, spec, scale=scale)


def ensembles(args, size: dict, report: Report) -> tuple[dict, list[RunResult]]:
    """Part (a): independent and snapshot ensembles vs single nets."""
    base = f"dataset={size['dataset']},steps={size['steps']}"
    k, t = size["members"], size["steps"]
    members = [_run(args, f"single_s{s}", f"{base},seed={s}") for s in range(k)]
    long = _run(args, "single_long", f"dataset={size['dataset']},steps={k * t}")
    snaps = {s: _run(args, f"snapshot_s{s}",
                     f"{base},seed={s},schedule=snapshot,snapshots={size['snapshots']}")
             for s in size["snap_seeds"]}
    by_size = [evaluate_ensemble([m.workdir for m in members[:j]], "test")
               for j in range(1, k + 1)]
    full = by_size[-1]
    long_eval = evaluate_ensemble([long.workdir], "test")
    snap_evals = {s: [evaluate_ensemble(snapshot_paths(r.workdir)[-j:], "test")
                      for j in range(1, size["snapshots"] + 1)] for s, r in snaps.items()}
    single_acc, single_nll = full["member_accuracies"], full["member_losses"]
    snap_single = [single_acc[s] for s in snaps]  # the cosine run of the same seed and length
    snap_single_nll = [single_nll[s] for s in snaps]
    snap_ens = [e[-1] for e in snap_evals.values()]
    snap_members = [np.mean(e[-1]["member_accuracies"]) for e in snap_evals.values()]
    snap_members_nll = [np.mean(e[-1]["member_losses"]) for e in snap_evals.values()]
    last_acc = [e[-1]["member_accuracies"][-1] for e in snap_evals.values()]
    last_nll = [e[-1]["member_losses"][-1] for e in snap_evals.values()]
    cycles = f"{size['snapshots']} cycles of {t // size['snapshots']:,} steps"
    rows = [[label, _pm(accs, 100), _pm(nlls, spec=".4f")] for label, accs, nlls in (
        (f"one net ({t:,} steps, cosine), {k} seeds", single_acc, single_nll),
        (f"one net, {k * t:,} steps (the ensemble's compute)", [long_eval["accuracy"]],
         [long_eval["loss"]]),
        (f"**ensemble of the {k} nets**", [full["accuracy"]], [full["loss"]]),
        (f"cosine run of {t:,} steps, seeds {list(snaps)}", snap_single, snap_single_nll),
        (f"snapshot members ({cycles}), mean", snap_members, snap_members_nll),
        ("last snapshot alone", last_acc, last_nll),
        (f"**snapshot ensemble ({size['snapshots']} snapshots, one run)**",
         [e["accuracy"] for e in snap_ens], [e["loss"] for e in snap_ens]),
    )]
    report.heading("(a) Ensembles vs single nets")
    report.table(["model", "test accuracy (%)", "test NLL"], rows)
    report.text("± is the 95% CI of the mean over seeds (members for the first row). The "
                "ensembles average the members' probabilities; NLL = −mean log p̄(y|x).")
    fig, axes = new_figure(2)
    sizes = list(range(1, k + 1))
    snap_sizes = list(range(1, size["snapshots"] + 1))
    for ax, key, label, scale in ((axes[0], "accuracy", "test accuracy (%)", 100),
                                  (axes[1], "loss", "test NLL", 1)):
        snap_curve = np.mean([[e[key] for e in ev] for ev in snap_evals.values()], axis=0)
        plot_curves(ax, {
            "independent nets (first k seeds)": (sizes, [e[key] * scale for e in by_size]),
            "snapshots (last k of one run)": (snap_sizes, snap_curve * scale),
            f"one net, {k * t:,} steps": (sizes, [long_eval[key] * scale] * k),
        }, xlabel="ensemble size k", ylabel=label,
            styles={f"one net, {k * t:,} steps": {"linestyle": "--", "color": "gray"}})
        ax.set_xticks(sizes)
    report.figure(fig, "ensembles.png", "Test accuracy (left) and NLL (right) of an ensemble "
                  "of k members: k independently trained nets, or the last k snapshots of one "
                  "snapshot run (mean over its seeds); dashed: one net trained K× longer")
    first_snap, first_single = next(iter(snaps.values())), members[next(iter(snaps))]
    fig, axes = new_figure(2)
    plot_curves(axes[0], {"snapshot (cyclic cosine)": first_snap.series("lr"),
                          "cosine": first_single.series("lr")}, xlabel="step",
                ylabel="learning rate")
    plot_curves(axes[1], {"snapshot run": first_snap.series("test_accuracy"),
                          "cosine run": first_single.series("test_accuracy")},
                xlabel="step", ylabel="test accuracy", ylim=(0.7, 1.0))
    report.figure(fig, "snapshot_run.png", "The snapshot run and the cosine run of the same "
                  "length (one seed): learning rate and test accuracy (snapshots are taken at "
                  "the end of each cycle, where the learning rate is ~0)")
    summary = {
        "single_accuracy": single_acc, "single_nll": single_nll,
        "ensemble_accuracy": full["accuracy"], "ensemble_nll": full["loss"],
        "long_accuracy": long_eval["accuracy"], "long_nll": long_eval["loss"],
        "by_size_accuracy": [e["accuracy"] for e in by_size],
        "by_size_nll": [e["loss"] for e in by_size],
        "snapshot_single_accuracy": snap_single, "snapshot_single_nll": snap_single_nll,
        "snapshot_ensemble_accuracy": [e["accuracy"] for e in snap_ens],
        "snapshot_ensemble_nll": [e["loss"] for e in snap_ens],
        "snapshot_member_accuracy": snap_members, "snapshot_member_nll": snap_members_nll,
    }
    return summary, [*members, long, *snaps.values()]


def transfer(
    args, size: dict, report: Report, fmnist_source: RunResult
) -> tuple[dict, list[RunResult]]:
    """Part (b): frozen backbone and fine-tuning vs scratch, with few target labels."""
    if args.tiny:  # one data set: a source on digits train[500:], targets on train[:n]
        source = _run(args, "source_digits", f"dataset=digits,steps={size['steps']}",
                      train_split="train[500:]")
        directions = {"digits[500:] → digits[:n]": (source, "digits")}
    else:
        mnist = _run(args, "source_mnist", f"dataset=mnist,steps={size['steps']}")
        directions = {"MNIST → Fashion-MNIST": (mnist, "fashion_mnist"),
                      "Fashion-MNIST → MNIST": (fmnist_source, "mnist")}
    runs: list[RunResult] = [s for s, _ in directions.values()]
    summary: dict[str, Any] = {}
    fig, axes = new_figure(len(directions))
    for ax, (label, (source, target)) in zip(axes, directions.items(), strict=True):
        report.heading(f"(b) Transfer {label}", level=3)
        table: dict[str, dict[int, list[float]]] = {m: {} for m in METHODS}
        for n in size["labels"]:
            for method, spec in METHODS.items():
                for seed in size["seeds"]:
                    name = f"{target}_{method.split()[0]}_n{n}_s{seed}"
                    run = _run(args, name, f"dataset={target},labels={n},seed={seed},"
                               f"steps={size['target_steps']}," + spec.format(
                                   source=source.workdir))
                    runs.append(run)
                    table[method].setdefault(n, []).append(run.final("test_accuracy"))
        report.table(["target labels n", *METHODS],
                     [[f"{n:,}", *(_pm(table[m][n], 100) for m in METHODS)]
                      for n in size["labels"]])
        report.text(f"Test accuracy (%) on the target's test set, mean ± 95% CI over seeds "
                    f"{list(size['seeds'])}. The source net reaches "
                    f"{100 * source.final('test_accuracy'):.2f}% on its own test set.")
        for method in METHODS:
            s = [summarize(table[method][n]) for n in size["labels"]]
            ax.errorbar(size["labels"], [100 * x.mean for x in s],
                        yerr=[100 * np.nan_to_num(x.ci) for x in s], marker="o", capsize=3,
                        label=method)
        ax.set_xscale("log")
        ax.set(xlabel="target training labels n", ylabel="target test accuracy (%)", title=label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        summary[label] = {m: {str(n): v for n, v in table[m].items()} for m in METHODS}
    report.figure(fig, "transfer.png", "Target test accuracy vs the number of target training "
                  "labels: from scratch, frozen source backbone + new head, and full fine-tuning")
    return summary, runs


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs E12 and writes the report; returns the key numbers."""
    args = parse_experiment_args(__doc__, __file__, argv)
    size = TINY if args.tiny else FULL
    report = Report("E12: ensembles and transfer learning", args.out, command=args.command)
    report.text(
        "**Claims** (SPEC §1.9, §3 E12): (a) an ensemble of K independently trained nets beats a "
        "single net in test accuracy and NLL; a snapshot ensemble (one run with M cosine cycles) "
        "beats a single run of the same length. (b) With few target labels, a backbone "
        "transferred from another data set (frozen, new head) beats training from scratch.\n\n"
        "**Setup**: configs/e12_ensembles_transfer.py — MLP 3 × 128 ReLU + BatchNorm, Kaiming "
        "init, Nesterov momentum 0.9, L2 5e-4, pixels in [0, 1]. Learning rates were fixed in "
        "advance, not tuned: 0.1 everywhere, 0.01 for fine-tuning. A frozen backbone runs in "
        "inference mode (running BN statistics of the source data, `init_from.freeze_backbone`)."
    )
    ens, ens_runs = ensembles(args, size, report)
    trans, trans_runs = transfer(args, size, report, ens_runs[0])
    report.facts.update({
        "data": "digits (tiny)" if args.tiny else
                "Fashion-MNIST and MNIST (60,000 train / 10,000 test each; few-label runs use "
                "the first n training images)",
        "config": CONFIG,
        # (a)'s seed-0 net is also (b)'s Fashion-MNIST source: count it once
        "training runs": describe_runs({r.workdir: r for r in [*ens_runs, *trans_runs]}.values()),
    })
    report.heading("Result")
    report.text(_verdict(ens, trans, size))
    summary = {"ensembles": ens, "transfer": trans}
    report.save_json("results.json", summary)
    print(f"wrote {report.write()}")
    return summary


def _verdict(ens: dict, trans: dict, size: dict) -> str:
    k = size["members"]
    acc, nll = [summarize(ens[k]).mean for k in ("single_accuracy", "single_nll")]
    beats_all = (ens["ensemble_accuracy"] > max(ens["single_accuracy"])
                 and ens["ensemble_nll"] < min(ens["single_nll"]))
    snap = {key: float(np.mean(ens[key])) for key in (
        "snapshot_ensemble_accuracy", "snapshot_ensemble_nll", "snapshot_single_accuracy",
        "snapshot_single_nll", "snapshot_member_nll")}
    snap_acc_gain = 100 * (snap["snapshot_ensemble_accuracy"] - snap["snapshot_single_accuracy"])
    snap_nll_better = snap["snapshot_ensemble_nll"] < snap["snapshot_single_nll"]
    lines = [
        f"- **Ensemble of {k}**: {100 * ens['ensemble_accuracy']:.2f}% / NLL "
        f"{ens['ensemble_nll']:.4f} vs its members {100 * acc:.2f}% / {nll:.4f} (mean) "
        f"and one net trained {k}× longer {100 * ens['long_accuracy']:.2f}% / "
        f"{ens['long_nll']:.4f}: "
        + ("better than every member in both: reproduced." if beats_all else
           "not better than every member: not reproduced."),
        f"- **Snapshot ensemble**: {100 * snap['snapshot_ensemble_accuracy']:.2f}% / NLL "
        f"{snap['snapshot_ensemble_nll']:.4f} vs the cosine run of the same length "
        f"{100 * snap['snapshot_single_accuracy']:.2f}% / {snap['snapshot_single_nll']:.4f} "
        f"(means over seeds): accuracy {snap_acc_gain:+.2f} points ("
        + ("reproduced" if snap_acc_gain > 0 else "not reproduced")
        + "), NLL " + ("lower (reproduced)" if snap_nll_better else "not lower (not reproduced)")
        + f"; its snapshots alone average NLL {snap['snapshot_member_nll']:.4f}.",
    ]
    for label, table in trans.items():
        gains, wins = [], 0
        for n in size["labels"]:
            mean = {m: 100 * np.mean(table[m][str(n)]) for m in METHODS}
            wins += mean["frozen backbone"] > mean["scratch"]
            gains.append(f"n={n:,}: frozen {mean['frozen backbone'] - mean['scratch']:+.1f}, "
                         f"fine-tuned {mean['fine-tuned'] - mean['scratch']:+.1f}")
        lines.append(
            f"- **Transfer {label}**: the frozen backbone beats scratch at {wins} of "
            f"{len(size['labels'])} label counts ("
            + ("reproduced" if wins == len(size["labels"]) else "not reproduced")
            + "); accuracy points vs scratch: " + "; ".join(gains) + "."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
