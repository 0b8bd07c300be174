"""The entry point of a multi-process trial: every SLURM task of the job runs it, and together
they form one JAX job through `jax.distributed.initialize()`.

    srun --ntasks=2 python -m normlab.sweep.distributed --config configs/x.py --workdir w \\
        --config.lr=0.1                       # one training run over both processes' devices
    srun --ntasks=2 python -m normlab.sweep.distributed --check out/   # just form the job

The sweep's SLURM backend builds this command for trials with more than one task
(`--slurm.tasks_per_node`, `--slurm.nodes`). With `--check` each process writes
`out/process_<i>.json` with what it sees (process index and count, local and global device
counts, and an all-gather of the process indices across the job), and trains nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from normlab.errors import debug_from_env, run_reporting_errors

_PORT_BASE = 65536 - 4096  # the range JAX's own SLURM detection uses


def slurm_job_layout(environ: dict[str, str] | None = None) -> dict[str, int]:
    """`{"process_id", "num_processes", "num_nodes", "port"}` of the current SLURM task.

    The coordinator port is derived from the job id (as JAX's SLURM detection does), so each
    job of an array gets its own.
    """
    env = os.environ if environ is None else environ
    missing = [v for v in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID") if v not in env]
    if missing:
        raise ValueError(
            f"not inside a SLURM task ({', '.join(missing)} unset): run this under srun, or "
            "through `normlab sweep --backend slurm`"
        )
    nodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_JOB_NUM_NODES") or "1"
    return {
        "process_id": int(env["SLURM_PROCID"]),
        "num_processes": int(env["SLURM_NTASKS"]),
        "num_nodes": int(nodes),
        "port": _PORT_BASE + int(env["SLURM_JOB_ID"]) % 4096,
    }


def initialize(timeout_s: int = 300) -> dict[str, int]:
    """Joins this SLURM task to the job's JAX job (`normlab.parallel.distributed`); returns
    its layout.

    On one node the coordinator is 127.0.0.1 and listens there only; across nodes it is the
    step's first node, listening on that host's address only (read from SLURM's environment,
    which needs the task to run inside srun; `normlab.parallel.distributed`).
    """
    from normlab.parallel import distributed

    layout = slurm_job_layout()
    if layout["num_processes"] == 1:
        return layout
    if layout["num_nodes"] == 1:
        address = f"127.0.0.1:{layout['port']}"
        distributed.initialize(
            address, layout["num_processes"], layout["process_id"], timeout_s=timeout_s
        )
    else:
        distributed.initialize(timeout_s=timeout_s)
    return layout


def check_job(out_dir: str | Path) -> dict:
    """Writes and returns what this process sees of the JAX job (see the module docstring)."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.array([jax.process_index()], np.int32))
    report = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_device_count": jax.local_device_count(),
        "device_count": jax.device_count(),
        "gathered_process_indices": np.asarray(gathered).reshape(-1).tolist(),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"process_{jax.process_index()}.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m normlab.sweep.distributed",
        description="Train (or with --check, just form) one JAX job across the SLURM tasks.",
    )
    parser.add_argument("--config", help="configs/x.py[:key=value,...]")
    parser.add_argument("--workdir")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--check", metavar="DIR", help="form the job, write what it sees, exit")
    args, extra = parser.parse_known_args(argv)
    bad = [e for e in extra if not (e.startswith("--config.") and "=" in e)]
    if bad:
        parser.error(f"unrecognized arguments {bad} (overrides look like --config.a.b=v)")
    if args.check is None and not (args.config and args.workdir):
        parser.error("give --config and --workdir (or --check DIR)")

    def command() -> int:
        initialize()
        if args.check is not None:
            print(json.dumps(check_job(args.check)))
            return 0
        from normlab.config import apply_overrides, load_config
        from normlab.train.loop import train

        config = load_config(args.config)
        apply_overrides(config, [e[len("--config.") :] for e in extra])
        summary = train(config, args.workdir, progress=False)
        print(f"finished step {summary['step']}/{summary['total_steps']}")
        return 0

    return run_reporting_errors(command, debug=debug_from_env())


if __name__ == "__main__":
    sys.exit(main())
