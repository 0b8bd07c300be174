"""End to end through `train` / the CLI: nothing is lost across resumes, reruns and concurrent
runs (the workdir lock, metrics.jsonl repair and summary.json from the whole history)."""

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from normlab.config import apply_overrides, load_config
from normlab.train.loop import train
from normlab.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
DIGITS = f"{REPO}/configs/mnist_mlp.py:dataset=digits,norm=batch,runlocal"


def _config(*overrides):
    c = load_config(DIGITS)
    apply_overrides(c, ["checkpoint_every_steps=10", "eval_every_steps=5", *overrides])
    return c


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    return train(_config("total_steps=30"), workdir, progress=False), read_metrics(workdir)


TIMING = ("steps_per_s", "examples_per_s")  # wall-clock speeds differ between runs


def _results(summary):
    final = {k: v for k, v in summary["final"].items() if k not in TIMING}
    return final, summary["best"]


def _best(records, name):
    return max(r[name] for r in records if r.get(name) is not None)


@pytest.mark.slow
def test_resume_with_a_cut_off_line_then_rerun_keeps_the_whole_history(
    tmp_path, uninterrupted, caplog
):
    reference, reference_records = uninterrupted
    train(_config("total_steps=20"), tmp_path, progress=False)
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 25, "train_lo')  # killed mid-write
    with caplog.at_level(logging.WARNING):
        resumed = train(_config("total_steps=30"), tmp_path, progress=False)
    assert "metrics.jsonl: dropped the cut-off last line" in caplog.text
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [r["step"] for r in reference_records]
    # best covers the steps before the resume too, and equals the uninterrupted run's
    assert resumed["best"]["eval_accuracy"] == _best(records, "eval_accuracy")
    assert _results(resumed) == _results(reference)
    # rerunning the finished run trains nothing and keeps the results
    again = train(_config("total_steps=30"), tmp_path, progress=False)
    assert again["final"] == resumed["final"] and again["best"] == resumed["best"]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert _results(saved) == _results(reference) and saved["finished"]
    assert saved["wall_seconds_total"] > saved["wall_seconds_this_session"]  # 3 sessions


def _cli(workdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "normlab", "train", "--config", DIGITS, "--workdir", str(workdir),
         "--no-progress", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_second_training_on_one_workdir_fails_at_once_naming_the_first(tmp_path):
    first = _cli(tmp_path, "--config.total_steps=100000")
    try:
        lock = tmp_path / ".lock"
        deadline = time.time() + 120
        while time.time() < deadline and not (lock.exists() and lock.read_text().strip()):
            assert first.poll() is None, first.stdout.read()
            time.sleep(0.2)
        assert json.loads(lock.read_text())["pid"] == first.pid
        start = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "normlab", "train", "--config", DIGITS, "--workdir",
             str(tmp_path), "--no-progress"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        output = second.stdout + second.stderr
        assert second.returncode != 0
        assert f"in use by process {first.pid}" in output, output
        assert "Traceback" not in output
        assert time.monotonic() - start < 60  # refused before loading data or compiling
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()
