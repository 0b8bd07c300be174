"""TFDS builders without TensorFlow: MNIST/Fashion-MNIST from the real idx files, CIFAR from tiny
archives generated here in every official layout, checksums, partial splits, error messages.

The real archives are in ../shared/datasets beside the repository (override: env
NORMLAB_SHARED_DATASETS); tests that need them are skipped when they are absent.
"""

import ast
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from normlab.data import archives
from normlab.data.builders.cifar import _unpickle
from normlab.data.builders.mnist import read_idx
from normlab.data.datasets import (
    ChecksumError,
    DatasetNotFoundError,
    dataset_info,
    load_arrays,
    prepare,
)

SHARED = Path(
    os.environ.get(
        "NORMLAB_SHARED_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"
    )
)
IDX = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]
needs_shared = pytest.mark.skipif(
    not (SHARED / "mnist" / IDX[0]).is_file(), reason=f"real archives not found in {SHARED}"
)


def parse_idx(path: Path) -> np.ndarray:
    """Reference idx reader: big-endian magic (2 zero bytes, type 0x08, ndim), sizes, data."""
    raw = gzip.decompress(path.read_bytes())
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    assert zero == 0 and dtype_code == 0x08
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8).reshape(dims)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@needs_shared
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_datasets_match_the_original_files(name, tfds_dir):
    prepare(name, source=SHARED, tfds_dir=tfds_dir, quiet=True)
    for split, prefix, n in (("train", "train", 60_000), ("test", "t10k", 10_000)):
        x, y = load_arrays(name, split, tfds_dir=tfds_dir)
        ref_x = parse_idx(SHARED / name / f"{prefix}-images-idx3-ubyte.gz")
        ref_y = parse_idx(SHARED / name / f"{prefix}-labels-idx1-ubyte.gz")
        assert x.shape == (n, 28, 28, 1) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int32
        np.testing.assert_array_equal(np.bincount(y, minlength=10), np.bincount(ref_y))
        np.testing.assert_array_equal(y[:20], ref_y[:20])  # official order kept
        np.testing.assert_array_equal(
            x.reshape(n, -1).sum(1, dtype=np.int64), ref_x.reshape(n, -1).sum(1, dtype=np.int64)
        )
        np.testing.assert_array_equal(x[..., 0], ref_x)
    if name == "mnist":
        np.testing.assert_array_equal(
            load_arrays("mnist", "train[:5]", tfds_dir=tfds_dir)[1], [5, 0, 4, 1, 9]
        )  # MNIST's well-known first labels
    info = dataset_info(name, tfds_dir=tfds_dir)
    assert info.splits == {"train": 60_000, "test": 10_000} and info.partial_splits == {}


@needs_shared
def test_fashion_mnist_is_not_mnist(tfds_dir):
    prepare("mnist", source=SHARED, tfds_dir=tfds_dir, quiet=True)
    prepare("fashion_mnist", source=SHARED, tfds_dir=tfds_dir, quiet=True)
    xm, ym = load_arrays("mnist", "test[:500]", tfds_dir=tfds_dir)
    xf, yf = load_arrays("fashion_mnist", "test[:500]", tfds_dir=tfds_dir)
    assert not np.array_equal(xm, xf) and not np.array_equal(ym, yf)
    # The trap: MNIST's files (same names) offered as Fashion-MNIST are refused by checksum...
    with pytest.raises(ChecksumError, match="t10k-images-idx3-ubyte.gz"):
        prepare("fashion_mnist", source=SHARED / "mnist", tfds_dir=tfds_dir, force=True)
    # ...and an archives dir is only searched in its fashion_mnist/ sub-folder.
    with pytest.raises(DatasetNotFoundError, match="fashion_mnist"):
        load_arrays("fashion_mnist", "test", data_dir=SHARED / "mnist", tfds_dir=tfds_dir / "x")


def cifar_rows(rng, n):
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def expected_hwc(rows):
    """Reference layout: row[c·1024 + h·32 + w] is pixel (h, w) of channel c (R, G, B)."""
    h, w, c = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    return rows[:, c * 1024 + h * 32 + w]


def add_to_tar(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_cifar10(folder, kind, rng, n=3, n_test=4):
    """Tiny CIFAR-10 in the official `kind` layout; returns {split: (rows, labels)}."""
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = {
        b: (
            cifar_rows(rng, n_test if b == "test_batch" else n),
            rng.integers(0, 10, n_test if b == "test_batch" else n),
        )
        for b in names
    }
    folder.mkdir(parents=True)
    if kind in ("python", "python-dir"):
        files = {
            f"cifar-10-batches-py/{b}": pickle.dumps(
                {b"batch_label": b"x", b"data": rows, b"labels": [int(v) for v in labels]},
                protocol=2,
            )
            for b, (rows, labels) in batches.items()
        }
    elif kind == "binary":
        files = {
            f"cifar-10-batches-bin/{b}.bin": np.concatenate(
                [labels.astype(np.uint8)[:, None], rows], axis=1
            ).tobytes()
            for b, (rows, labels) in batches.items()
        }
    else:
        for b, (rows, labels) in batches.items():
            out = "test_batch_first1000" if b == "test_batch" else b
            np.savez_compressed(folder / f"{out}.npz", data=rows, labels=labels.astype(np.uint8))
        files = {}
    if kind == "python-dir":
        for path, data in files.items():
            (folder / path).parent.mkdir(exist_ok=True)
            (folder / path).write_bytes(data)
    elif files:
        with tarfile.open(folder / f"cifar-10-{kind}.tar.gz", "w:gz") as tar:
            for path, data in files.items():
                add_to_tar(tar, path, data)
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    return {
        "train": (np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])),
        "test": batches["test_batch"],
    }


@pytest.mark.parametrize("kind", ["python", "python-dir", "binary", "npz"])
def test_cifar10_layouts_give_hwc_pixels_and_partial_splits(kind, tmp_path):
    ref = make_cifar10(tmp_path / "archives" / "cifar10", kind, np.random.default_rng(0))
    if kind in ("python", "binary", "npz"):  # published sha256 exist: the fakes must be refused
        with pytest.raises(ChecksumError, match="differ from the originals"):
            prepare("cifar10", source=tmp_path / "archives", tfds_dir=tmp_path / "tfds")
    prepare(
        "cifar10",
        source=tmp_path / "archives",
        tfds_dir=tmp_path / "tfds",
        verify=False,
        quiet=True,
    )
    for split, (rows, labels) in ref.items():
        x, y = load_arrays("cifar10", split, tfds_dir=tmp_path / "tfds")
        assert x.shape == (len(rows), 32, 32, 3) and x.dtype == np.uint8
        np.testing.assert_array_equal(x, expected_hwc(rows))
        np.testing.assert_array_equal(y, labels)
    info = dataset_info("cifar10", tfds_dir=tmp_path / "tfds")
    first = "first " if kind == "npz" else ""
    assert info.splits == {"train": 15, "test": 4}
    assert info.partial_splits == {
        "train": "15 of 50,000 official train images",
        "test": f"{first}4 of 10,000 official test images",
    }
    assert "PARTIAL SPLITS" in info.description and f"{first}4 of 10,000" in info.description


@pytest.mark.parametrize("kind", ["python", "binary"])
def test_cifar100_fine_and_coarse_labels(kind, tmp_path):
    rng = np.random.default_rng(1)
    data = {
        s: (cifar_rows(rng, n), rng.integers(0, 100, n), rng.integers(0, 20, n))
        for s, n in (("train", 6), ("test", 5))
    }
    fine_names = [f"fine{i:03d}" for i in range(100)]
    coarse_names = [f"coarse{i:02d}" for i in range(20)]
    folder = tmp_path / "cifar100"
    folder.mkdir()
    with tarfile.open(folder / f"cifar-100-{kind}.tar.gz", "w:gz") as tar:
        for split, (rows, fine, coarse) in data.items():
            if kind == "python":
                add_to_tar(
                    tar,
                    f"cifar-100-python/{split}",
                    pickle.dumps(
                        {
                            b"data": rows,
                            b"fine_labels": fine.tolist(),
                            b"coarse_labels": coarse.tolist(),
                        },
                        protocol=2,
                    ),
                )
            else:
                labels = np.stack([coarse, fine], 1).astype(np.uint8)
                add_to_tar(
                    tar,
                    f"cifar-100-binary/{split}.bin",
                    np.concatenate([labels, rows], 1).tobytes(),
                )
        if kind == "python":
            add_to_tar(
                tar,
                "cifar-100-python/meta",
                pickle.dumps(
                    {
                        b"fine_label_names": [n.encode() for n in fine_names],
                        b"coarse_label_names": [n.encode() for n in coarse_names],
                    },
                    protocol=2,
                ),
            )
    prepare("cifar100", source=folder, tfds_dir=tmp_path / "tfds", verify=False, quiet=True)
    for split, (rows, fine, _) in data.items():
        x, y = load_arrays("cifar100", split, tfds_dir=tmp_path / "tfds")
        np.testing.assert_array_equal(x, expected_hwc(rows))
        np.testing.assert_array_equal(y, fine)
    import tensorflow_datasets as tfds

    built = tfds.builder_from_directory(str(tmp_path / "tfds/normlab_cifar100/1.0.0"))
    src = built.as_data_source(split="test")
    assert [int(src[i]["coarse_label"]) for i in range(5)] == data["test"][2].tolist()
    if kind == "python":
        assert built.info.features["label"].names == fine_names
        assert built.info.features["coarse_label"].names == coarse_names
    assert dataset_info("cifar100", tfds_dir=tmp_path / "tfds").num_classes == 100


@needs_shared
@pytest.mark.slow
def test_real_cifar10_npz_has_a_partial_test_split(tmp_path):
    start = time.perf_counter()
    prepare("cifar10", source=SHARED, tfds_dir=tmp_path, quiet=True)
    print(f"prepared the real CIFAR-10 npz in {time.perf_counter() - start:.1f} s")
    x, y = load_arrays("cifar10", "train", tfds_dir=tmp_path)
    assert x.shape == (50_000, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(y), [5000] * 10)
    # Whole-set mean per channel, the checksum that cifar10/README.md quotes to 8 decimals.
    np.testing.assert_allclose(
        x.reshape(-1, 3).mean(0, dtype=np.float64),
        [125.30691805, 122.95039414, 113.86538318],
        atol=5e-9,
    )
    info = dataset_info("cifar10", tfds_dir=tmp_path)
    assert info.splits == {"train": 50_000, "test": 1_000}
    assert info.partial_splits == {"test": "first 1,000 of 10,000 official test images"}


def test_archives_found_through_env_are_prepared_on_first_load(tmp_path, monkeypatch, caplog):
    ref = make_cifar10(tmp_path / "archives" / "cifar10", "python-dir", np.random.default_rng(2))
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(tmp_path / "archives"))
    monkeypatch.setenv("NORMLAB_TFDS_DIR", str(tmp_path / "tfds"))
    with caplog.at_level("INFO", logger="normlab.data"):
        x, y = load_arrays("cifar10", "test")
    assert [r.getMessage() for r in caplog.records if r.name == "normlab.data"] == [
        f"preparing cifar10 from {tmp_path / 'archives' / 'cifar10'} into {tmp_path / 'tfds'} "
        "(once)"
    ]
    assert (tmp_path / "tfds" / "normlab_cifar10" / "1.0.0" / "dataset_info.json").is_file()
    np.testing.assert_array_equal(y, ref["test"][1])


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_arrays("mnist", "train", data_dir=tmp_path / "none", tfds_dir=tmp_path / "tfds")
    message = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "normlab data prepare mnist --from /path/to/folder/with/the/archives" in message
    assert all(f in message for f in IDX) and "NORMLAB_DATA_DIR" in message
    assert "normlab data prepare mnist --tfds-dir" in message  # the no-`--from` (download) way
    # dataset_info still answers (nominal sizes) so a model can be built before the data exists
    assert dataset_info("mnist", data_dir=tmp_path, tfds_dir=tmp_path).splits["train"] == 60_000


def test_other_tfds_names_pass_through_or_fail_clearly(tmp_path):
    # (imagenet2012 is normlab's own now: normlab.data.builders.imagenet)
    with pytest.raises(DatasetNotFoundError, match="tfds build oxford_flowers102"):
        load_arrays("oxford_flowers102", "validation", tfds_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'no_such_data'.*mnist"):
        dataset_info("no_such_data", tfds_dir=tmp_path)
    with pytest.raises(ValueError, match="digits needs no preparation"):
        prepare("digits")


@needs_shared
def test_fetch_archives_copies_links_and_verifies(tmp_path):
    dest = archives.fetch_archives("mnist", tmp_path / "copy", source=SHARED)
    assert sorted(p.name for p in dest.iterdir()) == sorted(IDX)
    assert archives.verify_archives("mnist", dest).kind == "idx"
    linked = archives.fetch_archives("fashion_mnist", tmp_path / "link", SHARED, link=True)
    assert all((linked / f).is_symlink() for f in IDX)
    (dest / IDX[1]).write_bytes(b"truncated")
    with pytest.raises(ChecksumError, match="train-labels-idx1-ubyte.gz: sha256"):
        archives.verify_archives("mnist", dest)
    with pytest.raises(DatasetNotFoundError, match="expected one of"):
        archives.fetch_archives("cifar100", tmp_path / "c", source=SHARED)


def test_checksums_come_from_tfds_and_download_failure_is_clear(tmp_path, monkeypatch):
    (mnist,) = archives.layouts("mnist")
    assert mnist.urls[IDX[0]].endswith(IDX[0])
    assert mnist.sha256[IDX[0]] == (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"  # shared README
    )

    def offline(url, timeout):
        raise urllib.error.URLError("Network is unreachable")

    monkeypatch.setattr(archives.urllib.request, "urlopen", offline)
    with pytest.raises(DatasetNotFoundError, match="(?s)no internet.*--from /path/to/folder"):
        archives.fetch_archives("cifar10", tmp_path)
    assert not list(tmp_path.iterdir())  # no partial file left behind


def test_bad_files_are_refused(tmp_path):
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + b"\x00" * 8))
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(path)
    # A pickle naming anything but NumPy's array classes is refused (it could run code).
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        _unpickle(pickle.dumps({b"data": time.perf_counter}))


def test_download_path_with_a_fake_server(tmp_path, monkeypatch):
    payload = b"original archive bytes"
    wrong = "0" * 64
    layout = archives.Layout("idx", ("a.gz",), {"a.gz": wrong}, {"a.gz": "https://x/a.gz"})
    monkeypatch.setattr(archives, "layouts", lambda name: (layout,))

    class Response(io.BytesIO):
        def __enter__(self):
            return self

    monkeypatch.setattr(archives.urllib.request, "urlopen", lambda url, timeout: Response(payload))
    with pytest.raises(ChecksumError, match="https://x/a.gz: downloaded sha256"):
        archives.fetch_archives("mnist", tmp_path)
    assert not list(tmp_path.iterdir())  # the .part file is removed
    right = archives.Layout(
        "idx", ("a.gz",), {"a.gz": hashlib.sha256(payload).hexdigest()}, {"a.gz": "https://x/a.gz"}
    )
    monkeypatch.setattr(archives, "layouts", lambda name: (right,))
    assert (archives.fetch_archives("mnist", tmp_path) / "a.gz").read_bytes() == payload


def write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        ">" + "I" * array.ndim, *array.shape
    )
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_inconsistent_files_raise_value_errors(tmp_path):
    with pytest.raises(ValueError, match="no original files are known for dataset 'svhn'"):
        archives.layouts("svhn")
    with pytest.raises(ValueError, match="normlab builds only .* got 'oxford_flowers102'"):
        prepare("oxford_flowers102")
    with pytest.raises(DatasetNotFoundError, match="image-net.org, which needs a login"):
        prepare("imagenet2012", data_dir=tmp_path / "none", tfds_dir=tmp_path / "tfds")
    with pytest.raises(DatasetNotFoundError, match="no complete set of mnist files"):
        archives.verify_archives("mnist", tmp_path)
    # idx: fewer labels than images; a truncated image file
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for prefix, n in (("train", 3), ("t10k", 2)):
        write_idx(mnist / f"{prefix}-images-idx3-ubyte.gz", np.zeros((n, 28, 28)))
        write_idx(mnist / f"{prefix}-labels-idx1-ubyte.gz", np.zeros(n - 1))
    with pytest.raises(ValueError, match="mnist train: images .* do not match labels"):
        prepare("mnist", source=tmp_path, tfds_dir=tmp_path / "tfds", verify=False, quiet=True)
    raw = gzip.decompress((mnist / "t10k-images-idx3-ubyte.gz").read_bytes())
    (mnist / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(ValueError, match="header says"):
        read_idx(mnist / "t10k-images-idx3-ubyte.gz")
    # CIFAR: a python archive without its test batch; a binary batch cut mid-record
    cifar = tmp_path / "cifar10"
    cifar.mkdir()
    with tarfile.open(cifar / "cifar-10-python.tar.gz", "w:gz") as tar:
        add_to_tar(tar, "cifar-10-batches-py/data_batch_1", b"")
    with pytest.raises(ValueError, match="'data_batch_2'.*not found"):
        prepare("cifar10", source=cifar, tfds_dir=tmp_path / "tfds", verify=False, quiet=True)
    (cifar / "cifar-10-python.tar.gz").unlink()
    with tarfile.open(cifar / "cifar-10-binary.tar.gz", "w:gz") as tar:
        for b in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            add_to_tar(tar, f"cifar-10-batches-bin/{b}.bin", bytes(3073 + 7))
    with pytest.raises(ValueError, match="not a multiple of 3073"):
        prepare("cifar10", source=cifar, tfds_dir=tmp_path / "tfds", verify=False, quiet=True)


def _module_imports(path: Path) -> set[str]:
    """The normlab.data modules `path` imports, anywhere (a deferred import inside a function
    only hides a cycle)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("normlab.data"):
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("normlab.data")}
    return found


def test_no_import_cycle_in_normlab_data():
    root = Path(__file__).resolve().parents[1]
    modules = {}
    for path in (root / "normlab" / "data").rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        targets = {i for i in _module_imports(path) if i in modules}
        # importing a.b.c runs a.b's __init__ first (unless it is this module's own package,
        # already being imported)
        parents = {t.rpartition(".")[0] for t in targets}
        targets |= {p for p in parents if p in modules and not name.startswith(p + ".")}
        graph[name] = targets - {name, "normlab.data"}
    done: set[str] = set()
    stack: list[str] = []

    def visit(module: str) -> None:
        if module in stack:
            cycle = [*stack[stack.index(module) :], module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module not in done:
            stack.append(module)
            for target in sorted(graph[module]):
                visit(target)
            stack.pop()
            done.add(module)

    for module in sorted(graph):
        visit(module)
    assert "normlab.data.datasets" in graph["normlab.data.loader"]  # the graph is not empty


def test_the_catalog_is_the_one_table():
    from normlab.data.builders import BUILDERS
    from normlab.data.catalog import BUILT, CATALOG
    from normlab.registry import DATASETS

    assert set(DATASETS.names()) == set(CATALOG)
    assert archives.ARCHIVE_DATASETS == BUILT == tuple(BUILDERS)
    for name, cls in BUILDERS.items():
        assert name == cls.DATASET and CATALOG[name].builder_cls() is cls
        info = cls(data_dir="/nonexistent").info  # the TFDS features come from the catalog
        assert tuple(info.features["image"].shape) == CATALOG[name].image_shape
        assert info.features["label"].num_classes == CATALOG[name].num_classes
        assert archives.layouts(name)  # every built data set has known original files
    assert "digits" in CATALOG and "digits" not in BUILT
