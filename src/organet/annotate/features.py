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


def _sym_eigvals(a: list[np.ndarray]) -> np.ndarray:
    """Eigenvalues (ascending, last axis) of symmetric 3x3 fields given as [zz, zy, zx, yy, yx, xx]."""
    zz, zy, zx, yy, yx, xx = a
    m = np.stack([np.stack([zz, zy, zx], -1), np.stack([zy, yy, yx], -1), np.stack([zx, yx, xx], -1)], -2)
    return np.linalg.eigvalsh(m)


def feature_names(scales: Sequence[float] = DEFAULT_SCALES) -> list[str]:
    names = ["raw"]
    for s in scales:
        names += [
            f"{n}_s{s:g}" for n in ("gauss", "gradmag", "log", "hess0", "hess1", "hess2", "std", "st0", "st1", "st2")
        ]
    return names


def compute_features(raw: np.ndarray, scales: Sequence[float] = DEFAULT_SCALES) -> np.ndarray:
    """Feature stack (z, y, x, n_features) float32 of a (z, y, x) float image in ~[0, 1]."""
    x = np.asarray(raw, np.float32)
    feats: list[np.ndarray] = [x]
    pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    for s in scales:
        g = ndimage.gaussian_filter(x, s, mode="reflect")
        d1 = [
            ndimage.gaussian_filter(x, s, order=tuple(int(i == a) for i in range(3)), mode="reflect") for a in range(3)
        ]
        grad = np.sqrt(d1[0] ** 2 + d1[1] ** 2 + d1[2] ** 2)
        hess = []
        for a, b in pairs:
            order = [0, 0, 0]
            order[a] += 1
            order[b] += 1
            hess.append(ndimage.gaussian_filter(x, s, order=tuple(order), mode="reflect") * s * s)
        log = hess[0] + hess[3] + hess[5]
        hev = _sym_eigvals(hess)
        var = ndimage.gaussian_filter(x * x, s, mode="reflect") - g * g
        std = np.sqrt(np.maximum(var, 0))
        # structure tensor: products of first derivatives smoothed at 2 sigma
        st = [ndimage.gaussian_filter(d1[a] * d1[b] * s * s, 2 * s, mode="reflect") for a, b in pairs]
        stev = _sym_eigvals(st)
        feats += [
            g,
            grad * s,
            log,
            hev[..., 0],
            hev[..., 1],
            hev[..., 2],
            std,
            stev[..., 0],
            stev[..., 1],
            stev[..., 2],
        ]
    return np.stack([f.astype(np.float32, copy=False) for f in feats], -1)
