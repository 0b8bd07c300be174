"""How one run uses its devices, chosen only by the config: `ParallelPlan.from_config(config)`.

    config.mesh = {data, model, stage}      one size may be -1 (the remaining devices)
    config.parallel_mode = "jit" | "pmap"
    config.sharding_rules = (("batch", "data"), ("embed", None), ("mlp", "model"), ...)
    config.pipeline.microbatches = M        used when mesh.stage > 1
    config.bn_scope = "global" | "per_device" | "ghost" | "groups"  (+ ghost_batch_size, bn_groups)

Modes:
  * jit (default): one `jax.jit` step over the (data, model, stage) mesh. The batch is sharded
    over `data` and the compiler inserts the gradient all-reduce; parameters are sharded by
    their logical axes and the rules (tensor parallelism over `model`); with mesh.stage > 1 the
    model's runs of identical layers are pipelined over `stage` (`normlab.parallel.pipeline`).
  * pmap: the legacy `jax.pmap` of the same step over the `data` devices, with explicit
    `pmean`s of gradients, metrics and BatchNorm statistics (data parallelism only; one
    process). Each device draws its own augmentation and dropout randomness, so with those on,
    pmap and jit runs differ by the randomness, not the math.

The state has two layouts: the canonical one (the model's own parameter tree, sharded by the
rules, or replicated) used by checkpoints, evaluation and diagnostics, so a checkpoint restores
on any mesh; and the run layout the step works on (`to_run` / `to_canonical`): the same for
jit, stacked runs sharded over `stage` for the pipeline, one copy per device for pmap.

The plan knows devices and layouts, not training: it takes the functions it places and compiles
(`init_fn` makes a canonical state, a pytree with a `params` field; `build_body` makes a chunk
of train steps, `normlab.train.step.chunk_body`) and never imports `normlab.train`.

    plan = ParallelPlan.from_config(config)
    model, run_model = plan.adapt_model(MODELS.build(...))
    state = plan.init(lambda: init_state(model, tx, rng, example_x), model, run_model, example_x)
    chunk = plan.jit_chunk(chunk_body(step_cfg), run_model, state)
    state, metrics = chunk(state, plan.put_train(images), plan.put_train(labels), idx_KB)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from normlab.nn.logical import Rules, activation_sharding, annotating
from normlab.parallel.bn_scope import bn_scope_kwargs, scoped_norm_kwargs
from normlab.parallel.logical import param_specs, parse_rules
from normlab.parallel.mesh import batch_sharded, build_mesh, replicated
from normlab.parallel.pipeline import PipelinedModel

MODES = ("jit", "pmap")

# `build_body(model, batch_sharding, axis_name) -> body(state, *batch_args) -> (state, metrics)`:
# a chunk of train steps for the model the step runs, with the batch sharding to constrain to
# (jit) or the mapped axis to average over (pmap).
ChunkBuilder = Callable[[Any, Any, "str | None"], Callable[..., tuple[Any, Any]]]


def _dict_tail(path: tuple) -> tuple:
    """The trailing dict keys of a tree path (a parameter's path inside any state tree)."""
    tail = []
    for key in reversed(path):
        if not isinstance(key, jax.tree_util.DictKey):
            break
        tail.append(key.key)
    return tuple(reversed(tail))


@dataclass
class ParallelPlan:
    """The mesh, the mode and everything the trainer asks of them (see the module docstring)."""

    mesh: Mesh
    mode: str
    rules: Rules
    microbatches: int
    bn_scope: str
    scope_kwargs: dict[str, Any]

    @classmethod
    def from_config(
        cls, config: ConfigDict, devices: Sequence[jax.Device] | None = None
    ) -> ParallelPlan:
        """Checks the parallel fields of `config` against the devices; ValueError on the first
        problem (a bad mesh, a batch that does not split, an unknown mode or scope)."""
        mode = config.parallel_mode
        if mode not in MODES:
            raise ValueError(f"unknown parallel_mode {mode!r}; valid: {', '.join(MODES)}")
        mesh = build_mesh(dict(config.mesh), devices)
        data, model, stages = (mesh.shape[a] for a in ("data", "model", "stage"))
        if mode == "pmap" and (model != 1 or stages != 1 or jax.process_count() != 1):
            raise ValueError(
                "parallel_mode='pmap' is data parallelism in one process: it needs mesh.model=1 "
                f"and mesh.stage=1, got model={model}, stage={stages}, "
                f"{jax.process_count()} processes"
            )
        batch = config.batch_size
        if batch % data:
            raise ValueError(
                f"batch_size={batch} is not divisible by the {data} devices of the mesh's "
                "data axis"
            )
        micro = config.pipeline.microbatches
        if micro < 1 or (stages == 1 and micro != 1):
            raise ValueError(
                f"pipeline.microbatches must be >= 1, and 1 unless mesh.stage > 1; got "
                f"microbatches={micro} with stage={stages}"
            )
        if (batch // data) % micro:
            raise ValueError(
                f"pipeline.microbatches={micro} does not divide the {batch // data} examples of "
                f"each data shard (batch_size={batch}, mesh.data={data})"
            )
        scope_kwargs = bn_scope_kwargs(
            config.bn_scope,
            mapped=mode == "pmap" or stages > 1,
            global_batch=batch,
            data_size=data,
            ghost_batch_size=config.ghost_batch_size,
            groups=config.bn_groups,
            microbatches=micro,
        )
        rules = parse_rules(config.sharding_rules)
        return cls(mesh, mode, rules, micro, config.bn_scope, scope_kwargs)

    @property
    def pipelined(self) -> bool:
        """Whether the step runs a GPipe pipeline (mesh.stage > 1)."""
        return self.mesh.shape["stage"] > 1

    @property
    def data_size(self) -> int:
        """D, the devices of the `data` axis."""
        return self.mesh.shape["data"]

    # ------------------------------------------------------------------ model
    def adapt_model(self, model: nn.Module) -> tuple[nn.Module, Any]:
        """(canonical model, model the step runs): every norm of the model (each field
        `<x>norm` with a `<x>norm_kwargs`, e.g. VGG's norm and fc_norm) gets the BN scope's
        arguments; with mesh.stage > 1 the step runs a `PipelinedModel` of it."""
        fields = {f.name for f in dataclasses.fields(model)}
        norms = [f for f in sorted(fields) if f.endswith("norm") and f"{f}_kwargs" in fields]
        mapped = self.mode == "pmap" or self.pipelined
        if not norms and (self.bn_scope != "global" or mapped):
            raise ValueError(
                f"bn_scope={self.bn_scope!r} with parallel_mode={self.mode!r}, "
                f"mesh.stage={self.mesh.shape['stage']} needs a model whose norms are fields "
                f"(`norm`, `norm_kwargs`); {type(model).__name__} has none"
            )
        updates = {
            f"{name}_kwargs": scoped_norm_kwargs(
                getattr(model, name), getattr(model, f"{name}_kwargs"), self.bn_scope,
                self.scope_kwargs,
            )
            for name in norms
        }
        model = model.clone(**updates)
        if self.pipelined:
            return model, PipelinedModel(model, self.mesh, self.microbatches)
        return model, model

    # ------------------------------------------------------------------ state
    def canonical_shardings(self, model: nn.Module, abstract: Any, example_x: np.ndarray) -> Any:
        """Shardings of the canonical state: parameters (and the optimizer's copies of them)
        by their logical axes and the rules in jit mode; everything else replicated."""
        if self.mode != "jit" or self.pipelined:
            return jax.tree.map(lambda _: replicated(self.mesh), abstract)
        with annotating():
            boxed = jax.eval_shape(
                lambda: model.init(
                    {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)},
                    example_x,
                    train=False,
                )
            )
        specs = param_specs(boxed["params"], self.rules)
        by_path = {
            _dict_tail(path): spec
            for path, spec in jax.tree_util.tree_leaves_with_path(
                specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
            )
        }
        shapes = {
            _dict_tail(path): leaf.shape
            for path, leaf in jax.tree_util.tree_leaves_with_path(abstract.params)
        }

        def sharding(path, leaf):
            tail = _dict_tail(path)
            spec = by_path.get(tail, PartitionSpec())
            if shapes.get(tail) != getattr(leaf, "shape", None):
                spec = PartitionSpec()
            return NamedSharding(self.mesh, spec)

        return jax.tree_util.tree_map_with_path(sharding, abstract)

    def abstract(self, init_fn: Callable[[], Any], model: nn.Module, example_x: np.ndarray) -> Any:
        """ShapeDtypeStructs (with canonical shardings) of the canonical state `init_fn()`
        makes: what to restore a checkpoint into."""
        shapes = jax.eval_shape(init_fn)
        shardings = self.canonical_shardings(model, shapes, example_x)
        return jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
        )

    def init(
        self, init_fn: Callable[[], Any], model: nn.Module, run_model: Any, example_x: np.ndarray
    ) -> Any:
        """The state `init_fn()` makes, in the run layout, initialized directly into its
        shardings (never whole on one device)."""
        abstract = self.abstract(init_fn, model, example_x)
        state = jax.jit(init_fn, out_shardings=jax.tree.map(lambda s: s.sharding, abstract))()
        return self.to_run(state, run_model)

    def place(self, state: Any, model: nn.Module, run_model: Any, example_x: np.ndarray) -> Any:
        """A canonical state from elsewhere (host arrays, another mesh) in this plan's
        shardings and run layout."""
        abstract = jax.eval_shape(lambda: state)
        shardings = self.canonical_shardings(model, abstract, example_x)
        return self.to_run(jax.device_put(state, shardings), run_model)

    def _pmap_sharding(self) -> NamedSharding:
        devices = Mesh(np.asarray(self.mesh.devices).reshape(-1), ("data",))
        return NamedSharding(devices, PartitionSpec("data"))

    def run_shardings(self, state: Any, run_model: Any) -> Any:
        """Shardings of a run-layout state: runs over `stage` for the pipeline, else as is."""
        if self.pipelined:
            specs = run_model.specs(state)
            return jax.tree.map(lambda spec: NamedSharding(self.mesh, spec), specs)
        return jax.tree.map(lambda x: x.sharding, state)

    def to_run(self, state: Any, run_model: Any) -> Any:
        """Canonical layout → run layout."""
        if self.pipelined:
            stacked = jax.eval_shape(run_model.stack, state)
            shardings = self.run_shardings(stacked, run_model)
            return jax.jit(run_model.stack, out_shardings=shardings)(state)
        if self.mode == "pmap":
            n = self.data_size
            copies = jax.jit(
                lambda s: jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), s),
                out_shardings=self._pmap_sharding(),
            )
            return copies(state)
        return state

    def to_canonical(self, state: Any, run_model: Any) -> Any:
        """Run layout → canonical layout (for checkpoints, evaluation and diagnostics)."""
        if self.pipelined:
            return jax.jit(run_model.unstack, out_shardings=replicated(self.mesh))(state)
        if self.mode == "pmap":
            first = jax.jit(lambda s: jax.tree.map(lambda x: x[0], s),
                            out_shardings=replicated(self.mesh))
            return first(state)
        return state

    # ------------------------------------------------------------------ data and steps
    def put_train(self, array: np.ndarray) -> jax.Array:
        """A training array (the whole split) on the devices: replicated over the mesh, or
        one copy per device (pmap)."""
        if self.mode == "pmap":
            return jax.device_put(
                np.broadcast_to(array, (self.data_size, *array.shape)), self._pmap_sharding()
            )
        return jax.device_put(array, replicated(self.mesh))

    def host_batches(self, array: np.ndarray, idx_KB: np.ndarray) -> jax.Array:
        """The global (K, B, ...) batches `array[idx_KB]` sharded over `data`, of which this
        process reads (from its host copy) only the rows its own devices hold."""
        sharding = batch_sharded(self.mesh, leading_axes=1)
        shape = (*idx_KB.shape, *array.shape[1:])
        return jax.make_array_from_callback(shape, sharding, lambda index: array[idx_KB[index[:2]]])

    def from_local_rows(self, local: np.ndarray, leading: int = 0) -> jax.Array:
        """The global array of which this process holds rows [p·b, (p+1)·b) of axis `leading`
        (b = local.shape[leading], p = the process index: a contiguous block, as `EpochSampler`
        assigns them), sharded over `data` after `leading` unsharded axes."""
        b = local.shape[leading]
        start = jax.process_index() * b
        shape = (*local.shape[:leading], b * jax.process_count(), *local.shape[leading + 1 :])

        def rows(index: tuple) -> np.ndarray:
            index = list(index) + [slice(None)] * (len(shape) - len(index))
            lo, hi, _ = index[leading].indices(shape[leading])
            if lo < start or hi > start + b:
                raise RuntimeError(
                    f"a device holds rows [{lo}, {hi}) outside this process's rows "
                    f"[{start}, {start + b}): the mesh's data axis must keep each process's "
                    "devices together"
                )
            index[leading] = slice(lo - start, hi - start)
            return local[tuple(index)]

        return jax.make_array_from_callback(
            shape, batch_sharded(self.mesh, leading_axes=leading), rows
        )

    def jit_chunk(self, build_body: ChunkBuilder, run_model: Any, state: Any) -> Callable:
        """The compiled chunk of `build_body` for this mode, state donated.

        jit: `chunk(state, *batch_args)` with the arguments of the body (the device-resident
        `images, labels, idx_KB` or the streamed `x_KB, labels_KB`). pmap: `chunk(state, images,
        labels, idx_KB)` only (one process, device-resident data).
        """
        if self.mode == "pmap":
            return self._pmap_chunk(build_body(run_model, None, "data"))
        body = build_body(run_model, batch_sharded(self.mesh), None)

        def chunk(*args):
            context = (
                contextlib.nullcontext()
                if self.pipelined
                else activation_sharding(self.mesh, self.rules)
            )
            with context:
                return body(*args)

        return jax.jit(
            chunk,
            donate_argnums=0,
            out_shardings=(self.run_shardings(state, run_model), replicated(self.mesh)),
        )

    def _pmap_chunk(self, body: Callable) -> Callable:
        n = self.data_size
        mapped = jax.pmap(
            body,
            axis_name="data",
            devices=list(np.asarray(self.mesh.devices).reshape(-1)),
            donate_argnums=0,
        )

        def chunk(state, images, labels, idx_KB):
            k, b = idx_KB.shape
            # device d takes rows d·B/D..(d+1)·B/D of each batch, as the jit sharding does
            idx_DKb = jnp.asarray(idx_KB).reshape(k, n, b // n).transpose(1, 0, 2)
            state, metrics = mapped(state, images, labels, idx_DKb)
            return state, jax.tree.map(lambda m: m[0], metrics)

        return chunk
