"""Organelle instances: whole-volume connected components computed blockwise
(on Dask or in-process), merged across block faces, with a per-object table.

One :class:`~organet.volumes.blocks.BlockPlan` (blocks = whole multiples of the label
chunks) drives four passes of :func:`~organet.blockwise.run_blocks`; each block's
result is recorded in the ledger ``OUTPUT.progress``, so a killed run resumes:

1. ``"label"``: label each block alone (``scipy.ndimage.label``) into a scratch zarr;
   return its label count, the first voxel (raster order) and the size of each label;
2. ``"merge faces"``: read each block with a one-voxel halo on its lower sides in
   global provisional ids and collect the pairs of different ids that touch under the
   connectivity (only pairs across block faces, edges and corners can differ);
3. on the client: connected components of that pair graph give the objects; the
   size filter (nm³) drops small ones; objects are numbered 1..K in raster order
   of their first voxel, so with no filter the labels equal ``scipy.ndimage.label``
   of the whole volume exactly; ``"relabel"`` rewrites each block with final ids;
4. ``"measure"``: per block statistics (voxels, coordinate sums, bounding box, raw
   intensity sum, probability sum and the marching-cubes surface of the cube cells whose
   lower corner lies in the block), summed per object on the client.

With an :class:`ObjectFilter` (``--min-radius``, ``--min-mean-probability``) a pass
``"filter"`` before the numbering finds, per block, which objects hold a voxel at least
``min_radius_nm`` from the background (the distance read with that much context, so it is
exact) and sums their probability; objects failing either rule are dropped like small ones.

With ``split`` (:class:`~organet.analyze.split.SplitParams`, ``--split watershed``), touching
objects are separated by a seeded watershed on the distance transform (rules in
:mod:`organet.analyze.split`), with three more passes between 3. and the relabel:

* ``"seeds"``: per block, read with a context of ``ceil(s / voxel)`` voxels, the cores
  ``distance >= s`` are labelled (like pass 1); ``"merge seeds"`` joins them across faces
  (like pass 2); the client drops seeds smaller than ``min_seed_size_nm3`` and numbers the rest;
* ``"flood"``: per block, read with ``context_nm`` of context, the watershed from the global
  seeds; foreground that no seed reaches (components without a seed) keeps its connected
  component. Objects are numbered as in connected-component mode (raster order of their
  first voxel), so an object crossing blocks has one id, and with enough context the labels
  equal a single pass over the whole volume byte for byte.

While running, everything lives in ``OUTPUT.partial``; the finished folder appears
(by rename) only when complete.

Coordinates are (z, y, x); ``_vox`` columns are voxel indices of the mask volume
(bounding box ``[z0, z1)`` etc.), ``_nm`` columns are world nm (voxel (0, 0, 0)
lies at the volume offset).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import ndimage

from organet.analyze.split import SplitParams, distance_nm, flood, halo_voxels, seed_cores
from organet.blockwise import run_blocks
from organet.blockwise.output import ResumableOutput, volume_identity
from organet.errors import IncompatibleError, InputError
from organet.progress import ProgressFn
from organet.volumes import Volume
from organet.volumes.atomic import atomic_path, fsync_chunks, remove_path, replace_path, temp_sibling
from organet.volumes.blocks import Block, BlockPlan, plan_blocks
from organet.volumes.foreground import Kind, as_probability, check_threshold, foreground, prediction_kind
from organet.volumes.geometry import Shape3, check_same_voxel_size
from organet.volumes.ome_zarr import create_ome_image, image_label_attrs, label_source

COLUMNS = [
    "id",
    "voxels",
    "volume_nm3",
    "surface_area_nm2",
    "centroid_z_nm",
    "centroid_y_nm",
    "centroid_x_nm",
    "bbox_z0_vox",
    "bbox_y0_vox",
    "bbox_x0_vox",
    "bbox_z1_vox",
    "bbox_y1_vox",
    "bbox_x1_vox",
    "mean_intensity",
    "mean_probability",
]

STAGES = ("label", "merge faces", "relabel", "measure")
SPLIT_STAGES = ("label", "merge faces", "seeds", "merge seeds", "flood", "relabel", "measure")
FILTER_STAGE = "filter"
"""The pass of an :class:`ObjectFilter`: after "merge faces" (after "flood" with a split)."""
_SCRATCH = "work/scratch.zarr"
_SEEDS = "work/seeds.zarr"
_SPLIT = "work/split.zarr"
_MAPPING = "work/mapping.npy"
_COMPONENTS = "work/components.npy"  # provisional foreground id -> component (1..C)
_SEED_MAP = "work/seed_map.npy"  # provisional seed id -> seed (1..S), 0 = dropped
_COMP_BOX = "work/component_bbox.npy"  # (C, 6) [z0, y0, x0, z1, y1, x1) per component
_COMP_SEEDED = "work/component_seeded.npy"  # (C,) bool: has a kept seed
_CC: dict[int, Literal[6, 18, 26]] = {1: 6, 2: 18, 3: 26}  # connectivity -> cc3d's neighbourhood
_LABELS = "labels.zarr"


@dataclass(frozen=True)
class ObjectFilter:
    """Rules that drop objects besides the size filter (nm; probability in [0, 1]).

    ``min_radius_nm``: keep an object only when it holds a voxel at least this far from the
    background (Euclidean, in nm of the mask's voxel size; voxels beyond the volume are not
    background): the radius of the largest ball that fits inside it. Sheets and threads
    thinner than twice this (false detections along membranes) go; organelles thicker stay,
    whatever their length. ``min_mean_probability``: keep an object only when the mean
    foreground probability over its voxels reaches this (needs a probability input).
    """

    min_radius_nm: float = 0.0
    min_mean_probability: float | None = None

    def __post_init__(self) -> None:
        if not (self.min_radius_nm >= 0 and np.isfinite(self.min_radius_nm)):
            raise InputError(f"--min-radius must be a distance >= 0 nm, got {self.min_radius_nm}")
        p = self.min_mean_probability
        if p is not None and not 0 <= p <= 1:
            raise InputError(f"--min-mean-probability must lie in [0, 1] (a probability), got {p}")

    @property
    def active(self) -> bool:
        return self.min_radius_nm > 0 or self.min_mean_probability is not None

    def describe(self) -> dict[str, object]:
        return {"min_radius_nm": float(self.min_radius_nm), "min_mean_probability": self.min_mean_probability}


@dataclass(frozen=True)
class _Job:
    """What a worker needs for one block (picklable; volumes from files travel by path)."""

    mask: Volume
    raw: Volume | None
    kind: Kind
    partial: str
    plan: BlockPlan
    connectivity: int
    threshold: float
    offsets: tuple[int, ...] = ()  # provisional id offset per block (raster order of blocks)
    split: SplitParams | None = None
    seed_offsets: tuple[int, ...] = ()  # the same for the provisional seed ids
    n_seeds: int = 0  # kept seeds: split ids 1..n_seeds; components follow as n_seeds + component
    filter: ObjectFilter = ObjectFilter()

    def _in(self, name: str) -> str:
        return str(Path(self.partial) / name)

    @property
    def scratch(self) -> str:
        return self._in(_SCRATCH)

    @property
    def labels(self) -> str:
        return str(Path(self.partial) / _LABELS / "s0")

    @property
    def mapping(self) -> str:
        return self._in(_MAPPING)

    def flat(self, index: Sequence[int]) -> int:
        return int(np.ravel_multi_index(tuple(index), self.plan.grid))

    def layer(self, name: str) -> tuple[str, tuple[int, ...]]:
        """Scratch array and per-block id offsets of a layer: ``"foreground"`` (pass "label"),
        ``"seeds"`` (pass "seeds") or ``"split"`` (pass "flood", ids already global)."""
        if name == "foreground":
            return self.scratch, self.offsets
        if name == "seeds":
            return self._in(_SEEDS), self.seed_offsets
        return self._in(_SPLIT), ()


def _label_into(job: _Job, scratch: str, box: tuple[slice, slice, slice], fg: np.ndarray) -> dict[str, Any]:
    """Label ``fg`` (the block ``box``) into ``scratch``; the label count, first-voxel global
    raster index and voxels per label (and with a split, the bounding box per label)."""
    import cc3d
    import fastremap
    import zarr

    lab = cc3d.connected_components(np.ascontiguousarray(fg), connectivity=_CC[job.connectivity], out_dtype=np.uint32)
    arr = zarr.open_array(scratch, mode="r+")
    arr[box] = lab
    fsync_chunks(scratch, box, arr.chunks)
    ids, first, sizes = fastremap.unique(lab.ravel(), return_index=True, return_counts=True)
    sel = ids > 0
    first, n = np.asarray(first)[sel].astype(np.int64), int(sel.sum())
    # the raster order inside a block is the global raster order restricted to it
    coords = np.unravel_index(first, lab.shape)
    glob = np.ravel_multi_index(tuple(c + s.start for c, s in zip(coords, box)), job.mask.shape)
    out: dict[str, Any] = {
        "n": n,
        "first": glob.astype(np.int64),
        "sizes": np.asarray(sizes)[sel].astype(np.int64),
    }
    if job.split is not None:
        objs = ndimage.find_objects(lab, max_label=n)
        out["bbox"] = np.array(
            [
                [sl[a].start + box[a].start for a in range(3)] + [sl[a].stop + box[a].start for a in range(3)]
                for sl in objs
            ],
            np.int64,
        ).reshape(n, 6)
    return out


def _label_block(job: _Job, block: Block) -> dict[str, Any]:
    """Pass "label": connected components of the block's foreground (:func:`_label_into`)."""
    box = block.roi.slices()
    return _label_into(job, job.scratch, box, foreground(job.mask.read(box), job.kind, job.threshold))


def _read_global(job: _Job, region: Sequence[slice], layer: str = "foreground") -> np.ndarray:
    """Provisional global ids of ``layer`` (int64, 0 = background) over ``region`` (may span blocks)."""
    import zarr

    path, offsets = job.layer(layer)
    local = zarr.open_array(path, mode="r")
    bs, origin = job.plan.block_shape, job.plan.roi.offset
    out = np.zeros(tuple(s.stop - s.start for s in region), np.int64)
    ranges = [range((s.start - o) // b, (s.stop - 1 - o) // b + 1) for s, b, o in zip(region, bs, origin)]
    for idx in itertools.product(*ranges):
        box = job.plan.block(idx).roi.slices()
        part = tuple(slice(max(r.start, b.start), min(r.stop, b.stop)) for r, b in zip(region, box))
        v = np.asarray(local[part]).astype(np.int64)
        if offsets:
            v[v > 0] += offsets[job.flat(idx)]
        out[tuple(slice(p.start - r.start, p.stop - r.start) for p, r in zip(part, region))] = v
    return out


def _region(job: _Job, block: Block, context: Sequence[int]) -> tuple[slice, slice, slice]:
    """The block grown by ``context`` voxels per side, clipped to the volume."""
    r = block.roi.grow(tuple(context)).intersect(job.mask.roi)
    return r.slices()


def _seed_block(job: _Job, block: Block) -> dict[str, Any]:
    """Pass "seeds": label the cores ``distance >= s`` of the block (read with ``ceil(s / voxel)``
    voxels of context, so the distance is exact) in the foreground, or with a seed threshold in
    the foreground above it; per seed also its foreground component."""
    assert job.split is not None
    s = job.split.seed_distance_nm
    box = block.roi.slices()
    region = _region(job, block, halo_voxels(s, job.mask.voxel_size))
    fg = _read_global(job, region) > 0
    if job.split.seed_threshold is not None:
        fg &= foreground(job.mask.read(region), job.kind, job.split.seed_threshold)
    inner = tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, region))
    cores = seed_cores(distance_nm(fg, job.mask.voxel_size, s), s)[inner]
    out = _label_into(job, job.layer("seeds")[0], box, cores)
    comps = np.load(job._in(_COMPONENTS), mmap_mode="r")
    g = _read_global(job, box).ravel()
    local = np.asarray(out["first"]) if out["n"] else np.zeros(0, np.int64)
    where = np.ravel_multi_index(
        tuple(c - b.start for c, b in zip(np.unravel_index(local, job.mask.shape), box)), cores.shape
    )
    out["component"] = np.asarray(comps[g[where]], np.int64)
    return out


def _flood_block(job: _Job, block: Block) -> dict[str, Any]:
    """Pass "flood": the watershed from the global seeds over the block plus its context;
    returns the split ids with first voxel and size, and the components split inexactly."""
    import fastremap
    import zarr

    assert job.split is not None
    vs, shape = job.mask.voxel_size, job.mask.shape
    s = job.split.seed_distance_nm
    box = block.roi.slices()
    region = _region(job, block, halo_voxels(job.split.context_nm, vs))
    inner = tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, region))
    g = _read_global(job, region)
    fg = g > 0
    comps = np.load(job._in(_COMPONENTS), mmap_mode="r")
    comp = np.asarray(comps[g[inner]], np.int64)
    del g
    seed_map = np.load(job._in(_SEED_MAP), mmap_mode="r")
    markers = np.asarray(seed_map[_read_global(job, region, "seeds")], np.int64)
    origin = [r.start for r in region]
    lab = flood(fg, distance_nm(fg, vs, s), markers, job.connectivity, origin, shape)[inner]
    del markers
    out = np.where(lab > 0, lab, np.where(fg[inner], job.n_seeds + comp, 0))
    path = job.layer("split")[0]
    arr = zarr.open_array(path, mode="r+")
    arr[box] = out.astype(arr.dtype)
    fsync_chunks(path, box, arr.chunks)
    ids, first, sizes = fastremap.unique(out.ravel(), return_index=True, return_counts=True)
    sel = np.asarray(ids) > 0
    coords = np.unravel_index(np.asarray(first)[sel].astype(np.int64), out.shape)
    glob = np.ravel_multi_index(tuple(c + b.start for c, b in zip(coords, box)), shape)
    # a seeded component whose box (grown by the seed distance) leaves the region floods
    # differently than in one pass over the whole volume
    seeded = np.load(job._in(_COMP_SEEDED), mmap_mode="r")
    boxes = np.load(job._in(_COMP_BOX), mmap_mode="r")
    present = np.unique(comp[comp > 0])
    present = present[np.asarray(seeded[present - 1], bool)]
    halo = np.array(halo_voxels(s, vs), np.int64)
    lo = np.maximum(np.asarray(boxes[present - 1, :3]) - halo, 0)
    hi = np.minimum(np.asarray(boxes[present - 1, 3:]) + halo, np.array(shape))
    inside = np.all(lo >= [r.start for r in region], 1) & np.all(hi <= [r.stop for r in region], 1)
    return {
        "ids": np.asarray(ids)[sel].astype(np.int64),
        "first": glob.astype(np.int64),
        "sizes": np.asarray(sizes)[sel].astype(np.int64),
        "inexact": present[~inside].astype(np.int64),
    }


def _filter_block(job: _Job, layer: str, block: Block) -> dict[str, np.ndarray]:
    """Pass "filter": the ids of ``layer`` in the block; with ``min_radius_nm`` whether each
    holds a voxel that far from the background (``core``), with ``min_mean_probability`` the
    sum of its foreground probability (``prob_sum``)."""
    import fastremap

    box = block.roi.slices()
    g = _read_global(job, box, layer)
    ids, inv = fastremap.unique(g.ravel(), return_inverse=True)
    ids, inv = np.asarray(ids, np.int64), np.asarray(inv, np.int64)
    sel = ids > 0
    out = {"ids": ids[sel]}
    r = job.filter.min_radius_nm
    if r > 0:
        vs = job.mask.voxel_size
        region = _region(job, block, halo_voxels(r, vs))
        inner = tuple(slice(b.start - q.start, b.stop - q.start) for b, q in zip(box, region))
        core = seed_cores(distance_nm(_read_global(job, region) > 0, vs, r), r)[inner]
        out["core"] = np.bincount(inv, weights=core.ravel(), minlength=len(ids))[sel] > 0
    if job.filter.min_mean_probability is not None:
        p = as_probability(job.mask.read(box), job.kind, job.mask.path or "the mask")
        out["prob_sum"] = np.bincount(inv, weights=p.ravel(), minlength=len(ids))[sel]
    return out


def _filter_keep(job: _Job, run_pass: Any, layer: str, index: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Run the pass "filter" over ``layer`` and return which objects pass :attr:`_Job.filter`.

    ``index[i]``: the object (0-based) of the layer's id ``i``; ``sizes``: voxels per object.
    """
    done = run_pass(functools.partial(_filter_block, job, layer), job.plan, stage=FILTER_STAGE)
    keep = np.ones(len(sizes), bool)
    core = np.zeros(len(sizes), bool)
    prob = np.zeros(len(sizes), np.float64)
    for b in job.plan.indices():
        res = done[b]["result"]
        obj = index[np.asarray(res["ids"], np.int64)]
        if "core" in res:
            np.logical_or.at(core, obj, np.asarray(res["core"], bool))
        if "prob_sum" in res:
            np.add.at(prob, obj, np.asarray(res["prob_sum"], np.float64))
    if job.filter.min_radius_nm > 0:
        keep &= core
    if job.filter.min_mean_probability is not None:
        keep &= prob / np.maximum(sizes, 1) >= job.filter.min_mean_probability
    return keep


def _half_neighbourhood(connectivity: int) -> list[Shape3]:
    st = ndimage.generate_binary_structure(3, connectivity)
    return [
        (d[0], d[1], d[2])
        for d in itertools.product((-1, 0, 1), repeat=3)
        if st[tuple(x + 1 for x in d)] and d > (0, 0, 0)
    ]


def _block_pairs(job: _Job, block: Block, layer: str = "foreground") -> np.ndarray:
    """Pass "merge faces" ("merge seeds"): pairs (a, b) of different provisional ids of ``layer``
    touching within the block plus its lower halo, int64 (n, 2)."""
    box = block.roi.slices()
    lo = [max(s.start - 1, 0) for s in box]
    region = tuple(slice(a, s.stop) for a, s in zip(lo, box))
    g = _read_global(job, region, layer)
    pairs = []
    for d in _half_neighbourhood(job.connectivity):
        a_sl = tuple(slice(max(0, -x), n - max(0, x)) for x, n in zip(d, g.shape))
        b_sl = tuple(slice(max(0, x), n - max(0, -x)) for x, n in zip(d, g.shape))
        a, b = g[a_sl], g[b_sl]
        m = (a > 0) & (b > 0) & (a != b)
        if m.any():
            pairs.append(np.stack([a[m], b[m]], 1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(pairs), axis=0).astype(np.int64)


def _relabel_block(job: _Job, block: Block) -> None:
    """Pass "relabel": write the block with final ids."""
    import zarr

    box = block.roi.slices()
    mapping = np.load(job.mapping, mmap_mode="r")
    g = _read_global(job, box, "foreground" if job.split is None else "split")
    out = zarr.open_array(job.labels, mode="r+")
    out[box] = np.asarray(mapping[g.ravel()]).reshape(g.shape).astype(out.dtype)
    fsync_chunks(job.labels, box, out.chunks)


def _surface_cells(job: _Job, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, Shape3]:
    """Final labels over the block's cube cells: voxels [s, e] (-1 at the volume start,
    zero beyond the volume), and the global index of element (0, 0, 0)."""
    import zarr

    lab = zarr.open_array(job.labels, mode="r")
    lo = [s.start - 1 if s.start == 0 else s.start for s in box]
    hi = [s.stop + 1 for s in box]
    out = np.zeros([h - a for a, h in zip(lo, hi)], lab.dtype)
    src = tuple(slice(max(a, 0), min(h, n)) for a, h, n in zip(lo, hi, lab.shape))
    out[tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo))] = lab[src]
    return out, (lo[0], lo[1], lo[2])


def _stats_block(job: _Job, block: Block) -> dict[str, np.ndarray]:
    """Pass "measure": per-object partial sums over one block (surface: the block's cube
    cells) as columns: ``id``, ``voxels``, ``sum_z/y/x``, [``raw_sum``], ``b0_*``, ``b1_*``
    and separately ``area_id``/``area`` (every object among the block's cells)."""
    from skimage.measure import marching_cubes, mesh_surface_area

    box = block.roi.slices()
    cells, lo = _surface_cells(job, box)
    core = cells[tuple(slice(s.start - a, s.stop - a) for s, a in zip(box, lo))]
    ids, inv = np.unique(core.ravel(), return_inverse=True)
    n = len(ids)
    inv = inv.reshape(core.shape)
    sel = ids > 0
    cols: dict[str, np.ndarray] = {
        "id": ids[sel].astype(np.int64),
        "voxels": np.bincount(inv.ravel(), minlength=n)[sel].astype(np.int64),
    }
    for axis, (a, s) in enumerate(zip("zyx", box)):
        shape = [1, 1, 1]
        shape[axis] = core.shape[axis]
        coord = np.broadcast_to(np.arange(s.start, s.stop, dtype=np.float64).reshape(shape), core.shape)
        cols[f"sum_{a}"] = np.bincount(inv.ravel(), weights=coord.ravel(), minlength=n)[sel]
    if job.raw is not None:
        weights = job.raw.read(box).astype(np.float64).ravel()
        cols["raw_sum"] = np.bincount(inv.ravel(), weights=weights, minlength=n)[sel]
    if job.kind != "binary":
        weights = as_probability(job.mask.read(box), job.kind).ravel()
        cols["prob_sum"] = np.bincount(inv.ravel(), weights=weights, minlength=n)[sel]
    objs = ndimage.find_objects(inv.astype(np.int64) + 1)
    for axis, (a, s) in enumerate(zip("zyx", box)):
        cols[f"b0_{a}"] = np.array([objs[k][axis].start + s.start for k in np.flatnonzero(sel)], np.int64)
        cols[f"b1_{a}"] = np.array([objs[k][axis].stop + s.start for k in np.flatnonzero(sel)], np.int64)
    # surfaces: every object among the block's cells (also one present only in the upper halo)
    cids, cinv = np.unique(cells.ravel(), return_inverse=True)
    cinv = cinv.reshape(cells.shape)
    cobjs = ndimage.find_objects(cinv.astype(np.int64) + 1)
    area_ids, areas = [], []
    for k, oid in enumerate(cids):
        if oid == 0:
            continue
        grown = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, m)) for s, m in zip(cobjs[k], cells.shape))
        sub = (cinv[grown] == k).astype(np.float32)
        if sub.min() == sub.max():
            continue
        verts, faces, _, _ = marching_cubes(sub, 0.5, spacing=tuple(job.mask.voxel_size), method="lorensen")
        area_ids.append(int(oid))
        areas.append(float(mesh_surface_area(verts, faces)))
    cols["area_id"] = np.array(area_ids, np.int64)
    cols["area"] = np.array(areas, np.float64)
    return cols


def _block_frame(cols: dict[str, Any]) -> pd.DataFrame:
    """One block's partial statistics as a frame (objects and surface areas merged by id)."""
    cols = dict(cols)
    area = pd.DataFrame(
        {"id": np.asarray(cols.pop("area_id"), np.int64), "area": np.asarray(cols.pop("area"), np.float64)}
    )
    return pd.DataFrame(cols).merge(area, on="id", how="outer")


def _combine(parts: list[pd.DataFrame], mask: Volume, has_raw: bool, has_prob: bool = False) -> pd.DataFrame:
    """Sum the per-block partial statistics per object into the object table (:data:`COLUMNS`)."""
    df = pd.concat([p for p in parts if len(p)] or [pd.DataFrame({"id": np.zeros(0, np.int64)})], ignore_index=True)
    sums = ("voxels", "sum_z", "sum_y", "sum_x", "raw_sum", "prob_sum", "area")
    for c in (*sums, *(f"b{i}_{a}" for i in (0, 1) for a in "zyx")):
        if c not in df:
            df[c] = np.nan
    g = df.groupby("id", sort=True).agg(
        voxels=("voxels", "sum"),
        sum_z=("sum_z", "sum"),
        sum_y=("sum_y", "sum"),
        sum_x=("sum_x", "sum"),
        raw_sum=("raw_sum", "sum"),
        prob_sum=("prob_sum", "sum"),
        area=("area", "sum"),
        **{f"b0_{a}": (f"b0_{a}", "min") for a in "zyx"},
        **{f"b1_{a}": (f"b1_{a}", "max") for a in "zyx"},
    )
    vs, off = mask.voxel_size, mask.offset
    vox = g["voxels"].to_numpy(np.int64)
    out = pd.DataFrame(
        {
            "id": g.index.to_numpy(np.int64),
            "voxels": vox,
            "volume_nm3": vox * float(np.prod(vs)),
            "surface_area_nm2": g["area"].to_numpy(np.float64),
        }
    )
    for i, a in enumerate("zyx"):
        out[f"centroid_{a}_nm"] = off[i] + g[f"sum_{a}"].to_numpy(np.float64) / np.maximum(vox, 1) * vs[i]
    for i in (0, 1):
        for a in "zyx":
            out[f"bbox_{a}{i}_vox"] = g[f"b{i}_{a}"].to_numpy(np.float64).astype(np.int64)
    out["mean_intensity"] = g["raw_sum"].to_numpy(np.float64) / np.maximum(vox, 1) if has_raw else np.nan
    out["mean_probability"] = g["prob_sum"].to_numpy(np.float64) / np.maximum(vox, 1) if has_prob else np.nan
    return out[COLUMNS].reset_index(drop=True)


@dataclass
class InstancesResult:
    """What :func:`label_instances` did. ``resumed``: blocks taken from an interrupted run's
    ledger; ``note`` reports adjustments (e.g. a rounded block shape)."""

    output: Path
    objects: int
    removed_small: int
    table: pd.DataFrame
    seconds: float
    resumed: int = 0
    note: str = ""
    seeds: int = 0
    """With a split: the seeds kept (each becomes an object unless the size filter drops it)."""
    inexact: int = 0
    """With a split: connected components larger than a block plus its context (grown by the
    seed distance), whose split may differ from a single pass at block faces (0: exact)."""
    removed_filtered: int = 0
    """Objects of at least the minimum size dropped by the :class:`ObjectFilter`."""


def _create_scratch(folder: Path, plan: BlockPlan, split: bool = False) -> None:
    """The scratch arrays in a fresh ``OUTPUT.partial``: of the "label" pass, and with a split
    of the "seeds" and "flood" passes."""
    import zarr

    (folder / "work").mkdir(parents=True)
    arrays = [(_SCRATCH, np.uint32)] + ([(_SEEDS, np.uint32), (_SPLIT, np.uint64)] if split else [])
    for name, dtype in arrays:
        zarr.create_array(
            str(folder / name),
            shape=plan.roi.shape,
            dtype=dtype,
            chunks=plan.block_shape,
            fill_value=0,
            zarr_format=3,
        )


def _save(path: str, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _components(n_total: int, edges: np.ndarray) -> tuple[int, np.ndarray]:
    """Connected components of the graph of provisional ids 1..n_total joined by ``edges``:
    the count and the component (0-based) of each id."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not n_total:
        return 0, np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0] - 1, edges[:, 1] - 1)), shape=(n_total, n_total))
    n_comp, comp = connected_components(graph, directed=False)
    return int(n_comp), comp.astype(np.int64)


def _number(first: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, int]:
    """Final ids 1..K (0: dropped) of the objects with first voxels ``first`` (global raster
    index): those ``kept``, in raster order of first voxel; and K."""
    order = np.argsort(np.where(kept, first, np.iinfo(np.int64).max), kind="stable")
    final = np.zeros(len(first), np.int64)
    n_kept = int(kept.sum())
    final[order[:n_kept]] = np.arange(1, n_kept + 1)
    return final, n_kept


def _merge_layer(
    results: list[dict[str, Any]], pairs: dict[Any, dict[str, Any]], indices: list[Shape3]
) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray]:
    """Provisional id offsets per block, and per merged object (0-based) of the provisional
    ids: the object of each id, the object count, first voxel and size."""
    counts = np.array([r["n"] for r in results], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    edges = np.concatenate([np.asarray(pairs[b]["result"], np.int64).reshape(-1, 2) for b in indices])
    n_obj, comp = _components(int(counts.sum()), edges)
    first_vox = np.concatenate([np.asarray(r["first"], np.int64) for r in results])
    sizes = np.concatenate([np.asarray(r["sizes"], np.int64) for r in results])
    obj_first = np.full(n_obj, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(obj_first, comp, first_vox)
    obj_size = np.bincount(comp, weights=sizes, minlength=n_obj).astype(np.int64)
    return offsets, n_obj, comp, obj_first, obj_size


def _create_labels(partial: Path, mask: Volume, dtype: Any, chunks: Shape3, meta: dict[str, Any], name: str) -> None:
    """``labels.zarr`` (an OME-Zarr 0.5 label image, array ``s0``) inside ``partial``, built aside
    and renamed in. Its NGFF ``image-label`` has no colours (one per object would be huge) and,
    when ``mask`` is an OME-Zarr image, ``source`` = that image: its URL, or its path relative
    to the final ``OUTPUT/labels.zarr`` (``OUTPUT`` is ``name``, beside ``partial``)."""
    import zarr

    dst = partial / _LABELS
    if dst.exists():  # an interrupted run created it (with the same settings: the ledger checks them)
        return
    source = label_source(mask.path, partial.parent / name / _LABELS) if mask.path else None
    tmp = temp_sibling(dst)
    root = zarr.open_group(str(tmp), mode="w-", zarr_format=3)
    create_ome_image(
        root,
        mask.shape,
        dtype,
        mask.voxel_size,
        mask.offset,
        chunks,
        meta,
        name=name,
        image_label=image_label_attrs(source=source),
    )
    replace_path(tmp, dst)


def label_instances(
    mask: Volume,
    output: str | Path,
    raw: Volume | None = None,
    min_size_nm3: float = 0.0,
    connectivity: int = 1,
    threshold: float = 0.5,
    block_shape: Sequence[int] = (128, 128, 128),
    chunks: Sequence[int] | None = None,
    client: Any | None = None,
    retries: int = 2,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    split: SplitParams | None = None,
    object_filter: ObjectFilter | None = None,
) -> InstancesResult:
    """Connected components of ``mask`` into the folder ``output``, touching objects split
    apart with ``split``.

    Foreground per :func:`organet.volumes.foreground.foreground` (probabilities
    ``>= threshold``, uint8 organet probabilities as value/255, masks and labels ``> 0``).
    ``output`` gets ``labels.zarr`` (OME-Zarr 0.5, uint32/uint64 ids, 0 = background, same
    voxel size and offset as ``mask``), ``objects.csv`` and ``objects.parquet`` (one row
    per object, :data:`COLUMNS`). An existing ``output`` is refused unless ``overwrite``.

    ``min_size_nm3`` drops objects smaller than that volume; ``connectivity`` 1 (faces,
    scipy's default), 2 (+edges) or 3 (+corners). ``raw`` (same shape and voxel size as
    ``mask``) gives ``mean_intensity``. ``chunks`` are the label chunks (voxels; by default
    64 where the block is a multiple of 64, else the block); ``block_shape`` is rounded to
    whole chunks (:attr:`InstancesResult.note` says how).

    The work lives in ``OUTPUT.partial`` and the finished blocks of every pass in the
    ledger ``OUTPUT.progress``: rerunning the same call after a kill resumes and gives the
    same bytes. ``client``: a Dask ``distributed.Client`` (None: in this process);
    blocks still failing after ``retries`` raise :class:`~organet.errors.BlockFailures`.
    ``progress(stage, advance, total)`` follows the passes (stages :data:`STAGES`, with a
    split :data:`SPLIT_STAGES`).

    ``split``: a seeded watershed on the distance transform (nm, the voxel size of ``mask``)
    separates touching objects (:mod:`organet.analyze.split`); the size filter applies to the
    split objects. The flood of each block reads ``split.context_nm`` around it; with no
    component larger than a block plus that context (:attr:`InstancesResult.inexact` = 0) the
    labels equal those of one block covering the whole volume.

    ``object_filter``: drop objects thinner than a radius (nm) or less confident than a mean
    probability (:class:`ObjectFilter`), after the split and with the size filter; the
    objects dropped are counted in :attr:`InstancesResult.removed_filtered`. The table's
    ``mean_probability`` is the mean foreground probability of each object for a
    probability input (NaN for a mask).
    """
    t0 = time.time()
    if connectivity not in (1, 2, 3):
        raise InputError(f"connectivity must be 1, 2 or 3, got {connectivity}")
    if not min_size_nm3 >= 0:
        raise InputError(f"--min-size must be >= 0 nm³, got {min_size_nm3}")
    threshold = check_threshold(threshold)
    if split is not None and split.seed_threshold is not None and prediction_kind(mask) == "binary":
        raise InputError(
            f"--seed-threshold {split.seed_threshold} needs a probability, but {mask.path or 'the mask'} is a "
            f"binary mask ({mask.dtype}): give the probability (e.g. OUT.zarr/probability)"
        )
    filt = object_filter if object_filter is not None and object_filter.active else None
    if filt is not None and filt.min_mean_probability is not None and prediction_kind(mask) == "binary":
        raise InputError(
            f"--min-mean-probability {filt.min_mean_probability} needs a probability, but {mask.path or 'the mask'} "
            f"is a binary mask ({mask.dtype}): give the probability (e.g. OUT.zarr/probability)"
        )
    if raw is not None:
        if tuple(raw.shape) != tuple(mask.shape):
            raise IncompatibleError(f"raw shape {tuple(raw.shape)} differs from the mask's {tuple(mask.shape)}")
        check_same_voxel_size(raw.voxel_size, mask.voxel_size, "the raw volume", "the mask")
    progress = progress if callable(progress) else None  # tolerate the old progress=False
    shape = mask.shape
    try:
        block = tuple(min(int(b), n) for b, n in zip(block_shape, shape))
    except (TypeError, ValueError):
        raise InputError(f"block shape {block_shape!r} must be 3 positive integers (z, y, x)") from None
    if len(block) != 3 or any(b < 1 for b in block):
        raise InputError(f"block shape {tuple(block_shape)} must be 3 positive integers (z, y, x)")
    if chunks is None:
        chunks = tuple(64 if b % 64 == 0 else b for b in block)
    plan = plan_blocks(mask.roi, chunks, block)
    kind = prediction_kind(mask)

    output = Path(output).expanduser()
    run = {
        "pass": "instances",
        "mask": volume_identity(mask),
        "mask_dtype": str(mask.dtype),
        "kind": kind,
        "shape": list(shape),
        "voxel_size": list(mask.voxel_size),
        "offset": list(mask.offset),
        "raw": volume_identity(raw),
        "threshold": threshold,
        "connectivity": connectivity,
        "min_size_nm3": float(min_size_nm3),
        "plan": plan.describe(),
    }
    if split is not None:
        run["split"] = split.describe()
    if filt is not None:
        run["filter"] = filt.describe()
    out = ResumableOutput(output, run, overwrite=overwrite)
    if out.complete:
        table = pd.read_parquet(output / "objects.parquet")
        note = "already complete: nothing to do"
        return InstancesResult(output, len(table), 0, table, time.time() - t0, 0, note)
    out.start(functools.partial(_create_scratch, plan=plan, split=split is not None))
    partial, ledger, resumed = out.partial, out.ledger, out.resumed
    job = _Job(mask, raw, kind, str(partial), plan, connectivity, threshold, split=split, filter=filt or ObjectFilter())
    run_pass = functools.partial(run_blocks, ledger=ledger, client=client, retries=retries, progress=progress)

    indices = list(plan.indices())
    first = run_pass(functools.partial(_label_block, job), plan, stage="label")
    results = [first[b]["result"] for b in indices]
    offsets = np.concatenate([[0], np.cumsum([r["n"] for r in results])[:-1]]).astype(np.int64)
    job = dataclasses.replace(job, offsets=tuple(int(o) for o in offsets))
    pairs = run_pass(functools.partial(_block_pairs, job), plan, stage="merge faces")
    _, n_comp, comp, comp_first, comp_size = _merge_layer(results, pairs, indices)
    voxel_nm3 = float(np.prod(mask.voxel_size))
    n_seeds = n_inexact = n_filtered = 0
    if split is None:
        big = comp_size * voxel_nm3 >= min_size_nm3
        keep = big
        if filt is not None:
            keep = big & _filter_keep(job, run_pass, "foreground", np.concatenate([[0], comp]), comp_size)
            n_filtered = int((big & ~keep).sum())
        final, n_kept = _number(comp_first, keep)
        n_objects = n_comp - n_filtered
        mapping = np.concatenate([[0], final[comp]])
    else:
        n_seeds, n_inexact, final, n_kept, n_objects, n_filtered = _split(
            job, run_pass, results, comp, n_comp, min_size_nm3
        )
        mapping = np.concatenate([[0], final])
    dtype = np.uint32 if n_kept < 2**32 else np.uint64
    _save(job.mapping, mapping.astype(dtype))
    meta = {
        "kind": "instances",
        "source": mask.path,
        "connectivity": connectivity,
        "min_size_nm3": min_size_nm3,
        "threshold": threshold,
    }
    _create_labels(partial, mask, dtype, plan.chunks, meta, output.name)

    run_pass(functools.partial(_relabel_block, job), plan, stage="relabel")
    parts = run_pass(functools.partial(_stats_block, job), plan, stage="measure")
    table = _combine(
        [_block_frame(parts[b]["result"]) for b in plan.indices()], mask, raw is not None, kind != "binary"
    )
    with atomic_path(partial / "objects.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(partial / "objects.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    remove_path(partial / "work")
    out.commit()
    notes = [plan.note] if plan.note else []
    if resumed:
        notes.append(f"resumed an interrupted run ({resumed} blocks were done)")
    if n_inexact:
        notes.append(
            f"{n_inexact} connected components are larger than a block plus its context: their split may "
            "differ from a single pass at block faces (raise --context or --block)"
        )
    return InstancesResult(
        output,
        n_kept,
        n_objects - n_kept,
        table,
        time.time() - t0,
        resumed,
        "; ".join(notes),
        n_seeds,
        n_inexact,
        n_filtered,
    )


def _split(
    job: _Job,
    run_pass: Any,
    results: list[dict[str, Any]],
    comp: np.ndarray,
    n_comp: int,
    min_size_nm3: float,
) -> tuple[int, int, np.ndarray, int, int, int]:
    """The passes "seeds", "merge seeds" and "flood" (after the components are known), and
    "filter" with an :class:`ObjectFilter`; returns the kept seeds, the inexact components,
    the final id of each split id (index 0 = id 1), the objects kept, the objects before the
    size filter less those the object filter dropped, and those."""
    params = job.split
    assert params is not None
    plan, mask = job.plan, job.mask
    indices = list(plan.indices())
    voxel_nm3 = float(np.prod(mask.voxel_size))
    _save(job._in(_COMPONENTS), np.concatenate([[0], comp + 1]).astype(np.int64))
    boxes = np.zeros((n_comp, 6), np.int64)
    boxes[:, :3] = np.iinfo(np.int64).max
    bb = np.concatenate([np.asarray(r["bbox"], np.int64).reshape(-1, 6) for r in results])
    for a in range(3):
        np.minimum.at(boxes[:, a], comp, bb[:, a])
        np.maximum.at(boxes[:, a + 3], comp, bb[:, a + 3])
    _save(job._in(_COMP_BOX), boxes)

    seeds = run_pass(functools.partial(_seed_block, job), plan, stage="seeds")
    seed_results = [seeds[b]["result"] for b in indices]
    seed_offsets = np.concatenate([[0], np.cumsum([r["n"] for r in seed_results])[:-1]]).astype(np.int64)
    job = dataclasses.replace(job, seed_offsets=tuple(int(o) for o in seed_offsets))
    seed_pairs = run_pass(functools.partial(_block_pairs, job, layer="seeds"), plan, stage="merge seeds")
    _, n_cores, core, core_first, core_size = _merge_layer(seed_results, seed_pairs, indices)
    seed_id, n_seeds = _number(core_first, core_size * voxel_nm3 >= params.min_seed_size_nm3)
    _save(job._in(_SEED_MAP), np.concatenate([[0], seed_id[core]]).astype(np.int64))
    seeded = np.zeros(n_comp, bool)
    seed_comp = np.concatenate([np.asarray(r["component"], np.int64) for r in seed_results])
    seeded[seed_comp[seed_id[core] > 0] - 1] = True
    _save(job._in(_COMP_SEEDED), seeded)

    job = dataclasses.replace(job, n_seeds=n_seeds)
    flooded = run_pass(functools.partial(_flood_block, job), plan, stage="flood")
    n_ids = n_seeds + n_comp
    first = np.full(n_ids, np.iinfo(np.int64).max, np.int64)
    sizes = np.zeros(n_ids, np.int64)
    inexact: set[int] = set()
    for b in indices:
        r = flooded[b]["result"]
        ids = np.asarray(r["ids"], np.int64) - 1
        np.minimum.at(first, ids, np.asarray(r["first"], np.int64))
        np.add.at(sizes, ids, np.asarray(r["sizes"], np.int64))
        inexact.update(int(c) for c in np.asarray(r["inexact"], np.int64))
    present = sizes > 0
    big = present & (sizes * voxel_nm3 >= min_size_nm3)
    keep = big
    if job.filter.active:
        keep = big & _filter_keep(job, run_pass, "split", np.arange(-1, n_ids), sizes)
    n_filtered = int((big & ~keep).sum())
    final, n_kept = _number(first, keep)
    return n_seeds, len(inexact), final, n_kept, int(present.sum()) - n_filtered, n_filtered


__all__ = [
    "COLUMNS",
    "FILTER_STAGE",
    "SPLIT_STAGES",
    "STAGES",
    "InstancesResult",
    "ObjectFilter",
    "SplitParams",
    "label_instances",
]
