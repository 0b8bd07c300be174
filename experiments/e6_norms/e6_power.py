"""E6 (a): the power decomposition by depth in a random conv net, for each normalization.

The net of the Proxy Norm paper's analysis (Labatie et al. 2021): a stem conv, then `depth`
times (norm → ReLU → conv 3×3), circular padding (no border effects), no biases, Kaiming
kernels, and the norm's affine drawn at random — γ ~ N(1, 0.2²), β ~ N(0, 0.2²) — so that
the channels differ as they would in a trained net. Nothing is trained.

At every layer l two tensors are decomposed (SPEC §1.10, `normlab.train.diagnostics.
power_decomposition`): the conv output x^l that enters the norm, and the pre-activation y^l (the
input of the ReLU: γ·Norm(x^l) + β, or for Proxy Norm γ·y + β inside the PN-activation). Their
failure modes show in different places: LN/GN let the channel-wise squared means of x^l grow
with depth (channel-wise denormalization); IN forces the instance statistics of y^l to (β_c, |γ_c|)
for every example, so the conv outputs x^l of deeper layers lose their variability across
examples (instance-statistics collapse).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from normlab.nn.initializers import make_initializer
from normlab.nn.norm_act import NormAct
from normlab.registry import CONVOLUTIONS
from normlab.train.diagnostics import collect_preacts, power_decomposition

# label: (norm, norm_kwargs, conv); GN uses groups of 8 channels whatever the width.
NETS: dict[str, tuple[str, dict[str, Any], str]] = {
    "BN": ("batch", {}, "standard"),
    "IN": ("instance", {}, "standard"),
    "LN": ("layer", {}, "standard"),
    "GN": ("group", {"group_size": 8}, "standard"),
    "LN+PN": ("layer+proxy", {}, "standard"),
    "GN+PN": ("group+proxy", {"group_size": 8}, "standard"),
    "LN+WS": ("layer", {}, "weight_std"),
}
MEASURES = ("sq_mean_share", "instance_mean_var_share", "instance_std_var_norm")
NORM_INPUT = "norm_input"


class RandomConvNet(nn.Module):
    """stem conv → depth × (NormAct → conv 3×3), circular padding, no biases.

    Sows each conv output that enters a norm as "norm_input" (the pre-activations are sown by
    `NormAct` as "preact").

        net = RandomConvNet(depth=50, width=64, norm="layer+proxy")
        _, state = net.apply(net.init(key, x_NHWC, train=True), x_NHWC, train=True,
                             mutable=["intermediates", "batch_stats"])
    """

    depth: int
    width: int
    norm: str
    norm_kwargs: Mapping[str, Any] | None = None
    conv: str = "standard"

    @nn.compact
    def __call__(self, x_NHWC: jax.Array, *, train: bool) -> jax.Array:
        conv_cls = CONVOLUTIONS.get(self.conv)
        init = make_initializer("kaiming_normal")
        x_NHWC = conv_cls(self.width, (3, 3), padding="CIRCULAR", use_bias=False,
                          kernel_init=init, name="stem")(x_NHWC)
        for layer in range(1, self.depth + 1):
            self.sow("intermediates", NORM_INPUT, x_NHWC)
            x_NHWC = NormAct(self.norm, "relu", self.norm_kwargs,
                             name=f"layer_{layer:02d}")(x_NHWC, train=train)
            x_NHWC = conv_cls(self.width, (3, 3), padding="CIRCULAR", use_bias=False,
                              kernel_init=init, name=f"conv_{layer:02d}")(x_NHWC)
        return x_NHWC


def randomize_affine(params: Any, key: jax.Array, spread: float = 0.2) -> Any:
    """Every norm's γ ("scale") ← N(1, spread²) and β ("bias") ← N(0, spread²); kernels and
    Proxy Norm's β̃, γ̃ (initialized 0) are left as they are."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(key, len(leaves))
    out = []
    for (path, leaf), k in zip(leaves, keys, strict=True):
        name = str(getattr(path[-1], "key", ""))
        if name == "scale":
            leaf = 1.0 + spread * jax.random.normal(k, leaf.shape, leaf.dtype)
        elif name == "bias":
            leaf = spread * jax.random.normal(k, leaf.shape, leaf.dtype)
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)


def power_by_depth(
    x_NHWC: np.ndarray, label: str, *, depth: int, width: int, seeds: Sequence[int]
) -> list[dict[str, dict[str, list[float]]]]:
    """For each seed, {"norm_input" | "preact": {measure: [value at layer 1..depth]}} of net
    `label` of NETS with its kernels and random affine parameters drawn from that seed.

    The net runs in train mode (BN normalizes with the statistics of this batch, as in the
    paper's analysis) on `x_NHWC`. The seeds run one after the other inside one compiled program
    (`lax.map`): a 50-layer net compiles once, and only one net's activations are alive at a
    time.
    """
    norm, norm_kwargs, conv = NETS[label]
    net = RandomConvNet(depth=depth, width=width, norm=norm, norm_kwargs=norm_kwargs, conv=conv)
    x = jnp.asarray(x_NHWC, jnp.float32)

    def terms(key: jax.Array) -> dict[str, dict[str, jax.Array]]:
        init_key, affine_key = jax.random.split(key)
        variables = dict(net.init(init_key, x, train=False))
        variables["params"] = randomize_affine(variables["params"], affine_key)
        _, state = net.apply(variables, x, train=True, mutable=["intermediates", "batch_stats"])
        found = state["intermediates"]
        tensors = {NORM_INPUT: list(found[NORM_INPUT]),
                   "preact": list(collect_preacts(found).values())}
        return {where: {m: jnp.stack([power_decomposition(y)[m] for y in ys]) for m in MEASURES}
                for where, ys in tensors.items()}

    keys = jnp.stack([jax.random.key(s) for s in seeds])
    by_seed = jax.jit(lambda k: jax.lax.map(terms, k))(keys)
    return [jax.tree.map(lambda a, i=i: np.asarray(a[i], np.float64).tolist(), by_seed)
            for i in range(len(seeds))]


def over_seeds(
    x_NHWC: np.ndarray, labels: Sequence[str], *, depth: int, width: int, seeds: Sequence[int]
) -> dict[str, list[dict[str, dict[str, list[float]]]]]:
    """`power_by_depth` for every label: {label: [one random net's measures per seed]}."""
    return {label: power_by_depth(x_NHWC, label, depth=depth, width=width, seeds=seeds)
            for label in labels}
