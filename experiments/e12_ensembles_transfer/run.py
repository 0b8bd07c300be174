"""E12: ensembles and transfer learning with few labels — SPEC §3 E12, §1.9.

(a) Ensembles on Fashion-MNIST, all with configs/e12_ensembles_transfer.py (MLP 3 × 128 ReLU +
BN): 25 nets trained independently (seeds 0..24, T = 2,000 steps, cosine schedule) form 5
independent ensembles of K = 5 (seeds 5i..5i+4); each is compared with its own members (rule:
the ensemble beats its best member in accuracy and NLL, in every ensemble; margins with 95% CIs)
and with one net trained K·T steps (the ensemble's compute, 3 seeds, Welch). Snapshot ensembles
(Huang et al. 2017): one run of T steps with M = 5 cosine cycles, its 5 end-of-cycle snapshots
averaged, vs the cosine run of the same seed and T steps (5 seeds, Welch). Ensembles average the
members' probabilities (`normlab.train.ensemble_eval.evaluate_ensemble`); test accuracy and NLL
on the 10,000 test images.

(b) Transfer with few labels (configs/e12_conv_transfer.py, e12_transfer.py): a ResNet-8 at
width 0.5 trained on CIFAR-10 classes 0-4 (5 seeds, 500 steps), transferred with 100 and 1,000
labels to classes 5-9: frozen backbone / fine-tuned / scratch, 2 learning rates each, 200 steps;
lr and step chosen on val, test accuracy compared with Welch CIs. Not run with --tiny (the tiny
test checks its selection and verdicts on made-up numbers).

    python experiments/e12_ensembles_transfer/run.py          # 98 runs, ~45 min CPU
    python experiments/e12_ensembles_transfer/run.py --reuse  # reuse finished runs of the same code
    python experiments/e12_ensembles_transfer/run.py --report-only  # from results.json alone
    python experiments/e12_ensembles_transfer/run.py --tiny --out /tmp/e12   # digits, seconds
"""

from __future__ import annotations

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
    summarize,
    verdict_table,
    welch_test,
)
from normlab.reports.experiment import (
    load_results,
    parse_experiment_args,
    record_runs,
    report_results,
    sibling_module,
    train_config,
)
from normlab.train.ensemble_eval import evaluate_ensemble
from normlab.train.saved import snapshot_paths

CONFIG = "configs/e12_ensembles_transfer.py"
# ensembles: independent ensembles of K members each (seeds 0 .. K·ensembles - 1)
FULL = dict(dataset="fashion_mnist", steps=2_000, members=5, ensembles=5, long_seeds=3,
            snapshots=5, snap_seeds=(0, 1, 2, 3, 4))
# the fewest runs (8) that still give every verdict of FULL two samples (Welch needs 2 per
# side); a cycle must end a chunk of the config's 100 steps, hence 2 cycles of 100 steps
TINY = dict(dataset="digits", steps=200, members=2, ensembles=2, long_seeds=2, snapshots=2,
            snap_seeds=(0, 1))


# E12 (b): the conv transfer (configs/e12_conv_transfer.py), trained and judged there
TRANSFER = sibling_module(__file__, "e12_transfer")
# why (b) is skipped with --tiny: a conv source and 60 target runs on CIFAR-10 take ~45 min;
# tests/test_experiments_e12_ensembles_transfer.py checks its selection and verdicts instead
TRANSFER_NOT_RUN = ("--tiny: the conv transfer is not run (a ResNet-8 source and 60 target runs "
                    f"on CIFAR-10; {TRANSFER.SOURCE_COST})")


def _run(args, name: str, arg: str, **fields: Any) -> RunResult:
    """`CONFIG:arg` trained in args.runs/name (one device with --tiny: `train_config`)."""
    return train_config(args, name, f"{CONFIG}:{arg}", **fields)


def _pm(values: Sequence[float], scale: float = 1.0, spec: str = ".2f") -> str:
    return fmt_mean_ci(values, spec, scale=scale)


def ensembles(args, size: dict) -> tuple[dict, list[RunResult], dict]:
    """Part (a): independent and snapshot ensembles vs single nets; (numbers, runs, the runs
    behind the snapshot figure)."""
    base = f"dataset={size['dataset']},steps={size['steps']}"
    k, e = size["members"], size["ensembles"]
    members = [_run(args, f"single_s{s}", f"{base},seed={s}") for s in range(k * e)]
    longs = [_run(args, "single_long" if s == 0 else f"single_long_s{s}",
                  f"dataset={size['dataset']},steps={k * size['steps']},seed={s}")
             for s in range(size["long_seeds"])]
    snaps = {s: _run(args, f"snapshot_s{s}",
                     f"{base},seed={s},schedule=snapshot,snapshots={size['snapshots']}")
             for s in size["snap_seeds"]}
    by_size = [evaluate_ensemble([m.workdir for m in members[:j]], "test")
               for j in range(1, k + 1)]
    groups = [evaluate_ensemble([m.workdir for m in members[i * k:(i + 1) * k]], "test")
              for i in range(e)]
    full = by_size[-1]
    long_evals = [evaluate_ensemble([r.workdir], "test") for r in longs]
    snap_evals = {s: [evaluate_ensemble(snapshot_paths(r.workdir)[-j:], "test")
                      for j in range(1, size["snapshots"] + 1)] for s, r in snaps.items()}
    solo = evaluate_ensemble([m.workdir for m in members], "test")
    single_acc, single_nll = solo["member_accuracies"], solo["member_losses"]
    snap_ens = [e[-1] for e in snap_evals.values()]
    summary = {
        # all K·ensembles single nets; group i = seeds i·K .. i·K + K - 1
        "single_accuracy": single_acc, "single_nll": single_nll,
        "group_member_accuracy": [g["member_accuracies"] for g in groups],
        "group_member_nll": [g["member_losses"] for g in groups],
        "group_ensemble_accuracy": [g["accuracy"] for g in groups],
        "group_ensemble_nll": [g["loss"] for g in groups],
        "ensemble_accuracy": full["accuracy"], "ensemble_nll": full["loss"],
        "long_accuracies": [x["accuracy"] for x in long_evals],
        "long_nlls": [x["loss"] for x in long_evals],
        "long_accuracy": long_evals[0]["accuracy"], "long_nll": long_evals[0]["loss"],
        "by_size_accuracy": [e["accuracy"] for e in by_size],
        "by_size_nll": [e["loss"] for e in by_size],
        # the cosine run of the same seed and length as each snapshot run
        "snapshot_single_accuracy": [single_acc[s] for s in snaps],
        "snapshot_single_nll": [single_nll[s] for s in snaps],
        "snapshot_ensemble_accuracy": [e["accuracy"] for e in snap_ens],
        "snapshot_ensemble_nll": [e["loss"] for e in snap_ens],
        "snapshot_member_accuracy": [np.mean(e[-1]["member_accuracies"])
                                     for e in snap_evals.values()],
        "snapshot_member_nll": [np.mean(e[-1]["member_losses"]) for e in snap_evals.values()],
        "snapshot_last_accuracy": [e[-1]["member_accuracies"][-1] for e in snap_evals.values()],
        "snapshot_last_nll": [e[-1]["member_losses"][-1] for e in snap_evals.values()],
        # mean over the snapshot runs of the ensemble of their last k snapshots, k = 1..M
        "snapshot_by_size_accuracy": np.mean([[e["accuracy"] for e in ev]
                                              for ev in snap_evals.values()], axis=0).tolist(),
        "snapshot_by_size_nll": np.mean([[e["loss"] for e in ev]
                                         for ev in snap_evals.values()], axis=0).tolist(),
    }
    first = next(iter(snaps))
    return summary, [*members, *longs, *snaps.values()], {"snapshot": snaps[first],
                                                         "cosine": members[first]}


def _ensembles_section(report: Report, ens: dict, size: dict, runs: dict | None) -> None:
    k, t = size["members"], size["steps"]
    snaps = list(size["snap_seeds"])
    cycles = f"{size['snapshots']} cycles of {t // size['snapshots']:,} steps"
    rows = [[label, _pm(accs, 100), _pm(nlls, spec=".4f")] for label, accs, nlls in (
        (f"one net ({t:,} steps, cosine), {len(ens['single_accuracy'])} seeds",
         ens["single_accuracy"], ens["single_nll"]),
        (f"one net, {k * t:,} steps (the ensemble's compute)",
         ens["long_accuracies"], ens["long_nlls"]),
        (f"**ensemble of {k} nets** ({len(ens['group_ensemble_accuracy'])} independent "
         "ensembles)", ens["group_ensemble_accuracy"], ens["group_ensemble_nll"]),
        (f"cosine run of {t:,} steps, seeds {snaps}", ens["snapshot_single_accuracy"],
         ens["snapshot_single_nll"]),
        (f"snapshot members ({cycles}), mean", ens["snapshot_member_accuracy"],
         ens["snapshot_member_nll"]),
        ("last snapshot alone", ens["snapshot_last_accuracy"], ens["snapshot_last_nll"]),
        (f"**snapshot ensemble ({size['snapshots']} snapshots, one run)**",
         ens["snapshot_ensemble_accuracy"], ens["snapshot_ensemble_nll"]),
    )]
    report.heading("(a) Ensembles vs single nets")
    report.table(["model", "test accuracy (%)", "test NLL"], rows)
    report.text("± is the 95% CI of the mean over seeds (members for the first row). The "
                "ensembles average the members' probabilities; NLL = −mean log p̄(y|x).")
    caption = ("Test accuracy (left) and NLL (right) of an ensemble of k members: k "
               "independently trained nets, or the last k snapshots of one snapshot run (mean "
               "over its seeds); dashed: one net trained K× longer")
    fig, axes = new_figure(2)
    sizes = list(range(1, k + 1))
    snap_sizes = list(range(1, size["snapshots"] + 1))
    for ax, key, label, scale in ((axes[0], "accuracy", "test accuracy (%)", 100),
                                  (axes[1], "nll", "test NLL", 1)):
        plot_curves(ax, {
            "independent nets (first k seeds)": (
                sizes, [v * scale for v in ens[f"by_size_{key}"]]),
            "snapshots (last k of one run)": (
                snap_sizes, [v * scale for v in ens[f"snapshot_by_size_{key}"]]),
            f"one net, {k * t:,} steps": (sizes, [ens[f"long_{key}"] * scale] * k),
        }, xlabel="ensemble size k", ylabel=label,
            styles={f"one net, {k * t:,} steps": {"linestyle": "--", "color": "gray"}})
        ax.set_xticks(sizes)
    report.figure(fig, "ensembles.png", caption)
    caption = ("The snapshot run and the cosine run of the same length (one seed): learning "
               "rate and test accuracy (snapshots are taken at the end of each cycle, where the "
               "learning rate is ~0)")
    if runs is None:
        report.existing_figure("snapshot_run.png", caption)
        return
    snap, cosine = runs["snapshot"], runs["cosine"]
    fig, axes = new_figure(2)
    plot_curves(axes[0], {"snapshot (cyclic cosine)": snap.series("lr"),
                          "cosine": cosine.series("lr")}, xlabel="step", ylabel="learning rate")
    plot_curves(axes[1], {"snapshot run": snap.series("test_accuracy"),
                          "cosine run": cosine.series("test_accuracy")},
                xlabel="step", ylabel="test accuracy", ylim=(0.7, 1.0))
    report.figure(fig, "snapshot_run.png", caption)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs E12 (or, with --report-only, reads its results.json) and writes the report; returns
    the results."""
    args = parse_experiment_args(__doc__, __file__, argv)
    report = Report("E12: ensembles and transfer learning", args.out, command=args.command)
    runs = None
    if args.report_only:
        results = load_results(args.out)
    else:
        size = TINY if args.tiny else FULL
        ens, ens_runs, runs = ensembles(args, size)
        transfer, transfer_runs = (None, []) if args.tiny else TRANSFER.train_transfer(
            args, TRANSFER.FULL)
        results = {"tiny": args.tiny, "ensembles": ens, "transfer": transfer,
                   "training_runs": record_runs(args, [*ens_runs, *transfer_runs])}
    write_report(report, results, runs)
    return results


def write_report(report: Report, results: dict[str, Any], runs: dict | None) -> None:
    """The report from `results` alone; the snapshot-run figure drawn from `runs` (None:
    --report-only, the committed figure is embedded)."""
    tiny = results["tiny"]
    size = TINY if tiny else FULL
    report.text(
        "**Claims** (SPEC §1.9, §3 E12): (a) an ensemble of K independently trained nets beats a "
        "single net in test accuracy and NLL; a snapshot ensemble (one run with M cosine cycles) "
        "beats a single run of the same length. (b) With few target labels, a backbone "
        "pretrained on a related task (frozen under a new head, or fine-tuned) beats training "
        "from scratch; with more labels, fine-tuning beats freezing.\n\n"
        "**Setup** (a): configs/e12_ensembles_transfer.py — MLP 3 × 128 ReLU + BatchNorm, Kaiming "
        "init, batch 128, Nesterov momentum 0.9, L2 5e-4, pixels in [0, 1]. The learning rate "
        "was fixed in advance, not tuned: 0.1."
    )
    _ensembles_section(report, results["ensembles"], size, runs)
    TRANSFER.transfer_section(report, results.get("transfer"), _not_run(results))
    report.facts.update({
        "data": "digits (tiny)" if tiny else "Fashion-MNIST (60,000 train / 10,000 test)",
        "config": CONFIG,
    })
    report.facts["training runs"] = results["training_runs"]
    report.heading("Result")
    report.text(_verdict(results["ensembles"], size))
    claims = verdicts(results)
    report.text(verdict_table(claims))
    report_results(report, results, claims)


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    """The claims, from the per-seed numbers in results.json."""
    ens = results["ensembles"]
    groups = list(zip(ens["group_ensemble_accuracy"], ens["group_ensemble_nll"],
                      ens["group_member_accuracy"], ens["group_member_nll"], strict=True))
    acc_margin = [a - max(m) for a, _, m, _ in groups]
    nll_margin = [min(m) - n for _, n, _, m in groups]
    wins = sum(a > 0 and n > 0 for a, n in zip(acc_margin, nll_margin, strict=True))
    k = len(groups[0][2])
    out = [Verdict(f"an ensemble of {k} nets beats its best member (accuracy and NLL), in every "
                   "independent ensemble",
                   f"{wins} of {len(groups)} ensembles; margin over the best member "
                   f"{_pm(acc_margin, 100)} points, NLL {_pm(nll_margin, spec='.4f')} lower",
                   "reproduced" if wins == len(groups) else "not reproduced", n=len(groups))]
    long_acc, long_nll = ens["long_accuracies"], ens["long_nlls"]
    ens_acc, ens_nll = [g[0] for g in groups], [g[1] for g in groups]
    if len(long_acc) >= 2 and len(ens_acc) >= 2:
        pa, pn = welch_test(ens_acc, long_acc).p, welch_test(ens_nll, long_nll).p
        better = (np.mean(ens_acc) > np.mean(long_acc) and np.mean(ens_nll) < np.mean(long_nll)
                  and pa < 0.05 and pn < 0.05)
        out.append(Verdict(
            f"an ensemble of {k} nets beats one net trained {k}× longer (accuracy and NLL)",
            f"{_pm(ens_acc, 100)}% / {_pm(ens_nll, spec='.4f')} vs {_pm(long_acc, 100)}% / "
            f"{_pm(long_nll, spec='.4f')} (n = {len(ens_acc)} ensembles, {len(long_acc)} long "
            f"nets), Welch p {pa:.2g} / {pn:.2g}",
            "reproduced" if better else "not reproduced", n=min(len(ens_acc), len(long_acc))))
    snap_n = len(ens["snapshot_ensemble_accuracy"])
    for key, name, higher in (("accuracy", "accuracy", True), ("nll", "NLL", False)):
        snap, single = ens[f"snapshot_ensemble_{key}"], ens[f"snapshot_single_{key}"]
        p = welch_test(snap, single).p if snap_n >= 2 else None
        better = (np.mean(snap) > np.mean(single)) == higher and (p is None or p < 0.05)
        out.append(Verdict(
            f"a snapshot ensemble beats one run of the same length ({name})",
            " vs ".join(_pm(v, 100) if higher else _pm(v, spec=".4f") for v in (snap, single))
            + (f", Welch p {p:.2g}" if p is not None else ""),
            "reproduced" if better else "not reproduced", n=snap_n))
    return out + TRANSFER.transfer_verdicts(results.get("transfer"), _not_run(results))


def _not_run(results: dict[str, Any]) -> str:
    """Why the transfer part is missing: --tiny, or results from before it was run."""
    if results["tiny"]:
        return TRANSFER_NOT_RUN
    return ("results from before configs/e12_conv_transfer.py was run here: "
            f"{TRANSFER.SOURCE_COST}")


def _verdict(ens: dict, size: dict) -> str:
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
        + ("better than every member in both." if beats_all else
           "not better than every member."),
        f"- **Snapshot ensemble**: {100 * snap['snapshot_ensemble_accuracy']:.2f}% / NLL "
        f"{snap['snapshot_ensemble_nll']:.4f} vs the cosine run of the same length "
        f"{100 * snap['snapshot_single_accuracy']:.2f}% / {snap['snapshot_single_nll']:.4f} "
        f"(means over seeds): accuracy {snap_acc_gain:+.2f} points, NLL "
        + ("lower" if snap_nll_better else "not lower")
        + f"; its snapshots alone average NLL {snap['snapshot_member_nll']:.4f}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
