"""Benchmark: conv2d by im2col, by the Toeplitz matrix and by XLA's conv (a benchmark, not a test).

For each size, each algorithm is jitted, warmed up (compiled and run once), then timed as the
median over repeats of one call ending in `block_until_ready`. Prints a Markdown table (ms, and
the ratio to XLA) and optionally writes the rows as JSON. The Toeplitz algorithm runs only where
its matrix has at most `MAX_TOEPLITZ_ELEMENTS` entries; elsewhere the table says why not.

    python scripts/bench_conv_matmul.py --quick                  # a few seconds
    python scripts/bench_conv_matmul.py --grad --json conv.json  # forward + backward, all sizes
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from normlab.nn.conv_matmul import MAX_TOEPLITZ_ELEMENTS, resolve_padding
from normlab.registry import CONV_ALGORITHMS

ALGORITHMS = ("xla", "im2col", "toeplitz")
FULL_SIZES = {"batch": (8, 32, 64), "hw": (16, 32), "channels": (16, 64)}
QUICK_SIZES = {"batch": (8,), "hw": (16, 32), "channels": (16,)}


def time_call(fn, args, repeats: int) -> float:
    """Median wall time of fn(*args) in ms, after one warm-up call (which compiles)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def make_fn(name: str, grad: bool):
    conv = CONV_ALGORITHMS.get(name)
    forward = lambda x, k: conv(x, k, strides=1, padding="SAME")
    if not grad:
        return jax.jit(forward)
    # Forward + backward w.r.t. input and kernel, as in a training step.
    return jax.jit(jax.grad(lambda x, k: jnp.sum(forward(x, k) ** 2), argnums=(0, 1)))


def bench_size(n: int, hw: int, c: int, k: int, grad: bool, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n, hw, hw, c)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, c, c)) / np.sqrt(k * k * c), jnp.float32)
    (pt, pb), (pl, pr) = resolve_padding((hw, hw), (k, k), 1, "SAME")
    toeplitz_elements = (hw + pt + pb) * (hw + pl + pr) * c * hw * hw * c
    row = {"N": n, "H": hw, "W": hw, "C_in": c, "C_out": c, "k": k, "grad": grad,
           "gflop": 2 * n * hw * hw * k * k * c * c * (3 if grad else 1) / 1e9,
           "toeplitz_elements": toeplitz_elements}
    for name in ALGORITHMS:
        if name == "toeplitz" and toeplitz_elements > MAX_TOEPLITZ_ELEMENTS:
            row[f"{name}_ms"] = None
            continue
        row[f"{name}_ms"] = time_call(make_fn(name, grad), (x, kernel), repeats)
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| N | H×W | C_in→C_out | k | GFLOP | xla ms | im2col ms (×xla) | toeplitz ms (×xla) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = []
        for name in ("im2col", "toeplitz"):
            ms = r[f"{name}_ms"]
            if ms is None:
                size = r["toeplitz_elements"] / 1e6
                cells.append(f"skipped: T has {size:.0f}M > 2^28 ≈ 268M entries")
            else:
                cells.append(f"{ms:.2f} ({ms / r['xla_ms']:.1f}×)")
        lines.append(
            f"| {r['N']} | {r['H']}×{r['W']} | {r['C_in']}→{r['C_out']} | {r['k']}×{r['k']} | "
            f"{r['gflop']:.3f} | {r['xla_ms']:.2f} | {cells[0]} | {cells[1]} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small sizes, few repeats")
    parser.add_argument("--grad", action="store_true", help="time forward + backward")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per size")
    parser.add_argument("--kernel", type=int, default=3, help="kernel size k (k×k)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.kernel < 1:
        parser.error(f"--kernel must be >= 1, got {args.kernel}")
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    repeats = args.repeats or (5 if args.quick else 20)

    device = jax.devices()[0]
    header = (f"conv2d {'forward+backward' if args.grad else 'forward'}, float32, stride 1, "
              f"SAME; {device.platform} ({device.device_kind}), jax {jax.__version__}, "
              f"median of {repeats}")
    rows = [
        bench_size(n, hw, c, args.kernel, args.grad, repeats)
        for n, hw, c in itertools.product(sizes["batch"], sizes["hw"], sizes["channels"])
    ]
    print(header + "\n\n" + markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": header, "device": str(device), "rows": rows}, f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
