"""Classification loss with label smoothing ("label_smoothing" in `REGULARIZERS`).

    loss = softmax_cross_entropy(logits_NK, labels_N, label_smoothing=0.1)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from normlab.registry import REGULARIZERS


@REGULARIZERS.register("label_smoothing")
def softmax_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    label_smoothing: float = 0.0,
    num_classes: int | None = None,
) -> jax.Array:
    """Mean softmax cross-entropy with label smoothing (Szegedy et al. 2016).

    loss = mean_n  −Σ_k t[n, k] · log softmax(z[n])_k,   t = (1 − ε) · y + ε / K
    where z are the logits (…, K), y the targets and ε = `label_smoothing` ∈ [0, 1). The mean runs
    over every leading axis (the batch). `labels` are either integer class ids of shape z.shape[:-1]
    (turned into one-hot y) or one-hot/soft targets of z's shape (e.g. from mixup), each row summing
    to 1. Computed in float32; returns a float32 scalar. Integer ids outside [0, K) give an all-zero
    y (they cannot be checked under jit).

    Args:
      logits: unnormalized scores, (…, K).
      labels: int (…) or float (…, K).
      label_smoothing: ε.
      num_classes: K, if given it must equal logits.shape[-1] (a consistency check).

        loss = softmax_cross_entropy(logits_NK, labels_N, label_smoothing=0.1)
        grads = jax.grad(lambda z: softmax_cross_entropy(z, labels_N))(logits_NK)
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(
            f"softmax_cross_entropy: label_smoothing must be in [0, 1), "
            f"got label_smoothing={label_smoothing}"
        )
    if logits.ndim < 1:
        raise ValueError("softmax_cross_entropy: logits must have a class axis, got a scalar")
    k = logits.shape[-1]
    if num_classes is not None and num_classes != k:
        raise ValueError(
            f"softmax_cross_entropy: num_classes={num_classes} does not match "
            f"logits.shape[-1]={k}"
        )
    if jnp.issubdtype(labels.dtype, jnp.integer):
        if labels.shape != logits.shape[:-1]:
            raise ValueError(
                f"softmax_cross_entropy: integer labels must have shape {logits.shape[:-1]}, "
                f"got labels.shape={labels.shape}"
            )
        targets = jax.nn.one_hot(labels, k, dtype=jnp.float32)
    else:
        if labels.shape != logits.shape:
            raise ValueError(
                f"softmax_cross_entropy: one-hot/soft labels must have the logits' shape "
                f"{logits.shape}, got labels.shape={labels.shape}"
            )
        targets = labels.astype(jnp.float32)
    targets = (1.0 - label_smoothing) * targets + label_smoothing / k
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.mean(-jnp.sum(targets * log_probs, axis=-1))
