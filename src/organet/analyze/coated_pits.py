"""Clathrin-coated pit and vesicle morphometry with early/late staging (seed Figs S8, S9).

For every connected component of a coated-structure prediction:

1. crop the raw volume around it (``margin_nm``), smooth it (``smooth_nm``) and threshold the dark
   voxels (membrane + coat) with Otsu's method;
2. **pit or vesicle**: the dark component that holds the object is followed outwards; if it
   continues as a membrane (dark voxels outside the dilated prediction) to an interior face of
   the crop, the coat is connected through a neck to a membrane → pit, else → vesicle;
3. **endocytic or internal** (pits): the foot of the pit axis on the membrane plane lies within
   ``endocytic_max_dist_nm`` of the cell-mask boundary → endocytic, else internal; no cell mask →
   ``"unknown"``; vesicles are ``"free"``;
4. sections through the structure's axis (the membrane normal for pits, the principal axis for
   vesicles), ``n_sections`` angles around it, sampled in nm (anisotropic voxels are handled):
   Otsu mask → skeleton → :class:`skimage.measure.EllipseModel` (major, minor, eccentricity);
   intensity profiles with half-level edge crossings give height, neck width and FWHM;
5. staging: seeded k-means (k = 2) on standardized (height, neck width) of endocytic pits;
   the cluster with the larger mean height is "late".

Exact metric definitions: ``docs/analysis-coated-pits.md``. All lengths are nm.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.measure import EllipseModel
from skimage.morphology import skeletonize

from organet.errors import IncompatibleError, InputError
from organet.volumes import Volume
from organet.volumes.atomic import atomic_path, write_table
from organet.volumes.foreground import foreground, prediction_kind
from organet.volumes.geometry import check_same_voxel_size

COLUMNS = [
    "id", "class", "location", "stage", "n_voxels", "volume_nm3",
    "centroid_z_nm", "centroid_y_nm", "centroid_x_nm",
    "height_nm", "neck_width_nm", "fwhm_nm", "major_nm", "minor_nm", "eccentricity", "diameter_nm",
    "circle_diameter_nm",
    "dist_to_cell_boundary_nm", "normal_z", "normal_y", "normal_x",
    "bbox_z0", "bbox_y0", "bbox_x0", "bbox_z1", "bbox_y1", "bbox_x1", "flags", "reason",
]  # fmt: skip


@dataclass
class CoatedPitParams:
    """Parameters of :func:`analyze_coated_pits` (lengths in nm)."""

    margin_nm: float = 60.0  # crop margin around each object
    smooth_nm: float = 5.0  # Gaussian sigma (nm) of the raw used for Otsu and pit/vesicle connectivity
    profile_smooth_nm: float = 2.5  # Gaussian sigma (nm) of the raw sampled on sections for the metrics
    min_voxels: int = 27  # smaller components are skipped (flag too_small)
    pred_threshold: float = 0.5  # foreground = probability >= this (organet uint8 probabilities are value/255)
    endocytic_max_dist_nm: float = 50.0  # pit foot within this of the cell-mask boundary → endocytic
    membrane_exclusion_nm: float = 15.0  # skeleton points closer than this to the membrane plane are not the pit's
    n_sections: int = 6  # sections (angles) around the axis; metrics are medians over sections
    near_nm: float = 20.0  # the Otsu threshold is computed on the object and the voxels within this of it
    seed: int = 0  # k-means seed


@dataclass
class CoatedPitResult:
    """Per-structure table (``table``), early/late group statistics (``stage_stats``) and notes."""

    table: pd.DataFrame
    stage_stats: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    params: CoatedPitParams = field(default_factory=CoatedPitParams)
    sections: dict[int, dict[str, Any]] = field(default_factory=dict)  # id → example section (for figures)


# ----------------------------------------------------------------------------------------------
# small helpers


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _perp_basis(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros(3)
    a[int(np.argmin(np.abs(n)))] = 1.0
    e1 = _unit(np.cross(n, a))
    return e1, np.cross(n, e1)


def _band(p: np.ndarray, start: int, step: int, thr: float) -> tuple[float, float] | None:
    """From a bright sample ``start`` (``p >= thr``), walk in direction ``step`` and return the
    sub-sample positions where the profile first falls below ``thr`` (entering the dark band)
    and rises back above it (leaving the band), by linear interpolation. The exit is NaN when
    the band runs to the end of the profile; None when no band is entered."""
    n = len(p)
    if not 0 <= start < n or p[start] < thr:
        return None
    i = start
    while 0 <= i + step < n and p[i + step] >= thr:
        i += step
    if not 0 <= i + step < n:
        return None
    a, b = float(p[i]), float(p[i + step])
    e_in = i + step * ((a - thr) / (a - b) if a != b else 0.0)
    j = i + step
    while 0 <= j + step < n and p[j + step] < thr:
        j += step
    if not 0 <= j + step < n:
        return e_in, math.nan
    a, b = float(p[j]), float(p[j + step])
    e_out = j + step * ((thr - a) / (b - a) if a != b else 0.0)
    return e_in, e_out


def _midline(img: np.ndarray, center_px: tuple[float, float], thr: float, n_rays: int = 90) -> np.ndarray:
    """Sub-pixel mid-line of the dark band around ``center_px`` (row, col) of a section: along
    ``n_rays`` rays, the mid-point between where the intensity enters and leaves the Otsu mask.
    Returns (row, col) points in pixels; rays that start dark or never leave the band give none."""
    r = np.arange(0.0, float(max(img.shape)), 0.25)
    out = []
    for phi in np.linspace(0.0, 2 * np.pi, n_rays, endpoint=False):
        rows = center_px[0] + r * math.sin(phi)
        cols = center_px[1] + r * math.cos(phi)
        inside = (rows >= 0) & (rows <= img.shape[0] - 1) & (cols >= 0) & (cols <= img.shape[1] - 1)
        if not inside.all():
            last = int(np.argmin(inside)) if inside[0] else 0
            rows, cols = rows[:last], cols[:last]
        if len(rows) < 4:
            continue
        prof = ndi.map_coordinates(img, np.vstack([rows, cols]), order=1, mode="nearest")
        band = _band(prof, 0, 1, thr)
        if band is None or not np.isfinite(band[1]):
            continue
        m = 0.5 * (band[0] + band[1]) * 0.25
        out.append((center_px[0] + m * math.sin(phi), center_px[1] + m * math.cos(phi)))
    return np.asarray(out, dtype=float).reshape(-1, 2)


def _estimate(pts: np.ndarray) -> Any:
    """EllipseModel.from_estimate without numpy warnings on degenerate point sets (falsy on failure)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return EllipseModel.from_estimate(pts)


def _level_width(mid: np.ndarray, level: float, max_gap: float) -> float | None:
    """Width (max - min of s) where the mid-line polyline (points (s, t) in ray order) crosses
    the line t = ``level``; segments longer than ``max_gap`` (missing rays) are not joined."""
    if len(mid) < 2:
        return None
    a, b = mid[:-1], mid[1:]
    if len(mid) > 2 and np.linalg.norm(mid[-1] - mid[0]) <= max_gap:  # closed loop
        a, b = np.vstack([a, mid[-1:]]), np.vstack([b, mid[:1]])
    ok = np.linalg.norm(b - a, axis=1) <= max_gap
    cross = ok & ((a[:, 1] - level) * (b[:, 1] - level) <= 0) & (a[:, 1] != b[:, 1])
    if cross.sum() < 2:
        return None
    fr = (level - a[cross, 1]) / (b[cross, 1] - a[cross, 1])
    xs = a[cross, 0] + fr * (b[cross, 0] - a[cross, 0])
    if xs.min() >= 0 or xs.max() <= 0:
        return None
    return float(xs.max() - xs.min())


def _model(mid: np.ndarray, skel: np.ndarray) -> Any:
    pts = mid if len(mid) >= 8 else skel
    if len(pts) < 6:
        return None
    m = _estimate(pts)
    return m if m else None


def _section_ellipse(
    img: np.ndarray,
    s: np.ndarray,
    t: np.ndarray,
    thr: float,
    objs: np.ndarray,
    center_px: tuple[float, float] | None,
    t_min: float | None,
) -> tuple[Any, Any, Any]:
    """Otsu mask → skeleton of the dark component holding the object → ellipse; then refit on the
    sub-pixel mid-line around the first ellipse's centre (or ``center_px``). Points with t below
    ``t_min`` (nm; the flat membrane of a pit) are left out. Returns (fit, skeleton nm, mid-line nm)."""
    dark = img < thr
    lab, _ = ndi.label(dark)
    ids = np.unique(lab[objs & dark])
    ids = ids[ids > 0]
    if not len(ids):
        return None, np.empty((0, 2)), np.empty((0, 2))
    sk = skeletonize(np.isin(lab, ids))
    ti, si = np.nonzero(sk)
    skel = np.c_[s[si], t[ti]]
    if t_min is not None:
        skel = skel[skel[:, 1] > t_min]
    step = float(s[1] - s[0])
    first = _fit_ellipse(skel)
    cen = center_px
    circ = _fit_circle(skel) if len(skel) >= 6 else None
    if circ is not None:  # centre of the least-squares circle through the skeleton (stable on short arcs)
        c_px = ((circ[1] - t[0]) / step, (circ[0] - s[0]) / step)
        ok = 0 <= c_px[0] < img.shape[0] - 1 and 0 <= c_px[1] < img.shape[1] - 1
        if ok and img[int(round(c_px[0])), int(round(c_px[1]))] >= thr:
            cen = c_px
    mid = np.empty((0, 2))
    if cen is not None:
        pts = _midline(img, cen, thr)
        if len(pts):
            mid = np.c_[s[0] + pts[:, 1] * step, t[0] + pts[:, 0] * step]
            # keep mid-line points of the object's own band (near the object in the section)
            near = ndi.binary_dilation(objs, iterations=2)
            ri = np.clip(np.rint(pts[:, 0]).astype(int), 0, img.shape[0] - 1)
            ci = np.clip(np.rint(pts[:, 1]).astype(int), 0, img.shape[1] - 1)
            mid = mid[near[ri, ci]]
            if t_min is not None:
                mid = mid[mid[:, 1] > t_min]
    fit = _fit_ellipse(mid) if len(mid) >= 8 else None
    if fit is None:
        fit, mid = first, np.empty((0, 2))
    return fit, skel, mid


def _fit_circle(points: np.ndarray) -> tuple[float, float, float] | None:
    """Least-squares (Kasa) circle through 2-D points: (centre x, centre y, diameter)."""
    if len(points) < 4:
        return None
    A = np.c_[2 * points, np.ones(len(points))]
    sol = np.linalg.lstsq(A, (points**2).sum(axis=1), rcond=None)[0]
    r2 = sol[2] + sol[0] ** 2 + sol[1] ** 2
    return (float(sol[0]), float(sol[1]), 2 * math.sqrt(r2)) if r2 > 0 else None


def _fit_ellipse(points: np.ndarray) -> tuple[float, float, float] | None:
    """(major, minor, eccentricity) of an ellipse fitted to 2-D points (nm), or None."""
    if len(points) < 6:
        return None
    model = _estimate(points)
    if not model:
        return None
    a, b = (float(v) for v in model.axis_lengths)
    a, b = max(a, b), min(a, b)
    if not (np.isfinite(a) and np.isfinite(b)) or b <= 0:
        return None
    return 2 * a, 2 * b, math.sqrt(max(0.0, 1.0 - (b / a) ** 2))


def fit_membrane_plane(points_nm: np.ndarray, step_nm: float, iterations: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares plane through membrane points (N × 3, nm), refitted ``iterations`` times on the
    points within 2.5 × the median absolute residual (at least ``step_nm``) of the previous fit, so dark
    voxels off the membrane (a neighbour's neck, blurred coat) do not tilt or shift it. Returns
    (a point on the plane, unit normal)."""
    pts = points_nm
    mc, n = pts.mean(axis=0), np.array([0.0, 1.0, 0.0])
    for _ in range(iterations + 1):
        mc = pts.mean(axis=0)
        _, _, vt = np.linalg.svd(pts - mc, full_matrices=False)
        n = _unit(vt[-1])
        res = np.abs((points_nm - mc) @ n)
        keep = res <= max(2.5 * float(np.median(res)), step_nm)
        if keep.sum() < 10 or keep.sum() == len(pts):
            break
        pts = points_nm[keep]
    return mc, n


def _membrane_line(img: np.ndarray, s: np.ndarray, t: np.ndarray, r_lat: float, thr: float) -> tuple[float, float]:
    """The membrane in one section (rows t, cols s, nm) beside the pit: on each side, beyond the
    pit's lateral radius ``r_lat``, the darkest sample of each column within 20 nm of t = 0, averaged
    over the columns; returns the line t = a + b s through the two sides (one side: offset only,
    none: (0, 0))."""
    step = float(s[1] - s[0])
    rows = np.abs(t) <= 20.0
    sides = []
    for sign in (-1.0, 1.0):
        cols = np.nonzero((sign * s > r_lat + 2 * step) & (sign * s <= r_lat + 40.0))[0]
        tm = []
        for c in cols:
            prof = img[rows, c]
            i = int(np.argmin(prof))
            if prof[i] < thr and 0 < i < len(prof) - 1:
                a, b, cc = float(prof[i - 1]), float(prof[i]), float(prof[i + 1])
                den = a - 2 * b + cc
                off = 0.5 * (a - cc) / den if den > 0 else 0.0
                tm.append((float(s[c]), float(t[rows][i]) + off * step))
        if len(tm) >= 2:
            arr = np.array(tm)
            sides.append((float(arr[:, 0].mean()), float(np.median(arr[:, 1]))))
    if len(sides) == 2:
        (s1, t1), (s2, t2) = sides
        b = (t2 - t1) / (s2 - s1)
        return t1 - b * s1, b
    if len(sides) == 1:
        return sides[0][1], 0.0
    return 0.0, 0.0


class _Crop:
    """Smoothed raw, Otsu threshold and sampling of sections in nm for one object's crop."""

    def __init__(
        self, raw: np.ndarray, origin_nm: np.ndarray, vs: np.ndarray, smooth_nm: float, profile_smooth_nm: float
    ) -> None:
        self.smooth = ndi.gaussian_filter(raw.astype(np.float32), smooth_nm / vs)
        self.meas = ndi.gaussian_filter(raw.astype(np.float32), profile_smooth_nm / vs)
        self.origin, self.vs = origin_nm, vs
        self.step = float(vs.min())
        lo, hi = np.percentile(self.smooth, [0.5, 99.5])
        if hi - lo < 1e-6:
            raise ValueError("raw crop has no contrast")
        self.thr = float(threshold_otsu(self.meas))

    def sample(
        self,
        values: np.ndarray,
        center: np.ndarray,
        u: np.ndarray,
        n: np.ndarray,
        s: np.ndarray,
        t: np.ndarray,
        order: int = 1,
    ) -> np.ndarray:
        pts = center[:, None, None] + u[:, None, None] * s[None, None, :] + n[:, None, None] * t[None, :, None]
        idx = (pts - self.origin[:, None, None]) / self.vs[:, None, None]
        return ndi.map_coordinates(values, idx, order=order, mode="nearest")


# ----------------------------------------------------------------------------------------------
# per-object measurement


def _measure_pit(
    crop: _Crop,
    obj: np.ndarray,
    p0: np.ndarray,
    n: np.ndarray,
    extent: float,
    prm: CoatedPitParams,
    r_lat: float = 0.0,
) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    step = crop.step
    half = int(math.ceil(extent / step))
    s = np.arange(-half, half + 1) * step
    t = np.arange(-half, half + 1) * step
    i0 = half  # index of s = 0 and t = 0
    e1, e2 = _perp_basis(n)
    heights, necks, fwhms, ells, circles = [], [], [], [], []
    why_h: list[str] = []
    why_n: list[str] = []
    flags: list[str] = []
    example: dict[str, Any] = {}
    for k in range(prm.n_sections):
        th = math.pi * k / prm.n_sections
        u = math.cos(th) * e1 + math.sin(th) * e2
        img = crop.sample(crop.meas, p0, u, n, s, t)  # rows: t, cols: s
        if k == 0:
            example = {"image": img, "s": s, "t": t, "thr": crop.thr}
        # the membrane in this section beside the pit: t = a + b s (corrects the plane's offset and tilt)
        a, b = _membrane_line(img, s, t, r_lat, crop.thr)
        # height: along the axis from the membrane line outwards, mid-line of the dark band
        ts = a + np.arange(0.0, t[-1] - a, step)
        axis = ndi.map_coordinates(img, np.vstack([(ts - t[0]) / step, np.full(len(ts), i0)]), order=1)
        h = None
        band = _band(axis, 0, 1, crop.thr)
        if band is not None and np.isfinite(band[1]):
            h = 0.5 * (band[0] + band[1]) * step
            heights.append(h)
        elif len(axis) and axis[0] < crop.thr:
            why_h.append("the axis is dark where it meets the membrane plane")
        elif band is None:
            why_h.append("no dark band along the axis inside the crop")
        else:
            why_h.append("the apex band runs out of the crop")
        # neck: lumen opening along the membrane line
        scale = math.sqrt(1.0 + b * b)
        row = ndi.map_coordinates(img, np.vstack([(a + b * s - t[0]) / step, np.arange(len(s))]), order=1)
        left, right = _band(row, i0, -1, crop.thr), _band(row, i0, 1, crop.thr)
        if left is not None and right is not None:
            necks.append((right[0] - left[0]) * step * scale)
        elif row[i0] < crop.thr:
            why_n.append("the lumen is closed (dark) where the axis meets the membrane plane")
        else:
            why_n.append("no pit wall inside the crop on one side of the axis")
        # ellipse: skeleton of the Otsu mask beyond the membrane, refined to the sub-pixel mid-line
        objs = crop.sample(obj.astype(np.float32), p0, u, n, s, t, order=0) > 0.5
        fit, skel, mid = _section_ellipse(
            img, s, t, crop.thr, objs, (i0 + (a + (h or 0.0) / 2) / step, i0), a + prm.membrane_exclusion_nm
        )
        if k == 0:
            example.update(obj=objs, skeleton=skel, midline=mid, ellipse=_model(mid, skel))
        if fit is not None:
            ells.append(fit)
        circ = _fit_circle(mid if len(mid) >= 8 else skel)
        if circ is not None:
            circles.append(circ[2])
        # FWHM: width of the band's mid-line at half the pit height
        if h is not None:
            w = _level_width(mid, a + h / 2, 3 * step)
            if w is not None:
                fwhms.append(w)
    m: dict[str, Any] = {}
    m["height_nm"] = float(np.median(heights)) if heights else math.nan
    m["neck_width_nm"] = float(np.median(necks)) if necks else math.nan
    m["fwhm_nm"] = float(np.median(fwhms)) if fwhms else math.nan
    if not heights:
        flags.append("no_apex")
    if not necks:
        flags.append("neck_closed_or_unresolved")
    if ells:
        arr = np.array(ells)
        m["major_nm"], m["minor_nm"], m["eccentricity"] = (float(v) for v in np.median(arr, axis=0))
    else:
        flags.append("ellipse_fit_failed")
        m["major_nm"] = m["minor_nm"] = m["eccentricity"] = math.nan
    m["diameter_nm"] = math.nan
    m["circle_diameter_nm"] = float(np.median(circles)) if circles else math.nan
    reasons = []
    if not heights:
        reasons.append("height: " + max(set(why_h), key=why_h.count))
    if not necks:
        reasons.append("neck: " + max(set(why_n), key=why_n.count))
    m["reason"] = "; ".join(reasons)
    example["height_nm"], example["neck_width_nm"], example["fwhm_nm"] = (
        m["height_nm"],
        m["neck_width_nm"],
        m["fwhm_nm"],
    )
    return m, flags, example


def _measure_vesicle(
    crop: _Crop, obj: np.ndarray, coords_nm: np.ndarray, extent: float, prm: CoatedPitParams
) -> tuple[dict[str, float], list[str], dict[str, Any]]:
    c = coords_nm.mean(axis=0)
    cov = np.cov((coords_nm - c).T) if len(coords_nm) > 3 else np.eye(3)
    w, v = np.linalg.eigh(cov)
    axis = v[:, -1]  # principal axis
    e1, e2 = _perp_basis(axis)
    half = int(math.ceil(extent / crop.step))
    s = np.arange(-half, half + 1) * crop.step
    ells, circles = [], []
    flags: list[str] = []
    example: dict[str, Any] = {}
    for k in range(max(1, prm.n_sections // 2)):
        th = math.pi * k / max(1, prm.n_sections // 2)
        u = math.cos(th) * e1 + math.sin(th) * e2
        img = crop.sample(crop.meas, c, u, axis, s, s)
        objs = crop.sample(obj.astype(np.float32), c, u, axis, s, s, order=0) > 0.5
        fit, skel, mid = _section_ellipse(img, s, s, crop.thr, objs, (half, half), None)
        if k == 0:
            example = {
                "image": img,
                "s": s,
                "t": s,
                "obj": objs,
                "thr": crop.thr,
                "skeleton": skel,
                "midline": mid,
                "ellipse": _model(mid, skel),
            }
        if fit is not None:
            ells.append(fit)
        circ = _fit_circle(mid if len(mid) >= 8 else skel)
        if circ is not None:
            circles.append(circ[2])
    m: dict[str, Any] = {"height_nm": math.nan, "neck_width_nm": math.nan, "fwhm_nm": math.nan, "reason": ""}
    m["circle_diameter_nm"] = float(np.median(circles)) if circles else math.nan
    if ells:
        arr = np.array(ells)
        m["major_nm"], m["minor_nm"], m["eccentricity"] = (float(x) for x in np.median(arr, axis=0))
        m["diameter_nm"] = 0.5 * (m["major_nm"] + m["minor_nm"])
    else:
        flags.append("ellipse_fit_failed")
        m["major_nm"] = m["minor_nm"] = m["eccentricity"] = m["diameter_nm"] = math.nan
    return m, flags, example


# ----------------------------------------------------------------------------------------------
# main entry points


def _check_volumes(pred: Volume, raw: Volume, cell_mask: Volume | None) -> None:
    for name, vol in (("raw", raw), ("cell mask", cell_mask)):
        if vol is None:
            continue
        if tuple(vol.shape) != tuple(pred.shape):
            raise IncompatibleError(
                f"{name} shape {tuple(vol.shape)} differs from the prediction shape {tuple(pred.shape)}"
            )
        check_same_voxel_size(vol.voxel_size, pred.voxel_size, f"the {name}", "the prediction")
    if len(pred.shape) != 3:
        raise InputError(f"expected 3-D (z, y, x) volumes, got shape {tuple(pred.shape)}")


def analyze_coated_pits(
    pred: Volume,
    raw: Volume,
    cell_mask: Volume | None = None,
    params: CoatedPitParams | None = None,
    **overrides: Any,
) -> CoatedPitResult:
    """Measure every coated structure (connected component of ``pred``) in ``raw``.

    ``pred`` is a binary mask, a probability map (float, or uint8 value/255 as written by
    ``organet predict``; foreground ≥ ``pred_threshold``) or a label image, read by
    :func:`organet.volumes.foreground.foreground`; ``cell_mask`` (> 0 inside the cell) decides
    endocytic vs internal pits. Returns a :class:`CoatedPitResult`; raises ``ValueError`` for
    mismatched volumes or an empty prediction.
    """
    prm = params or CoatedPitParams()
    for k, v in overrides.items():
        if not hasattr(prm, k):
            raise InputError(f"unknown coated-pit parameter {k!r}")
        setattr(prm, k, v)
    _check_volumes(pred, raw, cell_mask)
    vs = np.asarray(pred.voxel_size, dtype=float)
    shape = np.asarray(pred.shape)
    fg = foreground(np.asarray(pred.read()), prediction_kind(pred), prm.pred_threshold)
    labels, n_obj = ndi.label(fg, structure=np.ones((3, 3, 3)))
    if n_obj == 0:
        raise InputError("the prediction has no foreground voxels: no coated structures to measure")
    notes: list[str] = []
    if cell_mask is None:
        notes.append("no cell mask given: endocytic/internal location of pits is 'unknown'")
    margin = np.ceil(prm.margin_nm / vs).astype(int)
    rows: list[dict[str, Any]] = []
    sections: dict[int, dict[str, Any]] = {}
    for oid, sl in enumerate(ndi.find_objects(labels), start=1):
        lo = np.array([x.start for x in sl])
        hi = np.array([x.stop for x in sl])
        row: dict[str, Any] = {c: math.nan for c in COLUMNS}
        flags: list[str] = []
        obj_full = labels[sl] == oid
        nvox = int(obj_full.sum())
        cen = (np.argwhere(obj_full).mean(axis=0) + lo) * vs + np.asarray(pred.offset)
        row.update(
            id=oid,
            n_voxels=nvox,
            volume_nm3=nvox * float(np.prod(vs)),
            stage="",
            location="free",
            centroid_z_nm=cen[0],
            centroid_y_nm=cen[1],
            centroid_x_nm=cen[2],
            bbox_z0=lo[0],
            bbox_y0=lo[1],
            bbox_x0=lo[2],
            bbox_z1=hi[0],
            bbox_y1=hi[1],
            bbox_x1=hi[2],
        )
        if np.any(lo == 0) or np.any(hi == shape):
            flags.append("touches_border")
        if nvox < prm.min_voxels:
            row["class"] = "skipped"
            flags.append(f"too_small ({nvox} voxels < min_voxels {prm.min_voxels})")
            row["flags"] = ";".join(flags)
            row["reason"] = "not measured: fewer voxels than min_voxels"
            rows.append(row)
            continue
        c0 = np.maximum(lo - margin, 0)
        c1 = np.minimum(hi + margin, shape)
        csl = tuple(slice(int(a), int(b)) for a, b in zip(c0, c1))
        clipped_lo, clipped_hi = (lo - margin) < 0, (hi + margin) > shape
        try:
            crop = _Crop(np.asarray(raw.read(csl)), c0 * vs, vs, prm.smooth_nm, prm.profile_smooth_nm)
        except ValueError as e:
            row["class"] = "skipped"
            flags.append(f"no_contrast ({e})")
            row["flags"] = ";".join(flags)
            row["reason"] = "not measured: the raw crop has no contrast"
            rows.append(row)
            continue
        lab_c = labels[csl]
        obj = lab_c == oid
        # Otsu on the object and its surroundings (within near_nm): dark band vs light neighbours, not
        # cytosol vs a bright extracellular space that fills much of the crop
        near = ndi.distance_transform_edt(~obj, sampling=vs) <= prm.near_nm
        crop.thr = float(threshold_otsu(crop.meas[near]))
        all_pred = ndi.binary_dilation(lab_c > 0, iterations=2)
        dark = crop.smooth < crop.thr
        dlab, _ = ndi.label(dark)
        ids = np.unique(dlab[obj & dark])
        ids = ids[ids > 0]
        comp = np.isin(dlab, ids) if len(ids) else np.zeros_like(dark)
        extra = comp & ~all_pred
        # does the dark component continue as a membrane to an interior face of the crop?
        faces = []
        for ax in range(3):
            if not clipped_lo[ax]:
                faces.append(np.take(extra, 0, axis=ax).sum())
            if not clipped_hi[ax]:
                faces.append(np.take(extra, extra.shape[ax] - 1, axis=ax).sum())
        is_pit = bool(faces) and max(faces) >= 3
        coords = (np.argwhere(obj) + c0) * vs  # nm, volume frame (offset added for reporting only)
        centroid = coords.mean(axis=0)
        extent = float(np.linalg.norm((hi - lo) * vs)) / 2 + prm.margin_nm / 2
        if is_pit:
            row["class"] = "pit"
            mc, n = fit_membrane_plane((np.argwhere(extra) + c0) * vs, float(vs.min()))
            if np.dot(centroid - mc, n) < 0:
                n = -n
            p0 = centroid - np.dot(centroid - mc, n) * n
            row.update(normal_z=n[0], normal_y=n[1], normal_x=n[2])
            rel = coords - centroid
            r_lat = float(np.sqrt(np.max(np.sum(rel**2, axis=1) - (rel @ n) ** 2)))
            m, f2, ex = _measure_pit(crop, obj, p0, n, extent, prm, r_lat)
            if m["reason"] and (any(clipped_lo) or any(clipped_hi)):
                m["reason"] += " (the crop is clipped by the volume border)"
            if cell_mask is None:
                row["location"] = "unknown"
            else:
                cm = np.asarray(cell_mask.read(csl)) > 0
                bnd = cm & ~ndi.binary_erosion(cm, border_value=1)
                if bnd.any():
                    bpts = (np.argwhere(bnd) + c0) * vs
                    dist = float(np.min(np.linalg.norm(bpts - p0, axis=1)))
                else:
                    dist = math.inf
                row["dist_to_cell_boundary_nm"] = dist
                row["location"] = "endocytic" if dist <= prm.endocytic_max_dist_nm else "internal"
        else:
            row["class"] = "vesicle"
            m, f2, ex = _measure_vesicle(crop, obj, coords, extent, prm)
        row.update(m)
        flags += f2
        row["flags"] = ";".join(flags)
        rows.append(row)
        sections[oid] = ex
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["flags"] = table["flags"].fillna("").astype(str)
    table["reason"] = table["reason"].fillna("").astype(str)
    stats = stage_endocytic_pits(table, prm.seed, notes)
    return CoatedPitResult(table, stats, notes, (float(vs[0]), float(vs[1]), float(vs[2])), prm, sections)


def stage_endocytic_pits(table: pd.DataFrame, seed: int = 0, notes: list[str] | None = None) -> pd.DataFrame:
    """Cluster endocytic pits into early/late on standardized (height, neck width) with seeded
    k-means (k = 2); the cluster with the larger mean height is "late". Writes ``table.stage``
    in place and returns per-stage statistics."""
    from scipy.cluster.vq import kmeans2

    notes = notes if notes is not None else []
    sel = (table["class"] == "pit") & (table["location"] == "endocytic")
    sel &= np.isfinite(table["height_nm"].astype(float)) & np.isfinite(table["neck_width_nm"].astype(float))
    table["stage"] = table["stage"].fillna("").astype(object)
    X = table.loc[sel, ["height_nm", "neck_width_nm"]].to_numpy(float)
    if len(X) < 2:
        notes.append(f"staging skipped: {len(X)} measurable endocytic pit(s), need at least 2")
        return pd.DataFrame()
    sd = X.std(axis=0)
    sd[sd == 0] = 1.0
    Xs = (X - X.mean(axis=0)) / sd
    best = None
    for k in range(10):  # seeded restarts; keep the lowest within-cluster sum of squares
        cent, lab = kmeans2(Xs, 2, seed=seed + k, minit="++")
        if len(np.unique(lab)) < 2:
            continue
        sse = float(((Xs - cent[lab]) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, lab)
    if best is None:
        notes.append("staging: all endocytic pits fell into one cluster")
        table.loc[sel, "stage"] = "early"
    else:
        lab = best[1]
        late = int(np.argmax([X[lab == j, 0].mean() for j in (0, 1)]))
        table.loc[sel, "stage"] = np.where(lab == late, "late", "early")
    cols = ["height_nm", "neck_width_nm", "fwhm_nm", "major_nm", "minor_nm", "eccentricity"]
    sub = table.loc[sel]
    out = []
    for st in ("early", "late"):
        g = sub[sub["stage"] == st]
        r: dict[str, Any] = {"stage": st, "count": int(len(g))}
        for c in cols:
            vals = g[c].astype(float)
            r[f"{c}_mean"], r[f"{c}_sd"], r[f"{c}_median"] = vals.mean(), vals.std(), vals.median()
        out.append(r)
    return pd.DataFrame(out)


def write_outputs(result: CoatedPitResult, output_dir: str | os.PathLike[str], plots: bool = True) -> list[Path]:
    """Write ``coated_pits.csv``, ``coated_pits.parquet``, ``stage_stats.csv``, ``summary.json``
    and the PNG figures into ``output_dir`` (each file written to a temporary name, then renamed)."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def _atomic(name: str, writer: Any) -> None:
        dst = out / name
        with atomic_path(dst) as tmp:
            writer(tmp)
        written.append(dst)

    written += write_table(result.table, out, "coated_pits")
    _atomic("stage_stats.csv", lambda p: result.stage_stats.to_csv(p, index=False))
    t = result.table
    summary = {
        "n_objects": int(len(t)),
        "counts": {f"{a}/{b}": int(v) for (a, b), v in t.groupby(["class", "location"]).size().items()}
        if len(t)
        else {},
        "stages": {str(k): int(v) for k, v in t.loc[t["stage"] != "", "stage"].value_counts().items()},
        "notes": result.notes,
        "voxel_size_nm": list(result.voxel_size),
        "params": vars(result.params),
    }
    _atomic("summary.json", lambda p: p.write_text(json.dumps(summary, indent=2, default=str)))
    if plots:
        from .coated_pits_plots import write_figures

        written += write_figures(result, out)
    return written
