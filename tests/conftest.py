"""Test setup: 8 fake CPU devices compiling fast, one compilation cache for the session and its
subprocesses, session-scoped data, the shared tiny digits config and per-test seeded generators.

The device flag must be in the environment before `import jax` anywhere in the test process,
which is why it lives here (pytest imports conftest.py before any test module). So does the
compilation cache: JAX reads `JAX_COMPILATION_CACHE_DIR` and friends from the environment, and
the subprocesses the tests start (kill/resume, multi-process, sweeps) inherit it, so a program
one of them compiled is loaded from disk by the next instead of compiled again.
"""

import atexit
import os
import shutil
import tempfile
import zlib
from pathlib import Path

# The tests' programs are tiny: XLA:CPU's LLVM optimization passes and fusion emitters cost far
# more compile time than they save at run time (the train/parallel test files: 41% less CPU
# time). Results differ from XLA's defaults only in float32 rounding (transcendentals' last
# bits), and every process of the session compiles with the same flags (the subprocesses that
# set their own device count prepend NORMLAB_TEST_XLA_FLAGS). NORMLAB_TEST_XLA_DEFAULTS=1 keeps
# XLA's optimizing defaults.
FAST_COMPILE_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
    "--xla_cpu_use_fusion_emitters=false"
)
os.environ["NORMLAB_TEST_XLA_FLAGS"] = (
    "" if os.environ.get("NORMLAB_TEST_XLA_DEFAULTS") == "1" else FAST_COMPILE_FLAGS
)
os.environ["XLA_FLAGS"] = " ".join(
    f for f in (os.environ["NORMLAB_TEST_XLA_FLAGS"], os.environ.get("XLA_FLAGS", ""),
                "--xla_force_host_platform_device_count=8") if f
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _session_cache_dir() -> str:
    """$NORMLAB_TEST_CACHE_DIR (kept: warm reruns), else a fresh directory removed at exit, so
    that every session (CI) measures itself from a cold cache.

    Under pytest-xdist (`make test` runs three workers) this runs first in the controlling
    process, which then starts the workers with its environment: both workers and every
    subprocess share its one cache, and the controller, which outlives them, removes it."""
    if os.environ.get("NORMLAB_TEST_CACHE_DIR"):
        return os.environ["NORMLAB_TEST_CACHE_DIR"]
    path = tempfile.mkdtemp(prefix="normlab-test-jax-cache-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _session_cache_dir()
# Tests compile thousands of tiny programs: only those worth a file (JAX's default is 1 s, which
# would skip nearly all of them on CPU).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
os.environ.setdefault("NORMLAB_CACHE_DIR", os.environ["JAX_COMPILATION_CACHE_DIR"])

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# normlab's XLA:CPU flags (normlab/xla_cpu.py) go into XLA_FLAGS at its import: before the
# backend starts below, so that this process compiles as its subprocesses do.
import normlab  # noqa: E402, F401

assert jax.device_count() == 8, "tests expect 8 fake CPU devices; was jax imported too early?"

REPO = Path(__file__).resolve().parents[1]
# The tests' one small training run: the BN paper's MLP on digits, 20 steps (`runlocal`).
DIGITS_SPEC = f"{REPO}/configs/mnist_mlp.py:dataset=digits,norm=batch,runlocal"
SHARED_DATASETS = Path(
    os.environ.get("NORMLAB_SHARED_DATASETS", REPO.parent / "shared" / "datasets")
)


@pytest.fixture(scope="session")
def digits_config():
    """A factory: `digits_config("total_steps=10", ...)` → DIGITS_SPEC's config with overrides."""
    from normlab.config import apply_overrides, load_config

    def make(*overrides: str):
        config = load_config(DIGITS_SPEC)
        apply_overrides(config, list(overrides))
        return config

    return make


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The folder of real archives beside the repository (env NORMLAB_SHARED_DATASETS)."""
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def mnist_tfds(tmp_path_factory) -> Path:
    """A TFDS directory with MNIST prepared once for the session from the shared archives by
    `normlab data prepare mnist` (skips where they are absent)."""
    import argparse

    from normlab.data import command

    if not (SHARED_DATASETS / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real archives not found in {SHARED_DATASETS}")
    tfds_dir = tmp_path_factory.mktemp("tfds_mnist")
    parser = argparse.ArgumentParser(prog="normlab")
    command.add_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "prepare", "mnist", "--from", str(SHARED_DATASETS),
                              "--tfds-dir", str(tfds_dir)])
    assert args.func(args) == 0
    return tfds_dir


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A NumPy generator seeded from the test's id: the same numbers in every run and process,
    independent of which other tests ran first (unlike a module-level generator)."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
