"""VGG (Simonyan & Zisserman 2015): stacks of 3×3 convs with max-pooling, then an FC head.

    per conv layer   y = act(norm(conv_3×3(x)))        each stage ends in a 2×2 max-pool
    FC head          flatten → [Dense → act → Dropout] × len(fc_widths) → Dense (logits)

Presets "vgg11", "vgg13", "vgg16", "vgg19" are configurations A, B, D, E of the paper.
`width_multiplier` scales every conv and FC width, so a CIFAR-sized VGG is cheap:

    from normlab.registry import MODELS
    model = MODELS.build("vgg11", norm="batch", width_multiplier=0.25, fc_widths=(512,))
    variables = model.init(jax.random.key(0), x_N32x32x3, train=False)
    logits, state = model.apply(variables, x_N32x32x3, train=True,
                                rngs={"dropout": key}, mutable=["batch_stats"])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax

from normlab.models import (
    HEAD,
    build_initializer,
    compute_input,
    float32_logits,
    layer_name,
    preset,
)
from normlab.models.cnn import ConvNormAct, check_nhwc, max_pool_2x2
from normlab.models.mlp import DenseNormAct
from normlab.nn.dropout import Dropout
from normlab.registry import MODELS

# Channels of the conv layers of each stage (a max-pool follows every stage), paper Table 1.
VGG_STAGES: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": (
        (64, 64),
        (128, 128),
        (256, 256, 256, 256),
        (512, 512, 512, 512),
        (512, 512, 512, 512),
    ),
}


def _scaled(width: int, multiplier: float) -> int:
    return max(1, round(width * multiplier))


@MODELS.register("vgg")
class VGG(nn.Module):
    """VGG: conv stages with max-pooling, flatten, FC layers with dropout, Dense head.

    Attributes:
      num_classes: width of the head.
      stages: channels of each conv layer, per stage; a 2×2 max-pool follows each stage.
      fc_widths: widths of the hidden FC layers ((4096, 4096) in the paper).
      width_multiplier: multiplies every conv and FC width (rounded, at least 1).
      dropout_rate: inverted dropout after each hidden FC layer (0.5 in the paper).
      norm, activation, norm_kwargs, act_kwargs: of the conv layers (`NormAct`).
      fc_norm, fc_norm_kwargs: norm of the hidden FC layers ("none" as in the paper and in
        torchvision's vgg*_bn, whose BN is in the conv layers only); their activation is
        `activation`.
      conv: `CONVOLUTIONS` name of the conv layers.
      kernel_init, kernel_init_kwargs: `INITIALIZERS` name and options of every kernel.
      use_bias: conv bias; None means "only when norm is 'none'". FC layers always have one.
      dtype: compute dtype of every layer (e.g. bfloat16; params stay float32, the input is
        cast to it, the logits come back in float32).

    Conv and FC layers are named layer_00, layer_01, ... in depth order; the head is "head".
    The flattened features have H·W·C entries after the pools (1·1·512 for 32×32 inputs with
    5 stages, 7·7·512 for 224×224), so the first FC layer's size depends on the input size.

        model = VGG(stages=((8,), (16,)), fc_widths=(32,), norm="group",
                    norm_kwargs={"num_groups": 2})
        variables = model.init(jax.random.key(0), x_NHWC, train=False)
        logits = model.apply(variables, x_NHWC, train=True, rngs={"dropout": key},
                             mutable=["batch_stats"])[0]
    """

    num_classes: int = 10
    stages: Sequence[Sequence[int]] = VGG_STAGES["vgg11"]
    fc_widths: Sequence[int] = (4096, 4096)
    width_multiplier: float = 1.0
    dropout_rate: float = 0.5
    norm: str = "batch"
    activation: str = "relu"
    norm_kwargs: Mapping[str, Any] | None = None
    act_kwargs: Mapping[str, Any] | None = None
    fc_norm: str = "none"
    fc_norm_kwargs: Mapping[str, Any] | None = None
    conv: str = "standard"
    kernel_init: str = "kaiming_normal"
    kernel_init_kwargs: Mapping[str, Any] | None = None
    use_bias: bool | None = None
    dtype: Any = None

    def _check(self, x: jax.Array) -> None:
        check_nhwc("VGG", x)
        if not self.stages or any(
            not stage or any(not isinstance(c, int) or c < 1 for c in stage)
            for stage in self.stages
        ):
            raise ValueError(
                f"VGG: stages must be non-empty sequences of ints >= 1, got stages={self.stages}"
            )
        if any(not isinstance(w, int) or w < 1 for w in self.fc_widths):
            raise ValueError(f"VGG: fc_widths must be ints >= 1, got fc_widths={self.fc_widths}")
        if not self.width_multiplier > 0:
            raise ValueError(f"VGG: width_multiplier must be > 0, got {self.width_multiplier}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"VGG: dropout_rate must be in [0, 1), got {self.dropout_rate}")

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        self._check(x)
        x = compute_input(x, self.dtype)
        init = build_initializer(self.kernel_init, self.kernel_init_kwargs)
        use_bias = self.norm == "none" if self.use_bias is None else self.use_bias
        num_layers = sum(len(stage) for stage in self.stages) + len(self.fc_widths)
        index = 0
        for stage in self.stages:
            for channels in stage:
                x = ConvNormAct(
                    features=_scaled(channels, self.width_multiplier),
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
            x = max_pool_2x2(x)
        x = x.reshape(x.shape[0], -1)
        for width in self.fc_widths:
            x = DenseNormAct(
                features=_scaled(width, self.width_multiplier),
                norm=self.fc_norm,
                activation=self.activation,
                norm_kwargs=self.fc_norm_kwargs,
                act_kwargs=self.act_kwargs,
                kernel_init=init,
                dtype=self.dtype,
                name=layer_name(index, num_layers),
            )(x, train=train)
            index += 1
            if self.dropout_rate > 0:
                x = Dropout(rate=self.dropout_rate)(x, train=train)
        head = nn.Dense(self.num_classes, kernel_init=init, dtype=self.dtype, name=HEAD)
        return float32_logits(head(x))


for _name, _config in zip(VGG_STAGES, "ABDE", strict=True):
    MODELS.register(_name)(preset(
        VGG, f"VGG configuration {_config} of Simonyan & Zisserman ({_name}).",
        stages=VGG_STAGES[_name],
    ))
