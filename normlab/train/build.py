"""A config's model and optimizer, built the same way by training, evaluation and transfer.

    model = build_model(config, num_classes=10)
    tx, lr_fn = build_tx(config, total_steps=10_000)

With `config.init_from.freeze_backbone` the optimizer is
`optax.multi_transform({"trainable": chain, "frozen": set_to_zero()}, labels)` with the labels
of `normlab.models.transfer.freeze_backbone_mask`: every update outside the head is exactly zero,
and no optimizer state is kept for the backbone. The optimizer state's structure therefore
depends on the config, which is why every reader of a checkpoint builds it here.
"""

from __future__ import annotations

from functools import partial

import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from normlab.models.transfer import FROZEN, TRAINABLE, freeze_backbone_mask
from normlab.nn.penalties import default_decay_mask
from normlab.registry import MODELS
from normlab.train.optim import Schedule, build_optimizer
from normlab.train.validate import model_kwargs


def build_model(config: ConfigDict, num_classes: int):
    """The config's model, constructed from its registry name with checked arguments, computing
    in `config.dtype` (its params float32 whatever that is)."""
    return MODELS.build(config.model.name, num_classes=num_classes,
                        dtype=jnp.dtype(config.dtype), **model_kwargs(config))


def frozen_backbone(config: ConfigDict) -> bool:
    """Whether the config trains only the head of a transferred model (`init_from`)."""
    return bool("init_from" in config and config.init_from.freeze_backbone)


def build_tx(config: ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation, Schedule]:
    """The config's optimizer chain and learning-rate function for a run of `total_steps`."""
    tx, lr_fn = build_optimizer(
        optimizer=config.optimizer.to_dict(),
        schedule=config.schedule.to_dict(),
        base_lr=config.lr,
        total_steps=total_steps,
        clip=config.clip.to_dict(),
        decoupled_weight_decay=config.weight_decay.decoupled,
        decay_mask=default_decay_mask,
    )
    if frozen_backbone(config):
        labels = partial(freeze_backbone_mask, head_name=config.init_from.head)
        tx = optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels)
    return tx, lr_fn
