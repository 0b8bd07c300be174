"""`python -m normlab ...` as a subprocess, and waiting for its first complete checkpoint: the
kill/interrupt-and-resume tests of the device path (test_train.py) and of the stream path
(test_stream_pipeline.py)."""

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cli(args: list[str], **kw) -> subprocess.Popen:
    """`python -m normlab *args` from the repository, stdout and stderr together as text."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "normlab", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def wait_for_checkpoint(workdir: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Returns once `workdir/checkpoints` holds a complete checkpoint (a step-named directory:
    orbax renames it so only when the save is complete); fails if `proc` exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        ckpts = workdir / "checkpoints"
        if ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()):
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")
