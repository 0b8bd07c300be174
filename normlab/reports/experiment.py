"""The command line every `experiments/<id>_<name>/run.py` shares, and loading one by name.

    python experiments/e4_bn_mnist/run.py                 # full size, report into its folder
    python experiments/e4_bn_mnist/run.py --tiny --out /tmp/e4   # seconds (the test suite)
    python experiments/e4_bn_mnist/run.py --reuse         # re-read finished training runs

    def main(argv=None):
        args = parse_experiment_args(__doc__, __file__, argv)
        report = Report("E4 ...", args.out, command=args.command)
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
from ml_collections import ConfigDict

from normlab.config import load_config
from normlab.reports.runs import RunResult, run_training
from normlab.train.run_info import command_line

RUNS = "runs"  # training workdirs, under the output folder (not committed: see its .gitignore)


def parse_experiment_args(
    doc: str | None, script: str | Path, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parses `--tiny`, `--out`, `--runs`, `--reuse` and `--progress`; adds `command` and
    `devices`.

    Defaults: `out` is the script's folder (where the committed report lives), `runs` is
    `out/runs`. `command` is the command line that reproduces the run: the real one when
    `argv` is None (a script launch), else `python <script> <argv>` (a call from Python).
    `devices` (for `train_config`): one device with `--tiny` (tiny nets sharded over the test
    suite's 8 fake CPU devices take twice the CPU time), else None (every device).
    """
    script = Path(script).resolve()
    parser = argparse.ArgumentParser(
        description=(doc or "").strip().splitlines()[0] if doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tiny", action="store_true", help="a seconds-long version (tests)")
    parser.add_argument("--out", type=Path, default=script.parent, help="report folder")
    parser.add_argument("--runs", type=Path, default=None, help="training workdirs (out/runs)")
    parser.add_argument("--reuse", action="store_true",
                        help="read finished training runs of the same config instead of rerunning")
    parser.add_argument("--progress", action="store_true", help="show training progress lines")
    args = parser.parse_args(argv)
    args.runs = args.runs or args.out / RUNS
    args.devices = jax.devices()[:1] if args.tiny else None
    if argv is None:
        args.command = command_line()
    else:
        try:
            shown = script.relative_to(Path.cwd())
        except ValueError:
            shown = script
        args.command = shlex.join(["python", str(shown), *argv])
    return args


def train_config(
    args: argparse.Namespace, name: str, spec: str, **overrides: Any
) -> RunResult:
    """Trains config `spec` ("configs/x.py:arg") with top-level `overrides` in `args.runs/name`
    (`run_training`, with the `--reuse` / `--progress` / device choices of `args`).

        run = train_config(args, "bn_lr0.5", "configs/e4_bn_mnist.py:norm=batch,lr=0.5")
    """
    config: ConfigDict = load_config(spec)
    for key, value in overrides.items():
        config[key] = value
    return run_training(config, args.runs / name, name=name, reuse=args.reuse,
                        progress=args.progress, devices=args.devices)


def experiments_dir() -> Path:
    """The checkout's `experiments/` folder (normlab installed from source, e.g. `pip -e`)."""
    return Path(__file__).resolve().parents[2] / "experiments"


def load_experiment(name: str) -> ModuleType:
    """`experiments/<name>/run.py` as a module, e.g. to call its `main(argv)` from Python.

        e1 = load_experiment("e1_init_stats")
        results = e1.main(["--tiny", "--out", "/tmp/e1"])
    """
    path = experiments_dir() / name / "run.py"
    if not path.is_file():
        found = sorted(p.parent.name for p in experiments_dir().glob("*/run.py"))
        raise ValueError(f"load_experiment: no experiment name={name!r}; found {found}")
    spec = importlib.util.spec_from_file_location(f"normlab_experiment_{name}", path)
    module = importlib.util.module_from_spec(spec)
    # registered before it runs, as an import would: dataclasses look their module up there
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
