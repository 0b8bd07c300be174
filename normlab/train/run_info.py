"""Provenance of a run or report: command line, device, time and git revision."""

from __future__ import annotations

import datetime
import shlex
import subprocess
import sys
from pathlib import Path

import jax


def git_revision(cwd: str | Path | None = None) -> str:
    """The checkout's commit (with `-dirty` when it has uncommitted changes), or "unknown"."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def device_description() -> str:
    """e.g. "8 × cpu (TFRT_CPU_0)" or "1 × NVIDIA H100 80GB HBM3"."""
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    return f"{len(devices)} × {', '.join(kinds)} ({jax.default_backend()}, jax {jax.__version__})"


def command_line() -> str:
    """The command as typed: `normlab ...`, `python -m normlab ...` or `python script.py ...`."""
    program = Path(sys.argv[0])
    if program.name == "__main__.py":
        head = ["python", "-m", program.parent.name]
    elif program.suffix == ".py":
        head = ["python", str(program)]
    else:
        head = [program.name]
    return shlex.join([*head, *sys.argv[1:]])


def run_info() -> dict[str, str]:
    """The command, device, UTC time and git revision, for summaries and reports."""
    return {
        "command": command_line(),
        "device": device_description(),
        "time_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "git_revision": git_revision(),
    }
