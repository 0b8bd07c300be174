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
  η/2·(cos(π·mod(t, c)/c) + 1) with c = ⌈T/M⌉ for M = num_snapshots cycles · triangular
  (piecewise linear, the speed trainers') η·lerp(start, 1, t/P) up to P = ⌊peak·T⌉, then
  η·lerp(1, end, (t − P)/(T − P)). `warmup_steps` > 0 prepends a linear ramp from 0 to η.

Two options of `optimizer` apply to every optimizer (`OPTIMIZER_WRAPPERS`):
  * `norm_bias_lr`: the offsets β of the norms ("bias" leaves under a "norm" module) take
    lr × norm_bias_lr (airbench's separate, 64× larger, BatchNorm-bias learning rate);
  * `lookahead` = {"every": k, "alpha": a, "power": p}: Lookahead (Zhang et al. 2019) with an
    averaging weight that grows through training, as in airbench: every k steps the slow
    weights become s ← α_t·s + (1 − α_t)·w and the weights are reset to them, α_t =
    a·(t/T)^p; at the last step T the weights are set to s. `every` 0 (or no `lookahead`): off.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
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


@SCHEDULES.register("triangular")
def triangular(
    base_lr: float, total_steps: int, peak: float = 0.23, start: float = 0.2, end: float = 0.07
) -> Schedule:
    """Piecewise linear: from η·start up to η at step P = round(peak·T), then down to η·end at T
    (the schedule of Page's DAWNBench net and airbench: peak 0.23, start 0.2, end 0.07)."""
    if not 0 <= peak <= 1 or start < 0 or end < 0:
        raise ValueError(
            f"triangular schedule: need 0 <= peak <= 1, start >= 0 and end >= 0, got "
            f"peak={peak}, start={start}, end={end}"
        )
    rise = max(round(peak * total_steps), 1)
    fall = max(total_steps - rise, 1)

    def lr(t):
        up = start + (1 - start) * jnp.minimum(t, rise) / rise
        down = 1 + (end - 1) * jnp.clip(t - rise, 0, fall) / fall
        return base_lr * jnp.where(t < rise, up, down)

    return lr


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
    name, opt_kwargs, wrappers = split_optimizer_options(optimizer)
    sched_kwargs = {k: v for k, v in schedule.items() if k != "name"}
    lr_fn = build_schedule(schedule["name"], base_lr, total_steps, **sched_kwargs)
    clip = dict(clip or {"name": "none"})
    if "decay_mask" in opt_kwargs:
        raise ValueError("optimizer.decay_mask is not a config field: decay is on kernels only")
    if "decay_mask" in inspect.signature(OPTIMIZERS.get(name)).parameters:
        opt_kwargs["decay_mask"] = decay_mask  # an optimizer with its own decay (adamw)
    parts = [
        build_clipping(clip.pop("name"), **clip),
        OPTIMIZERS.build(name, **opt_kwargs),
    ]
    if decoupled_weight_decay < 0:
        raise ValueError(f"decoupled_weight_decay must be >= 0, got {decoupled_weight_decay}")
    if decoupled_weight_decay > 0:
        parts.append(optax.add_decayed_weights(decoupled_weight_decay, mask=decay_mask))
    parts.append(optax.scale_by_learning_rate(lr_fn))
    if wrappers["norm_bias_lr"] != 1:
        # after the lr: the update of a β is −lr·scale·direction, as with its own lr
        parts.append(optax.masked(optax.scale(wrappers["norm_bias_lr"]), norm_bias_mask))
    tx = optax.chain(*parts)
    if wrappers["lookahead"].get("every", 0):
        tx = lookahead(tx, total_steps=total_steps, **wrappers["lookahead"])
    return tx, lr_fn


# options of `optimizer` that every optimizer takes (the module docstring), with their defaults
OPTIMIZER_WRAPPERS: dict[str, Any] = {"norm_bias_lr": 1.0, "lookahead": {}}
LOOKAHEAD_OPTIONS = ("every", "alpha", "power")


def split_optimizer_options(optimizer: Mapping[str, Any]) -> tuple[str, dict, dict]:
    """(name, the optimizer's own options, `OPTIMIZER_WRAPPERS` options) of an `optimizer`
    config dict; ValueError for a bad wrapper option (the optimizer's own are checked by
    `OPTIMIZERS.build`).

        split_optimizer_options({"name": "nesterov", "momentum": 0.85, "norm_bias_lr": 64.0})
        # ("nesterov", {"momentum": 0.85}, {"norm_bias_lr": 64.0, "lookahead": {}})
    """
    options = {k: v for k, v in dict(optimizer).items() if k != "name"}
    wrappers = {k: options.pop(k, default) for k, default in OPTIMIZER_WRAPPERS.items()}
    scale = wrappers["norm_bias_lr"]
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
        raise ValueError(f"optimizer.norm_bias_lr must be a number > 0, got {scale!r}")
    look = dict(wrappers["lookahead"] or {})
    if unknown := sorted(set(look) - set(LOOKAHEAD_OPTIONS)):
        raise ValueError(f"optimizer.lookahead: unknown option(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(LOOKAHEAD_OPTIONS)}")
    every = look.get("every", 0)
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ValueError(f"optimizer.lookahead.every must be an int >= 0 (0: off), got {every!r}")
    if not 0 <= look.get("alpha", 0.5) <= 1 or not look.get("power", 0.0) >= 0:
        raise ValueError(f"optimizer.lookahead: need 0 <= alpha <= 1 and power >= 0, got {look}")
    wrappers["lookahead"] = look
    return optimizer["name"], options, wrappers


def norm_bias_mask(params: Any) -> Any:
    """Pytree of bools like `params`: True for the offsets β of norm layers, the leaves named
    "bias" inside a module named "norm" (`normlab.nn.norm_act.NormAct`'s norm)."""

    def is_norm_bias(path, _) -> bool:
        keys = [getattr(k, "key", None) for k in path]
        return keys[-1] == "bias" and "norm" in keys[:-1]

    return jax.tree_util.tree_map_with_path(is_norm_bias, params)


class LookaheadState(NamedTuple):
    """`lookahead`'s state: steps taken, the slow weights and the inner optimizer's state."""

    count: jax.Array
    slow: Any
    inner: Any


def lookahead(
    inner: optax.GradientTransformation,
    *,
    total_steps: int,
    every: int = 5,
    alpha: float = 0.5,
    power: float = 0.0,
) -> optax.GradientTransformation:
    """Lookahead around `inner` (whose updates are the final ones, −lr·direction): after step t
    (counted from 1) with t mod `every` = 0, s ← α_t·s + (1 − α_t)·w and w ← s, with
    α_t = alpha·(t/T)^power the weight of the slow weights (Zhang et al.'s k = every, their
    α = 1 − α_t); after step T, w ← s. The slow weights s start as the params and
    live in the optimizer state, so they are checkpointed and resumed with it.

        tx = lookahead(optax.sgd(0.1, momentum=0.9), total_steps=1000, every=5,
                       alpha=0.95**5, power=3)      # airbench's schedule of the EMA weight
    """
    total = max(int(total_steps), 1)

    def init(params):
        return LookaheadState(jnp.zeros((), jnp.int32), params, inner.init(params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("lookahead needs the params in update(updates, state, params)")
        step_updates, inner_state = inner.update(updates, state.inner, params)
        count = state.count + 1
        done = count >= total
        sync = (count % every == 0) | done
        weight = jnp.where(done, 1.0, alpha * (count / total) ** power)

        slow = jax.tree.map(
            lambda u, s, w: jnp.where(sync, weight * s + (1 - weight) * (w + u), s).astype(s.dtype),
            step_updates, state.slow, params,
        )
        new_updates = jax.tree.map(
            lambda u, s, w: jnp.where(sync, s - w, u).astype(u.dtype), step_updates, slow, params
        )
        return new_updates, LookaheadState(count, slow, inner_state)

    return optax.GradientTransformation(init, update)
