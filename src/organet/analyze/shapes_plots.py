"""Figures of the shape measurements: histograms and scatter plots (PNG, Agg canvas, written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from organet.volumes.atomic import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from .shapes import ShapesResult

FIGURES = {"histograms": "shapes_histograms.png", "scatter": "shapes_scatter.png"}

_HISTOGRAMS = [
    ("volume_nm3", "volume (µm³)", 1e-9),
    ("surface_area_nm2", "surface area (µm²)", 1e-6),
    ("sphericity", "sphericity", 1.0),
    ("elongation", "elongation (major / mid axis)", 1.0),
    ("skeleton_length_nm", "skeleton length (µm)", 1e-3),
    ("nn_distance_nm", "nearest-neighbour distance, surface to surface (nm)", 1.0),
]


def _hist(ax: Any, values: np.ndarray, label: str) -> None:
    v = values[np.isfinite(values)]
    if len(v):
        ax.hist(v, bins=min(30, max(5, len(v) // 2)), color="#4c72b0", edgecolor="white")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(label)
    ax.set_ylabel("objects")


def write_figures(result: ShapesResult, out: Path) -> list[Path]:
    """``shapes_histograms.png`` (six distributions over complete objects, i.e. not cut by the volume
    border) and ``shapes_scatter.png`` (volume vs skeleton length coloured by branch points; elongation
    vs sphericity) in ``out``; returns the paths."""
    from matplotlib.figure import Figure

    t = result.table
    ok = t[~t["cut_by_border"].astype(bool)]
    written = []
    fig = Figure(figsize=(12, 7), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    for ax, (col, label, scale) in zip(axes, _HISTOGRAMS):
        _hist(ax, ok[col].to_numpy(float) * scale, label)
    fig.suptitle(f"{len(ok)} complete objects ({len(t) - len(ok)} cut by the volume border left out)")
    written.append(_save(fig, out / FIGURES["histograms"]))

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    if len(ok):
        sc = a1.scatter(
            ok["volume_nm3"] * 1e-9,
            ok["skeleton_length_nm"] * 1e-3,
            c=ok["branch_points"],
            cmap="viridis",
            s=14,
        )
        fig.colorbar(sc, ax=a1, label="branch points")
        a2.scatter(ok["sphericity"], ok["elongation"], s=14, color="#dd8452")
    a1.set_xlabel("volume (µm³)")
    a1.set_ylabel("skeleton length (µm)")
    a2.set_xlabel("sphericity")
    a2.set_ylabel("elongation (major / mid axis)")
    written.append(_save(fig, out / FIGURES["scatter"]))
    return written


def _save(fig: Any, path: Path, dpi: int = 110) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path
