"""`normlab eval`: a workdir's newest checkpoint on its eval splits or on named splits."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from normlab.data.datasets import load_arrays
from normlab.train import inputs
from normlab.train.loop import make_evaluator
from normlab.train.saved import load_saved


def evaluate_workdir(
    workdir: str | Path, splits: list[str] | None = None
) -> dict[str, dict[str, float]]:
    """{prefix or split: {"loss", "accuracy"}} for the newest readable checkpoint."""
    workdir = Path(workdir)
    if not (workdir / "config.json").exists():
        raise ValueError(f"{workdir} has no config.json: is it a normlab workdir?")
    saved = load_saved(workdir)
    config = saved.config
    named = {s: s for s in splits} if splits else dict(config.evals)
    evaluate = make_evaluator(saved.model)
    results = {}
    for prefix, split in named.items():
        images, labels = load_arrays(
            config.dataset,
            split,
            data_dir=config.data_dir or None,
            tfds_dir=config.tfds_dir or None,
        )
        x = inputs.transform(saved.preprocessor, inputs.to_float(images, config.pad_to))
        results[prefix] = evaluate(
            saved.state,
            jax.numpy.asarray(x),
            jax.numpy.asarray(labels, np.int32),
            config.eval_batch_size,
        )
    return results
