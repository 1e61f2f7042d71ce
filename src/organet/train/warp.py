"""The augmentation warp, compiled: coordinates made and sampled point by point.

:mod:`organet.train.augment` describes a warp of the network-input grid into an
upstream block by a rotation about the z axis, a centre, and a coarse elastic
displacement field (``disp``, shape (3, sz, sy, sx), voxels, corner-aligned
with the input grid). This module evaluates that map at every point of a box of
the input grid and samples the upstream block there, in one pass without
intermediate coordinate arrays: linear interpolation for raw, nearest neighbour
for labels and masks, and scipy's ``reflect`` rule (half-sample symmetric)
beyond the block's border. :func:`warp_coordinates` writes the map itself.

The functions are compiled by numba (single-threaded, ``nogil``, so a
background data worker runs beside the training step; cached on disk after the
first call). Arrays are (z, y, x); coordinates and displacements in voxels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numba
import numpy as np

__all__ = ["warp_coordinates", "warp_sample"]

_NO_ARRAY = np.zeros((1, 1, 1), np.float32)
_NO_COORDS = np.zeros((3, 1, 1, 1), np.float64)
_NO_FLIP = np.zeros(3, np.bool_)
_NO_PERM = np.arange(3, dtype=np.int64)


@numba.njit(nogil=True, cache=True, inline="always")
def _weight(i: int, n_sub: int, n_full: int) -> tuple[int, float]:
    """Corner-aligned linear interpolation from ``n_sub`` samples to full-grid index ``i``."""
    if n_sub == 1 or n_full == 1:
        return 0, 0.0
    t = i * ((n_sub - 1) / (n_full - 1))
    i0 = min(int(math.floor(t)), n_sub - 2)
    return i0, t - i0


@numba.njit(nogil=True, cache=True, inline="always")
def _reflect(i: int, n: int) -> int:
    """scipy's ``reflect`` (d c b a | a b c d | d c b a) for any integer index."""
    if n == 1:
        return 0
    i = i % (2 * n)
    return 2 * n - 1 - i if i >= n else i


@numba.njit(nogil=True, cache=True)
def _warp(
    array: np.ndarray,
    out: np.ndarray,
    coords: np.ndarray,
    mode: int,
    origin: np.ndarray,
    box_shape: np.ndarray,
    in_shape: np.ndarray,
    centre: np.ndarray,
    cos: float,
    sin: float,
    disp: np.ndarray,
    flip: np.ndarray,
    perm: np.ndarray,
    k0: int,
    k1: int,
) -> None:
    """Mode 1: ``out`` = ``array`` sampled linearly; 0: nearest; 2: ``coords`` = the map.

    Row by row: the displacement is first interpolated in z and y onto the coarse x
    nodes of the row, then in x per point. A sample at box index ``s`` (after flipping
    the axes where ``flip``) lands at ``out[s[perm[0]], s[perm[1]], s[perm[2]]]``. Only the
    box's planes ``k0 <= k < k1`` are done (threads share a box this way).
    """
    nz, ny, nx = array.shape
    oz, oy, ox = box_shape[0], box_shape[1], box_shape[2]
    src = np.empty(3, np.int64)
    sx = disp.shape[3]
    wx_i = np.empty(ox, np.int64)
    wx_t = np.empty(ox, np.float64)
    for i in range(ox):
        wx_i[i], wx_t[i] = _weight(origin[2] + i, sx, in_shape[2])
    row = np.empty((3, sx), np.float64)
    hz, hy, hx = (in_shape[0] - 1.0) / 2.0, (in_shape[1] - 1.0) / 2.0, (in_shape[2] - 1.0) / 2.0
    for k in range(k0, k1):
        src[0] = oz - 1 - k if flip[0] else k
        iz, tz = _weight(origin[0] + k, disp.shape[1], in_shape[0])
        jz = min(iz + 1, disp.shape[1] - 1)
        pz = origin[0] + k - hz + centre[0]
        for j in range(oy):
            src[1] = oy - 1 - j if flip[1] else j
            iy, ty = _weight(origin[1] + j, disp.shape[2], in_shape[1])
            jy = min(iy + 1, disp.shape[2] - 1)
            for c in range(3):
                for n in range(sx):
                    lo = disp[c, iz, iy, n] * (1 - ty) + disp[c, iz, jy, n] * ty
                    hi = disp[c, jz, iy, n] * (1 - ty) + disp[c, jz, jy, n] * ty
                    row[c, n] = lo * (1 - tz) + hi * tz
            py = origin[1] + j - hy
            ry = cos * py + centre[1]
            rx = -sin * py + centre[2]
            for i in range(ox):
                src[2] = ox - 1 - i if flip[2] else i
                a, t = wx_i[i], wx_t[i]
                b = min(a + 1, sx - 1)
                px = origin[2] + i - hx
                cz = pz + row[0, a] * (1 - t) + row[0, b] * t
                cy = ry + sin * px + row[1, a] * (1 - t) + row[1, b] * t
                cx = rx + cos * px + row[2, a] * (1 - t) + row[2, b] * t
                if mode == 2:
                    coords[0, k, j, i] = cz
                    coords[1, k, j, i] = cy
                    coords[2, k, j, i] = cx
                elif mode == 0:
                    z = _reflect(int(math.floor(cz + 0.5)), nz)
                    y = _reflect(int(math.floor(cy + 0.5)), ny)
                    x = _reflect(int(math.floor(cx + 0.5)), nx)
                    out[src[perm[0]], src[perm[1]], src[perm[2]]] = array[z, y, x]
                else:
                    fz, fy, fx = math.floor(cz), math.floor(cy), math.floor(cx)
                    tz_, ty_, tx_ = cz - fz, cy - fy, cx - fx
                    z0, y0, x0 = int(fz), int(fy), int(fx)
                    if 0 <= z0 < nz - 1 and 0 <= y0 < ny - 1 and 0 <= x0 < nx - 1:
                        z1, y1, x1 = z0 + 1, y0 + 1, x0 + 1
                    else:
                        z1, y1, x1 = _reflect(z0 + 1, nz), _reflect(y0 + 1, ny), _reflect(x0 + 1, nx)
                        z0, y0, x0 = _reflect(z0, nz), _reflect(y0, ny), _reflect(x0, nx)
                    lo = (array[z0, y0, x0] * (1 - tx_) + array[z0, y0, x1] * tx_) * (1 - ty_) + (
                        array[z0, y1, x0] * (1 - tx_) + array[z0, y1, x1] * tx_
                    ) * ty_
                    hi = (array[z1, y0, x0] * (1 - tx_) + array[z1, y0, x1] * tx_) * (1 - ty_) + (
                        array[z1, y1, x0] * (1 - tx_) + array[z1, y1, x1] * tx_
                    ) * ty_
                    out[src[perm[0]], src[perm[1]], src[perm[2]]] = lo * (1 - tz_) + hi * tz_


def _args(
    box: tuple[slice, slice, slice],
    in_shape: Sequence[int],
    centre: Sequence[float] | np.ndarray,
    disp: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    origin = np.array([s.start for s in box], np.int64)
    box_shape = np.array([s.stop - s.start for s in box], np.int64)
    shape = np.array(in_shape, np.int64)
    c = np.asarray(centre, np.float64)
    d = np.zeros((3, 1, 1, 1), np.float32) if disp is None else np.ascontiguousarray(disp, np.float32)
    if d.ndim != 4 or d.shape[0] != 3:
        raise ValueError(f"displacement must have shape (3, sz, sy, sx), got {d.shape}")
    return origin, box_shape, shape, c, d


def warp_sample(
    array: np.ndarray,
    box: tuple[slice, slice, slice],
    in_shape: Sequence[int],
    centre: Sequence[float] | np.ndarray,
    cos: float,
    sin: float,
    disp: np.ndarray | None,
    order: int,
    dtype: type,
    mirror: Sequence[bool] = (False, False, False),
    permutation: Sequence[int] = (0, 1, 2),
    threads: int = 1,
) -> np.ndarray:
    """Sample ``array`` (the upstream block, (z, y, x)) at the warped coordinates of
    ``box`` (slices of the ``in_shape`` input grid).

    Parameters
    ----------
    array
        Upstream block; float32 for ``order=1``, any dtype for ``order=0``.
    box
        Part of the input grid to sample (voxels, steps of 1).
    in_shape
        Input grid (voxels, z, y, x); the displacement is corner-aligned with it.
    centre
        Upstream coordinate (voxels) of the input grid's centre.
    cos, sin
        Rotation about the z axis: input offset (y, x) from the centre maps to
        ``(cos y + sin x, -sin y + cos x)``.
    disp
        Displacement (voxels) on a coarse grid, shape (3, sz, sy, sx); None for none.
    order
        1: linear; 0: nearest neighbour (ties round up, as scipy).
    dtype
        Output dtype.
    mirror, permutation
        Then flip the sampled box along these axes and transpose it, as
        ``np.transpose(np.flip(a, mirrored axes), permutation)``, in the same pass.
    threads
        Split the box into this many slabs of z planes, sampled by as many threads at once
        (the compiled code releases the GIL); the result does not depend on it.

    Returns
    -------
    numpy.ndarray
        C-contiguous, of ``dtype``, shape the box's shape permuted.
    """
    origin, box_shape, shape, c, d = _args(box, in_shape, centre, disp)
    if order not in (0, 1):
        raise ValueError(f"order must be 0 or 1, got {order}")
    if sorted(permutation) != [0, 1, 2] or len(mirror) != 3:
        raise ValueError(f"expected 3 mirror flags and a permutation of (0, 1, 2), got {mirror}, {permutation}")
    perm = np.array(permutation, np.int64)
    out: np.ndarray = np.empty(tuple(int(box_shape[a]) for a in perm), dtype=dtype)
    src = np.ascontiguousarray(array, np.float32 if order == 1 else None)
    flip = np.array(mirror, np.bool_)
    n = int(box_shape[0])
    parts = max(1, min(int(threads), n))
    cuts = [n * i // parts for i in range(parts + 1)]
    cs, sn = float(cos), float(sin)

    def run(i: int) -> None:
        _warp(src, out, _NO_COORDS, order, origin, box_shape, shape, c, cs, sn, d, flip, perm, cuts[i], cuts[i + 1])

    if parts == 1:
        run(0)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(parts, thread_name_prefix="organet-warp") as pool:
            list(pool.map(run, range(parts)))
    return out


def warp_coordinates(
    box: tuple[slice, slice, slice],
    in_shape: Sequence[int],
    centre: Sequence[float] | np.ndarray,
    cos: float,
    sin: float,
    disp: np.ndarray | None,
) -> np.ndarray:
    """The upstream coordinates (3, nz, ny, nx), float64 voxels, that :func:`warp_sample`
    samples for ``box``; arguments as there."""
    origin, box_shape, shape, c, d = _args(box, in_shape, centre, disp)
    out = np.empty((3, *box_shape), np.float64)
    cs, sn, n = float(cos), float(sin), int(box_shape[0])
    _warp(_NO_ARRAY, _NO_ARRAY, out, 2, origin, box_shape, shape, c, cs, sn, d, _NO_FLIP, _NO_PERM, 0, n)
    return out
