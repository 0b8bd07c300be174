"""`normlab.reports.runs.seed_runs`: a K-seed workdir (the layout `normlab.train.loop` writes for
`num_seeds` = K: the across-seed summary on top, each seed's files in seeds/<i>/) read back as K
RunResults, each with its own records, its diverged message and a 1/K share of the wall time."""

import json
from pathlib import Path

from normlab.reports.runs import RunResult, seed_runs


def _write(folder: Path, summary: dict, accuracies: list[float] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    if accuracies is not None:
        (folder / "metrics.jsonl").write_text("".join(
            json.dumps({"step": 100 * (j + 1), "test_accuracy": a}) + "\n"
            for j, a in enumerate(accuracies)))


def test_seed_runs_reads_each_seed_folder(tmp_path):
    top = {"finished": True, "num_seeds": 2, "seeds": {"seed": [3, 4]},
           "wall_seconds_this_session": 10.0}
    _write(tmp_path, top)
    _write(tmp_path / "seeds" / "0", {"finished": True, "wall_seconds_this_session": 10.0},
           [0.5, 0.8])
    _write(tmp_path / "seeds" / "1", {"finished": False, "diverged": "loss nan at step 200",
                                      "wall_seconds_this_session": 10.0}, [0.4])
    run = RunResult("bn", tmp_path, [], top, reused=True, same_code=False)
    first, second = seed_runs(run)
    assert (first.name, second.name) == ("bn/seed3", "bn/seed4")
    assert first.final("test_accuracy") == 0.8 and second.final("test_accuracy") == 0.4
    assert first.diverged is None and second.diverged == "loss nan at step 200"
    assert first.seconds == second.seconds == 5.0  # the program's 10 s, counted once in all
    assert first.reused and not first.same_code


def test_seed_runs_of_one_seed_or_an_all_diverged_run_is_the_run(tmp_path):
    single = RunResult("bn", tmp_path, [{"step": 1}], {"finished": True})
    assert seed_runs(single) == [single]
    diverged = RunResult("bn", tmp_path, [], {}, "every seed diverged")
    assert seed_runs(diverged) == [diverged]
