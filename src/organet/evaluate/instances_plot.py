"""Plot of instance metrics (matplotlib's Agg canvas): matched precision, recall, F1 and AP
against the IoU threshold, and the counts at IoU 0.5 (matches, false objects, misses, merges,
splits)."""

from __future__ import annotations

import os
from pathlib import Path

from organet.evaluate.instances import InstanceEvaluation
from organet.evaluate.plot import _write_png


def plot_instance_scores(
    result: InstanceEvaluation, path_png: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Write a PNG (atomically) of ``result``: left, precision / recall / F1 / AP against the
    IoU threshold of the sweep; right, TP, FP, FN, merges and splits at the first threshold.
    ``title`` defaults to the object counts, ARAND and VI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    taus = [m.iou for m in result.sweep]
    for name in ("precision", "recall", "f1", "ap"):
        ax.plot(taus, [getattr(m, name) for m in result.sweep], marker="o", ms=3, label=name)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    first = result.sweep[0]
    bx = fig.add_subplot(1, 2, 2)
    names = ["TP", "FP", "FN", "merges", "splits"]
    values = [first.tp, first.fp, first.fn, len(result.merges), len(result.splits)]
    bars = bx.bar(names, values, color=["tab:green", "tab:red", "tab:orange", "tab:purple", "tab:blue"])
    bx.bar_label(bars, fontsize=8)
    bx.set_title(f"at IoU {first.iou:g}", fontsize=9)
    bx.set_ylabel("objects")
    fig.suptitle(
        title
        or (
            f"{result.pred_objects} predicted / {result.true_objects} true objects · F1@{first.iou:g} "
            f"{first.f1:.3f} · ARAND {result.arand:.3f} · VI split {result.vi_split:.2f} / merge "
            f"{result.vi_merge:.2f} bits"
        ),
        fontsize=9,
    )
    return _write_png(fig, path_png)


__all__ = ["plot_instance_scores"]
