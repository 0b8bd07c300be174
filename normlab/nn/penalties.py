"""Weight penalties added to the loss: L2 ("l2") and L1 ("l1"), with a mask of decayed leaves.

    loss = data_loss + l2_penalty(params, coef=5e-4, mask=default_decay_mask)

L2 in the loss differs from *decoupled* weight decay (Loshchilov & Hutter 2019), which the
optimizer applies directly as w ← w − η·λ·w (`optax.add_decayed_weights`, `optax.adamw`): with
plain SGD the two coincide for λ = coef, with adaptive optimizers (Adam) they do not, because the
L2 gradient coef·w is rescaled by the preconditioner. `default_decay_mask` serves both: it is a
valid `mask` here and a valid `mask=` for optax's decoupled decay.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from normlab.registry import REGULARIZERS

PyTree = Any
Mask = PyTree | Callable[[tuple, jax.Array], bool] | Callable[[PyTree], PyTree]


# The param names of weight matrices (flax's Dense/Conv "kernel", Embed "embedding"): the leaves
# weight decay is for. Every other param of normlab is a per-unit or scalar one (biases, a norm's
# scale γ and offset β, FRN's threshold τ and ε, EvoNorm's v, PReLU's slope, Proxy Norm's proxy
# params, scaled WS's gain, Fixup/SkipInit scalars), whatever its shape in a given layout.
DECAYED_PARAMS = frozenset({"kernel", "embedding"})


def _leaf_name(path: tuple[Any, ...]) -> str | None:
    last = path[-1] if path else None
    return getattr(last, "key", getattr(last, "name", None))


def default_decay_mask(params: PyTree) -> PyTree:
    """Pytree of bools, same structure as `params`: True for the weight matrices (`DECAYED_PARAMS`).

    Kernels (dense (in, out), conv (k_h, k_w, c_in, c_out)) and embeddings are decayed; biases,
    the scales and offsets of norms and every other per-channel or scalar param are not:
    shrinking a norm's scale γ towards 0 changes what the layer can represent instead of
    regularizing it. Decided by each leaf's name, not its shape, so the mask is the same in every
    layout of the params: the pipeline stacks a run of layers into (layers, C) norm scales, pmap
    adds a device axis, and a shape rule would decay those.

        mask = default_decay_mask(variables["params"])
        optimizer = optax.adamw(1e-3, weight_decay=1e-4, mask=default_decay_mask)
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _leaf_name(path) in DECAYED_PARAMS, params
    )


def _num_required_args(fn: Callable) -> int:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds and p.default is inspect.Parameter.empty for p in parameters)


def _masked_leaves(params: PyTree, mask: Mask | None) -> list[jax.Array]:
    if mask is None:
        return jax.tree.leaves(params)
    if callable(mask):
        if _num_required_args(mask) == 1:  # params -> pytree of bools, the form optax accepts
            mask = mask(params)
        else:
            fn = mask
            mask = jax.tree_util.tree_map_with_path(lambda path, leaf: bool(fn(path, leaf)), params)
    chosen: list[jax.Array] = []
    # The mask may be a prefix of params: a bool at a subtree covers all of its leaves.
    jax.tree.map(lambda m, sub: chosen.extend(jax.tree.leaves(sub)) if m else None, mask, params)
    return chosen


def _check_coef(owner: str, coef: float) -> None:
    if isinstance(coef, jax.core.Tracer):  # a traced coefficient (e.g. scheduled) is trusted
        return
    if not float(coef) >= 0.0:
        raise ValueError(f"{owner}: coef must be >= 0, got coef={coef}")


@REGULARIZERS.register("l2")
def l2_penalty(params: PyTree, coef: float, mask: Mask | None = None) -> jax.Array:
    """L2 penalty coef · ½ · Σ w² over the masked leaves (all leaves when mask is None).

    The ½ makes the gradient exactly coef · w, so with SGD at learning rate η the penalty shrinks
    each weight by η·coef per step, the same as decoupled weight decay with λ = coef.
    `mask` is a pytree of bools matching (a prefix of) `params`, a function (path, leaf) -> bool
    as in `jax.tree_util.tree_map_with_path`, or a function params -> pytree of bools such as
    `default_decay_mask`. Summed in float32. Returns a float32 scalar.

        penalty = l2_penalty(variables["params"], coef=5e-4, mask=default_decay_mask)
    """
    _check_coef("l2_penalty", coef)
    total = sum(
        (jnp.sum(jnp.square(w.astype(jnp.float32))) for w in _masked_leaves(params, mask)),
        jnp.float32(0.0),
    )
    return coef * 0.5 * total


@REGULARIZERS.register("l1")
def l1_penalty(params: PyTree, coef: float, mask: Mask | None = None) -> jax.Array:
    """L1 penalty coef · Σ |w| over the masked leaves; its (sub)gradient is coef · sign(w).

    `mask` as in `l2_penalty`. Summed in float32. Returns a float32 scalar.

        penalty = l1_penalty(variables["params"], coef=1e-5, mask=default_decay_mask)
    """
    _check_coef("l1_penalty", coef)
    total = sum(
        (jnp.sum(jnp.abs(w.astype(jnp.float32))) for w in _masked_leaves(params, mask)),
        jnp.float32(0.0),
    )
    return coef * total
