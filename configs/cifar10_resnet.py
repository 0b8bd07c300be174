"""A CIFAR-style pre-activation ResNet on CIFAR-10: 45,000 train / 5,000 validation images.

    normlab train --config configs/cifar10_resnet.py:norm=batch --workdir runs/c10_bn
    normlab train --config configs/cifar10_resnet.py:norm=group+proxy,batch=8 --workdir runs/c10
    normlab train --config configs/cifar10_resnet.py:runlocal --workdir /tmp/smoke

Metrics: `eval_*` on the 5,000 held-out training images (validation), `test_*` on the official
test images available. With ../shared/datasets/cifar10 that is only the FIRST 1,000 of the
10,000 test images (standard error ≈ ±0.9% at 90% accuracy): say so wherever `test_accuracy`
is reported.

Arguments: as configs/fmnist_resnet.py (RESNET_ARGS in configs/common.py).
Expected: ResNet-20 with BN reaches about 91-92% validation accuracy in 30 epochs (GPU).
"""

import sys
from pathlib import Path

from normlab.config import parse_arg

sys.path.insert(0, str(Path(__file__).resolve().parent))  # configs/: common.py
from common import RESNET_ARGS, resnet_classifier  # noqa: E402


def get_config(arg=None):
    c = resnet_classifier(parse_arg(arg, **RESNET_ARGS))
    c.dataset = "cifar10"
    c.train_split = "train[:45000]"
    c.evals = {"eval": "train[45000:]", "test": "test"}
    return c
