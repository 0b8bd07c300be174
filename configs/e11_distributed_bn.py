"""E11: BatchNorm statistics across devices at a small per-device batch (SPEC §3 E11).

An MLP with BN: flatten → 3 × (Dense(100) → BN → ReLU) → Dense(10), Kaiming-normal weights,
inputs standardized, SGD with momentum 0.9 at a constant lr, on Fashion-MNIST (the first 55,000
training images; `test_*` on the 10,000 test images), data parallel over 8 devices with
`per_device_batch` examples each (global batch 8·4 = 32 by default). `scope` chooses which
examples one set of BN statistics covers (normlab.parallel.bn_scope): `global` (all 32),
`per_device` (each device's 4), `ghost` (ghost batches of `ghost` consecutive examples) or
`groups` (`groups` groups of consecutive devices).

    export XLA_FLAGS=--xla_force_host_platform_device_count=8    # 8 fake devices on a CPU
    normlab train --config configs/e11_distributed_bn.py:scope=global --workdir runs/e11_global
    normlab train --config configs/e11_distributed_bn.py:scope=per_device --workdir runs/e11_dev
    normlab train --config configs/e11_distributed_bn.py:scope=ghost,ghost=2 --workdir runs/e11_g2
    normlab train --config configs/e11_distributed_bn.py:scope=groups,groups=2,mode=pmap \
        --workdir runs/e11_groups_pmap
    python experiments/e11_distributed_bn/run.py     # every scope, timings, mode agreement

Arguments: scope, norm (default batch; E11 also checks group+proxy, with 4 groups, in every
parallel mode), ghost (ghost batch size, for scope=ghost), groups (device groups, for
scope=groups), per_device_batch (default 4), devices (the data axis; default 8, must be the
number of devices JAX sees), mode (jit or pmap), unbiased (BN's running variance with the
n/(n−1) correction), lr (default 0.02), steps (default 3,000), depth, width, seed, dataset
(fashion_mnist, mnist or digits; digits trains on its 1,500 training images), runlocal.

Expected (measured, 5 seeds, mean): the fewer examples behind each set of statistics, the lower
the test accuracy: global 85.9%, groups=2 85.7%, ghost=8 84.9%, per_device 82.1%, ghost=2 39.4%
(global vs groups and groups vs ghost=8 are not separated at n=5);
the step time is the same for every scope on fake CPU devices (which measure overhead, not
communication). See experiments/e11_distributed_bn/.
"""

from normlab.config import parse_arg
from normlab.train.defaults import base_config, shrink_for_runlocal


def _norm_kwargs(norm: str, unbiased: bool) -> dict:
    if norm.startswith("group"):
        return {"num_groups": 4}  # 4 groups of 25 channels in the 100-wide layers
    return {"unbiased_running_var": True} if unbiased else {}


def get_config(arg=None):
    a = parse_arg(
        arg,
        scope="global",
        norm="batch",
        ghost=0,
        groups=0,
        per_device_batch=4,
        devices=8,
        mode="jit",
        unbiased=False,
        lr=0.02,
        steps=3000,
        depth=3,
        width=100,
        seed=0,
        dataset="fashion_mnist",
        runlocal=False,
    )
    c = base_config()
    c.seed = a.seed
    c.dataset = a.dataset
    c.train_split = "train" if a.dataset == "digits" else "train[:55000]"
    c.evals = {"test": "test"}
    c.preprocess = dict(name="standardize")
    c.mesh = {"data": a.devices, "model": 1, "stage": 1}
    c.parallel_mode = a.mode
    c.bn_scope = a.scope
    c.ghost_batch_size = a.ghost
    c.bn_groups = a.groups
    c.batch_size = a.per_device_batch * a.devices
    c.total_steps = a.steps
    c.steps_per_call = 100
    c.log_every_steps = 100
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 0
    c.model = dict(
        name="mlp", depth=a.depth, width=a.width, norm=a.norm, activation="relu",
        kernel_init="kaiming_normal", norm_kwargs=_norm_kwargs(a.norm, a.unbiased),
    )
    c.lr = a.lr
    c.optimizer = dict(name="momentum", momentum=0.9)
    if a.runlocal:
        shrink_for_runlocal(c)
        c.checkpoint_every_steps = 0
        c.batch_size = a.per_device_batch * a.devices
    return c
