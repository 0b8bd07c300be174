"""E6 (b): a pre-activation ResNet on CIFAR-10 with each normalization, at a large and a small
batch (the Proxy Norm paper's comparison, Labatie et al. 2021).

    normlab train --config configs/e6_norms.py:norm=group+proxy,batch=8 --workdir runs/e6_gnpn_b8
    normlab train --config configs/e6_norms.py:norm=group,conv=weight_std --workdir runs/e6_ws

The full-size comparison: configs/e6_norms.py:model=resnet20,width=1,epochs=30,train_examples=45000
per norm, batch and seed (a GPU job). experiments/e6_norms/run.py does not train these: within a
2-core CPU's budget the nets stay at 13–37% (issue 18); its verdict on them is "not tested".

The recipe of configs/cifar10_resnet.py (Nesterov momentum 0.9, L2 5e-4 on kernels, flip + crop,
per-channel standardization, cosine schedule), lr = 0.1·batch/128 (linear scaling), with the
first `train_examples` of the 45,000 training images; `eval_*` is the 5,000 held-out training
images, `test_*` the official test images available (only the first 1,000 of the 10,000 with
../shared/datasets/cifar10: ±0.9% standard error at 90%). Proxy Norm runs add weight decay
`proxy_wd` on the proxy parameters β̃, γ̃ (SPEC §1.2 step 5). `steps_per_call=1`: XLA:CPU runs
convolutions inside a scanned loop far slower than outside one (jax-ml/jax#12868).

Arguments: norm (none, batch, batch_renorm, instance, layer, group, layer+proxy, group+proxy,
frn, evonorm_s0, ...), conv (standard or weight_std), groups (GN / EvoNorm-S0 groups, 8),
model (resnet20), width (width multiplier, 0.5), batch (256), lr (0.1 at batch 128, scaled),
epochs (3) or steps, train_examples (45000), proxy_wd (5e-4), seed, dataset (cifar10 or
digits), runlocal.

Expected (the paper): BN degrades at small batch; GN+PN and LN+PN match or beat BN at large
batch and beat GN, LN and IN. Not measured here (see experiments/e6_norms/report.md).
"""

import sys
from pathlib import Path

from normlab.config import parse_arg
from normlab.nn.norm_act import is_proxy
from normlab.train.defaults import shrink_for_runlocal

sys.path.insert(0, str(Path(__file__).resolve().parent))  # configs/: common.py
from common import RESNET_ARGS, resnet_classifier  # noqa: E402


def get_config(arg=None):
    a = parse_arg(arg, **{**RESNET_ARGS, "width": 0.5, "batch": 256, "epochs": 3,
                          "train_examples": 45000, "proxy_wd": 5e-4, "dataset": "cifar10"})
    c = resnet_classifier(a)
    c.model.width_multiplier = a.width
    c.dataset = a.dataset
    if a.dataset == "cifar10":
        c.train_split = f"train[:{min(a.train_examples, 45000)}]"
        c.evals = {"eval": "train[45000:]", "test": "test"}
    else:
        c.train_split = "train"
        c.evals = {"eval": "test"}
        c.augment = {}
    if is_proxy(a.norm):
        c.weight_decay.proxy = a.proxy_wd
    c.steps_per_call = 1
    c.log_every_steps = 10
    c.eval_every_steps = 0
    c.checkpoint_every_steps = 0
    c.eval_batch_size = 500
    if a.runlocal:
        shrink_for_runlocal(c)
        c.steps_per_call = c.log_every_steps = 1
        c.checkpoint_every_steps = 0
        c.model.width_multiplier = 0.25
    return c
