"""A one-line progress bar with rate and ETA on stderr, for long data preparations.

On a terminal the line is redrawn in place (at most every `interval` seconds); in a log file (not
a TTY) a new line is written every `log_interval` seconds instead, so a 10-hour ImageNet prepare
leaves a few hundred lines, not millions. The ETA assumes the rate so far holds.

    bar = Progress("imagenet2012 train: reading", total=148e9, unit="B")
    for chunk in chunks:
        bar.update(len(chunk))
    bar.close()
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def _amount(n: float, unit: str) -> str:
    if unit != "B":
        return f"{n:,.0f} {unit}"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.1f} {prefix}B"
    return f"{n:.0f} B"


def format_eta(seconds: float) -> str:
    """h:mm:ss, e.g. 3725 → '1:02:05'."""
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Done/total, percent, rate and ETA of one phase of work, written to `stream`."""

    def __init__(
        self,
        label: str,
        total: float,
        unit: str = "",
        *,
        stream: TextIO | None = None,
        interval: float = 0.5,
        log_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval if self.tty else log_interval
        self.clock = clock
        self.start = self.last = clock()
        self.done = 0.0

    def line(self) -> str:
        """'label: done/total (pct%), rate/s, ETA h:mm:ss' for the work so far."""
        elapsed = self.clock() - self.start
        text = f"{self.label}: {_amount(self.done, self.unit)}"
        if self.total:
            text += f"/{_amount(self.total, self.unit)} ({100 * self.done / self.total:.0f}%)"
        if elapsed > 0 and self.done > 0:
            rate = self.done / elapsed
            text += f", {_amount(rate, self.unit)}/s"
            if self.total:
                text += f", ETA {format_eta((self.total - self.done) / rate)}"
        return text

    def update(self, n: float = 1) -> None:
        """Adds `n` units of work done; redraws if `interval` has passed."""
        self.done += n
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self._write(self.line())

    def close(self) -> None:
        """Writes the final line (with the elapsed time) and ends it."""
        elapsed = format_eta(self.clock() - self.start)
        self._write(f"{self.line().split(', ETA')[0]}, done in {elapsed}")
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()

    def _write(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
