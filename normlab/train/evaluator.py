"""Jitted measurements of a canonical state: whole-split evaluation and layer diagnostics."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from normlab.train.diagnostics import collect_preacts, layer_diagnostics
from normlab.train.state import TrainState
from normlab.train.step import eval_step


def make_evaluator(model: nn.Module) -> Callable[..., dict[str, float]]:
    """`evaluate(state, x, y, batch_size) -> {"loss", "accuracy"}` over a whole split.

    One jitted scan over padded fixed-shape batches; the padding is masked out of the sums, so
    every example counts exactly once whatever the batch size.
    """

    @jax.jit
    def scan(state, x, y, mask):
        def body(total, batch):
            out = eval_step(model, state, *batch)
            return jax.tree.map(jnp.add, total, out), None

        zeros = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
        return jax.lax.scan(body, jax.tree.map(jnp.float32, zeros), (x, y, mask))[0]

    def evaluate(state: TrainState, x: jax.Array, y: jax.Array, batch_size: int) -> dict:
        n = x.shape[0]
        batches = -(-n // batch_size)
        pad = batches * batch_size - n
        mask = jnp.concatenate([jnp.ones(n), jnp.zeros(pad)]).reshape(batches, batch_size)
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
        x = x.reshape(batches, batch_size, *x.shape[1:])
        y = jnp.pad(y, (0, pad)).reshape(batches, batch_size)
        sums = scan(state, x, y, mask)
        count = float(sums["count"])
        return {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct"]) / count}

    return evaluate


def make_diagnostics(model: nn.Module, activation: str) -> Callable[..., dict]:
    """`diagnostics(state, x) -> {"diag/<layer>/<metric>": value}` on a fixed batch, eval mode."""

    @jax.jit
    def diagnostics(state: TrainState, x: jax.Array) -> dict:
        _, variables = model.apply(state.variables(), x, train=False, mutable=["intermediates"])
        preacts = collect_preacts(variables["intermediates"])
        return layer_diagnostics(preacts, activation=activation)

    return diagnostics
