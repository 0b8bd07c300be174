"""Each normalization layer alone on NHWC tensors, forward and forward+backward, relative to BN.

A candidate is the unit the models are built from, `NormAct(norm, activation)`: the norm and its
activation (Proxy Norm's activation sits inside the norm; BN's follows it), in training mode
(BN updates its running statistics). The peers "flax:batch", "flax:layer" and "flax:group" are
flax.linen's BatchNorm, LayerNorm (over every non-batch axis, as normlab's) and GroupNorm followed
by the same activation. Forward+backward is the gradient of ⟨y, w⟩ for a fixed random cotangent
w with respect to the input and the parameters. All norms of one shape are timed in one
interleaved run; ratios are paired medians against "batch" and, for a norm with a flax peer in
the run, against that peer. The forward+backward call also returns y, as a training step keeps
it for the next layer.

    rows = bench_norm_ops([(128, 16, 16, 32)], ["batch", "flax:batch", "group"], repeats=10)
    rows[0]["fwd_ratio_to_flax"], rows[2]["fwd_bwd_ratio_to_batch"]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from normlab.bench.harness import paired_ratio, time_interleaved
from normlab.nn.activations import make_activation
from normlab.nn.norm_act import NormAct
from normlab.registry import NORMS

FLAX_GROUP = "flax:group"
FLAX_PEERS = {"batch": "flax:batch", "layer": "flax:layer", "group": FLAX_GROUP}
DEFAULT_NORMS = ("batch", "layer", "instance", "group", "group+proxy", "layer+proxy",
                 *FLAX_PEERS.values())
# The activations of a CIFAR ResNet-20 at batch 128 (32², 16², 8² at 16/32/64 channels),
# ImageNet-ResNet stages at batch 32 (CPU-sized: 56² at 64 channels, 14² at 256), and a late
# stage at a small spatial size, where per-example norms were slowest.
DEFAULT_SHAPES = ((128, 32, 32, 16), (128, 16, 16, 32), (128, 8, 8, 64), (32, 56, 56, 64),
                  (32, 14, 14, 256), (64, 4, 4, 512))


def norm_kwargs(norm: str, groups: int, channels: int | None = None) -> dict[str, int]:
    """{"num_groups": G} for the grouped norms (G = min(groups, channels)), {} for the others.

    Grouped: flax's GroupNorm and every norm whose class `takes_groups`.
    """
    is_flax = norm in FLAX_PEERS.values()
    if norm != FLAX_GROUP if is_flax else not NORMS.get(norm).takes_groups:
        return {}
    return {"num_groups": groups if channels is None else min(groups, channels)}


class _FlaxNormAct(nn.Module):
    """flax.linen's norm `norm` (a FLAX_PEERS value) + activation, with normlab's ε and momentum."""

    norm: str
    activation: str
    num_groups: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if self.norm == "flax:batch":
            y = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-5)(x)
        elif self.norm == "flax:layer":
            y = nn.LayerNorm(epsilon=1e-5, reduction_axes=tuple(range(1, x.ndim)))(x)
        else:
            y = nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-5)(x)
        return make_activation(self.activation)(y)


def norm_unit(norm: str, activation: str, kwargs: dict[str, Any]) -> nn.Module:
    """The module timed for `norm`: `NormAct(norm, activation)`, or flax's norm + act."""
    if norm in FLAX_PEERS.values():
        return _FlaxNormAct(norm=norm, activation=activation, **kwargs)
    NORMS.get(norm)  # an unknown name fails here, listing the valid ones
    return NormAct(norm=norm, activation=activation, norm_kwargs=kwargs)


def unit_calls(
    unit: nn.Module, x: jax.Array, cotangent: jax.Array
) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(forward, forward+backward) zero-argument calls of the jitted `unit` on x, train mode."""
    variables = unit.init(jax.random.key(0), x, train=False)
    params = variables.get("params", {})
    state = {k: v for k, v in variables.items() if k != "params"}

    def forward(params, x):
        return unit.apply({"params": params, **state}, x, train=True, mutable=["batch_stats"])

    def loss(params, x):
        y, updates = forward(params, x)
        # y is returned too: in a model the next layer reads it, so it is always materialized
        return jnp.vdot(y.astype(jnp.float32), cotangent.astype(jnp.float32)), (y, updates)

    fwd = jax.jit(forward)
    fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
    return (lambda: fwd(params, x)), (lambda: fwd_bwd(params, x))


def bench_norm_ops(
    shapes: Sequence[Sequence[int]],
    norms: Sequence[str] = DEFAULT_NORMS,
    *,
    dtype: Any = jnp.float32,
    activation: str = "relu",
    groups: int = 8,
    repeats: int = 10,
    min_sample_s: float = 0.02,
) -> list[dict[str, Any]]:
    """One row per (shape, norm): ms per call and paired ratios to "batch" and to the norm's
    flax peer (None where that candidate is not in `norms`)."""
    rows = []
    rng = np.random.default_rng(0)
    for shape in shapes:
        shape = tuple(int(s) for s in shape)
        x = jnp.asarray(rng.standard_normal(shape), dtype)
        cotangent = jnp.asarray(rng.standard_normal(shape), dtype)
        kwargs = {norm: norm_kwargs(norm, groups, shape[-1]) for norm in norms}
        calls = {norm: unit_calls(norm_unit(norm, activation, kwargs[norm]), x, cotangent)
                 for norm in norms}
        timed = {
            mode: time_interleaved({norm: calls[norm][i] for norm in norms}, repeats=repeats,
                                   min_sample_s=min_sample_s)
            for i, mode in enumerate(("fwd", "fwd_bwd"))
        }
        for norm in norms:
            row: dict[str, Any] = {"norm": norm, "norm_kwargs": kwargs[norm], "shape": list(shape),
                                   "dtype": jnp.dtype(dtype).name, "activation": activation}
            for mode, timings in timed.items():
                summary = timings[norm].summary()
                row[f"{mode}_ms"] = summary["median_ms"]
                row[f"{mode}_p10_ms"] = summary["p10_ms"]
                row[f"{mode}_p90_ms"] = summary["p90_ms"]
                row[f"{mode}_min_ms"] = summary["min_ms"]
                row[f"{mode}_ratio_to_batch"] = (
                    paired_ratio(timings[norm], timings["batch"]) if "batch" in timings else None
                )
                peer = FLAX_PEERS.get(norm)
                row[f"{mode}_ratio_to_flax"] = (
                    paired_ratio(timings[norm], timings[peer]) if peer in timings else None
                )
            rows.append(row)
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per norm and dtype over the shapes: geometric mean and maximum of the ratios to BN
    (`fwd_ratio_geomean`, `fwd_ratio_max`, ...) and to the flax peer (`fwd_flax_ratio_...`)."""
    out = []
    for norm, dtype in dict.fromkeys((r["norm"], r["dtype"]) for r in rows):
        mine = [r for r in rows if r["norm"] == norm and r["dtype"] == dtype]
        entry: dict[str, Any] = {"norm": norm, "dtype": dtype, "shapes": len(mine)}
        for mode in ("fwd", "fwd_bwd"):
            for to, infix in (("batch", ""), ("flax", "_flax")):
                ratios = [r[f"{mode}_ratio_to_{to}"] for r in mine]
                if None in ratios:
                    continue
                geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
                entry[f"{mode}{infix}_ratio_geomean"] = geomean
                entry[f"{mode}{infix}_ratio_max"] = max(ratios)
        out.append(entry)
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table: ms (median [p10–p90]) and ×BN, forward and fwd+bwd."""

    def ratio(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}×"

    lines = ["| shape (NHWC) | dtype | norm | fwd ms [p10–p90] | fwd ×BN | fwd ×flax | "
             "fwd+bwd ms [p10–p90] | fwd+bwd ×BN | fwd+bwd ×flax |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        kw = "".join(f", {k}={v}" for k, v in r["norm_kwargs"].items())
        lines.append(
            f"| {'×'.join(map(str, r['shape']))} | {r['dtype']} | {r['norm']}{kw} | "
            f"{r['fwd_ms']:.3f} [{r['fwd_p10_ms']:.3f}–{r['fwd_p90_ms']:.3f}] | "
            f"{ratio(r['fwd_ratio_to_batch'])} | {ratio(r['fwd_ratio_to_flax'])} | "
            f"{r['fwd_bwd_ms']:.3f} [{r['fwd_bwd_p10_ms']:.3f}–{r['fwd_bwd_p90_ms']:.3f}] | "
            f"{ratio(r['fwd_bwd_ratio_to_batch'])} | {ratio(r['fwd_bwd_ratio_to_flax'])} |"
        )
    return "\n".join(lines)
