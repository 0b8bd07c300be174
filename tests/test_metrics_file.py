"""metrics.jsonl after a kill: a cut-off last line is dropped with a warning and the file is
rewritten atomically on resume; any other bad line is an error naming the file and line."""

import json
import logging
import os

import pytest

from normlab.errors import NormlabError
from normlab.train import metrics as metrics_module
from normlab.train.metrics import MetricWriter, read_metrics, read_sessions


def _lines(*records):
    return "".join(json.dumps(r) + "\n" for r in records)


def test_cut_off_last_line_is_dropped_on_resume(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    # killed in the middle of writing the step-15 record
    path.write_text(_lines({"step": 5, "a": 1.0}, {"step": 10, "a": 2.0}) + '{"step": 15, "a')
    with caplog.at_level(logging.WARNING):
        writer = MetricWriter(tmp_path, resume_step=11)
    assert f"{path}: dropped the cut-off last line 3" in caplog.text
    assert path.read_text() == _lines({"step": 5, "a": 1.0}, {"step": 10, "a": 2.0})
    writer.write(15, {"a": 3.0})
    writer.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [5, 10, 15]


def test_resume_keeps_only_records_before_the_resume_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_lines(*({"step": s, "a": float(s)} for s in (5, 10, 15, 20))))
    MetricWriter(tmp_path, resume_step=11).close()
    assert read_metrics(tmp_path) == [{"step": 5, "a": 5.0}, {"step": 10, "a": 10.0}]


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        (_lines({"step": 5}) + '{"step": 10,\n' + _lines({"step": 15}), 2, "not a JSON record"),
        (_lines({"step": 5}) + '{"step": "ten"}\n', 2, 'an integer "step"'),
        ('[1, 2]\n' + _lines({"step": 5}), 1, 'an integer "step"'),
    ],
)
def test_other_bad_lines_name_the_file_and_line(tmp_path, text, line, what):
    path = tmp_path / "metrics.jsonl"
    path.write_text(text)
    with pytest.raises(NormlabError, match=f"{path}, line {line}: .*{what}"):
        MetricWriter(tmp_path, resume_step=100)
    assert path.read_text() == text  # nothing rewritten


def test_a_terminated_bad_last_line_is_an_error(tmp_path):
    """Only an unterminated line can be a cut-off write; a complete bad line is an error."""
    path = tmp_path / "metrics.jsonl"
    path.write_text(_lines({"step": 5}) + '{"step": 1\n')
    with pytest.raises(NormlabError, match=f"{path}, line 2"):
        read_metrics(tmp_path)


def test_rewrite_is_atomic(tmp_path, monkeypatch):
    """A failure while writing the new file leaves the old one whole (temp file + replace)."""
    path = tmp_path / "metrics.jsonl"
    old = _lines({"step": 5}, {"step": 10})
    path.write_text(old)

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(metrics_module.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        MetricWriter(tmp_path, resume_step=6)
    assert path.read_text() == old
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]  # no temp file left behind
    monkeypatch.undo()
    MetricWriter(tmp_path, resume_step=6).close()
    assert path.read_text() == _lines({"step": 5})


def test_sessions_are_recorded(tmp_path):
    first = MetricWriter(tmp_path, resume_step=1)
    first.write(5, {"a": 1.0})
    first.close()
    MetricWriter(tmp_path, resume_step=6).close()
    sessions = read_sessions(tmp_path)
    assert [s["start_step"] for s in sessions] == [0, 5]
    assert not MetricWriter(tmp_path / "other", enabled=False).enabled
    assert read_sessions(tmp_path / "other") == []
