"""A fixed patch-whitening convolution, fitted on the training images (the speed trainers' stem).

For the p×p patches P of the images (flattened in (dy, dx, c) order: D = p·p·C values each):

    μ = E[P],   Σ = E[(P − μ)(P − μ)ᵀ] = V diag(λ) Vᵀ            (λ descending)
    W = diag(λ + ε)^(−1/2) Vᵀ       basis="pca": each row a principal direction, scaled
    W = V diag(λ + ε)^(−1/2) Vᵀ     basis="zca": the same, rotated back to pixel space
    z = W (P − μ),   so   Cov(z) = diag(λ/(λ + ε)) (PCA) — the identity where λ ≫ ε
    y = [z, −z] + b                 2·D channels on the (H − p + 1) × (W − p + 1) positions

z is a convolution of the image with the D filters W (as a p×p×C×D kernel), minus the constant
Wμ. The negated copy lets the nonlinearity that follows keep both signs of every component
(airbench, Keller Jordan 2024, after the whitening of Page's DAWNBench ResNet and hlb-CIFAR10).
Each PCA direction's sign is fixed (its largest entry positive), so W is a function of Σ.
The filters are fixed, never trained (`stop_gradient`); b is a learnable offset (zeros).

Where the fit happens, and why: the layer fits W and μ in its first training call, on that
batch, and keeps them in the `batch_stats` collection with a "fitted" flag; every later call
(training or evaluation) uses them unchanged. The run assembly (`normlab.train.run`) gives a
model nothing but one example at init, and `batch_stats` is what the step already writes back,
checkpoints, restores, transfers and averages across devices, so the fit needs no change
anywhere else. The first batch is a large sample of patches (B·(H − p + 1)·(W − p + 1): 983,040
at B = 1024 on CIFAR-10) for a D×D = 12×12 covariance; it is fitted in float32 with exact
matmuls (no TF32/bf16 passes) and `eigh`. Evaluating before any training step uses W = 0.
Under `jax.jit` the fit sees the whole (sharded) batch; in the mapped modes (pmap) each device
fits its own rows and the step averages the fits across devices, as it averages BN's running
statistics (the fixed PCA signs keep the per-device filters aligned; "zca" is sign-free).

    layer = PatchWhitening(patch_size=2, eps=5e-4)
    variables = layer.init(key, x_NHWC, train=False)
    y, stats = layer.apply(variables, x_NHWC, train=True, mutable=["batch_stats"])  # fits
    y_eval = layer.apply({**variables, **stats}, x_NHWC, train=False)              # same W
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

BASES = ("pca", "zca")


def extract_patches(x_NHWC: jax.Array, patch_size: int) -> jax.Array:
    """Every p×p patch of every image, (N·H'·W', p·p·C) with H' = H − p + 1, entries in (dy, dx,
    c) order (the order of an HWIO kernel's first three axes, flattened)."""
    n, h, w, c = x_NHWC.shape
    ho, wo = h - patch_size + 1, w - patch_size + 1
    shifted = [x_NHWC[:, dy : dy + ho, dx : dx + wo, :]
               for dy in range(patch_size) for dx in range(patch_size)]
    return jnp.stack(shifted, axis=-2).reshape(n * ho * wo, patch_size * patch_size * c)


def fit_patch_whitening(
    x_NHWC: jax.Array, patch_size: int = 2, eps: float = 5e-4, basis: str = "pca"
) -> tuple[jax.Array, jax.Array]:
    """(kernel p×p×C×D, mean patch μ (D,)) whitening the patches of `x_NHWC` (module docstring),
    in float32. `kernel, mu = fit_patch_whitening(x_NHWC)`."""
    x = x_NHWC.astype(jnp.float32)
    patches_MD = extract_patches(x, patch_size)
    mu_D = jnp.mean(patches_MD, axis=0)
    centered = patches_MD - mu_D
    cov_DD = jnp.matmul(centered.T, centered, precision=lax.Precision.HIGHEST) / len(centered)
    lam, vecs = jnp.linalg.eigh(cov_DD)  # ascending
    lam, vecs = lam[::-1], vecs[:, ::-1]
    largest = jnp.argmax(jnp.abs(vecs), axis=0)
    vecs = vecs * jnp.sign(vecs[largest, jnp.arange(vecs.shape[1])])
    w_DD = vecs.T / jnp.sqrt(jnp.maximum(lam, 0.0) + eps)[:, None]  # row k: v_k/sqrt(λ_k + ε)
    if basis == "zca":
        w_DD = jnp.matmul(vecs, w_DD, precision=lax.Precision.HIGHEST)
    c = x.shape[-1]
    return w_DD.T.reshape(patch_size, patch_size, c, -1), mu_D


class PatchWhitening(nn.Module):
    """y = [z, −z] + b, z = W(P − μ) over every p×p patch P ("VALID"), W fitted on the first
    training batch (module docstring).

    Attributes:
      patch_size: p (2 in airbench).
      eps: ε added to the eigenvalues (5e-4 for per-channel standardized CIFAR-10 pixels).
      basis: "pca" or "zca" (the module docstring).
      use_bias: the learnable offset b (2·D channels, zeros at init).
      dtype: compute dtype of the convolution (None: the input's); the fit is float32.
    """

    patch_size: int = 2
    eps: float = 5e-4
    basis: str = "pca"
    use_bias: bool = True
    dtype: Any = None

    def _check(self, x: jax.Array) -> None:
        if x.ndim != 4:
            raise ValueError(f"PatchWhitening: input must be NHWC (4-D), got shape={x.shape}")
        if not isinstance(self.patch_size, int) or not 1 <= self.patch_size <= min(x.shape[1:3]):
            raise ValueError(f"PatchWhitening: patch_size must be an int in [1, image size], got "
                             f"{self.patch_size!r} for images {x.shape[1:3]}")
        if not self.eps >= 0:
            raise ValueError(f"PatchWhitening: eps must be >= 0, got eps={self.eps}")
        if self.basis not in BASES:
            raise ValueError(f"PatchWhitening: unknown basis {self.basis!r}; valid: "
                             f"{', '.join(BASES)}")

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        self._check(x)
        p, c = self.patch_size, x.shape[-1]
        d = p * p * c
        kernel = self.variable("batch_stats", "kernel", jnp.zeros, (p, p, c, d), jnp.float32)
        mean = self.variable("batch_stats", "mean", jnp.zeros, (d,), jnp.float32)
        fitted = self.variable("batch_stats", "fitted", jnp.zeros, (), jnp.float32)
        if train and not self.is_initializing():
            w, mu = lax.cond(
                fitted.value > 0,
                lambda batch: (kernel.value, mean.value),
                lambda batch: fit_patch_whitening(batch, p, self.eps, self.basis),
                x,
            )
            kernel.value, mean.value, fitted.value = w, mu, jnp.ones((), jnp.float32)
        w, mu = lax.stop_gradient(kernel.value), lax.stop_gradient(mean.value)
        dtype = self.dtype or x.dtype
        z = lax.conv_general_dilated(
            x.astype(dtype), w.astype(dtype), (1, 1), "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        offset = jnp.matmul(mu, w.reshape(d, d), precision=lax.Precision.HIGHEST)  # Wμ
        z = z - offset.astype(dtype)
        y = jnp.concatenate([z, -z], axis=-1)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (2 * d,), jnp.float32).astype(dtype)
        return y
