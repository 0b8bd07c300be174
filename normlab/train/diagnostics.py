"""Built-in diagnostics (SPEC §1.10): pure, jittable statistics of pre-activations and updates.

Models record each layer's input to the nonlinearity with `sow("intermediates", "preact", y)`
(see `normlab.nn.norm_act.NormAct`); these functions turn those arrays, and the gradients and
optimizer updates of a step, into flat scalar metrics for a metrics.jsonl line:

    _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
    preacts = collect_preacts(state["intermediates"])       # {"NormAct_0": y, ...}, depth order
    metrics = jax.jit(functools.partial(layer_diagnostics, activation="tanh"))(preacts)
    metrics |= grad_update_norms(grads, updates, params)    # updates: optax's additive deltas
    # {"diag/NormAct_0/preact_std": Array(0.63), "diag/NormAct_0/p15": ..., ...}

Every statistic is computed in float32 whatever the input dtype. Shapes are (N, ..., C): axis 0
is the example, the last axis the unit (channel or feature), everything between the positions
(H, W for images; none for dense layers). Statistics are over the batch the arrays came from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from normlab.registry import ACTIVATIONS

PREACT = "preact"
SATURATING = ("sigmoid", "tanh")
# No threshold to cross, so neither saturation nor dead units mean anything.
LINEAR = ("identity",)
DEFAULT_PERCENTILES = (15.0, 50.0, 85.0)
DEFAULT_SATURATION = 0.98


def _natural_key(path: str) -> tuple[list[Any], ...]:
    # re.split with a capturing group alternates text (even indices) and digit runs (odd
    # indices), so two keys always compare str with str and int with int.
    return tuple(
        [int(tok) if i % 2 else tok for i, tok in enumerate(re.split(r"(\d+)", part))]
        for part in path.split("/")
    )


def collect_preacts(intermediates: Mapping[str, Any]) -> dict[str, jax.Array]:
    """Flattens the sown `"preact"` entries into `{layer_path: y}`, in depth order.

    `layer_path` is the module path of the sowing module joined with "/" (the `"preact"` key
    itself is dropped), e.g. `"block_2/NormAct_1"`. A module called k > 1 times in one apply
    sows a k-tuple; its entries become `"<path>/0"`, ..., `"<path>/<k-1>"`.

    Ordering rule: paths are sorted component by component with natural number sorting (each
    component split into text and integer runs, integers compared as numbers), so "layer_10"
    comes after "layer_9" and "block_1/NormAct_10" after "block_1/NormAct_2". Flax numbers
    auto-named modules in call order ("Dense_0", "Dense_1", ...), so this is depth order for
    every model whose module names carry their index; insertion order is not used because
    `jax.jit` returns dicts with keys sorted as strings. Other sown names are ignored; no
    `"preact"` entry gives an empty dict.

    Args:
      intermediates: the `"intermediates"` collection, or the mutated-variables dict that
        `apply(..., mutable=["intermediates"])` returns (holding it under that key).

        _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
        preacts = collect_preacts(state)            # {"NormAct_0": y0, "NormAct_1": y1, ...}
    """
    if set(intermediates) == {"intermediates"}:
        intermediates = intermediates["intermediates"]
    found: dict[str, jax.Array] = {}

    def visit(node: Mapping[str, Any], prefix: tuple[str, ...]) -> None:
        for key, value in node.items():
            if key == PREACT and isinstance(value, tuple | list):
                path = "/".join(prefix)
                if len(value) == 1:
                    found[path] = value[0]
                else:
                    found.update({f"{path}/{i}": y for i, y in enumerate(value)})
            elif isinstance(value, Mapping):
                visit(value, (*prefix, str(key)))

    visit(intermediates, ())
    return {path: found[path] for path in sorted(found, key=_natural_key)}


def _check_units_last(y: jax.Array, fn: str) -> None:
    if y.ndim < 2:
        raise ValueError(f"{fn}: y must have shape (N, ..., C) with ndim >= 2, got {y.shape}")


def activation_stats(
    y: jax.Array, *, activation: str, saturation_threshold: float = DEFAULT_SATURATION
) -> dict[str, jax.Array]:
    """Statistics of one layer's pre-activation y (N, ..., C), the input to `activation`.

    Over all N·positions·C entries: `preact_mean` = E[y], `preact_std` = sqrt(E[(y − E[y])²])
    (population std), `positive_fraction` = P(y > 0). Then, by activation:

    - sigmoid, tanh: `saturated_fraction` = fraction of entries whose output lies within
      1 − t of an asymptote, t = `saturation_threshold` (default 0.98):
      sigmoid: σ(y) < 1 − t or σ(y) > t  ⇔ |y| > logit(t) = ln(t/(1 − t))  (3.892 for 0.98,
      where σ' < 0.0196, 7.8% of its peak 0.25); tanh: |tanh(y)| > t ⇔ |y| > atanh(t) (2.298 for
      0.98, where tanh' < 0.0396, 4% of its peak 1). The comparison is done on y, which is exact
      (σ and tanh are monotone) and avoids rounding σ(y) near 1.
    - identity: nothing more.
    - every other activation (relu, leaky_relu, prelu, elu, selu, gelu, gelu_tanh, silu, mish,
      ...): `dead_fraction` = fraction of units c with y[n, ..., c] ≤ 0 for every example and
      position of the batch: E_c[ max_{n,pos} y ≤ 0 ]. A dead ReLU unit never fires (output and
      gradient 0); for the smooth or leaky variants it means the unit never leaves the
      negative regime. "Dead" is relative to this batch.

        stats = activation_stats(y_NHWC, activation="relu")
        stats["dead_fraction"], stats["positive_fraction"]
    """
    _check_units_last(y, "activation_stats")
    ACTIVATIONS.get(activation)  # an unknown name raises, listing the valid ones
    if not 0.5 < saturation_threshold < 1.0:
        raise ValueError(
            "activation_stats: saturation_threshold must be in (0.5, 1), got "
            f"saturation_threshold={saturation_threshold}"
        )
    y = y.astype(jnp.float32)
    mean = jnp.mean(y)
    stats = {
        "preact_mean": mean,
        "preact_std": jnp.sqrt(jnp.mean(jnp.square(y - mean))),
        "positive_fraction": jnp.mean((y > 0).astype(jnp.float32)),
    }
    t = saturation_threshold
    if activation in SATURATING:
        cut = math.log(t / (1.0 - t)) if activation == "sigmoid" else math.atanh(t)
        stats["saturated_fraction"] = jnp.mean((jnp.abs(y) > cut).astype(jnp.float32))
    elif activation not in LINEAR:
        max_C = jnp.max(y.reshape(-1, y.shape[-1]), axis=0)
        stats["dead_fraction"] = jnp.mean((max_C <= 0).astype(jnp.float32))
    return stats


def percentiles(y: jax.Array, unit: int, q: Sequence[float] = DEFAULT_PERCENTILES) -> jax.Array:
    """The q-th percentiles of one unit's input to the nonlinearity (BN paper, Fig. 1).

    The sample is y[:, ..., unit] over every example and position of the batch; percentiles
    use linear interpolation between order statistics (NumPy's default `method="linear"`,
    Hyndman & Fan type 7): with the sorted sample x_(0..m-1), h = (m − 1)·q/100 and
    P_q = x_(⌊h⌋) + (h − ⌊h⌋)·(x_(⌊h⌋+1) − x_(⌊h⌋)). Returns a float32 array of shape (len(q),).

        p15, p50, p85 = percentiles(y_NC, unit=3)
    """
    _check_units_last(y, "percentiles")
    num_units = y.shape[-1]
    if not 0 <= unit < num_units:
        raise ValueError(f"percentiles: unit must be in [0, {num_units}), got unit={unit}")
    if not q or any(not 0.0 <= p <= 100.0 for p in q):
        raise ValueError(f"percentiles: q must be non-empty values in [0, 100], got q={q}")
    sample = y[..., unit].astype(jnp.float32).reshape(-1)
    return jnp.percentile(sample, jnp.asarray(q, jnp.float32), method="linear")


def unit_percentiles(y: jax.Array, q: Sequence[float] = DEFAULT_PERCENTILES) -> jax.Array:
    """`percentiles` of every unit at once: shape (len(q), C), row i the q[i]-th percentile of
    each unit's sample y[:, ..., c] (same interpolation), float32.

        p15_C, p50_C, p85_C = unit_percentiles(y_NC)
    """
    _check_units_last(y, "unit_percentiles")
    if not q or any(not 0.0 <= p <= 100.0 for p in q):
        raise ValueError(f"unit_percentiles: q must be non-empty values in [0, 100], got q={q}")
    sample = y.astype(jnp.float32).reshape(-1, y.shape[-1])
    return jnp.percentile(sample, jnp.asarray(q, jnp.float32), axis=0, method="linear")


def unit_names(num_units: int) -> list[str]:
    """The per-unit metric suffixes `u0`..`u9`, `u00`..`u99`, ...: zero-padded to one width so
    that string order (how `jax.jit` returns dict keys) is unit order."""
    width = len(str(num_units - 1))
    return [f"u{c:0{width}d}" for c in range(num_units)]


def _share(num: jax.Array, den: jax.Array) -> jax.Array:
    # An all-zero pre-activation has no power to share out: report 0 rather than NaN, which
    # a JSON metrics line cannot hold.
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def power_decomposition(y: jax.Array) -> dict[str, jax.Array]:
    """Per-channel power decomposition of pre-activations y (N, H, W, C) (Proxy Norm paper).

    With μ_c the channel mean over (N, H, W), μ_{n,c} and σ²_{n,c} = E_hw[(y − μ_{n,c})²] the
    instance mean and (biased) variance over (H, W), and every variance over n the population
    one, for each channel c:

        E[y²]_c = μ_c² + Var_n(μ_{n,c}) + E_n[σ²_{n,c}]

    (E[y²] = E_n[E_hw[y²]] = E_n[μ_{n,c}² + σ²_{n,c}] and E_n[μ_{n,c}] = μ_c). Per-channel terms
    (shape (C,)): `power_C` = E[y²]_c, `sq_mean_C` = μ_c², `instance_mean_var_C` = Var_n(μ_{n,c}),
    `instance_var_mean_C` = E_n[σ²_{n,c}], `instance_std_var_C` = Var_n(σ_{n,c}).

    Scalars, with P = E_c[E[y²]_c]: `power` = P; the three shares of the decomposition, which
    sum to 1: `sq_mean_share` = E_c[μ_c²]/P (channel-wise squared mean: LN's "channel-wise
    denormalization"), `instance_mean_var_share` = E_c[Var_n(μ_{n,c})]/P, `instance_var_share`
    = E_c[E_n σ²_{n,c}]/P; the variability of instance statistics across examples (their
    collapse is IN's failure mode): `instance_mean_var` = E_c[Var_n(μ_{n,c})], `instance_std_var`
    = E_c[Var_n(σ_{n,c})] and `instance_std_var_norm` = `instance_std_var`/P (dimensionless, for
    plots across depth). Shares are 0 when P = 0.

    Any (N, ..., C) shape is accepted, the middle axes being the positions. Dense (N, C) input
    is the case H = W = 1: μ_{n,c} = y_{n,c} and σ_{n,c} = 0, so the decomposition reduces to
    E[y²]_c = μ_c² + Var_n(y_{n,c}); `instance_var_share` and `instance_std_var` are then 0 by
    construction and say nothing about collapse, while `sq_mean_share` keeps its meaning.

        terms = power_decomposition(y_NHWC)
        terms["sq_mean_share"], terms["instance_std_var_norm"]
    """
    _check_units_last(y, "power_decomposition")
    y_NPC = y.astype(jnp.float32).reshape(y.shape[0], -1, y.shape[-1])
    mean_NC = jnp.mean(y_NPC, axis=1)
    var_NC = jnp.mean(jnp.square(y_NPC - mean_NC[:, None, :]), axis=1)
    std_NC = jnp.sqrt(var_NC)
    mean_C = jnp.mean(mean_NC, axis=0)
    terms = {
        "power_C": jnp.mean(jnp.square(y_NPC), axis=(0, 1)),
        "sq_mean_C": jnp.square(mean_C),
        "instance_mean_var_C": jnp.mean(jnp.square(mean_NC - mean_C), axis=0),
        "instance_var_mean_C": jnp.mean(var_NC, axis=0),
        "instance_std_var_C": jnp.mean(jnp.square(std_NC - jnp.mean(std_NC, axis=0)), axis=0),
    }
    power = jnp.mean(terms["power_C"])
    instance_mean_var = jnp.mean(terms["instance_mean_var_C"])
    instance_std_var = jnp.mean(terms["instance_std_var_C"])
    return terms | {
        "power": power,
        "sq_mean_share": _share(jnp.mean(terms["sq_mean_C"]), power),
        "instance_mean_var_share": _share(instance_mean_var, power),
        "instance_var_share": _share(jnp.mean(terms["instance_var_mean_C"]), power),
        "instance_mean_var": instance_mean_var,
        "instance_std_var": instance_std_var,
        "instance_std_var_norm": _share(instance_std_var, power),
    }


def _l2(tree: Any) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def _ratio(update_norm: jax.Array, param_norm: jax.Array) -> jax.Array:
    # A zero-initialized layer (zero_init_last, biases) has ||θ|| = 0: any move is an infinite
    # relative change, and no move is none.
    safe = jnp.where(param_norm > 0, param_norm, 1.0)
    return jnp.where(param_norm > 0, update_norm / safe, jnp.where(update_norm > 0, jnp.inf, 0.0))


def grad_update_norms(
    grads: Mapping[str, Any], updates: Mapping[str, Any], params: Mapping[str, Any]
) -> dict[str, jax.Array]:
    """L2 norms of gradients, updates and parameters, per layer and global.

    A layer is a top-level key of the `params` dict (the `variables["params"]` collection, not
    the variables dict holding it); its norm is ‖g‖ = sqrt(Σ_leaves Σ g²) over every leaf under
    it, in float32. `updates` are optax's additive updates (θ_new = θ + u), so ‖u‖ is the size of
    the step actually taken. Returns, in natural order of the layer names:
    `diag/<layer>/grad_norm`, `diag/<layer>/update_norm`, `diag/<layer>/param_norm`,
    `diag/<layer>/update_ratio` = ‖u‖/‖θ‖ (+inf when ‖θ‖ = 0 < ‖u‖, 0 when both are 0), and the
    same four over all parameters as `diag/grad_norm`, `diag/update_norm`, `diag/param_norm`,
    `diag/update_ratio` (global norm = sqrt of the sum of squared layer norms).

        updates, opt_state = tx.update(grads, opt_state, params)
        norms = grad_update_norms(grads, updates, params)   # before optax.apply_updates
    """
    structure = jax.tree_util.tree_structure(params)
    for name, tree in (("grads", grads), ("updates", updates)):
        if jax.tree_util.tree_structure(tree) != structure:
            raise ValueError(
                f"grad_update_norms: {name} must have the tree structure of params, got "
                f"{jax.tree_util.tree_structure(tree)} vs {structure}"
            )
    out: dict[str, jax.Array] = {}
    totals = {"grad_norm": 0.0, "update_norm": 0.0, "param_norm": 0.0}
    for layer in sorted(params, key=_natural_key):
        norms = {
            "grad_norm": _l2(grads[layer]),
            "update_norm": _l2(updates[layer]),
            "param_norm": _l2(params[layer]),
        }
        for key, value in norms.items():
            out[f"diag/{layer}/{key}"] = value
            totals[key] = totals[key] + jnp.square(value)
        out[f"diag/{layer}/update_ratio"] = _ratio(norms["update_norm"], norms["param_norm"])
    totals = {key: jnp.sqrt(jnp.asarray(value, jnp.float32)) for key, value in totals.items()}
    out |= {f"diag/{key}": value for key, value in totals.items()}
    out["diag/update_ratio"] = _ratio(totals["update_norm"], totals["param_norm"])
    return out


def layer_diagnostics(
    preacts: Mapping[str, jax.Array],
    *,
    activation: str,
    unit: int = 0,
    q: Sequence[float] = DEFAULT_PERCENTILES,
    saturation_threshold: float = DEFAULT_SATURATION,
    unit_layers: Sequence[str] = (),
) -> dict[str, jax.Array]:
    """Every per-layer pre-activation diagnostic as flat `diag/<layer>/<metric>` scalars.

    For each layer y of `preacts` (as from `collect_preacts`), in its order:
    - `activation_stats`: `preact_mean`, `preact_std`, `positive_fraction`, and
      `saturated_fraction` (sigmoid, tanh) or `dead_fraction` (relu-like);
    - `percentiles` of unit `unit`: `p15`, `p50`, `p85` (named `p{q:g}` for other q);
    - `power_decomposition`, for every layer: `power`, `sq_mean_share`,
      `instance_mean_var_share` (meaningful for dense layers too: channel-wise denormalization
      and across-example variance of a unit); and only for layers with more than one position
      per example (H·W > 1), where instance statistics exist: `instance_var_share`,
      `instance_std_var_norm`. The unnormalized terms are `share · power`;
    - for the layers named in `unit_layers` only (keys of `preacts`), the percentiles of every
      unit c as `p15/u017`, ... (`unit_percentiles`; suffixes from `unit_names`): C·len(q)
      more scalars a layer, so a drift can be measured over all units, not one.

    Scalars are float32 0-d arrays; the function is jittable with `activation`, `unit`, `q`,
    `saturation_threshold` and `unit_layers` static (a jitted call returns the same dict with
    its keys sorted as strings, as `jax.jit` does for every dict output).

        diag = jax.jit(functools.partial(layer_diagnostics, activation="sigmoid", unit=7))
        metrics = diag(collect_preacts(state))       # {"diag/Dense_2/p15": ..., ...}
    """
    if unknown := sorted(set(unit_layers) - set(preacts)):
        raise ValueError(
            f"layer_diagnostics: unit_layers {', '.join(unknown)} not among the layers; valid: "
            f"{', '.join(preacts)}"
        )
    out: dict[str, jax.Array] = {}
    for layer, y in preacts.items():
        stats = activation_stats(
            y, activation=activation, saturation_threshold=saturation_threshold
        )
        values = percentiles(y, unit, q)
        stats |= {f"p{p:g}": values[i] for i, p in enumerate(q)}
        power = power_decomposition(y)
        keep = ["power", "sq_mean_share", "instance_mean_var_share"]
        if math.prod(y.shape[1:-1]) > 1:
            keep += ["instance_var_share", "instance_std_var_norm"]
        stats |= {key: power[key] for key in keep}
        if layer in unit_layers:
            per_unit = unit_percentiles(y, q)
            stats |= {f"p{p:g}/{name}": per_unit[i, c] for i, p in enumerate(q)
                      for c, name in enumerate(unit_names(y.shape[-1]))}
        out |= {f"diag/{layer}/{key}": value for key, value in stats.items()}
    return out
