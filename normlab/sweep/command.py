"""`normlab sweep` and `normlab report`.

    normlab sweep --config configs/mnist_mlp.py:dataset=digits,runlocal --workdir sweeps/bn \\
        [--dry-run] [--backend local --local.parallel=2]
    normlab sweep --config configs/fmnist_resnet.py --workdir sweeps/norms --backend slurm \\
        --slurm.partition=gpu --slurm.gpus_per_trial=1 --slurm.max_parallel=16 [--wait]
    normlab sweep --workdir sweeps/norms --status        # or --wait: from any shell, any time
    normlab report sweeps/norms --sort-by eval_accuracy --metrics eval_accuracy,train_loss

Wiring (in the CLI): `add_subcommands(subparsers)`; then `args.func(args)` runs the command.
Rerunning the same `normlab sweep` command skips finished trials, resumes unfinished ones from
their checkpoints and, on SLURM, leaves alone the trials still queued or running.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from normlab.sweep.expand import Sweep, expand
from normlab.sweep.status import FINISHED, format_status, is_finished, sweep_status

_SLURM_FLAGS = {
    "partition": (str, "partition (queue) to submit to"),
    "time": (str, "time limit per trial: minutes or [D-]HH:MM:SS (default 60)"),
    "cpus_per_task": (int, "CPUs per task (default 1)"),
    "mem_gb": (float, "memory per node in GB (default: the cluster's)"),
    "gpus_per_trial": (int, "GPUs per trial, split evenly over its nodes (default 0)"),
    "nodes": (int, "nodes per trial (default 1)"),
    "tasks_per_node": (int, "processes per node; >1 task makes one multi-process JAX job"),
    "max_parallel": (int, "at most this many trials run at once (default 16)"),
    "account": (str, "account to charge"),
    "qos": (str, "quality of service"),
    "constraint": (str, "node features (--constraint)"),
}


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Adds `sweep` and `report` to `subparsers`; each sets `func` on the namespace.

    parser = argparse.ArgumentParser(prog="normlab")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", "sweeps/bn"])
    exit_status = args.func(args)
    """
    sweep = subparsers.add_parser(
        "sweep",
        help="run a config file's sweep(add, arg) locally or on SLURM",
        description="Expand CONFIG's sweep(add, arg) into trials (each a `normlab train` run in "
        "WORKDIR/<trial-name>, recorded in WORKDIR/sweep.json) and run them. Every trial is "
        "validated first. Rerunning skips finished trials and resumes the others.",
    )
    sweep.add_argument("--config", help="configs/x.py[:key=value,...] defining sweep(add, arg)")
    sweep.add_argument("--workdir", required=True, help="the sweep directory")
    sweep.add_argument("--backend", choices=("local", "slurm"), default="local")
    sweep.add_argument("--dry-run", action="store_true", help="print each trial's command")
    sweep.add_argument("--status", action="store_true", help="show each trial's state and exit")
    sweep.add_argument("--wait", action="store_true", help="wait for the SLURM trials to end")
    sweep.add_argument(
        "--group-seeds", action="store_true",
        help="run the trials that differ only by consecutive seeds as one trial of num_seeds "
        "seeds in one program (seed=s,num_seeds=K; its seeds/<i> are the trials' runs)",
    )  # fmt: skip
    sweep.add_argument(
        "--local.parallel", dest="local_parallel", type=int, default=1, metavar="N",
        help="local backend: trials run at once (default 1)",
    )  # fmt: skip
    for name, (kind, text) in _SLURM_FLAGS.items():
        sweep.add_argument(
            f"--slurm.{name}", dest=f"slurm_{name}", type=kind, metavar=name.upper(), help=text
        )
    sweep.add_argument(
        "--slurm.setup", dest="slurm_setup", action="append", metavar="LINE",
        help="shell line run before each trial (repeatable), e.g. 'module load cuda'",
    )  # fmt: skip
    sweep.set_defaults(func=run_sweep)

    report = subparsers.add_parser(
        "report",
        help="tables (CSV, Markdown) and curves (PNG) of a sweep's trials",
        description="Gather every trial's final and best metrics into WORKDIR/report/"
        "results.csv and results.md and draw each --metrics curve per trial.",
    )
    report.add_argument("workdir", help="the sweep directory")
    report.add_argument("--sort-by", default="final_eval_accuracy", help="column to sort by")
    order = report.add_mutually_exclusive_group()
    order.add_argument("--ascending", dest="descending", action="store_false", default=None)
    order.add_argument("--descending", dest="descending", action="store_true")
    report.add_argument(
        "--metrics", default="eval_accuracy,train_loss",
        help="comma-separated metrics to plot per trial ('' for none)",
    )  # fmt: skip
    report.add_argument("--out", help="output folder (default WORKDIR/report)")
    report.set_defaults(func=run_report)


def _slurm_flags(args: argparse.Namespace) -> dict:
    flags = {name: getattr(args, f"slurm_{name}") for name in _SLURM_FLAGS}
    flags["setup"] = args.slurm_setup
    return flags


def _queue(sweep: Sweep, *, strict: bool) -> dict[str, str]:
    """The SLURM queue's view of the sweep; when not `strict`, a failing squeue only warns."""
    if not any(s["backend"] == "slurm" for s in sweep.submissions):
        return {}
    from normlab.sweep.slurm import queue_states

    try:
        return queue_states(sweep)
    except ValueError as err:
        if strict:
            raise
        print(f"warning: {err}; showing the state from files only", file=sys.stderr)
        return {}


def _finish(sweep: Sweep) -> int:
    """Prints the final state of every trial; 0 when all finished."""
    statuses = sweep_status(sweep)
    print(format_status(statuses))
    return 0 if all(s.state == FINISHED for s in statuses) else 1


def _wait(sweep: Sweep) -> int:
    from normlab.sweep.slurm import wait

    try:
        wait(sweep)
    except KeyboardInterrupt:
        print("stopped waiting; the SLURM jobs go on (--status / --wait)", file=sys.stderr)
        return 130
    return _finish(sweep)


def run_sweep(args: argparse.Namespace) -> int:
    """Runs the parsed `sweep` sub-command; returns the process exit status."""
    if args.status or (args.wait and args.config is None):
        sweep = Sweep.load(args.workdir)
        if args.wait:
            return _wait(sweep)
        print(format_status(sweep_status(sweep, _queue(sweep, strict=False))))
        return 0
    if args.config is None:
        raise ValueError("give --config (or --status / --wait for an existing sweep)")

    resources = None
    if args.backend == "slurm":
        from normlab.sweep.slurm import resources_for

        resources = resources_for(args.config, _slurm_flags(args))
    elif args.local_parallel < 1:
        raise ValueError(f"--local.parallel must be at least 1, got {args.local_parallel}")
    processes = resources.processes if resources else 1
    trials = expand(args.config, args.workdir, processes=processes, group_seeds=args.group_seeds)

    if args.dry_run:
        for trial in trials:
            print(f"# {trial.name}\n{shlex.join(trial.command)}")
        if resources is not None:
            params = resources.executor_parameters()
            print(f"# one SLURM job array of {len(trials)} tasks (submitit) with {params}")
        return 0

    sweep = Sweep.create(args.workdir, args.config, trials)
    sweep.save()
    todo = [t for t in trials if not is_finished(t)]
    print(f"sweep {sweep.directory}: {len(trials)} trials, {len(trials) - len(todo)} finished")

    if resources is None:
        from normlab.sweep.local import run_local

        try:
            run_local(sweep, todo, args.local_parallel)
        except KeyboardInterrupt:
            print("interrupted; rerun the same command to resume", file=sys.stderr)
            return 130
        return _finish(sweep)

    from normlab.sweep.slurm import submit

    queue = _queue(sweep, strict=True)
    if queued := [t.name for t in todo if t.name in queue]:
        print(f"{len(queued)} trial(s) still queued or running from an earlier submission")
    todo = [t for t in todo if t.name not in queue]
    if todo:
        record = submit(sweep, todo, resources)
        kind = "job array" if len(todo) > 1 else "job"
        asked = " ".join(f"{k}={v}" for k, v in resources.executor_parameters().items())
        print(
            f"submitted {kind} {record['job_id']}: {len(todo)} trial(s), at most "
            f"{resources.max_parallel} at a time ({asked})\n"
            f"logs: {sweep.directory / 'logs'}; follow with: normlab sweep --workdir "
            f"{shlex.quote(str(sweep.directory))} --status (or --wait)"
        )
    return _wait(sweep) if args.wait else 0


def run_report(args: argparse.Namespace) -> int:
    """Runs the parsed `report` sub-command; returns the process exit status."""
    from normlab.sweep.collect import write_report

    sweep = Sweep.load(args.workdir)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    result = write_report(
        args.workdir,
        sort_by=args.sort_by,
        descending=args.descending,
        metrics=metrics,
        out_dir=args.out,
        queue=_queue(sweep, strict=False),
    )
    print(result["table"])
    print(f"\nwrote {result['csv']}, {result['markdown']}")
    for path in result["plots"]:
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m normlab.sweep.command sweep|report ...`: the two commands without the rest of
    the CLI (same arguments and the same one-line errors as `normlab sweep|report`)."""
    import logging

    from normlab.errors import debug_from_env, run_reporting_errors

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="normlab")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run_reporting_errors(lambda: args.func(args), debug=debug_from_env())


if __name__ == "__main__":
    sys.exit(main())
