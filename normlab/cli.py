"""The `normlab` command (also `python -m normlab`).

    normlab train --config configs/mnist_mlp.py:norm=batch --workdir runs/bn
    normlab train --config configs/mnist_mlp.py:norm=none --config.lr=0.5 --workdir runs/plain
    normlab eval  --workdir runs/bn --split test
    normlab data prepare mnist --from ../shared/datasets/mnist
    normlab sweep --config configs/mnist_mlp.py:dataset=digits,runlocal --workdir sweeps/bn
    normlab report sweeps/bn
    normlab bench --norm-ops --quick

Bad input (an unknown component, a malformed override, a missing data set, a NaN, a config
file that fails) ends with one clear `error:` line and exit status 1, never a traceback; an
error in a config file names its file and line. `normlab --debug ...` (or NORMLAB_DEBUG=1)
shows the full traceback instead. Ctrl-C exits with status 130.
"""

from __future__ import annotations

import argparse
import logging
import sys

from normlab import __doc__ as package_doc
from normlab.errors import debug_from_env, run_reporting_errors


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

    from normlab.compile_cache import enable_compilation_cache
    from normlab.config import apply_overrides, load_config
    from normlab.parallel.distributed import initialize_from_args
    from normlab.train.loop import train

    initialize_from_args(args)  # joins a multi-process job before any JAX computation
    enable_compilation_cache()  # a rerun (resume, a sweep's next trial) loads its programs
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
        print(f"{prefix}: " + ", ".join(
            f"{k}={int(v)}" if k == "examples" else f"{k}={v:.4f}" for k, v in metrics.items()
        ))
    return 0


_DEBUG_HELP = "show the full traceback of an error (also NORMLAB_DEBUG=1)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="normlab", description=package_doc)
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
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
    for subcommand in sub.choices.values():  # `normlab train --debug ...` works too
        subcommand.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP
        )
    return parser


class _HidePlatformProbing(logging.Filter):
    """Drops JAX's "Unable to initialize backend 'tpu'" (or 'cuda', 'rocm'): JAX logs one for
    every platform it probes and does not find, which is no problem of the user's."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Unable to initialize backend")


def configure_logging(level: int = logging.INFO) -> None:
    """The CLI's log format, without absl's chatter and JAX's platform probing."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    probing = logging.getLogger("jax._src.xla_bridge")
    if not any(isinstance(f, _HidePlatformProbing) for f in probing.filters):
        probing.addFilter(_HidePlatformProbing())


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    debug = args.debug or debug_from_env()

    def command() -> int:
        if args.command == "train":
            return _cmd_train(args, extra)
        if args.command == "eval":
            return _cmd_eval(args, extra)
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args.func(args)

    return run_reporting_errors(command, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
