"""Ensemble evaluation (SPEC §1.9): K independently trained runs, or the snapshots of one run.

For members k = 1..K with logits f_k(x) on a split of N examples with labels y_n, the ensemble
predicts (`normlab.models.ensemble.ensemble_logits`)

    average="probs":   p̄(·|x) = (1/K)·Σ_k softmax(f_k(x))
    average="logits":  p̄(·|x) = softmax((1/K)·Σ_k f_k(x))

and is scored by accuracy = (1/N)·Σ_n [argmax p̄(·|x_n) = y_n] and loss (NLL) =
−(1/N)·Σ_n log p̄(y_n|x_n); every member is scored the same way on its own softmax.

    from normlab.train.saved import snapshot_paths
    result = evaluate_ensemble([f"runs/seed{s}" for s in range(5)], split="test")
    result = evaluate_ensemble(snapshot_paths("runs/snapshot"))
    result["accuracy"], result["loss"], result["member_accuracies"]

A member is a workdir (its newest checkpoint) or `<workdir>/<checkpoints|snapshots>/<step>`.
The members must share the model, the data set and the fitted preprocessing (one input batch
feeds them all); the split is any split string of that data set (default: the first split of
the first member's `config.evals`).

Command line (`add_subcommand`):

    normlab ensemble runs/seed0 runs/seed1 runs/seed2 --split test
    normlab ensemble runs/snapshot --snapshots
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from normlab.data.datasets import load_arrays
from normlab.models.ensemble import ensemble_logits, stack_members
from normlab.train import inputs
from normlab.train.saved import SavedModel, load_saved, snapshot_paths

AVERAGES = ("probs", "logits")


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    shifted = z - z.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _scores(log_p_NC: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean negative log-likelihood) of (unnormalized) log-probabilities."""
    log_p_NC = _log_softmax(log_p_NC)
    nll = -log_p_NC[np.arange(len(labels)), labels]
    return float(np.mean(np.argmax(log_p_NC, -1) == labels)), float(np.mean(nll))


def _check_compatible(members: Sequence[SavedModel]) -> None:
    first = members[0]
    for other in members[1:]:
        for what, a, b in (
            ("model", first.config.model.to_dict(), other.config.model.to_dict()),
            ("dataset", first.config.dataset, other.config.dataset),
            ("pad_to", first.config.pad_to, other.config.pad_to),
            ("preprocessing", first.meta["preprocess"], other.meta["preprocess"]),
        ):
            if a != b:
                raise ValueError(
                    f"evaluate_ensemble: members must share the {what}: {first.path} has {a}, "
                    f"{other.path} has {b}"
                )
        arrays_a, arrays_b = first.preprocess_arrays, other.preprocess_arrays
        if arrays_a.keys() != arrays_b.keys() or not all(
            np.array_equal(arrays_a[k], arrays_b[k]) for k in arrays_a
        ):
            raise ValueError(
                f"evaluate_ensemble: members must share the fitted preprocessing: {first.path} "
                f"and {other.path} were fitted differently"
            )


def evaluate_ensemble(
    members: Sequence[str | Path],
    split: str | None = None,
    *,
    average: str = "probs",
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Scores the ensemble of `members` and each member on `split` (see the module docstring).

    Returns {"split", "average", "num_members", "members" (paths), "accuracy", "loss",
    "member_accuracies", "member_losses"}.

        result = evaluate_ensemble(["runs/a", "runs/b"], split="test", average="probs")
    """
    if average not in AVERAGES:
        raise ValueError(
            f"evaluate_ensemble: average must be one of {AVERAGES}, got average={average!r}"
        )
    if len(members) == 0:
        raise ValueError("evaluate_ensemble: members must name at least one saved model, got 0")
    if batch_size is not None and batch_size <= 0:
        raise ValueError(f"evaluate_ensemble: batch_size must be > 0, got batch_size={batch_size}")
    saved = [load_saved(m) for m in members]
    _check_compatible(saved)
    first = saved[0]
    config = first.config
    split = split or next(iter(config.evals.values()))
    batch_size = batch_size or config.eval_batch_size
    images, labels = load_arrays(config.dataset, split, **inputs.data_kwargs(config))
    x = inputs.transform(first.preprocessor, inputs.to_float(images, config.pad_to))
    stacked = stack_members([s.state.variables() for s in saved])
    model = first.model

    def apply_fn(variables: Any, x_batch: jax.Array) -> jax.Array:
        return model.apply(variables, x_batch, train=False)

    @jax.jit
    def predict(stacked: Any, x_batch: jax.Array) -> tuple[jax.Array, jax.Array]:
        members_KNC = jax.vmap(lambda v: apply_fn(v, x_batch))(stacked)
        return ensemble_logits(apply_fn, stacked, x_batch, average=average), members_KNC

    n = len(x)
    pad = -n % batch_size
    x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    outputs = [
        jax.device_get(predict(stacked, jnp.asarray(x[i : i + batch_size])))
        for i in range(0, len(x), batch_size)
    ]
    ensemble_NC = np.concatenate([o[0] for o in outputs])[:n]
    members_KNC = np.concatenate([o[1] for o in outputs], axis=1)[:, :n]
    labels = np.asarray(labels, np.int64)
    accuracy, loss = _scores(ensemble_NC, labels)
    member_scores = [_scores(z, labels) for z in members_KNC]
    return {
        "split": split,
        "average": average,
        "num_members": len(saved),
        "members": [str(s.path) for s in saved],
        "accuracy": accuracy,
        "loss": loss,
        "member_accuracies": [a for a, _ in member_scores],
        "member_losses": [nll for _, nll in member_scores],
    }


def run(args: argparse.Namespace) -> int:
    """`normlab ensemble`: prints the ensemble's and each member's accuracy and loss."""
    paths = args.members
    if args.snapshots:
        paths = [p for workdir in args.members for p in snapshot_paths(workdir)]
    result = evaluate_ensemble(paths, args.split, average=args.average)
    for path, acc, loss in zip(
        result["members"], result["member_accuracies"], result["member_losses"], strict=True
    ):
        print(f"member {path}: accuracy={acc:.4f}, loss={loss:.4f}")
    print(
        f"ensemble of {result['num_members']} ({result['average']}) on {result['split']}: "
        f"accuracy={result['accuracy']:.4f}, loss={result['loss']:.4f}"
    )
    return 0


def add_subcommand(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds `ensemble` to `subparsers`; sets `func=run` on the namespace.

        parser = argparse.ArgumentParser(prog="normlab")
        add_subcommand(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(["ensemble", "runs/a", "runs/b", "--split", "test"])
        exit_status = args.func(args)
    """
    ensemble = subparsers.add_parser(
        "ensemble",
        help="evaluate an ensemble of saved models (runs or snapshots)",
        description="Evaluate the ensemble of MEMBERS (workdirs, or <workdir>/checkpoints/<step>, "
        "<workdir>/snapshots/<step>) on --split: accuracy and NLL of the ensemble and of each "
        "member.",
    )
    ensemble.add_argument("members", nargs="+", help="saved models (or, with --snapshots, runs)")
    ensemble.add_argument("--split", default=None, help="split (default: the config's first eval)")
    ensemble.add_argument("--average", choices=AVERAGES, default="probs")
    ensemble.add_argument(
        "--snapshots", action="store_true", help="use every snapshot of each given workdir"
    )
    ensemble.set_defaults(func=run)
    return ensemble
