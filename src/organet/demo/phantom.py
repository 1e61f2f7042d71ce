"""Seeded synthetic FIB-SEM-like volumes with mitochondria-like objects.

For the demo and unit tests only, never for accuracy claims. The phantom has
what makes mitochondria non-trivial to segment: a dark double membrane, inner
cristae, and distractors that are also dark and membranous (vesicles with a
single membrane, flat membrane sheets), on a textured grey background with
blur and noise. Voxels are isotropic (``voxel_size`` nm); shapes (z, y, x).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class Phantom:
    raw: np.ndarray  # uint8
    labels: np.ndarray  # uint8 0/1 (mitochondria)
    voxel_size: tuple[float, float, float]


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _ellipsoid_field(
    shape: tuple[int, int, int], centre: np.ndarray, radii: np.ndarray, rot: np.ndarray, box: tuple[slice, ...]
) -> np.ndarray:
    """Normalized radius ``rho`` (1 on the surface) of an ellipsoid within ``box``."""
    grids = np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij")
    p = np.stack([g - c for g, c in zip(grids, centre)], axis=-1) @ rot
    return np.sqrt(((p / radii) ** 2).sum(-1))


def make_phantom(
    shape: tuple[int, int, int] = (96, 160, 160),
    voxel_size: float = 5.0,
    n_mito: int | None = None,
    seed: int = 0,
    noise: float = 14.0,
) -> Phantom:
    """A FIB-SEM-like uint8 volume and its mitochondria mask.

    Mitochondria: ellipsoids of 60-140 nm semi-minor and 150-400 nm semi-major
    axis, random orientation, ~15 nm dark outer membrane and parallel cristae.
    Distractors: small vesicles (single membrane, light lumen) and curved
    membrane sheets. Sizes in nm are converted with ``voxel_size``.
    """
    rng = np.random.default_rng(seed)
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    nm = 1.0 / voxel_size
    vol = np.prod(shape) * voxel_size**3
    if n_mito is None:
        n_mito = max(2, int(round(vol / 3.5e7)))

    # cytoplasm: smooth texture around mid-grey
    raw = 150 + 12 * ndimage.gaussian_filter(rng.normal(size=shape), 3 * 5 * nm) / 0.05
    raw = 150 + (raw - raw.mean()) / (raw.std() + 1e-9) * 8
    labels = np.zeros(shape, np.uint8)
    grid = np.indices(shape, dtype=np.float32)

    def place(radii_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...]]:
        centre = rng.uniform([0, 0, 0], shape)
        rot = _random_rotation(rng)
        r = radii_nm * nm
        ext = int(np.ceil(r.max())) + 3
        box = tuple(slice(max(0, int(c) - ext), min(s, int(c) + ext + 1)) for c, s in zip(centre, shape))
        return centre, rot, box

    for _ in range(n_mito):
        a = rng.uniform(150, 400)
        b = rng.uniform(60, 140)
        radii = np.array([a, b, b * rng.uniform(0.8, 1.0)])
        centre, rot, box = place(radii)
        rho = _ellipsoid_field(shape, centre, radii * nm, rot, box)
        inside = rho <= 1.0
        if not inside.any():
            continue
        # membrane: dark shell ~15 nm thick (double membrane as two dips)
        depth = (1.0 - rho) * (radii[1:].mean() * nm)  # approx. distance to surface (voxels)
        shell = np.exp(-((depth - 1.0) ** 2) / 0.8) + np.exp(-((depth - 3.5 * 5 * nm) ** 2) / 0.8)
        # cristae: parallel dark sheets across the short axis, spacing ~40 nm
        g = np.stack([grid[i][box] - centre[i] for i in range(3)], -1) @ rot
        cristae = (np.cos(2 * np.pi * g[..., 0] / (40 * nm)) > 0.75) & (depth > 25 * nm)
        sub = raw[box]
        sub[inside] = 120 + 6 * rng.normal()  # darker matrix
        sub[cristae & inside] = 175  # light cristae lumen between dark membranes
        sub -= 80 * shell * (rho < 1.05)
        labels[box][inside] = 1

    # distractors: vesicles with a single dark membrane and a light lumen
    for _ in range(3 * n_mito):
        r = rng.uniform(25, 60)
        centre, rot, box = place(np.array([r, r, r]))
        rho = _ellipsoid_field(shape, centre, np.array([r, r, r]) * nm, rot, box)
        sub = raw[box]
        sub[rho < 1] = 175
        sub -= 75 * np.exp(-(((rho - 1) * r * nm) ** 2) / 0.8)
    # flat membrane sheets (ER/plasma-membrane like)
    for _ in range(n_mito):
        normal = _random_rotation(rng)[:, 0]
        c = rng.uniform([0, 0, 0], shape)
        d = np.tensordot(normal, grid - c[:, None, None, None], axes=1)
        bend = 0.002 * ((grid[1] - c[1]) ** 2) * rng.uniform(-1, 1)
        dist = np.abs(d + bend)
        extent = np.linalg.norm(grid - c[:, None, None, None], axis=0) < rng.uniform(40, 90)
        raw -= 70 * np.exp(-(dist**2) / 0.9) * extent * (labels == 0)

    raw = ndimage.gaussian_filter(raw, 0.8)
    raw += rng.normal(0, noise, shape)
    return Phantom(np.clip(raw, 0, 255).astype(np.uint8), labels, (voxel_size,) * 3)
