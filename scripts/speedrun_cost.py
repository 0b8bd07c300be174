"""The compute of one run of configs/cifar10_speedrun.py: XLA's FLOPs and the step time.

    python scripts/speedrun_cost.py                       # the full BN recipe
    python scripts/speedrun_cost.py norm=group+proxy --steps 3

Prints (and with --json writes) XLA's cost analysis of the compiled train step and of the
evaluation of one batch (with the config's test-time augmentation), the FLOPs of a whole run
(steps × step + every evaluated image once), and the wall time of `--steps` steps after the
first (compiling) one. The data set must be available (`normlab data prepare cifar10`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from normlab.bench.harness import compiled_cost
from normlab.config import load_config
from normlab.train.inputs import load_split
from normlab.train.run import build_run

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cifar10_speedrun.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arg", nargs="?", default="", help="the config's key=value arguments")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after the first)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    config = load_config(f"{CONFIG}:{args.arg}" if args.arg else str(CONFIG))
    run = build_run(config)
    chunk_args = run.data.chunk_args(0, 1)
    train_cost = compiled_cost(run.chunk.lower(run.state, *chunk_args).compile())

    batch = config.eval_batch_size
    x = np.zeros((batch, *run.data.input_shape), np.float32)
    evaluate = jax.jit(lambda state, x: run.model.apply(state.variables(), x, train=False))
    eval_cost = compiled_cost(evaluate.lower(run.state, x).compile())
    eval_images = sum(len(load_split(config, split).labels) for split in config.evals.values())

    run.train_chunk(0, 1)  # compiles (and fits the whitening on the first batch)
    start = time.perf_counter()
    for step in range(1, 1 + args.steps):
        jax.block_until_ready(run.train_chunk(step, 1))
    step_s = (time.perf_counter() - start) / max(args.steps, 1)

    result = {
        "config": args.arg or "(defaults)",
        "total_steps": run.total_steps,
        "batch_size": config.batch_size,
        "train_step_flops": train_cost["flops"],
        "eval_batch_flops": eval_cost["flops"],
        "eval_batch_size": batch,
        "eval_images": eval_images,
        "run_flops": run.total_steps * train_cost["flops"]
        + eval_images / batch * eval_cost["flops"],
        "step_seconds": step_s,
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
