"""SpeedNet: the small VGG-like net of the CIFAR-10 speed trainers (airbench94-class).

    stem     y = act([z, −z] + b), z = W(P − μ) the fixed 2×2 patch whitening ("VALID": 32 → 31)
             (`normlab.nn.patch_whitening`; stem="conv": a trained 2×2 conv of the same width)
    block i  conv 3×3 (widths[i]) → max-pool 2×2 → norm → act → conv 3×3 → norm → act
    head     global max-pool → Dense (no bias) → × logit_scale

The pools take the floor of odd sizes ("VALID": 31 → 15 → 7 → 3), and the first norm of a
block follows the pool, so it normalizes a quarter of the pixels. With the defaults (widths 64,
256, 256; BatchNorm without a learnable scale; GELU; logits × 1/9) this is airbench94's net
(Keller Jordan 2024) written from its description. `norm` is any registered norm (E13 swaps in
group / layer / proxy / FRN / EvoNorm / ghost BN).

Test-time augmentation (`tta`, evaluation only, `train=False`): the logits are the weighted
mean of the logits of several views of each image (`tta_views`), all run as one batch:
  "none"            the image
  "flip"            ½ the image + ½ its mirror
  "flip_translate"  ½ (the "flip" pair) + ¼ each of the "flip" pairs of the image translated
                    by one pixel down-right and up-left (reflect-padded): 6 views

    from normlab.registry import MODELS
    model = MODELS.build("speednet", norm="batch",
                         norm_kwargs={"momentum": 0.4, "use_scale": False}, tta="flip_translate")
    variables = model.init(jax.random.key(0), x_N32x32x3, train=False)
    logits, stats = model.apply(variables, x_N32x32x3, train=True, mutable=["batch_stats"])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from normlab.models import HEAD, build_initializer, compute_input, float32_logits, layer_name
from normlab.models.cnn import ConvNormAct, check_nhwc, conv_layer
from normlab.nn.activations import make_activation
from normlab.nn.norm_act import NormAct
from normlab.nn.patch_whitening import PatchWhitening
from normlab.registry import CONVOLUTIONS, MODELS

STEMS = ("patch_whitening", "conv")
TTA_MODES = ("none", "flip", "flip_translate")


def tta_views(x_NHWC: jax.Array, mode: str) -> tuple[jax.Array, tuple[float, ...]]:
    """(views (V, N, H, W, C), their weights (V,), summing to 1) of test-time augmentation
    `mode` (module docstring). `views, weights = tta_views(x_NHWC, "flip")`."""
    if mode not in TTA_MODES:
        raise ValueError(f"SpeedNet: unknown tta {mode!r}; valid: {', '.join(TTA_MODES)}")
    flip = lambda a: a[:, :, ::-1, :]  # noqa: E731
    if mode == "none":
        return x_NHWC[None], (1.0,)
    if mode == "flip":
        return jnp.stack([x_NHWC, flip(x_NHWC)]), (0.5, 0.5)
    _, h, w, _ = x_NHWC.shape
    padded = jnp.pad(x_NHWC, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    down_right, up_left = padded[:, :h, :w], padded[:, 2:, 2:]
    views = [x_NHWC, flip(x_NHWC), down_right, flip(down_right), up_left, flip(up_left)]
    return jnp.stack(views), (0.25, 0.25, 0.125, 0.125, 0.125, 0.125)


def max_pool_valid(x_NHWC: jax.Array) -> jax.Array:
    """2×2 max-pool, stride 2, floor of odd sizes (31 → 15)."""
    return nn.max_pool(x_NHWC, (2, 2), strides=(2, 2), padding="VALID")


class ConvPoolNormAct(nn.Module):
    """act(norm(max_pool_2×2(conv_3×3(x)))): the first layer of a SpeedNet block."""

    features: int
    conv: str = "standard"
    norm: str = "batch"
    activation: str = "gelu"
    norm_kwargs: Mapping[str, Any] | None = None
    act_kwargs: Mapping[str, Any] | None = None
    kernel_init: Any = nn.initializers.he_normal()
    use_bias: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = conv_layer(self.conv, self.features, 3, use_bias=self.use_bias,
                       kernel_init=self.kernel_init, dtype=self.dtype, name="conv")(x)
        return NormAct(norm=self.norm, activation=self.activation, norm_kwargs=self.norm_kwargs,
                       act_kwargs=self.act_kwargs, dtype=self.dtype,
                       name="norm_act")(max_pool_valid(y), train=train)


@MODELS.register("speednet")
class SpeedNet(nn.Module):
    """The speed trainers' VGG-like net (module docstring).

    Attributes:
      num_classes: width of the head.
      widths: channels of each block (two 3×3 convs each).
      stem: "patch_whitening" (fixed, fitted on the first training batch) or "conv" (trained).
      whiten_patch, whiten_eps, whiten_basis: the whitening's p, ε and basis ("pca", "zca").
      stem_activation: `ACTIVATIONS` name after the stem (its own: a self-activated norm such
        as FRN runs with activation="identity", the stem still needs a nonlinearity).
      norm, activation, norm_kwargs, act_kwargs: of every conv layer (`NormAct`).
      conv: `CONVOLUTIONS` name of the 3×3 convs (with a bias only when norm is "none": a
        norm's offset β replaces it).
      kernel_init, kernel_init_kwargs: `INITIALIZERS` name and options of every kernel.
      logit_scale: multiplies the logits (airbench: 1/9, a cooler softmax at init).
      tta: test-time augmentation in evaluation, one of TTA_MODES.
      dtype: compute dtype (e.g. bfloat16; params stay float32, logits come back float32).

    The stem is "stem", the conv layers layer_00 … layer_05, the classifier "head".
    """

    num_classes: int = 10
    widths: Sequence[int] = (64, 256, 256)
    stem: str = "patch_whitening"
    whiten_patch: int = 2
    whiten_eps: float = 5e-4
    whiten_basis: str = "pca"
    norm: str = "batch"
    activation: str = "gelu"
    norm_kwargs: Mapping[str, Any] | None = None
    act_kwargs: Mapping[str, Any] | None = None
    conv: str = "standard"
    kernel_init: str = "kaiming_normal"
    kernel_init_kwargs: Mapping[str, Any] | None = None
    stem_activation: str = "gelu"
    logit_scale: float = 1 / 9
    tta: str = "none"
    dtype: Any = None

    def _check(self, x: jax.Array) -> None:
        check_nhwc("SpeedNet", x)
        if not self.widths or any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ValueError(f"SpeedNet: widths must be a non-empty sequence of ints >= 1, got "
                             f"widths={self.widths}")
        if self.stem not in STEMS:
            raise ValueError(f"SpeedNet: unknown stem {self.stem!r}; valid: {', '.join(STEMS)}")
        if self.tta not in TTA_MODES:
            raise ValueError(f"SpeedNet: unknown tta {self.tta!r}; valid: {', '.join(TTA_MODES)}")

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        self._check(x)
        n = x.shape[0]
        views, weights = tta_views(x, "none" if train else self.tta)
        h = compute_input(views.reshape(-1, *x.shape[1:]), self.dtype)
        init = build_initializer(self.kernel_init, self.kernel_init_kwargs)
        width = 2 * self.whiten_patch**2 * x.shape[-1]
        if self.stem == "patch_whitening":
            h = PatchWhitening(patch_size=self.whiten_patch, eps=self.whiten_eps,
                               basis=self.whiten_basis, dtype=self.dtype, name="stem")(h,
                                                                                      train=train)
        else:
            h = CONVOLUTIONS.build(self.conv, features=width, kernel_size=(self.whiten_patch,) * 2,
                                   padding="VALID", use_bias=True, kernel_init=init,
                                   dtype=self.dtype, name="stem")(h)
        h = make_activation(self.stem_activation)(h)
        layers = dict(conv=self.conv, norm=self.norm, activation=self.activation,
                      norm_kwargs=self.norm_kwargs, act_kwargs=self.act_kwargs,
                      kernel_init=init, use_bias=self.norm == "none", dtype=self.dtype)
        num_layers = 2 * len(self.widths)
        for i, features in enumerate(self.widths):
            h = ConvPoolNormAct(features, **layers, name=layer_name(2 * i, num_layers))(
                h, train=train)
            h = ConvNormAct(features, **layers,
                            name=layer_name(2 * i + 1, num_layers))(h, train=train)
        h = jnp.max(h, axis=(1, 2))
        head = nn.Dense(self.num_classes, use_bias=False, kernel_init=init, dtype=self.dtype,
                        name=HEAD)
        logits_VN = (float32_logits(head(h)) * self.logit_scale).reshape(len(weights), n, -1)
        return jnp.tensordot(jnp.asarray(weights, logits_VN.dtype), logits_VN, axes=1)
