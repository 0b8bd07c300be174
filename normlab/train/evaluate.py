"""`normlab eval`: a workdir's newest checkpoint on its eval splits or on named splits."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
import numpy as np

from normlab.data.datasets import load_arrays
from normlab.parallel.mesh import build_mesh, replicated
from normlab.train import inputs
from normlab.train.checkpoint import Checkpointer
from normlab.train.loop import build_model, build_tx, make_evaluator
from normlab.train.state import init_state


def evaluate_workdir(
    workdir: str | Path, splits: list[str] | None = None
) -> dict[str, dict[str, float]]:
    """{prefix or split: {"loss", "accuracy"}} for the newest readable checkpoint."""
    workdir = Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise ValueError(f"{workdir} has no config.json: is it a normlab workdir?")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    model = build_model(config, inputs.num_classes(config))
    # The optimizer only shapes the restored tree; the run length does not matter here.
    tx, _ = build_tx(config, total_steps=10**9)
    # checkpoints hold the model's own layout: evaluate on whatever devices this machine has
    mesh = build_mesh({"data": -1})
    preprocessor = None

    def target(pre_arrays, meta):
        nonlocal preprocessor
        preprocessor = inputs.join_state(pre_arrays, meta["preprocess"])
        shape = (1, *meta["input_shape"])
        shapes = jax.eval_shape(
            lambda: init_state(model, tx, jax.random.PRNGKey(0), np.zeros(shape, np.float32))
        )
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated(mesh)), shapes
        )

    restored = Checkpointer(workdir).restore_latest(target)
    if restored is None:
        raise ValueError(f"{workdir} has no readable checkpoint")
    state = restored[0]
    named = {s: s for s in splits} if splits else dict(config.evals)
    evaluate = make_evaluator(model)
    results = {}
    for prefix, split in named.items():
        images, labels = load_arrays(
            config.dataset,
            split,
            data_dir=config.data_dir or None,
            tfds_dir=config.tfds_dir or None,
        )
        x = inputs.transform(preprocessor, inputs.to_float(images, config.pad_to))
        results[prefix] = evaluate(
            state,
            jax.numpy.asarray(x),
            jax.numpy.asarray(labels, np.int32),
            config.eval_batch_size,
        )
    return results
