"""E9: input preprocessing and the speed of training (SPEC §3 E9, §1.7).

A linear softmax classifier on CIFAR-10 pixels (logits = W·x + b, 3,072 inputs; the MLP model
with depth 0, LeCun-normal W, zero b), trained with plain SGD at a constant learning rate, batch
128, on the first `train_size` training images, with one input preprocessing (fitted on those
images only, saved with the checkpoint):

    none         x in [0, 1] as loaded
    zero_center  x − mean image
    standardize  (x − mean image) / std image (per pixel and channel; `per_channel` for one
                 mean and std per colour channel instead)
    pca_whiten   rotate onto the covariance eigenbasis and scale each component by
                 1/sqrt(λ + eps)
    zca_whiten   the same, rotated back to pixel space

`val_*` is measured on 5,000 held-out training images (`train[45000:]`), `test_*` on the 1,000
test images in ../shared/datasets/cifar10; `fit_*` on the training images themselves.

    normlab train --config configs/e9_preprocessing.py:prep=none,lr=0.003 --workdir runs/e9_none
    normlab train --config configs/e9_preprocessing.py:prep=zca_whiten,lr=1 --workdir W
    python experiments/e9_preprocessing/run.py      # lr search × preprocessings + report

Arguments: prep, lr, per_channel (zero_center/standardize: statistics per channel instead of
per pixel), eps (whitening regularizer ε, default 1e-2: for pixels in [0, 1] the covariance
eigenvalues of CIFAR-10 run from ~56 down to ~1e-6; ε = 1e-2 whitens roughly the top 500
components and damps the noise directions below), train_size (default 10,000), batch (128),
steps (3,000), seed, dataset (cifar10 or digits; digits validates and tests on its test split),
runlocal.

Expected (measured at full size): centering allows a 10× larger learning rate than raw pixels
and reaches a training loss of 1.8 in 150 instead of 900 steps; whitening (lr 1) reaches far
lower training losses but overfits; with the same initial weights the loss is 4–5× more
sensitive to a random perturbation of W with un-centered inputs (1.2–1.3× after training). See
experiments/e9_preprocessing/report.md.
"""

from normlab.config import parse_arg
from normlab.train.defaults import base_config, shrink_for_runlocal

PREPROCESSINGS = ("none", "zero_center", "standardize", "pca_whiten", "zca_whiten")


def preprocess_field(prep: str, per_channel: bool, eps: float) -> dict:
    """The `config.preprocess` dict of one preprocessing name."""
    if prep not in PREPROCESSINGS:
        raise ValueError(f"e9_preprocessing: prep must be one of {PREPROCESSINGS}, "
                         f"got prep={prep!r}")
    if prep in ("zero_center", "standardize"):
        return {"name": prep, "per_channel": per_channel}
    if prep in ("pca_whiten", "zca_whiten"):
        return {"name": prep, "eps": eps}
    return {"name": prep}


def get_config(arg=None):
    a = parse_arg(arg, prep="none", lr=0.01, per_channel=False, eps=1e-2, train_size=10_000,
                  batch=128, steps=3000, seed=0, dataset="cifar10", runlocal=False)
    c = base_config()
    c.seed = a.seed
    c.dataset = a.dataset
    c.train_split = f"train[:{a.train_size}]"
    held_out = "test" if a.dataset == "digits" else "train[45000:]"
    c.evals = {"fit": c.train_split, "val": held_out, "test": "test"}
    c.preprocess = preprocess_field(a.prep, a.per_channel, a.eps)
    c.batch_size = a.batch
    c.total_steps = a.steps
    c.steps_per_call = 50
    c.log_every_steps = 50
    c.eval_every_steps = 250
    c.checkpoint_every_steps = 0  # the final checkpoint is still written
    c.model = dict(name="mlp", depth=0, activation="identity", norm="none",
                   kernel_init="lecun_normal")
    c.lr = a.lr
    c.optimizer = dict(name="sgd")
    c.schedule = dict(name="constant", warmup_steps=0)
    if a.runlocal:
        shrink_for_runlocal(c)
        c.checkpoint_every_steps = 0
    return c

