"""Nuclear-pore membrane diameters across a nuclear envelope (seed Fig S7), made precise.

Steps (all geometry in physical nm, world coordinates ``offset + index * voxel_size``,
axis order (z, y, x), so anisotropic voxels and prediction/raw volumes of different
resolution are handled):

1. **Pores**: connected components (26-connectivity) of the prediction's foreground
   (:func:`organet.volumes.foreground.foreground`: probabilities ``>= threshold``, uint8
   written by ``organet predict`` as value/255, masks and labels ``> 0``), components smaller than
   ``min_size_nm3`` dropped. Components touching the volume border are flagged ``border``.
2. **Centroids** (nm) and the **envelope surface**: an alpha-shape triangulation of the
   centroids: 3-D Delaunay (Qhull, joggled so coplanar sets work), keep every Delaunay
   triangle whose circumradius is ``<= alpha_nm`` (default: 2 x the median
   nearest-neighbour distance of the centroids). For points sampled on a sheet (an
   envelope) the tetrahedra are slivers with huge circumspheres, so the triangles are the
   alpha complex. Each triangle gets an orthonormal frame (normal, two in-plane axes);
   normals are oriented away from the nucleus centre (given, or the centre of a sphere
   least-squares fitted to the centroids; for a flat set, along the plane's normal).
   A pore's normal is the area-weighted mean of its triangles' normals, or (flag
   ``normal_from_nearest``) the normal of the nearest triangle.
3. **Realignment**: raw is resampled (trilinear, ``scipy.ndimage.map_coordinates``, nm ->
   voxel coordinates of the raw volume) in a local frame (e1, e2, n) centred on the pore.
4. **Mid-plane**: the en-face plane goes through the middle of the envelope. Along the
   normal, intensity profiles averaged over rings (10 nm wide) outside the pore show the
   two membranes as minima; their midpoint per ring is fitted by ``a + b rho^2`` (the
   envelope curves away from the tangent plane) and the plane is shifted by ``a``.
5. **Diameter**: on the mid-plane, 10 intensity profiles through the centre, 18 degrees
   apart (each averaged over a ``line_width_nm`` x ``line_width_nm`` cross-section),
   smoothed by a Gaussian (``smooth_nm``); on each side of the centre the most prominent
   local minimum with radius in [``min_diameter_nm``/2, ``max_diameter_nm``/2] and a
   prominence of at least ``min_prominence`` x the noise SD of the smoothed profile
   (:func:`voxel_noise` of raw around the pore / sqrt(voxels averaged)) is the membrane,
   refined to sub-sample by a parabola. The axis diameter is
   the distance between the two minima; an axis without a valid minimum on both sides is
   NaN and counted as missing, never invented. The pore centre is then moved to the
   least-squares centre of the axis midpoints (``recenter``) and the profiles are measured again.
   Pore diameter = mean of the valid axes, with their SD.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage, signal
from scipy.spatial import Delaunay, QhullError, cKDTree

from organet.errors import InputError
from organet.volumes.atomic import write_table
from organet.volumes.foreground import foreground, prediction_kind

N_AXES = 10
AXIS_ANGLES_DEG = np.arange(N_AXES) * 18.0
AXIS_COLUMNS = [f"diameter_{int(a):03d}deg_nm" for a in AXIS_ANGLES_DEG]


@dataclass
class PoreParams:
    """Parameters of :func:`analyze_pores` (all lengths in nm)."""

    min_size_nm3: float = 10_000.0
    threshold: float = 0.5
    alpha_nm: float | None = None
    nucleus_centre_nm: Sequence[float] | None = None
    min_diameter_nm: float = 30.0
    max_diameter_nm: float = 200.0
    smooth_nm: float = 3.0
    line_width_nm: float = 5.0
    min_prominence: float = 3.0
    step_nm: float = 0.5
    envelope_halfwidth_nm: float = 40.0
    max_midplane_shift_nm: float = 20.0
    min_valid_axes: int = 6
    recenter: bool = True
    view_step_nm: float = 2.0


@dataclass
class Surface:
    """Alpha-shape triangulation of the pore centroids (nm)."""

    points: np.ndarray  # (n, 3)
    triangles: np.ndarray  # (m, 3) indices into points
    normals: np.ndarray  # (m, 3) unit, oriented outward
    axes1: np.ndarray  # (m, 3) in-plane unit axis (first edge direction)
    axes2: np.ndarray  # (m, 3) normal x axis1
    alpha_nm: float
    reference: np.ndarray | None  # nucleus centre used to orient, or None (flat: plane normal)


@dataclass
class PoreResult:
    table: pd.DataFrame
    surface: Surface | None
    views: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> en-face / side views
    messages: list[str] = field(default_factory=list)
    params: PoreParams = field(default_factory=PoreParams)
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)


# ---------------------------------------------------------------------------- components


def find_pores(
    mask: np.ndarray, voxel_size: Sequence[float], offset: Sequence[float], min_size_nm3: float
) -> pd.DataFrame:
    """Connected components (26-conn.) of ``mask`` >= ``min_size_nm3``: label, centroid nm, size, border."""
    vs = np.asarray(voxel_size, float)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    rows = []
    if n:
        objs = ndimage.find_objects(labels)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        coms = ndimage.center_of_mass(mask, labels, np.arange(1, n + 1))
        for lab in range(1, n + 1):
            vol = sizes[lab] * float(np.prod(vs))
            if vol < min_size_nm3:
                continue
            sl = objs[lab - 1]
            border = any(s.start == 0 or s.stop == dim for s, dim in zip(sl, mask.shape))
            c = np.asarray(offset, float) + np.asarray(coms[lab - 1]) * vs
            rows.append(
                {
                    "label": lab,
                    "centroid_z_nm": c[0],
                    "centroid_y_nm": c[1],
                    "centroid_x_nm": c[2],
                    "n_voxels": int(sizes[lab]),
                    "volume_nm3": vol,
                    "border": bool(border),
                }
            )
    cols = ["label", "centroid_z_nm", "centroid_y_nm", "centroid_x_nm", "n_voxels", "volume_nm3", "border"]
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------------------- surface


def _circumradius(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    ab, ac, bc = (np.linalg.norm(x, axis=-1) for x in (b - a, c - a, c - b))
    area2 = np.linalg.norm(np.cross(b - a, c - a), axis=-1)  # twice the area
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(area2 > 0, ab * ac * bc / (2 * area2), np.inf)


def fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Least-squares sphere (centre, radius) through ``points``; None if ill-conditioned."""
    A = np.c_[2 * points, np.ones(len(points))]
    b = (points**2).sum(1)
    sol, *_, sv = np.linalg.lstsq(A, b, rcond=None)
    if sv[-1] <= 1e-9 * sv[0]:
        return None
    centre = sol[:3]
    r2 = sol[3] + centre @ centre
    return (centre, float(np.sqrt(r2))) if r2 > 0 else None


def build_surface(
    points: np.ndarray, alpha_nm: float | None = None, nucleus_centre_nm: Sequence[float] | None = None
) -> tuple[Surface | None, str | None]:
    """Alpha-shape triangulation of ``points`` (n, 3) in nm. Returns (surface, problem)."""
    pts = np.asarray(points, float)
    n = len(pts)
    if n < 4:
        return None, f"{n} pore(s): an envelope surface needs at least 4 centroids"
    centred = pts - pts.mean(0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    extent = sv[0] / np.sqrt(n)
    if extent == 0 or sv[1] <= 1e-6 * sv[0]:
        return None, "the pore centroids are collinear (or coincide): no envelope surface"
    flat = sv[2] <= 1e-6 * sv[0]
    if alpha_nm is None:
        d, _ = cKDTree(pts).query(pts, k=2)
        alpha_nm = 2.0 * float(np.median(d[:, 1]))
    try:
        if flat:  # exactly coplanar: triangulate in the plane
            tri2 = Delaunay(centred @ vt[:2].T).simplices
            faces = tri2
        else:
            simp = Delaunay(pts, qhull_options="QJ Qbb").simplices
            faces = np.concatenate([simp[:, [0, 1, 2]], simp[:, [0, 1, 3]], simp[:, [0, 2, 3]], simp[:, [1, 2, 3]]])
            faces = np.unique(np.sort(faces, axis=1), axis=0)
    except (QhullError, ValueError) as e:
        return None, f"Delaunay triangulation of the pore centroids failed: {str(e).splitlines()[0]}"
    a, b, c = pts[faces[:, 0]], pts[faces[:, 1]], pts[faces[:, 2]]
    keep = _circumradius(a, b, c) <= alpha_nm
    faces, a, b, c = faces[keep], a[keep], b[keep], c[keep]
    if not len(faces):
        return None, f"no triangle with circumradius <= alpha = {alpha_nm:.1f} nm: increase alpha_nm"
    nrm = np.cross(b - a, c - a)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    ref = None
    if nucleus_centre_nm is not None:
        ref = np.asarray(nucleus_centre_nm, float)
    elif not flat:
        sph = fit_sphere(pts)
        if sph is not None and sph[1] < 50 * extent:
            ref = sph[0]
    if ref is not None:
        sign = np.sign(np.einsum("ij,ij->i", (a + b + c) / 3 - ref, nrm))
    else:  # nearly flat: agree with the plane normal (sign fixed so its largest component is positive)
        pn = vt[2] * np.sign(vt[2][np.argmax(np.abs(vt[2]))])
        sign = np.sign(nrm @ pn)
    sign[sign == 0] = 1
    nrm *= sign[:, None]
    ax1 = (b - a) / np.linalg.norm(b - a, axis=1, keepdims=True)
    ax2 = np.cross(nrm, ax1)
    return Surface(pts, faces, nrm, ax1, ax2, float(alpha_nm), ref), None


def pore_normals(surface: Surface) -> tuple[np.ndarray, np.ndarray]:
    """Per-point normal from the incident triangles, else the nearest triangle's normal.

    Each incident triangle (corner v, edges e1, e2) contributes its oriented normal with
    weight |e1 x e2| / (|e1|^2 |e2|^2) (Max 1999): exact for points on a sphere, also at the
    edge of the patch where the triangle fan is one-sided (area weights tilt there).
    Returns (normals (n, 3), from_nearest (n,) bool)."""
    pts, faces = surface.points, surface.triangles
    acc = np.zeros_like(pts)
    for i in range(3):
        v, b, c = (pts[faces[:, (i + k) % 3]] for k in range(3))
        e1, e2 = b - v, c - v
        w = np.linalg.norm(np.cross(e1, e2), axis=1) / ((e1**2).sum(1) * (e2**2).sum(1))
        np.add.at(acc, faces[:, i], surface.normals * w[:, None])
    norm = np.linalg.norm(acc, axis=1)
    nearest = norm < 1e-300
    out = np.zeros_like(pts)
    out[~nearest] = acc[~nearest] / norm[~nearest, None]
    if nearest.any():
        a, b, c = (pts[faces[:, i]] for i in range(3))
        _, idx = cKDTree((a + b + c) / 3).query(pts[nearest])
        out[nearest] = surface.normals[idx]
    return out, nearest


# --------------------------------------------------------------------------- resampling


def local_frame(normal: np.ndarray) -> np.ndarray:
    """Rows (e1, e2, n): an orthonormal right-handed frame with n the given normal."""
    n = normal / np.linalg.norm(normal)
    helper = np.eye(3)[np.argmin(np.abs(n))]
    e1 = np.cross(n, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(n, e1)
    return np.stack([e1, e2, n])


class RawSampler:
    """Trilinear sampling of a (lazy) raw volume at world nm points, reading only a box."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.vs = np.asarray(raw.voxel_size, float)
        self.off = np.asarray(raw.offset, float)
        self.shape = np.asarray(raw.shape)

    def __call__(self, points_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values at ``points_nm`` (..., 3) and a mask of the points outside the volume.

        Outside points take the value of the nearest border voxel (flat: no false minima)."""
        idx = (points_nm.reshape(-1, 3) - self.off) / self.vs
        outside = np.any((idx < -0.5) | (idx > self.shape - 0.5), axis=1)
        lo = np.clip(np.floor(idx.min(0)).astype(int) - 1, 0, self.shape - 1)
        hi = np.clip(np.ceil(idx.max(0)).astype(int) + 2, lo + 1, self.shape)
        block = np.asarray(self.raw.read(tuple(slice(a, b) for a, b in zip(lo, hi))), np.float32)
        vals = ndimage.map_coordinates(block, (idx - lo).T, order=1, mode="nearest")
        return vals.reshape(points_nm.shape[:-1]), outside.reshape(points_nm.shape[:-1])


# ------------------------------------------------------------------------------ minima


def _smooth(profile: np.ndarray, sigma_samples: float) -> np.ndarray:
    return ndimage.gaussian_filter1d(profile, sigma_samples, mode="nearest") if sigma_samples > 0 else profile


def find_membrane_minimum(s: np.ndarray, smooth: np.ndarray, lo: float, hi: float, prominence: float) -> float:
    """Position (unit of ``s``) of the most prominent minimum of ``smooth`` with lo <= |s| <= hi.

    NaN when no local minimum inside the window reaches ``prominence`` (intensity units)."""
    win = np.flatnonzero((np.abs(s) >= lo) & (np.abs(s) <= hi))
    if len(win) < 3:
        return np.nan
    peaks, props = signal.find_peaks(-smooth, prominence=prominence)
    ok = np.isin(peaks, win[1:-1])  # interior of the window: an edge value is not a minimum
    if not ok.any():
        return np.nan
    peaks, prom = peaks[ok], props["prominences"][ok]
    k = peaks[np.argmax(prom)]
    y0, y1, y2 = smooth[k - 1], smooth[k], smooth[k + 1]
    den = y0 - 2 * y1 + y2
    frac = 0.5 * (y0 - y2) / den if den > 0 else 0.0
    return float(s[k] + np.clip(frac, -0.5, 0.5) * (s[1] - s[0]))


def voxel_noise(sampler: RawSampler, centre: np.ndarray, radius_nm: float = 80.0) -> float:
    """Robust per-voxel noise SD of raw around ``centre``: MAD of second differences / sqrt(6).

    Second differences of white noise have variance 6 sigma^2; the smooth image (and the
    few voxels on membranes) barely change the median absolute value. The smallest of
    the three axes' estimates is used (least structure)."""
    idx = (np.asarray(centre) - sampler.off) / sampler.vs
    r = radius_nm / sampler.vs
    lo = np.clip(np.floor(idx - r).astype(int), 0, sampler.shape - 1)
    hi = np.clip(np.ceil(idx + r).astype(int) + 1, lo + 1, sampler.shape)
    blk = np.asarray(sampler.raw.read(tuple(slice(a, b) for a, b in zip(lo, hi))), np.float64)
    est = []
    for ax in range(3):
        if blk.shape[ax] >= 3:
            d2 = np.diff(blk, n=2, axis=ax)
            est.append(1.4826 * np.median(np.abs(d2 - np.median(d2))) / np.sqrt(6))
    return float(min(est)) if est else 0.0


# ----------------------------------------------------------------------------- per pore


def _axis_profiles(sampler: RawSampler, centre: np.ndarray, frame: np.ndarray, p: PoreParams):
    L = p.max_diameter_nm / 2 + 20
    s = np.arange(-L, L + p.step_nm / 2, p.step_nm)
    w = np.linspace(-p.line_width_nm / 2, p.line_width_nm / 2, 3)
    ang = np.radians(AXIS_ANGLES_DEG)
    u = np.cos(ang)[:, None] * frame[0] + np.sin(ang)[:, None] * frame[1]  # (10, 3)
    v = -np.sin(ang)[:, None] * frame[0] + np.cos(ang)[:, None] * frame[1]
    n = frame[2]
    pts = (
        centre
        + s[None, :, None, None, None] * u[:, None, None, None, :]
        + w[None, None, :, None, None] * v[:, None, None, None, :]
        + w[None, None, None, :, None] * n
    )
    vals, outside = sampler(pts)
    in_window = np.abs(s) <= p.max_diameter_nm / 2 + p.smooth_nm
    return s, u, vals.mean(axis=(2, 3)), bool(outside[:, in_window].any())


def _measure_axes(s, profiles, p: PoreParams, prominence: float):
    sig = p.smooth_nm / p.step_nm
    lefts, rights = np.full(N_AXES, np.nan), np.full(N_AXES, np.nan)
    lo, hi = p.min_diameter_nm / 2, p.max_diameter_nm / 2
    neg, pos = s < 0, s > 0
    for k, prof in enumerate(profiles):
        sm = _smooth(prof, sig)
        lefts[k] = find_membrane_minimum(s[neg], sm[neg], lo, hi, prominence)
        rights[k] = find_membrane_minimum(s[pos], sm[pos], lo, hi, prominence)
    return lefts, rights


def profile_noise(voxel_sd: float, voxel_size: np.ndarray, p: PoreParams) -> float:
    """Noise SD of a smoothed axis profile: voxel SD / sqrt(independent voxels averaged).

    A profile point averages a line_width^2 cross-section and the Gaussian smoothing spans
    an effective length 2 sqrt(pi) smooth_nm; each counts in units of the (geometric-mean)
    voxel size, at least 1."""
    v = float(np.prod(voxel_size) ** (1 / 3))
    n_eff = max(1.0, p.line_width_nm / v) ** 2 * max(1.0, 2 * np.sqrt(np.pi) * p.smooth_nm / v)
    return voxel_sd / np.sqrt(n_eff)


def _midplane_shift(sampler: RawSampler, centre, frame, rho_min: float, p: PoreParams, prominence: float) -> float:
    """Offset (nm, along n) of the envelope mid-plane at the pore axis, NaN if not found."""
    H = p.envelope_halfwidth_nm
    t = np.arange(-H, H + p.step_nm / 2, 1.0)
    rho_max = rho_min + 80
    rings = np.arange(rho_min, rho_max, 10.0)
    ang = np.radians(np.arange(0, 360, 15.0))
    mids, rr = [], []
    for r0 in rings:
        rad = np.array([r0 + 2.5, r0 + 7.5])
        lat = (np.cos(ang)[:, None, None] * frame[0] + np.sin(ang)[:, None, None] * frame[1]) * rad[None, :, None]
        pts = centre + lat[:, :, None, :] + t[None, None, :, None] * frame[2]
        vals, outside = sampler(pts)
        if outside.mean() > 0.2:
            continue
        prof = vals.mean(axis=(0, 1))
        sm = _smooth(prof, p.smooth_nm)
        below = find_membrane_minimum(t[t < 0], sm[t < 0], 2.0, H - 1, prominence)
        above = find_membrane_minimum(t[t > 0], sm[t > 0], 2.0, H - 1, prominence)
        if np.isfinite(below) and np.isfinite(above):
            mids.append((below + above) / 2)
            rr.append(r0 + 5)
    if len(mids) < 2:
        return np.nan
    A = np.c_[np.ones(len(rr)), np.asarray(rr) ** 2]
    coef, *_ = np.linalg.lstsq(A, np.asarray(mids), rcond=None)
    return float(coef[0])


def measure_pore(
    sampler: RawSampler, centre: np.ndarray, normal: np.ndarray, p: PoreParams, keep_views: bool = True
) -> dict[str, Any]:
    """Mid-plane, 10 axis diameters and views of one pore (centre/normal in nm)."""
    frame = local_frame(normal)
    flags: list[str] = []
    c = np.asarray(centre, float).copy()
    sd = voxel_noise(sampler, c)
    prominence = p.min_prominence * profile_noise(sd, sampler.vs, p)
    # first pass on the centroid plane, for a rough radius
    s, u, prof, outside = _axis_profiles(sampler, c, frame, p)
    lefts, rights = _measure_axes(s, prof, p, prominence)
    d0 = np.nanmedian(rights - lefts) if np.isfinite(rights - lefts).any() else p.max_diameter_nm
    shift = _midplane_shift(sampler, c, frame, d0 / 2 + p.smooth_nm + 20, p, prominence)
    if not np.isfinite(shift):
        flags.append("midplane_not_found")
        shift = 0.0
    elif abs(shift) > p.max_midplane_shift_nm:
        flags.append("midplane_shift_clipped")
        shift = float(np.clip(shift, -p.max_midplane_shift_nm, p.max_midplane_shift_nm))
    c = c + shift * frame[2]
    for it in range(2 if p.recenter else 1):
        s, u, prof, outside = _axis_profiles(sampler, c, frame, p)
        lefts, rights = _measure_axes(s, prof, p, prominence)
        valid = np.isfinite(lefts) & np.isfinite(rights)
        if it == 0 and p.recenter and valid.sum() >= 3:
            mid = ((lefts + rights) / 2)[valid]  # offset of the true centre along each axis
            move = np.linalg.lstsq(u[valid], mid, rcond=None)[0]  # min-norm: lies in the en-face plane
            move = move - (move @ frame[2]) * frame[2]
            if np.linalg.norm(move) < p.max_diameter_nm / 4:
                c = c + move
    diam = rights - lefts
    valid = np.isfinite(diam)
    if outside:
        flags.append("profiles_outside_raw")
    if valid.sum() < p.min_valid_axes:
        flags.append("few_valid_axes")
    out = {
        "centre": c,
        "frame": frame,
        "midplane_shift_nm": shift,
        "diameters": diam,
        "noise_sd": sd,
        "prominence": prominence,
        "lefts": lefts,
        "rights": rights,
        "flags": flags,
    }
    if keep_views:
        out["views"] = _views(sampler, c, frame, p)
        out["views"].update({"lefts": lefts, "rights": rights, "angles_deg": AXIS_ANGLES_DEG})
    return out


def _views(sampler: RawSampler, centre, frame, p: PoreParams) -> dict[str, Any]:
    L = p.max_diameter_nm / 2 + 20
    g = np.arange(-L, L + 1e-6, p.view_step_nm)
    t = np.arange(-p.envelope_halfwidth_nm * 1.5, p.envelope_halfwidth_nm * 1.5 + 1e-6, p.view_step_nm)
    ya, xa = np.meshgrid(g, g, indexing="ij")
    enface, _ = sampler(centre + ya[..., None] * frame[1] + xa[..., None] * frame[0])
    ta, ga = np.meshgrid(t, g, indexing="ij")
    side1, _ = sampler(centre + ta[..., None] * frame[2] + ga[..., None] * frame[0])
    side2, _ = sampler(centre + ta[..., None] * frame[2] + ga[..., None] * frame[1])
    return {
        "enface": enface.astype(np.float32),
        "side_e1": side1.astype(np.float32),
        "side_e2": side2.astype(np.float32),
        "extent_nm": L,
        "depth_nm": float(t[-1]),
    }


# --------------------------------------------------------------------------------- main


def analyze_pores(
    pred: Any,
    raw: Any,
    min_size_nm3: float = 10_000.0,
    *,
    keep_views: bool = True,
    params: PoreParams | None = None,
    **kwargs: Any,
) -> PoreResult:
    """Measure every pore of ``pred`` (a Volume of pore probability/mask) on ``raw`` (a Volume).

    Keyword arguments are :class:`PoreParams` fields. Raises ``ValueError`` when the
    prediction holds no pore. With fewer than 4 pores, or collinear centroids, there is no
    surface: the table is returned with NaN normals/diameters and the flag ``no_surface``.
    """
    p = params or PoreParams()
    p = PoreParams(**{**p.__dict__, "min_size_nm3": min_size_nm3, **kwargs})
    if p.min_diameter_nm <= 0 or p.max_diameter_nm <= p.min_diameter_nm:
        raise InputError(f"need 0 < min_diameter_nm < max_diameter_nm, got {p.min_diameter_nm}, {p.max_diameter_nm}")
    mask = foreground(np.asarray(pred.read()), prediction_kind(pred), p.threshold)
    if not mask.any():
        raise InputError(
            f"the pore prediction {getattr(pred, 'path', '') or ''} is empty at threshold "
            f"{p.threshold}: no pores to measure".replace("  ", " ")
        )
    comps = find_pores(mask, pred.voxel_size, pred.offset, p.min_size_nm3)
    if comps.empty:
        raise InputError(
            f"no pore of at least {p.min_size_nm3:g} nm^3 in the prediction "
            f"({int(mask.sum())} foreground voxels): lower --min-size-nm3"
        )
    pts = comps[["centroid_z_nm", "centroid_y_nm", "centroid_x_nm"]].to_numpy()
    messages: list[str] = []
    surface, problem = build_surface(pts, p.alpha_nm, p.nucleus_centre_nm)
    n = len(comps)
    normals = np.full((n, 3), np.nan)
    nearest = np.zeros(n, bool)
    if surface is None:
        messages.append(f"no envelope surface: {problem}; normals and diameters not measured")
    else:
        normals, nearest = pore_normals(surface)
    sampler = RawSampler(raw)
    rows, views = [], {}
    for i, (_, comp) in enumerate(comps.iterrows()):
        flags = ["border"] if comp["border"] else []
        row: dict[str, Any] = {"id": i + 1, **comp.to_dict()}
        row.update({"normal_z": normals[i, 0], "normal_y": normals[i, 1], "normal_x": normals[i, 2]})
        diam = np.full(N_AXES, np.nan)
        centre = pts[i]
        shift, sd = np.nan, np.nan
        if surface is None:
            flags.append("no_surface")
        else:
            if nearest[i]:
                flags.append("normal_from_nearest")
            m = measure_pore(sampler, pts[i], normals[i], p, keep_views)
            diam, centre, shift, sd = m["diameters"], m["centre"], m["midplane_shift_nm"], m["noise_sd"]
            flags += m["flags"]
            if keep_views:
                views[i + 1] = m["views"]
        valid = np.isfinite(diam)
        row.update(
            {
                "centre_z_nm": centre[0],
                "centre_y_nm": centre[1],
                "centre_x_nm": centre[2],
                "midplane_shift_nm": shift,
                "raw_noise_sd": sd,
                "diameter_mean_nm": float(diam[valid].mean()) if valid.any() else np.nan,
                "diameter_sd_nm": float(diam[valid].std(ddof=1)) if valid.sum() > 1 else np.nan,
                "n_valid_axes": int(valid.sum()),
                **dict(zip(AXIS_COLUMNS, diam)),
                "flags": ";".join(flags),
            }
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    order = [
        "id",
        "label",
        "centroid_z_nm",
        "centroid_y_nm",
        "centroid_x_nm",
        "normal_z",
        "normal_y",
        "normal_x",
        "diameter_mean_nm",
        "diameter_sd_nm",
        "n_valid_axes",
        *AXIS_COLUMNS,
        "flags",
        "border",
        "n_voxels",
        "volume_nm3",
        "centre_z_nm",
        "centre_y_nm",
        "centre_x_nm",
        "midplane_shift_nm",
        "raw_noise_sd",
    ]
    table = table[order]
    nb = int(table["border"].sum())
    if nb:
        messages.append(f"{nb} pore(s) touch the volume border (flag 'border'): they may be cut")
    vs = pred.voxel_size
    return PoreResult(table, surface, views, messages, p, (float(vs[0]), float(vs[1]), float(vs[2])))


def write_outputs(result: PoreResult, output_dir: Any, gallery: bool = False) -> dict[str, str]:
    """Write ``pores.csv``, ``pores.parquet`` and the PNG plots into ``output_dir``.

    Returns {name: path}. Files are written under temporary names and renamed.
    """
    from pathlib import Path

    from .pores_plots import write_plots

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv, parquet = write_table(result.table, out, "pores")
    written: dict[str, str] = {"csv": str(csv), "parquet": str(parquet)}
    written.update(write_plots(result, out, gallery=gallery))
    return written
