"""ResNet-50 on ImageNet (ILSVRC2012) at 224 px: the Proxy Norm paper's setting.

    normlab data prepare imagenet2012 --from DIR     # DIR: ILSVRC2012_img_train.tar, _val.tar
    normlab train --config configs/imagenet_resnet.py:norm=group+proxy --workdir runs/r50_gnpn
    normlab train --config configs/imagenet_resnet.py:norm=batch --workdir runs/r50_bn
    normlab train --config configs/imagenet_resnet.py:norm=batch,version=2 --workdir runs/r50v2
    normlab train --config configs/imagenet_resnet.py:runlocal --workdir /tmp/r50  # seconds, CPU

On 8 GPUs of one node, data parallel (the mesh takes every visible device by default):

    normlab train --config configs/imagenet_resnet.py:norm=group+proxy,batch=1024 --workdir W

The standard large-batch SGD recipe (Goyal et al. 2017): batch 256 per lr 0.1 (lr = 0.1 ·
batch/256, linear scaling), momentum 0.9, 5 warm-up epochs then cosine decay over 90 epochs,
L2 1e-4 on kernels only (never on norm scales/offsets or biases), optional label smoothing,
bfloat16 compute with float32 params, optimizer state and norm statistics. Training images are
decoded, inception-cropped and flipped on the host (`normlab.data.transforms`); evaluation
resizes the short side to 256 and centre-crops 224. The train split is `train[:99%]`; the
held-out 1% minival (`train[99%:]`, a random 1%: the prepared records are in a seeded random
order) is for choosing hyperparameters, the official `validation` split (all 50,000 images) for
the reported number. Both report top-1 and top-5 accuracy and the number of images counted.

Arguments: norm (any registered norm), groups (for group norms: 32), version (1 = v1.5, the
stride on the 3×3 conv, post-activation; 2 = pre-activation), batch, lr (per 256 images),
epochs, warmup_epochs, label_smoothing, dtype (bfloat16 / float32), seed, runlocal.

Expected (published top-1 on validation, 90-ish epochs, batch 256–1024): BN 76.1–76.3%
(torchvision v1.5: 76.13%; Goyal et al.: 76.3%); the Proxy Norm paper (Labatie et al. 2021,
ResNet-50, Table 2-ish setting): GN 75.9%, GN+PN 76.8%, LN+PN 76.5%, BN 76.3% — check the
paper for its exact training budget before comparing. Not yet run here (no GPU was lent).

`runlocal` trains 20 steps on a fake ImageNet (3 classes of tiny images in the original tar
layout, written and prepared once under ~/.cache/normlab/fake_imagenet) with a 4-wide ResNet-50
at 32 px, in seconds on a CPU.
"""

import os
from pathlib import Path

from normlab.config import parse_arg
from normlab.registry import NORMS
from normlab.train.defaults import base_config, shrink_for_runlocal

ARGS = dict(
    norm="batch",
    groups=32,
    version=1,
    batch=256,
    lr=0.1,
    epochs=90,
    warmup_epochs=5,
    label_smoothing=0.0,
    dtype="bfloat16",
    seed=0,
    runlocal=False,
)
TRAIN_IMAGES = 1_281_167  # ILSVRC2012 train; train[:99%] holds 99% of them


def _fake_imagenet_tfds() -> str:
    """A prepared fake ImageNet for `runlocal` (written once; cheap: a few KB)."""
    from normlab.data.datasets import prepare, prepared_dir
    from normlab.data.fake_imagenet import write_fake_imagenet

    root = Path(os.environ.get("NORMLAB_CACHE_DIR", Path.home() / ".cache" / "normlab"))
    tfds_dir = root / "fake_imagenet" / "tfds"
    if prepared_dir("imagenet2012", tfds_dir) is None:
        archives = root / "fake_imagenet" / "archives"
        write_fake_imagenet(archives, classes=3, train_per_class=12, val=6)
        prepare("imagenet2012", source=archives, tfds_dir=tfds_dir, verify=False, quiet=True)
    return str(tfds_dir)


def get_config(arg=None):
    a = parse_arg(arg, **ARGS)
    if a.version not in (1, 2):
        raise ValueError(f"version must be 1 (v1.5) or 2 (pre-activation), got {a.version}")
    c = base_config()
    c.seed = a.seed
    c.dataset = "imagenet2012"
    c.train_split = "train[:99%]"
    c.evals = {"minival": "train[99%:]", "validation": "validation"}
    c.data.pipeline = "stream"
    c.data.image_size = 224
    c.data.threads = 16
    c.dtype = a.dtype
    c.batch_size = a.batch
    c.eval_batch_size = 500
    c.total_epochs, c.total_steps = a.epochs, 0
    steps_per_epoch = int(TRAIN_IMAGES * 0.99) // a.batch
    c.steps_per_call = 1  # conv nets: one step per call (normlab.train.step._scan_steps)
    c.log_every_steps = 100
    c.eval_every_steps = c.checkpoint_every_steps = steps_per_epoch
    c.model = dict(
        name="resnet50",
        norm=a.norm,
        norm_kwargs={"num_groups": a.groups} if NORMS.get(a.norm).takes_groups else {},
        preact=a.version == 2,
        activation="relu",
    )
    c.lr = a.lr * a.batch / 256
    c.optimizer = dict(name="momentum", momentum=0.9)
    c.schedule = dict(name="cosine", warmup_steps=a.warmup_epochs * steps_per_epoch)
    c.weight_decay.l2 = 1e-4
    c.label_smoothing = a.label_smoothing
    if a.runlocal:
        shrink_for_runlocal(c)
        c.tfds_dir = _fake_imagenet_tfds()
        c.train_split = "train"
        c.evals = {"validation": "validation"}
        c.batch_size, c.eval_batch_size = 8, 8
        c.data.image_size, c.data.threads = 32, 2
        c.model.base_width = 4
        if c.model.norm_kwargs:
            c.model.norm_kwargs = {"num_groups": 2}
        c.schedule.warmup_steps = 2
        c.steps_per_call = c.log_every_steps = 1
    return c


def sweep(add, arg=None):
    """The Proxy Norm paper's comparison: norm × batch size, one trial each (SLURM).

    normlab sweep --config configs/imagenet_resnet.py --workdir sweeps/r50 --backend slurm \\
        --slurm.partition=gpu --slurm.gpus_per_trial=8 --slurm.max_parallel=8
    """
    a = parse_arg(arg, **ARGS)
    for norm in ("batch", "group", "group+proxy", "layer+proxy"):
        for batch in (256, 1024) if not a.runlocal else (8,):
            groups = {"num_groups": 2 if a.runlocal else a.groups}
            kwargs = groups if NORMS.get(norm).takes_groups else {}
            add(model__norm=norm, model__norm_kwargs=kwargs, batch_size=batch,
                lr=a.lr * batch / 256)
