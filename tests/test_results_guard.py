"""The committed results guard their reports: for every experiments/*/results.json, the verdicts
stored there follow from its numbers (the experiment's `verdicts(results)` recomputes them),
rest on n >= 3 or say "preliminary" (or "not tested"), appear in its report.md as the verdict
table rendered from them, and the root README's overview table is the one generated from all
of them. Reads files only (no training): a report edited by hand, a results.json regenerated
without its report, or a README row left behind fails here.

For the experiments whose report step is cheap, the report step run on the committed
results.json (`--report-only`) reproduces the committed report.md line for line.

To repair: `python experiments/<name>/run.py --report-only` rewrites a report from its
results.json; the README's table is `normlab.reports.experiment.experiments_overview()`.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from normlab.reports.experiment import experiments_overview, load_experiment, provenance_line
from normlab.reports.markdown import MIN_SEEDS, VERDICTS, Verdict, verdict_table

REPO = Path(__file__).resolve().parents[1]
RESULTS = sorted(REPO.glob("experiments/e*/results.json"))
NAMES = [p.parent.name for p in RESULTS]


def _stored(name: str) -> dict:
    return json.loads((REPO / "experiments" / name / "results.json").read_text())


def test_every_experiment_has_results():
    assert len(NAMES) == 12, NAMES


@pytest.mark.parametrize("name", NAMES)
def test_verdicts_rest_on_enough_seeds_or_say_preliminary(name):
    verdicts = _stored(name).get("verdicts")
    assert verdicts, f"{name}/results.json stores no verdicts"
    for v in verdicts:
        assert v["verdict"] in VERDICTS, v
        enough = v["n"] is not None and v["n"] >= MIN_SEEDS
        assert enough or v["verdict"] == "not tested" or v["shown"].startswith("preliminary: "), v
        assert v["shown"] == Verdict.from_dict(v).shown, v


@pytest.mark.parametrize("name", NAMES)
def test_verdicts_follow_from_the_stored_numbers(name):
    results = _stored(name)
    recomputed = load_experiment(name).verdicts(results)
    assert [v.to_dict() for v in recomputed] == results["verdicts"]


@pytest.mark.parametrize("name", NAMES)
def test_report_shows_the_stored_verdicts_and_provenance(name):
    results = _stored(name)
    text = (REPO / "experiments" / name / "report.md").read_text()
    table = verdict_table([Verdict.from_dict(v) for v in results["verdicts"]])
    assert table in text, f"{name}/report.md lacks the verdict table of its results.json"
    assert f"| results from | {provenance_line(results)} |" in text


def test_readme_overview_is_generated_from_the_results():
    readme = (REPO / "README.md").read_text()
    assert experiments_overview() in readme, (
        "README.md's experiment overview differs from experiments_overview() of the committed "
        "results.json files")


# the experiments whose report step is cheap: it draws no figure from results.json (it embeds
# the committed ones), or one (e12, ~1 s); the others redraw several figures (~1 s each)
RERENDER = ("e2_depth", "e4_bn_mnist", "e5_activations", "e12_ensembles_transfer")
SESSION_ROWS = ("| command |", "| device |", "| wall time |", "| git revision |",
                "| started (UTC) |", "| CPU load")  # the rewriting session's, not the results'


@pytest.mark.parametrize("name", RERENDER)
def test_report_step_reproduces_the_committed_report(name, tmp_path):
    folder = REPO / "experiments" / name
    for path in folder.iterdir():
        if path.suffix in (".png", ".json"):
            shutil.copy(path, tmp_path)
    load_experiment(name).main(["--report-only", "--out", str(tmp_path)])

    def body(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith(SESSION_ROWS)]

    assert body((tmp_path / "report.md").read_text()) == body((folder / "report.md").read_text())
    assert json.loads((tmp_path / "results.json").read_text()) == _stored(name)


def _in_history(revision: str) -> bool | None:
    """Whether `revision` is a commit of this checkout's history (None: no git here)."""
    try:
        found = subprocess.run(["git", "-C", str(REPO), "merge-base", "--is-ancestor", revision,
                                "HEAD"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None
    if found.returncode not in (0, 1) and "not a git repository" in found.stderr:
        return None
    return found.returncode == 0


@pytest.mark.parametrize("name", NAMES)
def test_results_come_from_a_clean_revision_in_this_history(name):
    # a report names the revision its results came from so that a reader can check it out: one
    # on a branch that was never merged (or only cherry-picked) cannot be
    prov = _stored(name).get("provenance") or {}
    revision = prov.get("git_revision")
    assert revision and prov.get("clean"), f"{name}: results not from a clean, recorded revision"
    found = _in_history(revision.removesuffix("-dirty"))
    if found is None:
        pytest.skip("not a git checkout")
    assert found, f"{name}/results.json comes from {revision}, which is not in this history"
