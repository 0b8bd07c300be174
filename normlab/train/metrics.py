"""Where metrics go: `metrics.jsonl`, TensorBoard event files and a progress line.

Every record is `{"step": int, name: float, ...}` with flat names (`train_loss`,
`eval_accuracy`, `diag/dense_2/preact_std`). TensorBoard files are written with the
`tensorboard` package's own event writer, so no TensorFlow is needed to write or read them.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class MetricWriter:
    """Appends metric records to `workdir/metrics.jsonl` and `workdir/tensorboard/`.

    Only process 0 writes (`enabled=False` elsewhere). On resume, records at or after the
    resume step are dropped from the JSON lines first, so the file never repeats a step.
    """

    def __init__(self, workdir: str | Path, *, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb: EventFileWriter | None = None
        if not enabled:
            return
        if self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] < resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._tb = EventFileWriter(str(Path(workdir) / "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        """Writes one record (non-finite values are kept in TensorBoard, null in JSON)."""
        if not self.enabled:
            return
        record = {"step": int(step)}
        for name, value in metrics.items():
            value = float(value)
            record[name] = value if math.isfinite(value) else None
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        summary = Summary(
            value=[Summary.Value(tag=k, simple_value=float(v)) for k, v in metrics.items()]
        )
        self._tb.add_event(Event(wall_time=time.time(), step=int(step), summary=summary))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | Path) -> list[dict]:
    """The records of `workdir/metrics.jsonl`, in order."""
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Progress:
    """One status line on stderr: step, throughput and ETA (refreshed at most twice a second)."""

    def __init__(self, total_steps: int, start_step: int, batch_size: int, enabled: bool = True):
        self.total = total_steps
        self.start_step = start_step
        self.batch_size = batch_size
        self.enabled = enabled
        self._t0 = time.perf_counter()
        self._last = 0.0

    def update(self, step: int, extra: str = "", force: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not force and now - self._last < 0.5):
            return
        self._last = now
        done = step - self.start_step
        rate = done / max(now - self._t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        line = (
            f"\rstep {step}/{self.total} {100 * step / max(self.total, 1):5.1f}% | "
            f"{rate:7.1f} steps/s {rate * self.batch_size:9.0f} ex/s | ETA {eta_text} {extra}"
        )
        sys.stderr.write(line[:160])
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
