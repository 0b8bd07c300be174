"""Trial states from the files a trial leaves, and `normlab report` (tables and curves).

Trial workdirs are written by hand here (summary.json, metrics.jsonl, exit records) with random
metric values, and the expected table is computed from those values independently.
"""

import csv
import fcntl
import json
import os
from pathlib import Path

import numpy as np
import pytest

from normlab.sweep import command
from normlab.sweep.collect import markdown_table, sort_rows, trial_rows, write_report
from normlab.sweep.expand import Sweep, expand
from normlab.sweep.status import (
    FAILED,
    FINISHED,
    INTERRUPTED,
    NOT_STARTED,
    PENDING,
    RUNNING,
    format_status,
    lock_path,
    log_path,
    sweep_status,
    write_exit,
)

ROOT = Path(__file__).resolve().parents[1]
SPEC = f"{ROOT / 'configs' / 'mnist_mlp.py'}:dataset=digits,runlocal"


def fake_run(workdir: Path, rng, steps: int, finished: bool) -> list[dict]:
    """Writes metrics.jsonl (and summary.json when `finished`) like a training run would."""
    workdir.mkdir(parents=True)
    records = []
    for step in range(5, steps + 1, 5):
        record = {"step": step, "train_loss": float(rng.uniform(0.1, 2)), "lr": 0.1}
        if step % 10 == 0:
            record["eval_accuracy"] = float(rng.uniform(0, 1))
            record["eval_loss"] = float(rng.uniform(0.1, 2))
            record["diag/layer_00/preact_std"] = 1.0
        records.append(record)
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if finished:
        last = {}
        for r in records:
            last.update({k: v for k, v in r.items() if k != "step"})
        best = {"eval_accuracy": max(r["eval_accuracy"] for r in records if "eval_accuracy" in r)}
        summary = {"finished": True, "step": steps, "total_steps": steps, "final": last}
        summary.update(best=best, wall_seconds_this_session=3.0)
        (workdir / "summary.json").write_text(json.dumps(summary))
    return records


@pytest.fixture
def sweep(tmp_path):
    s = Sweep.create(tmp_path / "sw", SPEC, expand(SPEC, tmp_path / "sw"))
    s.save()
    return s


def test_states_from_files_queue_and_locks(sweep):
    rng = np.random.default_rng(0)
    done, failed, interrupted, untouched = sweep.trials
    fake_run(Path(done.workdir), rng, 20, finished=True)
    fake_run(Path(failed.workdir), rng, 10, finished=False)
    write_exit(sweep.directory, failed.name, 1, slurm_log="/x/7_1_0_log.err")
    log_path(sweep.directory, failed.name).write_text("error: non-finite training loss\n")
    fake_run(Path(interrupted.workdir), rng, 10, finished=False)

    states = {s.name: s for s in sweep_status(sweep)}
    assert states[done.name].state == FINISHED and states[done.name].step == 20
    assert states[failed.name].state == FAILED
    assert str(log_path(sweep.directory, failed.name)) in states[failed.name].detail
    assert "/x/7_1_0_log.err" in states[failed.name].detail
    assert states[interrupted.name].state == INTERRUPTED and states[interrupted.name].step == 10
    assert states[untouched.name].state == NOT_STARTED

    # the queue wins over files (a failed trial resubmitted is pending again)
    queue = {failed.name: "PENDING", untouched.name: "RUNNING"}
    states = {s.name: s.state for s in sweep_status(sweep, queue)}
    assert states[failed.name] == PENDING and states[untouched.name] == RUNNING

    # a local process holding the trial's lock means running
    path = lock_path(sweep.directory, untouched.name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert {s.name: s.state for s in sweep_status(sweep)}[untouched.name] == RUNNING
    finally:
        os.close(fd)
    assert {s.name: s.state for s in sweep_status(sweep)}[untouched.name] == NOT_STARTED
    text = format_status(sweep_status(sweep))
    assert "1 finished, 1 failed, 1 interrupted, 1 not started" in text


def test_report_rows_sorting_csv_markdown_and_curves(sweep, tmp_path, capsys):
    rng = np.random.default_rng(1)
    written = {}
    for i, trial in enumerate(sweep.trials):
        written[trial.name] = fake_run(Path(trial.workdir), rng, 20, finished=i < 3)

    rows = trial_rows(sweep)
    for row in rows:
        records = written[row["trial"]]
        evals = [r["eval_accuracy"] for r in records if "eval_accuracy" in r]
        assert row["final_eval_accuracy"] == evals[-1]
        assert row["best_eval_accuracy"] == max(evals)
        assert row["final_train_loss"] == records[-1]["train_loss"]
        assert row["step"] == 20
        assert not any(k.startswith("final_diag/") for k in row)
        trial = sweep.trial(row["trial"])
        assert row["model.norm"] == trial.overrides["model.norm"]
        assert row["lr"] == trial.overrides["lr"]
    assert [r["status"] for r in rows] == [FINISHED] * 3 + [INTERRUPTED]

    finals = {
        n: [r for r in w if "eval_accuracy" in r][-1]["eval_accuracy"] for n, w in written.items()
    }
    by_acc = sorted(finals, key=finals.get, reverse=True)
    assert [r["trial"] for r in sort_rows(rows, "eval_accuracy")] == by_acc
    assert [r["trial"] for r in sort_rows(rows, "eval_accuracy", descending=False)] == by_acc[::-1]
    losses = {n: w[-1]["train_loss"] for n, w in written.items()}
    assert [r["trial"] for r in sort_rows(rows, "final_train_loss")] == sorted(
        losses, key=losses.get
    )
    with pytest.raises(ValueError, match=r"cannot sort by 'nope'.*final_eval_accuracy"):
        sort_rows(rows, "nope")

    status = command.main(
        [
            "report",
            str(sweep.directory),
            "--sort-by",
            "eval_accuracy",
            "--metrics",
            "eval_accuracy,train_loss",
        ]
    )
    assert status == 0
    out = sweep.directory / "report"
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["trial"] for r in table] == by_acc
    assert [float(r["final_eval_accuracy"]) for r in table] == [finals[n] for n in by_acc]
    markdown = (out / "results.md").read_text()
    body = [line for line in markdown.splitlines() if line.startswith("| norm=")]
    assert [line.split(" | ")[0][2:] for line in body] == by_acc
    assert "final_lr" not in markdown.split("\n|---")[0]  # the Markdown keeps losses/accuracies
    assert "Not finished:" in markdown and "git " in markdown
    for metric in ("eval_accuracy", "train_loss"):
        png = (out / f"curves_{metric}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert markdown_table(sort_rows(rows, "eval_accuracy")) in capsys.readouterr().out

    with pytest.raises(ValueError, match=r"no trial logged 'nope'.*eval_accuracy"):
        write_report(sweep.directory, metrics=["nope"], out_dir=tmp_path / "r2")
