"""normlab's XLA:CPU defaults (normlab/xla_cpu.py): ResNet convolutions compile to XLA's own
(Eigen) convolution, not a YNNPACK fusion, in a process that imports normlab before its first
computation; a user's own YNNPACK setting and NORMLAB_XLA_DEFAULTS=1 are kept; the convolution
still equals a float64 NumPy convolution."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from normlab import xla_cpu

# Compiles ResNet-20's 8²×64 3×3 conv (a YNNPACK fusion under XLA's defaults, jaxlib 0.10),
# prints whether the compiled program holds a YNNPACK fusion, and the conv of a fixed input.
CHILD = """
import json, sys
import numpy as np
import normlab  # noqa: F401  (applies normlab's XLA:CPU flags)
import jax, jax.numpy as jnp
rng = np.random.default_rng(0)
x = rng.standard_normal((4, 8, 8, 64)).astype(np.float32)
k = (rng.standard_normal((3, 3, 64, 64)) / 24).astype(np.float32)
conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(
    x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")))
hlo = conv.lower(x, k).compile().as_text()
print(json.dumps({"ynn": "ynn_fusion" in hlo, "y": np.asarray(conv(x, k)).tolist()}))
"""


def _child(env_update: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "NORMLAB_XLA_DEFAULTS")}
    env.update(env_update)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def _conv_reference(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Float64 'same' 3×3 convolution (cross-correlation), NHWC × HWIO."""
    x = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    n, h, w, _ = x.shape
    out = np.zeros((n, h - 2, w - 2, k.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nhwc,cd->nhwd", x[:, i:i + h - 2, j:j + w - 2], k[i, j])
    return out


needs_measured_jaxlib = pytest.mark.skipif(
    xla_cpu._jaxlib_minor() != xla_cpu.MEASURED_JAXLIB,
    reason="the flag is applied on the measured jaxlib only")


@needs_measured_jaxlib
def test_convolutions_leave_ynnpack_and_stay_exact():
    ours, defaults = _child({}), _child({"NORMLAB_XLA_DEFAULTS": "1"})
    assert not ours["ynn"] and defaults["ynn"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 8, 64)).astype(np.float32)
    k = (rng.standard_normal((3, 3, 64, 64)) / 24).astype(np.float32)
    ref = _conv_reference(x, k)
    for y in (ours["y"], defaults["y"]):
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)


@needs_measured_jaxlib
def test_a_users_own_ynnpack_setting_is_kept():
    env = {"XLA_FLAGS": f"--{xla_cpu.YNN_FUSION_TYPE}=individual_convolution"}
    assert not xla_cpu.prefer_eigen_convolutions(dict(env))
    assert _child(env)["ynn"]


def test_flag_is_appended_once_and_only_where_measured(monkeypatch):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    monkeypatch.setattr(xla_cpu, "_jaxlib_minor", lambda: xla_cpu.MEASURED_JAXLIB)
    assert xla_cpu.prefer_eigen_convolutions(env)
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8",
                                        xla_cpu.EIGEN_CONVOLUTIONS]
    assert not xla_cpu.prefer_eigen_convolutions(env)  # already set: unchanged
    assert env["XLA_FLAGS"].count(xla_cpu.YNN_FUSION_TYPE) == 1
    assert not xla_cpu.prefer_eigen_convolutions({"NORMLAB_XLA_DEFAULTS": "1"})
    monkeypatch.setattr(xla_cpu, "_jaxlib_minor", lambda: (0, 11))
    empty: dict[str, str] = {}
    assert not xla_cpu.prefer_eigen_convolutions(empty) and "XLA_FLAGS" not in empty
