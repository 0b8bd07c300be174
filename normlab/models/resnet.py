"""ResNet v1 (He et al. 2016a) and pre-activation v2 (He et al. 2016b), CIFAR and ImageNet sizes.

Residual block, x ↦ y, with branch F and shortcut S (identity, or a 1×1 projection when the
shape changes):
  v1 (post-activation)  y = act(S(x) + F(x)),  F = conv → norm → act → … → conv → norm
  v2 (pre-activation)   y = S'(x) + F(x),      F = norm → act → conv → … → norm → act → conv
In v1 the last norm of F comes before the addition and has no activation: it is a `NormAct`
with activation "identity" (for a Proxy Norm composite that is PN with identity φ,
z = (γ·y + β − μ̃)/sqrt(σ̃² + ε), i.e. the norm's affine followed by a standardization that
depends on parameters only). In v2 a projection shortcut reads the block's pre-activated input
act(norm(x)), as in the paper, and the net ends with a final norm → act before pooling.

Presets: "resnet8/20/32/56/110" (CIFAR 6n+2: 3×3 stem of 16 channels, three stages of n basic
blocks at 16/32/64 channels, strides 1/2/2, global average pool, Dense) and "resnet18/34"
(basic) / "resnet50" (bottleneck, stride on the 3×3 conv as in torchvision's "v1.5"), whose
ImageNet stem is conv 7×7/2 → norm → act → max-pool 3×3/2 (`cifar_stem=True`: conv 3×3/1, no
pool, for 32×32 inputs). The v2 stem is the conv (and pool) alone: every block starts with its
own norm → act.

    from normlab.registry import MODELS
    model = MODELS.build("resnet20", norm="batch", residual_init="zero_init_last")
    variables = model.init(jax.random.key(0), x_N32x32x3, train=False)
    logits, state = model.apply(variables, x_N32x32x3, train=True,
                                rngs={"dropout": key}, mutable=["batch_stats"])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from normlab.models import (
    HEAD,
    build_initializer,
    compute_input,
    float32_logits,
    layer_name,
    preset,
)
from normlab.models.cnn import check_nhwc, conv_layer
from normlab.models.stem import Stem
from normlab.nn.dropout import StochasticDepth, linear_depth_rates
from normlab.nn.logical import channel_params, constrain, partitioned
from normlab.nn.norm_act import NormAct
from normlab.nn.residual_init import ResidualInit
from normlab.nn.segments import Layer, Repeated, Segment
from normlab.registry import MODELS, NORMS, RESIDUAL_INITS

Axes = tuple[str | None, str | None]

BLOCKS = ("basic", "bottleneck")
SHORTCUTS = ("projection", "zero_pad")
BOTTLENECK_EXPANSION = 4


class ResidualBlock(nn.Module):
    """One residual block (v1 or v2, basic or bottleneck); see the module docstring.

    Branch layers j = 0..m−1 (m = 2 basic: 3×3, 3×3; m = 3 bottleneck: 1×1, 3×3, 1×1 with
    `features`·4 outputs) are initialized and wrapped by `residual_init`; `drop_rate` is the
    stochastic-depth rate of the branch. Submodules: conv1.., norm_act1.., conv_shortcut and
    norm_act_shortcut (projection), out_act (v1's post-addition activation, a NormAct with the
    "none" norm so that its input is recorded like every other pre-activation).

        block = ResidualBlock(features=16, strides=2, num_blocks=9, kernel_init=init)
        y_NHWC = block.apply(block.init(key, x_NHWC, train=False), x_NHWC, train=False)
    """

    features: int
    strides: int = 1
    block: str = "basic"
    preact: bool = False
    shortcut: str = "projection"
    num_blocks: int = 1
    residual_init: str = "standard"
    drop_rate: float = 0.0
    conv: str = "standard"
    norm: str = "batch"
    activation: str = "relu"
    norm_kwargs: Mapping[str, Any] | None = None
    act_kwargs: Mapping[str, Any] | None = None
    kernel_init: Callable = nn.initializers.he_normal()
    use_bias: bool = False
    dtype: Any = None

    def _layers(self) -> list[tuple[int, int, int]]:
        """(out channels, kernel size, stride) of each branch layer."""
        if self.block == "basic":
            return [(self.features, 3, self.strides), (self.features, 3, 1)]
        out = self.features * BOTTLENECK_EXPANSION
        return [(self.features, 1, 1), (self.features, 3, self.strides), (out, 1, 1)]

    def _axes(self) -> list[Axes]:
        """Logical (in, out) channel axes of each branch conv: column- then row-parallel."""
        if self.block == "basic":
            return [("embed", "mlp"), ("mlp", "embed")]
        return [("embed", "mlp"), ("mlp", "embed"), (None, "embed")]

    def _norm_act(
        self, name: str, norm_kwargs: Mapping[str, Any], *, linear: bool = False,
        axis: str | None = "embed",
    ) -> NormAct:
        """NormAct with the block's activation, or with none (`linear`) before an addition;
        its per-channel params run along the logical `axis`. A linear norm gets the keywords
        that switch off a nonlinearity of its own (FRN's TLU, as in the FRN paper: its class's
        `linear_kwargs`)."""
        if linear:
            norm_kwargs = {**(NORMS.get(self.norm).linear_kwargs or {}), **norm_kwargs}
        return channel_params(NormAct, axis)(
            norm=self.norm,
            activation="identity" if linear else self.activation,
            norm_kwargs=norm_kwargs,
            act_kwargs=None if linear else self.act_kwargs,
            dtype=self.dtype,
            name=name,
        )

    def _conv(self, features: int, kernel: int, strides: int, init: Callable, name: str,
              axes: Axes = (None, "embed")):
        return conv_layer(
            self.conv,
            features,
            kernel,
            strides=strides,
            use_bias=self.use_bias,
            kernel_init=partitioned(init, (None, None, *axes)),
            dtype=self.dtype,
            name=name,
        )

    def _shortcut(
        self, x: jax.Array, out_channels: int, proj_input: jax.Array, train: bool
    ) -> jax.Array:
        if self.strides == 1 and x.shape[-1] == out_channels:
            return x
        if self.shortcut == "zero_pad":
            # He et al. 2016a option A: subsample, then zero-pad the new channels (no params).
            x = x[:, :: self.strides, :: self.strides, :]
            return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, out_channels - x.shape[-1])))
        y = self._conv(out_channels, 1, self.strides, self.kernel_init, "conv_shortcut")(
            proj_input
        )
        if self.preact:
            return y
        return self._norm_act("norm_act_shortcut", self.norm_kwargs or {}, linear=True)(
            y, train=train
        )

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        res: ResidualInit = RESIDUAL_INITS.build(self.residual_init)
        layers = self._layers()
        m = len(layers)
        norm_kwargs = dict(self.norm_kwargs or {})
        scale_after = not self.preact and NORMS.get(self.norm).has_learnable_scale(norm_kwargs)
        zeroes_kernel = res.fixup or (res.zero_last and not scale_after)
        if not self.preact and zeroes_kernel and self.norm != "none":
            # A zero kernel feeding a norm: the norm divides ~0 by sqrt(ε), gradients explode.
            raise ValueError(
                f"ResNet: residual_init={self.residual_init!r} would zero the last conv of each "
                f"v1 branch, which feeds norm={self.norm!r} (no settable scale γ to zero "
                "instead); use norm='none', a norm with a learnable scale, or preact=True"
            )
        branch_kw = {"num_branches": self.num_blocks, "layers_per_branch": m}

        def kernel_init(j: int) -> Callable:
            # v2's last conv feeds the addition directly: no norm scale to zero there.
            return res.kernel_init(
                self.kernel_init, j, **branch_kw, norm_scale_after=scale_after and j == m - 1
            )

        axes = self._axes()

        def conv(j: int, h: jax.Array) -> jax.Array:
            features, kernel, strides = layers[j]
            h = self._conv(features, kernel, strides, kernel_init(j), f"conv{j + 1}", axes[j])(h)
            return constrain(h, ("batch", None, None, axes[j][1]))

        if self.preact:
            pre = self._norm_act("norm_act1", norm_kwargs)(res.bias(x), train=train)
            shortcut = self._shortcut(x, layers[-1][0], pre, train)
            h = pre
            for j in range(m):
                if j > 0:
                    h = self._norm_act(f"norm_act{j + 1}", norm_kwargs, axis=axes[j - 1][1])(
                        res.bias(h), train=train
                    )
                h = conv(j, res.bias(h))
        else:
            x_in = res.bias(x)
            h = x_in
            for j in range(m):
                last = j == m - 1
                h = conv(j, h)
                if last:
                    kw = norm_kwargs
                    if scale_after:
                        kw = {**kw, "scale_init": res.norm_scale_init(j, layers_per_branch=m)}
                    h = self._norm_act(f"norm_act{j + 1}", kw, linear=True, axis=axes[j][1])(
                        h, train=train
                    )
                else:
                    # Fixup's scalar biases sit before the activation and before the next conv.
                    h = self._norm_act(f"norm_act{j + 1}", norm_kwargs, axis=axes[j][1])(
                        res.bias(h), train=train
                    )
                    h = res.bias(h)
            shortcut = self._shortcut(x, layers[-1][0], x_in, train)
        branch = StochasticDepth(rate=self.drop_rate)(res.branch_output(h), train=train)
        y = shortcut + branch
        if self.preact:
            return y
        return NormAct(norm="none", activation=self.activation, act_kwargs=self.act_kwargs,
                       dtype=self.dtype, name="out_act")(y, train=train)


@MODELS.register("resnet")
class ResNet(nn.Module):
    """ResNet v1 / v2 (pre-activation), CIFAR or ImageNet layout, norms and inits by name.

    Stem, stages of residual blocks, (v2: final norm → act), global average pool, Dense head;
    see the module docstring for the block equations.

    Attributes:
      num_classes: width of the head.
      stage_sizes: blocks per stage; stage s has base_width·2^s (·4 for bottleneck outputs)
        channels and stride 2 in its first block (stride 1 for stage 0).
      block: "basic" (two 3×3 convs) or "bottleneck" (1×1, 3×3, 1×1 with 4× expansion).
      base_width: channels of the stem and of stage 0 (16 for CIFAR nets, 64 for ImageNet).
      width_multiplier: multiplies every width (rounded, at least 1), e.g. 0.25 for tests.
      cifar_stem: conv 3×3/1 stem without max-pool (for 32×32 inputs).
      preact: v2 (pre-activation) blocks instead of v1.
      shortcut: "projection" (1×1 conv + norm when the shape changes, He et al.'s option B) or
        "zero_pad" (subsample and zero-pad the channels, option A, used for CIFAR in the paper).
      residual_init: `RESIDUAL_INITS` name ("standard", "zero_init_last", "fixup", "skipinit");
        Fixup also zero-initializes the head and adds a scalar bias before it. Fixup and
        SkipInit were designed without normalization: pair them with norm="none" to follow
        the papers. zero_init_last zeroes the γ of a v1 branch's last norm, or the last conv
        where no norm follows (v2, norm="none"); a v1 branch whose last conv feeds a norm
        without a settable γ (the Proxy Norm composites, use_scale=False), or any norm under
        Fixup, raises ValueError, since a zero kernel before a norm makes gradients explode.
      stochastic_depth_rate: drop rate of the last block; block l = 1..L drops its branch with
        rate l/L·stochastic_depth_rate (Huang et al. 2016's linear rule).
      norm, activation, norm_kwargs, act_kwargs: of every NormAct (`norm="layer+proxy"` etc.).
      conv: `CONVOLUTIONS` name of every conv ("weight_std" for GN+WS / LN+WS).
      kernel_init, kernel_init_kwargs: `INITIALIZERS` name and options of every kernel.
      use_bias: conv bias; None means "only when norm is 'none'" (and not with Fixup).
      dtype: compute dtype of every layer (e.g. bfloat16; params and running statistics stay
        float32, the input is cast to it, the logits come back in float32).

    Layers are layer_00 (stem), layer_01..layer_L (blocks), layer_{L+1} (v2's final NormAct),
    then "head"; their pre-activations sort in depth order (`normlab.models`).

    Tensor parallelism (Megatron): in each block the first conv is column-parallel
    (in "embed", out "mlp") and the second row-parallel ("mlp" → "embed"); a bottleneck's third
    conv is (None → "embed"); stem, shortcut and head produce "embed" channels; every norm's
    per-channel params follow the channels it normalizes. Pipelining: `pipeline_segments`.

        model = ResNet(stage_sizes=(1, 1, 1), base_width=4, cifar_stem=True, num_classes=10,
                       norm="group+proxy", norm_kwargs={"num_groups": 2}, preact=True)
        variables = model.init(jax.random.key(0), x_NHWC, train=False)
        logits = model.apply(variables, x_NHWC, train=False)
    """

    num_classes: int = 1000
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: str = "basic"
    base_width: int = 64
    width_multiplier: float = 1.0
    cifar_stem: bool = False
    preact: bool = False
    shortcut: str = "projection"
    residual_init: str = "standard"
    stochastic_depth_rate: float = 0.0
    norm: str = "batch"
    activation: str = "relu"
    norm_kwargs: Mapping[str, Any] | None = None
    act_kwargs: Mapping[str, Any] | None = None
    conv: str = "standard"
    kernel_init: str = "kaiming_normal"
    kernel_init_kwargs: Mapping[str, Any] | None = None
    use_bias: bool | None = None
    dtype: Any = None

    def _check(self, x: jax.Array) -> None:
        check_nhwc("ResNet", x)
        if not self.stage_sizes or any(
            not isinstance(n, int) or n < 1 for n in self.stage_sizes
        ):
            raise ValueError(
                f"ResNet: stage_sizes must be a non-empty sequence of ints >= 1, "
                f"got stage_sizes={self.stage_sizes}"
            )
        if self.block not in BLOCKS:
            raise ValueError(f"ResNet: block must be one of {BLOCKS}, got block={self.block!r}")
        if self.shortcut not in SHORTCUTS:
            raise ValueError(
                f"ResNet: shortcut must be one of {SHORTCUTS}, got shortcut={self.shortcut!r}"
            )
        if not isinstance(self.base_width, int) or self.base_width < 1:
            raise ValueError(f"ResNet: base_width must be an int >= 1, got {self.base_width!r}")
        if not self.width_multiplier > 0:
            raise ValueError(
                f"ResNet: width_multiplier must be > 0, got {self.width_multiplier}"
            )
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"ResNet: num_classes must be an int >= 1, got {self.num_classes!r}")
        if not 0.0 <= self.stochastic_depth_rate < 1.0:
            raise ValueError(
                f"ResNet: stochastic_depth_rate must be in [0, 1), "
                f"got {self.stochastic_depth_rate}"
            )

    def _layer_specs(self) -> list[tuple[str, Callable[..., nn.Module], dict, tuple | None]]:
        """(name, module class, fields, (stage, block) or None) of every layer before pooling:
        the stem, each residual block of each stage, v2's final NormAct."""
        res: ResidualInit = RESIDUAL_INITS.build(self.residual_init)
        init = build_initializer(self.kernel_init, self.kernel_init_kwargs)
        # A norm's β, or Fixup's scalar biases, make per-channel conv biases redundant.
        default_bias = self.norm == "none" and not res.fixup
        use_bias = default_bias if self.use_bias is None else self.use_bias
        norm_act = {
            "norm": self.norm,
            "activation": self.activation,
            "norm_kwargs": self.norm_kwargs,
            "act_kwargs": self.act_kwargs,
        }
        common = {"conv": self.conv, "kernel_init": init, "use_bias": use_bias,
                  "dtype": self.dtype, **norm_act}
        num_blocks = sum(self.stage_sizes)
        num_layers = num_blocks + 1 + int(self.preact)
        drop_rates = linear_depth_rates(num_blocks, self.stochastic_depth_rate)

        def width(channels: int) -> int:
            return max(1, round(channels * self.width_multiplier))

        stem = dict(features=width(self.base_width), cifar=self.cifar_stem, preact=self.preact,
                    **common)
        specs = [(layer_name(0, num_layers), Stem, stem, None)]
        index = 1
        for stage, size in enumerate(self.stage_sizes):
            for b in range(size):
                block = dict(
                    features=width(self.base_width * 2**stage),
                    strides=2 if stage > 0 and b == 0 else 1,
                    block=self.block,
                    preact=self.preact,
                    shortcut=self.shortcut,
                    num_blocks=num_blocks,
                    residual_init=self.residual_init,
                    drop_rate=drop_rates[index - 1],
                    **common,
                )
                specs.append((layer_name(index, num_layers), ResidualBlock, block, (stage, b)))
                index += 1
        if self.preact:
            final = channel_params(NormAct, "embed")
            specs.append((layer_name(index, num_layers), final, dict(norm_act, dtype=self.dtype),
                          None))
        return specs

    def _head(self, **kw: Any) -> nn.Dense:
        res: ResidualInit = RESIDUAL_INITS.build(self.residual_init)
        init = build_initializer(self.kernel_init, self.kernel_init_kwargs)
        head_init = nn.initializers.zeros if res.fixup else init
        return nn.Dense(
            self.num_classes,
            kernel_init=partitioned(head_init, ("embed", "classes")),
            bias_init=partitioned(nn.initializers.zeros, ("classes",)),
            dtype=self.dtype,
            **kw,
        )

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        self._check(x)
        x = compute_input(x, self.dtype)
        for name, cls, fields, _ in self._layer_specs():
            x = cls(name=name, **fields)(x, train=train)
        res: ResidualInit = RESIDUAL_INITS.build(self.residual_init)
        x = res.bias(jnp.mean(x, axis=(1, 2)))
        return float32_logits(self._head(name=HEAD)(x))

    def pipeline_segments(self) -> list[Segment]:
        """The ResNet as pipeline segments: in each stage, blocks 1..n−1 (identical) form a
        run; the stem (which casts the input to `dtype`), each stage's first block (new width or
        stride), v2's final NormAct, pooling, the head and its logits' cast to float32 run
        outside the runs.

        ValueError with Fixup (scalar biases outside the blocks) or stochastic depth (blocks
        with different drop rates are not identical).
        """
        res: ResidualInit = RESIDUAL_INITS.build(self.residual_init)
        if res.fixup or self.stochastic_depth_rate:
            raise ValueError(
                "ResNet: pipelining needs identical blocks: no Fixup and no stochastic depth, "
                f"got residual_init={self.residual_init!r}, "
                f"stochastic_depth_rate={self.stochastic_depth_rate}"
            )
        segments: list[Segment] = []
        run: list[tuple[str, nn.Module]] = []

        def flush() -> None:
            if len(run) == 1:
                segments.append(Layer(*run[0]))
            elif run:
                segments.append(Repeated(tuple(name for name, _ in run), run[0][1]))
            run.clear()

        for name, cls, fields, where in self._layer_specs():
            module = cls(parent=None, **fields)  # standalone, not a submodule of self
            if where is None or where[1] == 0:
                flush()
                segments.append(Layer(name, module))
            else:
                run.append((name, module))
        flush()
        segments.append(Layer(None, lambda x: jnp.mean(x, axis=(1, 2))))
        segments.append(Layer(HEAD, self._head(parent=None), train_arg=False))
        segments.append(Layer(None, float32_logits))
        return segments


for _depth in (8, 20, 32, 56, 110):
    _n = (_depth - 2) // 6
    MODELS.register(f"resnet{_depth}")(preset(
        ResNet, f"CIFAR ResNet-{_depth} (He et al. 2016a): 3 stages of {_n} basic blocks at "
        "16/32/64 channels, 3×3 stem, 10 classes.",
        stage_sizes=(_n, _n, _n), block="basic", base_width=16, cifar_stem=True, num_classes=10,
    ))
for _depth, _sizes, _block in ((18, (2, 2, 2, 2), "basic"), (34, (3, 4, 6, 3), "basic"),
                               (50, (3, 4, 6, 3), "bottleneck")):
    MODELS.register(f"resnet{_depth}")(preset(
        ResNet, f"ImageNet ResNet-{_depth} ({_block} blocks {_sizes}, 7×7 stem, 1000 classes).",
        stage_sizes=_sizes, block=_block,
    ))
