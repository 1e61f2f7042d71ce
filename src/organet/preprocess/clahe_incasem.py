"""``clahe-incasem``: 3-D CLAHE exactly as incasem (the ASEM paper's code) computes it.

incasem's pretrained models expect its contrast statistics, which differ from
scikit-image's :func:`~skimage.exposure.equalize_adapthist` on the whole volume
(``method="clahe"``). incasem cuts the volume into write blocks of ``block`` voxels on a
grid anchored at the volume's first voxel (daisy, ``fit="shrink"``: the last block per
axis is shorter) and equalizes every block on its own, from a read region that is the
write block grown by ``context = kernel // 2`` voxels on each side (incasem's
``(voxel_size * kernel + 1) // 2`` nm, a whole number of voxels for even kernels). Voxels of
the region outside the volume hold ``int(mean(raw[write block]))``. On the region:

1. ``img_as_uint`` (uint8 x 257), ``rescale_intensity(in_range="dtype", out_range=(0, 2**14 - 1))``,
   rounded to uint16 (the dtype range, not the region's min/max as scikit-image does);
2. scikit-image's CLAHE core (``_clahe``: tiles of ``kernel`` from the region's first voxel,
   reflect padding, clipped histograms of ``nbins`` bins, trilinear blending), float32
   truncated to uint16;
3. ``u16 / (2**14 - 1) * 255`` truncated to uint8 (no final min/max rescale).

The write block part of the result is the output. So a voxel depends only on the write
block it lies in: :func:`clahe_incasem_box` computes any box of a volume exactly as
incasem computes the whole volume, whichever way organet splits the work. Step 2 reuses
the CLAHE core of :mod:`organet.preprocess.intensity` (the same arithmetic as
scikit-image 0.26's ``_clahe``, which equals incasem's copy of it), evaluated only on the
write block: the tile histograms need the whole region, the blend only the voxels kept.

Arrays are (z, y, x); sizes, offsets, kernels and blocks are in voxels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from organet.blockwise.output import write_block
from organet.volumes.blocks import Block, BlockPlan, plan_blocks
from organet.volumes.geometry import Shape3, as_int3
from organet.volumes.roi import Roi
from organet.volumes.volume import Volume

from .intensity import (
    _NR_OF_GRAY,
    PreprocessParams,
    _to_uint16_scale,
    clahe_interpolate,
    clahe_maps,
    to_index,
    value_domain,
)

# -- geometry -------------------------------------------------------------------------


def incasem_context(kernel: Sequence[int]) -> Shape3:
    """Voxels read around every write block on each side: ``kernel // 2`` per axis.

    incasem's context is ``(voxel_size * kernel + 1) // 2`` nm (funlib's ``Coordinate``
    division truncates); for an even kernel ``voxel_size * kernel`` is even, so that is
    ``voxel_size * kernel / 2`` nm = ``kernel / 2`` voxels at any voxel size (64 for 128).
    """
    k = as_int3(kernel, "clahe-incasem kernel", minimum=2)
    if any(v % 2 for v in k):
        raise ValueError(f"clahe-incasem needs an even kernel, got {k}")  # PreprocessParams refuses it first
    return (k[0] // 2, k[1] // 2, k[2] // 2)


def incasem_grid(shape: Sequence[int], block: Sequence[int], kernel: Sequence[int]) -> BlockPlan:
    """incasem's write blocks of a volume of ``shape``: ``block``-sized from voxel 0, the last
    per axis shorter, each with :func:`incasem_context` (``Block.read_roi`` is its read region)."""
    s = as_int3(shape, "volume shape", minimum=1)
    b = as_int3(block, "clahe-incasem block", minimum=1)
    return plan_blocks(Roi((0, 0, 0), s), b, b, context=incasem_context(kernel))


def snap_to_grid(roi: Roi, block: Sequence[int], shape: Sequence[int]) -> Roi:
    """The smallest union of whole write blocks (grid of ``block`` from voxel 0, clipped to
    a volume of ``shape``) that contains ``roi``."""
    b = as_int3(block, "clahe-incasem block", minimum=1)
    lo = [(a // s) * s for a, s in zip(roi.offset, b)]
    hi = [min(math.ceil(e / s) * s, n) for e, s, n in zip(roi.end, b, shape)]
    return Roi(lo, [e - a for a, e in zip(lo, hi)])


def blocks_covering(grid: BlockPlan, roi: Roi) -> list[Block]:
    """The write blocks of ``grid`` (:func:`incasem_grid`) that intersect ``roi``, in raster order."""
    lo = [max(0, (a - o) // s) for a, o, s in zip(roi.offset, grid.roi.offset, grid.block_shape)]
    hi = [min(g, math.ceil((e - o) / s)) for e, o, s, g in zip(roi.end, grid.roi.offset, grid.block_shape, grid.grid)]
    return [
        grid.block((z, y, x)) for z in range(lo[0], hi[0]) for y in range(lo[1], hi[1]) for x in range(lo[2], hi[2])
    ]


# -- one block -----------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _bin_lut(domain: int, nbins: int) -> np.ndarray:
    """Raw value (``to_index``) -> CLAHE bin: img_as_uint, rescale of the dtype range to
    [0, 2**14) rounded (scikit-image's arithmetic), then ``// (1 + 2**14 // nbins)``."""
    from skimage.exposure import rescale_intensity

    v16 = _to_uint16_scale(np.arange(domain), domain)  # uint16, as img_as_uint gives it
    grey = np.round(rescale_intensity(v16, in_range="dtype", out_range=(0, _NR_OF_GRAY - 1))).astype(np.uint16)
    bins = grey // (1 + _NR_OF_GRAY // nbins)
    return bins.astype(np.uint8 if nbins <= 256 else np.uint16)


@functools.lru_cache(maxsize=1)
def _uint8_lut() -> np.ndarray:
    """uint16 CLAHE value -> incasem's uint8: ``(u / float(2**14 - 1)) * 255`` truncated."""
    u = np.arange(2**16, dtype=np.uint16)
    return ((u / float(_NR_OF_GRAY - 1)) * 255).astype(np.uint8)


def incasem_uint8(u16: np.ndarray) -> np.ndarray:
    """incasem's last step: CLAHE uint16 (0 .. 2**14 - 1) -> uint8, ``floor(u / 16383 * 255)``."""
    return _uint8_lut()[u16]


def clahe_incasem_u16(
    region: np.ndarray,
    kernel: Sequence[int],
    clip_limit: float,
    nbins: int,
    box: Roi | None = None,
) -> np.ndarray:
    """incasem's CLAHE of a read region before the uint8 step (uint16, 0 .. 2**14 - 1).

    Parameters
    ----------
    region
        The read region (z, y, x), uint8, uint16 or float in [0, 1], already filled
        outside the volume.
    kernel
        Contextual tile shape (voxels, z y x); tiles start at the region's first voxel.
    clip_limit, nbins
        scikit-image's normalized clip limit and number of histogram bins.
    box
        The voxels to return, in region voxels (default: the whole region).

    Returns
    -------
    ``skimage.exposure._adapthist._clahe(grey, kernel, clip_limit, nbins)[box]`` where
    ``grey`` is the region rescaled from its dtype range to [0, 2**14) (uint16).
    """
    k = as_int3(kernel, "CLAHE kernel", minimum=1)
    box = box if box is not None else Roi((0, 0, 0), region.shape)
    bins = _bin_lut(value_domain(region.dtype), int(nbins))[to_index(region)]
    tiles = [math.ceil(s / kk) for s, kk in zip(region.shape, k)]
    # the tiles reach past the region's end into scikit-image's reflect padding (< one kernel)
    padded = np.pad(bins, [(0, t * kk - s) for t, kk, s in zip(tiles, k, region.shape)], mode="reflect")
    hist = np.zeros((*tiles, int(nbins)), np.int64)
    for i in np.ndindex(*tiles):
        tile = padded[tuple(slice(a * kk, (a + 1) * kk) for a, kk in zip(i, k))]
        hist[i] = np.bincount(tile.ravel(), minlength=int(nbins))
    maps = clahe_maps(hist, k, clip_limit)
    return clahe_interpolate(bins[box.slices()], maps, box.offset, k)


def clahe_incasem_block(region: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """incasem's result (uint8) for one write block from its read region.

    ``region`` is the write block grown by :func:`incasem_context` on every side (filled
    outside the volume, see :func:`read_region`); the result has the write block's shape.
    """
    ctx = incasem_context(params.kernel)
    write = Roi(ctx, [s - 2 * c for s, c in zip(region.shape, ctx)])
    return incasem_uint8(clahe_incasem_u16(region, params.kernel, params.clip_limit, params.nbins, write))


def read_region(vol: Volume, block: Block) -> np.ndarray:
    """The read region of a write block of :func:`incasem_grid`: ``vol`` inside the volume,
    ``int(mean(vol[block.roi]))`` outside (incasem's fill value)."""
    read = block.read_roi
    inner = read.intersect(vol.roi)
    data = vol.read(inner)
    if inner == read:  # nothing to fill
        return data
    write = data[block.roi.shift([-o for o in inner.offset]).slices()]
    region = np.full(read.shape, int(np.mean(write)), dtype=data.dtype)
    region[inner.shift([-o for o in read.offset]).slices()] = data
    return region


# -- any box of a volume ----------------------------------------------------------------


def clahe_incasem_box(vol: Volume, roi: Roi, params: PreprocessParams) -> np.ndarray:
    """incasem's ``clahe-incasem`` of the voxels ``roi`` of ``vol`` (uint8, ``roi.shape``).

    Every write block of :func:`incasem_grid` that ``roi`` touches is computed whole from
    its read region and the overlap kept, so the result equals incasem's on the whole
    volume for any ``roi`` (no seams whatever the caller's blocks). A caller whose blocks
    are unions of write blocks computes each write block once.
    """
    if params.method != "clahe-incasem":
        raise ValueError(f"clahe_incasem_box needs method 'clahe-incasem', got {params.method!r}")  # a defect
    value_domain(vol.dtype)
    grid = incasem_grid(vol.shape, params.block, params.kernel)
    out = np.empty(roi.shape, np.uint8)
    for blk in blocks_covering(grid, roi):
        res = clahe_incasem_block(read_region(vol, blk), params)
        part = blk.roi.intersect(roi)
        out[part.shift([-o for o in roi.offset]).slices()] = res[part.shift([-o for o in blk.roi.offset]).slices()]
    return out


@dataclass(frozen=True)
class IncasemJob:
    """A blockwise pass writing ``clahe-incasem`` of ``vol`` into the zarr array at ``array``
    (indexed by ``vol``'s voxels; picklable: the volume reopens by path on workers)."""

    vol: Volume
    params: PreprocessParams
    array: str


def write_incasem_block(job: IncasemJob, block: Block) -> None:
    """Block function for :func:`organet.blockwise.run_blocks`: ``clahe-incasem`` of
    ``block.roi`` written (and fsynced) into ``job.array``."""
    write_block(Path(job.array), block.roi.slices(), clahe_incasem_box(job.vol, block.roi, job.params))


def incasem_unit(block: Sequence[int], chunks: Sequence[int], shape: Sequence[int], limit: int = 4) -> Shape3 | None:
    """A block unit for organet's plan over a volume of ``shape`` made of whole write blocks
    and whole ``chunks`` (clipped to the volume): ``lcm(block, chunks)`` per axis (the whole
    axis where one write block spans it), or None when that exceeds ``limit`` write blocks
    (any chunk-aligned plan is still exact then, but a write block split between two
    organet blocks is computed twice)."""
    u = []
    for b, c, n in zip(block, chunks, shape):
        b, c, n = int(b), min(int(c), int(n)), int(n)
        v = n if b >= n else math.lcm(b, c)
        if v > limit * max(b, c):
            return None
        u.append(min(v, n))
    return (u[0], u[1], u[2])


__all__ = [
    "IncasemJob",
    "blocks_covering",
    "clahe_incasem_block",
    "clahe_incasem_box",
    "clahe_incasem_u16",
    "incasem_context",
    "incasem_grid",
    "incasem_uint8",
    "incasem_unit",
    "read_region",
    "snap_to_grid",
    "write_incasem_block",
]
