"""A CIFAR-style pre-activation ResNet on Fashion-MNIST padded to 32×32.

    normlab train --config configs/fmnist_resnet.py:norm=group+proxy --workdir runs/fm_gnpn
    normlab train --config configs/fmnist_resnet.py:norm=batch,batch=8 --workdir runs/fm_bn8
    normlab train --config configs/fmnist_resnet.py:runlocal --workdir /tmp/smoke

Arguments (normlab.train.defaults.RESNET_ARGS): model (resnet20/32/56/110), norm, act, init,
preact, residual_init, conv (standard/weight_std/scaled_ws), groups (for group norms), batch,
lr (for batch 128; scaled linearly), epochs or steps, seed, runlocal.

Expected: ResNet-20 with BN reaches about 93-94% test accuracy in 30 epochs (GPU minutes;
on this 2-core CPU an epoch of ResNet-20 takes several minutes).
"""

from normlab.config import parse_arg
from normlab.train.defaults import RESNET_ARGS, resnet_classifier


def get_config(arg=None):
    c = resnet_classifier(parse_arg(arg, **RESNET_ARGS))
    c.dataset = "fashion_mnist"
    c.pad_to = 32
    c.augment = {"crop": {"pad": 4}}  # no flips: Fashion-MNIST items have a handedness
    return c
