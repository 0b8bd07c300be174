"""The original dataset files ("archives"): which files, where they live, checksums, fetching.

An *archives directory* holds one sub-folder per dataset, each with the dataset's original files,
exactly as `/work/shared/datasets` does (`mnist/`, `fashion_mnist/`, `cifar10/`, `cifar100/`). It
is found as: the `data_dir` argument, else the env variable `NORMLAB_DATA_DIR`, else
`~/.cache/normlab/archives` (where downloads go). It may be read-only: normlab never writes into
it except when it downloads or copies archives there on request.

A dataset can come in several *layouts* (sets of files); the TFDS builders accept any of them:

    mnist, fashion_mnist  idx      the four idx .gz files (names as TFDS expects them)
    cifar10               python   cifar-10-python.tar.gz, or its extracted pickles
                          binary   cifar-10-binary.tar.gz (what TFDS downloads)
                          npz      data_batch_1..5.npz + test_batch_first1000.npz (partial test)
    cifar100              python   cifar-100-python.tar.gz, or its extracted pickles
                          binary   cifar-100-binary.tar.gz
    imagenet2012          imagenet ILSVRC2012_img_train.tar + ILSVRC2012_img_val.tar (TFDS's
                                   manual_dir layout; no download: image-net.org needs a login)

Checksums: MNIST/Fashion-MNIST and the CIFAR *binary* archives are checked against the URLs and
sha256 that TFDS registers, read at run time from `tensorflow_datasets/url_checksums/*.txt`. TFDS
has no entry for the CIFAR *python* archives: their sha256 (the ones Keras pins) and the sha256 of
the npz files (from `/work/shared/datasets/cifar10/README.md`) are copied below. Extracted pickles
have no published checksum and are not verified. ImageNet's two tars are checked by *size* (a
truncated copy fails at once, before hours of work): sizes and sha256 from TFDS's
`datasets/imagenet2012/checksums.tsv` in the installed package, else the constants below (the
same numbers); hashing 155 GB takes many minutes, so their sha256 is checked only on request
(`verify_archives(..., hash_large=True)`).

    folder = fetch_archives("mnist", "/tmp/archives/mnist", source="/work/shared/datasets")
    layout = verify_archives("mnist", folder)          # raises ChecksumError on a bad file
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from normlab.data.catalog import BUILT, CATALOG

log = logging.getLogger("normlab.data")

ARCHIVE_DATASETS = BUILT  # the data sets prepared from original files (`normlab.data.catalog`)

_IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_KRIZ = "https://www.cs.toronto.edu/~kriz/"
# Not in TFDS's url_checksums (TFDS builds CIFAR from the binary archives); Keras pins these.
_PYTHON_ARCHIVES = {
    "cifar-10-python.tar.gz": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    "cifar-100-python.tar.gz": "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
}
# From /work/shared/datasets/cifar10/README.md (lossless re-packing of the official batches).
_CIFAR10_NPZ = {
    "data_batch_1.npz": "ba961aa5b0ade430d0aac47d193407a57706d95aeaa0f7fd50f4074d037d3ae2",
    "data_batch_2.npz": "68e763be6b3dfd0435d4d380b8b20992c62dab4eb20949148cee792d151afaf9",
    "data_batch_3.npz": "0c8408901a1de772e9cfd6b8bdda99d2fa0eac38ecdfb4c1cf7ce253ab4fd337",
    "data_batch_4.npz": "b8972f2058c0fb17535032f5372507eeaaa1bf0502331531286a51eec0cf7142",
    "data_batch_5.npz": "b325bfe0ab8989080fd9f210f0bc6d2681b68425e4e972b7fff9100598502721",
    "test_batch_first1000.npz": "458865e7c6e232d0256e71b47405149fa0aefcb6205ba295c486120f35c26a09",
}
# Official ImageNet tar sizes (bytes) and sha256, as in TFDS 4.9.10's
# datasets/imagenet2012/checksums.tsv; used when that file cannot be read.
_IMAGENET = {
    "ILSVRC2012_img_train.tar": (
        147_897_477_120,
        "b08200a27a8e34218a0e58fde36b0fe8f73bc377f4acea2d91602057c3ca45bb",
    ),
    "ILSVRC2012_img_val.tar": (
        6_744_924_160,
        "c7e06a6c0baccf06d8dbeb6577d71efff84673a5dbdd50633ab44f8ea0456ae0",
    ),
}
_CIFAR10_PICKLES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_CIFAR100_PICKLES = ("train", "test")


class DatasetNotFoundError(ValueError):
    """A dataset is neither prepared nor available as original files; the message says how."""


class ChecksumError(ValueError):
    """An original file does not have the sha256 it must have."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """One complete set of original files of a dataset.

    `kind` selects the reader ("idx", "python", "binary", "npz", "imagenet"); `files` are paths
    relative to the dataset's folder, all required; `sha256`, `urls` and `sizes` (bytes) hold
    what is known for some of them. `hash_by_default=False`: `verify_archives` checks only the
    sizes unless asked to hash (files too large to hash on every prepare).
    """

    kind: str
    files: tuple[str, ...]
    sha256: Mapping[str, str] = dataclasses.field(default_factory=dict)
    urls: Mapping[str, str] = dataclasses.field(default_factory=dict)
    sizes: Mapping[str, int] = dataclasses.field(default_factory=dict)
    hash_by_default: bool = True

    @property
    def is_tar(self) -> bool:
        """Whether the layout is a single .tar.gz archive (read without extracting it)."""
        return len(self.files) == 1 and self.files[0].endswith(".tar.gz")

    @property
    def downloadable(self) -> bool:
        """Whether every file has a URL and a sha256, so it can be downloaded and checked."""
        return all(f in self.urls and f in self.sha256 for f in self.files)


@functools.cache
def _tfds_checksums(tfds_name: str) -> dict[str, tuple[str, str]]:
    """{file name: (url, sha256)} from TFDS's registered url checksums; {} if TFDS lacks them."""
    import tensorflow_datasets as tfds

    path = Path(tfds.__file__).parent / "url_checksums" / f"{tfds_name}.txt"
    if not path.exists():
        return {}
    table = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            url, _size, sha256, filename = line.split("\t")[:4]
            table[filename] = (url, sha256)
    return table


def _tfds_checksums_tsv(dataset: str) -> dict[str, tuple[int, str]]:
    """{file name: (size, sha256)} from TFDS's `datasets/<dataset>/checksums.tsv`; {} if absent."""
    try:
        import tensorflow_datasets as tfds

        text = (Path(tfds.__file__).parent / "datasets" / dataset / "checksums.tsv").read_text()
    except (ImportError, OSError):
        return {}
    table = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not line.startswith("#"):
            table[fields[0].rsplit("/", 1)[-1]] = (int(fields[1]), fields[2])
    return table


def _imagenet_layout() -> Layout:
    table = {**_IMAGENET, **_tfds_checksums_tsv("imagenet2012")}
    files = tuple(_IMAGENET)
    return Layout(
        "imagenet",
        files,
        sha256={f: table[f][1] for f in files},
        sizes={f: table[f][0] for f in files},
        hash_by_default=False,
    )


def _from_tfds(kind: str, files: tuple[str, ...], tfds_name: str) -> Layout:
    table = _tfds_checksums(tfds_name)
    known = [f for f in files if f in table]
    return Layout(kind, files, {f: table[f][1] for f in known}, {f: table[f][0] for f in known})


@functools.cache
def layouts(name: str) -> tuple[Layout, ...]:
    """The accepted layouts of dataset `name`, in order of preference (first found is read)."""
    family = CATALOG[name].archives if name in CATALOG else ""
    if family == "idx":
        return (_from_tfds("idx", _IDX_FILES, name),)
    if family == "cifar":
        stem, pickles = ("cifar-10", _CIFAR10_PICKLES)
        if name == "cifar100":
            stem, pickles = ("cifar-100", _CIFAR100_PICKLES)
        tar = f"{stem}-python.tar.gz"
        extracted = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
        found = [
            Layout("python", (tar,), {tar: _PYTHON_ARCHIVES[tar]}, {tar: _KRIZ + tar}),
            Layout("python", tuple(f"{extracted}/{p}" for p in pickles)),
            Layout("python", pickles),
            _from_tfds("binary", (f"{stem}-binary.tar.gz",), name),
        ]
        if name == "cifar10":
            found.append(Layout("npz", tuple(_CIFAR10_NPZ), dict(_CIFAR10_NPZ)))
        return tuple(found)
    if family == "imagenet":
        return (_imagenet_layout(),)
    raise ValueError(
        f"no original files are known for dataset {name!r}; "
        f"datasets with archives: {', '.join(ARCHIVE_DATASETS)}"
    )


def expected_files(name: str) -> str:
    """One line per accepted layout, listing its files (for error messages and instructions)."""
    return "\n".join(f"  - {', '.join(layout.files)}" for layout in layouts(name))


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The archives dir: `data_dir`, else $NORMLAB_DATA_DIR, else ~/.cache/normlab/archives."""
    if data_dir is None:
        data_dir = os.environ.get("NORMLAB_DATA_DIR") or Path.home() / ".cache/normlab/archives"
    return Path(data_dir).expanduser()


def find_layout(name: str, folder: str | os.PathLike) -> Layout | None:
    """The first layout of `name` whose files are all in `folder`, or None."""
    folder = Path(folder)
    for layout in layouts(name):
        if all((folder / f).is_file() for f in layout.files):
            return layout
    return None


def dataset_folder(name: str, folder: str | os.PathLike) -> Path | None:
    """Where `name`'s files are: `folder/name` if it holds a layout, else `folder`, else None.

    Looking into `folder/name` first is what keeps a folder of datasets from feeding MNIST's
    files to Fashion-MNIST (same file names).
    """
    folder = Path(folder).expanduser()
    for candidate in (folder / name, folder):
        if find_layout(name, candidate) is not None:
            return candidate
    return None


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _size_problems(folder: Path, layout: Layout) -> list[str]:
    bad = []
    for f, expected in layout.sizes.items():
        got = (folder / f).stat().st_size
        if got != expected:
            what = "smaller than" if got < expected else "not"
            hint = ": a truncated copy?" if got < expected else ""
            bad.append(f"{folder / f}: {got:,} bytes, {what} the official {expected:,}{hint}")
    return bad


def verify_archives(name: str, folder: str | os.PathLike, *, hash_large: bool = False) -> Layout:
    """Checks the size and sha256 of every file of the layout found in `folder` whose size or
    checksum is known (sizes first: a cheap check that fails fast). Layouts with
    `hash_by_default=False` (ImageNet) are hashed only with `hash_large`.

    Returns the layout; raises `DatasetNotFoundError` if no layout is complete, `ChecksumError`
    listing the mismatches otherwise.
    """
    folder = Path(folder)
    layout = find_layout(name, folder)
    if layout is None:
        raise DatasetNotFoundError(
            f"no complete set of {name} files in {folder}; expected one of:\n{expected_files(name)}"
        )
    bad = _size_problems(folder, layout)
    hash_them = layout.hash_by_default or hash_large
    for f in layout.files if hash_them and not bad else ():
        if f in layout.sha256:
            got = _sha256(folder / f)
            if got != layout.sha256[f]:
                bad.append(f"{folder / f}: sha256 {got}, expected {layout.sha256[f]}")
    if bad:
        raise ChecksumError(
            f"{name}: files differ from the originals:\n  "
            + "\n  ".join(bad)
            + "\n(a truncated download or another dataset's file; pass verify=False or "
            "--no-verify to use them anyway)"
        )
    unknown = [f for f in layout.files if f not in layout.sha256 or not hash_them]
    if unknown:
        log.debug("%s: no published sha256 for %s; not verified", name, ", ".join(unknown))
    return layout


def fetch_archives(
    name: str,
    dest: str | os.PathLike,
    source: str | os.PathLike | None = None,
    *,
    link: bool = False,
    verify: bool = True,
) -> Path:
    """Puts `name`'s original files into the folder `dest` and returns it.

    With `source` (a folder holding the files, or holding a `name/` sub-folder with them), copies
    them (symlinks with `link=True`); without it, downloads the first layout that has URLs and
    sha256 (the idx files for MNIST/Fashion-MNIST, the python archive for CIFAR) from the authors'
    URLs and checks each file before keeping it. Files already in `dest` with the right
    checksum are kept.

        fetch_archives("fashion_mnist", "/data/fashion_mnist", source="/work/shared/datasets")
    """
    dest = Path(dest).expanduser()
    if source is not None:
        folder = dataset_folder(name, source)
        if folder is None:
            raise DatasetNotFoundError(
                f"no complete set of {name} files in {source} (nor in {Path(source) / name}); "
                f"expected one of:\n{expected_files(name)}"
            )
        layout = verify_archives(name, folder) if verify else find_layout(name, folder)
        if folder.resolve() != dest.resolve():
            for f in layout.files:
                target = dest / f
                target.parent.mkdir(parents=True, exist_ok=True)
                target.unlink(missing_ok=True)
                if link:
                    target.symlink_to((folder / f).resolve())
                else:
                    shutil.copyfile(folder / f, target)
        return dest
    layout = next((lay for lay in layouts(name) if lay.downloadable), None)
    if layout is None:
        raise DatasetNotFoundError(f"no download URL with a known sha256 for {name}")
    dest.mkdir(parents=True, exist_ok=True)
    for f in layout.files:
        target = dest / f
        if target.is_file() and _sha256(target) == layout.sha256[f]:
            continue
        _download(name, layout.urls[f], target, layout.sha256[f])
    return dest


def _download(name: str, url: str, target: Path, sha256: str) -> None:
    partial = target.with_name(target.name + ".part")
    log.info("downloading %s", url)
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as err:
        partial.unlink(missing_ok=True)
        raise DatasetNotFoundError(
            f"could not download {url} ({err}); this machine may have no internet access. "
            f"Copy the original {name} files from a machine that has them into a folder and run:\n"
            f"  normlab data prepare {name} --from /path/to/folder/with/the/archives\n"
            f"expected files (one line per accepted set):\n{expected_files(name)}"
        ) from err
    if digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise ChecksumError(f"{url}: downloaded sha256 {digest.hexdigest()}, expected {sha256}")
    partial.rename(target)
