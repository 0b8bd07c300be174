"""One training step, a chunk of steps under `lax.scan`, and one evaluation step.

The step is a pure function of (state, batch); everything random comes from
`fold_in(state.rng, state.step)`, so a resumed run replays exactly the same randomness.
A chunk runs K steps in one jitted call: with the data set held on the device, the host only
sends K×B indices per call, which is what makes 50,000 small steps take seconds, not minutes.

Under `jax.jit` the same step runs on one device or a whole mesh (the compiler inserts the
gradient reductions). With `axis_name` set it is the body of a legacy `pmap` (or a `shard_map`)
over that axis: gradients, metrics and BatchNorm running statistics are averaged across devices
with explicit `pmean`s, and each device folds its index into the step's randomness.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from normlab.data.augment import POSITIONAL
from normlab.nn.losses import softmax_cross_entropy
from normlab.nn.penalties import default_decay_mask, l1_penalty, l2_penalty
from normlab.nn.proxy import proxy_weight_decay
from normlab.registry import AUGMENTATIONS
from normlab.train.state import TrainState


@dataclass(frozen=True)
class StepConfig:
    """What a step needs besides the state: the model, optimizer and loss terms.

    `prepare` turns the batch as sent into the model's input on the device (the streamed
    encoded-image path sends uint8 and scales it here); None: sent as the model takes it.

    `train_mode=False` runs the forward pass of the step in inference mode (`train=False`:
    running BN statistics, no dropout) and keeps `batch_stats` as they are: a frozen backbone
    (`init_from.freeze_backbone`) is then exactly the fixed function it was at the end of its
    own training, in training as in evaluation.
    """

    model: nn.Module
    tx: optax.GradientTransformation
    lr_fn: Callable[[Any], Any]
    num_classes: int
    label_smoothing: float = 0.0
    l2: float = 0.0
    l1: float = 0.0
    proxy_decay: float = 0.0
    augment: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    batch_sharding: jax.sharding.Sharding | None = None
    axis_name: str | None = None
    train_mode: bool = True
    prepare: Callable[[jax.Array], jax.Array] | None = None  # on-device input transform


def augment_batch(
    key: jax.Array,
    x: jax.Array,
    y: jax.Array,
    augment: Mapping[str, Mapping[str, Any]],
    *,
    example_ids: jax.Array | None = None,
    step: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Applies the named augmentations in order; `mixup` also mixes the (soft) targets y.

    The `POSITIONAL` ones (alternating flip) also get `example_ids` (each row's index in the
    training split) and `step`; only the device-resident data path knows the indices.
    """
    for index, (name, kwargs) in enumerate(augment.items()):
        fn = AUGMENTATIONS.get(name)
        sub = jax.random.fold_in(key, index)
        if name == "mixup":
            x, y = fn(x, y, key=sub, **kwargs)
        elif name in POSITIONAL:
            if example_ids is None or step is None:
                raise ValueError(
                    f"augmentation {name!r} needs each example's index in the training split, "
                    "which only the device-resident input of one process sends: use "
                    "data.pipeline='device' on one process, or another augmentation"
                )
            x = fn(x, key=sub, example_ids=example_ids, step=step, **kwargs)
        else:
            x = fn(x, key=sub, **kwargs)
    return x, y


def _loss_terms(cfg: StepConfig, params: Any, logits: jax.Array, targets: jax.Array) -> dict:
    terms = {"ce": softmax_cross_entropy(logits, targets, label_smoothing=cfg.label_smoothing)}
    mask = default_decay_mask(params)
    if cfg.l2:
        terms["l2"] = l2_penalty(params, cfg.l2, mask)
    if cfg.l1:
        terms["l1"] = l1_penalty(params, cfg.l1, mask)
    if cfg.proxy_decay:
        terms["proxy_decay"] = 0.5 * cfg.proxy_decay * proxy_weight_decay(params)
    return terms


def train_step(
    cfg: StepConfig,
    state: TrainState,
    x: jax.Array,
    labels: jax.Array,
    example_ids: jax.Array | None = None,
    *,
    norm_metrics: bool | jax.Array = True,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD-family step on the batch (x, labels); returns the new state and its metrics.

    `norm_metrics`: whether grad_norm / update_norm / param_norm are computed (a bool, or a
    traced one: then a `lax.cond` skips them, zeros in their place); chunks compute them on
    their last step only (`_scan_steps`).

    `example_ids`: the rows' indices in the training split (for `POSITIONAL` augmentations).
    """
    step_rng = jax.random.fold_in(state.rng, state.step)
    if cfg.axis_name is not None:  # each device augments and drops out its own examples
        step_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(cfg.axis_name))
    aug_rng, dropout_rng = jax.random.split(step_rng)
    if cfg.prepare is not None:
        x = cfg.prepare(x)
    targets = jax.nn.one_hot(labels, cfg.num_classes, dtype=jnp.float32)
    x, targets = augment_batch(
        aug_rng, x, targets, cfg.augment, example_ids=example_ids, step=state.step
    )
    if cfg.batch_sharding is not None:
        x = jax.lax.with_sharding_constraint(x, cfg.batch_sharding)

    def loss_fn(params):
        variables = {**state.variables(), "params": params}
        if cfg.train_mode:
            logits, updated = cfg.model.apply(
                variables, x, train=True, rngs={"dropout": dropout_rng}, mutable=["batch_stats"]
            )
            new_stats = updated.get("batch_stats", {})
        else:
            logits, new_stats = cfg.model.apply(variables, x, train=False), state.batch_stats
        terms = _loss_terms(cfg, params, logits, targets)
        return sum(terms.values()), (logits, new_stats, terms)

    (loss, (logits, batch_stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    if cfg.axis_name is not None:
        grads, batch_stats = jax.lax.pmean((grads, batch_stats), cfg.axis_name)
    updates, opt_state = cfg.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "train_loss": loss,
        "train_accuracy": jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1)),
        "lr": cfg.lr_fn(state.step),
        **_norms(grads, updates, params, norm_metrics),
        **{f"train_{name}": value for name, value in terms.items() if name != "ce"},
    }
    if cfg.axis_name is not None:
        metrics = jax.lax.pmean(metrics, cfg.axis_name)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, metrics


NORM_METRICS = ("grad_norm", "update_norm", "param_norm")


def _norms(grads: Any, updates: Any, params: Any, when: bool | jax.Array) -> dict[str, Any]:
    def norms():
        return {name: optax.tree.norm(tree)
                for name, tree in zip(NORM_METRICS, (grads, updates, params), strict=True)}

    if isinstance(when, bool):
        return norms() if when else {}
    zeros = {name: jnp.zeros((), jnp.float32) for name in NORM_METRICS}
    return jax.lax.cond(when, norms, lambda: zeros)


def _scan_steps(
    body: Callable, state: TrainState, xs: Any, *, norms_on_last: bool = False
) -> tuple[TrainState, Any]:
    """`lax.scan(body, state, xs)`, except that a chunk of one step runs without a loop.

    XLA:CPU runs convolutions inside a while-loop body many times slower than outside one
    (jax-ml/jax#12868; measured 7-30x for a ResNet-20 step on a 2-core CPU, even for a loop of
    one trip), so conv nets on CPU train with `steps_per_call=1`, which takes this path.

    `norms_on_last`: `body(state, x, norm_metrics)` computes the `NORM_METRICS` only when
    told: on the chunk's last step, the step a log line falls on. The norms over every
    parameter cost ~19% of a small model's step (the MNIST MLP's chunk); each chunk reports its
    last step's norms at every one of its steps, so a mean over logged steps stays a mean of
    last-step norms.
    """
    steps = jax.tree_util.tree_leaves(xs)[0].shape[0]
    if steps == 1:
        x = jax.tree.map(lambda a: a[0], xs)
        state, metrics = body(state, x, True) if norms_on_last else body(state, x)
        return state, jax.tree.map(lambda m: m[None], metrics)
    if not norms_on_last:
        return jax.lax.scan(body, state, xs)
    last = jnp.arange(steps) == steps - 1
    state, metrics = jax.lax.scan(lambda s, x_last: body(s, *x_last), state, (xs, last))
    return state, {name: jnp.broadcast_to(m[-1], m.shape) if name in NORM_METRICS else m
                   for name, m in metrics.items()}


def train_chunk_from_indices(
    cfg: StepConfig,
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    indices_KB: jax.Array,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """K steps on a device-resident data set; row k of `indices_KB` is step k's batch."""

    def body(state, idx_B, norm_metrics):
        return train_step(cfg, state, jnp.take(images, idx_B, axis=0), labels[idx_B], idx_B,
                          norm_metrics=norm_metrics)

    return _scan_steps(body, state, indices_KB, norms_on_last=True)


def train_chunk_from_batches(
    cfg: StepConfig, state: TrainState, x_KB: jax.Array, labels_KB: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """K steps on K batches already assembled (the streaming input path)."""

    def body(state, batch, norm_metrics):
        return train_step(cfg, state, *batch, norm_metrics=norm_metrics)

    return _scan_steps(body, state, (x_KB, labels_KB), norms_on_last=True)


def chunk_body(cfg: StepConfig, *, from_batches: bool = False) -> Callable:
    """What `ParallelPlan.jit_chunk` compiles: `build(model, batch_sharding, axis_name)` gives
    the chunk function of `cfg` for the model the step runs (e.g. a pipelined one), on
    device-resident data (`chunk(state, images, labels, idx_KB)`) or, with `from_batches`, on
    assembled batches (`chunk(state, x_KB, labels_KB)`)."""
    chunk = train_chunk_from_batches if from_batches else train_chunk_from_indices

    def build(model: Any, batch_sharding: Any, axis_name: str | None) -> Callable:
        run_cfg = dataclasses.replace(
            cfg, model=model, batch_sharding=batch_sharding, axis_name=axis_name
        )
        return lambda *args: chunk(run_cfg, *args)

    return build


TOP5_FROM_CLASSES = 100  # top-5 accuracy is reported for data sets with at least this many


def eval_step(
    model: nn.Module,
    state: TrainState,
    x: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    prepare: Callable[[jax.Array], jax.Array] | None = None,
) -> dict[str, jax.Array]:
    """Sums of loss, correct predictions (and top-5 hits with ≥ 100 classes) and the count over
    the unmasked examples of one batch (`prepare`: as in `StepConfig`)."""
    if prepare is not None:
        x = prepare(x)
    logits = model.apply(state.variables(), x, train=False).astype(jnp.float32)
    loss = -jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(labels, logits.shape[-1]), -1)
    correct = jnp.argmax(logits, -1) == labels
    sums = {
        "loss_sum": jnp.sum(loss * mask),
        "correct": jnp.sum(correct * mask),
        "count": jnp.sum(mask),
    }
    if logits.shape[-1] >= TOP5_FROM_CLASSES:
        # the label's logit is among the 5 largest: fewer than 5 logits exceed it
        label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
        in_top5 = jnp.sum(logits > label_logit, axis=-1) < 5
        sums["correct_top5"] = jnp.sum(in_top5 * mask)
    return sums
