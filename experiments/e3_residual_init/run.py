"""E3: residual-branch initialization — the residual stream's variance by depth at init, and
early training, with the standard MSRA (Kaiming) init vs `zero_init_last` (SPEC §3 E3, §1.4).

Part 1 (no training): a batch of CIFAR-10 training images (per-channel standardized) through
ResNet-110 (54 residual blocks) at init; Var of the residual stream (each block's output, over
all N·H·W·C entries) by block, for pre-activation (v2) blocks without normalization and with
BatchNorm (batch statistics, as in training), and post-activation (v1) blocks with BN.
Also the loss at init of each variant on those images (the first training step's loss).
Part 2 (training, configs/e3_residual_init.py): the first steps of ResNet-56 (width ×0.5) on
CIFAR-10 for the four v2 combinations {no norm, BN} × {standard, zero_init_last}; constant lr
0.1 with BN and `NO_NORM_LR` = 0.02 without (at 0.1 the no-norm zero_init_last net gets stuck).

    python experiments/e3_residual_init/run.py              # ~1 h on a loaded 2-core CPU
    python experiments/e3_residual_init/run.py --tiny --out /tmp/e3   # part 1 only, seconds
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from normlab.data.datasets import load_arrays
from normlab.data.preprocess import make_preprocessor
from normlab.models.resnet import ResidualBlock, Stem
from normlab.nn.losses import softmax_cross_entropy
from normlab.registry import MODELS
from normlab.reports import (
    Report,
    RunResult,
    Verdict,
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
from normlab.train.inputs import to_float

CONFIG = "configs/e3_residual_init.py"
NO_NORM_LR = 0.02  # lr 0.1 leaves the no-norm zero_init_last net stuck (dead units); see README
CHANCE = math.log(10)
# (label, preact, norm, residual_init)
INIT_VARIANTS = (
    ("v2, no norm, standard (MSRA)", True, "none", "standard"),
    ("v2, no norm, zero_init_last", True, "none", "zero_init_last"),
    ("v2, BN, standard (MSRA)", True, "batch", "standard"),
    ("v2, BN, zero_init_last", True, "batch", "zero_init_last"),
    ("v1, BN, standard (MSRA)", False, "batch", "standard"),
    ("v1, BN, zero_init_last (γ = 0)", False, "batch", "zero_init_last"),
)
# (label, norm, residual_init)
TRAIN_VARIANTS = (
    ("no norm, standard", "none", "standard"),
    ("no norm, zero_init_last", "none", "zero_init_last"),
    ("BN, standard", "batch", "standard"),
    ("BN, zero_init_last", "batch", "zero_init_last"),
)


def stream_variances(
    model_name: str, x_NHWC: np.ndarray, y_N: np.ndarray, *, preact: bool, norm: str,
    residual_inits: Sequence[str], width: float = 1.0, seed: int = 0,
    stage_sizes: tuple[int, ...] | None = None, key_impl: str = "threefry2x32",
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Var of the residual stream after the stem (entry 0) and after every block, at init, for
    each of `residual_inits` (which must give the same parameter tree: one compiled forward);
    and the cross-entropy at init on labels `y_N` (the loss the first training step sees).

    BN uses the batch's statistics (train mode), as in the first training step. Variances are
    population variances over all N·H·W·C entries, in float64 on the host. `key_impl`: the
    PRNG of the init ("rbg" compiles in a fraction of threefry's time on CPU).
    """
    sizes = {"stage_sizes": stage_sizes} if stage_sizes else {}
    models = {res: MODELS.build(model_name, preact=preact, norm=norm, residual_init=res,
                                width_multiplier=width, **sizes) for res in residual_inits}

    def captured(module: Any, method: str) -> bool:
        return method == "__call__" and isinstance(module, ResidualBlock | Stem)

    def forward(v, x):
        logits, state = next(iter(models.values())).apply(
            v, x, train=True, mutable=["batch_stats", "intermediates"],
            capture_intermediates=captured)
        return state["intermediates"], softmax_cross_entropy(logits, y_N)

    forward = jax.jit(forward)
    out, losses = {}, {}
    for res, model in models.items():
        # op by op: the models of a group share their ops' compiled kernels (jit would compile
        # each model's whole init, ~0.5 s per threefry draw on XLA:CPU)
        variables = model.init(jax.random.key(seed, impl=key_impl), x_NHWC[:1], train=False)
        inter, loss = forward(variables, jnp.asarray(x_NHWC))
        names = sorted(k for k in inter if "__call__" in inter[k])  # layer_0.. in depth order
        out[res] = [float(np.var(np.asarray(inter[n]["__call__"][0], np.float64)))
                    for n in names]
        losses[res] = float(loss)
    return out, losses


def init_part(
    x_NHWC: np.ndarray, y_N: np.ndarray, model_name: str, **kwargs: Any
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """`stream_variances` (variances, losses at init) of every `INIT_VARIANTS` entry, keyed by
    label."""
    out, losses = {}, {}
    for preact, norm in dict.fromkeys((p, n) for _, p, n, _ in INIT_VARIANTS):
        labels = {res: label for label, p, n, res in INIT_VARIANTS if (p, n) == (preact, norm)}
        found, loss = stream_variances(model_name, x_NHWC, y_N, preact=preact, norm=norm,
                                       residual_inits=list(labels), **kwargs)
        out |= {labels[res]: v for res, v in found.items()}
        losses |= {labels[res]: v for res, v in loss.items()}
    order = [label for label, *_ in INIT_VARIANTS]
    return {k: out[k] for k in order}, {k: losses[k] for k in order}


def train_part(args) -> dict[str, RunResult]:
    """The four v2 runs (none with `--tiny`: a ResNet's training compile is the tests' budget;
    part 1's loss at init is the first step's)."""
    if args.tiny:
        return {}
    return {label: train_config(args, f"{norm}_{res}",
                                f"{CONFIG}:norm={norm},residual_init={res}",
                                **({"lr": NO_NORM_LR} if norm == "none" else {}))
            for label, norm, res in TRAIN_VARIANTS}


def _init_figure(variances: dict[str, list[float]], model_name: str):
    fig, axes = new_figure(2)
    v2 = {k: v for k, v in variances.items() if k.startswith("v2")}
    v1 = {k: v for k, v in variances.items() if k.startswith("v1")}
    for ax, group, title in ((axes[0], v2, "pre-activation (v2)"),
                             (axes[1], v1, "post-activation (v1), BN")):
        plot_curves(ax, {k: (list(range(len(v))), v) for k, v in group.items()},
                    xlabel="block (0 = stem output)", ylabel="Var of the residual stream",
                    title=f"{model_name} at init: {title}", logy=True)
    return fig


def collect(args) -> tuple[dict[str, Any], dict[str, RunResult]]:
    """Part 1's measurements and part 2's runs; (the numbers the report shows, the runs)."""
    if args.tiny:  # ResNet-26 (4 blocks a stage: enough to tell ×r from +c), half width
        model_name, dataset, n_images = "resnet26", "digits", 16
        # rbg: other random draws than threefry's, compiled ~3× faster (the tests' budget)
        kwargs = {"stage_sizes": (4, 4, 4), "width": 0.5, "key_impl": "rbg"}
    else:
        model_name, dataset, n_images, kwargs = "resnet110", "cifar10", 64, {}
    x_train, y_train = load_arrays(dataset, "train[:5000]" if dataset == "cifar10" else "train")
    x_float = to_float(x_train)
    pre = make_preprocessor("standardize", per_channel=True).fit(x_float)
    x = np.asarray(pre(x_float[:n_images]))
    variances, init_loss = init_part(x, np.asarray(y_train[:n_images]),
                                     "resnet20" if args.tiny else model_name, **kwargs)
    runs = train_part(args)
    blocks = len(next(iter(variances.values()))) - 1
    results = {
        "setup": {"model": model_name, "blocks": blocks, "images": n_images,
                  "dataset": dataset, "trained": bool(runs)},
        "variances": variances,
        "init_loss": init_loss,
        "runs": {k: {"train_loss": r.series("train_loss")[1].tolist(),
                     "train_loss_steps": r.series("train_loss")[0].tolist(),
                     "diverged": r.diverged,
                     "final": r.summary.get("final", {})} for k, r in runs.items()},
        "training_runs": record_runs(args, runs.values()),
    }
    return results, runs


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs E3 (or, with --report-only, reads its results.json) and writes the report; returns
    the results."""
    args = parse_experiment_args(__doc__, __file__, argv)
    report = Report("E3: residual init — MSRA vs zero_init_last", args.out,
                    command=args.command)
    results, runs = (load_results(args.out), None) if args.report_only else collect(args)
    write_report(report, results, runs)
    return results


def write_report(report: Report, results: dict[str, Any], runs: dict | None) -> None:
    """The report from `results` alone; the training figure drawn from `runs` (None:
    --report-only, the committed figure is embedded)."""
    variances = results["variances"]
    # results from before "setup" was stored are the full-size run's
    setup = results.get("setup", {"model": "resnet110", "images": 64, "dataset": "cifar10",
                                  "trained": True})
    model_name = setup["model"]
    blocks = len(next(iter(variances.values()))) - 1
    report.facts.update({
        "part 1": f"{model_name} ({blocks} blocks), {setup['images']} {setup['dataset']} "
                  "training images, per-channel standardized, seed 0",
        "part 2": "not run with --tiny" if not setup["trained"] else
                  f"resnet56 ×0.5 width on CIFAR-10 (45k train / 5k validation), {CONFIG}, "
                  f"constant lr 0.1 with BN, {NO_NORM_LR} without",
    })
    if results.get("training_runs"):
        report.facts["training runs"] = results["training_runs"]
    report.text(
        "**Claim** (SPEC §3 E3, §1.4): with the standard (MSRA/Kaiming) init each residual "
        "branch adds about as much variance as its input has, so Var(x_l) grows with depth — "
        "geometrically (×2 per block) without normalization, linearly with BN; "
        "`zero_init_last` (the last conv of each branch, or the γ of its last BN, is zero) "
        "makes every block the identity at init, Var(x + F(x)) = Var(x), which makes early "
        "training easier."
    )
    report.heading("Part 1: variance of the residual stream at init")
    stage_ends = _stage_ends(model_name)
    init_loss = results.get("init_loss", {})
    rows = []
    for label, v in variances.items():
        ratio, increment = _per_block(v, stage_ends[0])
        rows.append([label, v[0], *(v[b] for b in stage_ends), ratio, increment,
                     init_loss.get(label)])
    report.table(["variant", "stem", *(f"block {b}" for b in stage_ends),
                  "ratio per block (stage 1)", "increment per block (stage 1)",
                  "loss at init"], rows, spec=".3g")
    report.text(
        "Columns: Var after the stem and after the last block of each stage; over the blocks "
        "of stage 1 (no projection shortcut in between), the geometric mean of "
        "Var(x_l)/Var(x_{l−1}) and the mean of Var(x_l) − Var(x_{l−1}). Geometric growth "
        "shows as a ratio > 1 with increments that grow along the stage; linear growth as "
        "a steady increment; zero_init_last as ratio 1, increment 0. The no-norm prediction "
        "for a ReLU branch with Kaiming init is ×2 per block (Var F(x) = Var x). The projection "
        "shortcuts at stage boundaries (1×1 conv with Kaiming init) reset the scale there. "
        f"\"loss at init\": the cross-entropy of the net at init on these images (BN on their "
        f"statistics), what the first training step sees; chance is ln 10 = {CHANCE:.3f}"
        + ("" if init_loss else " (— : not measured when these results were made)") + "."
    )
    report.figure(_init_figure(variances, model_name), "stream_variance.png",
                  "Var of the residual stream after each block at init (log scale)")
    if results["runs"]:
        _training_section(report, results["runs"], runs)
        report.heading("Result")
        report.text(_verdict(variances, results["runs"], stage_ends))
    claims = verdicts(results)
    report.heading("Verdicts")
    report.text(verdict_table(claims))
    report_results(report, results, claims)


def _loss_series(run: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    loss = np.asarray(run["train_loss"], np.float64)
    # results from before the steps were stored logged every step from step 1
    steps = np.asarray(run.get("train_loss_steps", range(1, len(loss) + 1)), np.int64)
    return steps, loss


def _training_section(report: Report, stored: dict[str, dict], runs: dict | None) -> None:
    report.heading("Part 2: early training")
    rows = [[label, _mean_loss(r, 1, 1), _mean_loss(r, 91, 100), _last_mean(r, 10),
             None if r["diverged"] else r["final"].get("eval_accuracy"),
             None if r["diverged"] else r["final"].get("eval_loss"),
             _diverged_step(r["diverged"]) or "no"] for label, r in stored.items()]
    report.table(["run", "train loss, step 1", "train loss, steps 91–100",
                  "train loss, last 10 steps", "val accuracy (end)", "val loss (end)",
                  "diverged at step"], rows, spec=".3f")
    caption = ("Early training: train loss and validation accuracy (runs that diverged are "
               "named in the left panel)")
    if runs is None:
        report.existing_figure("early_training.png", caption)
        return
    fig, axes = new_figure(2)
    styles = {k: {"color": f"C{i}"} for i, k in enumerate(runs)}  # same color in both panels
    trained = {k: _smooth(*r.series("train_loss")) for k, r in runs.items() if not r.diverged}
    plot_curves(axes[0], trained, xlabel="step", ylabel="train loss (running mean of 10 steps)",
                styles=styles)
    # a diverged run's losses (10^3..10^5) would flatten every other curve: say them instead
    notes = [f"{k}: loss {r.series('train_loss')[1][0]:.3g} at step 1, diverged at step "
             f"{_diverged_step(r.diverged)}" for k, r in runs.items() if r.diverged]
    if notes:
        axes[0].text(0.02, 0.02, "\n".join(notes), transform=axes[0].transAxes,
                     fontsize="small", va="bottom")
    plot_curves(axes[1], {k: r.series("eval_accuracy") for k, r in runs.items()
                          if not r.diverged},
                xlabel="step", ylabel="validation accuracy", styles=styles)
    report.figure(fig, "early_training.png", caption)


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    """The claims, from part 1 (over stage 1's blocks) and part 2 (one seed: preliminary)."""
    variances, runs = results["variances"], results["runs"]
    n = _stage_ends(results.get("setup", {}).get("model", "resnet110"))[0]
    per_block = {k: _per_block(v, n) for k, v in variances.items()}
    zero = [k for k in variances if "zero_init_last" in k]
    identity = all(abs(per_block[k][0] - 1) < 1e-3 for k in zero)
    plain, bn = (variances[f"v2, {k}, standard (MSRA)"] for k in ("no norm", "BN"))
    growth = {"no norm": plain[-1] / plain[0], "BN": bn[-1] / bn[0]}  # stem → last block
    geometric = per_block["v2, no norm, standard (MSRA)"][0] > 1.3 and (
        growth["no norm"] > 10 * growth["BN"])
    steps = np.diff(bn[: n + 1])
    slower = bool(np.all(steps > 0)) and (per_block["v2, BN, standard (MSRA)"][0]
                                          < per_block["v2, no norm, standard (MSRA)"][0])
    out = [
        Verdict("zero_init_last: every block is the identity at init",
                "Var ratio per block " + ", ".join(f"{per_block[k][0]:.4f}" for k in zero),
                "reproduced" if identity else "not reproduced", n=1),
        Verdict("MSRA, no norm: the stream grows geometrically",
                f"×{per_block['v2, no norm, standard (MSRA)'][0]:.3g} per block (stage 1); "
                f"×{growth['no norm']:.3g} stem → last block (BN: ×{growth['BN']:.3g})",
                "reproduced" if geometric else "not reproduced", n=1),
        Verdict("MSRA, BN: the stream still grows, more slowly (linearly)",
                f"stage 1: ×{per_block['v2, BN, standard (MSRA)'][0]:.3g} per block, "
                f"increments {steps.min():.3g} to {steps.max():.3g}",
                "reproduced" if slower else "not reproduced", n=1),
        _init_loss_verdict(results),
    ]
    if runs:
        last = {k: _last_mean(r, 10) for k, r in runs.items()}
        val = {k: None if r["diverged"] else r["final"].get("eval_loss")
               for k, r in runs.items()}
        ahead = [f"{norm}: {fmt_loss(last[f'{norm}, zero_init_last'])} vs "
                 f"{fmt_loss(last[f'{norm}, standard'])}" for norm in ("no norm", "BN")]
        wins = sum((last[f"{norm}, zero_init_last"] or math.inf)
                   < (last[f"{norm}, standard"] or math.inf) for norm in ("no norm", "BN"))
        # the validation loss at the end may disagree with the train loss: say it
        ahead.append(f"BN validation loss at the end {fmt_loss(val['BN, zero_init_last'])} vs "
                     f"{fmt_loss(val['BN, standard'])}")
        out.append(Verdict("zero_init_last trains faster early (train loss, last 10 steps)",
                           "; ".join(ahead), ("reproduced", "partly reproduced",
                                              "not reproduced")[2 - wins], n=1))
    return out


def _init_loss_verdict(results: dict[str, Any]) -> Verdict:
    claim = "no norm: zero_init_last starts at the chance loss, MSRA far above"
    keys = ("zero_init_last", "standard (MSRA)")
    if not results.get("init_loss"):
        # results from before the loss at init was measured: the first training step's loss
        # is on other images (a training batch), so it is shown, not judged
        step1 = [_mean_loss(results["runs"][f"no norm, {k.split(' ')[0]}"], 1, 1) for k in keys]
        return Verdict(claim, "loss at init not measured in these results; train loss at step "
                       f"1: {step1[0]:.3f} vs {step1[1]:.3g} (ln 10 = {CHANCE:.3f})",
                       "not tested")
    start = [results["init_loss"][f"v2, no norm, {k}"] for k in keys]
    return Verdict(claim, f"loss at init {start[0]:.3f} vs {start[1]:.3g} (ln 10 = "
                   f"{CHANCE:.3f})", "reproduced" if abs(start[0] - CHANCE) < 0.5
                   and start[1] > CHANCE + 0.5 else "not reproduced", n=1)


def fmt_loss(value: float | None) -> str:
    return "diverged" if value is None else f"{value:.3f}"


def _smooth(steps: np.ndarray, values: np.ndarray, k: int = 10):
    """Running mean over k steps (series shorter than k are left as they are)."""
    if len(values) < k:
        return steps, values
    return steps[k - 1:], np.convolve(values, np.ones(k) / k, mode="valid")


def _mean_loss(run: dict[str, Any], first: int, last: int) -> float | None:
    """Mean train loss over steps first..last (None if the run has not got that far)."""
    steps, loss = _loss_series(run)
    chosen = loss[(steps >= first) & (steps <= last)]
    return float(chosen.mean()) if len(chosen) == last - first + 1 else None


def _last_mean(run: dict[str, Any], k: int) -> float | None:
    """Mean train loss of the last k logged steps (None: diverged, or fewer logged)."""
    loss = _loss_series(run)[1]
    return None if run["diverged"] or len(loss) < k else float(loss[-k:].mean())


def _per_block(v: Sequence[float], n: int) -> tuple[float, float]:
    """Geometric-mean ratio and mean increment of Var over the first n blocks."""
    return (v[n] / v[0]) ** (1 / n), (v[n] - v[0]) / n


def _verdict(variances: dict[str, list[float]], runs: dict[str, Any], ends: list[int]) -> str:
    per_block = {k: _per_block(v, ends[0]) for k, v in variances.items()}
    lines = ["- At init, over the first stage, Var of the residual stream changes per block by "
             + "; ".join(f"×{r:.3g} / {inc:+.3g} ({k})" for k, (r, inc) in per_block.items())
             + "; from the stem to the last block by "
             + ", ".join(f"×{v[-1] / v[0]:.3g} ({k})" for k, v in variances.items()) + "."]
    for label, r in runs.items():
        loss = _loss_series(r)[1]
        if r["diverged"]:
            lines.append(f"- {label}: loss {loss[0]:.4g} at step 1, non-finite at step "
                         f"{_diverged_step(r['diverged'])}: diverged.")
        else:
            lines.append(f"- {label}: loss {loss[0]:.3f} at step 1, {_last_mean(r, 10):.3f} "
                         f"over the last 10 steps, validation accuracy "
                         f"{r['final']['eval_accuracy']:.3f} (one seed).")
    return "\n".join(lines)


def _stage_ends(model_name: str) -> list[int]:
    depth = int(model_name.removeprefix("resnet"))
    n = (depth - 2) // 6
    return [n, 2 * n, 3 * n]


def _diverged_step(message: str | None) -> int | None:
    if not message:
        return None
    word = message.split(" at step ")[1].split(";")[0] if " at step " in message else ""
    return int(word) if word.isdigit() else math.nan


if __name__ == "__main__":
    main()
