"""Stochastic regularizers: dropout, spatial dropout, DropConnect and stochastic depth.

Every layer here is a Linen module called as `layer(x, train=...)`. At train time it draws its
Bernoulli mask from the RNG stream "dropout" (`rngs={"dropout": key}` in `apply`); at eval it is
deterministic and needs no RNG. `rate` is the probability of *dropping* a unit (keep probability
q = 1 − rate); it must lie in [0, 1), and rate = 0 returns the input unchanged (no RNG drawn).

    layer = Dropout(rate=0.5)
    y_train = layer.apply({}, x, train=True, rngs={"dropout": jax.random.key(1)})
    y_eval = layer.apply({}, x, train=False)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from normlab.registry import REGULARIZERS

_MODES = ("inverted", "classic")


def _check_rate(owner: str, rate: float, name: str = "rate") -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{owner}: {name} must be in [0, 1), got {name}={rate}")


def _scale(x: jax.Array, keep_mask: jax.Array, scale: float) -> jax.Array:
    # Multiply in float32 (at least): 1/q rounded to bf16 would bias every kept unit.
    wide = jnp.promote_types(x.dtype, jnp.float32)
    return jnp.where(keep_mask, x.astype(wide) * scale, 0).astype(x.dtype)


def bernoulli_keep_mask(key: jax.Array, shape: Sequence[int], rate: float) -> jax.Array:
    """Boolean mask, True with probability q = 1 − rate independently per entry.

    Every layer of this module draws its mask with this function from the key it takes from the
    "dropout" stream, so a test or an analysis can redraw the same mask from the same key.

        keep = bernoulli_keep_mask(jax.random.key(0), (4, 3), rate=0.25)   # bool (4, 3)
    """
    _check_rate("bernoulli_keep_mask", rate)
    return jax.random.bernoulli(key, 1.0 - rate, tuple(shape))


@REGULARIZERS.register("dropout")
class Dropout(nn.Module):
    """Dropout (Srivastava et al. 2014) in its inverted or classic form.

    With m ~ Bernoulli(q) per unit, q = 1 − rate:
      inverted:  train  y = m ⊙ x / q        eval  y = x
      classic:   train  y = m ⊙ x            eval  y = q · x
    Both satisfy E_m[train output] = eval output, so the two forms compute the same function at
    test time up to a rescaling of the next layer's weights: a net trained with the classic form
    becomes the inverted form by multiplying the weights that read the dropped units by q (and the
    same mask then gives the same train-time output too). Inverted is the default because eval
    then needs no knowledge of the rate.

    Attributes:
      rate: probability of dropping a unit, in [0, 1).
      mode: "inverted" or "classic".

        layer = Dropout(rate=0.5, mode="classic")
        y = layer.apply({}, x, train=True, rngs={"dropout": jax.random.key(0)})
    """

    rate: float = 0.5
    mode: str = "inverted"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        _check_rate("Dropout", self.rate)
        if self.mode not in _MODES:
            raise ValueError(f"Dropout: mode must be one of {_MODES}, got mode={self.mode!r}")
        if self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        if not train:
            return x if self.mode == "inverted" else _scale(x, jnp.bool_(True), keep)
        mask = bernoulli_keep_mask(self.make_rng("dropout"), x.shape, self.rate)
        return _scale(x, mask, 1.0 / keep if self.mode == "inverted" else 1.0)


@REGULARIZERS.register("spatial_dropout")
class SpatialDropout(nn.Module):
    """Spatial dropout (Tompson et al. 2015): drops whole feature maps of an NHWC tensor.

    One m ~ Bernoulli(q) per (example n, channel c), broadcast over every spatial position:
    train y[n, h, w, c] = m[n, c] · x[n, h, w, c] / q; eval y = x (inverted scaling). Neighbouring
    pixels of a feature map are strongly correlated, so per-pixel dropout barely removes
    information; dropping the whole map does. Works for any rank ≥ 3 (N, spatial..., C).

        layer = SpatialDropout(rate=0.2)
        y_NHWC = layer.apply({}, x_NHWC, train=True, rngs={"dropout": jax.random.key(0)})
    """

    rate: float = 0.1

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        _check_rate("SpatialDropout", self.rate)
        if x.ndim < 3:
            raise ValueError(
                f"SpatialDropout: input must be (N, spatial..., C) with ndim >= 3, "
                f"got shape={x.shape}"
            )
        if self.rate == 0.0 or not train:
            return x
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
        mask = bernoulli_keep_mask(self.make_rng("dropout"), mask_shape, self.rate)
        return _scale(x, mask, 1.0 / (1.0 - self.rate))


def _dropconnect_kernel(module: nn.Module, kernel: jax.Array, train: bool) -> jax.Array:
    """The kernel a DropConnect layer uses: W ⊙ M / q at train time, W at eval."""
    if module.rate == 0.0 or not train:
        return kernel
    mask = bernoulli_keep_mask(module.make_rng("dropout"), kernel.shape, module.rate)
    # Recorded so the mask is observable: apply(..., mutable=["intermediates"]).
    module.sow("intermediates", "weight_mask", mask)
    return _scale(kernel, mask, 1.0 / (1.0 - module.rate))


@REGULARIZERS.register("dropconnect")
class DropConnectDense(nn.Module):
    """Dense layer with DropConnect (Wan et al. 2013): the random mask is on the weights.

    train  y = x @ (W ⊙ M) / q + b,  M ~ Bernoulli(q) per weight, q = 1 − rate
    eval   y = x @ W + b            (E[W ⊙ M / q] = W; Wan et al.'s Gaussian moment-matching
                                     inference is replaced by this mean-weight rule)
    One mask M is drawn per step and shared by every example of the batch: a mask per example
    would materialize N masked copies of W (N× the weight memory and a batched matmul instead of
    one GEMM). The bias is not masked. The mask is sown as intermediates/"weight_mask".

    Attributes:
      features: output width.
      rate: probability of dropping a weight, in [0, 1).
      use_bias: whether to add a bias b.
      dtype: computation/output dtype; None means the input's dtype.
      param_dtype: dtype of W and b.
      kernel_init, bias_init: initializers of W (in_features, features) and b (features,).

        layer = DropConnectDense(features=10, rate=0.5)
        variables = layer.init(jax.random.key(0), x_NC, train=False)
        y = layer.apply(variables, x_NC, train=True, rngs={"dropout": jax.random.key(1)})
    """

    features: int
    rate: float = 0.5
    use_bias: bool = True
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        _check_rate("DropConnectDense", self.rate)
        if self.features < 1:
            raise ValueError(f"DropConnectDense: features must be >= 1, got {self.features}")
        dtype = self.dtype or x.dtype
        kernel = self.param(
            "kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype
        )
        kernel = _dropconnect_kernel(self, kernel, train)
        y = jnp.dot(x.astype(dtype), kernel.astype(dtype))
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            y = y + bias.astype(dtype)
        return y


@REGULARIZERS.register("dropconnect_conv")
class DropConnectConv(nn.Module):
    """2-D convolution (NHWC input, HWIO kernel) with DropConnect on the kernel.

    train  y = conv(x, K ⊙ M / q) + b,  M ~ Bernoulli(q) per kernel entry, q = 1 − rate
    eval   y = conv(x, K) + b
    As in `DropConnectDense`, one mask per step is shared by the batch (per-example masks would
    cost N× the kernel memory and turn one convolution into N), and it is sown as
    intermediates/"weight_mask".

    Attributes:
      features: output channels.
      kernel_size: (k_h, k_w).
      rate: probability of dropping a kernel entry, in [0, 1).
      strides: (s_h, s_w).
      padding: "SAME", "VALID" or ((top, bottom), (left, right)).
      use_bias, dtype, param_dtype, kernel_init, bias_init: as in `DropConnectDense`.

        layer = DropConnectConv(features=16, kernel_size=(3, 3), rate=0.3)
        variables = layer.init(jax.random.key(0), x_NHWC, train=False)
        y = layer.apply(variables, x_NHWC, train=True, rngs={"dropout": jax.random.key(1)})
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    rate: float = 0.5
    strides: tuple[int, int] = (1, 1)
    padding: str | Sequence[tuple[int, int]] = "SAME"
    use_bias: bool = True
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        _check_rate("DropConnectConv", self.rate)
        if x.ndim != 4:
            raise ValueError(f"DropConnectConv: input must be NHWC (4-D), got shape={x.shape}")
        if self.features < 1 or len(self.kernel_size) != 2 or min(self.kernel_size) < 1:
            raise ValueError(
                f"DropConnectConv: need features >= 1 and a 2-D kernel_size of positive ints, "
                f"got features={self.features}, kernel_size={self.kernel_size}"
            )
        dtype = self.dtype or x.dtype
        shape_HWIO = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape_HWIO, self.param_dtype)
        kernel = _dropconnect_kernel(self, kernel, train)
        y = jax.lax.conv_general_dilated(
            x.astype(dtype),
            kernel.astype(dtype),
            window_strides=tuple(self.strides),
            padding=self.padding if isinstance(self.padding, str) else tuple(self.padding),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            y = y + bias.astype(dtype)
        return y


@REGULARIZERS.register("stochastic_depth")
class StochasticDepth(nn.Module):
    """Stochastic depth (Huang et al. 2016), applied to a residual branch's output f(x).

    train  y[n] = b[n] · f(x)[n] / q,  b[n] ~ Bernoulli(q) once per example n, q = 1 − rate
    eval   y = f(x)
    so a residual block computes x + StochasticDepth(rate)(f(x), train=train) and, for each
    example independently, reduces to the identity with probability `rate`. Survivors are
    rescaled at train time (the "inverted" form used by modern implementations) rather than
    scaling f(x) by q at test time as in the paper; the two agree in expectation. Per-block
    rates following the paper's linear rule come from `linear_depth_rates`.

        drop = StochasticDepth(rate=0.2)
        y = x + drop.apply({}, branch_out, train=True, rngs={"dropout": jax.random.key(0)})
    """

    rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        _check_rate("StochasticDepth", self.rate)
        if x.ndim < 1:
            raise ValueError("StochasticDepth: input needs a leading batch axis, got a scalar")
        if self.rate == 0.0 or not train:
            return x
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = bernoulli_keep_mask(self.make_rng("dropout"), mask_shape, self.rate)
        return _scale(x, mask, 1.0 / (1.0 - self.rate))


def linear_depth_rates(num_blocks: int, final_rate: float) -> list[float]:
    """Huang et al.'s linear decay rule: block l = 1..L drops with rate_l = (l / L) · final_rate.

    (Equivalently survival p_l = 1 − (l / L)(1 − p_L).) The input side is almost always kept,
    the last block is dropped with `final_rate` (0.5 in the paper).

        linear_depth_rates(4, 0.5)        # [0.125, 0.25, 0.375, 0.5]
    """
    if not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"linear_depth_rates: num_blocks must be an int >= 1, got {num_blocks!r}")
    _check_rate("linear_depth_rates", final_rate, "final_rate")
    return [final_rate * block / num_blocks for block in range(1, num_blocks + 1)]
