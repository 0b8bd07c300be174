"""Batch Renormalization (Ioffe 2017): a batch-dependent baseline that does better at small batch.

    from normlab.registry import NORMS
    brn = NORMS.build("batch_renorm", r_max=3.0, d_max=5.0)
    variables = brn.init(jax.random.key(0), x_NHWC)
    y, updates = brn.apply(variables, x_NHWC, train=True, mutable=["batch_stats"])
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from normlab.nn.norms import (
    NormFields,
    affine_params,
    check_epsilon,
    check_input,
    check_momentum,
    running_stats,
)
from normlab.nn.stats import moments, normalize, running_average
from normlab.registry import NORMS

Array = jnp.ndarray


@NORMS.register("batch_renorm")
class BatchRenorm(NormFields):
    """Batch Renormalization: BN whose train-mode output is corrected toward the running stats.

    Train: y = ((x − μ_B)/σ_B · r + d)·γ + β with
      σ_B = sqrt(σ²_B + ε), σ = sqrt(running var + ε),
      r = stop_gradient(clip(σ_B/σ, 1/r_max, r_max)),
      d = stop_gradient(clip((μ_B − running mean)/σ, −d_max, d_max)),
    μ_B, σ²_B the batch mean and biased variance per channel over every axis but the last
    (over the global mapped batch with `axis_name`, or per group with `axis_index_groups`, as
    BatchNorm). Eval: y = (x − running mean)/σ·γ + β. Running statistics "mean" and "var" in
    `batch_stats` follow BatchNorm's convention, new = m·old + (1 − m)·batch (m = `momentum`),
    and are not updated while initializing. r_max = 1, d_max = 0 gives BatchNorm exactly. The
    paper's warm-up (r_max from 1, d_max from 0) is a schedule the caller applies by rebuilding
    the module with new values.

        brn = BatchRenorm(r_max=3.0, d_max=5.0)
        variables = brn.init(jax.random.key(0), x_NHWC)
        y, updates = brn.apply(variables, x_NHWC, train=True, mutable=["batch_stats"])
    """

    batch_dependent = True
    has_running_stats = True

    momentum: float = 0.99
    r_max: float = 3.0
    d_max: float = 5.0
    axis_name: str | None = None
    axis_index_groups: Sequence[Sequence[int]] | None = None

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_input("BatchRenorm", x)
        check_epsilon("BatchRenorm", self.epsilon)
        check_momentum("BatchRenorm", self.momentum)
        if not self.r_max >= 1:
            raise ValueError(f"BatchRenorm: r_max must be >= 1, got r_max={self.r_max}")
        if not self.d_max >= 0:
            raise ValueError(f"BatchRenorm: d_max must be >= 0, got d_max={self.d_max}")
        channels = x.shape[-1]
        dtype = self.dtype or x.dtype
        ra_mean, ra_var = running_stats(self, channels)
        scale, bias = affine_params(self, channels)
        if not train:
            return normalize(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon, dtype)

        axis_name = None if self.is_initializing() else self.axis_name
        groups = self.axis_index_groups
        mean, var = moments(
            x, tuple(range(x.ndim - 1)), axis_name=axis_name, axis_index_groups=groups
        )
        sigma_batch = jnp.sqrt(var + self.epsilon)
        sigma_running = jnp.sqrt(ra_var.value + self.epsilon)
        r = lax.stop_gradient(jnp.clip(sigma_batch / sigma_running, 1 / self.r_max, self.r_max))
        d = lax.stop_gradient(
            jnp.clip((mean - ra_mean.value) / sigma_running, -self.d_max, self.d_max)
        )
        # ((x − μ_B)/σ_B·r + d)·γ + β is a normalization with scale r·γ and bias d·γ + β.
        gamma = jnp.ones((), r.dtype) if scale is None else scale
        beta = jnp.zeros((), r.dtype) if bias is None else bias
        y = normalize(x, mean, var, r * gamma, d * gamma + beta, self.epsilon, dtype)

        if not self.is_initializing():
            ra_mean.value = running_average(ra_mean.value, mean.reshape(channels), self.momentum)
            ra_var.value = running_average(ra_var.value, var.reshape(channels), self.momentum)
        return y
