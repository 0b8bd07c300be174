"""JAX's persistent compilation cache for `normlab train`, on by default on CPU.

A rerun of the same config (a resumed run, a sweep's next point, a test subprocess) compiles the
same XLA programs again; with the cache it loads them from disk instead (a tiny MLP's first step:
seconds → tens of milliseconds). On CPU normlab's programs are small and compile in well under
JAX's default 1 s threshold, which is why the threshold is lowered here.

    from normlab.compile_cache import enable_compilation_cache
    enable_compilation_cache()   # after jax.distributed.initialize, before the first compile

Environment:
  NORMLAB_COMPILATION_CACHE=0   disables it.
  NORMLAB_CACHE_DIR=DIR         where entries go (default ~/.cache/normlab/jax).
  A directory already configured for JAX (`JAX_COMPILATION_CACHE_DIR` or
  `jax.config.update("jax_compilation_cache_dir", ...)`) is kept: the user chose it.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

DEFAULT_DIR = Path("~/.cache/normlab/jax")
# Programs that compile faster than this are not worth a file each (JAX's default is 1 s, which
# on CPU skips almost every normlab program).
MIN_COMPILE_TIME_S = 0.1


def cache_dir() -> Path:
    """$NORMLAB_CACHE_DIR, else ~/.cache/normlab/jax."""
    return Path(os.environ.get("NORMLAB_CACHE_DIR") or DEFAULT_DIR).expanduser()


def enable_compilation_cache(backend: str | None = None) -> Path | None:
    """Turns on JAX's persistent compilation cache when running on CPU; returns its directory,
    or None where it stays off (NORMLAB_COMPILATION_CACHE=0, or a backend other than CPU).

    `backend` defaults to `jax.default_backend()`, which initializes JAX's backends: call this
    after `jax.distributed.initialize`; and before the first compilation, after which JAX has
    decided for the whole process whether it uses a cache.
    """
    flag = os.environ.get("NORMLAB_COMPILATION_CACHE", "1").strip().lower()
    if flag not in ("0", "1", "", "false", "true", "off", "on"):
        raise ValueError(
            f"NORMLAB_COMPILATION_CACHE must be 0 or 1 (or off/on, false/true), got {flag!r}"
        )
    if flag in ("0", "false", "off"):
        return None
    if (backend or jax.default_backend()) != "cpu":
        return None
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return Path(configured)
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    return directory
