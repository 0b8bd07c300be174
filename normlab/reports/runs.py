"""Training runs behind a report: train a config (or reuse a finished run) and read its curves.

    from normlab.config import load_config
    result = run_training(load_config("configs/mnist_mlp.py:norm=batch"), "runs/bn", reuse=True)
    steps, acc = result.series("eval_accuracy")
    steps_to_reach(steps, acc, 0.95)          # first logged step with accuracy >= 0.95

A run whose loss becomes non-finite is a result, not a crash: `RunResult.diverged` holds the
message and the curves hold what was logged before it.

Every run records the code that trained it (`code.json`: `code_digest()` and the git revision);
`reuse=True` reads back only a run of the same config *and* the same training code, so a report
never mixes runs of different code unknowingly (`any_revision=True` allows it, and
`describe_runs` then states the revisions mixed).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from normlab.errors import NonFiniteLossError, TrainingInterrupted
from normlab.train.defaults import base_config
from normlab.train.loop import train
from normlab.train.metrics import read_metrics
from normlab.train.run_info import git_revision

DIVERGED = "diverged.json"
CODE = "code.json"
# a record with one of these metrics is an evaluation or a diagnostic: what the per-step claims
# of a report cite
EVAL_PREFIXES = ("eval_", "val_", "test_", "fit_", "diag/")
_ROOT = Path(__file__).resolve().parents[2]
# the code a run's numbers depend on; normlab/reports only reads runs back and normlab/bench only
# times things, so editing a report or a benchmark does not make finished runs stale
_TRAINING_CODE = ("normlab", "configs")
_NOT_TRAINING_CODE = ("normlab/reports", "normlab/bench")


@functools.cache
def code_digest() -> str:
    """sha256 (16 hex digits) of the training code: every .py file under normlab/ (but
    normlab/reports and normlab/bench) and configs/, path and bytes. Content, not the git
    revision: an edit left uncommitted changes it too, and a commit that touches only docs,
    reports or benchmarks does not."""
    digest = hashlib.sha256()
    for top in _TRAINING_CODE:
        for path in sorted((_ROOT / top).rglob("*.py")):
            rel = path.relative_to(_ROOT).as_posix()
            if rel.startswith(_NOT_TRAINING_CODE):
                continue
            digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _record_code(workdir: Path) -> None:
    (workdir / CODE).write_text(json.dumps(
        {"code_digest": code_digest(), "git_revision": git_revision()}) + "\n")


def _same_code(workdir: Path) -> bool:
    try:
        return json.loads((workdir / CODE).read_text())["code_digest"] == code_digest()
    except (OSError, ValueError, KeyError):
        return False  # a run from before code.json existed: its code is unknown


def series(records: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of metric `key` over the records that hold a finite value of it.

        steps, loss = series(read_metrics(workdir), "train_loss")
    """
    pairs = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    steps, values = zip(*pairs, strict=True)
    return np.asarray(steps, np.int64), np.asarray(values, np.float64)


def steps_to_reach(
    steps: Sequence[int], values: Sequence[float], threshold: float, *, below: bool = False
) -> int | None:
    """The first step whose value is >= `threshold` (`below`: <= threshold, e.g. a loss);
    None if it never is. Across seeds: `normlab.reports.stats.steps_to_reach_across`.

        steps_to_reach([500, 1000], [0.91, 0.96], 0.95)   # 1000
        steps_to_reach([100, 200], [2.3, 1.9], 2.0, below=True)   # 200
    """
    hits = [s for s, v in zip(steps, values, strict=True)
            if (v <= threshold if below else v >= threshold)]
    return int(hits[0]) if hits else None


@dataclass
class RunResult:
    """One training run: its metrics records, summary and, if its loss went non-finite, why."""

    name: str
    workdir: Path
    records: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    diverged: str | None = None
    reused: bool = False
    same_code: bool = True  # False: reused from a run trained by other code (any_revision)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of metric `key` (see `series`)."""
        return series(self.records, key)

    def final(self, key: str) -> float | None:
        """The last logged value of `key` (None if never logged)."""
        _, values = self.series(key)
        return float(values[-1]) if len(values) else None

    @property
    def seconds(self) -> float | None:
        """Wall seconds of the training session that produced the run (None if it diverged)."""
        return self.summary.get("wall_seconds_this_session")


def _records(workdir: Path) -> list[dict[str, Any]]:
    # a run that diverged before its first log line has no metrics file
    return read_metrics(workdir) if (workdir / "metrics.jsonl").exists() else []


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    # A top-level field added to `base_config` after a run was made is read at its default:
    # the run is what that default computes. The device mesh is left out: parallel layouts
    # compute the same run (to float tolerance), so a run made on one device is reused on a
    # machine with eight.
    full = {**base_config().to_dict(), **config}
    return {k: v for k, v in json.loads(json.dumps(full)).items() if k != "mesh"}


def _finished_run(
    config: ConfigDict, workdir: Path, *, any_revision: bool = False
) -> tuple[dict, str | None] | None:
    """(summary, diverged message) of a completed run of exactly `config` (and, unless
    `any_revision`, of this checkout's training code), else None."""
    if not any_revision and not _same_code(workdir):
        return None
    try:
        saved = json.loads((workdir / "config.json").read_text())
        if _comparable(saved) != _comparable(config.to_dict()):
            return None
        if (workdir / DIVERGED).exists():
            return {}, json.loads((workdir / DIVERGED).read_text())["message"]
        summary = json.loads((workdir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return (summary, None) if summary.get("finished") else None


def run_training(
    config: ConfigDict,
    workdir: str | Path,
    *,
    name: str | None = None,
    reuse: bool = False,
    any_revision: bool = False,
    progress: bool = False,
    devices: Sequence[Any] | None = None,
) -> RunResult:
    """Trains `config` from scratch in `workdir` (`normlab.train.loop.train`) and reads back its
    metrics. With `reuse`, a finished (or diverged) run of the same config (the `mesh` field
    aside) trained by the same training code (`code_digest`) found there is read instead of
    retrained; `any_revision` also reads one trained by other code (`RunResult.same_code` is
    then False). A previous normlab run in `workdir` is deleted first; any other non-empty
    folder raises ValueError rather than being deleted. `devices`: the mesh's devices (default:
    every visible device).

        result = run_training(config, "runs/bn", name="BN", reuse=True)
    """
    workdir = Path(workdir)
    name = name or workdir.name
    if reuse and (found := _finished_run(config, workdir, any_revision=any_revision)):
        summary, diverged = found
        return RunResult(name, workdir, _records(workdir), summary, diverged, reused=True,
                         same_code=_same_code(workdir))
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / "config.json").exists():
            raise ValueError(
                f"run_training: workdir={str(workdir)!r} is not empty and holds no normlab run; "
                "refusing to delete it"
            )
        shutil.rmtree(workdir)
    try:
        summary = train(config, workdir, progress=progress, devices=devices)
    except NonFiniteLossError as err:
        (workdir / DIVERGED).write_text(json.dumps({"message": str(err)}) + "\n")
        _record_code(workdir)
        return RunResult(name, workdir, _records(workdir), {}, str(err))
    if not summary["finished"]:  # stopped by a signal: train() saved and returned
        raise TrainingInterrupted(
            f"run_training: {name!r} was interrupted at step {summary['step']} of "
            f"{summary['total_steps']}; nothing after it was computed from it. Rerun the "
            "experiment (with --reuse, its finished runs are kept)"
        )
    _record_code(workdir)
    return RunResult(name, workdir, _records(workdir), summary)


def seed_runs(run: RunResult) -> list[RunResult]:
    """The K seeds of a `num_seeds` run (`normlab.train.seeds`) as K RunResults, read from
    `run.workdir/seeds/<i>/` and named `f"{run.name}/seed{seed}"`; a one-seed run as [run].
    A seed that diverged while the others trained on has its message in `diverged`; a run
    whose every seed diverged (no summary) is returned as [run]. Each seed's wall time is its
    1/K share of the program's (every seed's summary holds the whole program's), so
    `describe_runs` sums the program's time once.

        seeds = seed_runs(run_training(config_with_num_seeds_5, "runs/bn", reuse=True))
    """
    summary = run.summary
    k = int(summary.get("num_seeds", 1))
    if k == 1 or run.diverged is not None:
        return [run]
    out = []
    for i, seed in enumerate(summary["seeds"]["seed"]):
        folder = run.workdir / "seeds" / str(i)
        seed_summary = json.loads((folder / "summary.json").read_text())
        if seed_summary.get("wall_seconds_this_session") is not None:
            seed_summary["wall_seconds_this_session"] /= k
        out.append(RunResult(f"{run.name}/seed{seed}", folder, _records(folder), seed_summary,
                             seed_summary.get("diverged"), reused=run.reused,
                             same_code=run.same_code))
    return out


def describe_runs(runs: Iterable[RunResult]) -> str:
    """One line of provenance for a report's training runs: how many, how many were reused
    from an earlier session (`reuse=True`), their summed training wall time, and the git
    revisions they were trained at (from each run's summary.json).

        report.facts["training runs"] = describe_runs(results.values())
    """
    runs = list(runs)
    seconds = sum(r.seconds or 0.0 for r in runs)
    minutes, secs = divmod(round(seconds), 60)
    revisions = sorted({r.summary["git_revision"] for r in runs if r.summary.get("git_revision")})
    diverged = sum(r.diverged is not None for r in runs)
    other_code = sum(not r.same_code for r in runs)
    return (
        f"{len(runs)} runs ({sum(r.reused for r in runs)} reused from an earlier session"
        + (f", {other_code} of them trained by other code than this checkout's"
           if other_code else "")
        + (f", {diverged} diverged" if diverged else "")
        + f"); training wall time {minutes} min {secs} s summed over the finished runs"
        + (f"; trained at {', '.join(revisions)}" if revisions else "")
    )


def _compact(value: Any) -> Any:
    # 7 significant digits: float32's precision, so nothing a metric holds is lost
    if isinstance(value, float):
        return float(f"{value:.7g}") if math.isfinite(value) else None
    if isinstance(value, list):
        return [_compact(v) for v in value]
    return value


def save_eval_records(path: str | Path, runs: Iterable[RunResult]) -> Path:
    """Writes every run's evaluation and diagnostic records (those holding a metric starting
    with one of `EVAL_PREFIXES`, with everything logged at that step) as gzipped JSON lines,
    one line per run: {"name", "diverged", "records"}; floats to 7 significant digits,
    non-finite as null.
    Small enough to commit next to results.json, so a report's per-step claims can be checked
    without the (git-ignored) run folders. Byte-for-byte reproducible (no gzip timestamp).

        save_eval_records(out / "eval_records.jsonl.gz", runs)
    """
    path = Path(path)
    lines = []
    for run in runs:
        records = [{k: _compact(v) for k, v in r.items()} for r in run.records
                   if any(k.startswith(EVAL_PREFIXES) for k in r)]
        lines.append(json.dumps({"name": run.name, "diverged": run.diverged,
                                 "records": records}, allow_nan=False))
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))
    return path


def read_eval_records(path: str | Path) -> dict[str, dict[str, Any]]:
    """`save_eval_records`' file read back: {name: {"diverged", "records"}}."""
    rows = [json.loads(line) for line in gzip.decompress(Path(path).read_bytes()).splitlines()]
    return {row.pop("name"): row for row in rows}
