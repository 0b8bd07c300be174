"""GPipe pipeline parallelism over the mesh's `stage` axis (Huang et al. 2019).

A model that can be pipelined lists its layers as segments (its `pipeline_segments()` method):
`Layer`s, which run on the whole batch of each data shard (on every stage device), and
`Repeated` runs of L identical layers (same module, same parameter shapes). A run's parameters
are stacked on a leading layer axis and sharded over `stage`, S devices holding L/S consecutive
layers each; the stacked run is stored under the key "first..last" (e.g. "layer_01..layer_08")
in params, batch_stats and the optimizer state (`PipelinedModel.stack` / `unstack`;
checkpoints keep the unstacked layout, so they restore on any mesh).

Schedule (GPipe, no interleaving): a data shard's b examples are split into M microbatches of
b/M consecutive examples; at tick t = 0 .. M+S−2 stage s runs its layers on microbatch t − s
(when 0 ≤ t − s < M) and passes the result to stage s+1 with a collective permute. Stage 0
reads the microbatches; the last stage's outputs are broadcast back over `stage`. Bubble ticks
compute on placeholders whose results are masked out. Reverse-mode autodiff of the schedule is
the backward pipeline.

BatchNorm inside a pipelined run normalizes each **microbatch**: with the global scope over the
microbatch's rows on every data shard (b/M rows of each shard, B/M in all), per device over its
own b/M rows. Its running statistics are updated once per step with the mean of the M
microbatches' statistics, new = m·old + (1−m)·mean_k(stats_k), as ghost batches would be.
Layers outside the runs see the whole batch. So a pipeline with M > 1 trains a BN network
differently from one device (as ghost batches of B/M would); GN, LN, PN and M = 1 agree exactly.

    model = PipelinedModel(MODELS.build("mlp", depth=9, width=64), mesh, microbatches=4)
    stacked = model.stack(variables)                  # {"params": {..., "layer_01..layer_08"...
    logits, updates = model.apply(stacked, x, train=True, rngs={"dropout": key},
                                  mutable=["batch_stats"])
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from normlab.nn.segments import Repeated, Segment


def _runs(segments: Sequence[Segment]) -> list[Repeated]:
    return [s for s in segments if isinstance(s, Repeated)]


def stack_layers(tree: Any, segments: Sequence[Segment]) -> Any:
    """Every dict in `tree` holding a run's layers gets them stacked under the run's key.

    Works on params, batch_stats and optimizer states alike (optax states hold dicts shaped
    like the params).
    """
    runs = _runs(segments)

    def holds_layers(node):
        return isinstance(node, dict) and any(n in node for r in runs for n in r.names)

    def convert(node):
        if not holds_layers(node):
            return node
        node = dict(node)
        for run in runs:
            present = [n for n in run.names if n in node]
            if not present:
                continue
            if len(present) != len(run.names):
                raise ValueError(f"pipeline: only {present} of the layers {run.names} found")
            parts = [node.pop(n) for n in run.names]
            node[run.key] = jax.tree.map(lambda *xs: jnp.stack(xs), *parts)
        return node

    return jax.tree.map(convert, tree, is_leaf=holds_layers)


def unstack_layers(tree: Any, segments: Sequence[Segment]) -> Any:
    """Inverse of `stack_layers`."""
    runs = _runs(segments)

    def holds_stack(node):
        return isinstance(node, dict) and any(r.key in node for r in runs)

    def convert(node):
        if not holds_stack(node):
            return node
        node = dict(node)
        for run in runs:
            if run.key in node:
                stacked = node.pop(run.key)
                for i, name in enumerate(run.names):
                    node[name] = jax.tree.map(lambda x, i=i: x[i], stacked)
        return node

    return jax.tree.map(convert, tree, is_leaf=holds_stack)


def stage_specs(tree: Any, segments: Sequence[Segment], stage_axis: str = "stage") -> Any:
    """PartitionSpec per leaf of a stacked tree: P(stage) for a run's layers, P() otherwise."""
    keys = {r.key for r in _runs(segments)}

    def spec(path, _):
        in_run = any(getattr(k, "key", None) in keys for k in path)
        return PartitionSpec(stage_axis) if in_run else PartitionSpec()

    return jax.tree_util.tree_map_with_path(spec, tree)


def check_stages(segments: Sequence[Segment], num_stages: int, model: str) -> None:
    """ValueError unless the model has runs and each run's length is a multiple of the stages."""
    runs = _runs(segments)
    if not runs:
        raise ValueError(f"pipeline: {model} has no run of identical layers to split into stages")
    for run in runs:
        if len(run.names) % num_stages:
            raise ValueError(
                f"pipeline: {model}'s {len(run.names)} identical layers {run.key} are not "
                f"divisible by mesh.stage={num_stages}"
            )


def gpipe(
    apply_layer: Callable[[Any, Any, jax.Array, jax.Array], tuple[jax.Array, Any]],
    params_L: Any,
    stats_L: Any,
    x_MB: jax.Array,
    key: jax.Array,
    *,
    stage_axis: str = "stage",
) -> tuple[jax.Array, Any]:
    """The GPipe schedule inside `shard_map`: M microbatches through S stages in M+S−1 ticks.

    `params_L`, `stats_L`: this stage's L/S layers (leading axis); `x_MB`: the microbatches (the
    same on every stage; stage 0 reads them); `apply_layer(params, stats, h, key) -> (h, new
    stats)` runs one layer. Returns the outputs of the last stage, (M, b, ...) on every stage,
    and the mean over microbatches of each layer's updated statistics.

        out_MB, stats = gpipe(apply_layer, params_L, stats_L, x_MB, key)
    """
    num_stages = lax.axis_size(stage_axis)
    stage = lax.axis_index(stage_axis)
    num_micro = x_MB.shape[0]
    layers_here = jax.tree.leaves(params_L)[0].shape[0]

    def run_stage(h, micro):
        def layer(h, inputs):
            p, s, index = inputs
            layer_key = jax.random.fold_in(key, stage * layers_here + index)
            return apply_layer(p, s, h, jax.random.fold_in(layer_key, micro))

        return lax.scan(layer, h, (params_L, stats_L, jnp.arange(layers_here)))

    def tick(carry, t):
        h_prev, outputs, total = carry
        micro = t - stage
        valid = (micro >= 0) & (micro < num_micro)
        micro = jnp.clip(micro, 0, num_micro - 1)
        x_t = lax.dynamic_index_in_dim(x_MB, jnp.minimum(t, num_micro - 1), keepdims=False)
        h_out, new_stats = run_stage(jnp.where(stage == 0, x_t, h_prev), micro)
        total = jax.tree.map(lambda a, s: a + jnp.where(valid, s, 0), total, new_stats)
        done = lax.dynamic_update_index_in_dim(outputs, h_out, micro, 0)
        outputs = jnp.where(valid & (stage == num_stages - 1), done, outputs)
        h_next = lax.ppermute(h_out, stage_axis, [(i, i + 1) for i in range(num_stages - 1)])
        return (h_next, outputs, total), None

    carry = (jnp.zeros_like(x_MB[0]), jnp.zeros_like(x_MB), jax.tree.map(jnp.zeros_like, stats_L))
    (_, outputs, total), _ = lax.scan(tick, carry, jnp.arange(num_micro + num_stages - 1))
    outputs = lax.psum(jnp.where(stage == num_stages - 1, outputs, 0), stage_axis)
    return outputs, jax.tree.map(lambda a: a / num_micro, total)


def _apply_module(module, params, stats, h, key, train_arg=True):
    """One layer in train mode: (output, its updated batch_stats or {})."""
    variables = {"params": params} if params else {}
    if stats:
        variables["batch_stats"] = stats
    kwargs = {"train": True} if train_arg else {}
    y, updates = module.apply(
        variables, h, rngs={"dropout": key}, mutable=["batch_stats"], **kwargs
    )
    return y, updates.get("batch_stats", {})


class PipelinedModel:
    """A model whose `Repeated` runs are pipelined over the mesh's `stage` axis (GPipe).

    Quacks like the Linen model for the trainer: `apply(variables, x, train=True, rngs=...,
    mutable=["batch_stats"])` on the stacked layout runs the pipeline under `shard_map`
    (batch over `data`, runs over `stage`; mesh.model must be 1); `train=False` unstacks and
    runs the canonical model. See the module docstring for the schedule and BatchNorm.
    """

    def __init__(
        self,
        model: nn.Module,
        mesh: Mesh,
        microbatches: int,
        *,
        data_axis: str = "data",
        stage_axis: str = "stage",
    ):
        name = type(model).__name__
        if not hasattr(model, "pipeline_segments"):
            raise ValueError(
                f"pipeline: model {name} cannot be pipelined (no pipeline_segments); "
                "use mesh.stage=1"
            )
        if mesh.shape.get("model", 1) != 1:
            raise ValueError(
                f"pipeline: mesh.stage={mesh.shape[stage_axis]} with mesh.model="
                f"{mesh.shape['model']} is not supported; use tensor or pipeline parallelism"
            )
        self.canonical = model
        self.mesh = mesh
        self.microbatches = microbatches
        self.data_axis, self.stage_axis = data_axis, stage_axis
        self.segments: tuple[Segment, ...] = tuple(model.pipeline_segments())
        check_stages(self.segments, mesh.shape[stage_axis], name)

    def stack(self, tree: Any) -> Any:
        """Canonical layout → stacked layout (`stack_layers`)."""
        return stack_layers(tree, self.segments)

    def unstack(self, tree: Any) -> Any:
        """Stacked layout → canonical layout (`unstack_layers`)."""
        return unstack_layers(tree, self.segments)

    def specs(self, tree: Any) -> Any:
        """PartitionSpecs of a stacked tree: runs over `stage`, the rest replicated."""
        return stage_specs(tree, self.segments, self.stage_axis)

    def _body(self, params, stats, x, key):
        key = jax.random.fold_in(key, lax.axis_index(self.data_axis))
        h, new_stats = x, {}
        for index, segment in enumerate(self.segments):
            seg_key = jax.random.fold_in(key, index)
            if isinstance(segment, Repeated):
                b = h.shape[0]
                h_MB = h.reshape((self.microbatches, b // self.microbatches) + h.shape[1:])
                apply_layer = functools.partial(_apply_module, segment.module)
                out, run_stats = gpipe(
                    apply_layer,
                    params[segment.key],
                    stats.get(segment.key, {}),
                    h_MB,
                    seg_key,
                    stage_axis=self.stage_axis,
                )
                h = out.reshape((b,) + out.shape[2:])
                if run_stats:
                    new_stats[segment.key] = run_stats
            elif isinstance(segment.module, nn.Module):
                name = segment.name
                h, layer_stats = _apply_module(
                    segment.module,
                    params.get(name, {}) if name else {},
                    stats.get(name, {}) if name else {},
                    h,
                    seg_key,
                    segment.train_arg,
                )
                if layer_stats:
                    new_stats[name] = layer_stats
            else:
                h = segment.module(h)
        # Per-device statistics (any scope but global) differ between data shards: average.
        new_stats = jax.tree.map(lambda s: lax.pmean(s, self.data_axis), new_stats)
        return h, new_stats

    def apply(
        self,
        variables: dict[str, Any],
        x: jax.Array,
        *,
        train: bool,
        rngs: dict[str, jax.Array] | None = None,
        mutable: Any = False,
    ) -> Any:
        """Logits (and `{"batch_stats": ...}` with `mutable`) of the stacked `variables`."""
        if not train:
            return self.canonical.apply(self.unstack(variables), x, train=False, rngs=rngs,
                                        mutable=mutable)
        params = variables["params"]
        stats = variables.get("batch_stats", {})
        key = (rngs or {}).get("dropout", jax.random.PRNGKey(0))
        run = jax.shard_map(
            self._body,
            mesh=self.mesh,
            in_specs=(self.specs(params), self.specs(stats), PartitionSpec(self.data_axis),
                      PartitionSpec()),
            out_specs=(PartitionSpec(self.data_axis), self.specs(stats)),
            # Without replication types: a norm's custom VJP (GN, PN) returns cotangents for
            # replicated inputs typed as per-device, which typed shard_map rejects. The
            # gradients are the same (tests/test_parallel_equivalence.py checks them).
            check_vma=False,
        )
        logits, new_stats = run(params, stats, x, key)
        if not mutable:
            return logits
        return logits, ({"batch_stats": new_stats} if new_stats else {})
