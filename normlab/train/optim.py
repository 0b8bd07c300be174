"""Optimizers, learning-rate schedules and gradient clipping, chosen by name (SPEC §1.6).

Every optimizer is built as `clip → direction → decoupled weight decay → × −lr(t)`, so any
optimizer can be combined with any schedule, clipping and decoupled decay:

    tx, lr_fn = build_optimizer(
        optimizer={"name": "momentum", "momentum": 0.9},
        schedule={"name": "cosine", "warmup_steps": 500},
        base_lr=0.1, total_steps=10_000, clip={"name": "norm", "max_norm": 1.0},
        decoupled_weight_decay=5e-4, decay_mask=mask_fn)

Schedules (t = step after warm-up, T = total steps after warm-up, η = base_lr):
  constant η · step η·factor^⌊t/every⌋ · exponential η·rate^(t/every) · inverse_time η/(1+k·t)
  · cosine η·(α + (1−α)·½(1+cos(πt/T))) · snapshot (alias cyclic_cosine)
  η/2·(cos(π·mod(t, c)/c) + 1) with c = ⌈T/M⌉ for M = num_snapshots cycles. `warmup_steps` > 0
  prepends a linear ramp from 0 to η.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import optax

from normlab.models.ensemble import snapshot_schedule
from normlab.registry import OPTIMIZERS, SCHEDULES

Schedule = Callable[[Any], Any]
DEFAULT_SNAPSHOTS = 5


@SCHEDULES.register("constant")
def constant(base_lr: float, total_steps: int) -> Schedule:
    """η for every step."""
    del total_steps
    return lambda t: jnp.full((), base_lr, jnp.float32)


@SCHEDULES.register("step")
def step_decay(base_lr: float, total_steps: int, every: int = 0, factor: float = 0.1) -> Schedule:
    """η·factor^⌊t/every⌋; `every=0` decays at 1/2 and 3/4 of training (a common recipe)."""
    if every < 0 or not 0 < factor <= 1:
        raise ValueError(
            f"step schedule: need every >= 0 and 0 < factor <= 1, got {every}, {factor}"
        )
    if every == 0:
        boundaries = {int(total_steps * 0.5): factor, int(total_steps * 0.75): factor}
        return optax.piecewise_constant_schedule(base_lr, boundaries)
    return lambda t: base_lr * factor ** jnp.floor(t / every)


@SCHEDULES.register("exponential")
def exponential(base_lr: float, total_steps: int, rate: float = 0.1, every: int = 0) -> Schedule:
    """η·rate^(t/every); `every=0` means over the whole run (η·rate at the end)."""
    if not 0 < rate <= 1:
        raise ValueError(f"exponential schedule: rate must be in (0, 1], got {rate}")
    every = every or max(total_steps, 1)
    return lambda t: base_lr * rate ** (t / every)


@SCHEDULES.register("inverse_time")
def inverse_time(base_lr: float, total_steps: int, k: float = 1e-3) -> Schedule:
    """η/(1 + k·t): the "1/t decay" of the lecture."""
    del total_steps
    if k < 0:
        raise ValueError(f"inverse_time schedule: k must be >= 0, got {k}")
    return lambda t: base_lr / (1.0 + k * t)


@SCHEDULES.register("cosine")
def cosine(base_lr: float, total_steps: int, alpha: float = 0.0) -> Schedule:
    """η·(α + (1−α)·½(1 + cos(π·t/T))) (Loshchilov & Hutter 2017, no restarts)."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"cosine schedule: alpha must be in [0, 1], got {alpha}")
    total = max(total_steps, 1)
    return lambda t: (
        base_lr
        * (alpha + (1 - alpha) * 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(t, total) / total)))
    )


@SCHEDULES.register("snapshot", "cyclic_cosine")
def snapshot(
    base_lr: float, total_steps: int, num_snapshots: int = DEFAULT_SNAPSHOTS
) -> Schedule:
    """Cyclic cosine of snapshot ensembles (Huang et al. 2017, eq. 2), M = num_snapshots cycles
    of c = ⌈T/M⌉ steps: η/2·(cos(π·mod(t, c)/c) + 1). The training loop saves the model at the
    end of every cycle (`snapshot_steps`) under workdir/snapshots/<step>."""
    return snapshot_schedule(total_steps, num_snapshots, base_lr)[0]


def snapshot_steps(schedule: Mapping[str, Any], total_steps: int) -> list[int]:
    """The steps whose models are snapshot-ensemble members: the end of every cycle of a
    "snapshot" schedule (shifted by its warm-up), [] for any other schedule.

        snapshot_steps({"name": "snapshot", "num_snapshots": 3}, 300)    # [100, 200, 300]
    """
    if SCHEDULES.get(schedule["name"]) is not snapshot:
        return []
    warmup = schedule.get("warmup_steps", 0)
    num = schedule.get("num_snapshots", DEFAULT_SNAPSHOTS)
    _, steps = snapshot_schedule(total_steps - warmup, num, 1.0)
    return [warmup + s for s in steps]


def build_schedule(
    name: str, base_lr: float, total_steps: int, warmup_steps: int = 0, **kwargs: Any
) -> Schedule:
    """The named schedule, with a linear warm-up of `warmup_steps` prepended."""
    if warmup_steps < 0 or warmup_steps > total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps], got {warmup_steps}")
    main = SCHEDULES.build(name, base_lr, total_steps - warmup_steps, **kwargs)
    if warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(0.0, base_lr, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])


@OPTIMIZERS.register("sgd")
def sgd() -> optax.GradientTransformation:
    """Plain SGD: w ← w − η·g."""
    return optax.identity()


@OPTIMIZERS.register("momentum")
def momentum(momentum: float = 0.9) -> optax.GradientTransformation:
    """Heavy ball: v ← μv + g; w ← w − η·v."""
    return optax.trace(decay=momentum, nesterov=False)


@OPTIMIZERS.register("nesterov")
def nesterov(momentum: float = 0.9) -> optax.GradientTransformation:
    """Nesterov momentum (Sutskever et al. 2013 form): v ← μv + g; w ← w − η·(g + μv)."""
    return optax.trace(decay=momentum, nesterov=True)


@OPTIMIZERS.register("adagrad")
def adagrad(eps: float = 1e-7, initial_accumulator: float = 0.1) -> optax.GradientTransformation:
    """AdaGrad: s ← s + g² (from s₀ = initial_accumulator); w ← w − η·g/√(s + ε) (optax's
    placement of ε: inside the root)."""
    return optax.scale_by_rss(initial_accumulator_value=initial_accumulator, eps=eps)


@OPTIMIZERS.register("rmsprop")
def rmsprop(decay: float = 0.9, eps: float = 1e-8) -> optax.GradientTransformation:
    """RMSProp: s ← ρs + (1−ρ)g² (from s₀ = 0); w ← w − η·g/√(s + ε) (optax's placement of
    ε: inside the root)."""
    return optax.scale_by_rms(decay=decay, eps=eps)


@OPTIMIZERS.register("adam")
def adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """Adam (Kingma & Ba 2015) with bias correction."""
    return optax.scale_by_adam(b1=b1, b2=b2, eps=eps)


@OPTIMIZERS.register("adamw")
def adamw(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    decay_mask: Any = None,
) -> optax.GradientTransformation:
    """AdamW (Loshchilov & Hutter 2019): Adam plus decay λ·w added after the Adam scaling, on
    the leaves `decay_mask` selects (`build_optimizer` passes the run's kernels-only mask)."""
    return optax.chain(
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.add_decayed_weights(weight_decay, mask=decay_mask),
    )


def build_clipping(name: str = "none", **kwargs: Any) -> optax.GradientTransformation:
    """Gradient clipping: "none", "norm" (global norm ≤ max_norm) or "agc" (Brock et al. 2021,
    unit-wise ‖g‖ ≤ clipping·max(‖w‖, eps))."""
    if name == "none":
        return optax.identity()
    if name == "norm":
        return optax.clip_by_global_norm(kwargs.get("max_norm", 1.0))
    if name == "agc":
        return optax.adaptive_grad_clip(kwargs.get("clipping", 0.01), kwargs.get("eps", 1e-3))
    raise ValueError(f"unknown clipping {name!r}; valid clipping names: agc, none, norm")


def build_optimizer(
    optimizer: Mapping[str, Any],
    schedule: Mapping[str, Any],
    base_lr: float,
    total_steps: int,
    clip: Mapping[str, Any] | None = None,
    decoupled_weight_decay: float = 0.0,
    decay_mask: Any = None,
) -> tuple[optax.GradientTransformation, Schedule]:
    """The optax transformation and its learning-rate function, from name-keyed dicts."""
    opt_kwargs = {k: v for k, v in optimizer.items() if k != "name"}
    sched_kwargs = {k: v for k, v in schedule.items() if k != "name"}
    lr_fn = build_schedule(schedule["name"], base_lr, total_steps, **sched_kwargs)
    clip = dict(clip or {"name": "none"})
    if "decay_mask" in opt_kwargs:
        raise ValueError("optimizer.decay_mask is not a config field: decay is on kernels only")
    if "decay_mask" in inspect.signature(OPTIMIZERS.get(optimizer["name"])).parameters:
        opt_kwargs["decay_mask"] = decay_mask  # an optimizer with its own decay (adamw)
    parts = [
        build_clipping(clip.pop("name"), **clip),
        OPTIMIZERS.build(optimizer["name"], **opt_kwargs),
    ]
    if decoupled_weight_decay < 0:
        raise ValueError(f"decoupled_weight_decay must be >= 0, got {decoupled_weight_decay}")
    if decoupled_weight_decay > 0:
        parts.append(optax.add_decayed_weights(decoupled_weight_decay, mask=decay_mask))
    parts.append(optax.scale_by_learning_rate(lr_fn))
    return optax.chain(*parts), lr_fn
