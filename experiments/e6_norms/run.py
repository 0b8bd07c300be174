"""E6: normalization comparison (the Proxy Norm paper, Labatie et al. 2021) — SPEC §3 E6.

(a) Power plots (experiments/e6_norms/e6_power.py): a random 50-layer conv net (ReLU, 3×3,
circular padding, γ ~ N(1, 0.2²), β ~ N(0, 0.2²)) with BN, IN, LN, GN, LN+PN, GN+PN, LN+WS;
the channel-wise squared-mean share and the variability of instance statistics (SPEC §1.10)
by depth, of the conv output entering each norm and of the pre-activation.
(b) Training (configs/e6_norms.py): a pre-activation ResNet on CIFAR-10 with every norm at a
large and a small batch, several seeds; validation (5,000 held-out training images) and test
(the 1,000 official test images available) accuracy, mean ± std over seeds; then the same power
measures on the trained nets.

    python experiments/e6_norms/run.py            # reduced size for a 2-core CPU, ~1 h
    python experiments/e6_norms/run.py --reuse    # reuse finished runs of the same code
    python experiments/e6_norms/run.py --report-only  # from results.json alone
    python experiments/e6_norms/run.py --tiny --out /tmp/e6     # (a) only, 4 norms, seconds

Full size (a GPU job): the same script with FULL_TRAINING below set to
model=resnet20,width=1,epochs=30,train_examples=45000 and three seeds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from normlab.config import load_config
from normlab.data.datasets import load_arrays
from normlab.reports import (
    Report,
    RunResult,
    Verdict,
    final_metric,
    fmt,
    fmt_mean_ci,
    new_figure,
    summarize,
    verdict_table,
)
from normlab.reports.experiment import (
    load_results,
    parse_experiment_args,
    record_runs,
    report_results,
    sibling_module,
    train_config,
)
from normlab.reports.runs import code_digest
from normlab.train import inputs
from normlab.train.diagnostics import collect_preacts, power_decomposition
from normlab.train.saved import load_saved

e6_power = sibling_module(__file__, "e6_power")  # the random nets' power measures

CONFIG = "configs/e6_norms.py"
# label: config overrides; GN (and EvoNorm-S0) use 8 groups (configs/e6_norms.py).
TRAINED = {
    "none": "norm=none",
    "BN": "norm=batch",
    "BN+renorm": "norm=batch_renorm",
    "IN": "norm=instance",
    "LN": "norm=layer",
    "GN": "norm=group",
    "LN+PN": "norm=layer+proxy",
    "GN+PN": "norm=group+proxy",
    "FRN": "norm=frn",
    "EvoNorm-S0": "norm=evonorm_s0",
    "WS+GN": "norm=group,conv=weight_std",
}
FULL_TRAINING = "model=resnet8,width=0.5,epochs=2,train_examples=5000"
BATCHES = (128, 8)
SEEDS = (0, 1)
POWER = dict(depth=50, width=64, images=64, seeds=[0, 1])
TINY_POWER = dict(depth=8, width=16, images=16, seeds=[0])
# --tiny: part (a) for the norms its verdicts compare, and no training (a ResNet's training
# compile alone is the test suite's budget for an experiment)
TINY_NETS = ("BN", "IN", "LN", "LN+PN")


def standardized_images(dataset: str, n: int) -> np.ndarray:
    """The first n training images, per-channel standardized over those images."""
    x, _ = load_arrays(dataset, "train")
    x = x[:n].astype(np.float64)
    return ((x - x.mean(axis=(0, 1, 2))) / x.std(axis=(0, 1, 2))).astype(np.float32)


# ------------------------------------------------------------------------------- (a) power


def power_results(args, dataset: str) -> dict[str, Any]:
    """Part (a)'s measures of the random nets, by norm (mean over the size's seeds)."""
    size = TINY_POWER if args.tiny else POWER
    cache = args.runs / "power.json"  # --reuse reads it: the random nets take minutes on CPU
    # the measures depend on the training code and on e6_power.py, beside this script
    code = code_digest() + hashlib.sha256(Path(e6_power.__file__).read_bytes()).hexdigest()[:16]
    if args.reuse and cache.is_file():
        cached = json.loads(cache.read_text())
        if cached["size"] == size and (args.reuse_any_revision or cached.get("code") == code):
            return cached["results"]
    x = standardized_images(dataset, size["images"])
    nets = TINY_NETS if args.tiny else list(e6_power.NETS)
    results = e6_power.mean_over_seeds(x, nets, depth=size["depth"], width=size["width"],
                                       seeds=size["seeds"])
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"size": size, "code": code, "results": results}))
    return results


def power_section(report: Report, results: dict[str, Any], size: dict, dataset: str) -> None:
    depth = size["depth"]
    report.heading("(a) Power plots: a random conv net at init")
    report.text(
        f"{depth} × (norm → ReLU → conv 3×3, {size['width']} channels), circular padding, no "
        f"biases, Kaiming kernels, γ ~ N(1, 0.2²), β ~ N(0, 0.2²); {size['images']} "
        f"{dataset} training images (per-channel standardized), BN in train mode (batch "
        f"statistics); mean over {len(size['seeds'])} random nets. GN: groups of 8 channels. "
        "Shares are fractions of the power E[y²]: `sq-mean` = E_c[μ_c²]/E[y²] (channel-wise "
        "denormalization), `inst-mean var` = E_c[Var_n(μ_{n,c})]/E[y²] and `inst-std var` = "
        "E_c[Var_n(σ_{n,c})]/E[y²] (variability of instance statistics across examples)."
    )
    layers = sorted({1, max(1, depth // 5), depth // 2, depth})
    for where, title in (("norm_input", "conv output x^l entering the norm"),
                         ("preact", "pre-activation y^l (the ReLU's input)")):
        rows = []
        for label, r in results.items():
            rows.append([label] + [fmt(r[where][m][layer - 1], ".3g")
                                   for m in e6_power.MEASURES for layer in layers])
        header = ["net"] + [f"{short} @{layer}" for short in ("sq-mean", "inst-mean var",
                                                               "inst-std var")
                            for layer in layers]
        report.text(f"**{title}**, at layers {', '.join(map(str, layers))}:")
        report.table(header, rows)
    fig, axes = new_figure(3, 2)
    for row, where in enumerate(("norm_input", "preact")):
        for col, measure in enumerate(e6_power.MEASURES):
            ax = axes[3 * row + col]
            for label, r in results.items():
                ax.plot(range(1, depth + 1), r[where][measure], label=label,
                        linestyle="--" if "PN" in label else "-")
            ax.set_title(f"{measure} of {'x^l (norm input)' if row == 0 else 'y^l (pre-act)'}",
                         fontsize=9)
            ax.set_xlabel("layer")
            ax.set_yscale("log" if measure != "sq_mean_share" else "linear")
    axes[0].legend(fontsize=8)
    report.figure(fig, "power_by_depth.png",
                  "Power decomposition by depth in the random conv net (top: the conv output "
                  "entering each norm; bottom: the pre-activation)")


# ---------------------------------------------------------------------------- (b) training


def _runs(args) -> dict[tuple[str, int, int], RunResult]:
    out = {}
    for seed in SEEDS:
        for batch in BATCHES:
            for label, overrides in TRAINED.items():
                name = f"{label}_b{batch}_s{seed}".replace("+", "_")
                spec = f"{CONFIG}:{overrides},{FULL_TRAINING},batch={batch},seed={seed}"
                steps = load_config(spec).total_steps or 1
                # evaluation only at the end (the loop always evaluates the last step): on
                # this CPU a mid-run pass over 6,000 images costs a third of the training
                out[label, batch, seed] = train_config(args, name, spec,
                                                       log_every_steps=max(1, steps // 40))
    return out


def trained_power(run: RunResult, n: int) -> dict[str, float]:
    """Power measures of a trained net's pre-activations on n training images (eval mode):
    mean over layers and the last layer."""
    saved = load_saved(run.workdir)
    images, _ = load_arrays(saved.config.dataset, saved.config.train_split)
    x = inputs.transform(saved.preprocessor, inputs.to_float(images[:n], saved.config.pad_to))
    variables = {"params": saved.state.params, "batch_stats": saved.state.batch_stats}
    _, state = saved.model.apply(variables, jax.numpy.asarray(x), train=False,
                                 mutable=["intermediates"])
    terms = [power_decomposition(y) for y in collect_preacts(state).values()
             if y.ndim == 4]
    out = {}
    for m in ("sq_mean_share", "instance_mean_var_share", "instance_std_var_norm"):
        values = np.array([float(t[m]) for t in terms])
        out[f"{m} mean"], out[f"{m} last"] = float(values.mean()), float(values[-1])
    return out


def training_results(args) -> tuple[dict[str, Any], dict]:
    """Part (b)'s runs: (per norm and batch the seeds' val/test accuracies and the trained
    nets' power measures, the runs)."""
    runs = _runs(args)
    seeds = sorted({s for _, _, s in runs})
    labels = list(dict.fromkeys(label for label, _, _ in runs))
    table = {label: {str(batch): {
        "val": [final_metric(runs[label, batch, s], "eval_accuracy") for s in seeds],
        "test": [final_metric(runs[label, batch, s], "test_accuracy") for s in seeds]}
        for batch in BATCHES} for label in labels}
    n = 256
    power = {label: trained_power(runs[label, BATCHES[0], seeds[0]], n) for label in labels
             if label != "none" and not runs[label, BATCHES[0], seeds[0]].diverged}
    return {"seeds": seeds, "table": table, "trained_power": power, "power_images": n}, runs


def training_section(report: Report, training: dict[str, Any], runs: dict | None) -> None:
    table = training["table"]
    labels = list(table)
    # results from before the seeds were stored: SEEDS, one value each
    seeds = training.get("seeds", list(SEEDS))
    report.heading("(b) Training: pre-activation ResNet, every norm, large and small batch")
    report.text(
        f"`{CONFIG}:{FULL_TRAINING}` with batch ∈ {{{', '.join(map(str, BATCHES))}}} "
        f"(lr = 0.1·batch/128, the same number of epochs, so the small batch takes "
        f"{BATCHES[0] // BATCHES[1]}× more steps), seeds {list(seeds)}. Validation: 5,000 "
        "held-out training images; test: the first 1,000 of the 10,000 official test images "
        "(partial: ±1.5% standard error at 50% accuracy). This is a reduced size for a 2-core "
        "CPU; the paper's claims are about fully trained nets (see the module docstring of "
        "run.py for the full-size command)."
    )
    rows = [[label, *(fmt_mean_ci(table[label][str(b)][kind], ".4f") for b in BATCHES
                      for kind in ("val", "test"))] for label in labels]
    header = ["norm"] + [f"{kind}, batch {b}" for b in BATCHES for kind in ("val acc", "test acc")]
    report.table(header, rows)
    report.text("Mean ± half-width of the 95% Student-t CI over seeds; \"n=k of m\": m − k runs "
                "hit a non-finite loss and are left out.")
    caption = "Train loss by norm at the large and the small batch"
    if runs is None:
        report.existing_figure("training_loss.png", caption)
    else:
        fig, axes = new_figure(2)
        for ax, batch in zip(axes, BATCHES, strict=True):
            for label in labels:
                steps, loss = runs[label, batch, seeds[0]].series("train_loss")
                if len(steps):
                    ax.plot(steps, loss, label=label, linestyle="--" if "PN" in label else "-")
            ax.set_title(f"train loss, batch {batch} (seed {seeds[0]})")
            ax.set_xlabel("step")
            ax.set_yscale("log")
        axes[0].legend(fontsize=7, ncol=2)
        report.figure(fig, "training_loss.png", caption)

    fig, (ax,) = new_figure(1, panel_size=(12, 4.5))
    xs = np.arange(len(labels))
    for i, batch in enumerate(BATCHES):
        stats = [summarize(table[label][str(batch)]["val"]) for label in labels]
        ax.bar(xs + (i - 0.5) * 0.4, [np.nan_to_num(s.mean) for s in stats], 0.4,
               yerr=[np.nan_to_num(s.ci) for s in stats], label=f"batch {batch}")
    ax.set_xticks(xs, labels, rotation=30, fontsize=8)
    ax.set_ylabel("validation accuracy")
    ax.legend()
    report.figure(fig, "accuracy_by_norm.png",
                  "Validation accuracy by norm and batch (mean ± 95% CI over seeds)")

    # results from before the key was renamed call the trained nets' measures "power"
    power = training.get("trained_power", training.get("power", {}))
    report.text(f"**Power measures of the trained nets** (batch {BATCHES[0]}, seed {seeds[0]}; "
                f"pre-activations of every conv layer on {training.get('power_images', 256)} "
                "training images, eval mode):")
    report.table(["norm", "sq-mean, mean over layers", "sq-mean, last", "inst-mean var, mean",
                  "inst-mean var, last", "inst-std var, mean", "inst-std var, last"],
                 [[label] + [fmt(v, ".3g") for v in p.values()] for label, p in power.items()])


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    """(a) from the random nets' last layer (averaged over the size's random nets); (b) is not
    tested at this size: the nets are far from trained (issue 18)."""
    power, training = results["power"], results.get("training")
    seeds = len(results.get("power_size", POWER)["seeds"])
    sq = {k: r["norm_input"]["sq_mean_share"][-1] for k, r in power.items()}
    inst = {k: r["norm_input"]["instance_mean_var_share"][-1] for k, r in power.items()}
    pairs = [(a, b) for a, b in (("LN", "LN+PN"), ("GN", "GN+PN"), ("LN", "BN"))
             if a in sq and b in sq]
    out = [
        Verdict("LN/GN: the channel-wise squared mean dominates deep; PN (and BN) remove it",
                "last layer: " + ", ".join(f"{k} {v:.3g}" for k, v in sq.items()),
                "reproduced" if all(sq[a] > 0.5 and sq[b] < 0.5 * sq[a] for a, b in pairs)
                else "not reproduced", n=seeds),
        Verdict("IN: the instance means stop varying across examples",
                f"inst-mean var share, last layer: IN {inst['IN']:.3g}, BN {inst['BN']:.3g}",
                "reproduced" if inst["IN"] < 0.2 * inst["BN"] else "not reproduced", n=seeds),
    ]
    if training is not None:
        bn = training["table"]["BN"]
        val = [summarize(bn[str(b)]["val"]).mean for b in BATCHES]
        out.append(Verdict(
            "BN degrades at small batch; GN+PN / LN+PN match or beat BN",
            f"BN val {fmt(val[0], '.3f')} (batch {BATCHES[0]}) → {fmt(val[1], '.3f')} (batch "
            f"{BATCHES[1]}); nets trained for 2 epochs, far from the paper's accuracies; GN's "
            "8 groups of 8 channels are InstanceNorm in the first stage; equal epochs give batch "
            f"{BATCHES[1]} {BATCHES[0] // BATCHES[1]}× the steps", "not tested"))
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs E6 (or, with --report-only, reads its results.json) and writes the report; returns
    the results."""
    args = parse_experiment_args(__doc__, __file__, argv)
    report = Report("E6: normalization comparison (Proxy Norm paper)", args.out,
                    command=args.command)
    runs = None
    if args.report_only:
        results = load_results(args.out)
    else:
        dataset = "digits" if args.tiny else "cifar10"
        results = {"dataset": dataset, "power_size": TINY_POWER if args.tiny else POWER,
                   "power": power_results(args, dataset), "training": None}
        if not args.tiny:
            results["training"], runs = training_results(args)
            results["training_runs"] = record_runs(args, runs.values())
    write_report(report, results, runs)
    return results


def write_report(report: Report, results: dict[str, Any], runs: dict | None) -> None:
    """The report from `results` alone; the training-loss figure drawn from `runs` (None:
    --report-only, the committed figure is embedded)."""
    # results from before the sizes were stored are the full-size CIFAR-10 run's
    dataset, size = results.get("dataset", "cifar10"), results.get("power_size", POWER)
    trained = results.get("training") is not None
    report.facts["part (a)"] = f"random conv net, depth {size['depth']}, {dataset}"
    report.facts["part (b)"] = f"{CONFIG}:{FULL_TRAINING}" if trained else "not run with --tiny"
    if results.get("training_runs"):
        report.facts["training runs"] = results["training_runs"]
    report.text(
        "**Claim** (SPEC §3 E6): (a) in a random deep conv net LN and GN show a channel-wise "
        "squared-mean share growing with depth, IN shows collapsed instance-statistics "
        "variability, and BN, LN+PN, GN+PN show neither; (b) BN degrades at small batch; GN+PN "
        "and LN+PN match or beat BN and beat GN, LN and IN."
    )
    power_section(report, results["power"], size, dataset)
    if trained:
        training_section(report, results["training"], runs)
    report.heading("Result")
    claims = verdicts(results)
    report.text(verdict_table(claims))
    report_results(report, results, claims)


if __name__ == "__main__":
    main()
