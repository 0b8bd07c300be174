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
    python experiments/e6_norms/run.py --reuse    # rewrite the report from finished runs
    python experiments/e6_norms/run.py --tiny --out /tmp/e6     # digits, seconds

Full size (a GPU job): the same script with FULL_TRAINING below set to
model=resnet20,width=1,epochs=30,train_examples=45000 and three seeds.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from normlab.config import load_config
from normlab.data.datasets import load_arrays
from normlab.reports import Report, RunResult, describe_runs, fmt, new_figure, run_training
from normlab.reports.experiment import parse_experiment_args
from normlab.train import inputs
from normlab.train.diagnostics import collect_preacts, power_decomposition
from normlab.train.saved import load_saved

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e6_power  # noqa: E402  (the experiment's own module, beside this script)

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
TINY_TRAINING = "dataset=digits,model=resnet8,width=0.5,groups=2,steps=20"
TINY_TRAINED = ("BN", "GN+PN")  # the test suite's subset
BATCHES = (128, 8)
SEEDS = (0, 1)
POWER = dict(depth=50, width=64, images=64, seeds=[0, 1])
TINY_POWER = dict(depth=8, width=16, images=16, seeds=[0])


def standardized_images(dataset: str, n: int) -> np.ndarray:
    """The first n training images, per-channel standardized over those images."""
    x, _ = load_arrays(dataset, "train")
    x = x[:n].astype(np.float64)
    return ((x - x.mean(axis=(0, 1, 2))) / x.std(axis=(0, 1, 2))).astype(np.float32)


# ------------------------------------------------------------------------------- (a) power


def power_section(report: Report, args, dataset: str) -> dict[str, Any]:
    size = TINY_POWER if args.tiny else POWER
    cache = args.runs / "power.json"  # --reuse reads it: the random nets take minutes on CPU
    if args.reuse and cache.is_file() and json.loads(cache.read_text())["size"] == size:
        results = json.loads(cache.read_text())["results"]
    else:
        x = standardized_images(dataset, size["images"])
        results = e6_power.mean_over_seeds(x, list(e6_power.NETS), depth=size["depth"],
                                           width=size["width"], seeds=size["seeds"])
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"size": size, "results": results}))
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
    return results


# ---------------------------------------------------------------------------- (b) training


def _runs(args) -> dict[tuple[str, int, int], RunResult]:
    base = TINY_TRAINING if args.tiny else FULL_TRAINING
    seeds = SEEDS[:1] if args.tiny else SEEDS
    labels = TINY_TRAINED if args.tiny else tuple(TRAINED)
    out = {}
    for seed in seeds:
        for batch in BATCHES:
            for label in labels:
                overrides = TRAINED[label]
                name = f"{label}_b{batch}_s{seed}".replace("+", "_")
                config = load_config(f"{CONFIG}:{overrides},{base},batch={batch},seed={seed}")
                # evaluation only at the end (the loop always evaluates the last step): on
                # this CPU a mid-run pass over 6,000 images costs a third of the training
                config.log_every_steps = max(1, (config.total_steps or 1) // 40)
                out[label, batch, seed] = run_training(config, args.runs / name, name=name,
                                                       reuse=args.reuse, progress=args.progress)
    return out


def _final(run: RunResult, key: str) -> float | None:
    if run.diverged or not run.summary:
        return None
    return run.summary.get("final", {}).get(key)


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


def training_section(report: Report, args) -> dict[str, Any]:
    runs = _runs(args)
    seeds = sorted({s for _, _, s in runs})
    labels = list(dict.fromkeys(label for label, _, _ in runs))
    report.facts["training runs"] = describe_runs(runs.values())
    report.heading("(b) Training: pre-activation ResNet, every norm, large and small batch")
    base = TINY_TRAINING if args.tiny else FULL_TRAINING
    report.text(
        f"`{CONFIG}:{base}` with batch ∈ {{{', '.join(map(str, BATCHES))}}} (lr = 0.1·batch/128, "
        f"the same number of epochs, so the small batch takes {BATCHES[0] // BATCHES[1]}× more "
        f"steps), seeds {list(seeds)}. Validation: 5,000 held-out training images; test: the "
        "first 1,000 of the 10,000 official test images (partial: ±1.5% standard error at "
        "50% accuracy). This is a reduced size for a 2-core CPU; the paper's claims are about "
        "fully trained nets (see the module docstring of run.py for the full-size command)."
    )
    table: dict[str, dict[int, dict[str, Any]]] = {}
    rows = []
    for label in labels:
        row = [label]
        table[label] = {}
        for batch in BATCHES:
            vals = [_final(runs[label, batch, s], "eval_accuracy") for s in seeds]
            tests = [_final(runs[label, batch, s], "test_accuracy") for s in seeds]
            ok = [v for v in vals if v is not None]
            ok_t = [v for v in tests if v is not None]
            entry = {"val": vals, "test": tests,
                     "val_mean": float(np.mean(ok)) if ok else None,
                     "val_std": float(np.std(ok)) if ok else None,
                     "test_mean": float(np.mean(ok_t)) if ok_t else None,
                     "diverged": len(vals) - len(ok)}
            table[label][batch] = entry
            test_cell = _mean_std(ok_t, len(tests)) if ok_t or not ok else "—"  # digits: no test
            row += [_mean_std(ok, len(vals)), test_cell]
        rows.append(row)
    header = ["norm"] + [f"{kind}, batch {b}" for b in BATCHES for kind in ("val acc", "test acc")]
    report.table(header, rows)
    report.text("Mean ± std over seeds (population std); \"(k diverged)\": runs that hit a "
                "non-finite loss and are left out of the mean.")

    fig, axes = new_figure(2)
    for ax, batch in zip(axes, BATCHES, strict=True):
        for label in labels:
            run = runs[label, batch, seeds[0]]
            steps, loss = run.series("train_loss")
            if len(steps):
                ax.plot(steps, loss, label=label, linestyle="--" if "PN" in label else "-")
        ax.set_title(f"train loss, batch {batch} (seed {seeds[0]})")
        ax.set_xlabel("step")
        ax.set_yscale("log")
    axes[0].legend(fontsize=7, ncol=2)
    report.figure(fig, "training_loss.png", "Train loss by norm at the large and the small batch")

    fig, (ax,) = new_figure(1, panel_size=(12, 4.5))
    xs = np.arange(len(labels))
    for i, batch in enumerate(BATCHES):
        means = [table[label][batch]["val_mean"] or 0.0 for label in labels]
        stds = [table[label][batch]["val_std"] or 0.0 for label in labels]
        ax.bar(xs + (i - 0.5) * 0.4, means, 0.4, yerr=stds, label=f"batch {batch}")
    ax.set_xticks(xs, labels, rotation=30, fontsize=8)
    ax.set_ylabel("validation accuracy")
    ax.legend()
    report.figure(fig, "accuracy_by_norm.png",
                  "Validation accuracy by norm and batch (mean ± std over seeds)")

    power = {}
    prows = []
    n = 16 if args.tiny else 256
    for label in labels:
        run = runs[label, BATCHES[0], seeds[0]]
        if run.diverged or label == "none":
            continue
        power[label] = trained_power(run, n)
        prows.append([label] + [fmt(power[label][k], ".3g") for k in power[label]])
    report.text(f"**Power measures of the trained nets** (batch {BATCHES[0]}, seed {seeds[0]}; "
                f"pre-activations of every conv layer on {n} training images, eval mode):")
    report.table(["norm", "sq-mean, mean over layers", "sq-mean, last", "inst-mean var, mean",
                  "inst-mean var, last", "inst-std var, mean", "inst-std var, last"], prows)
    return {"table": table, "trained_power": power}


def _mean_std(values: Sequence[float], total: int) -> str:
    if not values:
        return "diverged"
    text = f"{np.mean(values):.4f} ± {np.std(values):.4f}" if len(values) > 1 else \
        f"{values[0]:.4f}"
    return text + (f" ({total - len(values)} diverged)" if len(values) < total else "")


def _verdicts(report: Report, power: dict, training: dict) -> None:
    report.heading("Result")
    bullets = []
    last = {label: {w: {m: v[-1] for m, v in r[w].items()} for w in r}
            for label, r in power.items()}
    bullets.append(
        "Channel-wise squared-mean share of the norm input at the last layer: "
        + ", ".join(f"{label} {fmt(v['norm_input']['sq_mean_share'], '.3g')}"
                    for label, v in last.items()))
    bullets.append(
        "Variability of instance means across examples (share of power) at the last layer: "
        + ", ".join(f"{label} {fmt(v['norm_input']['instance_mean_var_share'], '.3g')}"
                    for label, v in last.items()))
    table = training["table"]
    large, small = BATCHES
    for batch in BATCHES:
        ranked = sorted((e[batch]["val_mean"] or 0.0, label) for label, e in table.items())
        bullets.append(f"Batch {batch}, validation accuracy (mean over seeds), best first: "
                      + ", ".join(f"{label} {v:.4f}" for v, label in reversed(ranked)))
    bn = table["BN"]
    if bn[large]["val_mean"] is not None and bn[small]["val_mean"] is not None:
        gnpn = table["GN+PN"]
        bullets.append(f"BN at batch {large} → {small}: {bn[large]['val_mean']:.4f} → "
                       f"{bn[small]['val_mean']:.4f}; GN+PN: {fmt(gnpn[large]['val_mean'])}"
                       f" → {fmt(gnpn[small]['val_mean'])}.")
    report.text("\n".join(f"- {b}" for b in bullets))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_experiment_args(__doc__, __file__, argv)
    report = Report("E6: normalization comparison (Proxy Norm paper)", args.out,
                    command=args.command)
    dataset = "digits" if args.tiny else "cifar10"
    report.facts["part (a)"] = ("random conv net, depth "
                                f"{(TINY_POWER if args.tiny else POWER)['depth']}, {dataset}")
    report.facts["part (b)"] = f"{CONFIG}:{TINY_TRAINING if args.tiny else FULL_TRAINING}"
    report.text(
        "**Claim** (SPEC §3 E6): (a) in a random deep conv net LN and GN show a channel-wise "
        "squared-mean share growing with depth, IN shows collapsed instance-statistics "
        "variability, and BN, LN+PN, GN+PN show neither; (b) BN degrades at small batch; GN+PN "
        "and LN+PN match or beat BN and beat GN, LN and IN."
    )
    power = power_section(report, args, dataset)
    training = training_section(report, args)
    _verdicts(report, power, training)
    report.save_json("results.json", {"power": power, "training": training})
    report.write()
    return {"power": power, **training}


if __name__ == "__main__":
    main()
