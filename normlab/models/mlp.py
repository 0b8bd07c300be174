"""Multilayer perceptron: the BN paper's MNIST net and the plain deep nets of the init demos.

    h_0 = flatten(x),  h_l = act(norm(W_l·h_{l−1} + b_l)),  l = 1..depth,  logits = W·h_depth + b

    from normlab.registry import MODELS
    bn_paper = MODELS.build("mlp", depth=3, width=100, activation="sigmoid", norm="batch")
    deep = MODELS.build("mlp", depth=30, width=256, activation="tanh", norm="none",
                        kernel_init="normal", kernel_init_kwargs={"std": 0.01})
    variables = bn_paper.init(jax.random.key(0), x_N28x28x1, train=False)
    logits_NC = bn_paper.apply(variables, x_N28x28x1, train=False)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax

from normlab.models import HEAD, build_initializer, compute_input, float32_logits, layer_name
from normlab.nn.dropout import DropConnectDense, Dropout
from normlab.nn.logical import channel_params, constrain, partitioned
from normlab.nn.norm_act import NormAct
from normlab.nn.segments import Layer, Repeated, Segment
from normlab.registry import MODELS

Axes = tuple[str | None, str | None]


class DenseNormAct(nn.Module):
    """One hidden layer: y = act(norm(x·W + b)) (`NormAct` picks the Proxy Norm composite).

    Attributes:
      features: output width.
      norm, activation, norm_kwargs, act_kwargs: as in `NormAct`.
      kernel_init: the init function of W.
      bias_init: the init function of b (default zeros).
      use_bias: whether to add b.
      dtype: computation dtype of the matmul and the NormAct (None: from the input and params).
      axes: logical axis names (input, output) of W for tensor parallelism
        (`normlab.parallel.logical`); b, the norm's and the activation's per-channel params
        and the output activations run along the output axis.
      dropout_rate: dropout after the activation (0: none).
      dropout_mode: "inverted" (scale by 1/q at train time) or "classic" (scale by q at test
        time), `normlab.nn.dropout.Dropout`.
      dropconnect_rate: DropConnect on W (`DropConnectDense`, one mask per step; 0: none).

        layer = DenseNormAct(features=100, norm="batch", activation="sigmoid",
                             kernel_init=nn.initializers.lecun_normal())
        variables = layer.init(jax.random.key(0), x_NC, train=False)
    """

    features: int
    norm: str = "none"
    activation: str = "relu"
    norm_kwargs: Mapping[str, Any] | None = None
    act_kwargs: Mapping[str, Any] | None = None
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    use_bias: bool = True
    dtype: Any = None
    axes: Axes = (None, None)
    dropout_rate: float = 0.0
    dropout_mode: str = "inverted"
    dropconnect_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        out_axis = self.axes[1]
        dense_kwargs = dict(
            use_bias=self.use_bias,
            kernel_init=partitioned(self.kernel_init, self.axes),
            bias_init=partitioned(self.bias_init, (out_axis,)),
            dtype=self.dtype,
            name="dense",
        )
        if self.dropconnect_rate > 0:
            y = DropConnectDense(self.features, rate=self.dropconnect_rate, **dense_kwargs)(
                x, train=train)
        else:
            y = nn.Dense(self.features, **dense_kwargs)(x)
        y = constrain(y, ("batch", out_axis))
        y = channel_params(NormAct, out_axis)(
            norm=self.norm,
            activation=self.activation,
            norm_kwargs=self.norm_kwargs,
            act_kwargs=self.act_kwargs,
            dtype=self.dtype,
            name="norm_act",
        )(y, train=train)
        if self.dropout_rate > 0:
            y = Dropout(rate=self.dropout_rate, mode=self.dropout_mode)(y, train=train)
        return y


@MODELS.register("mlp")
class MLP(nn.Module):
    """Flatten, `depth` hidden layers Dense → NormAct (→ Dropout), then a Dense head.

    y_l = act(norm(W_l·y_{l−1} + b_l)); logits = W_head·y_depth + b_head. The defaults are the
    BN paper's MNIST baseline (3 hidden layers of 100 sigmoid units, no normalization); set
    `norm="batch"` for its BN version. Every Dense has a bias (`use_bias=True`), as in the
    paper's net, although a bias right before BN is redundant: BN subtracts the batch mean, so b
    cancels and BN's own β plays its role (b then only receives zero gradient).

    Attributes:
      num_classes: width of the head.
      depth: number of hidden layers (0: a linear classifier).
      width: width of every hidden layer.
      widths: per-layer widths; when given, it replaces `depth` and `width`.
      norm, activation, norm_kwargs, act_kwargs: of every hidden layer (`NormAct`).
      kernel_init, kernel_init_kwargs: `INITIALIZERS` name and options for every Dense kernel,
        the head's included.
      use_bias: bias in the hidden Dense layers.
      hidden_bias_init: the value every hidden Dense bias starts at (default 0; a negative
        value starts ReLU units off, E5's dying-ReLU arm); the head's bias starts at 0.
      dropout_rate: dropout after each hidden activation (0: none).
      dropout_mode: "inverted" or "classic" (`normlab.nn.dropout.Dropout`).
      dropconnect_rate: DropConnect on every hidden layer's W (`DropConnectDense`; 0: none).
      dtype: compute dtype of every layer (e.g. bfloat16; params stay float32, the input is
        cast to it, the logits come back in float32).

    Layers are named layer_00, layer_01, ... (`normlab.models.layer_name`), the head "head".

    Tensor parallelism (Megatron): the kernels alternate column-parallel ("embed", "mlp") and
    row-parallel ("mlp", "embed"), starting with layer_00; the head is (its input's axis,
    "classes"). Pipelining (`pipeline_segments`): layer_01.. (equal widths) form one run of
    identical layers; layer_00 and the head run outside it.

        model = MLP(depth=30, width=64, activation="tanh", kernel_init="xavier_normal")
        variables = model.init(jax.random.key(0), x_NHWC, train=False)
        logits, inter = model.apply(variables, x_NHWC, train=False, mutable=["intermediates"])
        # inter["intermediates"]["layer_07"]["norm_act"]["preact"][0]: layer 8's pre-activation
    """

    num_classes: int = 10
    depth: int = 3
    width: int = 100
    widths: Sequence[int] | None = None
    norm: str = "none"
    activation: str = "sigmoid"
    norm_kwargs: Mapping[str, Any] | None = None
    act_kwargs: Mapping[str, Any] | None = None
    kernel_init: str = "lecun_normal"
    kernel_init_kwargs: Mapping[str, Any] | None = None
    use_bias: bool = True
    hidden_bias_init: float = 0.0
    dropout_rate: float = 0.0
    dropout_mode: str = "inverted"
    dropconnect_rate: float = 0.0
    dtype: Any = None

    def _hidden_widths(self) -> tuple[int, ...]:
        if self.widths is not None:
            widths = tuple(self.widths)
            if any(not isinstance(w, int) or w < 1 for w in widths):
                raise ValueError(f"MLP: widths must be ints >= 1, got widths={self.widths}")
            return widths
        if not isinstance(self.depth, int) or self.depth < 0:
            raise ValueError(f"MLP: depth must be an int >= 0, got depth={self.depth!r}")
        if not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"MLP: width must be an int >= 1, got width={self.width!r}")
        return (self.width,) * self.depth

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        widths = self._hidden_widths()
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"MLP: num_classes must be an int >= 1, got {self.num_classes!r}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"MLP: dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if x.ndim < 2:
            raise ValueError(f"MLP: input must be (N, ...) with ndim >= 2, got shape={x.shape}")
        h = compute_input(x.reshape(x.shape[0], -1), self.dtype)
        in_axis = "embed"
        for index, features in enumerate(widths):
            out_axis = "mlp" if index % 2 == 0 else "embed"
            h = self._hidden(features, (in_axis, out_axis), name=layer_name(index, len(widths)))(
                h, train=train
            )
            in_axis = out_axis
            if self.dropout_rate > 0:
                h = Dropout(rate=self.dropout_rate, mode=self.dropout_mode)(h, train=train)
        return float32_logits(self._head(in_axis, name=HEAD)(h))

    def _hidden(self, features: int, axes: Axes, dropout_rate: float = 0.0, **kw) -> nn.Module:
        return DenseNormAct(
            features=features,
            norm=self.norm,
            activation=self.activation,
            norm_kwargs=self.norm_kwargs,
            act_kwargs=self.act_kwargs,
            kernel_init=build_initializer(self.kernel_init, self.kernel_init_kwargs),
            bias_init=nn.initializers.constant(self.hidden_bias_init),
            use_bias=self.use_bias,
            dtype=self.dtype,
            axes=axes,
            dropout_rate=dropout_rate,
            dropout_mode=self.dropout_mode,
            dropconnect_rate=self.dropconnect_rate,
            **kw,
        )

    def _head(self, in_axis: str | None, **kw) -> nn.Module:
        init = build_initializer(self.kernel_init, self.kernel_init_kwargs)
        return nn.Dense(
            self.num_classes,
            kernel_init=partitioned(init, (in_axis, "classes")),
            bias_init=partitioned(nn.initializers.zeros, ("classes",)),
            dtype=self.dtype,
            **kw,
        )

    def pipeline_segments(self) -> list[Segment]:
        """The MLP as pipeline segments: flatten (and cast to `dtype`), layer_00, the run
        layer_01.., the head, its logits in float32.

        ValueError unless there are at least two hidden layers of equal width.
        """
        widths = self._hidden_widths()
        if len(widths) < 2 or len(set(widths)) != 1:
            raise ValueError(
                f"MLP: pipelining needs >= 2 hidden layers of equal width, got widths={widths}"
            )
        names = tuple(layer_name(i, len(widths)) for i in range(len(widths)))
        # parent=None: standalone modules, not submodules of this (unbound) MLP
        layer = self._hidden(widths[0], (None, None), self.dropout_rate, parent=None)
        return [
            Layer(None, lambda x: compute_input(x.reshape(x.shape[0], -1), self.dtype)),
            Layer(names[0], layer),
            Repeated(names[1:], layer),
            Layer(HEAD, self._head(None, parent=None), train_arg=False),
            Layer(None, float32_logits),
        ]
