"""Threshold-sweep plot (precision, recall, F1, IoU vs threshold) with matplotlib's Agg canvas."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping
from pathlib import Path

from organet.errors import InputError
from organet.evaluate.blockwise import EvaluationResult
from organet.evaluate.metrics import Counts
from organet.volumes.atomic import atomic_write_bytes


def plot_threshold_sweep(
    result: EvaluationResult | Mapping[float, Counts],
    path_png: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """Plot precision, recall, F1 and IoU against threshold and write a PNG atomically.

    Args:
        result: an :class:`EvaluationResult` of a probability prediction, or the
            ``{threshold: Counts}`` dict of ``evaluate_arrays``.
        path_png: output file; parent directories are created.
        title: figure title (default: best threshold and F1).

    Uses ``matplotlib.figure.Figure`` with the Agg canvas directly (no pyplot, no global
    backend switch). NaN metrics are left as gaps.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    per = result.per_threshold if isinstance(result, EvaluationResult) else dict(result)
    if not per:
        raise InputError("no threshold sweep to plot (binary prediction?)")
    ts = sorted(per)
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name in ("precision", "recall", "f1", "iou"):
        ax.plot(
            ts,
            [getattr(per[t], name) for t in ts],
            marker="o" if len(ts) < 30 else None,
            label={"f1": "F1", "iou": "IoU"}.get(name, name),
        )
    f1s = [(per[t].f1, t) for t in ts if not math.isnan(per[t].f1)]
    if f1s:
        best_f1, best_t = max(f1s, key=lambda x: (x[0], -x[1]))
        ax.axvline(best_t, color="grey", linestyle=":", linewidth=1)
        default_title = f"best F1 {best_f1:.3f} at threshold {best_t:g}"
    else:
        default_title = "threshold sweep"
    ax.set_title(title or default_title)
    ax.set_xlabel("threshold (foreground if p ≥ t)")
    ax.set_ylabel("score")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path_png, buf.getvalue())
