"""E7: regularization in a small-data regime, and inverted vs classic dropout — SPEC §3 E7.

5,000 Fashion-MNIST training images, a 2 × 512 ReLU MLP that fits them (configs/
e7_regularization.py, 1,200 steps), then the same net with each regularizer: dropout,
DropConnect, L2, label smoothing, mixup, cutout, augmentation (flip + translation). Each
regularizer is tried at 4-5 strengths (seed 0) and the one with the best final validation
accuracy (5,000 held-out training images; never the test set) is trained with seeds 1-4 as one
program (`num_seeds`), its seed 0 being the grid's run; the baseline's seeds 0-4 are one
program. Reported: train accuracy (the 5,000 clean training images, eval mode), test accuracy
(10,000 test images), their gap, and each regularizer's difference from the baseline with its
95% Welch CI. Stochastic depth needs a deep residual net (>= 20 blocks), beyond this CPU's
budget: the report gives the commands for a GPU (`blocks=` of the config).

Inverted vs classic dropout (an implementation check): the trained dropout MLP (inverted form:
y = m ⊙ x / q at train time, y = x at test time) is converted to the classic form (y = m ⊙ x at
train time, y = q·x at test time; every kernel that reads dropped units divided by q, which
makes the two nets the same function), and for both forms the test-time output is compared
with the average of the train-mode output over many random masks.

The report step (tables, figures, verdicts from results.json) is e7_report.py.

    python experiments/e7_regularization/run.py             # 39 programs, ~20 min (2 cores)
    python experiments/e7_regularization/run.py --reuse     # reuse finished runs of the same code
    python experiments/e7_regularization/run.py --report-only  # from results.json alone
    python experiments/e7_regularization/run.py --tiny --out /tmp/e7    # seconds
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from normlab.config import load_config
from normlab.data.datasets import load_arrays
from normlab.nn.activations import make_activation
from normlab.nn.dropout import Dropout
from normlab.reports import Report, RunResult, choose_lr, final_metric, run_training
from normlab.reports.experiment import (
    load_results,
    parse_experiment_args,
    record_runs,
    sibling_module,
    train_seeds,
)
from normlab.train import inputs
from normlab.train.saved import load_saved

e7_report = sibling_module(__file__, "e7_report")  # the report step
# verdicts: the report step's, read by tests/test_results_guard.py from this module
CONFIG, verdicts, write_report, delta = (
    e7_report.CONFIG, e7_report.verdicts, e7_report.write_report, e7_report.delta)
# >= four strengths per regularizer, spanning the previous two-value grid's choices; dropout,
# DropConnect and L2 one lower still, their validation optimum having been the lowest of four
# (flip + translate's 1 px is the smallest translation)
GRID = {"dropout": (0.05, 0.1, 0.3, 0.5, 0.7), "dropconnect": (0.05, 0.1, 0.2, 0.3, 0.5),
        "l2": (1e-4, 5e-4, 2e-3, 5e-3, 1e-2), "label_smoothing": (0.1, 0.2, 0.3, 0.5),
        "mixup": (0.1, 0.2, 0.4, 1.0), "cutout": (4, 6, 8, 12), "augment": (1, 2, 3, 4)}
# tiny: one strength each of a noise regularizer and a weight penalty, both strong enough to act
TINY_GRID = {"dropout": (0.5,), "l2": (5e-3,)}
SEEDS, TINY_SEEDS = (0, 1, 2, 3, 4), (0, 1, 2)
TINY_ARGS = ",dataset=digits,train_size=300,steps=300,width=128"
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
    out: dict[str, Any] = {name: [final_metric(r, key) for r in runs] for name, key in keys.items()}
    out["gap"] = [gap(r) for r in runs]
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs E7 (or, with --report-only, reads its results.json) and writes the report; returns
    the results."""
    args = parse_experiment_args(__doc__, __file__, argv)
    report = Report("E7: regularization in a small-data regime", args.out, command=args.command)
    results, runs = (load_results(args.out), None) if args.report_only else collect(args)
    write_report(report, results, runs)
    return results


def collect(args) -> tuple[dict[str, Any], dict[str, list[RunResult]]]:
    """Trains E7's runs and checks the dropout forms; (the numbers the report shows, each
    reported setting's per-seed runs, for the figure)."""
    grid, seeds = (TINY_GRID, TINY_SEEDS) if args.tiny else (GRID, SEEDS)
    data = TINY_ARGS if args.tiny else ""

    baseline = train_seeds(args, f"mlp_baseline_s{seeds[0]}-{seeds[-1]}",
                           f"{CONFIG}:method=baseline{data}", seeds)
    tried = {(m, v): _run(args, f"mlp_{m}_{v:g}_s0", f"method={m},strength={v}{data}")
             for m, values in grid.items() for v in values}
    # the strength with the best final validation accuracy (the smaller one on a tie)
    chosen = {m: choose_lr({v: tried[(m, v)] for v in values}, "val_accuracy")
              for m, values in grid.items()}
    per_seed = {"baseline": baseline}
    for m, v in chosen.items():
        # seed 0 is the grid's run; seeds 1.. one program (each seed equals its own run)
        per_seed[m] = [tried[(m, v)], *train_seeds(
            args, f"mlp_{m}_{v:g}_s{seeds[1]}-{seeds[-1]}",
            f"{CONFIG}:method={m},strength={v}{data}", seeds[1:])]
    all_runs = [*tried.values(), *(r for m, rs in per_seed.items()
                                   for r in (rs if m == "baseline" else rs[1:]))]
    results: dict[str, Any] = {
        "tiny": args.tiny, "seeds": list(seeds), "steps": int(baseline[0].summary["step"]),
        "seed_note": "the baseline's seeds are one program (`num_seeds`); a regularizer's seed "
                     "0 is its grid run, seeds 1 and up one program",
        "grid_values": {m: list(values) for m, values in grid.items()},
        "chosen": chosen, "methods": {}, "grid": {},
        "training_runs": record_runs(args, all_runs)}
    base = _seed_stats(baseline)
    for m, runs in per_seed.items():
        stats = _seed_stats(runs)
        results["methods"][m] = {
            **stats, "strength": chosen.get(m),
            "delta_gap": None if m == "baseline" else delta(stats["gap"], base["gap"]),
            "delta_test": None if m == "baseline" else delta(stats["test"], base["test"])}
    for (m, v), run in tried.items():
        results["grid"][f"{m}={v:g}"] = {
            **{k: final_metric(run, f"{split}_accuracy")
               for k, split in (("train", "fit"), ("val", "val"), ("test", "test"))},
            "gap": gap(run)}
    results["dropout_check"] = dropout_check(tried[("dropout", chosen["dropout"])], MASKS,
                                             64 if args.tiny else CHECK_IMAGES)
    return results, per_seed


if __name__ == "__main__":
    main()
