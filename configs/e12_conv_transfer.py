"""E12 (b), issue 18: transfer of conv features to a related task with few labels, on CIFAR-10.

Source: a ResNet-8 at width 0.5 (stem and stages of 8/16/32 channels, pre-activation, BN; the
configs/common.py recipe: Nesterov 0.9, cosine, L2 5e-4, flip + crop, per-channel
standardization fitted on the run's own training images) trained on classes 0-4 (airplane,
automobile, bird, cat, deer). Target: classes 5-9 (dog, frog, horse, ship, truck), relabelled
0-4 (`config.classes`), trained on their first n training images (n = 100 or 1,000) three ways:
from scratch, the source's backbone frozen under a new head (`init_from.freeze_backbone`: the
backbone in inference mode, with its source BN statistics), or all of it fine-tuned.

Splits (each indexes its class subset, `normlab.data.subset`): source train = the first 22,500
of the 25,000 training images of classes 0-4, val = the other 2,500; target train = the first n
of the training images of classes 5-9, val = the last 2,500 of them (never trained on by any
target run); test = the classes' images among the first 1,000 CIFAR-10 test images (485 of
classes 0-4, 515 of classes 5-9; the only test images in ../shared/datasets/cifar10). The
learning rate and the number of steps are chosen on val (evaluated every 100 steps), never on
test.

    # the source, 5 seeds in one program (a GPU; seed i's model in runs/c5_source/seeds/<i>);
    # on a CPU train each seed alone (vmapped convs are ~5x slower there): seed=$seed,
    # --workdir runs/c5_source_s$seed, then source=runs/c5_source_s$seed below
    normlab train --config configs/e12_conv_transfer.py:num_seeds=5 --workdir runs/c5_source
    # the target runs, for seed in 0..4, n in 100 1000, lr in 0.01 0.03 0.1:
    normlab train --config configs/e12_conv_transfer.py:target,labels=$n,lr=$lr,seed=$seed \\
        --workdir runs/scratch_n${n}_lr${lr}_s$seed
    normlab train --config configs/e12_conv_transfer.py:target,labels=$n,lr=$lr,seed=$seed,\\
    freeze,source=runs/c5_source/seeds/$seed --workdir runs/frozen_n${n}_lr${lr}_s$seed
    normlab train --config configs/e12_conv_transfer.py:target,labels=$n,lr=$lr,seed=$seed,\\
    source=runs/c5_source/seeds/$seed --workdir runs/finetune_n${n}_lr${lr}_s$seed
    # per method and n: the (lr, step) of the best seed-mean val_accuracy, its test_accuracy

Arguments: target (the target task; default: the source), labels (target training images, 0 =
all 22,500), steps (default: 30 epochs of the source's 22,500 images, 5,280 steps; 1,000 for a
target), lr (default 0.1), batch (default 128, or the labels if fewer), seed, num_seeds, source
(a finished source's workdir: `init_from.workdir`), freeze, width (multiplier, default 0.5),
model (default resnet8), runlocal.

Expected (measured at 7adb79c at a reduced size: sources 500 steps, targets 200 steps, n=5): with
100 labels the frozen backbone beats scratch by +17.6 points [+13.0, +22.2], fine-tuning by
+5.3 [-4.0, +14.5]; with 1,000 labels fine-tuned - frozen +2.8 [-2.1, +7.7]. ResNet-8 at width
0.5 trains at ~7.5 steps/s on a 2-core CPU (one step per call; num_seeds is ~5x slower per
seed for conv nets there). See experiments/e12_ensembles_transfer/report.md.
"""

import sys
from pathlib import Path

from normlab.config import parse_arg

sys.path.insert(0, str(Path(__file__).resolve().parent))  # configs/: common.py
from common import RESNET_ARGS, resnet_classifier  # noqa: E402

SOURCE_CLASSES, TARGET_CLASSES = "0,1,2,3,4", "5,6,7,8,9"
TRAIN_PER_TASK, HELD_OUT = 25_000, 2_500  # CIFAR-10: 5,000 training images per class
SOURCE_EPOCHS = 30


def get_config(arg=None):
    a = parse_arg(arg, **{**RESNET_ARGS, "model": "resnet8", "epochs": 0}, target=False,
                  labels=0, num_seeds=1, source="", freeze=False, width=0.5)
    keep = TRAIN_PER_TASK - HELD_OUT
    n = a.labels or keep
    if not 0 < n <= keep:
        raise ValueError(f"labels={a.labels}: a target trains on 1..{keep} images (0 = all)")
    a.batch = min(a.batch, n)
    if not a.steps:
        a.steps = 1_000 if a.target else SOURCE_EPOCHS * -(-keep // a.batch)
    c = resnet_classifier(a)
    c.lr = a.lr  # as given: resnet_classifier's linear scaling would shrink it for n < 128
    c.dataset = "cifar10"
    c.classes = TARGET_CLASSES if a.target else SOURCE_CLASSES
    c.train_split = f"train[:{n}]"
    c.evals = {"val": f"train[{keep}:]", "test": "test"}
    c.num_seeds = a.num_seeds
    c.model.width_multiplier = a.width
    c.init_from = dict(workdir=a.source, head="head", freeze_backbone=a.freeze)
    if not a.runlocal:  # (runlocal: 20 steps, evaluated every 10)
        c.eval_every_steps = c.checkpoint_every_steps = 100  # steps are chosen on val
    return c
