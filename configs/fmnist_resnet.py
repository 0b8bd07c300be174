"""A CIFAR-style pre-activation ResNet on Fashion-MNIST padded to 32×32.

    normlab train --config configs/fmnist_resnet.py:norm=group+proxy --workdir runs/fm_gnpn
    normlab train --config configs/fmnist_resnet.py:norm=batch,batch=8 --workdir runs/fm_bn8
    normlab train --config configs/fmnist_resnet.py:runlocal --workdir /tmp/smoke

On a mesh (chosen by config only; README "Parallelism"): 4-way data × 2-way tensor parallel, and
a GPipe pipeline over 4 stages (ResNet-56: runs of 8 identical blocks per stage) × 2-way data:

    normlab train --config configs/fmnist_resnet.py --workdir runs/fm_tp \
        --config.mesh.data=4 --config.mesh.model=2
    normlab train --config configs/fmnist_resnet.py:model=resnet56 --workdir runs/fm_pp \
        --config.mesh.stage=4 --config.pipeline.microbatches=8

Arguments (RESNET_ARGS in configs/common.py): model (resnet20/32/56/110), norm, act, init,
preact, residual_init, conv (standard/weight_std/scaled_ws), groups (for group norms), batch,
lr (for batch 128; scaled linearly), epochs or steps, seed, runlocal.

Expected: ResNet-20 with BN reaches about 93-94% test accuracy in 30 epochs (GPU minutes;
on this 2-core CPU an epoch of ResNet-20 takes several minutes).
"""

import sys
from pathlib import Path

from normlab.config import parse_arg
from normlab.registry import NORMS

sys.path.insert(0, str(Path(__file__).resolve().parent))  # configs/: common.py
from common import RESNET_ARGS, resnet_classifier  # noqa: E402


def get_config(arg=None):
    c = resnet_classifier(parse_arg(arg, **RESNET_ARGS))
    c.dataset = "fashion_mnist"
    c.pad_to = 32
    c.augment = {"crop": {"pad": 4}}  # no flips: Fashion-MNIST items have a handedness
    return c


def sweep(add, arg=None):
    """Normalizations compared: one trial per norm (7), or per group count for a group norm.

    normlab sweep --config configs/fmnist_resnet.py --workdir sweeps/norms --backend slurm \\
        --slurm.partition=gpu --slurm.gpus_per_trial=1 --slurm.max_parallel=16
    normlab sweep --config configs/fmnist_resnet.py:norm=group --workdir sweeps/groups

    A group norm's group count comes from the `norm=`/`groups=` arguments (a `model.norm`
    override cannot add it), so group norms are swept over their group count instead.
    """
    a = parse_arg(arg, **RESNET_ARGS)
    if NORMS.get(a.norm).takes_groups:
        for groups in (1, 2, 4) if a.runlocal else (1, 2, 4, 8, 16):
            add(model__norm_kwargs__num_groups=groups)
    else:
        for norm in ("batch", "layer", "instance", "rms", "layer+proxy", "frn", "evonorm_b0"):
            add(model__norm=norm)
