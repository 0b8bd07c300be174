"""E2: a 30-layer plain ReLU MLP on MNIST, Kaiming vs Xavier/LeCun init, with and without BN.

Also E5's deep SELU vs ReLU nets (act=selu).

    normlab train --config configs/e2_depth.py:init=kaiming_normal --workdir runs/e2_kaiming
    normlab train --config configs/e2_depth.py:init=lecun_normal --workdir runs/e2_lecun
    normlab train --config configs/e2_depth.py:init=lecun_normal,norm=batch --workdir runs/e2_bn
    python experiments/e2_depth/run.py            # all runs + report

The net: flatten → `depth` × (Dense(width) → norm → ReLU) → Dense(10), biases 0, inputs
standardized (one mean and std over all training pixels). SGD with momentum 0.9, constant lr.

Arguments: act (default relu; E5 runs a deep SELU net with act=selu,init=lecun_normal), init
(kaiming_normal, lecun_normal = the lecture's "Xavier" std 1/sqrt(fan_in),
xavier_normal = Glorot), norm (none or batch), depth (default 30), width (default 128), lr
(default 0.01), steps (default 3,000), batch (default 128), seed, dataset (mnist or digits),
runlocal.

Expected (He et al. 2015, §2.2 and Fig. 3): with norm=none, Kaiming trains and LeCun/Xavier
stalls at the chance loss ln 10 ≈ 2.30 (the signal shrinks by ~√2 per layer, 2^15 over 30
layers); with norm=batch both train. Measured (experiments/e2_depth/report.md, 5 seeds, 800
steps): plain Kaiming leaves the chance plateau at every depth 20-40 and lr; plain LeCun stalls at
depth >= 30 with lr 3e-3 and at depth 40, but leaves it in 4/5 seeds at depths 30-32 with lr
0.01; with BN every seed trains; at lr 0.01 the deep plain Kaiming nets' accuracy varies by
seed (0.79-0.97 at depth 30, 3,000 steps).
"""

from normlab.config import parse_arg
from normlab.train.defaults import base_config, shrink_for_runlocal


def get_config(arg=None):
    a = parse_arg(
        arg,
        act="relu",
        init="kaiming_normal",
        norm="none",
        depth=30,
        width=128,
        lr=0.01,
        steps=3000,
        batch=128,
        seed=0,
        dataset="mnist",
        runlocal=False,
    )
    c = base_config()
    c.seed = a.seed
    c.dataset = a.dataset
    c.preprocess = dict(name="standardize", per_channel=True)
    c.batch_size = a.batch
    c.total_steps = a.steps
    c.steps_per_call = 100
    c.log_every_steps = 100
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 0
    c.diag_every_steps = 500
    c.model = dict(
        name="mlp", depth=a.depth, width=a.width, norm=a.norm, activation=a.act,
        kernel_init=a.init,
    )
    c.lr = a.lr
    c.optimizer = dict(name="momentum", momentum=0.9)
    if a.runlocal:
        shrink_for_runlocal(c)
        c.checkpoint_every_steps = 0
    return c
