"""A small Markdown report writer: provenance header, headings, text, tables and figures.

The header of every report says how to reproduce it: the exact command, the device, the wall
time from the report's creation to `write()`, the git revision and the UTC time
(`normlab.train.run_info.run_info`).

    report = Report("E1: activation statistics vs initialization", "experiments/e1_init_stats")
    report.heading("Per-layer std")
    report.table(["init", "layer 1", "layer 6"], [["W·0.01", 0.49, 0.046]])
    report.figure(fig, "std_by_layer.png", "Std of the activations by layer")
    path = report.write()                  # experiments/e1_init_stats/report.md
"""

from __future__ import annotations

import json
import math
import numbers
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normlab.reports.plots import save_figure
from normlab.sample_stats import LEVEL, summarize
from normlab.train.run_info import run_info

# a verdict's words, so a test can read them back; n < MIN_SEEDS makes a verdict preliminary
VERDICTS = ("reproduced", "partly reproduced", "not reproduced", "not tested")
MIN_SEEDS = 3


def fmt(value: Any, spec: str = ".4g") -> str:
    """One table cell: real numbers with `spec` (NumPy scalars too), None/NaN as "—", integers,
    strings and everything else with `str`.

        fmt(0.98123, ".3f")   # "0.981"
        fmt(None)             # "—"
    """
    if value is None or isinstance(value, bool | str | numbers.Integral):
        return "—" if value is None else str(value)
    if isinstance(value, numbers.Real):
        return "—" if math.isnan(value) else format(float(value), spec)
    return str(value)


def fmt_mean_ci(
    values: Sequence[float | None], spec: str = ".3f", *, scale: float = 1.0,
    show_n: bool = True,
) -> str:
    """Mean ± half-width of its 95% Student-t CI over the finite values, always with n (a
    table without `show_n` must give n in a column of its own). None and non-finite values
    (diverged runs) are left out and counted: "n=4 of 5". `scale` multiplies every value
    (e.g. 100 for percentage points).

        fmt_mean_ci([0.91, 0.912, 0.914])          # "0.912 ± 0.005 (95% CI, n=3)"
        fmt_mean_ci([0.91])                        # "0.910 (n=1)"
        fmt_mean_ci([None, None])                  # "— (n=0 of 2)"
    """
    s = summarize([None if v is None else v * scale for v in values])
    count = f"n={s.n}" + ("" if s.n == len(values) else f" of {len(values)}")
    if s.n == 0:
        return f"— ({count})" if show_n else "—"
    if s.n == 1:
        return f"{s.mean:{spec}}" + (f" ({count})" if show_n else "")
    text = f"{s.mean:{spec}} ± {s.ci:{spec}}"
    return text + (f" ({LEVEL:.0%} CI, {count})" if show_n else "")


@dataclass(frozen=True)
class Verdict:
    """One claim of an experiment: what was measured, on how many seeds, and the verdict (one
    of `VERDICTS`)."""

    claim: str
    evidence: str
    verdict: str
    n: int | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"Verdict: verdict must be one of {VERDICTS}, got {self.verdict!r}")

    @property
    def shown(self) -> str:
        """The verdict as reports print it: "preliminary: <verdict>" on fewer than `MIN_SEEDS`
        seeds (or an unstated n), unless it is "not tested"."""
        weak = self.verdict != "not tested" and (self.n is None or self.n < MIN_SEEDS)
        return f"preliminary: {self.verdict}" if weak else self.verdict

    def to_dict(self) -> dict[str, Any]:
        """The verdict for results.json: claim, evidence, n, verdict and the shown word."""
        return {"claim": self.claim, "evidence": self.evidence, "n": self.n,
                "verdict": self.verdict, "shown": self.shown}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        """The inverse of `to_dict` ("shown" is derived, so it is not read back)."""
        return cls(data["claim"], data["evidence"], data["verdict"], data.get("n"))


def verdict_table(verdicts: Sequence[Verdict]) -> str:
    """The claims as a table: claim | evidence | n | verdict. A verdict on fewer than
    `MIN_SEEDS` seeds (or an unstated n) is marked "preliminary", unless it is "not tested"
    (`Verdict.shown`).

        verdict_table([Verdict("BN trains faster", "steps to 97%: 2,100 vs 6,800", "reproduced",
                               n=1)])     # ... | 1 | preliminary: reproduced |
    """
    rows = [[v.claim, v.evidence, "—" if v.n is None else str(v.n), v.shown] for v in verdicts]
    return markdown_table(["claim", "evidence", "n", "verdict"], rows, align="llrl")


def markdown_table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    spec: str = ".4g",
    align: str | None = None,
) -> str:
    """A GitHub Markdown table; `align` holds one of "l", "r", "c" per column (default: the
    first column left, the others right). Cells go through `fmt(cell, spec)`; "|" is escaped.

        markdown_table(["net", "acc"], [["BN", 0.9812]], spec=".3f")
        # | net | acc |\\n|:---|---:|\\n| BN | 0.981 |
    """
    width = len(header)
    if any(len(row) != width for row in rows):
        bad = next(len(row) for row in rows if len(row) != width)
        raise ValueError(f"markdown_table: every row needs {width} cells, got a row of {bad}")
    align = align or "l" + "r" * (width - 1)
    if len(align) != width or set(align) - set("lrc"):
        raise ValueError(f"markdown_table: align must be {width} of l/r/c, got align={align!r}")
    rule = {"l": ":---", "r": "---:", "c": ":---:"}

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [line([str(h) for h in header]), "|" + "|".join(rule[a] for a in align) + "|"]
    out += [line([fmt(cell, spec) for cell in row]) for row in rows]
    return "\n".join(out)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours} h " if hours else "") + f"{minutes} min {secs} s"


class Report:
    """A Markdown report assembled in order and written to `out_dir/report.md`.

    The provenance is taken at construction (`run_info()`: command, device, git revision);
    the wall time is measured from construction to `write()`, so create the report first.
    The header also gives the host's 1-minute load average at construction and at `write()`.
    `facts` adds rows to the provenance table (e.g. the data set, the number of runs).

        report = Report("E4", out_dir)
        report.text("The BN paper's MNIST net ...")
        report.table(["net", "steps to 95%"], rows, spec=".0f")
        report.figure(fig, "accuracy.png", "Test accuracy vs step")
        report.write()
    """

    def __init__(self, title: str, out_dir: str | Path, *, command: str | None = None):
        self.title = title
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.info = run_info()
        if command is not None:
            self.info["command"] = command
        self.facts: dict[str, str] = {}
        self._start = time.perf_counter()
        self._load_start = os.getloadavg()[0]
        self._body: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        """A `#`·level heading (level 1 is the title's)."""
        if not 2 <= level <= 6:
            raise ValueError(f"Report.heading: level must be in [2, 6], got level={level}")
        self._body.append("#" * level + " " + text)

    def text(self, markdown: str) -> None:
        """A paragraph (or any Markdown block) as given."""
        self._body.append(markdown.strip())

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], **kwargs: Any) -> None:
        """A table (`markdown_table` arguments)."""
        self._body.append(markdown_table(header, rows, **kwargs))

    def figure(self, fig: Any, filename: str, caption: str) -> Path:
        """Saves the matplotlib figure as `out_dir/filename` (PNG) and embeds it with a caption."""
        path = save_figure(fig, self.out_dir / filename)
        self._body.append(f"![{caption}]({filename})\n\n*{caption}*")
        return path

    def existing_figure(self, filename: str, caption: str) -> None:
        """Embeds `out_dir/filename` as drawn by an earlier training session (a report rewritten
        from results.json alone has no curves to redraw it from); raises if it is absent."""
        if not (self.out_dir / filename).is_file():
            raise ValueError(f"Report.existing_figure: no {filename} in {self.out_dir}; rerun the "
                             "experiment (without --report-only) to draw it")
        self._body.append(f"![{caption}]({filename})\n\n*{caption} (drawn by the training "
                          "session, not from results.json)*")

    def plot(self, filename: str, caption: str, draw: Callable[[], Any] | None) -> None:
        """Embeds the figure `draw()` returns, saved as `out_dir/filename`; with `draw=None` (a
        report rendered from results.json alone: no curves to draw from) the one an earlier
        training session saved there (`existing_figure`)."""
        if draw is None:
            self.existing_figure(filename, caption)
        else:
            self.figure(draw(), filename, caption)

    def save_json(self, filename: str, data: Mapping[str, Any]) -> Path:
        """Writes `data` (the numbers behind the tables and plots) as `out_dir/filename`."""
        path = self.out_dir / filename
        path.write_text(json.dumps(data, indent=1, default=float) + "\n")
        return path

    def render(self) -> str:
        """The whole report as Markdown, with the wall time up to now."""
        provenance = [
            ["command", f"`{self.info['command']}`"],
            ["device", self.info["device"]],
            ["wall time", _duration(time.perf_counter() - self._start)],
            ["git revision", f"`{self.info['git_revision']}`"],
            ["started (UTC)", self.info["time_utc"]],
            # timings on a shared machine mean little without how busy it was
            ["CPU load (1-min average), start → end",
             f"{self._load_start:.1f} → {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"],
            *([k, v] for k, v in self.facts.items()),
        ]
        head = [f"# {self.title}", markdown_table(["", ""], provenance, align="ll")]
        return "\n\n".join(head + self._body) + "\n"

    def write(self, filename: str = "report.md") -> Path:
        """Writes the report and returns its path."""
        path = self.out_dir / filename
        path.write_text(self.render())
        return path
