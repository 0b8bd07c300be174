"""E4: the BatchNorm paper's MNIST experiment (Ioffe & Szegedy 2015, §4.1, Fig. 1).

3 fully connected hidden layers of 100 sigmoid units, N(0, init_std²) weights, zero biases,
batch 60, 50,000 plain SGD steps at a constant learning rate, with (norm=batch) or without
(norm=none) BatchNorm after every hidden layer's Dense (before the sigmoid). Training uses the
first 55,000 training images; `val_*` metrics are on the other 5,000 (for choosing the
learning rate), `test_*` on the 10,000 test images. Evaluation and diagnostics every 100 steps;
the diagnostics log the 15/50/85th percentiles of unit 0's sigmoid input in every hidden layer
(`diag/layer_02/norm_act/p15`, ... on a fixed batch of 1,000 training images, eval mode), and
with `--config.diag_unit_layers=layer_02/norm_act` those of every unit of the last hidden layer
(`diag/layer_02/norm_act/p15/u00` .. `/u99`; E4's lr-grid runs).

    normlab train --config configs/e4_bn_mnist.py:norm=none,lr=0.5 --workdir runs/e4_plain
    normlab train --config configs/e4_bn_mnist.py:norm=batch,lr=0.5,lr_mult=5 --workdir runs/bn5
    python experiments/e4_bn_mnist/run.py        # the lr sweep and all four nets + report

Arguments: norm (batch or none), lr (base learning rate), lr_mult (multiplies lr: the paper's
BN-x5 and BN-x30), act (default sigmoid; E5 runs this net with every activation), init_std
(default 0.1), bias_init (the hidden biases' initial value, default 0; E5's dying-ReLU arm
starts units off with a negative one), batch (default 60; a multiple of the devices on the
mesh's data axis), steps (default 50,000), seed, dataset (mnist or digits; digits has no
validation split: val is its test split), runlocal.

Expected (measured at 4,000 steps, lr 2, 5 seeds; experiments/e4_bn_mnist/report.md):
norm=batch and norm=none end within 0.002 test accuracy (0.9676 vs 0.9661); at lr 10 BN
trains (0.965) while plain seeds may stay at chance; at lr 60 both stay at chance; over all
100 last-layer units the sigmoid-input percentiles drift more with BN (0.317 vs 0.251) and
alike relative to each unit's p85 − p15 spread (0.074 vs 0.071).
"""

import sys
from pathlib import Path

from normlab.config import parse_arg
from normlab.train.defaults import base_config, shrink_for_runlocal

sys.path.insert(0, str(Path(__file__).resolve().parent))  # configs/: common.py
from common import holdout_splits  # noqa: E402


def get_config(arg=None):
    a = parse_arg(
        arg,
        norm="batch",
        lr=0.5,
        lr_mult=1.0,
        act="sigmoid",
        init_std=0.1,
        bias_init=0.0,
        batch=60,
        steps=50_000,
        seed=0,
        dataset="mnist",
        runlocal=False,
    )
    c = base_config()
    c.seed = a.seed
    c.dataset = a.dataset
    holdout_splits(c)
    c.batch_size = a.batch
    c.total_steps = a.steps
    c.steps_per_call = 100
    c.log_every_steps = 100
    c.eval_every_steps = 100
    c.diag_every_steps = 100
    c.diag_batch_size = 1000
    c.checkpoint_every_steps = 0
    c.model = dict(
        name="mlp",
        depth=3,
        width=100,
        norm=a.norm,
        activation=a.act,
        kernel_init="normal",
        kernel_init_kwargs={"std": a.init_std},
        hidden_bias_init=a.bias_init,
    )
    c.lr = a.lr * a.lr_mult
    c.optimizer = dict(name="sgd")
    if a.runlocal:
        shrink_for_runlocal(c)
        c.checkpoint_every_steps = 0
    return c
