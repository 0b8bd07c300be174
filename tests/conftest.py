"""Test setup: 8 fake CPU devices, fixed before jax initializes its backend.

The flag must be in the environment before `import jax` anywhere in the test process, which is why
it lives here (pytest imports conftest.py before any test module).
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

assert jax.device_count() == 8, "tests expect 8 fake CPU devices; was jax imported too early?"
