"""Hyperparameter sweeps: trials from a config file's `sweep(add, arg)`, run locally or on SLURM.

    normlab sweep --config configs/mnist_mlp.py:dataset=digits,runlocal --workdir sweeps/bn \\
        --dry-run
    normlab sweep --config configs/mnist_mlp.py --workdir sweeps/bn --local.parallel=2
    normlab sweep --config configs/mnist_mlp.py --workdir sweeps/bn --backend slurm \\
        --slurm.partition=gpu --slurm.gpus_per_trial=1 --slurm.max_parallel=16
    normlab sweep --workdir sweeps/bn --status          # or --wait
    normlab report sweeps/bn --sort-by final_eval_accuracy

Modules: `expand` (trials, names, validation, sweep.json), `status` (what each trial is doing),
`local` (parallel subprocesses), `slurm` (one submitit job array per submission),
`distributed` (the entry point of a multi-process trial), `collect` (tables and plots),
`command` (the two CLI sub-commands).
"""
