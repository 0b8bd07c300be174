"""Models (SPEC §1.9): MLP, a small CNN, VGG and ResNet, each chosen by name from `MODELS`.

Every model is a Flax Linen module called as `model(x, train=...)` -> logits (N, num_classes),
with the input NHWC (or any (N, ...) for the MLP, which flattens it), and takes its components
by name: `norm` (NORMS, including the Proxy Norm composites "layer+proxy"/"group+proxy"),
`activation` (ACTIVATIONS), `kernel_init` (INITIALIZERS), `conv` (CONVOLUTIONS: "standard",
"weight_std", "scaled_ws"), with `norm_kwargs`, `act_kwargs`, `kernel_init_kwargs`.

    from normlab.registry import MODELS
    model = MODELS.build("resnet20", norm="group+proxy", norm_kwargs={"num_groups": 8})
    variables = model.init(jax.random.key(0), x_NHWC, train=False)
    logits, state = model.apply(variables, x_NHWC, train=True,
                                rngs={"dropout": key}, mutable=["batch_stats"])

Conventions shared by every model:
  * every norm + activation goes through `normlab.nn.norm_act.NormAct`, which sows the input of
    the nonlinearity as "preact" under the layer's path (e.g. layer_03/norm_act2/"preact"; a
    Proxy Norm composite sows it one level deeper, under .../norm);
  * the layers are named `layer_00`, `layer_01`, ... in depth order (zero-padded to the same
    width, `layer_name`), so the sorted paths of `apply(..., mutable=["intermediates"])` — the
    order `jax.tree_util` flattens a dict in, also after `jit` — are the depth order, and so is
    the natural-number order of `normlab.train.diagnostics.collect_preacts`. Within a ResNet
    block: norm_act1 < norm_act2 (< norm_act3) < norm_act_shortcut < out_act;
  * norms fused with their own nonlinearity (class attribute `self_activated`: "frn",
    "evonorm_b0", "evonorm_s0") are meant to be used with activation="identity";
  * the classifier is the top-level params entry "head" (`normlab.models.transfer`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn

from normlab.registry import INITIALIZERS

HEAD = "head"


def layer_name(index: int, num_layers: int) -> str:
    """Name of layer `index` of `num_layers`, zero-padded so names sort in depth order.

        layer_name(3, 30)      # "layer_03"
        layer_name(3, 120)     # "layer_003"
    """
    digits = max(2, len(str(max(num_layers - 1, 0))))
    return f"layer_{index:0{digits}d}"


def build_initializer(name: str, kwargs: Any) -> nn.initializers.Initializer:
    """The `INITIALIZERS` entry `name` built with the mapping `kwargs` (None means none)."""
    return INITIALIZERS.build(name, **dict(kwargs or {}))


def preset(cls: type[nn.Module], doc: str, **fields: Any) -> functools.partial:
    """`functools.partial(cls, **fields)` with a docstring, for registering named presets.

    The preset's fields stay overridable: `MODELS.build("resnet20", num_classes=100)`.

        MODELS.register("resnet20")(preset(ResNet, "CIFAR ResNet-20.", stage_sizes=(3, 3, 3)))
    """
    made = functools.partial(cls, **fields)
    made.__doc__ = doc
    return made
