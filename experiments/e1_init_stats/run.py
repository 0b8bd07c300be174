"""E1: activation statistics vs initialization — the lecture's 6 × 4096 demo (SPEC §3 E1).

Six fully connected layers of D = 4096 units, no biases, h_l = act(h_{l−1}·W_l), on a batch of
16 inputs x ~ N(0, 1), for tanh with W ~ N(0, 0.01²), N(0, 0.05²) and lecun_normal (std
1/sqrt(D), what the lecture calls "Xavier"), and ReLU with lecun_normal and kaiming_normal
(std sqrt(2/D)). Reports the mean and std of every layer's activations h_l over all 16·D
entries, their histograms, and the gradients after one backward pass of a fixed random upstream
gradient g ~ N(0, 1) at the last layer (L = Σ g ⊙ h_6): the std of ∂L/∂h_l and of ∂L/∂W_l.

Every statistic is measured on the five independent draws `SEEDS` of W, x and g (seed s: the
keys of jax.random.key(s); the five setups of one seed share them, so their W differ by a scale
alone) and reported as the mean over the seeds ± its 95% Student-t CI. A lecture number is
reproduced when every seed's first and last layer std (and, for a constant-std claim, every
layer's) is within `TOLERANCE` of it; partly when some seeds are.

    python experiments/e1_init_stats/run.py               # full size, ~4 min on a 2-core CPU
    python experiments/e1_init_stats/run.py --report-only  # from results.json alone
    python experiments/e1_init_stats/run.py --tiny --out /tmp/e1    # D = 1024, 2 seeds (tests)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from normlab.nn.activations import make_activation
from normlab.nn.initializers import make_initializer
from normlab.reports import Report, Verdict, fmt_mean_ci, new_figure, plot_curves, verdict_table
from normlab.reports.experiment import load_results, parse_experiment_args, report_results

# (label, activation, initializer, its options, the lecture's first→last std as in SPEC §3)
SETUPS = (
    ("tanh, W·0.01", "tanh", "normal", {"std": 0.01}, (0.49, 0.05)),
    ("tanh, W·0.05", "tanh", "normal", {"std": 0.05}, (0.85, 0.85)),
    ("tanh, Xavier (lecun_normal)", "tanh", "lecun_normal", {}, (0.63, 0.30)),
    ("ReLU, Xavier (lecun_normal)", "relu", "lecun_normal", {}, (0.58, 0.10)),
    ("ReLU, Kaiming (kaiming_normal)", "relu", "kaiming_normal", {}, (0.82, 0.82)),
)
HIST_BINS = 60
TOLERANCE = 0.03  # on a std, for "reproduced"
SEEDS = (0, 1, 2, 3, 4)  # independent draws of W, x and g
TINY_SEEDS = (0, 1)


def reproduced(std: Sequence[float], expected: tuple[float, float]) -> bool:
    """Whether first and last layer std match the lecture's (every layer, for a flat claim)."""
    first, last = expected
    checks = [abs(std[0] - first) <= TOLERANCE, abs(std[-1] - last) <= TOLERANCE]
    if first == last:
        checks += [abs(s - first) <= TOLERANCE for s in std]
    return all(checks)


def layer_stats(
    activation: str, init: str, init_kwargs: dict, *, width: int, depth: int, batch: int,
    seed: int,
) -> dict[str, Any]:
    """Forward and backward pass of the demo net for one setup; per-layer statistics.

    Returns lists over layers l = 1..depth: `mean`, `std` of h_l; `preact_std` of h_{l−1}·W_l;
    `saturated` (tanh: fraction |h| > 0.98) or `dead` (ReLU: fraction h = 0); `grad_h_std`
    (std of ∂L/∂h_l), `grad_w_std` (std of ∂L/∂W_l) and `local_grad_mean` (mean of act'(y_l));
    and `h` (the activations, for histograms, as NumPy arrays).
    """
    act = make_activation(activation)
    init_fn = make_initializer(init, **init_kwargs)
    key_x, key_g, *keys = jax.random.split(jax.random.key(seed), depth + 2)
    x = jax.random.normal(key_x, (batch, width))
    weights = [init_fn(k, (width, width)) for k in keys]
    g = jax.random.normal(key_g, (batch, width))

    def forward(weights: Sequence[jax.Array], shifts: Sequence[jax.Array]):
        # h_l + 0·shift_l: the gradient w.r.t. shift_l is ∂L/∂h_l
        h, hs, ys = x, [], []
        for w, shift in zip(weights, shifts, strict=True):
            y = h @ w
            h = act(y) + shift
            ys.append(y)
            hs.append(h)
        return jnp.sum(g * h), (hs, ys)

    shifts = [jnp.zeros((batch, width))] * depth
    grad_fn = jax.jit(jax.grad(forward, argnums=(0, 1), has_aux=True))
    (grad_w, grad_h), (hs, ys) = grad_fn(weights, shifts)
    hs = [np.asarray(h, np.float64) for h in hs]
    out: dict[str, Any] = {
        "mean": [float(h.mean()) for h in hs],
        "std": [float(h.std()) for h in hs],
        "preact_std": [float(np.std(np.asarray(y, np.float64))) for y in ys],
        "grad_h_std": [float(np.std(np.asarray(d, np.float64))) for d in grad_h],
        "grad_w_std": [float(np.std(np.asarray(d, np.float64))) for d in grad_w],
        # act'(y_l), the local gradient each unit multiplies the backward signal by
        "local_grad_mean": [
            float(np.mean(np.asarray(jax.jvp(act, (y,), (jnp.ones_like(y),))[1]))) for y in ys
        ],
        "h": hs,
    }
    if activation == "tanh":
        out["saturated"] = [float(np.mean(np.abs(h) > 0.98)) for h in hs]
    else:
        out["dead"] = [float(np.mean(h <= 0)) for h in hs]
    return out


def run(
    width: int, depth: int, batch: int, seeds: Sequence[int]
) -> tuple[dict[str, dict[str, list[list[float]]]], dict[str, list[np.ndarray]]]:
    """`layer_stats` of every setup in `SETUPS` at every seed: ({label: {statistic: one list
    over layers per seed}}, {label: the first seed's activations h_l, for the histograms})."""
    stats: dict[str, dict[str, list[list[float]]]] = {label: {} for label, *_ in SETUPS}
    h: dict[str, list[np.ndarray]] = {}
    for seed in seeds:
        for label, act, init, kw, _ in SETUPS:
            out = layer_stats(act, init, kw, width=width, depth=depth, batch=batch, seed=seed)
            h.setdefault(label, out.pop("h"))
            for name, values in out.items():
                stats[label].setdefault(name, []).append(values)
    return stats, h


def seed_mean(per_seed: Sequence[Sequence[float]]) -> list[float]:
    """The per-layer mean over seeds of a statistic stored as one list over layers per seed."""
    return np.mean(np.asarray(per_seed, np.float64), axis=0).tolist()


def _cells(per_seed: Sequence[Sequence[float]], spec: str) -> list[str]:
    """Per-layer "mean ± 95% CI" over the seeds (n is the table's, stated beside it)."""
    return [fmt_mean_ci(layer, spec, show_n=False) for layer in zip(*per_seed, strict=True)]


def seeds_reproducing(per_seed_std: Sequence[Sequence[float]],
                      expected: tuple[float, float]) -> int:
    """How many seeds' std profiles match the lecture's (`reproduced`)."""
    return sum(reproduced(std, expected) for std in per_seed_std)


def _histograms(results: dict[str, dict[str, Any]], depth: int):
    """One row per setup, one panel per layer, the x range shared along a row (so a collapse
    toward 0 shows as a narrowing histogram). ReLU rows leave out the exact zeros (about half
    of the entries), which would dwarf the rest."""
    fig, axes = new_figure(depth, len(results), panel_size=(2.1, 1.55))
    for row, (label, stats) in enumerate(results.items()):
        relu = "ReLU" in label
        values = [h.ravel()[h.ravel() > 0] if relu else h.ravel() for h in stats["h"]]
        hi = max(float(np.quantile(v, 0.999)) for v in values) if relu else 1.0
        for layer, v in enumerate(values):
            ax = axes[row * depth + layer]
            ax.hist(v, bins=HIST_BINS, range=(0.0 if relu else -1.0, hi), color=f"C{row}")
            ax.set_yticks([])
            ax.tick_params(labelsize=6)
            ax.set_title(
                f"L{layer + 1}: μ={stats['mean'][layer]:.2f} σ={stats['std'][layer]:.2f}",
                fontsize=7,
            )
            if layer == 0:
                ax.set_ylabel(label.replace(", ", ",\n"), fontsize=7)
    return fig


def write_report(report: Report, stored: dict[str, Any], h: dict[str, Any] | None) -> None:
    """The report from `stored` (results.json) alone; the histograms drawn from the first
    seed's activations `h` (None: --report-only, the committed histograms are embedded)."""
    width, depth, batch, seeds, results = (stored[k] for k in
                                           ("width", "depth", "batch", "seeds", "setups"))
    n = len(seeds)
    report.facts.update({
        "setup": f"{depth} layers × D={width}, no biases, batch {batch}, x ~ N(0, 1)",
        "seeds": f"{n} independent draws of W, x and g (seeds {', '.join(map(str, seeds))})",
        "compute time": f"{stored['compute_seconds']:.1f} s ({len(SETUPS)} setups × {n} seeds, "
                        "one forward + backward pass each)",
    })
    layers = range(1, depth + 1)
    report.text(
        "**Claim** (SPEC §3 E1, the lecture's demo): with tanh, W·0.01 makes activations (and "
        "gradients) vanish, std ≈0.49 → 0.05; W·0.05 saturates tanh, std ≈0.85 at every layer; "
        "lecun_normal (\"Xavier\", std 1/sqrt(D_in)) keeps tanh at ≈0.63 → 0.30; the same init "
        "with ReLU collapses, ≈0.58 → 0.10; Kaiming (std sqrt(2/D_in)) keeps ReLU at ≈0.82.\n\n"
        "The lecture's numbers are the std of the *activations* h_l = act(h_{l−1}·W_l) (after "
        "the nonlinearity) over all batch × unit entries, with no biases and D_in = D = 4096 "
        "for every layer including the first; this script does exactly that.\n\n"
        f"Every cell below is the mean over the n = {n} seeds ± the half-width of its 95% "
        "Student-t CI (each seed draws its own W, x and upstream gradient g; the setups of one "
        "seed share the draws, scaled)."
    )
    report.heading("Result")
    report.text(_verdict(results, width, n))
    claims = verdicts(stored)
    report.text(verdict_table(claims))
    report.text(
        f"Rule: a claim is reproduced when every seed's measured first and last layer std are "
        f"both within {TOLERANCE} of the lecture's (and, for a constant-std claim, every "
        "layer's); partly reproduced when only some seeds meet it; not reproduced when none do."
    )
    report.heading(f"Std of the activations, layer by layer (n={n})")
    rows = []
    for label, *_, expected in SETUPS:
        std = results[label]["std"]
        rows.append([label, *_cells(std, ".3f"), f"{expected[0]:.2f} → {expected[1]:.2f}",
                     f"{seeds_reproducing(std, expected)} of {n}"])
    report.table(["setup", *(f"L{i}" for i in layers), "lecture (L1 → L6)",
                  "seeds within tolerance"], rows)
    report.heading(f"Mean of the activations (n={n})")
    report.table(["setup", *(f"L{i}" for i in layers)],
                 [[label, *_cells(results[label]["mean"], ".3f")] for label, *_ in SETUPS])
    report.heading(f"Saturation (tanh: |h| > 0.98) and zeros (ReLU: h = 0) (n={n})")
    report.table(
        ["setup", "measure", *(f"L{i}" for i in layers)],
        [[label, "saturated" if "saturated" in r else "zero",
          *_cells(r.get("saturated", r.get("dead")), ".3f")] for label, r in results.items()],
    )
    report.heading(f"Gradients after one backward pass (n={n})")
    report.text(
        "Upstream gradient g ~ N(0, 1) at the last layer (L = Σ g ⊙ h_6), back-propagated. "
        "std of ∂L/∂h_l (the gradient flowing into layer l's output) and of ∂L/∂W_l."
    )
    report.table(["setup", *(f"∂h L{i}" for i in layers)],
                 [[label, *_cells(results[label]["grad_h_std"], ".3g")] for label, *_ in SETUPS])
    report.table(["setup", *(f"∂W L{i}" for i in layers)],
                 [[label, *_cells(results[label]["grad_w_std"], ".3g")] for label, *_ in SETUPS])
    report.text("Mean local gradient act'(y_l) = ∂h_l/∂y_l (tanh: 1 − h²; ReLU: 1[y > 0]):")
    report.table(["setup", *(f"L{i}" for i in layers)],
                 [[label, *_cells(results[label]["local_grad_mean"], ".3f")]
                  for label, *_ in SETUPS])

    fig, (ax_std, ax_gh, ax_gw) = new_figure(3, panel_size=(4.8, 3.8))
    curves = {stat: {k: (list(layers), seed_mean(r[stat])) for k, r in results.items()}
              for stat in ("std", "grad_h_std", "grad_w_std")}
    plot_curves(ax_std, curves["std"], xlabel="layer", ylabel="std of activations h_l",
                title="forward")
    plot_curves(ax_gh, curves["grad_h_std"], xlabel="layer", ylabel="std of ∂L/∂h_l",
                title="backward", logy=True)
    plot_curves(ax_gw, curves["grad_w_std"], xlabel="layer", ylabel="std of ∂L/∂W_l",
                title="weight gradients", logy=True)
    for ax in (ax_std, ax_gh, ax_gw):
        ax.get_legend().remove()
    fig.legend(*ax_std.get_legend_handles_labels(), loc="outside lower center", ncols=3,
               fontsize="small")
    report.heading("Plots")
    report.figure(fig, "std_by_layer.png",
                  f"Std of activations (left), of their gradients (middle, log) and of the "
                  f"weight gradients (right) by layer, means over the {n} seeds")
    caption = (f"Histograms of the activations of every layer, seed {seeds[0]} (rows: setups, "
               "columns: layers; tanh panels span [−1, 1]; ReLU panels show the positive values "
               "only, on a range shared along the row)")
    report.plot("histograms.png", caption, None if h is None else lambda: _histograms(
        {k: {"mean": r["mean"][0], "std": r["std"][0], "h": h[k]} for k, r in results.items()},
        depth))
    report_results(report, stored, claims)


def verdicts(stored: dict[str, Any]) -> list[Verdict]:
    """One claim per setup: the lecture's first → last layer std, checked on every seed."""
    results, n = stored["setups"], len(stored["seeds"])
    out = []
    for label, *_, expected in SETUPS:
        std = results[label]["std"]
        hits = seeds_reproducing(std, expected)
        first, last = ([s[i] for s in std] for i in (0, -1))
        out.append(Verdict(
            f"{label}: std {expected[0]:.2f} → {expected[1]:.2f}",
            f"measured {fmt_mean_ci(first, '.3f', show_n=False)} → "
            f"{fmt_mean_ci(last, '.3f', show_n=False)}; {hits} of {n} seeds within ±{TOLERANCE}",
            "reproduced" if hits == n else "partly reproduced" if hits else "not reproduced",
            n=n))
    return out


def _ci(values: Sequence[float], spec: str = ".3g") -> str:
    return fmt_mean_ci(values, spec, show_n=False)


def _verdict(results: dict[str, dict[str, Any]], width: int, n: int) -> str:
    ok = [label for label, *_, expected in SETUPS
          if seeds_reproducing(results[label]["std"], expected) == n]
    g = {label: [s[0] for s in r["grad_h_std"]] for label, r in results.items()}
    w05 = results["tanh, W·0.05"]
    saturated = seed_mean(w05["saturated"])
    # the spread of the weight-gradient std across layers, per seed: max / min
    spread = {k: [max(s) / min(s) for s in r["grad_w_std"]] for k, r in results.items()}
    flat = [k for k, v in spread.items() if max(v) < 1.5]
    steep = [k for k in spread if k not in flat]
    return (
        f"**{len(ok)} of {len(SETUPS)}** std profiles match the lecture's numbers within "
        f"{TOLERANCE} at the first and last layer on every one of the {n} seeds"
        + ("" if len(ok) == len(SETUPS) else
           f" (not: {'; '.join(k for k, *_ in SETUPS if k not in ok)})")
        + ". Backward, from an upstream gradient of std 1 at the last layer, the gradient "
        f"reaching layer 1 has std {_ci(g['tanh, W·0.01'])} with W·0.01 (vanishing, as the "
        f"lecture says), {_ci(g['ReLU, Xavier (lecun_normal)'])} with ReLU + Xavier (halved "
        f"second moment per layer), {_ci(g['ReLU, Kaiming (kaiming_normal)'])} with Kaiming "
        f"(kept) and {_ci(g['tanh, Xavier (lecun_normal)'])} with tanh + Xavier (means ± 95% "
        f"CI, n={n}). With W·0.05 {saturated[0]:.0%}–{saturated[-1]:.0%} of the tanh units are "
        f"saturated (|h| > 0.98; seed means) and the mean local gradient tanh' is only "
        f"{min(seed_mean(w05['local_grad_mean'])):.2f}, yet the gradient does not vanish here "
        f"(std {_ci(g['tanh, W·0.05'])} at layer 1): the large weights (std·sqrt(D) = "
        f"{0.05 * math.sqrt(width):.1f}) more than make up for it. The lecture's "
        "\"no learning\" for saturated tanh is about the local gradients, which this table "
        "confirms; the size of the back-propagated signal depends on the weights as well. "
        "The weight-gradient std varies by less than ×1.5 across layers on every seed in "
        + "; ".join(flat) + ": shrinking activations and growing back-propagated signals "
        "compensate in ∂L/∂W_l = h_{l−1}ᵀ·δ_l"
        + ("" if not steep else "; not in " + "; ".join(
            f"{k} ({_ci([s[0] for s in results[k]['grad_w_std']])} → "
            f"{_ci([s[-1] for s in results[k]['grad_w_std']])})" for k in steep)) + "."
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs E1 (or, with --report-only, reads its results.json) and writes the report; returns
    the per-setup statistics (one list over layers per seed; without histograms)."""
    args = parse_experiment_args(__doc__, __file__, argv)
    report = Report("E1: activation statistics vs initialization", args.out,
                    command=args.command)
    if args.report_only:
        stored, h = load_results(args.out), None
    else:
        width, depth, batch = (1024, 6, 16) if args.tiny else (4096, 6, 16)
        seeds = TINY_SEEDS if args.tiny else SEEDS
        start = time.perf_counter()
        setups, h = run(width, depth, batch, seeds)
        stored = {"width": width, "depth": depth, "batch": batch, "seeds": list(seeds),
                  "compute_seconds": time.perf_counter() - start, "setups": setups}
    write_report(report, stored, h)
    return stored["setups"]


if __name__ == "__main__":
    main()
