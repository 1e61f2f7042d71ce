"""Resampling between voxel grids of any voxel sizes.

A model sees an input of another voxel size (5.9 x 5.9 x 40 nm SBEM under a 10 nm model,
5 nm FIB-SEM under a 10 nm model) through :class:`ResampledVolume`, computed on read, and
its probabilities come back to the input grid through the inverse :class:`GridMap`; any
positive ratio per axis, anisotropic allowed. Coarser grids are made by area averaging
(for whole factors exactly the block means ``organet convert --downsample`` writes, so
training data and prediction input are made by one function), finer ones by linear
interpolation. Training reads sources of other voxel sizes through the same view (labels
with ``majority``).

Every resampling is separable, and each target voxel is a fixed weighted sum of source
voxels (:func:`axis_taps`), so a block computed alone equals the same voxels of the whole
volume bit for bit: blockwise runs are seam-free by construction.

Offsets follow OME-Zarr: the position (nm) of the centre of voxel 0. A target grid starts
where its source starts (voxel edges): downsampling by ``f`` moves the offset by
``(f - 1) / 2`` source voxels, and source voxel ``j`` lies at target coordinate
``(j + 0.5) / f - 0.5``. Axis order (z, y, x) throughout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from organet.errors import VolumeError

from .geometry import Shape3, as_int3
from .roi import Roi

Mode = Literal["mean", "majority", "max"]


def as_factor(factor: int | Sequence[int]) -> Shape3:
    """A downsampling factor as (z, y, x) integers >= 1; one int applies to all axes."""
    return as_int3((factor,) * 3 if isinstance(factor, (int, np.integer)) else factor, "downsampling factor", minimum=1)


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
    if np.issubdtype(a.dtype, np.integer):
        return _round_half_up(r, a.dtype)
    return r.astype(a.dtype)


def _round_half_up(r: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``r`` rounded half up and clipped to the integer ``dtype`` (every integer mean in organet rounds this way)."""
    info = np.iinfo(dtype)
    return np.clip(np.floor(r + 0.5), info.min, info.max).astype(dtype)


def _bounds(roi: Roi | tuple[slice, ...], shape: Sequence[int]) -> tuple[list[int], list[int]]:
    """``[lo, hi)`` per axis of a read request (a Roi, or slices with open ends)."""
    if isinstance(roi, Roi):
        return list(roi.offset), list(roi.end)
    return [0 if s.start is None else s.start for s in roi], [
        n if s.stop is None else s.stop for s, n in zip(roi, shape)
    ]


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
        lo, hi = _bounds(roi, self.shape)
        fine = tuple(slice(a * k, min(b * k, n)) for a, b, k, n in zip(lo, hi, self.factor, self.base.shape))
        return downsample_block(np.asarray(self.base.read(fine)), self.factor, self.mode)


SNAP_RTOL = 0.05
"""A ratio of voxel sizes within 5 % of a whole number (or of its inverse) is taken as that number."""

AxisMode = Literal["area", "linear", "nearest"]
ResampleMode = Literal["auto", "area", "linear", "nearest", "majority"]


def axis_scale(target_nm: float, source_nm: float, rtol: float = SNAP_RTOL) -> float:
    """Source voxels per target voxel along one axis (``target / source``), snapped to a
    whole number ``k`` or to ``1 / k`` when within ``rtol`` of it (4.9 nm data under a 10 nm
    model is resampled by exactly 2, not 2.04)."""
    if not (math.isfinite(target_nm) and math.isfinite(source_nm)) or target_nm <= 0 or source_nm <= 0:
        raise VolumeError(f"voxel sizes must be positive numbers (nm), got {target_nm} and {source_nm}")
    r = target_nm / source_nm
    inv = r < 1
    q = 1 / r if inv else r
    n = round(q)
    if abs(q - n) <= rtol * n:
        return 1 / n if inv else float(n)
    return r


def axis_taps(n_source: int, scale: float, lo: int, hi: int, mode: AxisMode) -> tuple[np.ndarray, np.ndarray]:
    """Source voxels and weights that make target voxels ``[lo, hi)`` along one axis.

    Target voxel ``j`` spans source coordinates ``[j * scale, (j + 1) * scale)`` (voxel
    edges; its centre lies at ``(j + 0.5) * scale - 0.5`` in source voxel indices).
    ``area``: the mean of the source voxels weighted by overlap (block means for whole
    ``scale``; the part beyond the last source voxel does not count); ``linear``:
    interpolation between the two nearest source centres, the edge value kept beyond the
    first and last; ``nearest``: the source voxel containing the centre.

    Returns ``(index, weight)``, both ``(hi - lo, taps)``: target voxel ``j`` is
    ``sum_t weight[j, t] * source[index[j, t]]``, summed in ``t`` order. Every row depends
    only on ``j``, so any block of targets equals the same rows of the whole axis.
    """
    j = np.arange(lo, hi, dtype=np.float64)
    if mode == "linear":
        c = np.clip((j + 0.5) * scale - 0.5, 0, n_source - 1)
        i0 = np.floor(c).astype(np.int64)
        w1 = c - i0
        return np.stack([i0, np.minimum(i0 + 1, n_source - 1)], 1), np.stack([1 - w1, w1], 1).astype(np.float32)
    if mode == "nearest":
        i = np.clip(np.floor((j + 0.5) * scale), 0, n_source - 1).astype(np.int64)
        return i[:, None], np.ones((len(j), 1), np.float32)
    if mode != "area":
        raise VolumeError(f"axis resampling mode must be area, linear or nearest, got {mode!r}")
    a = np.minimum(j * scale, n_source - 1)  # a target voxel wholly beyond the data takes the last voxel
    b = np.maximum(np.minimum((j + 1) * scale, n_source), a + 1e-9)
    taps = int(math.ceil(scale)) + 1
    idx = np.floor(a).astype(np.int64)[:, None] + np.arange(taps)[None, :]
    w = np.clip(np.minimum(b[:, None], idx + 1) - np.maximum(a[:, None], idx), 0, None)
    w /= w.sum(1, keepdims=True)
    return np.clip(idx, 0, n_source - 1), w.astype(np.float32)


def apply_taps(a: np.ndarray, axis: int, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Resample ``a`` along ``axis`` with :func:`axis_taps` (``index`` relative to ``a``); float32."""
    shape = [1] * a.ndim
    shape[axis] = -1
    out: np.ndarray | None = None
    for t in range(index.shape[1]):
        term = np.take(a, index[:, t], axis=axis).astype(np.float32, copy=False) * weight[:, t].reshape(shape)
        out = term if out is None else out + term
    assert out is not None
    return out


@dataclass(frozen=True)
class GridMap:
    """A source voxel grid and the grid of another voxel size over the same extent.

    Per axis ``scale`` source voxels make one target voxel (:func:`axis_scale`: any
    positive ratio, anisotropic allowed; > 1 the target is coarser). The target grid
    starts where the source starts (voxel edges), has ``ceil(n / scale)`` voxels, and its
    offset follows OME-Zarr (centre of voxel 0, nm). For whole ``scale`` this is the grid
    of :class:`DownsampledVolume`.

    ``mode`` per axis: ``auto`` = ``area`` where the target is coarser (no aliasing; block
    means for whole factors, as ``organet convert --downsample`` writes training data) and
    ``linear`` where it is finer.
    """

    source_shape: Shape3
    source_voxel_size: tuple[float, float, float]
    source_offset: tuple[float, float, float]
    voxel_size_requested: tuple[float, float, float]

    @classmethod
    def between(cls, source: Any, voxel_size: Sequence[float]) -> GridMap:
        """The map from ``source`` (anything with ``shape``, ``voxel_size``, ``offset``) to ``voxel_size`` nm."""
        f3 = lambda v: (float(v[0]), float(v[1]), float(v[2]))  # noqa: E731
        return cls(as_int3(source.shape, "shape"), f3(source.voxel_size), f3(source.offset), f3(voxel_size))

    @property
    def scale(self) -> tuple[float, float, float]:
        s = [axis_scale(t, v) for t, v in zip(self.voxel_size_requested, self.source_voxel_size)]
        return s[0], s[1], s[2]

    @property
    def identity(self) -> bool:
        return self.scale == (1.0, 1.0, 1.0)

    @property
    def shape(self) -> Shape3:
        s = [max(1, math.ceil(n / k - 1e-9)) for n, k in zip(self.source_shape, self.scale)]
        return s[0], s[1], s[2]

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """The target grid's voxel size (nm): the requested one, snapped as :attr:`scale` is."""
        v = [s * k for s, k in zip(self.source_voxel_size, self.scale)]
        return v[0], v[1], v[2]

    @property
    def offset(self) -> tuple[float, float, float]:
        o = [o + (t - s) / 2 for o, s, t in zip(self.source_offset, self.source_voxel_size, self.voxel_size)]
        return o[0], o[1], o[2]

    def inverse(self) -> GridMap:
        """The map from the target grid back to the source grid."""
        return GridMap(self.shape, self.voxel_size, self.offset, self.source_voxel_size)

    def modes(self, mode: ResampleMode = "auto") -> tuple[AxisMode, AxisMode, AxisMode]:
        """The per-axis mode of ``mode`` (``majority``: area weights, thresholded after)."""
        if mode in ("area", "linear", "nearest"):
            return (mode, mode, mode)
        if mode not in ("auto", "majority"):
            raise VolumeError(f"resampling mode must be auto, area, linear, nearest or majority, got {mode!r}")
        m: list[AxisMode] = ["area" if k > 1 else "linear" for k in self.scale]
        return m[0], m[1], m[2]

    def taps(
        self, lo: Sequence[int], hi: Sequence[int], mode: ResampleMode = "auto"
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per axis the :func:`axis_taps` of target voxels ``[lo, hi)`` (indices into the source)."""
        return [
            axis_taps(n, k, a, b, m) for n, k, a, b, m in zip(self.source_shape, self.scale, lo, hi, self.modes(mode))
        ]

    def source_box(self, lo: Sequence[int], hi: Sequence[int], mode: ResampleMode = "auto") -> Roi:
        """The source voxels that target voxels ``[lo, hi)`` are made of."""
        t = self.taps(lo, hi, mode)
        a = [int(i.min()) for i, _ in t]
        b = [int(i.max()) + 1 for i, _ in t]
        return Roi(a, [y - x for x, y in zip(a, b)])

    def resample(
        self,
        source: np.ndarray,
        source_lo: Sequence[int],
        lo: Sequence[int],
        hi: Sequence[int],
        mode: ResampleMode = "auto",
    ) -> np.ndarray:
        """Target voxels ``[lo, hi)`` (float32) from ``source``, the source block starting at
        voxel ``source_lo`` that covers :meth:`source_box`. Blockwise results equal the
        whole-volume result bit for bit. ``majority`` resamples ``source > 0`` and returns
        0/1 (uint8) where the result is >= 0.5."""
        out = (np.asarray(source) > 0).astype(np.float32) if mode == "majority" else source
        for ax, (idx, w) in enumerate(self.taps(lo, hi, mode)):
            out = apply_taps(out, ax, idx - int(source_lo[ax]), w)
        if mode == "majority":
            return (out >= 0.5).astype(np.uint8)
        return out.astype(np.float32, copy=False)

    def describe(self, mode: ResampleMode = "auto") -> dict[str, Any]:
        """What a run records about this resampling."""
        return {
            "source_voxel_size": list(self.source_voxel_size),
            "voxel_size": list(self.voxel_size),
            "scale": [round(k, 6) for k in self.scale],
            "modes": list(self.modes(mode)) if mode != "nearest" else ["nearest"] * 3,
            **({"threshold": 0.5} if mode == "majority" else {}),
        }


class ResampledVolume:
    """Read-only view of a volume on the grid of another voxel size (:class:`GridMap`),
    computed on read from only the source voxels a request needs.

    ``mode``: ``auto`` for images (area where coarser, linear where finer); ``majority``
    for masks and 0/1 labels (the same weights on ``> 0``, then >= 0.5); ``nearest`` for
    label ids and anything whose values must be kept. Integer
    images are rounded half up to their dtype; whole-factor area downsampling is exactly
    :func:`downsample_block`. Satisfies the reader protocol of tiled prediction and of
    training (``shape``, ``dtype``, ``voxel_size``, ``offset``, ``roi``, ``read``).
    """

    def __init__(self, base: Any, voxel_size: Sequence[float], mode: ResampleMode = "auto") -> None:
        self.base = base
        self.map = GridMap.between(base, voxel_size)
        self.map.modes(mode)  # validate
        self.mode = mode
        self.shape = self.map.shape
        self.dtype = np.dtype(base.dtype)
        self.voxel_size, self.offset = self.map.voxel_size, self.map.offset
        self.attrs = getattr(base, "attrs", {})
        self.path = getattr(base, "path", None)
        scale = self.map.scale
        self._blocks: DownsampledVolume | None = None  # whole-factor area means: exactly convert's block means
        if mode in ("auto", "area", "majority") and all(k >= 1 and k == int(k) for k in scale):
            self._blocks = DownsampledVolume(
                base, [int(k) for k in scale], "majority" if mode == "majority" else "mean"
            )

    @property
    def roi(self) -> Roi:
        return Roi((0, 0, 0), self.shape)

    def read(self, roi: Roi | tuple[slice, ...]) -> np.ndarray:
        if self._blocks is not None:
            return self._blocks.read(roi)
        lo, hi = _bounds(roi, self.shape)
        box = self.map.source_box(lo, hi, self.mode)
        src = np.asarray(self.base.read(box.slices()))
        out = self.map.resample(src, box.offset, lo, hi, self.mode)
        if self.mode == "majority":
            return out.astype(self.dtype)
        if self.dtype.kind == "b":
            return out >= 0.5
        if self.dtype.kind in "ui":
            return _round_half_up(out, self.dtype)
        return out.astype(self.dtype, copy=False)


__all__ = [
    "DownsampledVolume",
    "GridMap",
    "ResampledVolume",
    "apply_taps",
    "as_factor",
    "axis_scale",
    "axis_taps",
    "downsample_block",
    "downsampled_geometry",
]
