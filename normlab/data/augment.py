"""Batched, jittable data augmentation on NHWC float images (`AUGMENTATIONS` registry).

Every augmentation is a pure function `name(x_NHWC, *, key, **options)` with its own random draw
per example (per batch for mixup). Each is split into two public halves so the randomness is
observable: `*_params(key, ...)` makes the draws and `apply_*(x, draws, ...)` is the
deterministic transform, and `random_*(x, key=key) == apply_*(x, *_params(key, ...))`.
The `POSITIONAL` ones (alternating flip) also take each example's index and the step.

    key_flip, key_crop = jax.random.split(key)
    x = random_flip(x_NHWC, key=key_flip)
    x = random_crop(x, key=key_crop, pad=4)
    x, y = mixup(x, y_onehot_NK, key=key_mix, alpha=0.2)

Arithmetic is done in float32 (at least); outputs keep the input's dtype. Options are Python
values checked before any computation (so they are static under jit).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from normlab.registry import AUGMENTATIONS


def _check_images(owner: str, x: jax.Array) -> None:
    if x.ndim != 4 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{owner}: images must be a float NHWC array, got shape={x.shape}, dtype={x.dtype}"
        )


def _wide(x: jax.Array) -> jax.Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _per_image(v_N: jax.Array) -> jax.Array:
    return v_N[:, None, None, None]


# ------------------------------------------------------------------------------- flip


def flip_params(key: jax.Array, batch: int, p: float = 0.5) -> jax.Array:
    """Flip flags, bool (N,), each True with probability p.  `flip_params(key, 32)`."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"random_flip: p must be in [0, 1], got p={p}")
    return jax.random.bernoulli(key, p, (batch,))


def apply_flip(x: jax.Array, flags_N: jax.Array) -> jax.Array:
    """y[n, h, w] = x[n, h, W − 1 − w] where flags[n], else x[n, h, w] (horizontal mirror)."""
    _check_images("apply_flip", x)
    return jnp.where(_per_image(flags_N), x[:, :, ::-1, :], x)


@AUGMENTATIONS.register("flip")
def random_flip(x: jax.Array, *, key: jax.Array, p: float = 0.5) -> jax.Array:
    """Horizontal flip of each image independently with probability p.

        x = random_flip(x_NHWC, key=jax.random.key(0))
    """
    _check_images("random_flip", x)
    return apply_flip(x, flip_params(key, x.shape[0], p))


# ------------------------------------------------------------------------ alternating flip

# Augmentations that read where an example is in training (its index in the training split and
# the step), not only a random key: `normlab.train.step.augment_batch` passes them `example_ids`
# and `step`.
POSITIONAL = frozenset({"alternating_flip"})


def alternating_flip_params(
    example_ids_N: jax.Array, step: jax.Array, steps_per_epoch: int, seed: int = 0
) -> jax.Array:
    """Flip flags, bool (N,): flip_n = ((epoch + b_n) mod 2 = 1), epoch = ⌊step/steps_per_epoch⌋,
    b_n ∈ {0, 1} a fair coin fixed per example (drawn from `seed` and the example's id alone).

    So every example is flipped in exactly every other epoch (half of them in the even epochs,
    half in the odd ones), instead of in a random half of them: Keller Jordan's airbench
    "alternating flip", which sees both orientations of each image in any two consecutive
    epochs. `alternating_flip_params(ids_N, step=430, steps_per_epoch=43)`.
    """
    if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
        raise ValueError(
            f"alternating_flip: steps_per_epoch must be an int >= 1 (training examples // "
            f"batch size), got steps_per_epoch={steps_per_epoch!r}"
        )
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"alternating_flip: seed must be an int >= 0, got seed={seed!r}")
    base = jax.random.key(seed)
    coin_N = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(base, i)))(example_ids_N)
    epoch = jnp.asarray(step, jnp.int32) // steps_per_epoch
    return (coin_N.astype(jnp.int32) + epoch) % 2 == 1


@AUGMENTATIONS.register("alternating_flip")
def alternating_flip(
    x: jax.Array,
    *,
    key: jax.Array,
    example_ids: jax.Array,
    step: jax.Array,
    steps_per_epoch: int = 0,
    seed: int = 0,
) -> jax.Array:
    """Horizontal flip of each image in exactly every other epoch (`alternating_flip_params`);
    `example_ids` are the images' indices in the training split, `step` the training step.

        x = alternating_flip(x_NHWC, key=key, example_ids=idx_N, step=step, steps_per_epoch=43)
    """
    del key  # the flips are a function of the example and the epoch, not of the step's draw
    _check_images("alternating_flip", x)
    return apply_flip(x, alternating_flip_params(example_ids, step, steps_per_epoch, seed))


# ------------------------------------------------------------------------------- crop


def crop_params(key: jax.Array, batch: int, pad: int = 4) -> jax.Array:
    """Crop offsets (dy, dx), int32 (N, 2), each uniform on {0, …, 2·pad}."""
    if not isinstance(pad, int) or pad < 0:
        raise ValueError(f"random_crop: pad must be an int >= 0, got pad={pad!r}")
    return jax.random.randint(key, (batch, 2), 0, 2 * pad + 1, dtype=jnp.int32)


# How `crop` fills the border: with zeros, or with the image mirrored about its edge pixels
# (np.pad's "reflect": no blank strip, which the speed trainers' 2-pixel translations use).
CROP_FILLS = ("zeros", "reflect")


def apply_crop(
    x: jax.Array, offsets_N2: jax.Array, pad: int = 4, fill: str = "zeros"
) -> jax.Array:
    """Pad by `pad` on every side, then cut the original size at the offsets:
    y[n, h, w] = x_padded[n, h + dy_n, w + dx_n], x_padded[n, h, w] = x[n, h − pad, w − pad]
    inside the image and, outside it, 0 (`fill="zeros"`) or the pixel mirrored about the edge
    (`fill="reflect"`: x_padded[n, −1] = x[n, 1]; needs pad < H and pad < W).
    """
    _check_images("apply_crop", x)
    if not isinstance(pad, int) or pad < 0:
        raise ValueError(f"apply_crop: pad must be an int >= 0, got pad={pad!r}")
    if fill not in CROP_FILLS:
        raise ValueError(f"crop: unknown fill {fill!r}; valid: {', '.join(CROP_FILLS)}")
    _, h, w, c = x.shape
    mode = "constant" if fill == "zeros" else "reflect"
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)

    def crop_one(image_HWC: jax.Array, offset_2: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image_HWC, (offset_2[0], offset_2[1], 0), (h, w, c))

    return jax.vmap(crop_one)(padded, offsets_N2)


@AUGMENTATIONS.register("crop")
def random_crop(
    x: jax.Array, *, key: jax.Array, pad: int = 4, fill: str = "zeros"
) -> jax.Array:
    """Random translation by up to ±pad pixels with zero (or mirrored, `fill="reflect"`) fill:
    the CIFAR "pad 4 and crop 32".

        x = random_crop(x_NHWC, key=jax.random.key(0), pad=4)
        x = random_crop(x_NHWC, key=jax.random.key(0), pad=2, fill="reflect")
    """
    _check_images("random_crop", x)
    return apply_crop(x, crop_params(key, x.shape[0], pad), pad, fill)


# ------------------------------------------------------------------------- brightness


def brightness_params(key: jax.Array, batch: int, max_delta: float = 0.2) -> jax.Array:
    """Brightness shifts δ, float32 (N,), uniform on [−max_delta, max_delta]."""
    if not max_delta >= 0.0:
        raise ValueError(f"random_brightness: max_delta must be >= 0, got max_delta={max_delta}")
    return jax.random.uniform(key, (batch,), minval=-max_delta, maxval=max_delta)


def apply_brightness(x: jax.Array, delta_N: jax.Array) -> jax.Array:
    """y[n] = x[n] + δ[n] (every pixel and channel of image n shifted by δ[n])."""
    _check_images("apply_brightness", x)
    return (_wide(x) + _per_image(delta_N)).astype(x.dtype)


@AUGMENTATIONS.register("brightness")
def random_brightness(x: jax.Array, *, key: jax.Array, max_delta: float = 0.2) -> jax.Array:
    """Adds δ ~ U(−max_delta, max_delta) to each image (as tf.image.random_brightness).

        x = random_brightness(x_NHWC, key=jax.random.key(0), max_delta=0.2)
    """
    _check_images("random_brightness", x)
    return apply_brightness(x, brightness_params(key, x.shape[0], max_delta))


# --------------------------------------------------------------------------- contrast


def contrast_params(
    key: jax.Array, batch: int, lower: float = 0.8, upper: float = 1.2
) -> jax.Array:
    """Contrast factors, float32 (N,), uniform on [lower, upper]; needs 0 ≤ lower ≤ upper."""
    if not 0.0 <= lower <= upper:
        raise ValueError(
            f"random_contrast: need 0 <= lower <= upper, got lower={lower}, upper={upper}"
        )
    return jax.random.uniform(key, (batch,), minval=lower, maxval=upper)


def apply_contrast(x: jax.Array, factor_N: jax.Array) -> jax.Array:
    """y[n, h, w, c] = (x[n, h, w, c] − m[n, c]) · f[n] + m[n, c],  f the factors (N,),

    m[n, c] = mean_{h,w} x[n, h, w, c]: per image and per channel, as in tf.image.adjust_contrast,
    so a colour cast is kept while the spread around it is scaled.
    """
    _check_images("apply_contrast", x)
    xw = _wide(x)
    mean_N11C = jnp.mean(xw, axis=(1, 2), keepdims=True)
    return ((xw - mean_N11C) * _per_image(factor_N) + mean_N11C).astype(x.dtype)


@AUGMENTATIONS.register("contrast")
def random_contrast(
    x: jax.Array, *, key: jax.Array, lower: float = 0.8, upper: float = 1.2
) -> jax.Array:
    """Scales each image around its per-channel mean by a factor ~ U(lower, upper).

        x = random_contrast(x_NHWC, key=jax.random.key(0), lower=0.8, upper=1.2)
    """
    _check_images("random_contrast", x)
    return apply_contrast(x, contrast_params(key, x.shape[0], lower, upper))


# ----------------------------------------------------------------------------- cutout


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"cutout: size must be an int >= 0, got size={size!r}")


def cutout_params(key: jax.Array, batch: int, height: int, width: int) -> jax.Array:
    """Square centres (cy, cx), int32 (N, 2), uniform on {0..H−1} × {0..W−1}."""
    return jax.random.randint(
        key, (batch, 2), 0, jnp.array([height, width], jnp.int32), dtype=jnp.int32
    )


def apply_cutout(x: jax.Array, centres_N2: jax.Array, size: int = 16) -> jax.Array:
    """Zeroes rows [cy − ⌊size/2⌋, cy − ⌊size/2⌋ + size) × the same columns around cx, clipped
    to the image, in every channel of image n. Zero is the data mean after standardization.
    """
    _check_images("apply_cutout", x)
    _check_size(size)
    _, h, w, _ = x.shape
    top_N = centres_N2[:, 0] - size // 2
    left_N = centres_N2[:, 1] - size // 2
    rows_NH = jnp.arange(h)[None, :] - top_N[:, None]
    cols_NW = jnp.arange(w)[None, :] - left_N[:, None]
    in_rows = (rows_NH >= 0) & (rows_NH < size)
    in_cols = (cols_NW >= 0) & (cols_NW < size)
    hole_NHW1 = (in_rows[:, :, None] & in_cols[:, None, :])[..., None]
    return jnp.where(hole_NHW1, jnp.zeros((), x.dtype), x)


@AUGMENTATIONS.register("cutout")
def cutout(x: jax.Array, *, key: jax.Array, size: int = 16) -> jax.Array:
    """Cutout (DeVries & Taylor 2017): one size×size square, centred uniformly at random in each
    image (so it may stick out of the border and be clipped), set to zero.

        x = cutout(x_NHWC, key=jax.random.key(0), size=16)
    """
    _check_images("cutout", x)
    _check_size(size)
    return apply_cutout(x, cutout_params(key, x.shape[0], x.shape[1], x.shape[2]), size)


# ------------------------------------------------------------------------------ mixup


def _check_mixup_inputs(x: jax.Array, labels: jax.Array) -> None:
    _check_images("mixup", x)
    if labels.ndim != 2 or labels.shape[0] != x.shape[0]:
        raise ValueError(
            f"mixup: labels must be one-hot/soft targets of shape (N, K) with N={x.shape[0]}, "
            f"got labels.shape={labels.shape}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.floating):
        raise ValueError(
            f"mixup: labels must be float one-hot/soft targets, got dtype={labels.dtype} "
            "(use jax.nn.one_hot)"
        )


def mixup_params(key: jax.Array, batch: int, alpha: float = 0.2) -> tuple[jax.Array, jax.Array]:
    """(λ, perm): λ ~ Beta(α, α), a float32 scalar for the whole batch, and a random
    permutation of 0..N−1 choosing each example's partner."""
    if not alpha > 0.0:
        raise ValueError(f"mixup: alpha must be > 0, got alpha={alpha}")
    key_lam, key_perm = jax.random.split(key)
    lam = jax.random.beta(key_lam, alpha, alpha, dtype=jnp.float32)
    return lam, jax.random.permutation(key_perm, batch)


def apply_mixup(
    x: jax.Array, labels: jax.Array, lam: jax.Array, perm_N: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """x' = λ·x + (1 − λ)·x[perm], y' = λ·y + (1 − λ)·y[perm] for one-hot/soft labels y (N, K)."""
    _check_mixup_inputs(x, labels)

    def mix(a: jax.Array) -> jax.Array:
        aw = _wide(a)
        return (lam * aw + (1.0 - lam) * aw[perm_N]).astype(a.dtype)

    return mix(x), mix(labels)


@AUGMENTATIONS.register("mixup")
def mixup(
    x: jax.Array, labels: jax.Array, *, key: jax.Array, alpha: float = 0.2
) -> tuple[jax.Array, jax.Array]:
    """Mixup (Zhang et al. 2018): convex combinations of example pairs and of their targets.

    One λ ~ Beta(α, α) per batch; each example is mixed with a partner from a random permutation.
    Takes and returns one-hot/soft labels (N, K), to be fed to a soft-target loss such as
    `normlab.nn.losses.softmax_cross_entropy`.

        x, y = mixup(x_NHWC, jax.nn.one_hot(labels_N, 10), key=jax.random.key(0), alpha=0.2)
    """
    _check_mixup_inputs(x, labels)
    lam, perm = mixup_params(key, x.shape[0], alpha)
    return apply_mixup(x, labels, lam, perm)
