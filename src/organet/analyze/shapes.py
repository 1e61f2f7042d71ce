"""Shape measurements of every object of a label volume, in nm (issue 18).

For each label > 0 of ``labels`` (e.g. ``DIR/labels.zarr`` written by ``organet instances``), on the
crop of its bounding box padded by one voxel (so only that crop is in memory):

* ``volume_nm3``: voxels × voxel volume;
* ``surface_area_nm2``: area of the marching-cubes surface (level 0.5, the voxel spacing in nm) of the
  object's mask smoothed with a Gaussian of σ = ``surface_sigma_vox`` voxels along each axis (the binary
  staircase over-estimates a ball's area by 8–13 %; with σ = 0.7 voxel balls of radius 30–150 nm come
  out within −3…+2 % at 5 nm and at 10 × 5 × 5 nm voxels; smaller objects shrink); the crop is padded with
  background, so an object cut by the volume border gets a closed surface there;
* ``sphericity``: π^(1/3) (6 V)^(2/3) / A (1 for a ball);
* ``axis_major_nm`` ≥ ``axis_mid_nm`` ≥ ``axis_minor_nm``: full axis lengths of the solid ellipsoid with the
  object's second moments (voxel-centre coordinates in nm, plus the variance v²/12 of a voxel of size v
  along each axis): 2 √(5 λ) for each eigenvalue λ of that covariance; ``elongation`` = major / mid,
  ``flatness`` = mid / minor (1 for a ball);
* ``skeleton_length_nm``, ``branch_points``, ``end_points``: TEASAR skeleton (kimimaro, with the
  voxel spacing as anisotropy), its vertices smoothed along the skeleton (``skeleton_smooth_iterations``
  of Laplacian smoothing of vertices with two neighbours, to remove the voxel staircase), length = sum of
  edge lengths in nm. TEASAR paths end on the object surface, so a tube's skeleton length is its
  tip-to-tip length (a ball's is about its diameter). Branch points are clusters of adjacent skeleton
  vertices with three or more neighbours; end points are vertices with one neighbour;
* ``nn_distance_nm``, ``nn_id``: **surface-to-surface** distance to the nearest other object, the
  smallest distance between vertices of the two objects' marching-cubes surfaces (0 for objects that touch);
* with ``cell_mask`` (labels > 0 inside a cell, or a nucleus; 0 outside): ``cell_id`` (the mask label
  covering most of the object's voxels, 0 outside every one), ``mask_fraction`` (fraction of the object's
  voxels with a mask label > 0) and ``dist_to_mask_boundary_nm``: over the object's voxels, the smallest
  distance between voxel centres to the nearest voxel with another mask label (inside a cell: to its
  boundary; outside a nucleus: to the nucleus);
* with ``raw``: ``mean_intensity``, ``std_intensity`` of the raw voxels of the object;
* ``cut_by_border``: the bounding box touches a face of the volume (the object may be cut).

Coordinates are (z, y, x); ``centroid_*_nm`` are world nm (with the volume offset), ``bbox_*_vox`` voxel
indices of the label volume (half-open). Limits: bounding boxes are found slab by slab and each object
is read alone, but the cell mask (when given) is read whole for its distance transform, and every object's
surface vertices are kept in memory for the nearest-neighbour search.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from organet.errors import InputError
from organet.progress import ProgressFn, advance, announce
from organet.volumes import Volume
from organet.volumes.atomic import atomic_path, write_table
from organet.volumes.geometry import check_same_voxel_size

COLUMNS = [
    "id", "voxels", "volume_nm3", "surface_area_nm2", "sphericity",
    "axis_major_nm", "axis_mid_nm", "axis_minor_nm", "elongation", "flatness",
    "skeleton_length_nm", "branch_points", "end_points",
    "nn_distance_nm", "nn_id",
    "cell_id", "mask_fraction", "dist_to_mask_boundary_nm",
    "mean_intensity", "std_intensity",
    "centroid_z_nm", "centroid_y_nm", "centroid_x_nm",
    "bbox_z0_vox", "bbox_y0_vox", "bbox_x0_vox", "bbox_z1_vox", "bbox_y1_vox", "bbox_x1_vox",
    "cut_by_border",
]  # fmt: skip

CELL_COLUMNS = [
    "cell_id", "objects", "cut_by_border", "complete", "total_volume_nm3",
    "mean_volume_nm3", "median_volume_nm3", "mean_skeleton_length_nm", "median_skeleton_length_nm",
    "total_skeleton_length_nm", "branch_points", "branch_points_per_object", "fraction_branched",
    "mean_sphericity", "mean_elongation", "median_nn_distance_nm",
]  # fmt: skip


@dataclass
class ShapeParams:
    """Parameters of :func:`measure_shapes` (see the module docstring)."""

    surface_sigma_vox: float = 0.7  # Gaussian σ (voxels, each axis) before marching cubes
    teasar_scale: float = 3.0  # TEASAR: invalidate a tube of scale × radius + const around each path
    teasar_const_nm: float | None = None  # None: 2 × the largest voxel size
    skeleton_smooth_iterations: int = 10  # Laplacian smoothing of skeleton vertices (staircase removal)
    slab_voxels: int = 64  # z thickness of the slabs read to find bounding boxes


@dataclass
class ShapesResult:
    """Per-object table (``table``), per-cell summary (``cells``), notes and the settings used."""

    table: pd.DataFrame
    cells: pd.DataFrame
    voxel_size: tuple[float, float, float]
    notes: list[str] = field(default_factory=list)
    params: ShapeParams = field(default_factory=ShapeParams)


# ----------------------------------------------------------------------------------------------
# bounding boxes, slab by slab


def bounding_boxes(
    labels: Volume, slab: int = 64, progress: ProgressFn | None = None
) -> dict[int, tuple[slice, slice, slice]]:
    """Bounding box (voxel slices, half-open) of every label > 0, reading ``slab`` z planes at a time."""
    nz = labels.shape[0]
    starts = list(range(0, nz, max(1, slab)))
    boxes: dict[int, list[int]] = {}
    announce(progress, "bounding boxes", len(starts))
    for z0 in starts:
        a = labels.read((slice(z0, min(z0 + slab, nz)), slice(None), slice(None)))
        ids, inv = np.unique(a, return_inverse=True)
        inv = inv.reshape(a.shape)
        for k, sl in enumerate(ndi.find_objects(inv.astype(np.int64))):
            lab = int(ids[k + 1]) if k + 1 < len(ids) else None
            if sl is None or lab is None or lab <= 0:
                continue
            lo = [sl[0].start + z0, sl[1].start, sl[2].start]
            hi = [sl[0].stop + z0, sl[1].stop, sl[2].stop]
            if lab in boxes:
                b = boxes[lab]
                boxes[lab] = [min(b[0], lo[0]), min(b[1], lo[1]), min(b[2], lo[2])] + [
                    max(b[3], hi[0]),
                    max(b[4], hi[1]),
                    max(b[5], hi[2]),
                ]
            else:
                boxes[lab] = lo + hi
        advance(progress, "bounding boxes", 1, len(starts))
    return {k: (slice(b[0], b[3]), slice(b[1], b[4]), slice(b[2], b[5])) for k, b in sorted(boxes.items())}


# ----------------------------------------------------------------------------------------------
# per-object measurements


def _padded_crop(vol: Volume, box: tuple[slice, ...], fill: float = 0) -> np.ndarray:
    """``vol`` over ``box`` grown by one voxel on every side; voxels beyond the volume are ``fill``."""
    shape = vol.shape
    lo = [s.start - 1 for s in box]
    hi = [s.stop + 1 for s in box]
    src = tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(lo, hi, shape))
    data = vol.read(src)
    pad = [(s.start - a, b - s.stop) for s, a, b in zip(src, lo, hi)]
    return np.pad(data, pad, constant_values=fill)


def ellipsoid_axes(coords_nm: np.ndarray, voxel_size: Sequence[float]) -> tuple[float, float, float]:
    """Full axis lengths (nm, major ≥ mid ≥ minor) of the solid ellipsoid with the second moments of
    the voxels at ``coords_nm`` (N × 3, voxel centres in nm; each voxel counts as a box of ``voxel_size``)."""
    vs = np.asarray(voxel_size, float)
    c = coords_nm - coords_nm.mean(axis=0)
    cov = c.T @ c / max(len(c), 1) + np.diag(vs**2) / 12.0
    lam = np.sort(np.clip(np.linalg.eigvalsh(cov), 0.0, None))[::-1]
    ax = 2.0 * np.sqrt(5.0 * lam)
    return float(ax[0]), float(ax[1]), float(ax[2])


def surface_mesh(mask: np.ndarray, voxel_size: Sequence[float], sigma_vox: float) -> tuple[np.ndarray, float]:
    """Marching-cubes surface (level 0.5) of ``mask`` (padded with background) smoothed with σ =
    ``sigma_vox`` voxels: (vertices in nm relative to element (0, 0, 0), area in nm²)."""
    from skimage.measure import marching_cubes, mesh_surface_area

    pad = max(1, int(math.ceil(3 * sigma_vox)))
    f = np.pad(mask, pad).astype(np.float32)
    if sigma_vox > 0:
        f = ndi.gaussian_filter(f, sigma_vox)
    if f.max() <= 0.5:  # too thin to survive the smoothing: use the binary surface
        f = np.pad(mask, pad).astype(np.float32)
    verts, faces, _, _ = marching_cubes(f, 0.5, spacing=tuple(float(v) for v in voxel_size))
    verts = verts - pad * np.asarray(voxel_size, float)
    return verts.astype(np.float64), float(mesh_surface_area(verts, faces))


def skeleton_graph(mask: np.ndarray, voxel_size: Sequence[float], prm: ShapeParams) -> tuple[float, int, int]:
    """(length nm, branch points, end points) of the TEASAR skeleton of ``mask`` (see the module docstring)."""
    import kimimaro

    vs = tuple(float(v) for v in voxel_size)
    const = prm.teasar_const_nm if prm.teasar_const_nm is not None else 2.0 * max(vs)
    sk = kimimaro.skeletonize(
        np.ascontiguousarray(mask, dtype=np.uint8),
        teasar_params={"scale": prm.teasar_scale, "const": const},
        anisotropy=vs,
        dust_threshold=0,
        fix_branching=True,
        fix_borders=False,
        progress=False,
        parallel=1,
    )
    if 1 not in sk or len(sk[1].vertices) < 2 or len(sk[1].edges) == 0:
        return 0.0, 0, 0
    v = np.asarray(sk[1].vertices, dtype=np.float64)
    e = np.asarray(sk[1].edges, dtype=np.int64)
    e = e[e[:, 0] != e[:, 1]]
    deg = np.bincount(e.ravel(), minlength=len(v))
    free = deg == 2
    for _ in range(prm.skeleton_smooth_iterations):
        acc = np.zeros_like(v)
        np.add.at(acc, e[:, 0], v[e[:, 1]])
        np.add.at(acc, e[:, 1], v[e[:, 0]])
        v[free] = 0.5 * v[free] + 0.25 * acc[free]
    length = float(np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1).sum())
    junction = deg >= 3
    n_branch = 0
    if junction.any():
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        jj = e[junction[e[:, 0]] & junction[e[:, 1]]]
        idx = np.flatnonzero(junction)
        remap = np.full(len(v), -1)
        remap[idx] = np.arange(len(idx))
        g = coo_matrix((np.ones(len(jj)), (remap[jj[:, 0]], remap[jj[:, 1]])), shape=(len(idx), len(idx)))
        n_branch = int(connected_components(g, directed=False)[0])
    return length, n_branch, int((deg == 1).sum())


def _aligned(vol: Volume, labels: Volume, name: str) -> Volume:
    """``vol`` over the world box of ``labels`` (same voxel size; a larger volume is cropped)."""
    check_same_voxel_size(vol.voxel_size, labels.voxel_size, f"the {name} {vol.path or '<in memory>'}", "the labels")
    if tuple(vol.shape) == tuple(labels.shape) and np.allclose(vol.offset, labels.offset):
        return vol
    return vol.crop_nm(*labels.bounds_nm)


def _mask_distance(mask: np.ndarray, voxel_size: Sequence[float]) -> np.ndarray | None:
    """Per voxel: distance (nm, between voxel centres) to the nearest voxel with another mask label;
    None when the mask has a single label everywhere."""
    import edt

    if len(np.unique(mask)) < 2:
        return None
    vs = tuple(float(v) for v in voxel_size)
    lab = np.ascontiguousarray(mask.astype(np.uint32))
    inside = edt.edt(lab, anisotropy=vs, black_border=False, parallel=1)
    outside = edt.edt(np.ascontiguousarray((lab == 0).astype(np.uint8)), anisotropy=vs, black_border=False, parallel=1)
    return np.where(lab > 0, inside, outside).astype(np.float32)


def _nearest_neighbours(verts: dict[int, np.ndarray]) -> dict[int, tuple[float, int]]:
    """Surface-to-surface nearest neighbour of every object: bounding spheres order the candidates,
    exact vertex-to-vertex distances (k-d trees) decide."""
    ids = [k for k, v in verts.items() if len(v)]
    if len(ids) < 2:
        return {}
    cen = np.array([verts[k].mean(axis=0) for k in ids])
    rad = np.array([np.linalg.norm(verts[k] - c, axis=1).max() for k, c in zip(ids, cen)])
    trees: dict[int, cKDTree] = {}
    out: dict[int, tuple[float, int]] = {}
    for i, a in enumerate(ids):
        lower = np.linalg.norm(cen - cen[i], axis=1) - rad - rad[i]
        lower[i] = np.inf
        best, best_id = math.inf, -1
        for j in np.argsort(lower):
            if lower[j] >= best or not np.isfinite(lower[j]):
                break
            b = ids[j]
            if b not in trees:
                trees[b] = cKDTree(verts[b])
            d = float(trees[b].query(verts[a], k=1)[0].min())
            if d < best:
                best, best_id = d, b
        out[a] = (best, best_id)
    return out


def measure_shapes(
    labels: Volume,
    *,
    raw: Volume | None = None,
    cell_mask: Volume | None = None,
    params: ShapeParams | None = None,
    progress: ProgressFn | None = None,
) -> ShapesResult:
    """Measure every object (label > 0) of ``labels`` in nm; see the module docstring for each column.

    Parameters
    ----------
    labels
        Integer label volume (z, y, x); voxel size in nm from its metadata.
    raw
        Optional raw volume with the same voxel size covering ``labels`` (cropped to its world box):
        mean and SD intensity per object.
    cell_mask
        Optional mask or label image (> 0 inside a cell or nucleus) with the same voxel size covering
        ``labels``: cell assignment, distance to the mask boundary and one summary row per cell.
    params
        :class:`ShapeParams`; defaults when None.
    progress
        :data:`~organet.progress.ProgressFn` (stages "bounding boxes", "shapes").

    Returns
    -------
    ShapesResult
        ``table`` (one row per object, :data:`COLUMNS`) and ``cells`` (:data:`CELL_COLUMNS`).

    Raises
    ------
    InputError
        Labels that are not integers, or no object in the volume.
    IncompatibleError
        Raw or mask with another voxel size.
    """
    prm = params or ShapeParams()
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != np.bool_:
        raise InputError(
            f"labels {labels.path or '<in memory>'} have dtype {labels.dtype}; expected integer labels "
            "(run `organet instances` on a mask or probability first)"
        )
    vs = np.asarray(labels.voxel_size, float)
    vst = labels.voxel_size
    shape = np.asarray(labels.shape)
    notes: list[str] = []
    raw = _aligned(raw, labels, "raw volume") if raw is not None else None
    mask_arr = dist_field = None
    if cell_mask is not None:
        cm = _aligned(cell_mask, labels, "cell mask")
        mask_arr = np.asarray(cm.read())
        if mask_arr.dtype.kind == "f":
            mask_arr = mask_arr > 0.5
        mask_arr = mask_arr.astype(np.int64) if mask_arr.dtype != np.bool_ else mask_arr.astype(np.uint8)
        dist_field = _mask_distance(mask_arr, vst)
        if dist_field is None:
            notes.append("the cell mask has one value everywhere: no mask boundary, distances are NaN")
    boxes = bounding_boxes(labels, prm.slab_voxels, progress)
    if not boxes:
        raise InputError(f"labels {labels.path or '<in memory>'} hold no object (no voxel > 0)")
    rows: list[dict[str, Any]] = []
    verts: dict[int, np.ndarray] = {}
    announce(progress, "shapes", len(boxes))
    for oid, box in boxes.items():
        lab = _padded_crop(labels, box)
        obj = lab == oid
        lo = np.array([s.start for s in box]) - 1  # crop origin (voxels)
        idx = np.argwhere(obj)
        coords = (idx + lo) * vs
        n = len(idx)
        row: dict[str, Any] = {"id": oid, "voxels": n, "volume_nm3": n * float(np.prod(vs))}
        cen = coords.mean(axis=0) + np.asarray(labels.offset)
        row.update(centroid_z_nm=cen[0], centroid_y_nm=cen[1], centroid_x_nm=cen[2])
        for a, s in zip("zyx", box):
            row[f"bbox_{a}0_vox"], row[f"bbox_{a}1_vox"] = s.start, s.stop
        row["cut_by_border"] = bool(any(s.start == 0 for s in box) or any(s.stop == n_ for s, n_ in zip(box, shape)))
        v, area = surface_mesh(obj, vst, prm.surface_sigma_vox)
        verts[oid] = (v + lo * vs).astype(np.float32)
        row["surface_area_nm2"] = area
        row["sphericity"] = math.pi ** (1 / 3) * (6 * row["volume_nm3"]) ** (2 / 3) / area if area > 0 else math.nan
        ax = ellipsoid_axes(coords, vst)
        row.update(axis_major_nm=ax[0], axis_mid_nm=ax[1], axis_minor_nm=ax[2])
        row["elongation"] = ax[0] / ax[1] if ax[1] > 0 else math.nan
        row["flatness"] = ax[1] / ax[2] if ax[2] > 0 else math.nan
        length, nb, ne = skeleton_graph(obj, vst, prm)
        row.update(skeleton_length_nm=length, branch_points=nb, end_points=ne)
        core_obj, gbox = obj[1:-1, 1:-1, 1:-1], box  # the bounding box itself
        if raw is not None:
            vals = raw.read(gbox)[core_obj].astype(np.float64)
            row["mean_intensity"], row["std_intensity"] = float(vals.mean()), float(vals.std())
        if mask_arr is not None:
            m = mask_arr[gbox][core_obj]
            row["mask_fraction"] = float((m > 0).mean())
            ids_, cnt = np.unique(m[m > 0], return_counts=True)
            row["cell_id"] = int(ids_[np.argmax(cnt)]) if len(ids_) and cnt.max() * 2 >= n else 0
            row["dist_to_mask_boundary_nm"] = (
                float(dist_field[gbox][core_obj].min()) if dist_field is not None else math.nan
            )
        rows.append(row)
        advance(progress, "shapes", 1, len(boxes))
    nn = _nearest_neighbours(verts)
    for row in rows:
        d, j = nn.get(row["id"], (math.nan, -1))
        row["nn_distance_nm"], row["nn_id"] = d, j
    table = pd.DataFrame(rows, columns=COLUMNS)
    if cell_mask is None:
        table["cell_id"] = 0
    table["cell_id"] = table["cell_id"].fillna(0).astype(np.int64)
    table["nn_id"] = table["nn_id"].astype(np.int64)
    n_cut = int(table["cut_by_border"].sum())
    if n_cut:
        notes.append(f"{n_cut} object(s) touch the volume border and may be cut (column cut_by_border)")
    if len(table) < 2:
        notes.append("a single object: no nearest-neighbour distance")
    return ShapesResult(table, cell_summary(table), (float(vs[0]), float(vs[1]), float(vs[2])), notes, prm)


def cell_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per ``cell_id`` (0 = outside every mask label, or the whole volume without a mask).

    ``objects`` counts every object, ``cut_by_border`` those touching the volume border; the size,
    shape and connectivity statistics are over the ``complete`` objects only (not cut by the border):
    ``branch_points_per_object`` (total branch points / complete objects) and ``fraction_branched``
    (fraction of complete objects with at least one branch point) measure network connectivity.
    """
    out = []
    for cid, g in table.groupby("cell_id", sort=True):
        ok = g[~g["cut_by_border"].astype(bool)]
        n = len(ok)
        r: dict[str, Any] = {
            "cell_id": int(cid),
            "objects": len(g),
            "cut_by_border": len(g) - n,
            "complete": n,
            "total_volume_nm3": float(g["volume_nm3"].sum()),
        }
        r["mean_volume_nm3"] = float(ok["volume_nm3"].mean()) if n else math.nan
        r["median_volume_nm3"] = float(ok["volume_nm3"].median()) if n else math.nan
        r["mean_skeleton_length_nm"] = float(ok["skeleton_length_nm"].mean()) if n else math.nan
        r["median_skeleton_length_nm"] = float(ok["skeleton_length_nm"].median()) if n else math.nan
        r["total_skeleton_length_nm"] = float(ok["skeleton_length_nm"].sum())
        r["branch_points"] = int(ok["branch_points"].sum())
        r["branch_points_per_object"] = r["branch_points"] / n if n else math.nan
        r["fraction_branched"] = float((ok["branch_points"] > 0).mean()) if n else math.nan
        r["mean_sphericity"] = float(ok["sphericity"].mean()) if n else math.nan
        r["mean_elongation"] = float(ok["elongation"].mean()) if n else math.nan
        r["median_nn_distance_nm"] = float(ok["nn_distance_nm"].median()) if n else math.nan
        out.append(r)
    return pd.DataFrame(out, columns=CELL_COLUMNS)


def write_outputs(result: ShapesResult, output_dir: str | os.PathLike[str], plots: bool = True) -> list[Path]:
    """Write ``shapes.csv``, ``shapes.parquet``, ``cells.csv``, ``summary.json`` and (``plots``) the
    PNG figures into ``output_dir``, each to a temporary name renamed when complete."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def _atomic(name: str, writer: Any) -> None:
        with atomic_path(out / name) as tmp:
            writer(tmp)
        written.append(out / name)

    written += write_table(result.table, out, "shapes")
    _atomic("cells.csv", lambda p: result.cells.to_csv(p, index=False))
    summary = {
        "objects": len(result.table),
        "cut_by_border": int(result.table["cut_by_border"].sum()),
        "voxel_size_nm": list(result.voxel_size),
        "notes": result.notes,
        "params": asdict(result.params),
        "cells": json.loads(result.cells.to_json(orient="records")),
    }
    _atomic("summary.json", lambda p: p.write_text(json.dumps(summary, indent=2)))
    if plots:
        from .shapes_plots import write_figures

        written += write_figures(result, out)
    return written
