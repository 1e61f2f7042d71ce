"""Bar plot of an experiment grid: checkpoint-averaged F1 per cell with ± SD error bars."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from organet.volumes.atomic import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    from organet.experiment.grid import CellResult


def plot_grid(results: Sequence[CellResult], path_png: str | os.PathLike[str], title: str) -> Path:
    """One bar per cell (F1 mean over its checkpoints, error bar = SD), grouped by the
    first axis and coloured by the remaining ones; written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    axes = list(results[0].coords) if results else []
    first = axes[0] if axes else ""
    groups: list[str] = []
    for r in results:
        if r.coords.get(first, "") not in groups:
            groups.append(r.coords.get(first, ""))
    rest_keys: list[str] = []
    for r in results:
        key = ", ".join(f"{a} {r.coords[a]}" for a in axes[1:])
        if key not in rest_keys:
            rest_keys.append(key)
    width = 0.8 / max(1, len(rest_keys))
    fig = Figure(figsize=(max(5.0, 1.2 * len(results) + 2), 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for j, key in enumerate(rest_keys):
        xs, ys, es = [], [], []
        for r in results:
            if ", ".join(f"{a} {r.coords[a]}" for a in axes[1:]) != key:
                continue
            xs.append(groups.index(r.coords.get(first, "")) + (j - (len(rest_keys) - 1) / 2) * width)
            ys.append(r.mean["f1"])
            sd = r.sd["f1"]
            es.append(0.0 if sd != sd else sd)  # NaN (one checkpoint) -> no bar
        ax.bar(xs, ys, width=width * 0.95, yerr=es, capsize=4, label=key or None)
        for x, y in zip(xs, ys):
            ax.text(x, y + 0.01, f"{y:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{first} {g}" for g in groups])
    ax.set_ylabel("F1 (mean ± SD over checkpoints)")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    if any(rest_keys):
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path_png, buf.getvalue())
