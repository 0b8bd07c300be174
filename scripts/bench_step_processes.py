"""ResNet-20 train step: normlab vs PyTorch eager, each in its own process, round-robin.

    python scripts/bench_step_processes.py --rounds 3 --steps 10 --json step_processes.json

`normlab bench --conv` times both frameworks in one process, where XLA:CPU's spinning thread
pool and PyTorch's OpenMP threads compete for the same cores. Here each candidate is a fresh
process that builds its step, warms it up, and times `--steps` steps; the candidates take turns
(round 1: all of them, round 2: all of them, ...), so load that changes slower than a round
hits every candidate alike. The ratio of a candidate is the median over rounds of its
per-round median step time divided by normlab's in the same round. Needs torch (the `bench`
extra).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# normlab_xla_defaults: normlab's step with XLA:CPU's own defaults (YNNPACK convolutions,
# normlab/xla_cpu.py)
CANDIDATES = {
    "normlab": {},
    "normlab_xla_defaults": {"env": {"NORMLAB_XLA_DEFAULTS": "1"}},
    "torch_2t": {"threads": 2},
    "torch_1t": {"threads": 1},
}


def _time_steps(step, steps: int) -> list[float]:
    for _ in range(2):  # warm-up: compilation (JAX), allocator and autotuning caches (both)
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def _child(name: str, batch: int, steps: int) -> None:
    import numpy as np
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((batch, 32, 32, 3)).astype(np.float32)
    y_np = rng.integers(0, 10, batch).astype(np.int32)
    if name.startswith("normlab"):
        import jax
        import jax.numpy as jnp

        from normlab.bench.conv_paths import _jax_step
        stepper, _ = _jax_step("xla", "resnet20", jnp.asarray(x_np), jnp.asarray(y_np),
                               {"preact": True})

        def step() -> None:
            jax.block_until_ready(stepper())
    else:
        from normlab.bench import torch_ref
        torch = torch_ref.import_torch()
        torch.set_num_threads(CANDIDATES[name]["threads"])
        step = torch_ref.resnet20_step(x_np, y_np, channels_last=False)
    print(json.dumps(_time_steps(step, steps)))


def _child_env(name: str) -> dict[str, str]:
    env = {**os.environ, **CANDIDATES[name].get("env", {})}
    if "NORMLAB_XLA_DEFAULTS" in env:  # this process imported normlab: its flag is in XLA_FLAGS
        from normlab.xla_cpu import EIGEN_CONVOLUTIONS
        env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(EIGEN_CONVOLUTIONS, "").strip()
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.batch, args.steps)
        return
    from normlab.bench import torch_ref
    try:  # before any child starts: a missing torch names its install command
        torch_ref.import_torch()
    except ImportError as err:
        raise SystemExit(str(err)) from None
    per_round: dict[str, list[float]] = {name: [] for name in CANDIDATES}
    loads = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for name in CANDIDATES:
            out = subprocess.run([sys.executable, __file__, "--child", name, "--batch",
                                  str(args.batch), "--steps", str(args.steps)],
                                 check=True, capture_output=True, text=True,
                                 env=_child_env(name)).stdout
            per_round[name].append(statistics.median(json.loads(out.splitlines()[-1])))
        loads.append(os.getloadavg()[0])
    rows = []
    for name, medians in per_round.items():
        ratios = [m / ref for m, ref in zip(medians, per_round["normlab"], strict=True)]
        rows.append({"candidate": name, "step_ms": 1e3 * statistics.median(medians),
                     "round_medians_ms": [1e3 * m for m in medians],
                     "ratio_to_normlab": statistics.median(ratios)})
    print(f"batch {args.batch}, {args.rounds} rounds x {args.steps} steps, "
          f"load average {loads[0]:.1f} -> {loads[-1]:.1f}")
    print("| candidate | step ms (median of round medians) | x normlab | normlab x it |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['candidate']} | {r['step_ms']:.0f} | {r['ratio_to_normlab']:.2f} | "
              f"{1 / r['ratio_to_normlab']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": args.batch, "rounds": args.rounds, "steps": args.steps,
                       "load_average": loads, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
