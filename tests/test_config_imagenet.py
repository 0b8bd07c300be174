"""configs/imagenet_resnet.py: the recipe's numbers, every norm and version valid, ResNet-50 v1.5
exactly torchvision's size, and its sweep expands to valid trials."""

import jax
import numpy as np
import pytest

from normlab.config import load_config
from normlab.train.build import build_model
from normlab.train.validate import validate

CONFIG = "configs/imagenet_resnet.py"


@pytest.mark.parametrize("norm", ["batch", "group", "group+proxy", "layer+proxy"])
@pytest.mark.parametrize("version", [1, 2])
def test_every_norm_and_version_is_a_valid_config(norm, version):
    c = load_config(f"{CONFIG}:norm={norm},version={version},batch=1024")
    validate(c)
    assert c.lr == pytest.approx(0.1 * 1024 / 256)  # linear scaling from 0.1 per 256
    steps_per_epoch = int(1_281_167 * 0.99) // 1024
    assert c.schedule.warmup_steps == 5 * steps_per_epoch and c.total_epochs == 90
    assert c.evals.to_dict() == {"minival": "train[99%:]", "validation": "validation"}
    assert c.train_split == "train[:99%]" and c.dtype == "bfloat16"
    assert c.model.preact == (version == 2)
    assert dict(c.model.norm_kwargs) == ({"num_groups": 32} if norm.startswith("group") else {})


def test_resnet50_v1_5_has_torchvision_resnet50_parameter_count():
    # torchvision.models.resnet50(): 25,557,032 parameters (conv without bias, BN γ and β,
    # fc 2048×1000 + 1000); the BN running statistics are not parameters
    model = build_model(load_config(f"{CONFIG}:norm=batch"), num_classes=1000)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               np.zeros((1, 224, 224, 3), np.float32),
                                               train=False))
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"])) == 25_557_032


def test_sweep_expands_to_valid_trials():
    from normlab.sweep.expand import sweep_overrides

    trials = sweep_overrides(f"{CONFIG}:batch=512")
    assert len(trials) == 8  # 4 norms × batch 256 and 1024, each validated by the sweep tests
    assert sorted({t["model.norm"] for t in trials}) == ["batch", "group", "group+proxy",
                                                          "layer+proxy"]
    for t in trials:
        assert t["lr"] == pytest.approx(0.1 * t["batch_size"] / 256)
