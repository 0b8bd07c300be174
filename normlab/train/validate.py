"""Checks a training config before anything loads or compiles.

Every field of `defaults.base_config` is checked here, each failing with one line that names the
field, the value and what is valid: durations first (a negative `total_steps` is a duration
error, not a warm-up one), then sizes and intervals (intervals must be multiples of
`steps_per_call` so that chunks of steps line up with logging, evaluation and checkpoints), the
learning rate and regularization, every component name (looked up in its registry, which lists
the valid names) with its keyword arguments, the data splits, and the parallel layout. Only the
checks that need the devices or the data set's size are left to the run's assembly.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

from ml_collections import ConfigDict

from normlab.parallel.bn_scope import check_scope
from normlab.parallel.logical import parse_rules
from normlab.parallel.mesh import resolve_axis_sizes
from normlab.parallel.plan import MODES
from normlab.registry import (
    ACTIVATIONS,
    AUGMENTATIONS,
    CONVOLUTIONS,
    INITIALIZERS,
    MODELS,
    NORMS,
    OPTIMIZERS,
    RESIDUAL_INITS,
    SCHEDULES,
    Registry,
)
from normlab.train.defaults import DTYPES, base_config
from normlab.train.optim import build_clipping, build_schedule, split_optimizer_options
from normlab.train.stream_input import PIPELINES

# model field -> (registry of its name, the model field holding that component's kwargs)
_MODEL_COMPONENTS: dict[str, tuple[Registry, str | None]] = {
    "norm": (NORMS, "norm_kwargs"),
    "activation": (ACTIVATIONS, "act_kwargs"),
    "kernel_init": (INITIALIZERS, "kernel_init_kwargs"),
    "conv": (CONVOLUTIONS, None),
    "residual_init": (RESIDUAL_INITS, None),
}
INTERVALS = ("log_every_steps", "eval_every_steps", "checkpoint_every_steps", "diag_every_steps")
BATCH_SIZES = ("batch_size", "eval_batch_size", "diag_batch_size")
_FIXED_GROUPS = ("weight_decay", "init_from", "mesh", "pipeline")  # fields no option adds to
CLIPPING = {"none": (), "norm": ("max_norm",), "agc": ("clipping", "eps")}


def model_kwargs(config: ConfigDict) -> dict:
    """The model's constructor arguments (everything in `config.model` but its name)."""
    return {k: v for k, v in config.model.to_dict().items() if k != "name"}


def validate(config: ConfigDict) -> None:
    """Raises ValueError on the first problem, naming the field and the valid choices."""
    _check_fields(config)
    _check_durations(config)
    _check_sizes(config)
    _check_learning(config)
    _check_model(config)
    _check_data(config)
    _check_parallel(config)
    _validate_init_from(config.init_from)
    _check_seeds(config)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _at_least(field: str, value: Any, low: int, meaning: str = "") -> None:
    if not _is_int(value) or value < low:
        raise ValueError(f"{field} must be an integer >= {low}{meaning}, got {value!r}")


def _in_range(field: str, value: Any, low: float, high: float, *, high_open: bool) -> None:
    ok = _is_number(value) and low <= value and (value < high if high_open else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"{field} must be a number in [{low:g}, {high:g}{bracket}, got {value!r}")


def _check_fields(config: ConfigDict) -> None:
    """Every field is one of base_config's (a typo in a config file is not silently unused)."""
    base = base_config()
    for group, fields in [("config", config), *((g, config[g]) for g in _FIXED_GROUPS)]:
        valid = base if group == "config" else base[group]
        if unknown := sorted(set(fields) - set(valid)):
            raise ValueError(
                f"unknown field(s) {', '.join(unknown)} in {group}; valid: {', '.join(valid)}"
            )
    if not isinstance(config.allow_negative_lr, bool):
        value = config.allow_negative_lr
        raise ValueError(f"allow_negative_lr must be True or False, got {value!r}")


def _check_durations(config: ConfigDict) -> None:
    _at_least("total_steps", config.total_steps, 0, " (0: use total_epochs)")
    epochs = config.total_epochs
    if not _is_number(epochs) or not math.isfinite(epochs) or epochs < 0:
        raise ValueError(f"total_epochs must be a finite number >= 0 (0: use total_steps), "
                         f"got {epochs!r}")  # fmt: skip
    if bool(config.total_steps) == bool(epochs):
        raise ValueError(
            "give exactly one of total_steps and total_epochs (the other 0), got "
            f"total_steps={config.total_steps}, total_epochs={epochs}"
        )
    _at_least("seed", config.seed, 0)


def _check_sizes(config: ConfigDict) -> None:
    for name in BATCH_SIZES:
        _at_least(name, config[name], 1)
    _at_least("steps_per_call", config.steps_per_call, 1)
    for name in INTERVALS:
        every = config[name]
        if not _is_int(every) or every < 0 or (every and every % config.steps_per_call):
            raise ValueError(
                f"{name}={every!r} must be 0 (off) or a positive multiple of "
                f"steps_per_call={config.steps_per_call}"
            )
    # 0 would delete every checkpoint as it is written: a run that cannot resume or be evaluated
    _at_least("keep_checkpoints", config.keep_checkpoints, 1, " (the newest checkpoints kept)")
    _at_least("pad_to", config.pad_to, 0, " (0: no padding)")
    if not isinstance(config.diag_unit_layers, str):
        raise ValueError("diag_unit_layers must be a string of comma-separated layer paths "
                         f"('' for none), got {config.diag_unit_layers!r}")  # fmt: skip


def _check_learning(config: ConfigDict) -> None:
    lr = config.lr
    if not _is_number(lr) or not math.isfinite(lr):
        raise ValueError(f"lr must be a finite number, got {lr!r}")
    if lr < 0 and not config.allow_negative_lr:
        raise ValueError(
            f"lr={lr} is negative (gradient ascent); set allow_negative_lr=True if that is meant"
        )
    for name, value in config.weight_decay.items():
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            raise ValueError(f"weight_decay.{name} must be a finite number >= 0, got {value!r}")
    _in_range("label_smoothing", config.label_smoothing, 0, 1, high_open=True)

    name, options, _ = split_optimizer_options(config.optimizer.to_dict())
    OPTIMIZERS.build(name, **options)
    schedule = dict(config.schedule)
    warmup = schedule.get("warmup_steps", 0)
    _at_least("schedule.warmup_steps", warmup, 0)
    if config.total_steps and warmup > config.total_steps:
        raise ValueError(
            f"schedule.warmup_steps={warmup} is longer than total_steps={config.total_steps}"
        )
    SCHEDULES.get(schedule["name"])
    # a real schedule from the options (cheap, nothing compiles): bad options fail here
    build_schedule(base_lr=1.0, total_steps=config.total_steps or warmup + 1, **schedule)
    clip = dict(config.clip)
    name = clip.pop("name")
    if name not in CLIPPING:
        raise ValueError(f"unknown clipping {name!r}; valid: {', '.join(sorted(CLIPPING))}")
    for key, value in clip.items():
        if key not in CLIPPING[name]:
            valid = ", ".join(CLIPPING[name]) or "(none)"
            raise ValueError(f"clip.{key}: not an option of clipping {name!r}; valid: {valid}")
        if not _is_number(value) or not value > 0:
            raise ValueError(f"clip.{key} must be a number > 0, got {value!r}")
    build_clipping(name, **clip)


def _check_kwargs(field: str, component: Any, kwargs: Mapping[str, Any]) -> None:
    """ValueError if `component` takes no keyword named like one of `kwargs`."""
    try:
        signature = inspect.signature(component)
    except (TypeError, ValueError):  # no signature to check against
        return
    try:
        signature.bind_partial(**kwargs)
    except TypeError:
        accepted = [p for p in signature.parameters if p not in ("self", "parent", "name")]
        unknown = sorted(set(kwargs) - set(accepted))
        raise ValueError(
            f"{field}: unknown option(s) {', '.join(unknown)}; accepted: "
            f"{', '.join(accepted) or '(none)'}"
        ) from None


def _check_model(config: ConfigDict) -> None:
    model = config.model
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {config.dtype!r}")
    if "dtype" in model:
        raise ValueError(f"model.dtype: set the compute dtype with config.dtype (one of "
                         f"{', '.join(DTYPES)}), not in model")  # fmt: skip
    kwargs = model_kwargs(config)
    for field, (registry, kwargs_field) in _MODEL_COMPONENTS.items():
        if field in model:
            component = registry.get(model[field])
            if kwargs_field and model.get(kwargs_field):
                _check_kwargs(f"model.{kwargs_field}", component, dict(model[kwargs_field]))
    for key, value in kwargs.items():
        if key.endswith("_rate"):
            _in_range(f"model.{key}", value, 0, 1, high_open=True)
        elif key == "depth":
            _at_least("model.depth", value, 0)
        elif key in ("width", "base_width"):
            _at_least(f"model.{key}", value, 1)
        elif key == "widths" and value is not None:
            for width in value:
                _at_least("model.widths (each)", width, 1)
    # constructing the module only checks its arguments (nothing is initialized or traced)
    MODELS.build(model.name, num_classes=2, **kwargs)


def _check_data(config: ConfigDict) -> None:
    from normlab.data.preprocess import make_preprocessor
    from normlab.data.subset import parse_classes

    # the name itself is looked up when the data loads, before anything compiles: besides
    # normlab's own data sets it may be any TFDS data set prepared in tfds_dir
    if not isinstance(config.dataset, str) or not config.dataset:
        raise ValueError(f"dataset must name a data set, e.g. 'mnist', got {config.dataset!r}")
    for name in ("data_dir", "tfds_dir"):
        if not isinstance(config[name], str):
            raise ValueError(f"{name} must be a path string ('' for the default), got "
                             f"{config[name]!r}")  # fmt: skip
    if not isinstance(config.train_split, str) or not config.train_split:
        raise ValueError(f"train_split must name a split, e.g. 'train', got {config.train_split!r}")
    parse_classes(config.classes)  # against the data set's classes when it loads
    if not config.evals:
        raise ValueError("config.evals must name at least one split, e.g. {'eval': 'test'}")
    for prefix, split in config.evals.items():
        if not prefix.isidentifier():
            raise ValueError(f"evals: metric prefix {prefix!r} must be a name like 'val' or 'test'")
        if not isinstance(split, str) or not split:
            raise ValueError(f"evals.{prefix} must name a split, e.g. 'test', got {split!r}")
    options = dict(config.preprocess)
    make_preprocessor(options.pop("name"), **options)
    data = config.data
    if data.pipeline not in PIPELINES:
        raise ValueError(f"data.pipeline={data.pipeline!r}; valid: {', '.join(PIPELINES)}")
    for name in ("threads", "prefetch", "image_size"):
        _at_least(f"data.{name}", data[name], 1)
    if not _is_number(data.device_budget_mb) or data.device_budget_mb < 0:
        raise ValueError(f"data.device_budget_mb must be a number >= 0 (MiB), got "
                         f"{data.device_budget_mb!r}")
    for name, options in config.augment.items():
        _check_kwargs(f"augment.{name}", AUGMENTATIONS.get(name), dict(options or {}))


def _check_parallel(config: ConfigDict) -> None:
    sizes = dict(config.mesh)
    for name, size in sizes.items():
        if not _is_int(size):
            raise ValueError(f"mesh.{name} must be an integer (or -1), got {size!r}")
    # the device count is not known yet: check the sizes alone, against the devices they name
    resolve_axis_sizes(sizes, math.prod(size for size in sizes.values() if size != -1))
    # the device-dependent checks (mesh, batch splits) follow in ParallelPlan.from_config
    if config.parallel_mode not in MODES:
        raise ValueError(
            f"unknown parallel_mode {config.parallel_mode!r}; valid: {', '.join(MODES)}"
        )
    _at_least("pipeline.microbatches", config.pipeline.microbatches, 1)
    parse_rules(config.sharding_rules)
    check_scope(config.bn_scope)
    _at_least("ghost_batch_size", config.ghost_batch_size, 0)
    _at_least("bn_groups", config.bn_groups, 0)
    if config.bn_scope == "ghost" and not config.ghost_batch_size:
        raise ValueError("bn_scope='ghost' needs ghost_batch_size >= 1")
    if config.bn_scope == "groups" and not config.bn_groups:
        raise ValueError("bn_scope='groups' needs bn_groups >= 1")


def _validate_init_from(spec: ConfigDict) -> None:
    # the source run itself is opened (and checked) only when a run starts without checkpoints
    if not isinstance(spec.workdir, str):
        raise ValueError(f"init_from.workdir must be a path string, got {spec.workdir!r}")
    if not isinstance(spec.head, str) or not spec.head:
        raise ValueError(f"init_from.head must name the head's params entry, got {spec.head!r}")
    if not isinstance(spec.freeze_backbone, bool):
        raise ValueError(
            f"init_from.freeze_backbone must be True or False, got {spec.freeze_backbone!r}"
        )
    if spec.freeze_backbone and not spec.workdir:
        raise ValueError(
            "init_from.freeze_backbone=True needs init_from.workdir (the run whose backbone "
            "to freeze)"
        )


def _check_seeds(config: ConfigDict) -> None:
    """`num_seeds` > 1 vmaps one jitted step over a stacked state and the device-held data
    set (`normlab.train.seeds`): the layouts and starts that program does not have are refused
    here, naming the field."""
    _at_least("num_seeds", config.num_seeds, 1)
    if config.num_seeds == 1:
        return
    mesh = config.mesh
    conflicts = [
        (config.data.pipeline == "stream", f"data.pipeline={config.data.pipeline!r}",
         "data.pipeline='device' or 'auto' (the data set held on the devices)"),
        (config.parallel_mode != "jit", f"parallel_mode={config.parallel_mode!r}",
         "parallel_mode='jit' (data parallelism over mesh.data)"),
        (mesh.model != 1, f"mesh.model={mesh.model}", "mesh.model=1 (no tensor parallelism)"),
        (mesh.stage != 1, f"mesh.stage={mesh.stage}", "mesh.stage=1 (no pipeline)"),
        (SCHEDULES.get(config.schedule.name) is SCHEDULES.get("snapshot"),
         f"schedule.name={config.schedule.name!r}",
         "any other schedule (snapshot ensembles keep one model per cycle)"),
        (bool(config.init_from.workdir), f"init_from.workdir={config.init_from.workdir!r}",
         "init_from.workdir='' (every seed starts from its own initialization)"),
    ]
    for conflict, field, choices in conflicts:
        if conflict:
            raise ValueError(
                f"num_seeds={config.num_seeds} cannot run with {field}; with num_seeds > 1 use "
                f"{choices}, or num_seeds=1"
            )


def resolve_total_steps(config: ConfigDict, num_train_examples: int) -> int:
    """Total steps from `total_steps`, or from `total_epochs` × steps per epoch."""
    if config.total_steps:
        return int(config.total_steps)
    return int(round(config.total_epochs * (num_train_examples // config.batch_size)))
