"""The command line every `experiments/<id>_<name>/run.py` shares, and loading one by name.

    python experiments/e4_bn_mnist/run.py                 # full size, report into its folder
    python experiments/e4_bn_mnist/run.py --tiny --out /tmp/e4   # seconds (the test suite)
    python experiments/e4_bn_mnist/run.py --reuse         # re-read finished training runs
    python experiments/e4_bn_mnist/run.py --report-only   # rewrite report.md from results.json

    def main(argv=None):
        args = parse_experiment_args(__doc__, __file__, argv)
        report = Report("E4 ...", args.out, command=args.command)

A report's numbers and verdicts come from its results.json (`save_results` stores them with the
verdicts and the revision they came from; `--report-only` renders the report from that file
alone), and the root README's overview table is `experiments_overview()` of those files.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
from ml_collections import ConfigDict

from normlab.config import load_config
from normlab.reports.markdown import Report, Verdict, markdown_table
from normlab.reports.runs import (
    RunResult,
    describe_runs,
    run_training,
    save_eval_records,
    seed_runs,
)
from normlab.train.run_info import command_line, git_revision, run_info

RUNS = "runs"  # training workdirs, under the output folder (not committed: see its .gitignore)
RESULTS = "results.json"
EVAL_RECORDS = "eval_records.jsonl.gz"  # the runs' evaluations, committed beside results.json


def parse_experiment_args(
    doc: str | None, script: str | Path, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parses `--tiny`, `--out`, `--runs`, `--reuse`, `--reuse-any-revision`,
    `--report-only` and `--progress`; adds `command` and `devices`.

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
                        help="read finished training runs of the same config and training code "
                             "instead of rerunning")
    parser.add_argument("--reuse-any-revision", action="store_true",
                        help="--reuse, also runs trained by other code (the report lists the "
                             "revisions mixed)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite report.md from out/results.json alone (no training)")
    parser.add_argument("--progress", action="store_true", help="show training progress lines")
    args = parser.parse_args(argv)
    args.reuse = args.reuse or args.reuse_any_revision
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
                        any_revision=args.reuse_any_revision, progress=args.progress,
                        devices=args.devices)


def train_seeds(
    args: argparse.Namespace, name: str, spec: str, seeds: Sequence[int], **overrides: Any
) -> list[RunResult]:
    """The runs of config `spec` with each of `seeds` (consecutive integers), trained as one
    program of `num_seeds = len(seeds)` in `args.runs/name` (`normlab.train.seeds`: each seed
    equals its own separate run); one RunResult per seed, in the order of `seeds`.

        runs = train_seeds(args, "bn_lr0.5", "configs/e4_bn_mnist.py:norm=batch,lr=0.5", range(5))
    """
    seeds = [int(s) for s in seeds]
    if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise ValueError(f"train_seeds: seeds must be consecutive integers, got {seeds}")
    run = train_config(args, name, spec, seed=seeds[0], num_seeds=len(seeds), **overrides)
    runs = seed_runs(run)
    if len(runs) != len(seeds):  # every seed diverged: one failed run, no per-seed folders
        runs = [run] * len(seeds)
    return runs


def record_runs(args: argparse.Namespace, runs: Iterable[RunResult]) -> str:
    """The training runs behind an experiment's results: saves their evaluation records as
    args.out/eval_records.jsonl.gz (`save_eval_records`) and returns `describe_runs`' line
    for results.json's "training_runs"."""
    runs = list(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    save_eval_records(args.out / EVAL_RECORDS, runs)
    return describe_runs(runs)


def show_training_runs(report: Report, results: dict[str, Any]) -> None:
    """The report's "training runs" fact: results.json's line from `record_runs`, where the
    results have one (a --tiny run that trains nothing has none)."""
    if results.get("training_runs"):
        report.facts["training runs"] = results["training_runs"]


def results_provenance(command: str | None = None, revision: str | None = None) -> dict[str, Any]:
    """Where results come from: the git revision (without "-dirty"), whether the tree was clean
    (no uncommitted changes to tracked files), the command and the UTC time. `revision`: as
    `git_revision()` gave it when the work started (default: now)."""
    revision = revision or git_revision()
    info = run_info()
    return {"git_revision": revision.removesuffix("-dirty"),
            "clean": not revision.endswith("-dirty") and revision != "unknown",
            "command": command or info["command"], "time_utc": info["time_utc"]}


def save_results(report: Report, results: dict[str, Any], verdicts: list[Verdict]) -> Path:
    """Writes `results` as report.out_dir/results.json with its verdicts and, unless it holds
    one already (results read back to rewrite a report), its provenance
    (`results_provenance()`: results computed in this process come from this checkout, at the
    revision the report recorded when it was created — the figures it has written since into
    its tracked folder do not make the tree it ran from dirty)."""
    results["verdicts"] = [v.to_dict() for v in verdicts]
    results.setdefault("provenance", results_provenance(report.info["command"],
                                                        report.info["git_revision"]))
    return report.save_json(RESULTS, results)


def load_results(out: str | Path) -> dict[str, Any]:
    """out/results.json as written by `save_results` (or an older run's, without verdicts)."""
    path = Path(out) / RESULTS
    if not path.is_file():
        raise ValueError(f"load_results: no {RESULTS} in {out}; run the experiment without "
                         "--report-only first")
    return json.loads(path.read_text())


def provenance_line(results: dict[str, Any]) -> str:
    """The revision the results came from, for a report's header: "`abc123` (clean tree)",
    "`abc123` with uncommitted changes", or "revision not recorded" (results from before
    results.json recorded it; the revision of the report first written from them is added)."""
    prov = results.get("provenance") or {}
    if not prov.get("git_revision"):
        earlier = prov.get("first_report_revision")
        return "revision not recorded" + (
            f" (the report first written from these results names `{earlier}`)"
            if earlier else "")
    tree = "clean tree" if prov.get("clean") else "with uncommitted changes"
    return f"`{prov['git_revision']}` ({tree}), {prov.get('time_utc', 'time not recorded')} UTC"


def report_results(report: Report, results: dict[str, Any], verdicts: list[Verdict]) -> Path:
    """The end of every experiment's report step: names where the results came from, writes
    results.json (their verdicts included; rewritten from stored results, their provenance is
    kept) and report.md."""
    save_results(report, results, verdicts)
    report.facts["results from"] = provenance_line(results)
    path = report.write()
    print(f"wrote {path}")
    return path


def experiments_overview(root: Path | None = None) -> str:
    """The root README's overview table: one row per verdict of every experiments/*/results.json
    (experiment, claim, n, verdict as shown), so the README cannot drift from the reports."""
    root = root or experiments_dir()
    rows = []
    for path in sorted(root.glob("e*/results.json"), key=lambda p: _order(p.parent.name)):
        key, title = path.parent.name.split("_", 1)
        link = (f"[{key.upper()} {title.replace('_', ' ')}]"
                f"(experiments/{path.parent.name}/report.md)")
        for i, v in enumerate(json.loads(path.read_text()).get("verdicts", [])):
            verdict = Verdict.from_dict(v)
            rows.append([link if i == 0 else "", verdict.claim,
                         "—" if verdict.n is None else str(verdict.n), verdict.shown])
    return markdown_table(["experiment", "claim", "n", "verdict"], rows, align="llrl")


def _order(name: str) -> int:
    return int(name.split("_", 1)[0].lstrip("e"))


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
    return _load_by_path(path, f"normlab_experiment_{name}")


def sibling_module(script: str | Path, name: str) -> ModuleType:
    """The module `name`.py beside an experiment's run.py (`script`: its `__file__`), e.g. its
    report step. Loaded by path under a name unique to the experiment: every run.py is a script
    outside a package, and two experiments' siblings of one name in one process (the test suite)
    must not shadow each other as `sys.path` imports would.

        e2_report = sibling_module(__file__, "e2_report")
    """
    folder = Path(script).resolve().parent
    path = folder / f"{name}.py"
    if not path.is_file():
        raise ValueError(f"sibling_module: no {name}.py beside {Path(script).name} in {folder}")
    return _load_by_path(path, f"normlab_experiment_{folder.name}_{name}")


def _load_by_path(path: Path, module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    # registered before it runs, as an import would: dataclasses look their module up there
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
