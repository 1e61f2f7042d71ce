"""The figures of a report (matplotlib's Agg canvas, no pyplot): orthogonal planes with the
prediction and truth overlaid, per-object histograms; training curves and the threshold
sweep are drawn by the plots of their own stages (:func:`organet.train.plots.plot_curves`,
:func:`organet.evaluate.plot.plot_threshold_sweep`)."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from organet.volumes.atomic import atomic_write_bytes

from .slices import Plane

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

    from organet.evaluate.blockwise import EvaluationResult


def _save(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


def training_curves(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Training and validation loss, validation F1 (the figure ``organet train`` writes)."""
    from organet.train.plots import plot_curves

    return plot_curves([dict(r) for r in rows], path)


def threshold_sweep(result: EvaluationResult, path: str | Path, title: str | None = None) -> Path:
    """Precision, recall, F1 and IoU against threshold (the figure of ``organet evaluate --sweep``)."""
    from organet.evaluate.plot import plot_threshold_sweep

    return plot_threshold_sweep(result, path, title)


def _contrast(a: np.ndarray) -> tuple[float, float]:
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, (0.5, 99.5)))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def plane_figure(plane: Plane, path: str | Path, title: str) -> Path:
    """One orientation: raw, raw with the probability (colour, transparent at 0) and the mask
    outline, and, with truth, raw with truth (green) and prediction (magenta) outlines.
    Axes in nm; panels stacked vertically for planes more than twice as wide as high."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    panels = ["raw"] if plane.raw is not None else []
    panels.append("prediction")
    if plane.truth is not None:
        panels.append("truth")
    left, right, bottom, top = plane.extent_nm
    width, height = abs(right - left), abs(bottom - top)
    wide = width > 2 * height
    n = len(panels)
    aspect = height / width if width else 1.0
    if wide:
        fig_w = 10.0
        fig_h = min(14.0, max(2.0, n * (fig_w * aspect + 0.7)))
        fig = Figure(figsize=(fig_w, fig_h))
        axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    else:
        fig_w = min(16.0, 4.2 * n)
        fig_h = min(10.0, max(3.0, (fig_w / n) * aspect + 0.8))
        fig = Figure(figsize=(fig_w, fig_h))
        axes = fig.subplots(1, n, squeeze=False)[0]
    FigureCanvasAgg(fig)
    extent = (left, right, bottom, top)
    base = plane.raw if plane.raw is not None else np.zeros_like(plane.probability)
    vmin, vmax = _contrast(base)
    heat = ListedColormap(np.c_[np.ones(256), np.linspace(0.3, 0.9, 256), np.zeros(256), np.linspace(0, 0.6, 256)])
    row_ax, col_ax = plane.labels
    for ax, what in zip(axes, panels):
        ax.imshow(base, cmap="gray", vmin=vmin, vmax=vmax, extent=extent, interpolation="nearest")
        if what == "prediction":
            ax.imshow(plane.probability, cmap=heat, vmin=0, vmax=1, extent=extent, interpolation="nearest")
            _outline(ax, plane.mask, extent, "magenta")
            ax.set_title("probability (orange) and mask (magenta)", fontsize=9)
        elif what == "truth":
            _outline(ax, plane.truth, extent, "lime")
            _outline(ax, plane.mask, extent, "magenta")
            ax.set_title("truth (green) and prediction mask (magenta)", fontsize=9)
        else:
            ax.set_title("raw", fontsize=9)
        ax.set_xlabel(f"{col_ax} (nm)", fontsize=8)
        ax.set_ylabel(f"{row_ax} (nm)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _outline(ax: Any, mask: np.ndarray | None, extent: tuple[float, ...], color: str) -> None:
    if mask is None or not mask.any() or mask.all() or min(mask.shape) < 2:
        return
    rows, cols = mask.shape
    left, right, bottom, top = extent
    x = left + (np.arange(cols) + 0.5) * (right - left) / cols
    y = top + (np.arange(rows) + 0.5) * (bottom - top) / rows
    ax.contour(x, y, mask.astype(np.float32), levels=[0.5], colors=[color], linewidths=0.8)


def histograms(table: pd.DataFrame, columns: Sequence[str], path: str | Path, title: str) -> Path:
    """One histogram per column (NaN dropped); log-spaced bins for positive values spanning
    more than two decades. Counts on the y axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(1, len(columns))
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.0 * ncols, 2.9 * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, col in zip(axes, columns):
        v = np.asarray(table[col], np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            ax.set_title(f"{col}: no values", fontsize=9)
            continue
        lo, hi = float(v.min()), float(v.max())
        if lo > 0 and hi / lo > 100:
            ax.hist(v, bins=np.geomspace(lo, hi, 31), color="C0")
            ax.set_xscale("log")
        else:
            ax.hist(v, bins=30 if hi > lo else 1, color="C0")
        ax.set_title(f"{col} (n = {v.size}, median {np.median(v):.4g})", fontsize=9)
        ax.set_ylabel("objects", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(columns) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


__all__ = ["histograms", "plane_figure", "threshold_sweep", "training_curves"]
