"""PNG plots with matplotlib's Agg renderer, without pyplot's global state.

Figures are `matplotlib.figure.Figure` objects (no GUI backend, safe in threads and on headless
machines); `save_figure` renders them to PNG with the Agg canvas.

    fig, (ax_acc, ax_loss) = new_figure(2)
    plot_curves(ax_acc, {"BN": (steps, acc_bn), "plain": (steps, acc)},
                xlabel="step", ylabel="test accuracy")
    save_figure(fig, "accuracy.png")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PANEL_SIZE = (4.8, 3.4)  # inches per panel
DPI = 110


def new_figure(
    ncols: int, nrows: int = 1, *, panel_size: tuple[float, float] = PANEL_SIZE, **kwargs: Any
) -> tuple[Figure, list[Any]]:
    """A figure of nrows × ncols panels and its axes as a flat list (row by row).

        fig, axes = new_figure(3, 2)        # six panels, axes[0..5]
    """
    if ncols < 1 or nrows < 1:
        raise ValueError(f"new_figure: need ncols, nrows >= 1, got ncols={ncols}, nrows={nrows}")
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, [ax for row in axes for ax in row]


def plot_curves(
    ax: Any,
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    logy: bool = False,
    ylim: tuple[float, float] | None = None,
    styles: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """One line per `label: (x, y)` on `ax`, with labels, a legend and a light grid.

    `styles` maps a label to extra `ax.plot` keywords (color, linestyle, ...).

        plot_curves(ax, {"kaiming": (steps, loss_k), "lecun": (steps, loss_l)},
                    xlabel="step", ylabel="train loss", logy=True)
    """
    styles = styles or {}
    for label, (x, y) in curves.items():
        ax.plot(x, y, label=label, **dict(styles.get(label, {})))
    if logy:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(fontsize="small")


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Renders `fig` to a PNG file at `path` (Agg) and returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_figure: path must end in .png, got path={str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)
    return path
