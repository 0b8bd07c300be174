"""Jitted measurements of a canonical state: whole-split evaluation and layer diagnostics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from normlab.train.diagnostics import collect_preacts, layer_diagnostics
from normlab.train.state import TrainState
from normlab.train.step import eval_step

PAD_LABEL = -1  # the label of a padding row in `padded_batches`


def padded_batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A whole split (N, ...), (N,) cut into K = ceil(N / batch_size) batches (K, batch_size,
    ...), (K, batch_size): the last one padded with zero rows labelled `PAD_LABEL` (host)."""
    n = len(y)
    batches = -(-n // batch_size)
    pad = batches * batch_size - n
    x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    y = np.concatenate([y, np.full(pad, PAD_LABEL, y.dtype)])
    return x.reshape(batches, batch_size, *x.shape[1:]), y.reshape(batches, batch_size)


def make_evaluator(model: nn.Module, prepare: Callable | None = None) -> Callable[..., dict]:
    """`evaluate(state, x, y, batch_size) -> {"loss", "accuracy", ...}` over a whole split.

    One jitted scan over padded fixed-shape batches; the padding is masked out of the sums, so
    every example counts exactly once whatever the batch size. x, y: the whole split (N, ...),
    (N,), padded here to batches of `batch_size`; or already cut by `padded_batches` (K, b, ...),
    (K, b) — e.g. placed with each batch sharded over the devices — and `batch_size` unused.
    """

    @jax.jit
    def scan(state, x, y, mask):
        def body(total, batch):
            out = eval_step(model, state, *batch, prepare)
            return jax.tree.map(jnp.add, total, out), None

        shapes = jax.eval_shape(lambda: eval_step(model, state, x[0], y[0], mask[0], prepare))
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)
        return jax.lax.scan(body, zeros, (x, y, mask))[0]

    def evaluate(state: TrainState, x: jax.Array, y: jax.Array, batch_size: int) -> dict:
        if y.ndim == 2:  # cut by `padded_batches`
            mask = (y != PAD_LABEL).astype(jnp.float32)
            return eval_metrics(jax.device_get(scan(state, x, jnp.maximum(y, 0), mask)))
        n = x.shape[0]
        batches = -(-n // batch_size)
        pad = batches * batch_size - n
        mask = jnp.concatenate([jnp.ones(n), jnp.zeros(pad)]).reshape(batches, batch_size)
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
        x = x.reshape(batches, batch_size, *x.shape[1:])
        y = jnp.pad(y, (0, pad)).reshape(batches, batch_size)
        return eval_metrics(jax.device_get(scan(state, x, y, mask)))

    return evaluate


def eval_metrics(sums: dict) -> dict[str, float]:
    """{"loss", "accuracy", ("top5_accuracy"), "examples"} from the masked sums of `eval_step`
    (`examples`: how many examples the evaluation covered, each exactly once)."""
    count = float(sums["count"])
    metrics = {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct"]) / count}
    if "correct_top5" in sums:
        metrics["top5_accuracy"] = float(sums["correct_top5"]) / count
    metrics["examples"] = count
    return metrics


def make_batch_evaluator(model: nn.Module, prepare: Callable | None = None) -> Callable[..., dict]:
    """`evaluate(state, batches) -> metrics` over an iterator of padded (x, labels, mask)
    batches (the streamed path: the split never sits on the devices whole)."""
    step = jax.jit(lambda state, x, y, mask: eval_step(model, state, x, y, mask, prepare))

    def evaluate(state: TrainState, batches) -> dict[str, float]:
        total = None
        for x, y, mask in batches:
            sums = step(state, x, y, mask)
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
        if total is None:
            raise ValueError("evaluation on an empty split")
        return eval_metrics(jax.device_get(total))

    return evaluate


def make_diagnostics(
    model: nn.Module,
    activation: str,
    prepare: Callable | None = None,
    unit_layers: Sequence[str] = (),
) -> Callable[..., dict]:
    """`diagnostics(state, x) -> {"diag/<layer>/<metric>": value}` on a fixed batch, eval mode;
    the layers in `unit_layers` also with every unit's percentiles (`layer_diagnostics`)."""
    unit_layers = tuple(unit_layers)

    @jax.jit
    def diagnostics(state: TrainState, x: jax.Array) -> dict:
        if prepare is not None:
            x = prepare(x)
        _, variables = model.apply(state.variables(), x, train=False, mutable=["intermediates"])
        preacts = collect_preacts(variables["intermediates"])
        return layer_diagnostics(preacts, activation=activation, unit_layers=unit_layers)

    return diagnostics
