"""SIGINT and SIGTERM as a request to stop: finish the chunk, save a checkpoint, exit 0.

SLURM sends SIGTERM before it kills a pre-empted or timed-out job (`sbatch --signal=TERM@60`
moves it earlier; `--requeue` restarts the job, which resumes from that checkpoint). Only the
first signal of each kind is caught: a second one acts as it did before (Ctrl-C twice kills).
"""

from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager: `requested` turns True when SIGINT or SIGTERM arrives."""

    def __init__(self) -> None:
        self.requested = False
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.received = signal.Signals(signum).name
        signal.signal(signum, self._previous.pop(signum, signal.SIG_DFL))

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: signals stay as they are
                break
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
