"""Voxel features for the scribble classifier (ilastik-style, 3-D, several scales).

Per scale sigma (voxels of the working grid, axis order z, y, x): Gaussian smoothing,
gradient magnitude, Laplacian of Gaussian, the three Hessian eigenvalues, local standard
deviation and the three structure-tensor eigenvalues; plus the raw value. Large scales
matter for mitochondria: they see the whole organelle (its dark, cristae-textured
interior) instead of one membrane.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

DEFAULT_SCALES: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)


def _sym_eigvals(a: list[np.ndarray], slab_voxels: int = 1 << 20) -> np.ndarray:
    """Eigenvalues (ascending, last axis) of symmetric 3x3 fields given as [zz, zy, zx, yy, yx, xx].

    Computed over slabs of about ``slab_voxels`` voxels along the first axis, so the 3 x 3
    matrices are only ever built for one slab (same values as one call on the whole field).
    """
    shape = a[0].shape
    out = np.empty((*shape, 3), np.result_type(*a))
    step = max(1, slab_voxels // max(1, int(np.prod(shape[1:]))))
    for i in range(0, shape[0], step):
        zz, zy, zx, yy, yx, xx = (c[i : i + step] for c in a)
        m = np.stack([np.stack([zz, zy, zx], -1), np.stack([zy, yy, yx], -1), np.stack([zx, yx, xx], -1)], -2)
        out[i : i + step] = np.linalg.eigvalsh(m)
    return out


def feature_names(scales: Sequence[float] = DEFAULT_SCALES) -> list[str]:
    names = ["raw"]
    for s in scales:
        names += [
            f"{n}_s{s:g}" for n in ("gauss", "gradmag", "log", "hess0", "hess1", "hess2", "std", "st0", "st1", "st2")
        ]
    return names


def n_features(scales: Sequence[float] = DEFAULT_SCALES) -> int:
    """Number of features :func:`compute_features` returns for ``scales``."""
    return 1 + 10 * len(scales)


def compute_features(
    raw: np.ndarray, scales: Sequence[float] = DEFAULT_SCALES, out: np.ndarray | None = None
) -> np.ndarray:
    """Feature stack (z, y, x, n_features) float32 of a (z, y, x) float image in ~[0, 1].

    ``scales`` are Gaussian sigmas in voxels of ``raw``. ``out``, if given, is a float32 array
    (or view) of shape (z, y, x, :func:`n_features`) that receives the features: each one is
    written there as soon as it is computed, so no second copy of the stack is ever held.
    """
    x = np.asarray(raw, np.float32)
    nf = n_features(scales)
    if out is None:
        out = np.empty((*x.shape, nf), np.float32)
    elif out.shape != (*x.shape, nf) or out.dtype != np.float32:
        raise ValueError(f"out has shape {out.shape} {out.dtype}; expected {(*x.shape, nf)} float32")
    out[..., 0] = x
    k = 1
    pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    for s in scales:
        g = ndimage.gaussian_filter(x, s, mode="reflect")
        d1 = [
            ndimage.gaussian_filter(x, s, order=tuple(int(i == a) for i in range(3)), mode="reflect") for a in range(3)
        ]
        out[..., k] = g
        out[..., k + 1] = np.sqrt(d1[0] ** 2 + d1[1] ** 2 + d1[2] ** 2) * s
        hess = []
        for a, b in pairs:
            order = [0, 0, 0]
            order[a] += 1
            order[b] += 1
            hess.append(ndimage.gaussian_filter(x, s, order=tuple(order), mode="reflect") * s * s)
        out[..., k + 2] = hess[0] + hess[3] + hess[5]  # Laplacian of Gaussian
        out[..., k + 3 : k + 6] = _sym_eigvals(hess)
        del hess
        var = ndimage.gaussian_filter(x * x, s, mode="reflect") - g * g
        out[..., k + 6] = np.sqrt(np.maximum(var, 0))
        del var, g
        # structure tensor: products of first derivatives smoothed at 2 sigma
        st = [ndimage.gaussian_filter(d1[a] * d1[b] * s * s, 2 * s, mode="reflect") for a, b in pairs]
        out[..., k + 7 : k + 10] = _sym_eigvals(st)
        del st, d1
        k += 10
    return out
