"""Figures of the coated-pit analysis (seed Fig S9 style), written atomically as PNG (Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from organet.volumes.atomic import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .coated_pits import CoatedPitResult

FIGURES = {
    "violins": "pits_vs_vesicles_violins.png",
    "endocytic": "endocytic_height_vs_neck.png",
    "late_vs_vesicles": "late_pit_height_vs_vesicle_major.png",
    "internal": "internal_height_vs_neck.png",
    "sections": "example_sections.png",
}
STAGE_COLORS = {"early": "#1f77b4", "late": "#d62728", "": "#7f7f7f"}


def _figure(**kwargs: Any) -> Figure:
    """A matplotlib Figure (saved with the Agg canvas; no pyplot state, no backend switch)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig: Figure, path: Path, dpi: int = 110) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def _no_data(ax: Any, msg: str = "no data") -> None:
    ax.text(0.5, 0.5, msg, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _finite(series: Any) -> np.ndarray:
    v = np.asarray(series, dtype=float)
    return v[np.isfinite(v)]


def plot_violins(result: CoatedPitResult, path: Path) -> Path:
    t = result.table
    fig = _figure(figsize=(10, 3.6), constrained_layout=True)
    axes = fig.subplots(1, 3)
    for ax, col, label in zip(
        axes, ("major_nm", "minor_nm", "eccentricity"), ("major axis (nm)", "minor axis (nm)", "eccentricity")
    ):
        data = [_finite(t.loc[t["class"] == c, col]) for c in ("pit", "vesicle")]
        pos = [i + 1 for i, d in enumerate(data) if len(d) >= 1]
        if not pos:
            _no_data(ax)
        for i, d in enumerate(data):
            if len(d) >= 2:
                ax.violinplot([d], positions=[i + 1], showmedians=True)
            if len(d):
                ax.scatter(np.full(len(d), i + 1) + np.linspace(-0.08, 0.08, len(d)), d, s=9, c="k", zorder=3)
        ax.set_xticks([1, 2], [f"pits (n={len(data[0])})", f"vesicles (n={len(data[1])})"])
        ax.set_ylabel(label)
    fig.suptitle("Coated pits vs coated vesicles: fitted ellipse")
    return _save(fig, path)


def _height_neck(ax: Any, sub: Any, by_stage: bool) -> None:
    if not len(sub):
        _no_data(ax)
        return
    if by_stage:
        for st, g in sub.groupby("stage"):
            ax.scatter(
                g["neck_width_nm"],
                g["height_nm"],
                s=28,
                c=STAGE_COLORS.get(st, "k"),
                label=f"{st or 'unstaged'} (n={len(g)})",
                edgecolors="k",
                linewidths=0.4,
            )
        ax.legend(fontsize=8)
    else:
        ax.scatter(sub["neck_width_nm"], sub["height_nm"], s=28, c="#2ca02c", edgecolors="k", linewidths=0.4)
    ax.set_xlabel("neck width (nm)")
    ax.set_ylabel("pit height (nm)")


def plot_endocytic(result: CoatedPitResult, path: Path) -> Path:
    t = result.table
    fig = _figure(figsize=(4.6, 4), constrained_layout=True)
    ax = fig.subplots()
    sub = t[(t["class"] == "pit") & (t["location"] == "endocytic")]
    _height_neck(ax, sub, by_stage=True)
    if not len(sub) and (t["location"] == "unknown").any():
        ax.cla()
        _no_data(ax, "no cell mask: endocytic pits unknown")
    ax.set_title("Endocytic pits: height vs neck width")
    return _save(fig, path)


def plot_internal(result: CoatedPitResult, path: Path) -> Path:
    t = result.table
    fig = _figure(figsize=(4.6, 4), constrained_layout=True)
    ax = fig.subplots()
    sub = t[(t["class"] == "pit") & (t["location"] == "internal")]
    _height_neck(ax, sub, by_stage=False)
    if not len(sub) and (t["location"] == "unknown").any():
        ax.cla()
        _no_data(ax, "no cell mask: internal pits unknown")
    ax.set_title("Internal pits: height vs neck width")
    return _save(fig, path)


def plot_late_vs_vesicles(result: CoatedPitResult, path: Path) -> Path:
    t = result.table
    late = _finite(t.loc[(t["class"] == "pit") & (t["stage"] == "late"), "height_nm"])
    ves = _finite(t.loc[t["class"] == "vesicle", "major_nm"])
    fig = _figure(figsize=(5, 3.6), constrained_layout=True)
    ax = fig.subplots()
    both = np.concatenate([late, ves])
    if not len(both):
        _no_data(ax)
    else:
        bins = np.linspace(both.min() - 5, both.max() + 5, 16).tolist()
        ax.hist(late, bins=bins, alpha=0.6, color=STAGE_COLORS["late"], label=f"late pit height (n={len(late)})")
        ax.hist(ves, bins=bins, alpha=0.6, color="#9467bd", label=f"vesicle major axis (n={len(ves)})")
        ax.legend(fontsize=8)
    ax.set_xlabel("nm")
    ax.set_ylabel("count")
    ax.set_title("Late pit height vs vesicle major axis")
    return _save(fig, path)


def _draw_section(ax: Any, ex: dict[str, Any], title: str, annotate_pit: bool) -> None:
    s, t = ex["s"], ex["t"]
    ext = (s[0], s[-1], t[0], t[-1])
    ax.imshow(ex["image"], cmap="gray", origin="lower", extent=ext, vmin=0, vmax=255)
    ax.contour(s, t, ex["image"], levels=[ex["thr"]], colors="y", linewidths=0.6)
    sk = ex.get("skeleton")
    if sk is not None and len(sk):
        ax.plot(sk[:, 0], sk[:, 1], ",", color="c")
        ax.scatter(sk[:, 0], sk[:, 1], s=2, c="c", label="skeleton")
    mid = ex.get("midline")
    if mid is not None and len(mid):
        ax.scatter(mid[:, 0], mid[:, 1], s=4, c="m", label="mid-line")
    e = ex.get("ellipse")
    if e:
        xy = e.predict_xy(np.linspace(0, 2 * np.pi, 200))
        ax.plot(xy[:, 0], xy[:, 1], "-", c="orange", lw=1, label="ellipse")
    if annotate_pit:
        h, w, f = ex.get("height_nm", np.nan), ex.get("neck_width_nm", np.nan), ex.get("fwhm_nm", np.nan)
        ax.axhline(0, c="w", ls=":", lw=0.8)
        ax.text(s[0] + 3, 2, "membrane plane", color="w", fontsize=7)
        if np.isfinite(h):
            ax.annotate("", (0, h), (0, 0), arrowprops={"arrowstyle": "<->", "color": "lime"})
            ax.text(2, 0.75 * h, f"height {h:.0f}", color="lime", fontsize=7)
        if np.isfinite(w):
            ax.annotate("", (w / 2, -6), (-w / 2, -6), arrowprops={"arrowstyle": "<->", "color": "r"})
            ax.text(-w / 2, -16, f"neck {w:.0f}", color="r", fontsize=7)
        if np.isfinite(f) and np.isfinite(h):
            ax.annotate("", (f / 2, h / 2), (-f / 2, h / 2), arrowprops={"arrowstyle": "<->", "color": "gold"})
            ax.text(-f / 2, h / 2 + 3, f"FWHM {f:.0f}", color="gold", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("nm")
    ax.set_ylabel("nm (along axis)")
    ax.legend(fontsize=6, loc="upper right")


def plot_sections(result: CoatedPitResult, path: Path, ids: list[int] | None = None) -> Path:
    """Example sections: the Otsu contour (yellow), pixel skeleton (cyan), sub-pixel mid-line
    (magenta), fitted ellipse (orange) and, for pits, height / neck / FWHM arrows."""
    t = result.table.set_index("id")
    if ids is None:
        ids = []
        for cls, key in (("pit", "late"), ("pit", "early"), ("vesicle", "")):
            sel = t[(t["class"] == cls) & ((t["stage"] == key) if cls == "pit" else True)]
            sel = sel[[i in result.sections for i in sel.index]]
            if len(sel):
                ids.append(int(sel.index[0]))
        if not ids:
            ids = [i for i in list(result.sections)[:3]]
    fig = _figure(figsize=(4.2 * max(1, len(ids)), 4.2), constrained_layout=True)
    axes = fig.subplots(1, max(1, len(ids)))
    axes = np.atleast_1d(axes)
    if not ids:
        _no_data(axes[0])
    for ax, oid in zip(axes, ids):
        row = t.loc[oid]
        title = f"#{oid} {row['class']} {row['location'] if row['class'] == 'pit' else ''} {row['stage']}".strip()
        _draw_section(ax, result.sections[oid], title, annotate_pit=row["class"] == "pit")
    return _save(fig, path)


def write_figures(result: CoatedPitResult, out: Path) -> list[Path]:
    out = Path(out)
    return [
        plot_violins(result, out / FIGURES["violins"]),
        plot_endocytic(result, out / FIGURES["endocytic"]),
        plot_late_vs_vesicles(result, out / FIGURES["late_vs_vesicles"]),
        plot_internal(result, out / FIGURES["internal"]),
        plot_sections(result, out / FIGURES["sections"]),
    ]
