"""Timing and cost primitives of the benchmark harness (`normlab bench`, scripts/bench.py).

Every comparison the harness reports is measured in one process with interleaved repeats: in
repeat r every candidate is timed once, starting from a different candidate each time, so that a
change of machine load hits all of them alike. A ratio of A to B is the median over repeats of
t_A,r / t_B,r (the paired ratio), which cancels load that drifts slower than one repeat.

    timings = time_interleaved({"bn": run_bn, "gn": run_gn}, repeats=10)
    timings["gn"].median_ms, paired_ratio(timings["gn"], timings["bn"])
    cost = compiled_cost(jax.jit(step).lower(state, x, y).compile())   # flops, bytes, memory
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one candidate: one sample per repeat, each the mean of `calls` calls.

    median_ms is the statistic the harness reports; p10_ms / p90_ms are its spread and min_ms the
    least-loaded sample.
    """

    samples_s: tuple[float, ...]
    calls: int

    @property
    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.samples_s)

    @property
    def min_ms(self) -> float:
        return 1e3 * min(self.samples_s)

    def percentile_ms(self, q: float) -> float:
        return 1e3 * float(np.percentile(self.samples_s, q))

    def summary(self) -> dict[str, float | int]:
        """median, p10, p90, min (ms) and the number of samples and calls per sample."""
        return {
            "median_ms": self.median_ms,
            "p10_ms": self.percentile_ms(10),
            "p90_ms": self.percentile_ms(90),
            "min_ms": self.min_ms,
            "samples": len(self.samples_s),
            "calls_per_sample": self.calls,
        }


def _run(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    out = None
    for _ in range(calls):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / calls


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int = 1,
    min_sample_s: float = 0.02,
) -> dict[str, Timing]:
    """Device-synchronized seconds per call of each zero-argument `fn`, repeats interleaved.

    Each fn is called `warmup` times first (compiling it), then once more to size its samples:
    a sample is `calls` back-to-back calls (calls ≥ 1, about `min_sample_s` long) ended by
    `jax.block_until_ready` on the last output, so short calls are not dominated by the
    synchronization. Repeat r times the candidates in the order rotated by r.

        t = time_interleaved({"a": lambda: f(x), "b": lambda: g(x)}, repeats=20)
    """
    if repeats < 1:
        raise ValueError(f"time_interleaved: repeats must be >= 1, got repeats={repeats}")
    names = list(fns)
    calls = {}
    for name in names:
        for _ in range(warmup):
            jax.block_until_ready(fns[name]())
        calls[name] = max(1, int(min_sample_s / max(_run(fns[name], 1), 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_run(fns[name], calls[name]))
    return {name: Timing(tuple(samples[name]), calls[name]) for name in names}


def paired_ratio(a: Timing, b: Timing) -> float:
    """Median over repeats of a_r / b_r (both from the same `time_interleaved` call)."""
    return statistics.median(x / y for x, y in zip(a.samples_s, b.samples_s, strict=True))


def compiled_cost(compiled: Any) -> dict[str, float | None]:
    """XLA's cost and memory analysis of a compiled function: flops, bytes accessed and the
    argument / output / temporary buffer sizes in bytes (None where the backend gives none).

        cost = compiled_cost(jax.jit(f).lower(x).compile())     # cost["flops"]
    """
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # older jax: one dict per computation
        analysis = analysis[0] if analysis else None
    analysis = analysis or {}
    cost: dict[str, float | None] = {
        "flops": analysis.get("flops"),
        "bytes_accessed": analysis.get("bytes accessed"),
    }
    try:
        memory = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
        memory = None
    for field in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes"):
        cost[field] = getattr(memory, field, None) if memory is not None else None
    return cost


def compile_timed(jitted: Any, *args: Any) -> tuple[Any, float]:
    """(compiled executable, seconds spent lowering and compiling) of `jitted` on `args`."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def peak_memory_bytes() -> int | None:
    """The device's peak bytes in use so far, where the backend reports it (GPU, TPU), else None."""
    stats = jax.devices()[0].memory_stats()
    if not stats:
        return None
    return stats.get("peak_bytes_in_use")


def matmul_flops_per_s(dtype: Any, size: int, repeats: int) -> dict[str, float]:
    """FLOP/s of an n×n by n×n matmul in `dtype` (2n³ flops per call): the measured peak.

        peak = matmul_flops_per_s(jnp.bfloat16, 4096, 10)["flops_per_s"]
    """
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal((size, size)), dtype) for _ in range(2))
    matmul = jax.jit(jnp.matmul)
    timing = time_interleaved({"matmul": lambda: matmul(a, b)}, repeats=repeats)["matmul"]
    flops = 2.0 * size**3
    return {"size": size, "flops_per_s": flops / (timing.median_ms / 1e3),
            "best_flops_per_s": flops / (timing.min_ms / 1e3), **timing.summary()}


def machine_load() -> dict[str, Any]:
    """CPU count and the 1/5/15-minute load averages now (the host's, not only this process's)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu_count": os.cpu_count(), "load_average": list(load) if load else None}


def as_json(value: Any) -> Any:
    """Dataclasses, tuples and numpy scalars turned into plain JSON values."""
    if hasattr(value, "__dataclass_fields__"):
        value = asdict(value)
    if isinstance(value, dict):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
