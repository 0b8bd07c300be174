"""normlab.compile_cache: on by default on CPU, off by NORMLAB_COMPILATION_CACHE=0, a second
compile of the same program is a cache hit (checked in a fresh process: JAX decides once per
process whether it uses a cache)."""

import json
import os
import subprocess
import sys

import jax
import pytest

from normlab.compile_cache import cache_dir, enable_compilation_cache

# Enables the cache, compiles one program twice with JAX's in-memory caches cleared in between,
# and reports what JAX's monitoring saw: the second compile must come from the disk cache.
CHILD = """
import json, jax, jax.numpy as jnp
from jax import monitoring
from normlab.compile_cache import enable_compilation_cache
events = []
monitoring.register_event_listener(lambda name, **kw: events.append(name))
directory = enable_compilation_cache()
def f(x):
    for i in range(60):  # enough ops to take longer than the cache's minimum compile time
        x = jnp.tanh(x @ x + i)
    return x
jax.jit(f)(jnp.ones((8, 8))).block_until_ready()
jax.clear_caches()
jax.jit(f)(jnp.ones((8, 8))).block_until_ready()
print(json.dumps({"dir": str(directory), "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "config": jax.config.jax_compilation_cache_dir}))
"""


def _child(env_updates):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(env_updates)
    env["XLA_FLAGS"] = ""  # one CPU device is enough here
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                         check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cache_on_by_default_and_hit_on_recompile(tmp_path):
    where = tmp_path / "jax-cache"
    got = _child({"NORMLAB_CACHE_DIR": str(where), "NORMLAB_COMPILATION_CACHE": "1"})
    assert got["dir"] == got["config"] == str(where)
    assert got["hits"] >= 1
    assert any(where.iterdir())


def test_cache_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("NORMLAB_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "normlab" / "jax"
    monkeypatch.setenv("NORMLAB_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"


@pytest.mark.parametrize("flag", ["0", "off", "false"])
def test_disabled_by_environment(monkeypatch, tmp_path, flag):
    monkeypatch.setenv("NORMLAB_COMPILATION_CACHE", flag)
    monkeypatch.setenv("NORMLAB_CACHE_DIR", str(tmp_path / "unused"))
    assert enable_compilation_cache() is None
    assert not (tmp_path / "unused").exists()


def test_off_on_accelerators(monkeypatch, tmp_path):
    monkeypatch.setenv("NORMLAB_COMPILATION_CACHE", "1")
    monkeypatch.setenv("NORMLAB_CACHE_DIR", str(tmp_path / "unused"))
    assert enable_compilation_cache(backend="gpu") is None
    assert not (tmp_path / "unused").exists()


def test_a_directory_configured_for_jax_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("NORMLAB_COMPILATION_CACHE", "1")
    monkeypatch.setenv("NORMLAB_CACHE_DIR", str(tmp_path / "unused"))
    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "chosen"))
    try:
        assert enable_compilation_cache(backend="cpu") == tmp_path / "chosen"
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "chosen")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
    assert not (tmp_path / "unused").exists()


def test_bad_flag_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("NORMLAB_COMPILATION_CACHE", "maybe")
    with pytest.raises(ValueError, match="NORMLAB_COMPILATION_CACHE must be 0 or 1.*'maybe'"):
        enable_compilation_cache()
