"""MNIST and Fashion-MNIST from their original idx .gz files (same format, different folders).

idx format (LeCun): big-endian magic `0x00000800 | ndim` (0x0803 images, 0x0801 labels), then
`ndim` big-endian uint32 sizes, then the uint8 values in row-major order.

    builder = NormlabFashionMnist(data_dir="/tmp/tfds", file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir="/work/shared/datasets/fashion_mnist"))
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from normlab.data import archives
from normlab.data.builders.base import NormlabBuilder


def read_idx(path: str | Path) -> np.ndarray:
    """The uint8 array stored in a gzipped idx file, shape from its header."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"read_idx: {path} is not an idx file of uint8 (header {data[:4]!r})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise ValueError(f"read_idx: {path} holds {len(data) - offset} values, header says {shape}")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


class _IdxBuilder(NormlabBuilder, skip_registration=True):
    def _read_splits(self, folder: Path, layout: archives.Layout):
        arrays = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
            labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
            if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
                raise ValueError(
                    f"{self.DATASET} {split}: images {images.shape} do not match labels "
                    f"{labels.shape}"
                )
            arrays[split] = {"image": images[..., None], "label": labels}
        return arrays, set()


class NormlabMnist(_IdxBuilder):
    """MNIST handwritten digits, 28×28×1 uint8, 60,000 train / 10,000 test, official order."""

    name = "normlab_mnist"
    DATASET = "mnist"
    CLASS_NAMES = tuple(str(i) for i in range(10))
    DESCRIPTION = "MNIST handwritten digits (LeCun, Cortes, Burges), 28x28 grayscale, 10 classes."
    HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"
    CITATION = "@article{lecun2010mnist, title={MNIST handwritten digit database}, year={2010}}"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the original MNIST files in the manual dir (one folder for MNIST only):\n"
        + archives.expected_files("mnist")
    )


class NormlabFashionMnist(_IdxBuilder):
    """Fashion-MNIST (Zalando), 28×28×1 uint8, 60,000 train / 10,000 test, official order."""

    name = "normlab_fashion_mnist"
    DATASET = "fashion_mnist"
    CLASS_NAMES = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )
    DESCRIPTION = "Fashion-MNIST (Xiao, Rasul, Vollgraf 2017), 28x28 grayscale, 10 classes."
    HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"
    CITATION = "@article{xiao2017fashion, title={Fashion-MNIST}, journal={arXiv:1708.07747}}"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the original Fashion-MNIST files in the manual dir (a folder of its own: the file "
        "names are MNIST's):\n" + archives.expected_files("fashion_mnist")
    )
