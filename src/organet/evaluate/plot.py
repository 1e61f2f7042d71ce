"""Evaluation plots with matplotlib's Agg canvas: the threshold sweep (precision, recall, F1,
IoU vs threshold) and the checkpoint-averaged scores (F1, precision, recall vs iteration)."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from organet.errors import InputError
from organet.evaluate.blockwise import EvaluationResult
from organet.evaluate.metrics import Counts
from organet.volumes.atomic import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from organet.evaluate.checkpoints import CheckpointEvaluation


def _write_png(fig: Figure, path_png: str | os.PathLike[str]) -> Path:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path_png, buf.getvalue())


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
    return _write_png(fig, path_png)


def plot_checkpoint_scores(
    evaluation: CheckpointEvaluation,
    path_png: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """Plot F1, precision and recall of each checkpoint against its iteration, with the
    mean F1 and a band of ± one sample SD (ddof = 1), and write a PNG atomically.

    Args:
        evaluation: the result of :func:`organet.evaluate.evaluate_checkpoints`.
        path_png: output file; parent directories are created.
        title: figure title (default: mean ± SD of F1 over N checkpoints).

    Undefined (NaN) scores are left as gaps; with one checkpoint there is no band.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = evaluation.rows
    if not rows:
        raise InputError("no checkpoint scores to plot")
    its = [r.iteration for r in rows]
    mean, sd = evaluation.mean, evaluation.sd
    fig = Figure(figsize=(6.5, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lo, hi = (min(its), max(its)) if len(its) > 1 else (its[0] - 0.5, its[0] + 0.5)
    if not math.isnan(sd["f1"]):
        ax.axhspan(
            mean["f1"] - sd["f1"],
            mean["f1"] + sd["f1"],
            color="C0",
            alpha=0.15,
            label="F1 mean ± SD (sample, ddof = 1)",
        )
    if not math.isnan(mean["f1"]):
        ax.hlines(mean["f1"], lo, hi, colors="C0", linestyles="--", linewidth=1)
    marker = "o" if len(its) < 40 else None
    for name, color, width in (("f1", "C0", 2.0), ("precision", "C1", 1.0), ("recall", "C2", 1.0)):
        label = {"f1": "F1"}.get(name, name)
        m, s = mean[name], sd[name]
        if not math.isnan(m):
            label += f" ({m:.3f}" + (f" ± {s:.3f})" if not math.isnan(s) else ")")
        ax.plot(its, [r.metric(name) for r in rows], marker=marker, color=color, linewidth=width, label=label)
    n = len(rows)
    f1_text = "undefined" if math.isnan(mean["f1"]) else f"{mean['f1']:.3f}"
    if not math.isnan(sd["f1"]):
        f1_text += f" ± {sd['f1']:.3f}"
    default = f"F1 over {n} checkpoint{'s' if n != 1 else ''}: {f1_text}"
    ax.set_title(title or default)
    ax.set_xlabel("iteration")
    ax.set_ylabel("score")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _write_png(fig, path_png)
