"""Training curves (seed Fig S4): loss and F1 against iteration."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from organet.volumes.atomic import atomic_path


def plot_curves(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write a PNG with training/validation loss (left) and validation F1
    (right), one line per validation ROI. Atomic write. Drawn on a matplotlib Figure
    with the Agg canvas (no pyplot state, no backend switch)."""
    from matplotlib.figure import Figure

    path = Path(path)
    train = [r for r in rows if r["kind"] == "train"]
    val = [r for r in rows if r["kind"] == "validation"]
    fig = Figure(figsize=(11, 4.2))
    ax_l, ax_f = fig.subplots(1, 2)
    if train:
        it = np.array([r["iteration"] for r in train])
        loss = np.array([r["loss"] for r in train])
        ax_l.plot(it, loss, color="0.75", lw=0.8, label="train")
        k = max(1, len(loss) // 30)
        if len(loss) > k:
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
            ax_l.plot(it[k - 1 :], smooth, color="k", lw=1.5, label=f"train (mean of {k})")
    names = sorted({r["roi"] for r in val})
    for name in names:
        rs = sorted((r for r in val if r["roi"] == name), key=lambda r: r["iteration"])
        label = f"{name}{' (naive)' if rs[0].get('naive') else ''}"
        its = [r["iteration"] for r in rs]
        ax_l.plot(its, [r["loss"] for r in rs], marker="o", label=f"val {label}")
        ax_f.plot(its, [r["f1"] for r in rs], marker="o", label=f"{label}")
        if rs[0].get("f1_no_exclusion") is not None:
            ax_f.plot(its, [r["f1_no_exclusion"] for r in rs], marker=".", ls="--", label=f"{label}, no exclusion")
    ax_l.set(xlabel="iteration", ylabel="balanced cross-entropy", title="loss")
    ax_f.set(xlabel="iteration", ylabel="F1", title="validation F1", ylim=(0, 1))
    for ax in (ax_l, ax_f):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path
