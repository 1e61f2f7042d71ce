"""The overview PNG of ``organet suggest`` (matplotlib figure drawn with Agg, no pyplot; atomic write).

matplotlib is imported when the plot is drawn, not with this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from organet.volumes.atomic import atomic_path
from organet.volumes.roi import Roi

if TYPE_CHECKING:  # pragma: no cover
    from .suggest import Box

_PANELS = (  # projection axis, image rows axis, image columns axis (indices into z, y, x)
    ("z", 1, 2),
    ("y", 0, 2),
    ("x", 0, 1),
)


def plot_overview(
    mips: Mapping[str, np.ndarray],
    mip_voxel_size: Sequence[float],
    offset: Sequence[float],
    boxes: Sequence[Box],
    voxel_size: Sequence[float],
    region: Roi | None,
    path: str | Path,
    title: str = "",
) -> str:
    """Three panels: maximum projections of the uncertainty along z, y and x (uint8 images
    ``mips["z"]`` (y, x), ``mips["y"]`` (z, x), ``mips["x"]`` (z, y) of a map with voxels of
    ``mip_voxel_size`` nm), with the boxes (voxels of ``voxel_size``) drawn and numbered by
    rank (cyan), and the region (dashed white) when it is not the whole volume. Axes in world nm
    (``offset`` = the corner of voxel 0, z, y, x). Returns the path written."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(7.5, 10), layout="constrained")
    heights = []
    for name, r, c in _PANELS:
        h, w = mips[name].shape
        heights.append(max(0.25, min(1.5, h * mip_voxel_size[r] / max(w * mip_voxel_size[c], 1e-9))))
    axes = fig.subplots(3, 1, height_ratios=heights)
    image: Any = None
    for ax, (name, r, c) in zip(axes, _PANELS):
        img = mips[name]
        extent = (
            offset[c],
            offset[c] + img.shape[1] * mip_voxel_size[c],
            offset[r] + img.shape[0] * mip_voxel_size[r],
            offset[r],
        )
        image = ax.imshow(img, cmap="magma", vmin=0, vmax=255, extent=extent, interpolation="nearest", aspect="auto")
        ax.set_xlabel(f"{'zyx'[c]} (nm)")
        ax.set_ylabel(f"{'zyx'[r]} (nm)")
        ax.set_title(f"maximum along {name}", fontsize=9)
        outlines = [(b.roi, str(b.rank), "-") for b in boxes]
        if region is not None:
            outlines.insert(0, (region, "", "--"))
        for roi, label, style in outlines:
            begin, end = roi.to_nm(voxel_size, offset)
            ax.add_patch(
                Rectangle(
                    (begin[c], begin[r]),
                    end[c] - begin[c],
                    end[r] - begin[r],
                    fill=False,
                    edgecolor="cyan" if label else "white",
                    linestyle=style,
                    linewidth=1.2,
                )
            )
            if label:
                ax.text(begin[c], begin[r], f" {label}", color="cyan", fontsize=8, va="top", ha="left", clip_on=True)
    cbar = fig.colorbar(image, ax=list(axes), shrink=0.6, ticks=[0, 64, 128, 191, 255])
    cbar.ax.set_yticklabels(["0", "0.25", "0.5", "0.75", "1"])
    cbar.set_label("uncertainty (bit)")
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return str(path)


__all__ = ["plot_overview"]
