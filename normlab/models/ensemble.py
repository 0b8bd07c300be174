"""Model ensembles: K independently trained models, and snapshot ensembles of one run (SPEC §1.9).

An ensemble of K members with logits f_k(x) predicts either
  average="probs":   p(y|x) = (1/K)·Σ_k softmax(f_k(x))       (returned as log p, the usual choice)
  average="logits":  f(x)   = (1/K)·Σ_k f_k(x)                (a single model's logits)
The members share one architecture, so their variables are stacked along a new leading axis and
the forward pass is a `jax.vmap` over it: one compiled program for the whole ensemble.

    model = MODELS.build("resnet20", norm="batch", num_classes=10)
    members = [train_one(seed) for seed in range(5)]           # each a variables dict
    apply_fn = lambda v, x: model.apply(v, x, train=False)
    log_p_NC = ensemble_logits(apply_fn, members, x_NHWC)      # log of the mean probability

A snapshot ensemble (Huang et al. 2017, "Snapshot Ensembles: Train 1, get M for free") gets its
members from a single run whose learning rate restarts M times (`snapshot_schedule`); the model
at the end of each cycle, where the learning rate is ~0, is one member.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

_AVERAGES = ("probs", "logits")


def stack_members(members: Sequence[Any]) -> Any:
    """Stacks K variable pytrees of one architecture into one pytree with a leading axis K.

        stacked = stack_members([v0, v1, v2])      # every leaf gets shape (3, *leaf.shape)
    """
    if len(members) == 0:
        raise ValueError("stack_members: members must hold at least one model, got 0")
    structures = {jax.tree.structure(m) for m in members}
    if len(structures) != 1:
        raise ValueError(
            f"stack_members: members must share one architecture, got {len(structures)} "
            "different pytree structures"
        )
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *members)


def ensemble_logits(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    members: Sequence[Any] | Any,
    x: jax.Array,
    *,
    average: str = "probs",
) -> jax.Array:
    """The ensemble's prediction for the batch x: mean probability (as log) or mean logits.

    average="probs":  log((1/K)·Σ_k softmax(f_k(x)))
                      = logsumexp_k(log_softmax(f_k(x))) − log K   (computed this way: stable)
    average="logits": (1/K)·Σ_k f_k(x)

    Args:
      apply_fn: `(variables, x) -> logits (N, C)` of one member, e.g.
        `lambda v, x: model.apply(v, x, train=False)`.
      members: a list/tuple of K variable pytrees, or one pytree already stacked along a
        leading axis K (`stack_members`).
      x: the input batch, shared by every member.
      average: "probs" or "logits".

    Returns:
      (N, C) float32 log-probabilities ("probs") or logits ("logits").

        log_p_NC = ensemble_logits(apply_fn, [v0, v1], x, average="probs")
    """
    if average not in _AVERAGES:
        raise ValueError(
            f"ensemble_logits: average must be one of {_AVERAGES}, got average={average!r}"
        )
    stacked = stack_members(members) if isinstance(members, list | tuple) else members
    sizes = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree.leaves(stacked)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            "ensemble_logits: every leaf of the stacked members must have the same leading "
            f"(member) axis, got leading sizes {sorted(map(str, sizes))}"
        )
    num_members = sizes.pop()
    logits_KNC = jax.vmap(lambda v: apply_fn(v, x))(stacked).astype(jnp.float32)
    if average == "logits":
        return jnp.mean(logits_KNC, axis=0)
    log_p_KNC = jax.nn.log_softmax(logits_KNC, axis=-1)
    return jax.nn.logsumexp(log_p_KNC, axis=0) - math.log(num_members)


def snapshot_schedule(
    total_steps: int, num_snapshots: int, peak_lr: float
) -> tuple[optax.Schedule, list[int]]:
    """Cyclic cosine learning rate of snapshot ensembles, and the steps to snapshot at.

    Huang et al. 2017, eq. (2), with iterations t = 1..T and M cycles of length c = ⌈T/M⌉:
        lr(t) = lr₀/2 · (cos(π·mod(t − 1, c)/c) + 1)
    An optax schedule is called with the number of updates already applied, `count` = t − 1, so
    it returns lr₀/2·(cos(π·mod(count, c)/c) + 1): lr₀ at the start of each cycle, close to 0 at
    its end. Snapshot k (k = 1..M) is the model after min(k·c, T) updates, i.e. the state at the
    end of cycle k, when the optimizer's step counter equals that number.

    Args:
      total_steps: T, the number of training updates (≥ 1).
      num_snapshots: M, the number of cycles / ensemble members (1 ≤ M, and every cycle must get
        at least one step: (M − 1)·⌈T/M⌉ < T).
      peak_lr: lr₀ > 0.

    Returns:
      (schedule, snapshot_steps).

        schedule, steps = snapshot_schedule(300, 3, 0.1)    # steps == [100, 200, 300]
        tx = optax.sgd(schedule, momentum=0.9)
    """
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(
            f"snapshot_schedule: total_steps must be an int >= 1, got total_steps={total_steps!r}"
        )
    if not isinstance(num_snapshots, int) or num_snapshots < 1:
        raise ValueError(
            "snapshot_schedule: num_snapshots must be an int >= 1, "
            f"got num_snapshots={num_snapshots!r}"
        )
    if not peak_lr > 0:
        raise ValueError(f"snapshot_schedule: peak_lr must be > 0, got peak_lr={peak_lr}")
    cycle = math.ceil(total_steps / num_snapshots)
    if (num_snapshots - 1) * cycle >= total_steps:
        raise ValueError(
            f"snapshot_schedule: num_snapshots={num_snapshots} cycles of ceil(T/M)={cycle} steps "
            f"leave the last cycle empty for total_steps={total_steps}; use fewer snapshots"
        )

    def schedule(count: jax.Array) -> jax.Array:
        phase = jnp.mod(count, cycle) / cycle
        return 0.5 * peak_lr * (jnp.cos(jnp.pi * phase) + 1.0)

    steps = [min(k * cycle, total_steps) for k in range(1, num_snapshots + 1)]
    return schedule, steps
