"""Layers point down: nn → models → data / parallel → train → reports, sweep, bench → cli.

Every import in normlab (module level or inside a function) is read from the source; a module
may import its own layer or one below, never one above, and `data` and `parallel` (the same
layer) know nothing of each other. The base modules (errors, registry, config, ...) are below
everything; `registry` finds components by importing packages by name, not by an import
statement, so it stays at the bottom.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "normlab"
RANK = {"nn": 1, "models": 2, "data": 3, "parallel": 3, "train": 4, "reports": 5, "sweep": 5,
        "bench": 5, "cli": 6, "__main__": 6}
SIBLINGS_APART = {("data", "parallel"), ("parallel", "data")}


def _layer(module: str) -> str:
    """The layer of a dotted module name inside normlab ("normlab.train.run" → "train")."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "normlab"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported normlab module) of every import statement in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [(node.lineno, n) for n in names[:1] if n.startswith("normlab")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("normlab")]
    return found


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def _violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _layer(_module_name(path))
        for line, target in _imports(path):
            there = _layer(target)
            if there == here or there not in RANK:
                continue  # its own layer, or a base module (errors, registry, config, ...)
            if RANK.get(here, 0) < RANK[there] or (here, there) in SIBLINGS_APART:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({here}) imports {target}")
    return bad


def test_no_import_points_up():
    assert _violations() == []


@pytest.mark.parametrize("base", ["errors", "registry", "config"])
def test_base_modules_import_no_layer(base):
    imported = {_layer(t) for _, t in _imports(PACKAGE / f"{base}.py")}
    assert not imported & set(RANK), imported


def test_the_check_sees_the_old_upward_import(tmp_path, monkeypatch):
    # before the run assembly, parallel/plan.py imported normlab.train (a cycle across layers)
    (tmp_path / "normlab" / "parallel").mkdir(parents=True)
    (tmp_path / "normlab" / "parallel" / "plan.py").write_text(
        "import jax\n\ndef f():\n    from normlab.train.state import TrainState\n"
    )
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "normlab")
    assert _violations() == ["normlab/parallel/plan.py:4 (parallel) imports normlab.train.state"]
