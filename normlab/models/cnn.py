"""A small convolutional net, and the conv → NormAct unit the conv models share.

    y = act(norm(conv_k×k(x)))   per layer;   stages of such layers, each ending in a 2×2 max-pool;
    logits = W·mean_{h,w}(y) + b

    from normlab.registry import MODELS
    model = MODELS.build("cnn", features=(32, 64, 128), norm="layer+proxy", activation="silu")
    variables = model.init(jax.random.key(0), x_NHWC, train=False)
    logits_NC = model.apply(variables, x_NHWC, train=False)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from normlab.models import HEAD, build_initializer, compute_input, float32_logits, layer_name
from normlab.nn.dropout import Dropout
from normlab.nn.norm_act import NormAct
from normlab.registry import CONVOLUTIONS, MODELS


def conv_layer(
    conv: str,
    features: int,
    kernel_size: int,
    *,
    strides: int = 1,
    use_bias: bool,
    kernel_init: Callable,
    dtype: Any,
    name: str,
) -> nn.Module:
    """The `CONVOLUTIONS` layer `conv` with a k×k kernel and symmetric padding ⌊k/2⌋.

    Symmetric padding (not "SAME") makes a stride-2 conv see the same pixels as in the
    reference implementations (PyTorch pads 1 on both sides of a 3×3 conv; XLA's "SAME" pads
    0 before and 1 after an even-sized input).

        layer = conv_layer("weight_std", 64, 3, strides=2, use_bias=False,
                           kernel_init=nn.initializers.he_normal(), dtype=None, name="conv")
    """
    pad = kernel_size // 2
    return CONVOLUTIONS.build(
        conv,
        features=features,
        kernel_size=(kernel_size, kernel_size),
        strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
        kernel_init=kernel_init,
        dtype=dtype,
        name=name,
    )


def max_pool_2x2(x_NHWC: jax.Array) -> jax.Array:
    """2×2 max-pool with stride 2; "SAME" padding so an odd or size-1 map keeps ≥ 1 pixel."""
    return nn.max_pool(x_NHWC, (2, 2), strides=(2, 2), padding="SAME")


def check_nhwc(model: str, x: jax.Array) -> None:
    """ValueError unless x is an NHWC image batch."""
    if x.ndim != 4:
        raise ValueError(f"{model}: input must be NHWC (4-D), got shape={x.shape}")


class ConvNormAct(nn.Module):
    """One conv layer: y = act(norm(conv(x))), the conv chosen by name from `CONVOLUTIONS`.

    Attributes:
      features: output channels.
      kernel_size: k of the k×k kernel (padding ⌊k/2⌋ on each side).
      strides: the conv's stride.
      conv: `CONVOLUTIONS` name ("standard", "weight_std", "scaled_ws").
      norm, activation, norm_kwargs, act_kwargs: as in `NormAct`.
      kernel_init: the kernel's init function.
      use_bias: bias in the conv (redundant before a norm with its own β).
      dtype: computation dtype of the conv and the NormAct.

        layer = ConvNormAct(features=16, norm="group", norm_kwargs={"num_groups": 4},
                            kernel_init=nn.initializers.he_normal())
        y_NHWC = layer.apply(layer.init(key, x_NHWC, train=False), x_NHWC, train=False)
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    conv: str = "standard"
    norm: str = "batch"
    activation: str = "relu"
    norm_kwargs: Mapping[str, Any] | None = None
    act_kwargs: Mapping[str, Any] | None = None
    kernel_init: Callable = nn.initializers.he_normal()
    use_bias: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = conv_layer(
            self.conv,
            self.features,
            self.kernel_size,
            strides=self.strides,
            use_bias=self.use_bias,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            name="conv",
        )(x)
        return NormAct(
            norm=self.norm,
            activation=self.activation,
            norm_kwargs=self.norm_kwargs,
            act_kwargs=self.act_kwargs,
            dtype=self.dtype,
            name="norm_act",
        )(y, train=train)


@MODELS.register("cnn")
class SmallCNN(nn.Module):
    """Small CNN: stages of 3×3 conv → NormAct with max-pooling, global average pool, Dense head.

    Each stage has `convs_per_stage` ConvNormAct layers, then a 2×2 max-pool (`pool`); the
    pooled features (mean over H, W) go through optional dropout to the head.

    Attributes:
      num_classes: width of the head.
      features: channels of each stage (one stage per entry).
      convs_per_stage: conv layers per stage.
      pool: max-pool 2×2 after every stage.
      norm, activation, norm_kwargs, act_kwargs: of every conv layer (`NormAct`).
      conv: `CONVOLUTIONS` name ("weight_std" with norm "layer"/"group" gives LN+WS / GN+WS).
      kernel_init, kernel_init_kwargs: `INITIALIZERS` name and options of every kernel.
      use_bias: conv bias; None means "only when norm is 'none'" (a norm's β replaces it).
      dropout_rate: inverted dropout on the pooled features before the head.
      dtype: compute dtype of every layer (e.g. bfloat16; params stay float32, the input is
        cast to it, the logits come back in float32).

    Layers are named layer_00, layer_01, ... in depth order; the head is "head".

        model = SmallCNN(features=(8, 16), norm="group", norm_kwargs={"group_size": 4})
        variables = model.init(jax.random.key(0), x_NHWC, train=False)
        logits, state = model.apply(variables, x_NHWC, train=True, mutable=["batch_stats"])
    """

    num_classes: int = 10
    features: Sequence[int] = (32, 64, 128)
    convs_per_stage: int = 1
    pool: bool = True
    norm: str = "batch"
    activation: str = "relu"
    norm_kwargs: Mapping[str, Any] | None = None
    act_kwargs: Mapping[str, Any] | None = None
    conv: str = "standard"
    kernel_init: str = "kaiming_normal"
    kernel_init_kwargs: Mapping[str, Any] | None = None
    use_bias: bool | None = None
    dropout_rate: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        check_nhwc("SmallCNN", x)
        if not self.features or any(not isinstance(f, int) or f < 1 for f in self.features):
            raise ValueError(
                f"SmallCNN: features must be a non-empty sequence of ints >= 1, "
                f"got features={self.features}"
            )
        if not isinstance(self.convs_per_stage, int) or self.convs_per_stage < 1:
            raise ValueError(
                f"SmallCNN: convs_per_stage must be an int >= 1, got {self.convs_per_stage!r}"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"SmallCNN: dropout_rate must be in [0, 1), got {self.dropout_rate}")
        x = compute_input(x, self.dtype)
        init = build_initializer(self.kernel_init, self.kernel_init_kwargs)
        use_bias = self.norm == "none" if self.use_bias is None else self.use_bias
        num_layers = len(self.features) * self.convs_per_stage
        index = 0
        for features in self.features:
            for _ in range(self.convs_per_stage):
                x = ConvNormAct(
                    features=features,
                    conv=self.conv,
                    norm=self.norm,
                    activation=self.activation,
                    norm_kwargs=self.norm_kwargs,
                    act_kwargs=self.act_kwargs,
                    kernel_init=init,
                    use_bias=use_bias,
                    dtype=self.dtype,
                    name=layer_name(index, num_layers),
                )(x, train=train)
                index += 1
            if self.pool:
                x = max_pool_2x2(x)
        x = jnp.mean(x, axis=(1, 2))
        if self.dropout_rate > 0:
            x = Dropout(rate=self.dropout_rate)(x, train=train)
        head = nn.Dense(self.num_classes, kernel_init=init, dtype=self.dtype, name=HEAD)
        return float32_logits(head(x))
