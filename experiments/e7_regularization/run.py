"""E7: regularization in a small-data regime, and inverted vs classic dropout — SPEC §3 E7.

5,000 Fashion-MNIST training images, a 2 × 512 ReLU MLP trained to memorize them
(configs/e7_regularization.py), then the same net with each regularizer: dropout, L2, label
smoothing, mixup, cutout, augmentation (flip + translation). Each regularizer is tried at two
strengths (seed 0); the one with the better validation accuracy (5,000 held-out training
images) is rerun with a second seed, as is the baseline. Stochastic depth needs residual
blocks: a small pre-activation ResNet is trained with and without it. Reported: train accuracy
(the 5,000 clean training images, eval mode), test accuracy (10,000 test images) and their gap.

Inverted vs classic dropout: the trained dropout MLP (inverted form: y = m ⊙ x / q at train
time, y = x at test time) is converted to the classic form (y = m ⊙ x at train time, y = q·x at
test time; every kernel that reads dropped units divided by q, which makes the two nets the
same function), and for both forms the test-time output is compared with the average of the
train-mode output over many random masks.

    python experiments/e7_regularization/run.py             # 22 runs, ~35 min (loaded CPU)
    python experiments/e7_regularization/run.py --reuse     # reuse finished runs of the same code
    python experiments/e7_regularization/run.py --report-only  # from results.json alone
    python experiments/e7_regularization/run.py --tiny --out /tmp/e7    # digits, seconds
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from normlab.config import load_config
from normlab.data.datasets import load_arrays
from normlab.nn.activations import make_activation
from normlab.nn.dropout import Dropout, linear_depth_rates
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
    run_training,
    summarize,
    verdict_table,
    welch_test,
)
from normlab.reports.experiment import (
    load_results,
    parse_experiment_args,
    record_runs,
    report_results,
)
from normlab.train import inputs
from normlab.train.saved import load_saved

CONFIG = "configs/e7_regularization.py"
GRID = {"dropout": (0.3, 0.5), "dropout_classic": (0.3, 0.5), "dropconnect": (0.3, 0.5),
        "l2": (5e-4, 5e-3), "label_smoothing": (0.1, 0.3),
        "mixup": (0.2, 1.0), "cutout": (8, 14), "augment": (2, 4)}
# tiny: one strength each of a noise regularizer and a weight penalty, both strong enough to act
TINY_GRID = {"dropout": (0.5,), "l2": (5e-3,)}
LABELS = {"baseline": "baseline", "dropout": "dropout (rate)",
          "dropout_classic": "classic dropout (rate)", "dropconnect": "DropConnect (rate)",
          "l2": "L2 (coefficient)",
          "label_smoothing": "label smoothing (ε)", "mixup": "mixup (α)",
          "cutout": "cutout (square side, px)", "augment": "flip + translate (≤ px)",
          "stochastic_depth": "stochastic depth (last block's rate)"}
SEEDS, TINY_SEEDS = (0, 1), (0,)
MASKS = 64  # random masks averaged in the dropout check
CHECK_IMAGES = 2000  # test images of the dropout check


def _run(args, name: str, spec: str) -> RunResult:
    return run_training(load_config(f"{CONFIG}:{spec}"), args.runs / name, name=name,
                        reuse=args.reuse, any_revision=args.reuse_any_revision,
                        progress=args.progress, devices=args.devices)


def gap(run: RunResult) -> float | None:
    """Train accuracy (clean training images, eval mode) minus test accuracy, at the end."""
    fit, test = final_metric(run, "fit_accuracy"), final_metric(run, "test_accuracy")
    return None if fit is None or test is None else fit - test


def forward(params: dict, x: jax.Array, *, activation: str, rate: float, mode: str,
            key: jax.Array | None = None, noisy: Sequence[int] = ()) -> jax.Array:
    """The MLP's logits with normlab's `Dropout(rate, mode)` after every hidden layer; the
    dropout layers whose index is in `noisy` run in train mode (fresh masks from `key`), the
    others in eval mode."""
    act = make_activation(activation)
    h = x.reshape(x.shape[0], -1)
    hidden = sorted(name for name in params if name.startswith("layer_"))
    for index, name in enumerate(hidden):
        dense = params[name]["dense"]
        h = act(h @ dense["kernel"] + dense["bias"])
        drop = Dropout(rate=rate, mode=mode)
        if index in noisy:
            h = drop.apply({}, h, train=True, rngs={"dropout": jax.random.fold_in(key, index)})
        else:
            h = drop.apply({}, h, train=False)
    return h @ params["head"]["kernel"] + params["head"]["bias"]


def to_classic(params: dict, keep: float) -> dict:
    """The classic-dropout net computing the same function: every kernel that reads dropped
    units (hidden layers after the first, and the head) divided by q = `keep`."""
    first = min(name for name in params if name.startswith("layer_"))
    return jax.tree_util.tree_map_with_path(
        lambda path, w: w / keep if path[0].key != first and path[-1].key == "kernel" else w,
        params)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def dropout_check(run: RunResult, masks: int, images: int) -> dict[str, Any]:
    """Test-time output vs the mean train-mode output over `masks` masks, both dropout forms."""
    saved = load_saved(run.workdir)
    config, model = saved.config, saved.model
    params, preprocess = saved.state.params, saved.preprocessor
    x_u8, y = load_arrays(config.dataset, config.evals["test"], data_dir=config.data_dir or None,
                          tfds_dir=config.tfds_dir or None)
    x = jnp.asarray(inputs.transform(preprocess, inputs.to_float(x_u8[:images])))
    y = np.asarray(y[:images])
    rate, activation = float(config.model.dropout_rate), config.model.activation
    forms = {"inverted": params, "classic": to_classic(params, 1.0 - rate)}
    library_eval = np.asarray(model.apply({"params": params}, x, train=False), np.float64)
    out: dict[str, Any] = {"rate": rate, "masks": masks, "images": int(x.shape[0])}
    hidden = len([n for n in params if n.startswith("layer_")])
    counts = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= masks]

    # statistics in float64 NumPy: eager jnp ops would each compile for these shapes
    def accuracy(logits: np.ndarray) -> float:
        return float(np.mean(np.argmax(logits, -1) == y))

    key = jax.random.key(1234)
    test_time = {}
    for form, p in forms.items():
        kw = dict(activation=activation, rate=rate, mode=form)
        test_time[form] = np.asarray(jax.jit(functools.partial(forward, **kw))(p, x), np.float64)
        logits = test_time[form]
        row = {"max_abs_diff_vs_library_eval": float(np.max(np.abs(logits - library_eval))),
               "eval_accuracy": accuracy(logits),
               "eval_loss": float(-np.mean(_log_softmax(logits)[np.arange(len(y)), y]))}
        for scope, noisy in (("all", tuple(range(hidden))), ("last", (hidden - 1,))):
            sample = jax.jit(functools.partial(forward, noisy=noisy, **kw))  # one compile
            samples = np.stack([np.asarray(sample(p, x, key=jax.random.fold_in(key, k)),
                                           np.float64) for k in range(masks)])
            running = np.cumsum(samples, 0) / np.arange(1, masks + 1)[:, None, None]
            rel = [float(np.linalg.norm(running[k - 1] - logits) / np.linalg.norm(logits))
                   for k in counts]
            mean_probs = np.mean(np.exp(_log_softmax(samples)), 0)
            row[scope] = {
                "masks": counts, "relative_error": rel,
                "mean_logit_accuracy": accuracy(running[-1]),
                "mean_prob_accuracy": accuracy(mean_probs),
                "single_mask_accuracy": float(np.mean([accuracy(s) for s in samples])),
                "agreement_with_eval": float(np.mean(np.argmax(running[-1], -1)
                                                     == np.argmax(logits, -1))),
            }
        out[form] = row
    out["max_abs_diff_inverted_vs_classic_eval"] = float(
        np.max(np.abs(test_time["inverted"] - test_time["classic"])))
    return out


def _seed_stats(runs: Sequence[RunResult]) -> dict[str, Any]:
    keys = {"train": "fit_accuracy", "val": "val_accuracy", "test": "test_accuracy"}
    out = {name: [final_metric(r, key) for r in runs] for name, key in keys.items()}
    out["gap"] = [gap(r) for r in runs]
    out["mean"] = {k: (None if None in vals else summarize(vals).mean) for k, vals in out.items()}
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs E7 (or, with --report-only, reads its results.json) and writes the report; returns
    the results."""
    args = parse_experiment_args(__doc__, __file__, argv)
    report = Report("E7: regularization in a small-data regime", args.out, command=args.command)
    results, runs = (load_results(args.out), None) if args.report_only else collect(args)
    write_report(report, results, runs)
    return results


def collect(args) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trains E7's runs and checks the dropout forms; (the numbers the report shows, the runs
    behind its figures)."""
    grid, seeds = (TINY_GRID, TINY_SEEDS) if args.tiny else (GRID, SEEDS)
    data = ",dataset=digits,train_size=300,steps=300,width=128" if args.tiny else ""

    baseline = [_run(args, f"mlp_baseline_s{s}", f"method=baseline,seed={s}{data}") for s in seeds]
    tried = {(m, v): _run(args, f"mlp_{m}_{v:g}_s0", f"method={m},strength={v}{data}")
             for m, values in grid.items() for v in values}
    # the strength with the best validation accuracy (the smaller one on a tie)
    chosen = {m: choose_lr({v: tried[(m, v)] for v in values}, "val_accuracy")
              for m, values in grid.items()}
    per_seed = {"baseline": baseline}
    for m, v in chosen.items():
        per_seed[m] = [tried[(m, v)]] + [
            _run(args, f"mlp_{m}_{v:g}_s{s}", f"method={m},strength={v},seed={s}{data}")
            for s in seeds[1:]]
    # a ResNet compiles for ~15 s on a CPU: the tiny version leaves this part out
    resnet = {} if args.tiny else {m: _run(args, f"resnet_{m}", f"net=resnet,method={m}")
                                   for m in ("baseline", "stochastic_depth")}
    all_runs = [*tried.values(), *(r for rs in per_seed.values() for r in rs[1:]),
                baseline[0], *resnet.values()]
    results: dict[str, Any] = {"tiny": args.tiny, "seeds": list(seeds), "methods": {},
                               "grid": {}, "chosen": chosen,
                               "training_runs": record_runs(args, all_runs)}
    base = _seed_stats(baseline)
    for m, runs in per_seed.items():
        stats = _seed_stats(runs)
        d_gap = (None if stats["mean"]["gap"] is None or base["mean"]["gap"] is None
                 else stats["mean"]["gap"] - base["mean"]["gap"])
        d_test = (None if stats["mean"]["test"] is None or base["mean"]["test"] is None
                  else stats["mean"]["test"] - base["mean"]["test"])
        results["methods"][m] = {**stats, "delta_gap": d_gap, "delta_test": d_test,
                                 "strength": chosen.get(m)}
    for (m, v), run in tried.items():
        results["grid"][f"{m}={v:g}"] = {
            **{k: final_metric(run, f"{split}_accuracy")
               for k, split in (("train", "fit"), ("val", "val"), ("test", "test"))},
            "gap": gap(run)}
    for m, run in resnet.items():
        results[f"resnet_{m}"] = {
            "train": final_metric(run, "fit_accuracy"), "val": final_metric(run, "val_accuracy"),
            "test": final_metric(run, "test_accuracy"), "gap": gap(run),
            "rate": json.loads((run.workdir / "config.json").read_text())["model"].get(
                "stochastic_depth_rate", 0.0)}
    results["dropout_check"] = dropout_check(tried[("dropout", chosen["dropout"])], MASKS,
                                             64 if args.tiny else CHECK_IMAGES)
    return results, {"per_seed": per_seed, "resnet": resnet}


def write_report(report: Report, results: dict[str, Any], runs: dict | None) -> None:
    """The report from `results` alone; the training curves drawn from `runs` (None:
    --report-only, the committed figures are embedded)."""
    tiny = results.get("tiny", False)
    # results from before the seeds were stored: as many as each method's values
    seeds = results.get("seeds", list(range(len(results["methods"]["baseline"]["test"]))))
    chosen = results["chosen"]
    report.facts.update({
        "data": "digits (tiny): train on train[:300], val = test = the 297 test images"
                if tiny else "Fashion-MNIST: train on train[:5000], validation "
                "train[55000:] (5,000), test = the 10,000 test images",
        "nets": f"MLP 2 × {128 if tiny else 512} ReLU, SGD momentum 0.9, lr 0.05, cosine, "
                "batch 128, "
                + ("300 steps" if tiny else "2,500 steps (64 epochs)")
                + ("" if tiny else "; ResNet: pre-activation, 3 basic blocks (16/32/64 "
                   "channels), BN, ImageNet stem, lr 0.1, 1,200 steps (31 epochs)"),
        "config": CONFIG,
        "seeds": f"{len(seeds)} per reported setting ({', '.join(map(str, seeds))}); the "
                 "strength grid and the ResNet: seed 0",
    })
    if results.get("training_runs"):
        report.facts["training runs"] = results["training_runs"]
    report.text(
        "**Claim** (SPEC §3 E7): in a small-data regime dropout, L2, DropConnect, stochastic "
        "depth, cutout, mixup and augmentation reduce the train/test gap; label smoothing is "
        "listed in issue 7 too. Inverted and classic dropout agree at test time (both are the "
        "expectation of the train-time output over the masks, exactly for a single layer).\n\n"
        "**Train accuracy** is measured on the clean training images in eval mode (no "
        "dropout, no augmentation), **gap** = train − test accuracy, both at the end of "
        "training. Each regularizer's strength is chosen among two values by validation "
        "accuracy (seed 0); the chosen one and the baseline are then run with every seed and "
        "reported as mean ± 95% CI (Student t; n = the number of seeds)."
    )
    if "backfilled" in results:
        report.text(f"({results['backfilled']}.)")

    report.heading("MLP: train/test accuracy and gap per regularizer")
    base = results["methods"]["baseline"]
    rows = [[LABELS[m], "—" if m == "baseline" else f"{chosen[m]:g}",
             *(fmt_mean_ci(st[k], ".4f", show_n=False) for k in ("train", "test", "gap")),
             st["delta_gap"], st["delta_test"],
             "—" if m == "baseline" or len(seeds) < 2 else fmt(welch_test(st["test"],
                                                                          base["test"]).p, ".2g"),
             fmt_mean_ci(st["val"], ".4f", show_n=False)]
            for m, st in results["methods"].items()]
    n = f" (95% CI, n={len(seeds)})"
    report.table(["method", "strength", f"train acc{n}", f"test acc{n}", f"gap{n}",
                  "Δ gap vs baseline", "Δ test vs baseline", "Welch p (Δ test)", f"val acc{n}"],
                 rows, spec="+.4f")
    report.text("Δ columns: mean over seeds minus the baseline's mean (negative Δ gap = a "
                "smaller gap); Welch p: two-sided, of the test accuracies against the "
                "baseline's.")

    report.heading("Strength grid (seed 0)", level=3)
    rows = []
    for key, cell in results["grid"].items():
        m, v = key.split("=")
        rows.append([LABELS[m], v + (" ←" if f"{chosen[m]:g}" == v else ""), cell["train"],
                     cell["val"], cell["test"], cell["gap"]])
    report.table(["method", "strength (← chosen)", "train acc", "val acc", "test acc", "gap"],
                 rows, spec=".4f")
    caption = ("MLP on the small training set: train and test accuracy over training (seed 0, "
               "chosen strength), final gap and test error")
    if runs is None:
        report.existing_figure("regularizers.png", caption)
    else:
        report.figure(_regularizers_figure(results, runs["per_seed"]), "regularizers.png",
                      caption)
    if "resnet_baseline" in results:
        _resnet_section(report, results, runs)
    _dropout_section(report, results["dropout_check"])
    report.heading("Result")
    report.text(_verdict(results))
    claims = verdicts(results)
    report.text(verdict_table(claims))
    report_results(report, results, claims)


def _regularizers_figure(results: dict[str, Any], per_seed: dict[str, list[RunResult]]):
    fig, axes = new_figure(3)
    firsts = {LABELS[m]: runs[0] for m, runs in per_seed.items()}
    plot_curves(axes[0], {k: r.series("fit_accuracy") for k, r in firsts.items()},
                xlabel="step", ylabel="train accuracy (clean images, eval mode)")
    plot_curves(axes[1], {k: r.series("test_accuracy") for k, r in firsts.items()},
                xlabel="step", ylabel="test accuracy")
    names = list(per_seed)
    gaps = [results["methods"][m]["mean"]["gap"] or np.nan for m in names]
    tests = [results["methods"][m]["mean"]["test"] or np.nan for m in names]
    pos = np.arange(len(names))
    axes[2].barh(pos - 0.2, gaps, height=0.4, label="gap (train − test)")
    axes[2].barh(pos + 0.2, 1.0 - np.asarray(tests), height=0.4, label="test error")
    axes[2].set_yticks(pos, [n.replace("_", " ") for n in names])
    axes[2].invert_yaxis()
    axes[2].set_xlabel("fraction (mean over seeds)")
    axes[2].legend(fontsize="small", loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2)
    axes[2].grid(True, axis="x", alpha=0.3)
    for ax in axes[:2]:
        ax.legend(fontsize="x-small")
    return fig


def _dropout_section(report: Report, check: dict[str, Any]) -> None:
    report.heading("Inverted vs classic dropout at test time")
    report.text(
        f"The dropout MLP of the table (rate {check['rate']:g}, seed 0) is converted to the "
        "classic form and both are evaluated on the first "
        f"{check['images']:,} test images: the test-time output (inverted: y = x; classic: "
        f"y = q·x, q = {1 - check['rate']:g}) against the mean of the train-mode logits over "
        f"{check['masks']} random masks, with masks in every dropout layer (\"all\") or only "
        "in the last one (\"last\", where the head is linear in the mask, so the expectation "
        "is exactly the test-time output)."
    )
    rows = []
    for form in ("inverted", "classic"):
        r = check[form]
        rows.append([form, r["max_abs_diff_vs_library_eval"], r["eval_accuracy"],
                     r["all"]["mean_logit_accuracy"], r["all"]["mean_prob_accuracy"],
                     r["all"]["single_mask_accuracy"], r["all"]["agreement_with_eval"],
                     r["all"]["relative_error"][-1], r["last"]["relative_error"][-1]])
    report.table(["form", "max |logit − library eval|", "test-time acc",
                  f"acc of mean logits ({check['masks']} masks)", "acc of mean probabilities",
                  "acc of one mask (mean)", "same class as test time",
                  "rel. error of mean logits: all", "rel. error: last only"], rows, spec=".4g")
    report.text(
        "\"max |logit − library eval|\": the hand-written forward pass (normlab's `Dropout` in "
        "each mode) against the library MLP in eval mode, i.e. the converted classic net is the "
        "same function at test time; between the two forms' test-time logits the largest "
        f"difference is {check['max_abs_diff_inverted_vs_classic_eval']:.2g} (float32 "
        "rounding of an algebraic identity: a check of the conversion, not a measurement). "
        "\"rel. error\": ‖mean over masks − test-time logits‖ / ‖test-time logits‖."
    )
    fig, axes = new_figure(1)
    curves, styles = {}, {}
    for form in ("inverted", "classic"):
        for scope, ls in (("all", "-"), ("last", "--")):
            label = f"{form}, masks in {scope} layer{'s' if scope == 'all' else ''}"
            curves[label] = (check[form][scope]["masks"], check[form][scope]["relative_error"])
            # the two forms coincide: a wide pale line under a thin marked one
            styles[label] = ({"color": "C0", "linestyle": ls, "linewidth": 5, "alpha": 0.4}
                             if form == "inverted" else
                             {"color": "C1", "linestyle": ls, "marker": "x"})
    plot_curves(axes[0], curves, xlabel="masks averaged", ylabel="relative error vs test-time "
                "logits", logy=True, styles=styles)
    axes[0].set_xscale("log", base=2)
    report.figure(fig, "dropout_expectation.png", "Mean train-mode logits over K masks vs the "
                  "test-time logits, inverted and classic dropout (the two forms coincide)")


def _resnet_section(report: Report, results: dict[str, Any], runs: dict | None) -> None:
    """The stochastic-depth table and curves."""
    report.heading("Stochastic depth (ResNet, seed 0)")
    nets = {m: results[f"resnet_{m}"] for m in ("baseline", "stochastic_depth")}
    rows = [[LABELS[m] + (f" = {r['rate']:g}" if r["rate"] else ""), r["train"], r.get("val"),
             r["test"], r["gap"]] for m, r in nets.items()]
    report.table(["net", "train acc", "val acc", "test acc", "gap"], rows, spec=".4f")
    block_rates = linear_depth_rates(3, nets["stochastic_depth"]["rate"])
    report.text("With stochastic depth the 3 residual branches are dropped per example with the "
                f"linear rule's rates {', '.join(f'{r:.3g}' for r in block_rates)} (survivors "
                "rescaled by 1/(1 − rate) at train time). A 3-block ResNet, one seed.")
    caption = "ResNet with and without stochastic depth: train and test accuracy over training"
    if runs is None:
        report.existing_figure("stochastic_depth.png", caption)
        return
    fig, axes = new_figure(2)
    for ax, key, label in ((axes[0], "fit_accuracy", "train accuracy"),
                           (axes[1], "test_accuracy", "test accuracy")):
        plot_curves(ax, {LABELS[m]: r.series(key) for m, r in runs["resnet"].items()},
                    xlabel="step", ylabel=label)
    report.figure(fig, "stochastic_depth.png", caption)


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    """The claims, from the per-seed numbers in results.json."""
    methods = {m: v for m, v in results["methods"].items() if m != "baseline"}
    base = results["methods"]["baseline"]
    n = len(base["test"])
    smaller = [m for m, v in methods.items() if (v["delta_gap"] or 0.0) < 0]
    d_gap = [v["delta_gap"] for v in methods.values() if v["delta_gap"] is not None]
    d_train = [v["mean"]["train"] - base["mean"]["train"] for v in methods.values()
               if v["mean"]["train"] is not None]
    d_test = [v["delta_test"] for v in methods.values() if v["delta_test"] is not None]
    p = [welch_test(v["test"], base["test"]).p for v in methods.values()
         if n >= 2 and None not in v["test"]]
    out = [
        Verdict("every regularizer shrinks the train/test gap (MLP)",
                f"{len(smaller)} of {len(methods)}: Δ gap {min(d_gap):+.4f} to {max(d_gap):+.4f}"
                f", mostly from train accuracy (Δ train {min(d_train):+.4f} to "
                f"{max(d_train):+.4f})",
                "reproduced" if len(smaller) == len(methods) else
                "partly reproduced" if smaller else "not reproduced", n=n),
        Verdict("a regularizer raises the test accuracy (MLP)",
                f"Δ test {min(d_test):+.4f} to {max(d_test):+.4f}"
                + (f"; smallest Welch p {min(p):.2g}" if p else ""),
                "reproduced" if p and min(p) < 0.05 and max(d_test) > 0 else "not reproduced",
                n=n),
    ]
    sd, rn = results.get("resnet_stochastic_depth"), results.get("resnet_baseline")
    if sd and rn:
        out.append(Verdict("stochastic depth shrinks the gap (3-block ResNet)",
                           f"gap {sd['gap']:.4f} vs {rn['gap']:.4f}; test {sd['test']:.4f} vs "
                           f"{rn['test']:.4f}", "reproduced" if sd["gap"] < rn["gap"]
                           else "not reproduced", n=1))
    check = results["dropout_check"]
    out.append(Verdict("inverted and classic dropout give the same test-time output",
                       f"max |Δ logit| {check['max_abs_diff_inverted_vs_classic_eval']:.2g} "
                       "(an identity of the conversion, checked in float32)",
                       "reproduced" if check["max_abs_diff_inverted_vs_classic_eval"] < 1e-4
                       else "not reproduced", n=1))
    return out


def _verdict(summary: dict[str, Any]) -> str:
    methods = {m: v for m, v in summary["methods"].items() if m != "baseline"}
    base = summary["methods"]["baseline"]["mean"]
    smaller = [m for m, v in methods.items() if (v["delta_gap"] or 0.0) < 0]
    better = [m for m, v in methods.items() if (v["delta_test"] or 0.0) > 0]
    sd, rn = summary.get("resnet_stochastic_depth"), summary.get("resnet_baseline")
    check = summary["dropout_check"]
    return (
        f"- Baseline MLP: train {base['train']:.4f}, test {base['test']:.4f}, gap "
        f"{base['gap']:.4f}. A smaller gap with {len(smaller)} of {len(methods)} regularizers"
        + (f" ({', '.join(smaller)})" if smaller else "")
        + f"; a higher mean test accuracy with {len(better)} of {len(methods)}"
        + (f" ({', '.join(better)})" if better else "") + " (see the Welch p column).\n"
        + "- Per regularizer (Δ gap / Δ test accuracy vs baseline): "
        + "; ".join(f"{m} {v['delta_gap']:+.4f} / {v['delta_test']:+.4f}"
                    for m, v in methods.items() if v["delta_gap"] is not None) + ".\n"
        + (f"- Stochastic depth (ResNet): gap {sd['gap']:.4f} vs {rn['gap']:.4f} without; "
           f"test {sd['test']:.4f} vs {rn['test']:.4f}.\n" if sd and rn else "")
        + f"- Dropout forms: the two test-time rules give the same logits (max difference "
        f"{check['max_abs_diff_inverted_vs_classic_eval']:.2g}); with masks only in the last "
        f"layer the mean over {check['masks']} masks approaches the test-time logits "
        f"(relative error {check['inverted']['last']['relative_error'][-1]:.3f} inverted, "
        f"{check['classic']['last']['relative_error'][-1]:.3f} classic, falling like "
        "1/sqrt(K)); with masks in every layer it levels off at "
        f"{check['inverted']['all']['relative_error'][-1]:.3f} (the ReLU between the layers "
        "makes the test-time rule an approximation of the mean), while the predicted classes "
        f"agree on {check['inverted']['all']['agreement_with_eval']:.1%} of the images."
    )


if __name__ == "__main__":
    main()
