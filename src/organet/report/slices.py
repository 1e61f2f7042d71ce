"""Orthogonal planes of a prediction for the report: only the planes shown are read.

The prediction (``OUT.zarr/probability`` and its mask ``OUT.zarr/probability/labels/mask``,
or ``OUT.zarr/mask`` in outputs of earlier versions) is read at the finest
pyramid level whose largest axis fits ``max_px`` pixels; raw and truth, which have no such
level, are read as the one full-resolution plane through the same point and reduced in-plane
to the level's grid (raw: mean, truth: any foreground). Axis order (z, y, x); indices in
voxels of the prediction's ``s0`` unless named ``_nm``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from organet.errors import InputError
from organet.volumes import Volume, open_volume
from organet.volumes.foreground import foreground, prediction_kind
from organet.volumes.ome_zarr import PREDICTION_MASK, find_mask

AXES = "zyx"


@dataclass(frozen=True)
class Plane:
    """One orthogonal plane at a pyramid level.

    ``axis`` is the axis held fixed (0 z, 1 y, 2 x) at ``index`` (s0 voxels of the
    prediction); the 2-D arrays are (rows, columns) = the two other axes in (z, y, x) order.
    ``extent_nm`` is (left, right, bottom, top) for ``imshow``.
    """

    axis: int
    index: int
    level: int
    extent_nm: tuple[float, float, float, float]
    probability: np.ndarray
    mask: np.ndarray
    raw: np.ndarray | None = None
    truth: np.ndarray | None = None

    @property
    def name(self) -> str:
        return AXES[self.axis]

    @property
    def labels(self) -> tuple[str, str]:
        """(row axis, column axis) names."""
        a, b = (i for i in range(3) if i != self.axis)
        return AXES[a], AXES[b]


def pyramid_levels(image: str | Path) -> list[str]:
    """The level arrays (``s0``, ``s1``, ...) of an OME-Zarr image group, finest first."""
    group = zarr.open_group(str(image), mode="r")
    names = [k for k in group.array_keys() if k[:1] == "s" and k[1:].isdigit()]
    return sorted(names, key=lambda k: int(k[1:]))


def choose_level(image: str | Path, max_px: int = 1024) -> int:
    """The finest level of ``image`` whose largest axis is at most ``max_px`` voxels
    (the coarsest level when none is that small)."""
    levels = pyramid_levels(image)
    for i, name in enumerate(levels):
        arr = zarr.open_array(str(Path(image) / name), mode="r")
        if max(int(n) for n in arr.shape) <= max_px:
            return i
    return len(levels) - 1


def _reduce(a: np.ndarray, factors: tuple[int, int], mode: str) -> np.ndarray:
    """Reduce a 2-D plane by whole blocks (the last block padded: edge values for the mean,
    False / 0 for the max), so its shape becomes ``ceil(n / f)`` per axis."""
    fa, fb = factors
    if fa == 1 and fb == 1:
        return a
    pad = ((0, -a.shape[0] % fa), (0, -a.shape[1] % fb))
    p = np.pad(a, pad, mode="edge") if mode == "mean" else np.pad(a, pad)
    r = p.reshape(p.shape[0] // fa, fa, p.shape[1] // fb, fb)
    return r.mean(axis=(1, 3)) if mode == "mean" else r.max(axis=(1, 3))


def _plane_key(axis: int, index: int) -> tuple[int | slice, ...]:
    return tuple(index if a == axis else slice(None) for a in range(3))


def read_planes(
    output: str | Path,
    point: tuple[int, int, int],
    *,
    raw: Volume | None = None,
    truth: Volume | None = None,
    max_px: int = 1024,
) -> list[Plane]:
    """The z, y and x planes through ``point`` (s0 voxels of the prediction ``output``).

    Parameters
    ----------
    output
        ``OUT.zarr`` of ``organet predict`` (``probability/`` and ``probability/labels/mask/`` pyramids).
    point
        The voxel the three planes pass through, (z, y, x), inside the prediction.
    raw, truth
        Volumes already cropped to the prediction's extent (same shape as its ``s0``);
        one full-resolution plane of each is read per orientation.
    max_px
        Largest plane side (pixels) wanted; picks the pyramid level (:func:`choose_level`).
    """
    out = Path(output)
    level = choose_level(out / "probability", max_px)
    s0 = open_volume(out / "probability")
    prob_l = open_volume(out / "probability" / f"s{level}")
    mask_image = find_mask(out)
    if mask_image is None:
        raise InputError(f"{out} has no mask image ({PREDICTION_MASK}): is it an output of organet predict?")
    mask_l = open_volume(mask_image / f"s{level}")
    factors = tuple(max(1, round(lv / v)) for lv, v in zip(prob_l.voxel_size, s0.voxel_size))
    p_kind, m_kind = prediction_kind(prob_l), prediction_kind(mask_l)
    scale = 1.0 / 255.0 if p_kind == "probability_uint8" else 1.0
    t_kind = prediction_kind(truth) if truth is not None else None
    planes = []
    for axis in range(3):
        idx = int(point[axis])
        lk = _plane_key(axis, min(idx // factors[axis], prob_l.shape[axis] - 1))
        fa, fb = (factors[i] for i in range(3) if i != axis)
        prob = np.asarray(prob_l.read(lk), np.float32) * scale
        mask = foreground(mask_l.read(lk), m_kind)
        r = None
        if raw is not None:
            r = _reduce(np.asarray(raw.read(_plane_key(axis, idx)), np.float32), (fa, fb), "mean")
        t = None
        if truth is not None and t_kind is not None:
            t = _reduce(foreground(truth.read(_plane_key(axis, idx)), t_kind), (fa, fb), "max")
        a, b = (i for i in range(3) if i != axis)
        b0 = s0.bounds_nm[0]
        end = [o + n * v for o, n, v in zip(b0, prob_l.shape, prob_l.voxel_size)]
        extent = (b0[b], end[b], end[a], b0[a])
        planes.append(Plane(axis, idx, level, extent, prob, mask, r, t))
    return planes


__all__ = ["AXES", "Plane", "choose_level", "pyramid_levels", "read_planes"]
