"""The `normlab` command (also `python -m normlab`).

    normlab train --config configs/mnist_mlp.py:norm=batch --workdir runs/bn
    normlab train --config configs/mnist_mlp.py:norm=none --config.lr=0.5 --workdir runs/plain
    normlab eval  --workdir runs/bn --split test
    normlab data prepare mnist --from ../shared/datasets/mnist
    normlab sweep --config configs/mnist_mlp.py:dataset=digits,runlocal --workdir sweeps/bn
    normlab report sweeps/bn
    normlab bench --norm-ops --quick

Bad input (an unknown component, a malformed override, a missing data set, a NaN) ends with
one clear `error:` line and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from normlab import __doc__ as package_doc
from normlab.errors import NormlabError


def _split_overrides(extra: list[str]) -> list[str]:
    """`--config.a.b=v` and `--config.a.b v` → ["a.b=v", ...]; anything else is an error."""
    overrides, i = [], 0
    while i < len(extra):
        item = extra[i]
        if not item.startswith("--config."):
            raise ValueError(f"unrecognized argument {item!r} (overrides look like --config.a.b=v)")
        if "=" in item:
            overrides.append(item[len("--config.") :])
            i += 1
        elif i + 1 < len(extra):
            overrides.append(f"{item[len('--config.') :]}={extra[i + 1]}")
            i += 2
        else:
            raise ValueError(f"override {item!r} has no value")
    return overrides


def _cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    import jax

    from normlab.config import apply_overrides, load_config
    from normlab.parallel.distributed import initialize_from_args
    from normlab.train.loop import train

    initialize_from_args(args)  # joins a multi-process job before any JAX computation
    config = load_config(args.config)
    apply_overrides(config, _split_overrides(extra))
    summary = train(config, args.workdir, progress=not args.no_progress)
    final = {k: round(v, 4) for k, v in summary["final"].items() if k.endswith("accuracy")}
    if jax.process_index() == 0:
        print(f"finished step {summary['step']}/{summary['total_steps']}: {final}")
    return 0


def _cmd_eval(args: argparse.Namespace, extra: list[str]) -> int:
    from normlab.train.evaluate import evaluate_workdir

    if extra:
        raise ValueError(f"unrecognized arguments: {' '.join(extra)}")
    results = evaluate_workdir(args.workdir, splits=args.split)
    for prefix, metrics in results.items():
        print(f"{prefix}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="normlab", description=package_doc)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="train a config in a workdir (resumes if the workdir has checkpoints)",
        description="Train CONFIG (file.py or file.py:key=value,...) in WORKDIR. Any config "
        "field can be overridden with --config.field.subfield=value. Rerunning the same "
        "command resumes from the newest checkpoint.",
    )
    train.add_argument("--config", required=True, help="configs/x.py[:key=value,...]")
    train.add_argument("--workdir", required=True, help="where checkpoints and metrics go")
    train.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    from normlab.parallel.distributed import add_arguments as add_distributed_arguments

    add_distributed_arguments(train)

    evaluate = sub.add_parser(
        "eval",
        help="evaluate a workdir's newest checkpoint",
        description="Evaluate the newest readable checkpoint of WORKDIR on its config's eval "
        "splits, or on --split (a TFDS split string such as test or train[45000:]).",
    )
    evaluate.add_argument("--workdir", required=True)
    evaluate.add_argument("--split", action="append", help="split to evaluate (repeatable)")

    from normlab.data.command import add_subcommand

    add_subcommand(sub)

    from normlab.sweep.command import add_subcommands as add_sweep_subcommands

    add_sweep_subcommands(sub)

    from normlab.bench.command import add_subcommand as add_bench_subcommand

    add_bench_subcommand(sub)

    from normlab.train.ensemble_eval import add_subcommand as add_ensemble_subcommand

    add_ensemble_subcommand(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if args.command == "train":
            return _cmd_train(args, extra)
        if args.command == "eval":
            return _cmd_eval(args, extra)
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args.func(args)
    except (ValueError, FileNotFoundError, NormlabError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
