"""`normlab bench --seeds`: K seeds in one program (`config.num_seeds`) vs K separate runs.

The candidates train the same K seeds of the BatchNorm paper's MNIST net (3 × 100 sigmoid with
BN, batch 60, SGD; on the bundled `digits` data, so nothing is downloaded) on one device:

    one_program   one K-seed run (`normlab.train.seeds`): a chunk of S steps for all K seeds
                  is one jitted call
    separate      K single-seed runs, each its own compiled chunk, called one after the other

Each call of either candidate is S steps of all K seeds, host work included (every seed's batch
indices, the metrics' copy to the host), timed interleaved (`harness.time_interleaved`). The
throughput ratio is the paired ratio t_separate / t_one_program: how many times more seed-steps
per second one program trains.

    result = bench_seeds(num_seeds=8, steps_per_call=100, repeats=5)
    result["throughput_ratio"]          # e.g. 3.1
"""

from __future__ import annotations

import itertools
from typing import Any

import jax

from normlab.bench.harness import paired_ratio, time_interleaved


def _config(num_seeds: int, steps_per_call: int, seed: int = 0) -> Any:
    from normlab.train.defaults import base_config

    c = base_config()
    c.dataset, c.batch_size, c.lr = "digits", 60, 0.5
    c.total_steps = c.steps_per_call = c.log_every_steps = steps_per_call
    c.eval_every_steps = c.checkpoint_every_steps = 0
    c.model = {"name": "mlp", "depth": 3, "width": 100, "norm": "batch",
               "activation": "sigmoid"}
    c.seed, c.num_seeds = seed, num_seeds
    return c


def bench_seeds(
    num_seeds: int = 8, *, steps_per_call: int = 100, repeats: int = 5,
    min_sample_s: float = 0.02,
) -> dict[str, Any]:
    """Times `num_seeds` seeds in one program against as many separate runs (module doc)."""
    from normlab.train.run import build_run

    if num_seeds < 2:
        raise ValueError(f"--num-seeds must be >= 2 to compare against separate runs, got "
                         f"{num_seeds}")
    device = jax.devices()[:1]
    together = build_run(_config(num_seeds, steps_per_call), device)
    separate = [build_run(_config(1, steps_per_call, seed), device) for seed in range(num_seeds)]
    steps = itertools.count(0, steps_per_call)  # every call trains the next chunk of steps

    def one_program() -> Any:
        return together.train_chunk(next(steps), steps_per_call)

    def one_by_one() -> Any:
        step = next(steps)
        return [run.train_chunk(step, steps_per_call) for run in separate]

    timings = time_interleaved({"one_program": one_program, "separate": one_by_one},
                               repeats=repeats, min_sample_s=min_sample_s)
    seed_steps = num_seeds * steps_per_call

    def rate(name: str) -> float:
        return seed_steps / (timings[name].median_ms / 1e3)

    return {
        "model": "mlp 3x100 sigmoid + BN, batch 60, digits",
        "num_seeds": num_seeds,
        "steps_per_call": steps_per_call,
        "one_program": timings["one_program"].summary(),
        "separate": timings["separate"].summary(),
        "seed_steps_per_s": {"one_program": rate("one_program"), "separate": rate("separate")},
        "throughput_ratio": paired_ratio(timings["separate"], timings["one_program"]),
    }


def markdown(result: dict[str, Any]) -> str:
    """The result as a Markdown table (one row per candidate) and the ratio."""
    rows = [
        "| candidate | ms per call (median) | seed-steps/s |",
        "|---|---:|---:|",
    ]
    for name in ("one_program", "separate"):
        rows.append(f"| {name} | {result[name]['median_ms']:.1f} | "
                    f"{result['seed_steps_per_s'][name]:.0f} |")
    return "\n".join([
        f"{result['num_seeds']} seeds x {result['steps_per_call']} steps per call of "
        f"{result['model']}, one device", "", *rows, "",
        f"throughput ratio (one program / separate runs): {result['throughput_ratio']:.2f}",
    ])
