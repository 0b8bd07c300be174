"""`normlab eval`: a workdir's newest checkpoint on its eval splits or on named splits."""

from __future__ import annotations

from pathlib import Path

from normlab.train.saved import load_saved


def evaluate_workdir(
    workdir: str | Path, splits: list[str] | None = None
) -> dict[str, dict[str, float]]:
    """{prefix or split: {"loss", "accuracy"}} for the newest readable checkpoint."""
    workdir = Path(workdir)
    if not (workdir / "config.json").exists():
        raise ValueError(f"{workdir} has no config.json: is it a normlab workdir?")
    run = load_saved(workdir).run
    named = {s: s for s in splits} if splits else dict(run.config.evals)
    results = {}
    for prefix, split in named.items():
        record = run.evaluate({prefix: split})
        results[prefix] = {name[len(prefix) + 1 :]: value for name, value in record.items()}
    return results
