"""Measurements of a config's net outside training: its per-layer pre-activations at init.

    config = load_config("configs/e2_depth.py:init=lecun_normal,norm=none")
    stds = [float(np.std(y)) for y in preacts_at_init(config, 256)]
"""

from __future__ import annotations

import jax
import numpy as np
from ml_collections import ConfigDict

from normlab.data.datasets import load_arrays
from normlab.registry import MODELS
from normlab.train.diagnostics import collect_preacts
from normlab.train.inputs import fit_preprocessor, to_float


def preacts_at_init(config: ConfigDict, n: int = 256, *, train: bool = False) -> list[np.ndarray]:
    """Every layer's pre-activation (float64, in depth order) at init (seed `config.seed`) on
    the first n training images, preprocessed as the run would be. `train=True` runs BN on the
    batch's statistics, as in the first training step."""
    split = f"train[:{n}]" if config.dataset == "mnist" else "train"  # mnist: read only n
    x, _ = load_arrays(config.dataset, split)
    x = to_float(x[:n])
    x = np.asarray(fit_preprocessor(config, x)(x))
    kwargs = {k: v for k, v in config.model.to_dict().items() if k != "name"}
    model = MODELS.build(config.model.name, num_classes=10, **kwargs)
    variables = model.init(jax.random.key(config.seed), x[:1], train=False)
    _, state = model.apply(variables, x, train=train, mutable=["intermediates", "batch_stats"])
    return [np.asarray(y, np.float64) for y in collect_preacts(state).values()]
