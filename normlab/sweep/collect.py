"""`normlab report`: every trial's final and best metrics in one table, and curves per trial.

    rows = trial_rows(Sweep.load("sweeps/bn"))
    rows = sort_rows(rows, "final_eval_accuracy")          # best first (accuracies descend)
    paths = write_report("sweeps/bn", sort_by="eval_accuracy", metrics=["eval_accuracy"])
    # sweeps/bn/report/results.csv, results.md, curves_eval_accuracy.png

A row holds the trial's name, its overrides (one column per swept key), its state and step,
`final_<metric>` (the last logged value of each metric) and `best_<metric>` (the maximum of each
accuracy), from summary.json, or from metrics.jsonl for a trial that has not finished (a
num_seeds trial: the means over its seeds, with `final_<accuracy>_ci95` and `_n`, the 95%
t-CI half-width and the seeds counted; its curves are the per-step means). The CSV
has every metric; the Markdown table keeps losses, accuracies and the wall time.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from normlab.sweep.expand import Sweep, Trial
from normlab.sweep.seeds import mean_records, metrics_files
from normlab.sweep.status import FINISHED, read_summary, sweep_status

_FIRST = ("eval_accuracy", "eval_loss", "train_accuracy", "train_loss")


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # a line cut short by a kill
            continue
    return records


def _history(trial: Trial) -> list[dict[str, Any]]:
    """The trial's metric records; of a num_seeds trial, their mean over the seeds per step."""
    histories = [_read(path) for path in metrics_files(trial.workdir)]
    return histories[0] if len(histories) == 1 else mean_records(histories)


def _final_and_best(trial: Trial) -> tuple[dict[str, float], dict[str, float], float | None]:
    summary = read_summary(trial)
    if summary is not None:
        return (
            summary.get("final", {}),
            summary.get("best", {}),
            summary.get("wall_seconds_this_session"),
        )
    final: dict[str, float] = {}
    best: dict[str, float] = {}
    for record in _history(trial):
        for name, value in record.items():
            if name == "step" or value is None:
                continue
            final[name] = value
            if name.endswith("accuracy"):
                best[name] = max(best.get(name, -math.inf), value)
    return final, best, None


def _seed_spread(trial: Trial) -> dict[str, Any]:
    """Of a finished num_seeds trial: `final_<accuracy>_ci95` (the 95% t-CI half-width of the
    mean over seeds) and `final_<accuracy>_n` (the seeds it is over) for each accuracy."""
    summary = read_summary(trial) or {}
    spread = summary.get("seeds", {}).get("final", {})
    out: dict[str, Any] = {}
    for name in sorted(spread, key=_metric_order):
        if name.endswith("accuracy"):
            out[f"final_{name}_ci95"] = spread[name]["ci95"]
            out[f"final_{name}_n"] = spread[name]["n"]
    return out


def _metric_order(name: str) -> tuple[int, str]:
    return (_FIRST.index(name) if name in _FIRST else len(_FIRST), name)


def trial_rows(sweep: Sweep, queue: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per trial (see the module docstring); diagnostics (`diag/...`) are left out."""
    statuses = {s.name: s for s in sweep_status(sweep, queue)}
    rows = []
    for trial in sweep.trials:
        status = statuses[trial.name]
        final, best, wall = _final_and_best(trial)
        row: dict[str, Any] = {"trial": trial.name}
        row.update(trial.overrides)
        row["status"] = status.state
        row["step"] = status.step
        for name in sorted(final, key=_metric_order):
            if not name.startswith("diag/"):
                row[f"final_{name}"] = final[name]
        for name in sorted(best, key=_metric_order):
            row[f"best_{name}"] = best[name]
        row.update(_seed_spread(trial))
        row["wall_s"] = wall
        if status.state != FINISHED and status.log:
            row["log"] = status.log
        rows.append(row)
    return rows


def columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Every key of every row, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def sort_rows(
    rows: list[dict[str, Any]], key: str, descending: bool | None = None
) -> list[dict[str, Any]]:
    """Rows sorted by column `key` (`eval_accuracy` means `final_eval_accuracy`).

    Accuracies sort descending and everything else ascending unless `descending` says otherwise;
    rows without a value go last.
    """
    names = columns(rows)
    if key not in names and f"final_{key}" in names:
        key = f"final_{key}"
    if key not in names:
        raise ValueError(f"cannot sort by {key!r}: the columns are {', '.join(names)}")
    if descending is None:
        descending = "accuracy" in key

    def has(row: dict[str, Any]) -> bool:
        return isinstance(row.get(key), int | float | str)

    present = sorted((r for r in rows if has(r)), key=lambda r: r[key], reverse=descending)
    return present + [r for r in rows if not has(r)]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        # 4 significant digits; large values (a wall time of 12345.6 s) keep their integer
        # part, and huge ones (lr=1e38) are written as 1e+38, not as 39 digits
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.6g}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table of overrides, state, step, losses, accuracies, wall time."""
    keep = [
        c
        for c in columns(rows)
        if not c.startswith(("final_", "best_"))
        or c.endswith(("accuracy", "loss", "accuracy_ci95", "accuracy_n"))
    ]
    keep = [c for c in keep if c != "log"]
    lines = ["| " + " | ".join(keep) + " |", "|" + "---|" * len(keep)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in keep) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """All columns of all rows (a missing value is an empty cell)."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns(rows))
        writer.writeheader()
        writer.writerows(rows)


def plot_curves(sweep: Sweep, metrics: list[str], out_dir: Path) -> list[Path]:
    """One PNG per metric (`curves_<metric>.png`), one line per trial over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = {t.name: _history(t) for t in sweep.trials}
    available = sorted({k for h in histories.values() for r in h for k in r} - {"step"})
    paths = []
    for metric in metrics:
        if metric not in available:
            raise ValueError(
                f"no trial logged {metric!r}; logged metrics: {', '.join(available) or '(none)'}"
            )
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, history in histories.items():
            points = [(r["step"], r[metric]) for r in history if r.get(metric) is not None]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="." if len(points) < 20 else None, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} per trial ({sweep.directory.name})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out_dir / f"curves_{re.sub(r'[^A-Za-z0-9._-]', '_', metric)}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(
    sweep_dir: str | Path,
    *,
    sort_by: str = "final_eval_accuracy",
    descending: bool | None = None,
    metrics: list[str] | None = None,
    out_dir: str | Path | None = None,
    queue: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Writes results.csv, results.md and the curves; returns their paths and the Markdown."""
    from normlab.train.run_info import run_info  # imports jax: only when a report is written

    sweep = Sweep.load(sweep_dir)
    out = Path(out_dir) if out_dir is not None else sweep.directory / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = sort_rows(trial_rows(sweep, queue), sort_by, descending)
    table = markdown_table(rows)
    info = run_info()
    notes = [
        f"- {r['trial']}: {r['status']}" + (f", log: {r['log']}" if r.get("log") else "")
        for r in rows
        if r["status"] != FINISHED
    ]
    markdown = "\n".join(
        [
            f"# Sweep {sweep.directory}",
            "",
            f"Config: `{sweep.config}`; {len(rows)} trials; sorted by {sort_by}.",
            f"Report: `{info['command']}` on {info['device']}, {info['time_utc']} UTC, "
            f"git {info['git_revision']}.",
            "",
            table,
            *(["", "Not finished:", *notes] if notes else []),
            "",
        ]
    )
    csv_path, md_path = out / "results.csv", out / "results.md"
    write_csv(rows, csv_path)
    md_path.write_text(markdown)
    plots = plot_curves(sweep, metrics, out) if metrics else []
    return {"csv": csv_path, "markdown": md_path, "plots": plots, "table": table, "rows": rows}
