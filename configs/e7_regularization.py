"""E7: regularizers in a small-data regime (SPEC §3 E7).

5,000 Fashion-MNIST training images (`train[:5000]`), validation on 5,000 held-out training
images (`train[55000:]`), test on the 10,000 test images. A net big enough to memorize 5,000
images, trained long enough to do so (SGD with momentum 0.9, cosine schedule), with one
regularizer switched on by `method`:

    baseline          none
    dropout           inverted dropout after every hidden activation, rate = strength (MLP)
    dropout_classic   the same in the classic form (scale by q = 1 − rate at test time) (MLP)
    dropconnect       DropConnect on every hidden layer's weights, rate = strength (MLP)
    l2                L2 penalty strength·½·Σw² on the kernels, in the loss
    label_smoothing   ε = strength
    mixup             mixup with α = strength
    cutout            one strength×strength zeroed square per image
    augment           random horizontal flip + random translation by ≤ strength pixels
    stochastic_depth  ResNet only: the last block's drop rate (linear rule over the blocks)

`strength` = 0 means the method's default (`DEFAULT_STRENGTH`). Besides the usual train metrics
(on the augmented, dropped-out batches), three eval splits are logged: `fit_*` (the 5,000
clean training images, eval mode: the train accuracy of the table), `val_*` and `test_*`.

    normlab train --config configs/e7_regularization.py:method=baseline --workdir runs/e7_base
    normlab train --config configs/e7_regularization.py:method=dropout,strength=0.3 --workdir W
    normlab train --config configs/e7_regularization.py:net=resnet,method=stochastic_depth \\
        --workdir runs/e7_sd
    # stochastic depth as the claim needs it: 27 blocks (ResNet-56's depth), 5 seeds (a GPU)
    normlab train --config configs/e7_regularization.py:net=resnet,blocks=27,method=baseline \\
        --config.num_seeds=5 --workdir runs/e7_resnet27_base
    python experiments/e7_regularization/run.py       # the MLP grid, 5 seeds + report

Arguments: method, strength, net (mlp: 2 × `width` ReLU, width 512 by default; resnet: a
pre-activation ResNet with `blocks` basic blocks in three stages of blocks/3 (16/32/64
channels), BN, ImageNet stem), width, blocks (a multiple of 3, default 3), train_size (default
5,000), batch (128), lr (default 0.05 MLP, 0.1 ResNet), steps (default 1,200 = 31 epochs, both
nets), seed, dataset (fashion_mnist, mnist or digits; digits
trains on its first `train_size` ≤ 1,500 images, validates and tests on its test split),
runlocal.

Expected (measured at full size, 1,200 steps, 5 seeds): the baseline fits 98.4% of the 5,000
training images (test 85.0%, gap 13.4 points); at the strengths chosen on validation 6 of 7
regularizers lower the gap with the 95% CI below 0 (by 0.9–8.2 points; L2 at 1e-4 does not),
by fitting the training set less, while no test accuracy differs from the baseline's (Δ −0.21
to +0.23 points, every CI across 0). See experiments/e7_regularization/report.md.
"""

from normlab.config import parse_arg
from normlab.train.defaults import base_config, shrink_for_runlocal

METHODS = ("baseline", "dropout", "dropout_classic", "dropconnect", "l2", "label_smoothing",
           "mixup", "cutout", "augment", "stochastic_depth")
MLP_ONLY = ("dropout", "dropout_classic", "dropconnect")
DEFAULT_STRENGTH = {"baseline": 0.0, "dropout": 0.5, "dropout_classic": 0.5, "dropconnect": 0.5,
                    "l2": 5e-4, "label_smoothing": 0.1,
                    "mixup": 0.4, "cutout": 10, "augment": 2, "stochastic_depth": 0.5}
NETS = {
    "mlp": dict(name="mlp", depth=2, width=512, activation="relu", norm="none",
                kernel_init="kaiming_normal"),
    # the ImageNet stem (conv 7×7/2, max-pool 3×3/2) takes 28×28 down to 7×7 before the
    # blocks: a residual net cheap enough for a CPU
    "resnet": dict(name="resnet", stage_sizes=(1, 1, 1), base_width=16, cifar_stem=False,
                   preact=True, norm="batch", activation="relu", kernel_init="kaiming_normal"),
}


def get_config(arg=None):
    a = parse_arg(arg, method="baseline", strength=0.0, net="mlp", width=512, blocks=3,
                  train_size=5000, batch=128, lr=0.0, steps=0, seed=0, dataset="fashion_mnist",
                  runlocal=False)
    if a.method not in METHODS:
        raise ValueError(f"e7_regularization: method must be one of {METHODS}, "
                         f"got method={a.method!r}")
    if a.net not in NETS:
        raise ValueError(f"e7_regularization: net must be one of {tuple(NETS)}, got net={a.net!r}")
    if a.method in MLP_ONLY and a.net != "mlp":
        raise ValueError(f"e7_regularization: method={a.method!r} needs net='mlp' (the ResNet "
                         "has no dropout or DropConnect field)")
    if a.method == "stochastic_depth" and a.net != "resnet":
        raise ValueError("e7_regularization: method='stochastic_depth' needs net='resnet'")
    if a.blocks < 3 or a.blocks % 3:
        raise ValueError("e7_regularization: blocks must be a positive multiple of 3 (three "
                         f"stages of blocks/3), got blocks={a.blocks}")
    if a.blocks != 3 and a.net != "resnet":
        raise ValueError(f"e7_regularization: blocks={a.blocks} needs net='resnet'")
    strength = a.strength or DEFAULT_STRENGTH[a.method]
    mlp = a.net == "mlp"
    c = base_config()
    c.seed = a.seed
    c.dataset = a.dataset
    c.train_split = f"train[:{a.train_size}]"
    held_out = "test" if a.dataset == "digits" else "train[55000:]"
    c.evals = {"fit": c.train_split, "val": held_out, "test": "test"}
    c.batch_size = a.batch
    # 1,200 steps (31 epochs): the MLP fits ~98% of the 5,000 images, and the whole E7 grid
    # with 5 seeds fits in ~30 min of a shared 2-core CPU (2,500 steps took twice as long)
    c.total_steps = a.steps or 1200
    # XLA:CPU runs convolutions in a scanned loop far slower than outside one (jax#12868)
    c.steps_per_call = 100 if mlp else 1
    c.log_every_steps = 100
    c.eval_every_steps = 300 if mlp else 500  # the curves: 4 points of a 1,200-step MLP run
    c.checkpoint_every_steps = 0
    c.model = dict(NETS[a.net])
    if a.net == "mlp":
        c.model.width = a.width
    else:
        c.model.stage_sizes = (a.blocks // 3,) * 3
    c.lr = a.lr or (0.05 if mlp else 0.1)
    c.optimizer = dict(name="momentum", momentum=0.9)
    c.schedule = dict(name="cosine", warmup_steps=0)
    if a.method in ("dropout", "dropout_classic"):
        c.model.dropout_rate = strength
        c.model.dropout_mode = "classic" if a.method == "dropout_classic" else "inverted"
    elif a.method == "dropconnect":
        c.model.dropconnect_rate = strength
    elif a.method == "l2":
        c.weight_decay.l2 = strength
    elif a.method == "label_smoothing":
        c.label_smoothing = strength
    elif a.method == "mixup":
        c.augment = {"mixup": {"alpha": strength}}
    elif a.method == "cutout":
        c.augment = {"cutout": {"size": int(strength)}}
    elif a.method == "augment":
        c.augment = {"flip": {}, "crop": {"pad": int(strength)}}
    elif a.method == "stochastic_depth":
        c.model.stochastic_depth_rate = strength
    if a.runlocal:
        shrink_for_runlocal(c)
        c.checkpoint_every_steps = 0
    return c
