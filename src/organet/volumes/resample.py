"""Integer-factor resampling between voxel grids.

A model trained at a coarser voxel size than the data (e.g. 10 nm on 5 nm FIB-SEM)
sees the input through :class:`DownsampledVolume` (block means, computed on read)
and its probabilities are brought back to the input grid with
:func:`upsample_linear`. ``organet convert --downsample`` writes the same block
means to disk, so training data and prediction input are made by one function.

Offsets follow OME-Zarr: the position (nm) of the centre of voxel 0. Downsampling
by ``f`` moves it by ``(f - 1) / 2`` fine voxels; fine voxel ``j`` lies at coarse
coordinate ``(j + 0.5) / f - 0.5``. Axis order (z, y, x) throughout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from organet.errors import VolumeError

from .geometry import Shape3, as_int3
from .roi import Roi

Mode = Literal["mean", "majority", "max"]


def as_factor(factor: int | Sequence[int]) -> Shape3:
    """A downsampling factor as (z, y, x) integers >= 1; one int applies to all axes."""
    return as_int3((factor,) * 3 if isinstance(factor, (int, np.integer)) else factor, "downsampling factor", minimum=1)


def integer_factor(coarse_nm: Sequence[float], fine_nm: Sequence[float], rtol: float = 0.05) -> Shape3 | None:
    """``coarse / fine`` per axis when it is an integer within ``rtol``, else None."""
    out = []
    for c, f in zip(coarse_nm, fine_nm):
        r = c / f
        n = round(r)
        if n < 1 or abs(r - n) > rtol * n:
            return None
        out.append(n)
    return tuple(out)  # type: ignore[return-value]


def downsample_block(a: np.ndarray, factor: Sequence[int], mode: Mode = "mean") -> np.ndarray:
    """Reduce each ``factor`` block of ``a`` to one voxel.

    A trailing partial block (shape not a multiple of ``factor``) is reduced over the
    voxels it has. ``mean`` rounds back to ``a``'s dtype for integer types;
    ``majority`` is for foreground masks (1 where at least half the block is > 0, else 0);
    ``max`` keeps any foreground.
    """
    f = as_factor(factor)
    if mode not in ("mean", "majority", "max"):
        raise VolumeError(f"downsampling mode must be mean, majority or max, got {mode!r}")
    if f == (1, 1, 1):
        return a
    shape = tuple(math.ceil(n / k) for n, k in zip(a.shape, f))
    pad = [(0, s * k - n) for s, k, n in zip(shape, f, a.shape)]
    x = (a > 0).astype(np.float32) if mode == "majority" else a.astype(np.float32, copy=False)
    # padded voxels are NaN so the reductions ignore them
    if any(p for _, p in pad):
        x = np.pad(x, pad, constant_values=np.nan)
    x = x.reshape(shape[0], f[0], shape[1], f[1], shape[2], f[2])
    if mode == "max":
        r = np.nanmax(x, axis=(1, 3, 5))
    else:
        r = np.nanmean(x, axis=(1, 3, 5))
        if mode == "majority":
            r = r >= 0.5
    if mode == "majority":
        return r.astype(a.dtype)
    if np.issubdtype(a.dtype, np.integer):  # round half up (every integer mean in organet rounds this way)
        info = np.iinfo(a.dtype)
        r = np.clip(np.floor(r + 0.5), info.min, info.max)
    return r.astype(a.dtype)


def downsampled_geometry(
    voxel_size: Sequence[float], offset: Sequence[float], factor: Sequence[int]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(voxel size, offset) in nm of the grid downsampled by ``factor``."""
    f = as_factor(factor)
    vs = tuple(float(v) * k for v, k in zip(voxel_size, f))
    off = tuple(float(o) + (k - 1) / 2 * float(v) for o, v, k in zip(offset, voxel_size, f))
    return vs, off


class DownsampledVolume:
    """Read-only view of a volume at ``factor`` times its voxel size (block means on read).

    ``shape`` is ``ceil(base.shape / factor)``; ``read(roi)`` takes a coarse ROI (or
    slices) and reads only the fine voxels it covers. Satisfies the reader protocol of
    tiled prediction (``shape``, ``dtype``, ``read``).
    """

    def __init__(self, base: Any, factor: Sequence[int], mode: Mode = "mean") -> None:
        self.base = base
        self.factor = as_factor(factor)
        if mode not in ("mean", "majority", "max"):
            raise VolumeError(f"downsampling mode must be mean, majority or max, got {mode!r}")
        self.mode = mode
        self.shape = tuple(math.ceil(n / k) for n, k in zip(base.shape, self.factor))
        self.dtype = np.dtype(base.dtype)
        self.voxel_size, self.offset = downsampled_geometry(base.voxel_size, base.offset, self.factor)
        self.attrs = getattr(base, "attrs", {})
        self.path = getattr(base, "path", None)

    @property
    def roi(self) -> Roi:
        return Roi((0, 0, 0), self.shape)

    def read(self, roi: Roi | tuple[slice, ...]) -> np.ndarray:
        lo: Sequence[int]
        hi: Sequence[int]
        if isinstance(roi, Roi):
            lo, hi = roi.offset, roi.end
        else:
            lo = [0 if s.start is None else s.start for s in roi]
            hi = [n if s.stop is None else s.stop for s, n in zip(roi, self.shape)]
        fine = tuple(slice(a * k, min(b * k, n)) for a, b, k, n in zip(lo, hi, self.factor, self.base.shape))
        return downsample_block(np.asarray(self.base.read(fine)), self.factor, self.mode)


def coarse_cover(
    fine_lo: Sequence[int], fine_hi: Sequence[int], factor: Sequence[int], coarse_shape: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Coarse voxel range ``[lo, hi)`` needed to linearly interpolate fine voxels
    ``[fine_lo, fine_hi)`` (clipped to the coarse volume)."""
    f = as_factor(factor)
    lo = tuple(max(0, math.floor((a + 0.5) / k - 0.5)) for a, k in zip(fine_lo, f))
    hi = tuple(min(n, math.floor((b - 0.5) / k - 0.5) + 2) for b, k, n in zip(fine_hi, f, coarse_shape))
    return lo, hi


def _interp_axis(a: np.ndarray, axis: int, coords: np.ndarray) -> np.ndarray:
    n = a.shape[axis]
    i0 = np.clip(np.floor(coords).astype(np.int64), 0, n - 1)
    i1 = np.clip(i0 + 1, 0, n - 1)
    w = np.clip(coords - i0, 0.0, 1.0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    return np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i1, axis=axis) * w


def upsample_linear(
    coarse: np.ndarray,
    coarse_lo: Sequence[int],
    coarse_shape: Sequence[int],
    factor: Sequence[int],
    fine_lo: Sequence[int],
    fine_hi: Sequence[int],
) -> np.ndarray:
    """Trilinear interpolation of ``coarse`` (the block ``[coarse_lo, ...)`` of a
    coarse volume of ``coarse_shape``) at fine voxels ``[fine_lo, fine_hi)``.

    Beyond the first/last coarse voxel centre of the volume the edge value is kept.
    ``coarse`` must cover :func:`coarse_cover` of the fine range.
    """
    f = as_factor(factor)
    out = coarse.astype(np.float32, copy=False)
    for ax in range(3):
        j = np.arange(fine_lo[ax], fine_hi[ax], dtype=np.float64)
        c = np.clip((j + 0.5) / f[ax] - 0.5, 0, coarse_shape[ax] - 1) - coarse_lo[ax]
        out = _interp_axis(out, ax, c)
    return out


__all__ = [
    "DownsampledVolume",
    "as_factor",
    "coarse_cover",
    "downsample_block",
    "downsampled_geometry",
    "integer_factor",
    "upsample_linear",
]
