"""A fake CIFAR-10 (random pixels and labels) in the .npz layout of ../shared/datasets/cifar10,
for tests and benchmarks that need the prepared data set's real reading path, not its content.

    folder = write_fake_cifar10(tmp_path / "archives", per_batch=24, test=30)
    prepare("cifar10", source=tmp_path / "archives", tfds_dir=tmp_path / "tfds", verify=False)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_fake_cifar10(archives: Path, *, per_batch: int, test: int, seed: int = 0) -> Path:
    """Writes `archives/cifar10/data_batch_{1..5}.npz` (`per_batch` images each) and
    `test_batch_first1000.npz` (`test` images); returns the cifar10 folder."""
    folder = Path(archives) / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch_first1000", test)]
    for name, n in names:
        np.savez_compressed(folder / f"{name}.npz",
                            data=rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                            labels=rng.integers(0, 10, n).astype(np.uint8))
    return folder
