"""Recipes shared by several config files (not a config itself: it has no `get_config`).

A config file is loaded by path (`normlab.config.load_config`), outside any package, so it
imports this module from its own folder:

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # configs/: common.py
    from common import RESNET_ARGS, resnet_classifier  # noqa: E402

- `RESNET_ARGS`, `resnet_classifier`: the CIFAR-style ResNet recipe (configs/cifar10_resnet.py,
  fmnist_resnet.py, e3_residual_init.py, e6_norms.py).
- `holdout_splits`: a validation split held out of MNIST-sized training sets (e4, e8).
"""

import math

import ml_collections

from normlab.registry import NORMS
from normlab.train.defaults import base_config, shrink_for_runlocal

MNIST_TRAIN_IMAGES = 60_000  # the training split of MNIST and Fashion-MNIST

RESNET_ARGS = dict(
    model="resnet20",
    norm="batch",
    act="relu",
    init="kaiming_normal",
    preact=True,
    residual_init="standard",
    conv="standard",
    groups=8,
    batch=128,
    lr=0.1,
    epochs=30,
    steps=0,
    seed=0,
    runlocal=False,
)


def resnet_classifier(a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A CIFAR-style ResNet classifier config from parsed `RESNET_ARGS`-style arguments.

    SGD with Nesterov momentum 0.9, a cosine schedule with a 2-epoch-ish warm-up, L2 5e-4 on
    kernels, flip + 4-pixel crop augmentation, per-channel standardization.
    """
    c = base_config()
    c.seed = a.seed
    c.batch_size = a.batch
    c.total_epochs, c.total_steps = (0, a.steps) if a.steps else (a.epochs, 0)
    # one step per jitted call: XLA:CPU runs convolutions inside a scan ~11x slower (ResNet-8
    # at half width: 0.7 vs 7.9 steps/s, normlab.train.step._scan_steps); a GPU run may raise it
    c.steps_per_call = 1
    c.log_every_steps = 50
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    c.preprocess = dict(name="standardize", per_channel=True)
    c.augment = {"flip": {}, "crop": {"pad": 4}}
    norm_kwargs = {"num_groups": a.groups} if NORMS.get(a.norm).takes_groups else {}
    c.model = dict(
        name=a.model,
        norm=a.norm,
        activation=a.act,
        kernel_init=a.init,
        preact=a.preact,
        residual_init=a.residual_init,
        conv=a.conv,
        norm_kwargs=norm_kwargs,
    )
    c.lr = a.lr * a.batch / 128  # linear scaling from the batch-128 recipe
    c.optimizer = dict(name="nesterov", momentum=0.9)
    c.schedule = dict(name="cosine", warmup_steps=0)
    c.weight_decay.l2 = 5e-4
    if a.runlocal:
        shrink_for_runlocal(c)
        c.model.base_width = 4
        if c.model.norm_kwargs:  # at most 4 channels in the first stage: groups must divide it
            c.model.norm_kwargs = {"num_groups": math.gcd(4, c.model.norm_kwargs["num_groups"])}
    return c


def holdout_splits(c: ml_collections.ConfigDict, held_out: int = 5000) -> None:
    """Trains on all but the last `held_out` of the 60,000 training images of MNIST-sized data
    sets; `val_*` metrics on those, `test_*` on the test split. `digits` has no room for a
    validation split: it trains on all of "train" and validates on its test split.

        c.dataset = "fashion_mnist"
        holdout_splits(c)        # train[:55000], val train[55000:], test
    """
    if c.dataset == "digits":
        c.train_split = "train"
        c.evals = {"val": "test", "test": "test"}
    else:
        keep = MNIST_TRAIN_IMAGES - held_out
        c.train_split = f"train[:{keep}]"
        c.evals = {"val": f"train[{keep}:]", "test": "test"}
