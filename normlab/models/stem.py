"""The input layer of a conv net (ResNet's): conv 3×3/1 for 32×32 inputs, or the ImageNet
conv 7×7/2 → max-pool 3×3/2, with norm → act after the conv in post-activation nets.

    stem = Stem(features=16, cifar=True, preact=True)
    variables = stem.init(jax.random.key(0), x_NHWC, train=False)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax

from normlab.models import compute_input
from normlab.models.cnn import conv_layer
from normlab.nn.logical import channel_params, constrain, partitioned
from normlab.nn.norm_act import NormAct


class Stem(nn.Module):
    """The input layer: conv 3×3/1 (`cifar`) or conv 7×7/2 → max-pool 3×3/2 (ImageNet), with
    norm → act after the conv in v1 (none in v2, whose blocks start with their own). The input
    is cast to `dtype` here, so that a pipelined ResNet (which runs its layers without
    `ResNet.__call__`) computes in it too.

        stem = Stem(features=16, cifar=True, kernel_init=init)
    """

    features: int
    cifar: bool = False
    preact: bool = False
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
        kernel, strides = (3, 1) if self.cifar else (7, 2)
        x = compute_input(x, self.dtype)
        x = conv_layer(
            self.conv,
            self.features,
            kernel,
            strides=strides,
            use_bias=self.use_bias,
            kernel_init=partitioned(self.kernel_init, (None, None, None, "embed")),
            dtype=self.dtype,
            name="conv",
        )(x)
        x = constrain(x, ("batch", None, None, "embed"))
        if not self.preact:
            x = channel_params(NormAct, "embed")(
                norm=self.norm,
                activation=self.activation,
                norm_kwargs=self.norm_kwargs,
                act_kwargs=self.act_kwargs,
                dtype=self.dtype,
                name="norm_act",
            )(x, train=train)
        if not self.cifar:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return x
