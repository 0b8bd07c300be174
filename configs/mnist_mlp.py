"""The BatchNorm paper's MNIST net (Ioffe & Szegedy 2015, §4.1): 3 × 100 sigmoid, batch 60, SGD.

    normlab train --config configs/mnist_mlp.py:norm=batch --workdir runs/mnist_bn
    normlab train --config configs/mnist_mlp.py:norm=none --workdir runs/mnist_plain
    normlab train --config configs/mnist_mlp.py:norm=batch,runlocal --workdir /tmp/smoke

Arguments: norm (any norm name; default batch), act (default sigmoid), init and init_std
(default normal with std 0.1: "small random Gaussian values"), lr (default 0.5), steps
(default 50,000), dataset (mnist, fashion_mnist or digits), runlocal (a 20-step smoke test).

Expected (2-core CPU, ~1-2 min): norm=batch reaches ≥ 97% test accuracy; see README "Results".
"""

from normlab.config import parse_arg
from normlab.train.defaults import base_config, shrink_for_runlocal


def get_config(arg=None):
    a = parse_arg(
        arg,
        norm="batch",
        act="sigmoid",
        init="normal",
        init_std=0.1,
        lr=0.5,
        steps=50_000,
        dataset="mnist",
        runlocal=False,
    )
    c = base_config()
    c.dataset = a.dataset
    c.batch_size = 60
    c.total_steps = a.steps
    c.steps_per_call = 500
    c.log_every_steps = 500
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 10_000
    c.model = dict(
        name="mlp",
        depth=3,
        width=100,
        norm=a.norm,
        activation=a.act,
        kernel_init=a.init,
        kernel_init_kwargs={"std": a.init_std} if a.init == "normal" else {},
    )
    c.lr = a.lr
    c.optimizer = dict(name="sgd")
    if a.runlocal:
        shrink_for_runlocal(c)
    return c


def sweep(add, arg=None):
    """The BN paper's comparison at two learning rates: 4 trials (norm × lr).

    normlab sweep --config configs/mnist_mlp.py:dataset=digits,runlocal --workdir sweeps/bn
    """
    for norm in ("none", "batch"):
        for lr in (0.1, 0.5):
            add(model__norm=norm, lr=lr)
