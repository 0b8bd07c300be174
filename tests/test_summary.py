"""summarize(): final and best from the whole metrics history (kill + resume, rerun after the
end), and the wall time summed over sessions."""

import json

import pytest

from normlab.train.metrics import MetricWriter
from normlab.train.summary import final_and_best, summarize

# Session 1 logs steps 5..20 and is killed after step 20 with its last checkpoint at 15; the
# eval accuracy peaks at step 10, before the resume point.
SESSION_1 = {
    5: {"train_loss": 2.0, "eval_accuracy": 0.50},
    10: {"train_loss": 1.5, "eval_accuracy": 0.90},
    15: {"train_loss": 1.2, "eval_accuracy": 0.70},
    20: {"train_loss": 1.1, "eval_accuracy": 0.95},  # lost: after the last checkpoint
}
SESSION_2 = {  # resumed from step 15
    20: {"train_loss": 1.0, "eval_accuracy": 0.80},
    25: {"train_loss": 0.9, "eval_accuracy": float("nan")},
    30: {"train_loss": 0.8, "eval_accuracy": 0.85, "test_accuracy": 0.6},
}


def _write(workdir, records, resume_step):
    writer = MetricWriter(workdir, resume_step=resume_step)
    for step, record in records.items():
        writer.write(step, record)
    writer.close()


def test_final_and_best_by_hand():
    records = [
        {"step": 1, "a_loss": 3.0, "eval_accuracy": 0.2},
        {"step": 2, "a_loss": None, "eval_accuracy": 0.6},
        {"step": 3, "eval_accuracy": 0.4, "lr": 0.1},
    ]
    final, best = final_and_best(records)
    assert final == {"a_loss": 3.0, "eval_accuracy": 0.4, "lr": 0.1}
    assert best == {"eval_accuracy": 0.6}  # accuracies only


def test_kill_resume_then_rerun_after_finish(tmp_path):
    _write(tmp_path, SESSION_1, resume_step=1)
    _write(tmp_path, SESSION_2, resume_step=16)
    summary = summarize(tmp_path, step=30, total_steps=30, seconds=1.0)
    assert summary["finished"] and summary["step"] == 30 and summary["total_steps"] == 30
    # final: step 30's values; the NaN at 25 (null in the file) is no one's final value
    assert summary["final"] == {"train_loss": 0.8, "eval_accuracy": 0.85, "test_accuracy": 0.6}
    # best: step 10's 0.90 from before the resume; the lost 0.95 of step 20 is not history
    assert summary["best"] == {"eval_accuracy": 0.90, "test_accuracy": 0.6}
    # rerun of the finished run: nothing trained, nothing written, the same results
    _write(tmp_path, {}, resume_step=31)
    again = summarize(tmp_path, step=30, total_steps=30, seconds=0.5)
    assert again["final"] == summary["final"] and again["best"] == summary["best"]
    for key in ("command", "device", "git_revision", "time_utc"):
        assert again[key]


def test_wall_time_sums_the_sessions(tmp_path):
    sessions = [
        {"started_utc": "2024-01-01 00:00:00", "start_step": 0, "seconds": 100.0},  # killed
        {"started_utc": "2024-01-01 01:00:00", "start_step": 15, "seconds": 40.0},  # this one
    ]
    (tmp_path / "sessions.json").write_text(json.dumps(sessions))
    summary = summarize(tmp_path, step=15, total_steps=30, seconds=42.0)
    assert not summary["finished"]
    assert summary["wall_seconds_this_session"] == 42.0
    # this session counts with train()'s own measure (42 s), earlier ones with their record
    assert summary["wall_seconds_total"] == pytest.approx(142.0)
    assert summary["final"] == {} and summary["best"] == {}  # no metrics.jsonl yet
