"""Experiment reports: Markdown with tables and PNG plots, and the training runs behind them.

Every experiment under `experiments/` writes its results with this package:

    from normlab.reports import Report, new_figure, plot_curves
    report = Report("E4: BatchNorm on MNIST", out_dir)        # provenance taken now
    report.table(["net", "accuracy"], [["BN", 0.981], ["plain", 0.975]])
    fig, (ax,) = new_figure(1)
    plot_curves(ax, {"BN": (steps, acc)}, xlabel="step", ylabel="test accuracy")
    report.figure(fig, "accuracy.png", "Test accuracy vs step")
    report.write()   # out_dir/report.md with command, device, wall time and git revision

- `normlab.reports.markdown`: `Report`, `markdown_table`, `fmt`.
- `normlab.reports.plots`: matplotlib (Agg, no pyplot state) figures, curves and saving.
- `normlab.reports.runs`: train a config through `normlab.train.loop.train` (or reuse a
  finished run) and read its metrics as series; `steps_to_reach`; `describe_runs` (provenance
  of the runs behind a report).
"""

from normlab.reports.markdown import Report, fmt, markdown_table
from normlab.reports.plots import new_figure, plot_curves, save_figure
from normlab.reports.runs import RunResult, describe_runs, run_training, series, steps_to_reach

__all__ = [
    "Report",
    "RunResult",
    "describe_runs",
    "fmt",
    "markdown_table",
    "new_figure",
    "plot_curves",
    "run_training",
    "save_figure",
    "series",
    "steps_to_reach",
]
