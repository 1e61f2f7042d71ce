"""Organelle instances: whole-volume connected components computed blockwise
(on Dask or in-process), merged across block faces, with a per-object table.

Passes (each a set of independent block tasks; memory is a few blocks):

1. label each block alone (``scipy.ndimage.label``) into a scratch zarr; return
   its label count, the first voxel (raster order) and the size of each label;
2. for each block, read it with a one-voxel halo on its lower sides in global
   provisional ids and collect the pairs of different ids that touch under the
   connectivity (only pairs across block faces, edges and corners can differ);
3. on the client: connected components of that pair graph give the objects; the
   size filter (nm³) drops small ones; objects are numbered 1..K in raster order
   of their first voxel, so with no filter the labels equal ``scipy.ndimage.label``
   of the whole volume exactly; each block is rewritten with final ids;
4. per block statistics (voxels, coordinate sums, bounding box, raw intensity sum
   and the marching-cubes surface of the cube cells whose lower corner lies in
   the block), summed per object on the client.

Coordinates are (z, y, x); ``_vox`` columns are voxel indices of the mask volume
(bounding box ``[z0, z1)`` etc.), ``_nm`` columns are world nm (voxel (0, 0, 0)
lies at the volume offset).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from organet.predict.tasks import run_tasks
from organet.volumes import Volume, VolumeError
from organet.volumes.ome_zarr import replace_path

Shape3 = tuple[int, int, int]

COLUMNS = [
    "id", "voxels", "volume_nm3", "surface_area_nm2", "centroid_z_nm", "centroid_y_nm", "centroid_x_nm",
    "bbox_z0_vox", "bbox_y0_vox", "bbox_x0_vox", "bbox_z1_vox", "bbox_y1_vox", "bbox_x1_vox", "mean_intensity",
]


def foreground(volume: Volume, data: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Boolean foreground of a block: probabilities ``>= threshold`` (uint8 organet
    probabilities as value/255), anything else ``> 0``."""
    from organet.evaluate.blockwise import prediction_kind

    kind = prediction_kind(volume)
    if kind == "probability":
        return np.asarray(data, np.float64) >= threshold
    if kind == "probability_uint8":
        return data >= int(np.ceil(threshold * 255 - 1e-9))
    return data > 0


@dataclass(frozen=True)
class _Job:
    mask: Volume
    raw: Volume | None
    work: str
    labels: str
    block_shape: Shape3
    connectivity: int
    threshold: float
    offsets: tuple[int, ...] = ()  # provisional id offset per block (raster order of blocks)
    mapping: str = ""  # .npy: provisional id -> final id

    @property
    def grid(self) -> Shape3:
        return tuple(math.ceil(n / b) for n, b in zip(self.mask.shape, self.block_shape))  # type: ignore[return-value]

    def box(self, index: Sequence[int]) -> tuple[slice, slice, slice]:
        return tuple(slice(i * b, min((i + 1) * b, n))  # type: ignore[return-value]
                     for i, b, n in zip(index, self.block_shape, self.mask.shape))

    def flat(self, index: Sequence[int]) -> int:
        return int(np.ravel_multi_index(tuple(index), self.grid))


def _label_block(job: _Job, index: Shape3) -> tuple[int, np.ndarray, np.ndarray]:
    """Pass 1: (label count, first-voxel global raster index per label, voxels per label)."""
    import zarr

    box = job.box(index)
    fg = foreground(job.mask, job.mask.read(box), job.threshold)
    lab, n = ndimage.label(fg, ndimage.generate_binary_structure(3, job.connectivity), output=np.uint32)
    zarr.open_array(job.work, path="local", mode="r+")[box] = lab
    ids, first = np.unique(lab.ravel(), return_index=True)
    first, ids = first[ids > 0], ids[ids > 0]
    # the raster order inside a block is the global raster order restricted to it
    coords = np.unravel_index(first, lab.shape)
    glob = np.ravel_multi_index(tuple(c + s.start for c, s in zip(coords, box)), job.mask.shape)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    return int(n), glob.astype(np.int64), sizes.astype(np.int64)


def _read_global(job: _Job, region: Sequence[slice]) -> np.ndarray:
    """Provisional global ids (int64, 0 = background) over ``region`` (may span blocks)."""
    import zarr

    local = zarr.open_array(job.work, path="local", mode="r")
    out = np.zeros(tuple(s.stop - s.start for s in region), np.int64)
    ranges = [range(s.start // b, (s.stop - 1) // b + 1) for s, b in zip(region, job.block_shape)]
    for idx in itertools.product(*ranges):
        box = job.box(idx)
        part = tuple(slice(max(r.start, b.start), min(r.stop, b.stop)) for r, b in zip(region, box))
        v = np.asarray(local[part]).astype(np.int64)
        v[v > 0] += job.offsets[job.flat(idx)]
        out[tuple(slice(p.start - r.start, p.stop - r.start) for p, r in zip(part, region))] = v
    return out


def _half_neighbourhood(connectivity: int) -> list[Shape3]:
    st = ndimage.generate_binary_structure(3, connectivity)
    return [d for d in itertools.product((-1, 0, 1), repeat=3) if st[tuple(x + 1 for x in d)] and d > (0, 0, 0)]


def _block_pairs(job: _Job, index: Shape3) -> np.ndarray:
    """Pass 2: pairs (a, b) of different provisional ids touching within the block plus its lower halo."""
    box = job.box(index)
    lo = [max(s.start - 1, 0) for s in box]
    region = tuple(slice(a, s.stop) for a, s in zip(lo, box))
    g = _read_global(job, region)
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
    return np.unique(np.concatenate(pairs), axis=0)


def _relabel_block(job: _Job, index: Shape3) -> None:
    """Pass 3: write the block with final ids."""
    import zarr

    box = job.box(index)
    mapping = np.load(job.mapping, mmap_mode="r")
    g = _read_global(job, box)
    out = zarr.open_array(job.labels, mode="r+")
    out[box] = np.asarray(mapping[g.ravel()]).reshape(g.shape).astype(out.dtype)


def _surface_cells(job: _Job, index: Shape3) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Final labels over the block's cube cells: voxels [s, e] (-1 at the volume start,
    zero beyond the volume), and the global index of element (0, 0, 0)."""
    import zarr

    lab = zarr.open_array(job.labels, mode="r")
    box = job.box(index)
    lo = [s.start - 1 if s.start == 0 else s.start for s in box]
    hi = [s.stop + 1 for s in box]
    out = np.zeros([h - l for l, h in zip(lo, hi)], lab.dtype)
    src = tuple(slice(max(l, 0), min(h, n)) for l, h, n in zip(lo, hi, lab.shape))
    out[tuple(slice(s.start - l, s.stop - l) for s, l in zip(src, lo))] = lab[src]
    return out, tuple(lo)  # type: ignore[return-value]


def _stats_block(job: _Job, index: Shape3) -> pd.DataFrame:
    """Pass 4: per-object partial sums over one block (surface: the block's cube cells)."""
    from skimage.measure import marching_cubes, mesh_surface_area

    box = job.box(index)
    cells, lo = _surface_cells(job, index)
    core = cells[tuple(slice(s.start - l, s.stop - l) for s, l in zip(box, lo))]
    ids, inv = np.unique(core.ravel(), return_inverse=True)
    n = len(ids)
    inv = inv.reshape(core.shape)
    sel = ids > 0
    cols: dict[str, Any] = {"id": ids[sel].astype(np.int64),
                            "voxels": np.bincount(inv.ravel(), minlength=n)[sel].astype(np.int64)}
    for axis, (a, s) in enumerate(zip("zyx", box)):
        shape = [1, 1, 1]
        shape[axis] = core.shape[axis]
        coord = np.broadcast_to(np.arange(s.start, s.stop, dtype=np.float64).reshape(shape), core.shape)
        cols[f"sum_{a}"] = np.bincount(inv.ravel(), weights=coord.ravel(), minlength=n)[sel]
    if job.raw is not None:
        cols["raw_sum"] = np.bincount(inv.ravel(), weights=job.raw.read(box).astype(np.float64).ravel(),
                                      minlength=n)[sel]
    objs = ndimage.find_objects(inv.astype(np.int64) + 1)
    for axis, (a, s) in enumerate(zip("zyx", box)):
        cols[f"b0_{a}"] = np.array([objs[k][axis].start + s.start for k in np.flatnonzero(sel)], np.int64)
        cols[f"b1_{a}"] = np.array([objs[k][axis].stop + s.start for k in np.flatnonzero(sel)], np.int64)
    df = pd.DataFrame(cols)
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
    return df.merge(pd.DataFrame({"id": np.array(area_ids, np.int64), "area": np.array(areas, np.float64)}),
                    on="id", how="outer")


def _combine(parts: list[pd.DataFrame], mask: Volume, has_raw: bool) -> pd.DataFrame:
    """Sum the per-block partial statistics per object into the object table (:data:`COLUMNS`)."""
    df = pd.concat([p for p in parts if len(p)] or [pd.DataFrame({"id": np.zeros(0, np.int64)})], ignore_index=True)
    for c in ("voxels", "sum_z", "sum_y", "sum_x", "raw_sum", "area", *(f"b{i}_{a}" for i in (0, 1) for a in "zyx")):
        if c not in df:
            df[c] = np.nan
    g = df.groupby("id", sort=True).agg(
        voxels=("voxels", "sum"), sum_z=("sum_z", "sum"), sum_y=("sum_y", "sum"), sum_x=("sum_x", "sum"),
        raw_sum=("raw_sum", "sum"), area=("area", "sum"),
        **{f"b0_{a}": (f"b0_{a}", "min") for a in "zyx"}, **{f"b1_{a}": (f"b1_{a}", "max") for a in "zyx"},
    )
    vs, off = mask.voxel_size, mask.offset
    vox = g["voxels"].to_numpy(np.int64)
    out = pd.DataFrame({"id": g.index.to_numpy(np.int64), "voxels": vox, "volume_nm3": vox * float(np.prod(vs)),
                        "surface_area_nm2": g["area"].to_numpy(np.float64)})
    for i, a in enumerate("zyx"):
        out[f"centroid_{a}_nm"] = off[i] + g[f"sum_{a}"].to_numpy(np.float64) / np.maximum(vox, 1) * vs[i]
    for i in (0, 1):
        for a in "zyx":
            out[f"bbox_{a}{i}_vox"] = g[f"b{i}_{a}"].to_numpy(np.float64).astype(np.int64)
    out["mean_intensity"] = g["raw_sum"].to_numpy(np.float64) / np.maximum(vox, 1) if has_raw else np.nan
    return out[COLUMNS].reset_index(drop=True)


@dataclass
class InstancesResult:
    output: Path
    objects: int
    removed_small: int
    table: pd.DataFrame
    seconds: float


def _atomic_table(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    if path.suffix == ".csv":
        df.to_csv(tmp, index=False)
    else:
        df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


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
    progress: bool = True,
) -> InstancesResult:
    """Connected components of ``mask`` (foreground per :func:`foreground`) into ``output``.

    ``output`` is a folder, written atomically (a temporary sibling renamed when done):
    ``labels.zarr`` (OME-Zarr 0.5, uint32/uint64 ids, 0 = background, same voxel
    size and offset as ``mask``), ``objects.csv`` and ``objects.parquet`` (one row per
    object, :data:`COLUMNS`). ``min_size_nm3`` drops objects smaller than that volume;
    ``connectivity`` 1 (faces, scipy's default), 2 (+edges) or 3 (+corners).
    ``raw`` (same shape as ``mask``) gives ``mean_intensity``. ``block_shape`` must be a
    multiple of the label ``chunks`` (voxels, both clipped to the volume; by default
    64 where the block is a multiple of 64, else the block).
    """
    import time

    import zarr
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from zarr.codecs import BloscCodec

    from organet.volumes.ome_zarr import ORGANET_KEY, ome_image_attrs

    t0 = time.time()
    if connectivity not in (1, 2, 3):
        raise ValueError(f"connectivity must be 1, 2 or 3, got {connectivity}")
    if min_size_nm3 < 0:
        raise ValueError(f"--min-size must be >= 0 nm³, got {min_size_nm3}")
    if raw is not None and tuple(raw.shape) != tuple(mask.shape):
        raise ValueError(f"raw shape {tuple(raw.shape)} differs from the mask's {tuple(mask.shape)}")
    shape = tuple(mask.shape)
    block = tuple(min(int(b), n) for b, n in zip(block_shape, shape))
    if any(b < 1 for b in block):
        raise ValueError(f"block shape {tuple(block_shape)} must be positive")
    if chunks is None:
        chunks = tuple(64 if b % 64 == 0 else b for b in block)
    chunks = tuple(min(int(c), n) for c, n in zip(chunks, shape))
    if any(b % c and b < n for b, c, n in zip(block, chunks, shape)):
        raise ValueError(f"block shape {tuple(block_shape)} must be a multiple of the chunks {chunks}")
    output = Path(output).expanduser()
    if output.exists() and not overwrite:
        raise VolumeError(f"output already exists: {output} (pass overwrite to replace it)")
    tmp = output.with_name(f"{output.name}.tmp-{secrets.token_hex(4)}")
    (tmp / "work").mkdir(parents=True)
    try:
        work, labels_path = str(tmp / "work" / "scratch.zarr"), tmp / "labels.zarr"
        zarr.open_group(work, mode="w-", zarr_format=3).create_array(
            "local", shape=shape, dtype=np.uint32, chunks=block, fill_value=0)
        job = _Job(mask, raw, work, str(labels_path / "s0"), block, connectivity, threshold)  # type: ignore[arg-type]
        indices = list(itertools.product(*(range(g) for g in job.grid)))

        def run(fn: Any, label: str, j: _Job) -> dict[int, Any]:
            res, fails = run_tasks(functools.partial(fn, j), indices, client, retries, label, progress)
            if fails:
                lines = "\n  ".join(f"block {indices[i]}: {m}" for i, m in sorted(fails.items()))
                raise RuntimeError(f"{len(fails)} blocks failed ({label}):\n  {lines}")
            return res

        first = run(_label_block, "label blocks", job)
        counts = np.array([first[i][0] for i in range(len(indices))], np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        n_total = int(counts.sum())
        job = _Job(mask, raw, work, job.labels, block, connectivity, threshold,  # type: ignore[arg-type]
                   tuple(int(o) for o in offsets))
        pairs = run(_block_pairs, "merge faces", job)
        edges = np.concatenate([pairs[i] for i in range(len(indices))] + [np.zeros((0, 2), np.int64)])
        graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0] - 1, edges[:, 1] - 1)),
                           shape=(n_total, n_total))
        n_comp, comp = connected_components(graph, directed=False) if n_total else (0, np.zeros(0, np.int64))
        first_vox = np.concatenate([first[i][1] for i in range(len(indices))] + [np.zeros(0, np.int64)])
        sizes = np.concatenate([first[i][2] for i in range(len(indices))] + [np.zeros(0, np.int64)])
        comp_first = np.full(n_comp, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(comp_first, comp, first_vox)
        comp_size = np.bincount(comp, weights=sizes, minlength=n_comp)
        voxel_nm3 = float(np.prod(mask.voxel_size))
        kept = comp_size * voxel_nm3 >= min_size_nm3
        order = np.argsort(np.where(kept, comp_first, np.iinfo(np.int64).max), kind="stable")
        final = np.zeros(n_comp, np.int64)
        n_kept = int(kept.sum())
        final[order[:n_kept]] = np.arange(1, n_kept + 1)
        dtype = np.uint32 if n_kept < 2**32 else np.uint64
        mapping = np.concatenate([[0], final[comp]]).astype(dtype)
        mapping_path = str(tmp / "work" / "mapping.npy")
        np.save(mapping_path, mapping)
        job = _Job(mask, raw, work, job.labels, block, connectivity, threshold,  # type: ignore[arg-type]
                   job.offsets, mapping_path)
        root = zarr.open_group(str(labels_path), mode="w-", zarr_format=3)
        root.attrs.update({**ome_image_attrs(output.name, mask.voxel_size, mask.offset),
                           ORGANET_KEY: {"kind": "instances", "source": mask.path, "connectivity": connectivity,
                                         "min_size_nm3": min_size_nm3, "threshold": threshold}})
        root.create_array("s0", shape=shape, dtype=dtype, chunks=chunks, fill_value=0,
                          compressors=[BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")],
                          dimension_names=["z", "y", "x"])
        run(_relabel_block, "relabel", job)
        parts = run(_stats_block, "measure", job)
        table = _combine(list(parts.values()), mask, raw is not None)
        _atomic_table(table, tmp / "objects.csv")
        _atomic_table(table, tmp / "objects.parquet")
        shutil.rmtree(tmp / "work")
        replace_path(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return InstancesResult(output, n_kept, n_comp - n_kept, table, time.time() - t0)
