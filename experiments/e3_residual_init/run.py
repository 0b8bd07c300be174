"""E3: residual-branch initialization — the residual stream's variance by depth at init, and
early training, with the standard MSRA (Kaiming) init vs `zero_init_last` (SPEC §3 E3, §1.4).

Part 1 (no training): a batch of CIFAR-10 training images (per-channel standardized) through
ResNet-110 (54 residual blocks) at init; Var of the residual stream (each block's output, over
all N·H·W·C entries) by block, for pre-activation (v2) blocks without normalization and with
BatchNorm (batch statistics, as in training), and post-activation (v1) blocks with BN.
Part 2 (training, configs/e3_residual_init.py): the first steps of ResNet-56 (width ×0.5) on
CIFAR-10 for the four v2 combinations {no norm, BN} × {standard, zero_init_last}.

    python experiments/e3_residual_init/run.py              # ~1 h on a loaded 2-core CPU
    python experiments/e3_residual_init/run.py --tiny --out /tmp/e3   # digits, seconds
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from normlab.config import load_config
from normlab.data.datasets import load_arrays
from normlab.data.preprocess import make_preprocessor
from normlab.models.resnet import ResidualBlock, Stem
from normlab.registry import MODELS
from normlab.reports import Report, describe_runs, new_figure, plot_curves, run_training
from normlab.reports.experiment import parse_experiment_args
from normlab.train.inputs import to_float

CONFIG = "configs/e3_residual_init.py"
NO_NORM_LR = 0.02  # lr 0.1 leaves the no-norm zero_init_last net stuck (dead units); see README
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
    model_name: str, x_NHWC: np.ndarray, *, preact: bool, norm: str,
    residual_inits: Sequence[str], width: float = 1.0, seed: int = 0,
    stage_sizes: tuple[int, ...] | None = None,
) -> dict[str, list[float]]:
    """Var of the residual stream after the stem (entry 0) and after every block, at init, for
    each of `residual_inits` (which must give the same parameter tree: one compiled forward).

    BN uses the batch's statistics (train mode), as in the first training step. Variances are
    population variances over all N·H·W·C entries, in float64 on the host.
    """
    sizes = {"stage_sizes": stage_sizes} if stage_sizes else {}
    models = {res: MODELS.build(model_name, preact=preact, norm=norm, residual_init=res,
                                width_multiplier=width, **sizes) for res in residual_inits}

    def captured(module: Any, method: str) -> bool:
        return method == "__call__" and isinstance(module, ResidualBlock | Stem)

    forward = jax.jit(
        lambda v, x: next(iter(models.values())).apply(
            v, x, train=True, mutable=["batch_stats", "intermediates"],
            capture_intermediates=captured)[1]["intermediates"]
    )
    out = {}
    for res, model in models.items():
        variables = model.init(jax.random.key(seed), x_NHWC[:1], train=False)
        inter = forward(variables, jnp.asarray(x_NHWC))
        names = sorted(k for k in inter if "__call__" in inter[k])  # layer_0.. in depth order
        out[res] = [float(np.var(np.asarray(inter[n]["__call__"][0], np.float64)))
                    for n in names]
    return out


def init_part(x_NHWC: np.ndarray, model_name: str, **kwargs: Any) -> dict[str, list[float]]:
    """`stream_variances` of every `INIT_VARIANTS` entry, keyed by label."""
    out = {}
    for preact, norm in dict.fromkeys((p, n) for _, p, n, _ in INIT_VARIANTS):
        labels = {res: label for label, p, n, res in INIT_VARIANTS if (p, n) == (preact, norm)}
        found = stream_variances(model_name, x_NHWC, preact=preact, norm=norm,
                                 residual_inits=list(labels), **kwargs)
        out |= {labels[res]: v for res, v in found.items()}
    return {label: out[label] for label, *_ in INIT_VARIANTS}


def train_part(args, *, tiny: bool) -> dict[str, Any]:
    runs = {}
    for label, norm, res in TRAIN_VARIANTS[:2] if tiny else TRAIN_VARIANTS:
        spec = f"{CONFIG}:norm={norm},residual_init={res}"
        if tiny:
            spec += ",dataset=digits,model=resnet20,runlocal"
        config = load_config(spec)
        if norm == "none" and not tiny:
            config.lr = NO_NORM_LR
        if tiny:
            config.model.stage_sizes = (2, 2, 2)  # ResNet-14: the tests' compile budget
        runs[label] = run_training(config, args.runs / f"{norm}_{res}", name=label,
                                   reuse=args.reuse, progress=args.progress)
    return runs


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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs E3 and writes the report; returns the variances and the runs' key numbers."""
    args = parse_experiment_args(__doc__, __file__, argv)
    report = Report("E3: residual init — MSRA vs zero_init_last", args.out,
                    command=args.command)
    if args.tiny:  # ResNet-14 (2 blocks a stage), half width: the tests' compile budget
        model_name, dataset, n_images = "resnet14", "digits", 16
        kwargs = {"stage_sizes": (2, 2, 2), "width": 0.5}
    else:
        model_name, dataset, n_images, kwargs = "resnet110", "cifar10", 64, {}
    x_train, _ = load_arrays(dataset, "train[:5000]" if dataset == "cifar10" else "train")
    x_float = to_float(x_train)
    pre = make_preprocessor("standardize", per_channel=True).fit(x_float)
    x = np.asarray(pre(x_float[:n_images]))
    variances = init_part(x, "resnet20" if args.tiny else model_name, **kwargs)
    runs = train_part(args, tiny=args.tiny)

    blocks = len(next(iter(variances.values()))) - 1
    report.facts.update({
        "part 1": f"{model_name} ({blocks} blocks), {n_images} {dataset} training images, "
                  "per-channel standardized, seed 0",
        "part 2": f"{'resnet14 ×0.25 (runlocal)' if args.tiny else 'resnet56 ×0.5 width'} on "
                  f"{'digits' if args.tiny else 'CIFAR-10 (45k train / 5k validation)'}, "
                  f"{CONFIG}",
        "training runs": describe_runs(runs.values()),
    })
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
    header = ["variant", "stem", *(f"block {b}" for b in stage_ends),
              "ratio per block (stage 1)", "increment per block (stage 1)"]
    rows = []
    for label, v in variances.items():
        ratio, increment = _per_block(v, stage_ends[0])
        rows.append([label, v[0], *(v[b] for b in stage_ends), ratio, increment])
    report.table(header, rows, spec=".3g")
    report.text(
        "Columns: Var after the stem and after the last block of each stage; over the blocks "
        "of stage 1 (no projection shortcut in between), the geometric mean of "
        "Var(x_l)/Var(x_{l−1}) and the mean of Var(x_l) − Var(x_{l−1}). Geometric growth "
        "shows as a ratio > 1 with increments that grow along the stage; linear growth as "
        "a steady increment; zero_init_last as ratio 1, increment 0. The no-norm prediction "
        "for a ReLU branch with Kaiming init is ×2 per block (Var F(x) = Var x). The projection "
        "shortcuts at stage boundaries (1×1 conv with Kaiming init) reset the scale there."
    )
    report.figure(_init_figure(variances, model_name), "stream_variance.png",
                  "Var of the residual stream after each block at init (log scale)")

    report.heading("Part 2: early training")
    rows = []
    for label, r in runs.items():
        steps, loss = r.series("train_loss")
        rows.append([
            label,
            float(loss[0]) if len(loss) else None,
            _mean_loss(r, 91, 100),
            None if r.diverged else _mean_loss(r, len(loss) - 9, len(loss)),
            None if r.diverged else r.final("eval_accuracy"),
            _diverged_step(r.diverged) or "no",
        ])
    report.table(["run", "train loss, step 1", "train loss, steps 91–100",
                  "train loss, last 10 steps", "val accuracy (end)", "diverged at step"],
                 rows, spec=".3f")
    fig, axes = new_figure(2)
    styles = {k: {"color": f"C{i}"} for i, k in enumerate(runs)}  # same color in both panels
    trained = {k: _smooth(*r.series("train_loss")) for k, r in runs.items() if not r.diverged}
    plot_curves(axes[0], trained, xlabel="step", ylabel="train loss (running mean of 10 steps)",
                styles=styles)
    # a diverged run's losses (10^3..10^5) would flatten every other curve: say them instead
    notes = [f"{k}: loss {r.series('train_loss')[1][0]:.3g} at step 1, diverged at step "
             f"{_diverged_step(r.diverged)}" for k, r in runs.items() if r.diverged]
    if notes:
        axes[0].text(0.02, 0.02, "\n".join(notes), transform=axes[0].transAxes, fontsize="small",
                     va="bottom")
    plot_curves(axes[1], {k: r.series("eval_accuracy") for k, r in runs.items()
                          if not r.diverged},
                xlabel="step", ylabel="validation accuracy", styles=styles)
    report.figure(fig, "early_training.png", "Early training: train loss and validation "
                  "accuracy (runs that diverged are named in the left panel)")
    if not args.tiny:
        report.heading("Result")
        report.text(_verdict(variances, runs, stage_ends))
    results = {
        "variances": variances,
        "runs": {k: {"train_loss": r.series("train_loss")[1].tolist(),
                     "diverged": r.diverged,
                     "final": r.summary.get("final", {})} for k, r in runs.items()},
    }
    report.save_json("results.json", results)
    print(f"wrote {report.write()}")
    return results


def _smooth(steps: np.ndarray, values: np.ndarray, k: int = 10):
    """Running mean over k steps (series shorter than k are left as they are)."""
    if len(values) < k:
        return steps, values
    return steps[k - 1:], np.convolve(values, np.ones(k) / k, mode="valid")


def _mean_loss(run, first: int, last: int) -> float | None:
    """Mean train loss over steps first..last (None if the run has not got that far)."""
    steps, loss = run.series("train_loss")
    chosen = loss[(steps >= first) & (steps <= last)]
    return float(chosen.mean()) if len(chosen) == last - first + 1 else None


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
        _, loss = r.series("train_loss")
        if r.diverged:
            lines.append(f"- {label}: loss {loss[0]:.4g} at step 1, non-finite at step "
                         f"{_diverged_step(r.diverged)}: diverged.")
        else:
            lines.append(f"- {label}: loss {loss[0]:.3f} at step 1, "
                         f"{_mean_loss(r, len(loss) - 9, len(loss)):.3f} over the last 10 "
                         f"steps, validation accuracy {r.final('eval_accuracy'):.3f}.")
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
