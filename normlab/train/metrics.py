"""Where metrics go: `metrics.jsonl`, TensorBoard event files and a progress line.

Every record is `{"step": int, name: float, ...}` with flat names (`train_loss`,
`eval_accuracy`, `diag/dense_2/preact_std`). TensorBoard files are written with the
`tensorboard` package's own event writer, so no TensorFlow is needed to write or read them.

`metrics.jsonl` survives a kill: a record is one line ending in a newline, so a run killed
mid-write leaves at most one cut-off last line (no newline). On resume that line is dropped with
a warning and the file is rewritten atomically (temp file + `os.replace`) with the records
before the resume step. Any other unreadable line is an error naming the file and line number.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from normlab.errors import NormlabError

log = logging.getLogger(__name__)


class MetricWriter:
    """Appends metric records to `workdir/metrics.jsonl` and `workdir/tensorboard/`.

    Only process 0 writes (`enabled=False` elsewhere). On resume, records at or after the
    resume step are dropped from the JSON lines first, so the file never repeats a step.

    Each writer is one *session* of the run: `workdir/sessions.json` lists them (start time,
    start step, seconds since the writer opened, updated at every record), so the wall time of
    a killed session is not lost (`read_sessions`, `normlab.train.summary`).
    """

    def __init__(self, workdir: str | Path, *, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb: EventFileWriter | None = None
        if not enabled:
            return
        if self.path.exists():
            records = [r for r in read_metrics_file(self.path) if r["step"] < resume_step]
            _replace(self.path, "".join(json.dumps(r) + "\n" for r in records))
        self._tb = EventFileWriter(str(Path(workdir) / "tensorboard"))
        self._sessions_path = Path(workdir) / SESSIONS
        self._sessions = read_sessions(workdir)
        self._sessions.append(
            {
                "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                "start_step": max(resume_step - 1, 0),
                "seconds": 0.0,
            }
        )
        self._t0 = time.perf_counter()
        self._save_sessions()

    def _save_sessions(self) -> None:
        self._sessions[-1]["seconds"] = time.perf_counter() - self._t0
        _replace(self._sessions_path, json.dumps(self._sessions, indent=1))

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
        self._save_sessions()

    def close(self) -> None:
        if self._tb is not None:
            self._save_sessions()
            self._tb.close()
            self._tb = None


SESSIONS = "sessions.json"


def read_sessions(workdir: str | Path) -> list[dict]:
    """The sessions of a run (see `MetricWriter`), oldest first; [] if none were recorded."""
    path = Path(workdir) / SESSIONS
    if not path.exists():
        return []
    try:
        sessions = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise NormlabError(f"{path}: not valid JSON ({err}); delete it to start anew") from None
    return sessions


def read_metrics(workdir: str | Path) -> list[dict]:
    """The records of `workdir/metrics.jsonl`, in order (see `read_metrics_file`)."""
    return read_metrics_file(Path(workdir) / "metrics.jsonl")


def read_metrics_file(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl file, in order.

    A cut-off last line (no newline: the writer was killed mid-line) is dropped with a warning;
    any other line that is not a `{"step": int, ...}` record raises `NormlabError` naming the
    file and the line number.
    """
    path = Path(path)
    text = path.read_text()
    lines = text.split("\n")  # the last item is "" when the file ends with a newline
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                log.warning("%s: dropped the cut-off last line %d (%r)", path, number, line[:80])
                continue
            raise NormlabError(
                f"{path}, line {number}: not a JSON record ({err}); fix or delete that line"
            ) from None
        if not isinstance(record, dict) or type(record.get("step")) is not int:
            raise NormlabError(
                f"{path}, line {number}: a metrics record must be an object with an integer "
                f'"step", got {line[:80]!r}; fix or delete that line'
            )
        records.append(record)
    return records


def _replace(path: Path, text: str) -> None:
    """Writes `path` atomically: a reader or a kill sees the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
