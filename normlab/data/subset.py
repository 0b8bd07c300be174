"""Class subsets: a data set restricted to some of its classes, labels renumbered in order.

`classes = (c_0, c_1, ..., c_{K-1})` keeps the examples whose label is one of them and relabels
class c_i as i, so a K-class model trains on it (e.g. CIFAR-10 classes 5-9 as a 5-class task).
The split string then indexes the subset, not the whole split: with classes (5, 6, 7, 8, 9),
"train[:100]" is the first 100 training images of those classes (in the split's order) and
"train[22500:]" the rest of them, so a few-label split or a held-out validation split has
exactly the size it names.

    src = open_split("cifar10", "train[:100]", classes=(5, 6, 7, 8, 9))   # 100 examples, 0..4
    classes = parse_classes("5,6,7,8,9")        # config.classes (a string: "" = every class)
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Example = dict[str, Any]


def parse_classes(spec: str) -> tuple[int, ...]:
    """`config.classes` ("5,6,7,8,9"; "" = every class) as a tuple of ints; ValueError naming
    the field unless it is comma-separated distinct integers, at least 2 of them, each >= 0."""
    if not isinstance(spec, str):
        raise ValueError(f"classes must be a string of comma-separated class indices, e.g. "
                         f"'5,6,7,8,9' ('' for every class), got {spec!r}")
    if not spec.strip():
        return ()
    parts = [p.strip() for p in spec.split(",")]
    if not all(p.isdigit() for p in parts):
        raise ValueError(f"classes={spec!r}: each entry must be a class index >= 0, e.g. "
                         "'5,6,7,8,9'")
    classes = tuple(int(p) for p in parts)
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes={spec!r} names a class twice")
    if len(classes) < 2:
        raise ValueError(f"classes={spec!r}: a classifier needs at least 2 classes")
    return classes


def check_classes(classes: Sequence[int], num_classes: int, dataset: str) -> None:
    """ValueError unless every one of `classes` is a class of `dataset` (0..num_classes - 1)."""
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"classes {list(classes)}: {dataset} has classes 0..{num_classes - 1}, "
                         f"not {bad}")


class ClassSubset:
    """The examples of `base` (a reader: `ArraySplit` / `TfdsSplit`) at `indices`, their labels
    mapped through `relabel` (an array: original label → new label). Same interface as the
    readers: `len`, `read`, `read_encoded` (encoded splits), `image_shape`, `encoded`."""

    def __init__(self, base: Any, indices: np.ndarray, relabel: np.ndarray):
        self.base, self.indices, self.relabel = base, np.asarray(indices, np.int64), relabel
        self.image_shape, self.encoded = base.image_shape, base.encoded

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, indices: np.ndarray, transform: Callable[[Example], Example] | None = None):
        """{"image", "label"} of the subset's examples at `indices`, labels renumbered (before
        `transform` sees them)."""
        rows = self.indices[np.asarray(indices, np.int64)]
        if transform is None:
            batch = self.base.read(rows)
            return {**batch, "label": self.relabel[batch["label"]].astype(np.int32)}
        return self.base.read(rows, lambda e: transform(
            {**e, "label": np.int32(self.relabel[e["label"]])}))

    def read_encoded(self, indices: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        images, labels = self.base.read_encoded(self.indices[np.asarray(indices, np.int64)])
        return images, self.relabel[labels].astype(np.int32)


def class_subset(
    open_base: Callable[[str], Any], split: str, classes: Sequence[int], num_classes: int,
    dataset: str,
) -> ClassSubset:
    """`split` (TFDS split syntax, one split: "train", "train[:100]", "test[50%:]") of the subset
    of `classes`, read through `open_base(split_name)` (the whole split's reader); the slice is
    taken of the subset's examples, in their order in the split."""
    import tensorflow_datasets as tfds

    check_classes(classes, num_classes, dataset)
    instruction = tfds.core.ReadInstruction.from_spec(split)
    if not isinstance(instruction, tfds.core.ReadInstruction):  # "a+b" parses to a sum
        raise ValueError(f"split {split!r}: with classes, a split must be one slice of one split "
                         "(e.g. 'train[:100]'), not a concatenation")
    name = instruction.split_name
    base = open_base(name)
    everything = np.arange(len(base))
    labels = base.read_encoded(everything)[1] if base.encoded else base.read(everything)["label"]
    kept = np.flatnonzero(np.isin(labels, classes))
    infos = {name: types.SimpleNamespace(num_examples=len(kept))}
    (absolute,) = instruction.to_absolute(infos)
    relabel = np.full(num_classes, -1, np.int32)
    relabel[list(classes)] = np.arange(len(classes))
    return ClassSubset(base, kept[absolute.from_:absolute.to], relabel)
