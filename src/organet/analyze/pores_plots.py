"""PNG plots of a pore analysis (matplotlib figures drawn with Agg, no pyplot; atomic writes).

matplotlib is imported when a plot is drawn, not with this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from organet.volumes.atomic import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .pores import PoreResult


def _figure(**kwargs: Any) -> Figure:
    """A matplotlib Figure (saved with the Agg canvas; no pyplot state, no backend switch)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig: Figure, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    return str(path)


def _xyz(table: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (table["centroid_x_nm"].to_numpy(), table["centroid_y_nm"].to_numpy(), table["centroid_z_nm"].to_numpy())


def _ax3d(fig: Figure, pos: int = 111) -> Any:
    ax = fig.add_subplot(pos, projection="3d")
    ax.set_xlabel("x (nm)")
    ax.set_ylabel("y (nm)")
    ax.set_zlabel("z (nm)")
    return ax


def plot_centroids(result: PoreResult, path: Path) -> str:
    x, y, z = _xyz(result.table)
    fig = _figure(figsize=(6, 5))
    ax = _ax3d(fig)
    sc = ax.scatter(x, y, z, c=z, cmap="viridis", s=30, depthshade=False)
    fig.colorbar(sc, ax=ax, shrink=0.7, pad=0.12, label="z (nm)")
    ax.set_title(f"pore centroids ({len(x)}), coloured by z")
    return _save(fig, path)


def plot_surface(result: PoreResult, path: Path) -> str:
    fig = _figure(figsize=(6, 5))
    ax = _ax3d(fig)
    s = result.surface
    if s is None:
        ax.set_title("no envelope surface (see messages)")
    else:
        p = s.points
        ax.plot_trisurf(
            p[:, 2],
            p[:, 1],
            p[:, 0],
            triangles=s.triangles,
            color="tab:orange",
            alpha=0.35,
            edgecolor="k",
            linewidth=0.3,
        )
        t = result.table
        span = float(np.ptp(p, axis=0).max()) or 1.0
        ax.quiver(
            t["centroid_x_nm"],
            t["centroid_y_nm"],
            t["centroid_z_nm"],
            t["normal_x"],
            t["normal_y"],
            t["normal_z"],
            length=0.15 * span,
            color="tab:blue",
        )
        ax.set_title(f"envelope (alpha = {s.alpha_nm:.0f} nm, {len(s.triangles)} triangles) and normals")
    return _save(fig, path)


def plot_diameter_map(result: PoreResult, path: Path) -> str:
    t = result.table
    x, y, z = _xyz(t)
    d = t["diameter_mean_nm"].to_numpy(float)
    fig = _figure(figsize=(6, 5))
    ax = _ax3d(fig)
    ok = np.isfinite(d)
    if ok.any():
        sc = ax.scatter(
            x[ok],
            y[ok],
            z[ok],
            c=d[ok],
            cmap="inferno",
            s=40 + 0.03 * d[ok] ** 2,
            depthshade=False,
            edgecolor="k",
            linewidth=0.3,
        )
        fig.colorbar(sc, ax=ax, shrink=0.7, pad=0.12, label="membrane diameter (nm)")
    if (~ok).any():
        ax.scatter(x[~ok], y[~ok], z[~ok], marker="x", c="grey", label="not measured")
        ax.legend(loc="upper left")
    ax.set_title("pores coloured by diameter")
    return _save(fig, path)


def plot_histogram(result: PoreResult, path: Path) -> str:
    d = result.table["diameter_mean_nm"].to_numpy(float)
    d = d[np.isfinite(d)]
    fig = _figure(figsize=(5, 3.5))
    ax = fig.subplots()
    if len(d):
        ax.hist(d, bins=max(5, min(30, len(d) // 2)), color="tab:purple", edgecolor="k")
        ax.axvline(np.median(d), color="k", ls="--", label=f"median {np.median(d):.1f} nm")
        ax.legend()
    ax.set_xlabel("pore membrane diameter (nm)")
    ax.set_ylabel("pores")
    ax.set_title(f"{len(d)} pores measured")
    return _save(fig, path)


def plot_gallery(result: PoreResult, path: Path, max_pores: int = 48) -> str:
    ids = sorted(result.views)[:max_pores]
    ncol = min(4, max(1, len(ids)))
    nrow = max(1, int(np.ceil(len(ids) / ncol)))
    fig = _figure(figsize=(3.2 * ncol, 1.9 * nrow))
    axes = fig.subplots(nrow, ncol * 2, squeeze=False, gridspec_kw={"width_ratios": [1.0, 0.7] * ncol})
    for a in axes.ravel():
        a.axis("off")
    t = result.table.set_index("id")
    for k, pid in enumerate(ids):
        v = result.views[pid]
        L = v["extent_nm"]
        ax = axes[k // ncol, 2 * (k % ncol)]
        ax.imshow(v["enface"], cmap="gray", extent=(-L, L, L, -L))
        for ang, lo, hi in zip(np.radians(v["angles_deg"]), v["lefts"], v["rights"]):
            u = np.array([np.cos(ang), np.sin(ang)])  # (x = e1, y = e2)
            ax.plot([-L * u[0], L * u[0]], [-L * u[1], L * u[1]], color="c", lw=0.4, alpha=0.6)
            for s in (lo, hi):
                if np.isfinite(s):
                    ax.plot(s * u[0], s * u[1], "r.", ms=3)
        dm = t.loc[pid, "diameter_mean_nm"]
        ax.set_title(f"#{pid}: {dm:.0f} nm" if np.isfinite(dm) else f"#{pid}: n/a", fontsize=8)
        side = axes[k // ncol, 2 * (k % ncol) + 1]
        D = v["depth_nm"]
        side.imshow(v["side_e1"], cmap="gray", extent=(-L, L, -D, D), origin="lower")
        side.set_title("side (n up)", fontsize=7)
    fig.suptitle("en-face views on the mid-plane (10 axes, red = membrane minima) and side views", fontsize=9)
    return _save(fig, path)


def write_plots(result: PoreResult, out: Path, gallery: bool = False) -> dict[str, str]:
    out = Path(out)
    paths = {
        "centroids": plot_centroids(result, out / "centroids.png"),
        "surface": plot_surface(result, out / "surface_normals.png"),
        "diameter_map": plot_diameter_map(result, out / "diameter_map.png"),
        "histogram": plot_histogram(result, out / "diameter_histogram.png"),
    }
    if gallery and result.views:
        paths["gallery"] = plot_gallery(result, out / "gallery.png")
    return paths
