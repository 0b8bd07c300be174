"""Experiment reports: Markdown with tables and PNG plots, and the training runs behind them.

Every experiment under `experiments/` writes its results with this package:

    from normlab.reports import Report, new_figure, plot_curves
    report = Report("E4: BatchNorm on MNIST", out_dir)        # provenance taken now
    report.table(["net", "accuracy"], [["BN", 0.981], ["plain", 0.975]])
    fig, (ax,) = new_figure(1)
    plot_curves(ax, {"BN": (steps, acc)}, xlabel="step", ylabel="test accuracy")
    report.figure(fig, "accuracy.png", "Test accuracy vs step")
    report.write()   # out_dir/report.md with command, device, wall time and git revision

- `normlab.reports.markdown`: `Report`, `markdown_table`, `fmt`, `fmt_mean_ci` (mean ± 95% CI,
  always with n), `Verdict` / `verdict_table` (claims, evidence, n, verdict).
- `normlab.reports.plots`: matplotlib (Agg, no pyplot state) figures, curves and saving.
- `normlab.reports.runs`: train a config through `normlab.train.loop.train` (or reuse a
  finished run) and read its metrics as series; `steps_to_reach`; `describe_runs` (provenance
  of the runs behind a report).
- `normlab.reports.probes`: `preacts_at_init` (a config's per-layer pre-activations at init).
- `normlab.reports.experiment`: the shared command line of `experiments/*/run.py` and
  `train_config` (train a config spec into the experiment's runs folder).
- `normlab.reports.stats`: a run's final / best / mean-of-last metric, `choose_lr` (on a
  validation metric), steps to a threshold across seeds with a CI; exported here with the
  across-seed statistics of `normlab.sample_stats` (mean, sample sd, t CI, Welch's test,
  bootstrap CI), which the training loop's K-seed summary shares.
"""

from normlab.reports.markdown import (
    VERDICTS,
    Report,
    Verdict,
    fmt,
    fmt_mean_ci,
    markdown_table,
    verdict_table,
)
from normlab.reports.plots import new_figure, plot_curves, save_figure
from normlab.reports.runs import (
    RunResult,
    describe_runs,
    run_training,
    seed_runs,
    series,
    steps_to_reach,
)
from normlab.reports.stats import (
    StepsToReach,
    best_metric,
    choose_lr,
    final_metric,
    mean_of_last,
    steps_to_reach_across,
)
from normlab.sample_stats import (
    Summary,
    Welch,
    bootstrap_ci,
    mean,
    mean_ci,
    sample_sd,
    summarize,
    welch_test,
)

__all__ = [
    "VERDICTS",
    "Report",
    "RunResult",
    "StepsToReach",
    "Summary",
    "Verdict",
    "Welch",
    "best_metric",
    "bootstrap_ci",
    "choose_lr",
    "describe_runs",
    "final_metric",
    "fmt",
    "fmt_mean_ci",
    "markdown_table",
    "mean",
    "mean_ci",
    "mean_of_last",
    "new_figure",
    "plot_curves",
    "run_training",
    "sample_sd",
    "save_figure",
    "seed_runs",
    "series",
    "steps_to_reach",
    "steps_to_reach_across",
    "summarize",
    "verdict_table",
    "welch_test",
]
