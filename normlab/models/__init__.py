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
  * the classifier is the top-level params entry "head" (`normlab.models.transfer`);
  * mixed precision: the field `dtype` (None, or e.g. bfloat16) is the compute dtype of every
    Dense/Conv and NormAct. The input is cast to it inside the model (`compute_input`); params
    and running statistics stay float32, norms reduce their statistics in float32, and the
    logits come back in at least float32 (`float32_logits`), for the loss.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from normlab.registry import INITIALIZERS

HEAD = "head"


def compute_input(x: jax.Array, dtype: Any) -> jax.Array:
    """The model's input in its compute dtype (`dtype` None: unchanged).

        h = compute_input(x_NHWC, jnp.bfloat16)
    """
    return x if dtype is None else x.astype(dtype)


def float32_logits(logits: jax.Array) -> jax.Array:
    """Logits in float32 (float64 stays float64): a bfloat16 head's output, before the loss.

        return float32_logits(head(h))
    """
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


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
