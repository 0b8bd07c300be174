"""Checksums of the arrays in a checkpoint, computed where the arrays live (any mesh, any process).

A checkpoint's bytes can rot or be overwritten without orbax noticing (a flipped byte in a
float tensor restores as a different, often non-finite, number). So every saved leaf gets a
64-bit digest, stored in the checkpoint's metadata and checked after restoring.

The digest of an array is two 32-bit lanes over its raw words w_i (the array viewed as uint32;
8/16-bit dtypes widened to uint32, 64-bit ones split in two words), i its flat (row-major)
position, all arithmetic mod 2^32:

    lane_k = Σ_i mix(w_i XOR mix(i + seed_k)),   mix = MurmurHash3's 32-bit finalizer

A sum mod 2^32 does not depend on the order of its terms, so the digest is the same whatever the
sharding and the device count (a checkpoint saved on 8 devices verifies on 1) and it is computed
by one jitted reduction over global arrays, which also works when no process holds a whole array
(multi-process saves). `mix` is a bijection, so changing any single word always changes both
lanes; several changed words collide with probability about 2^-64.

    digests = tree_digests(state)            # {"params['dense']['kernel']": {...}, ...}
    bad = mismatched(digests, tree_digests(restored))
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_SEEDS = (0x9E3779B9, 0x7F4A7C15)


def _mix(h: jax.Array) -> jax.Array:
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _words(x: jax.Array) -> jax.Array:
    """The array's raw bits as uint32 words (same shape, a trailing 2 for 64-bit dtypes)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = x.dtype.itemsize
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if size == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)  # (..., 2): low word first
    unsigned = {1: jnp.uint8, 2: jnp.uint16}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _digest(x: jax.Array) -> jax.Array:
    words = _words(jnp.asarray(x))
    index = jnp.arange(words.size, dtype=jnp.uint32).reshape(words.shape)
    return jnp.stack(
        [jnp.sum(_mix(words ^ _mix(index + jnp.uint32(s))), dtype=jnp.uint32) for s in _SEEDS]
    )


_digests = jax.jit(lambda leaves: [_digest(x) for x in leaves])


def tree_digests(tree: Any) -> dict[str, dict[str, Any]]:
    """{leaf path: {"shape", "dtype", "digest" (16 hex digits)}} of every array leaf of `tree`.

    Every process of a multi-process job must call it (one collective reduction per leaf).
    """
    leaves = jax.tree.leaves(tree)
    lanes = jax.device_get(_digests(leaves))
    records = tree_layout(tree)
    for record, lane in zip(records.values(), lanes, strict=True):
        record["digest"] = "".join(f"{int(v):08x}" for v in lane)
    return records


def tree_layout(tree: Any) -> dict[str, dict[str, Any]]:
    """{leaf path: {"shape", "dtype"}} of `tree` (arrays or `jax.ShapeDtypeStruct`s)."""
    return {
        jax.tree_util.keystr(path): {"shape": list(np.shape(leaf)), "dtype": str(leaf.dtype)}
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def host_digests(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """The same record for host NumPy arrays (every process holds them whole), by sha256."""
    return {
        name: {
            "shape": list(a.shape),
            "dtype": str(a.dtype),
            "digest": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16],
        }
        for name, a in ((n, np.asarray(v)) for n, v in arrays.items())
    }


def layout_mismatch(saved: dict[str, dict], target: dict[str, dict]) -> str | None:
    """Why `target`'s leaves (paths, shapes, dtypes) differ from the saved ones; None if alike."""
    missing = sorted(set(saved) - set(target))
    extra = sorted(set(target) - set(saved))
    if missing or extra:
        parts = [f"saved but not in this config: {', '.join(missing[:3])}"] if missing else []
        parts += [f"in this config but not saved: {', '.join(extra[:3])}"] if extra else []
        return "; ".join(parts)
    for path, record in saved.items():
        want = target[path]
        if record["shape"] != want["shape"] or record["dtype"] != want["dtype"]:
            return (
                f"{path} was saved as {record['dtype']}{record['shape']}, this config makes it "
                f"{want['dtype']}{want['shape']}"
            )
    return None


def mismatched(saved: dict[str, dict], restored: dict[str, dict]) -> list[str]:
    """The paths whose restored digest differs from the saved one."""
    return [p for p, r in saved.items() if p in restored and restored[p]["digest"] != r["digest"]]
