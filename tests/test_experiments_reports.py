"""normlab.reports: Markdown tables and reports, PNG figures, training runs behind a report."""

import json
import math
import os
import signal
import threading
from pathlib import Path

import jax
import numpy as np
import pytest

from normlab.config import apply_overrides, load_config
from normlab.errors import TrainingInterrupted
from normlab.reports import (
    Report,
    RunResult,
    Verdict,
    describe_runs,
    fmt,
    markdown_table,
    new_figure,
    plot_curves,
    run_training,
    save_figure,
    series,
    steps_to_reach,
    verdict_table,
)
from normlab.reports.experiment import (
    experiments_overview,
    load_experiment,
    load_results,
    parse_experiment_args,
    provenance_line,
    report_results,
    sibling_module,
)
from normlab.reports.runs import _finished_run, read_eval_records, save_eval_records
from normlab.train.run_info import git_revision

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ONE = jax.devices()[:1]  # tiny runs: sharding over the 8 fake devices doubles their CPU time


def test_fmt_cells():
    assert fmt(0.98123, ".3f") == "0.981"
    assert fmt(np.float32(0.5), ".2f") == "0.50"
    assert fmt(None) == "—" and fmt(float("nan")) == "—"
    assert fmt(3) == "3" and fmt(np.int64(7)) == "7"
    assert fmt(True) == "True" and fmt("a|b") == "a|b"


def test_markdown_table_layout_alignment_and_escaping():
    text = markdown_table(["net", "acc"], [["BN|x", 0.98123], ["plain", None]], spec=".2f")
    assert text.splitlines() == [
        "| net | acc |",
        "|:---|---:|",
        "| BN\\|x | 0.98 |",
        "| plain | — |",
    ]
    centered = markdown_table(["a", "b"], [[1, 2]], align="cl")
    assert centered.splitlines()[1] == "|:---:|:---|"


def test_markdown_table_errors():
    with pytest.raises(ValueError, match="every row needs 2 cells, got a row of 3"):
        markdown_table(["a", "b"], [[1, 2, 3]])
    with pytest.raises(ValueError, match="align must be 2 of l/r/c, got align='x'"):
        markdown_table(["a", "b"], [[1, 2]], align="x")


def test_series_and_steps_to_reach():
    records = [{"step": 100, "acc": 0.5}, {"step": 200}, {"step": 300, "acc": None},
               {"step": 400, "acc": 0.96}, {"step": 500, "acc": 0.97}]
    steps, values = series(records, "acc")
    np.testing.assert_array_equal(steps, [100, 400, 500])
    np.testing.assert_array_equal(values, [0.5, 0.96, 0.97])
    assert steps_to_reach(steps, values, 0.95) == 400
    assert steps_to_reach(steps, values, 0.99) is None
    empty_steps, empty_values = series(records, "missing")
    assert len(empty_steps) == len(empty_values) == 0


def test_report_writes_provenance_tables_and_figures(tmp_path):
    report = Report("T: a report", tmp_path / "out", command="python run.py --tiny")
    report.facts["data"] = "digits"
    report.heading("Numbers")
    report.text("Some *text*.")
    report.table(["x", "y"], [[1, 0.25]], spec=".2f")
    fig, axes = new_figure(2, 1)
    assert len(axes) == 2
    plot_curves(axes[0], {"a": ([1, 2, 3], [1.0, 0.5, 0.25])}, xlabel="step", ylabel="loss",
                logy=True)
    png = report.figure(fig, "curves.png", "The curves")
    report.save_json("results.json", {"value": np.float32(0.5)})
    path = report.write()
    text = path.read_text()
    assert text.startswith("# T: a report\n")
    for needle in ("`python run.py --tiny`", "| device |", "| wall time |", "| git revision |",
                   "| data | digits |", "## Numbers", "| 1 | 0.25 |",
                   "![The curves](curves.png)", "CPU load"):
        assert needle in text
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == {"value": 0.5}


def test_report_and_figure_errors(tmp_path):
    report = Report("T", tmp_path)
    with pytest.raises(ValueError, match="level must be in \\[2, 6\\], got level=1"):
        report.heading("x", level=1)
    fig, _ = new_figure(1)
    with pytest.raises(ValueError, match="path must end in .png, got path='.*x.jpg'"):
        save_figure(fig, tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="need ncols, nrows >= 1, got ncols=0, nrows=1"):
        new_figure(0)


def test_plot_draws_or_embeds_the_saved_figure(tmp_path):
    def draw():
        fig, axes = new_figure(1)
        plot_curves(axes[0], {"a": ([1, 2], [1.0, 0.5])}, xlabel="step", ylabel="loss")
        return fig

    first = Report("T", tmp_path)
    first.plot("curves.png", "The curves", draw)
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_MAGIC
    again = Report("T", tmp_path)  # from results.json alone: the saved figure, marked as such
    again.plot("curves.png", "The curves", None)
    assert "*The curves (drawn by the training session, not from results.json)*" in (
        again.write().read_text())
    with pytest.raises(ValueError, match="no other.png in .*; rerun the experiment"):
        again.plot("other.png", "Other", None)


def test_parse_experiment_args_defaults_and_command(tmp_path):
    script = REPO / "experiments" / "e1_init_stats" / "run.py"
    args = parse_experiment_args("E1: doc.", script, ["--tiny", "--out", str(tmp_path)])
    assert args.tiny and args.out == tmp_path and args.runs == tmp_path / "runs"
    assert args.command.startswith("python ") and args.command.endswith(
        f"run.py --tiny --out {tmp_path}")
    default = parse_experiment_args("E1: doc.", script, [])
    assert default.out == script.parent and not default.tiny and not default.reuse


def test_load_experiment_unknown_name():
    with pytest.raises(ValueError, match="no experiment name='e99_nothing'; found"):
        load_experiment("e99_nothing")


def test_siblings_of_one_name_in_two_experiments_do_not_shadow_each_other(tmp_path):
    for exp, value in (("ea_one", 1), ("eb_two", 2)):
        (tmp_path / exp).mkdir()
        (tmp_path / exp / "helper.py").write_text(f"VALUE = {value}\n")
    a = sibling_module(tmp_path / "ea_one" / "run.py", "helper")
    b = sibling_module(tmp_path / "eb_two" / "run.py", "helper")
    assert (a.VALUE, b.VALUE) == (1, 2) and a.__name__ != b.__name__
    with pytest.raises(ValueError, match="no nothing.py beside run.py"):
        sibling_module(tmp_path / "ea_one" / "run.py", "nothing")


def _digits_config(*overrides):
    config = load_config(f"{REPO}/configs/mnist_mlp.py:dataset=digits,norm=batch,runlocal")
    apply_overrides(config, overrides)
    return config


def test_run_training_trains_reuses_and_records_divergence(tmp_path):
    config = _digits_config("total_steps=10")
    first = run_training(config, tmp_path / "run", name="bn", devices=ONE)
    assert first.name == "bn" and not first.reused and first.diverged is None
    assert first.summary["finished"] and [r["step"] for r in first.records] == [5, 10]
    assert first.final("train_loss") == pytest.approx(first.records[-1]["train_loss"])
    again = run_training(config, tmp_path / "run", reuse=True)
    assert again.reused and again.records == first.records and again.same_code
    # a run trained by other code is reused only when asked, and then said so
    code = tmp_path / "run" / "code.json"
    saved = code.read_text()
    code.write_text(json.dumps({"code_digest": "0" * 16, "git_revision": "abc"}))
    assert _finished_run(config, tmp_path / "run") is None
    mixed = run_training(config, tmp_path / "run", reuse=True, any_revision=True)
    assert mixed.reused and not mixed.same_code
    assert "1 of them trained by other code than this checkout's" in describe_runs([mixed])
    code.write_text(saved)
    # a different config in the same workdir is retrained, not reused
    other = run_training(_digits_config("total_steps=5"), tmp_path / "run", reuse=True,
                         devices=ONE)
    assert not other.reused and other.summary["step"] == 5

    bad = run_training(_digits_config("total_steps=10", "lr=1e38"), tmp_path / "bad",
                       devices=ONE)
    assert bad.diverged is not None and "non-finite training loss" in bad.diverged
    assert bad.seconds is None and bad.final("eval_accuracy") is None
    reread = run_training(_digits_config("total_steps=10", "lr=1e38"), tmp_path / "bad",
                          reuse=True)
    assert reread.reused and reread.diverged == bad.diverged
    assert all(math.isfinite(r["train_loss"]) for r in reread.records if r.get("train_loss"))


def test_code_digest_sees_training_code_not_reports_or_benchmarks(tmp_path, monkeypatch):
    from normlab.reports import runs

    for rel in ("normlab/nn/a.py", "normlab/reports/b.py", "normlab/bench/c.py", "configs/d.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    monkeypatch.setattr(runs, "_ROOT", tmp_path)
    digest = runs.code_digest.__wrapped__  # uncached: the tree changes below
    before = digest()
    for rel in ("normlab/reports/b.py", "normlab/bench/c.py"):
        (tmp_path / rel).write_text("x = 2\n")
    assert digest() == before
    for rel in ("normlab/nn/a.py", "configs/d.py"):
        (tmp_path / rel).write_text("x = 2\n")
        assert digest() != before
        before = digest()


def test_an_interrupted_run_is_not_returned_as_a_result(tmp_path):
    """SIGINT mid-run: train() saves and returns an unfinished summary; run_training raises."""
    config = _digits_config("total_steps=1000000")
    timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(TrainingInterrupted, match="was interrupted at step"):
            run_training(config, tmp_path / "run", name="long", devices=ONE)
    finally:
        timer.cancel()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["finished"] is False


def test_run_training_refuses_to_delete_a_foreign_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="is not empty and holds no normlab run"):
        run_training(_digits_config(), tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_reuse_reads_fields_added_later_at_their_default():
    """A run saved before a top-level config field existed is the run that field's default
    computes; a run saved with a non-default value of it is a different run."""
    from normlab.reports.runs import _comparable
    from normlab.train.defaults import base_config

    now = base_config().to_dict()
    older = {k: v for k, v in now.items() if k != "label_smoothing"}
    assert _comparable(older) == _comparable(now)
    changed = dict(now, label_smoothing=0.1)
    assert _comparable(changed) != _comparable(now)


def test_report_results_stores_verdicts_and_provenance(tmp_path):
    report = Report("T", tmp_path / "e1_x", command="python run.py")
    claims = [Verdict("a", "x 1 vs 2", "reproduced", n=1), Verdict("b", "—", "not tested"),
              Verdict("c", "5 seeds", "not reproduced", n=5)]
    report.text(verdict_table(claims))
    report_results(report, {"value": 1.5}, claims)
    results = load_results(tmp_path / "e1_x")
    assert [Verdict.from_dict(v) for v in results["verdicts"]] == claims
    assert [v["shown"] for v in results["verdicts"]] == [
        "preliminary: reproduced", "not tested", "not reproduced"]
    prov = results["provenance"]
    assert prov["git_revision"] == git_revision().removesuffix("-dirty")
    assert prov["clean"] == (not git_revision().endswith("-dirty"))
    text = (tmp_path / "e1_x" / "report.md").read_text()
    assert f"| results from | `{prov['git_revision']}` (" in text
    assert provenance_line({}) == "revision not recorded"
    assert provenance_line({"provenance": {"git_revision": None, "first_report_revision": "ab1"}}
                           ) == "revision not recorded (the report first written from these " \
                                "results names `ab1`)"
    assert experiments_overview(tmp_path).splitlines()[2:] == [
        "| [E1 x](experiments/e1_x/report.md) | a | 1 | preliminary: reproduced |",
        "|  | b | — | not tested |", "|  | c | 5 | not reproduced |"]
    with pytest.raises(ValueError, match="no results.json in .*; run the experiment without"):
        load_results(tmp_path)


def test_eval_records_keep_evaluations_compactly_and_reproducibly(tmp_path):
    run = RunResult("bn", tmp_path, records=[
        {"step": 1, "train_loss": 0.123456789},
        {"step": 2, "train_loss": 0.5, "eval_accuracy": 0.987654321, "diag/h": float("nan")},
        {"step": 3, "fit_loss": [1.0, float("inf")]}], diverged="non-finite loss at step 4")
    path = save_eval_records(tmp_path / "e.jsonl.gz", [run])
    assert read_eval_records(path) == {"bn": {"diverged": "non-finite loss at step 4", "records": [
        {"step": 2, "train_loss": 0.5, "eval_accuracy": 0.9876543, "diag/h": None},
        {"step": 3, "fit_loss": [1.0, None]}]}}
    first = path.read_bytes()
    assert save_eval_records(tmp_path / "e.jsonl.gz", [run]).read_bytes() == first
