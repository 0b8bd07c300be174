"""Checks a training config before anything loads or compiles.

Every component name is looked up in its registry (an unknown one fails listing the valid
names), the durations are resolved in one place, and the step intervals are checked against
`steps_per_call` so that chunks of steps line up with logging, evaluation and checkpoints.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from normlab.parallel.bn_scope import check_scope
from normlab.parallel.logical import parse_rules
from normlab.parallel.plan import MODES
from normlab.registry import (
    ACTIVATIONS,
    AUGMENTATIONS,
    CONVOLUTIONS,
    INITIALIZERS,
    MODELS,
    NORMS,
    OPTIMIZERS,
    PREPROCESSING,
    RESIDUAL_INITS,
    SCHEDULES,
)

_MODEL_NAME_FIELDS = {
    "norm": NORMS,
    "activation": ACTIVATIONS,
    "kernel_init": INITIALIZERS,
    "conv": CONVOLUTIONS,
    "residual_init": RESIDUAL_INITS,
}
INTERVALS = ("log_every_steps", "eval_every_steps", "checkpoint_every_steps", "diag_every_steps")


def model_kwargs(config: ConfigDict) -> dict:
    """The model's constructor arguments (everything in `config.model` but its name)."""
    return {k: v for k, v in config.model.to_dict().items() if k != "name"}


def validate(config: ConfigDict) -> None:
    """Raises ValueError on the first problem, naming the field and the valid choices."""
    MODELS.get(config.model.name)
    for field, registry in _MODEL_NAME_FIELDS.items():
        if field in config.model:
            registry.get(config.model[field])
    OPTIMIZERS.get(config.optimizer.name)
    SCHEDULES.get(config.schedule.name)
    PREPROCESSING.get(config.preprocess.name)
    for name in config.augment:
        AUGMENTATIONS.get(name)
    if config.clip.name not in ("none", "norm", "agc"):
        raise ValueError(f"unknown clipping {config.clip.name!r}; valid: agc, none, norm")
    if config.batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {config.batch_size}")
    if config.steps_per_call <= 0:
        raise ValueError(f"steps_per_call must be positive, got {config.steps_per_call}")
    for name in INTERVALS:
        every = config[name]
        if every < 0 or (every and every % config.steps_per_call):
            raise ValueError(
                f"{name}={every} must be 0 (off) or a positive multiple of "
                f"steps_per_call={config.steps_per_call}"
            )
    if bool(config.total_steps) == bool(config.total_epochs):
        raise ValueError(
            "give exactly one of total_steps and total_epochs (the other 0), got "
            f"total_steps={config.total_steps}, total_epochs={config.total_epochs}"
        )
    if not config.evals:
        raise ValueError("config.evals must name at least one split, e.g. {'eval': 'test'}")
    # the device-dependent checks (mesh, batch splits) follow in ParallelPlan.from_config
    if config.parallel_mode not in MODES:
        raise ValueError(
            f"unknown parallel_mode {config.parallel_mode!r}; valid: {', '.join(MODES)}"
        )
    check_scope(config.bn_scope)
    parse_rules(config.sharding_rules)
    _validate_init_from(config.init_from)


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


def resolve_total_steps(config: ConfigDict, num_train_examples: int) -> int:
    """Total steps from `total_steps`, or from `total_epochs` × steps per epoch."""
    if config.total_steps:
        return int(config.total_steps)
    return int(round(config.total_epochs * (num_train_examples // config.batch_size)))
