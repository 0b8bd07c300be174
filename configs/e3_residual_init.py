"""E3: early training of a deep pre-activation ResNet with standard (MSRA) vs zero_init_last init.

    normlab train --config configs/e3_residual_init.py:norm=none,residual_init=standard --workdir W
    normlab train --config configs/e3_residual_init.py:norm=none,residual_init=zero_init_last \\
        --workdir W

The training part of E3 (experiments/e3_residual_init/run.py measures only the net at init):
issue 18's controls are both lrs 0.1 and 0.02 for every {none, batch} × {standard,
zero_init_last}, ≥ 1,000 steps (steps=1000), 5 seeds (num_seeds=5) and BN evaluated after
recomputing its statistics on training batches — ~41 h on the 2-core CPU, a GPU job not yet run.

The recipe of configs/cifar10_resnet.py (CIFAR-10, 45k/5k split, Nesterov momentum 0.9, L2 5e-4,
flip + crop, per-channel standardization) but a constant learning rate (early training is the
question, not the final accuracy), and `steps_per_call=1`: XLA:CPU runs convolutions inside a
scanned loop far slower than outside one (jax-ml/jax#12868).

Arguments: model (default resnet56), width (width multiplier, default 0.5: 8/16/32 channels),
norm (none or batch, ...), residual_init (standard, zero_init_last, fixup, skipinit), lr
(default 0.1), batch (128), steps (default 300), seed, dataset (cifar10 or digits), runlocal.

Expected (the claim, not measured with these controls): without normalization the standard
init starts with a loss far above ln 10 (measured at init, 5 seeds: see
experiments/e3_residual_init/report.md) that it takes many steps to recover from, while
zero_init_last starts near ln 10 and trains at once; with BN both train, zero_init_last a little
faster at first.
"""

import sys
from pathlib import Path

from normlab.config import parse_arg
from normlab.train.defaults import shrink_for_runlocal

sys.path.insert(0, str(Path(__file__).resolve().parent))  # configs/: common.py
from common import RESNET_ARGS, resnet_classifier  # noqa: E402


def get_config(arg=None):
    a = parse_arg(arg, **{**RESNET_ARGS, "model": "resnet56", "width": 0.5, "norm": "none",
                          "epochs": 0, "steps": 300, "dataset": "cifar10"})
    c = resnet_classifier(a)
    c.model.width_multiplier = a.width
    c.dataset = a.dataset
    if a.dataset == "cifar10":
        c.train_split = "train[:45000]"
        c.evals = {"eval": "train[45000:]"}
    else:
        c.augment = {}
    c.schedule = dict(name="constant", warmup_steps=0)
    c.steps_per_call = 1
    c.log_every_steps = 1
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 0
    if a.runlocal:
        shrink_for_runlocal(c)
        c.steps_per_call = c.log_every_steps = 1
        c.checkpoint_every_steps = 0
        c.model.width_multiplier = 0.25
    return c
