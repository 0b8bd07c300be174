"""Benchmarks of normlab: training steps (step time, images/s, compile time, XLA FLOPs and
utilization, memory, input pipeline) and each norm alone relative to BatchNorm.

    normlab bench --quick                       # or: python scripts/bench.py --quick
    normlab bench --norm-ops --json norm_ops.json

Modules: `harness` (interleaved timing, paired ratios, XLA cost analysis, peak FLOP/s),
`models` (training steps and the input pipeline), `norm_ops` (each norm alone), `command`
(the command line). BENCHMARKS.md holds the numbers measured with it.
"""
