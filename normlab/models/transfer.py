"""Transfer learning: keep a trained backbone, put a new head on it, train only the head.

Every normlab model names its classifier layer "head" (a top-level entry of its params), so
the backbone is everything else. The full recipe, from a checkpoint trained on 10 classes to a
new task with K = 100 classes:

    import optax
    from normlab.registry import MODELS
    from normlab.models.transfer import freeze_backbone_mask, replace_head

    restored = checkpointer.restore(path)                      # {"params": ..., "batch_stats": ...}
    model = MODELS.build("resnet20", norm="batch", num_classes=100)
    fresh = model.init(jax.random.key(0), x_NHWC, train=False)
    params = replace_head(restored["params"], "head", fresh["params"]["head"])
    labels = freeze_backbone_mask(params, "head")
    tx = optax.multi_transform(
        {"trainable": optax.sgd(0.01, momentum=0.9), "frozen": optax.set_to_zero()}, labels
    )
    opt_state = tx.init(params)
    variables = {"params": params, "batch_stats": restored["batch_stats"]}
    # ... the usual train step: grads w.r.t. params, updates = tx.update(grads, opt_state, params)

`optax.set_to_zero()` makes the frozen part's updates exactly zero (and keeps no optimizer state
for it), so the backbone's weights do not move even under weight decay added elsewhere in the
chain, as long as the decay is inside the "trainable" branch. Normalization *statistics* are not
parameters: with batch-dependent norms, calling the model with `train=True` still updates the
running averages in `batch_stats`; drop those updates (do not merge the returned `batch_stats`)
to keep the backbone exactly as trained, or keep them to adapt BN statistics to the new data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

FROZEN = "frozen"
TRAINABLE = "trainable"


def _check_head(owner: str, params: Mapping[str, Any], head_name: str) -> None:
    if not isinstance(params, Mapping):
        raise ValueError(
            f"{owner}: params must be a mapping of layer names to params, got {type(params)}"
        )
    if head_name not in params:
        raise ValueError(
            f"{owner}: head_name={head_name!r} is not a top-level entry of params; "
            f"entries: {', '.join(sorted(params))}"
        )


def split_backbone_head(params: Mapping[str, Any], head_name: str = "head") -> tuple[dict, Any]:
    """(backbone, head): params without the entry `head_name`, and that entry.

        backbone, head = split_backbone_head(variables["params"], "head")
    """
    _check_head("split_backbone_head", params, head_name)
    backbone = {name: sub for name, sub in params.items() if name != head_name}
    return backbone, params[head_name]


def replace_head(
    params: Mapping[str, Any], head_name: str, new_head_params: Any
) -> dict[str, Any]:
    """A copy of params whose entry `head_name` is `new_head_params` (other entries shared).

    The new head may have another shape (another number of classes).

        params = replace_head(restored["params"], "head", fresh["params"]["head"])
    """
    _check_head("replace_head", params, head_name)
    if not isinstance(new_head_params, Mapping):
        raise ValueError(
            "replace_head: new_head_params must be a mapping like the old head "
            f"({', '.join(sorted(params[head_name]))}), got {type(new_head_params)}"
        )
    return {**params, head_name: new_head_params}


def freeze_backbone_mask(params: Mapping[str, Any], head_name: str = "head") -> dict[str, Any]:
    """Labels for `optax.multi_transform`: "trainable" on the head's leaves, "frozen" elsewhere.

    The result has the structure of params, every leaf replaced by its label.

        labels = freeze_backbone_mask(params, "head")
        tx = optax.multi_transform({"trainable": optax.adam(1e-3),
                                    "frozen": optax.set_to_zero()}, labels)
    """
    _check_head("freeze_backbone_mask", params, head_name)
    return {
        name: jax.tree.map(lambda _, label=(TRAINABLE if name == head_name else FROZEN): label, sub)
        for name, sub in params.items()
    }
