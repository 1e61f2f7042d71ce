"""Seeded synthetic nuclear envelope pierced by nuclear pores, for tests and the docs.

The envelope is part of an ellipsoid (semi-axes 2.5–3.5 µm, a nucleus ~6 µm across, random orientation) passing
through the volume centre. Its two membranes are dark sheets ``separation_nm`` apart (the
mid-surface is the ellipsoid); at each pore they fuse into a rim: in the plane spanned by
the pore axis and a radial direction the membrane follows a half circle of radius
``separation/2`` centred at ``rho = r + separation/2`` on the mid-surface, so on the
mid-surface (the en-face plane through the middle of the envelope) the membrane crosses at
``rho = r``: the true pore *membrane* diameter is ``2 r``. Each pore also holds a faint
central plug (the NPC scaffold). Grey levels: nucleoplasm 0.52, cytoplasm 0.62, lumen
0.66, membranes ~0.2 before blur; Gaussian blur (sigma ``blur_nm``) and Gaussian noise
(``noise`` on the 0–1 scale) make it FIB-SEM-like; output uint8.

Everything is computed in physical nm from voxel centres ``index * voxel_size``, so an
anisotropic voxel size gives the same object sampled differently.
The prediction mask of a pore is a cylinder (radius 0.6 r, height separation + 10 nm)
around its axis: what a pore classifier labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage


@dataclass
class PorePhantom:
    raw: np.ndarray  # uint8 (z, y, x)
    pred: np.ndarray  # uint8 0/1 pore mask
    voxel_size: tuple[float, float, float]  # nm (z, y, x)
    centres_nm: np.ndarray  # (n, 3) pore centres on the mid-surface, nm (z, y, x)
    normals: np.ndarray  # (n, 3) unit outward normals (away from the nucleus centre)
    diameters_nm: np.ndarray  # (n,) true membrane diameters at the mid-surface
    nucleus_centre_nm: np.ndarray = field(default_factory=lambda: np.zeros(3))
    separation_nm: float = 35.0


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


class _Ellipsoid:
    def __init__(self, centre: np.ndarray, radii: np.ndarray, rot: np.ndarray) -> None:
        self.c, self.a, self.rot = centre, radii, rot

    def grad_f(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """F(p) = sum((R^T (p - c) / a)^2) and its gradient (world frame)."""
        q = (p - self.c) @ self.rot
        f = ((q / self.a) ** 2).sum(-1)
        g = (2 * q / self.a**2) @ self.rot.T
        return f, g

    def signed_distance(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First-order signed distance (positive outside) and unit outward normal."""
        f, g = self.grad_f(p)
        gn = np.linalg.norm(g, axis=-1)
        return (f - 1) / gn, g / gn[..., None]

    def project(self, p: np.ndarray) -> np.ndarray:
        for _ in range(6):
            d, n = self.signed_distance(p)
            p = p - d[..., None] * n
        return p


def make_pore_phantom(
    shape: tuple[int, int, int] = (80, 144, 144),
    voxel_size: tuple[float, float, float] | float = 5.0,
    n_pores: int = 8,
    diameter_range: tuple[float, float] = (50.0, 120.0),
    separation_nm: float = 35.0,
    blur_nm: float = 4.0,
    noise: float = 0.04,
    seed: int = 0,
    extent_nm: tuple[float, float, float] | None = None,
) -> PorePhantom:
    """Make the phantom. ``shape`` in voxels of ``voxel_size`` nm (z, y, x).

    ``extent_nm`` (default ``shape * 5``) fixes the physical size, so phantoms with the
    same seed and extent but different voxel sizes contain the same objects: the shape is
    then ``round(extent / voxel_size)``.
    """
    vs = np.broadcast_to(np.asarray(voxel_size, float), (3,)).copy()
    ext = np.asarray(extent_nm if extent_nm is not None else np.asarray(shape) * 5.0, float)
    if extent_nm is not None or not np.allclose(vs, 5.0):
        n = [int(round(e / v)) for e, v in zip(ext, vs)]
        shape = (n[0], n[1], n[2])
    rng = np.random.default_rng(seed)
    h = separation_nm / 2
    centre_vol = (ext - 5.0) / 2
    radii = rng.uniform([2500, 2800, 3100], [2800, 3100, 3500])
    rot = _rotation(rng)
    # put a random point of the ellipsoid at the volume centre; keep the local normal
    # within 35 degrees of z so the envelope crosses the (thin in z) box well
    for _ in range(1000):
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        p_loc = u * radii
        n_loc = p_loc / radii**2
        n_world = rot @ (n_loc / np.linalg.norm(n_loc))
        if abs(n_world[0]) > np.cos(np.radians(35)):
            break
    ell = _Ellipsoid(centre_vol - rot @ p_loc, radii, rot)

    # pores: random points projected on the surface, kept inside with a margin, no overlap
    centres: list[np.ndarray] = []
    diams: list[float] = []
    for _ in range(4000):
        if len(centres) == n_pores:
            break
        d = rng.uniform(*diameter_range)
        p = ell.project(rng.uniform(0, ext - 5.0))
        margin = d / 2 + separation_nm + 25
        if np.any(p < margin) or np.any(p > ext - 5.0 - margin):
            continue
        if any(np.linalg.norm(p - c) < (d + dd) / 2 + separation_nm + 50 for c, dd in zip(centres, diams)):
            continue
        centres.append(p)
        diams.append(d)
    C = np.array(centres)
    D = np.array(diams)
    N = ell.signed_distance(C)[1]

    zz, yy, xx = (np.arange(s) * v for s, v in zip(shape, vs))
    P = np.stack(np.meshgrid(zz, yy, xx, indexing="ij"), -1)
    dist, _ = ell.signed_distance(P)
    img = np.where(dist < -h, 0.52, np.where(dist > h, 0.62, 0.66)).astype(np.float32)
    mem = np.abs(np.abs(dist) - h)  # distance to the nearest membrane
    pred = np.zeros(shape, np.uint8)
    plug = np.zeros(shape, np.float32)
    for c, n, d in zip(C, N, D):
        r = d / 2
        reach = r + 2 * h + 20
        lo = np.maximum(np.floor((c - reach) / vs).astype(int), 0)
        hi = np.minimum(np.ceil((c + reach) / vs).astype(int) + 1, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        q = P[box] - c
        t = q @ n
        rho = np.linalg.norm(q - t[..., None] * n, axis=-1)
        db = dist[box]
        inside = rho < r + h
        rim = np.abs(np.sqrt((rho - (r + h)) ** 2 + db**2) - h)
        mb = mem[box]
        mb[inside] = rim[inside]
        lum = img[box]
        hole = inside & (np.abs(db) < h) & ((rho - (r + h)) ** 2 + db**2 > h**2)
        lum[hole] = np.where(db[hole] < 0, 0.52, 0.62) * 0 + 0.58  # pore channel: mixed nucleo/cytoplasm
        plug[box] = np.maximum(plug[box], 0.08 * np.exp(-(rho**2) / (2 * (0.3 * r) ** 2)) * (np.abs(t) < h + 10))
        pred[box] |= ((rho < 0.6 * r) & (np.abs(t) < h + 5)).astype(np.uint8)
    img = img - plug - 0.45 * np.exp(-(mem**2) / (2 * 3.5**2))
    img = ndimage.gaussian_filter(img, sigma=blur_nm / vs, mode="nearest")
    img = img + rng.normal(0, noise, size=img.shape).astype(np.float32)
    raw = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return PorePhantom(raw, pred, (float(vs[0]), float(vs[1]), float(vs[2])), C, N, D, ell.c.copy(), separation_nm)
