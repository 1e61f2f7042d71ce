"""Masks written as arrays: a sample/cell mask from intensity thresholds and morphology,
and the boundary exclusion-zone mask used by evaluation.

Arrays are (z, y, x); sizes of objects and holes are in nm³ (converted with the volume's
voxel size), widths of the exclusion zone in voxels (as in :mod:`organet.evaluate`).
Masks are uint8 with 1 = inside / scored, 0 = outside / ignored.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from organet.blockwise import run_blocks
from organet.blockwise.output import ResumableOutput, single_image, volume_identity, write_block
from organet.errors import InputError
from organet.evaluate.exclusion import exclusion_zone
from organet.progress import ProgressFn, advance, announce
from organet.volumes.blocks import Block, plan_blocks
from organet.volumes.foreground import foreground, prediction_kind
from organet.volumes.geometry import as_int3
from organet.volumes.ome_zarr import write_ome_zarr
from organet.volumes.readers import open_volume
from organet.volumes.volume import Volume


def nm3_to_voxels(size_nm3: float, voxel_size: Sequence[float]) -> int:
    """Volume in nm³ -> number of voxels (rounded up), voxel size in nm (z, y, x)."""
    if size_nm3 < 0:
        raise InputError(f"sizes must be >= 0 nm³, got {size_nm3}")
    return int(math.ceil(size_nm3 / math.prod(voxel_size) - 1e-9))


def sample_mask_array(
    raw: np.ndarray,
    voxel_size: Sequence[float],
    low: float | None = None,
    high: float | None = None,
    smooth_nm: float = 0.0,
    min_object_nm3: float = 0.0,
    max_hole_nm3: float | None = None,
    keep_largest: bool = False,
) -> np.ndarray:
    """Sample/cell mask of a (z, y, x) array: ``low <= raw <= high`` then morphology.

    ``smooth_nm``: Gaussian sigma (nm) applied to raw before thresholding (0 = none).
    ``min_object_nm3``: remove foreground components smaller than this.
    ``max_hole_nm3``: fill background holes (not touching the border) up to this size;
    None fills every hole. ``keep_largest``: keep only the largest component.
    Returns uint8 0/1. Connectivity: 26 for objects, 6 for holes.
    """
    if low is None and high is None:
        raise InputError("give at least one intensity threshold (low and/or high)")
    if low is not None and high is not None and not high >= low:
        raise InputError(f"high threshold ({high}) must be >= low threshold ({low})")
    x = np.asarray(raw, dtype=np.float32)
    if smooth_nm > 0:
        x = ndimage.gaussian_filter(x, [smooth_nm / v for v in voxel_size])
    fg = np.ones(x.shape, bool)
    if low is not None:
        fg &= x >= low
    if high is not None:
        fg &= x <= high
    if max_hole_nm3 is None:
        fg = ndimage.binary_fill_holes(fg)
    elif max_hole_nm3 > 0:
        holes, n = ndimage.label(~fg)
        if n:
            sizes = np.bincount(holes.ravel())
            border = np.unique(np.concatenate([np.unique(f) for f in _faces(holes)]))
            small = sizes <= nm3_to_voxels(max_hole_nm3, voxel_size)
            small[0] = False
            small[border] = False
            fg |= small[holes]
    labels, n = ndimage.label(fg, structure=np.ones((3, 3, 3), bool))
    if n:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        keep = sizes >= max(1, nm3_to_voxels(min_object_nm3, voxel_size))
        if keep_largest:
            keep &= np.arange(len(sizes)) == int(np.argmax(sizes))
        keep[0] = False
        fg = keep[labels]
    return fg.astype(np.uint8)


def _faces(a: np.ndarray) -> list[np.ndarray]:
    return [a[0], a[-1], a[:, 0], a[:, -1], a[:, :, 0], a[:, :, -1]]


def sample_mask_volume(
    src: Volume,
    dst: str | os.PathLike[str],
    overwrite: bool = False,
    *,
    low: float | None = None,
    high: float | None = None,
    smooth_nm: float = 0.0,
    min_object_nm3: float = 0.0,
    max_hole_nm3: float | None = None,
    keep_largest: bool = False,
    chunks: Sequence[int] = (64, 64, 64),
    progress: ProgressFn | None = None,
) -> Volume:
    """:func:`sample_mask_array` of a whole Volume into OME-Zarr ``dst`` (uint8 0/1).

    Hole filling and component sizes are global, so the volume (or the ROI of a cropped
    Volume) is held in memory as 1 byte + 4 bytes per voxel; the mask is then written
    block by block (stage ``"write"``, blocks of the block plan) into a temporary
    container renamed to ``dst`` when complete. An existing ``dst`` is refused unless
    ``overwrite``.
    """
    params: dict[str, Any] = {
        "low": low,
        "high": high,
        "smooth_nm": smooth_nm,
        "min_object_nm3": min_object_nm3,
        "max_hole_nm3": max_hole_nm3,
        "keep_largest": keep_largest,
    }
    m = sample_mask_array(src.read(), src.voxel_size, **params)
    attrs = {"kind": "sample_mask", "params": params, "source": src.path}
    plan = plan_blocks(src.roi, chunks)
    with write_ome_zarr(dst, overwrite=overwrite) as w:
        out = w.create_image(None, src.shape, np.uint8, src.voxel_size, src.offset, plan.chunks, attrs=attrs)
        announce(progress, "write", len(plan))
        for block in plan:
            out.write(block.roi, m[block.roi.slices()])
            advance(progress, "write", 1, len(plan))
    return out


@dataclass(frozen=True)
class _ExclusionJob:
    truth: Volume
    inner: int
    outer: int
    partial: str


def _exclusion_block(job: _ExclusionJob, block: Block) -> None:
    read = block.read_roi.intersect(job.truth.roi)
    fg = foreground(job.truth.read(read), prediction_kind(job.truth))
    keep = ~exclusion_zone(fg, job.inner, job.outer)
    sl = tuple(slice(a - r, e - r) for a, e, r in zip(block.roi.offset, block.roi.end, read.offset))
    write_block(Path(job.partial) / "s0", block.roi.slices(), keep[sl].astype(np.uint8))


def exclusion_mask_volume(
    truth: Volume,
    dst: str | os.PathLike[str],
    inner: int,
    outer: int,
    block: Sequence[int] = (64, 256, 256),
    overwrite: bool = False,
    *,
    chunks: Sequence[int] = (64, 64, 64),
    client: Any | None = None,
    retries: int = 2,
    progress: ProgressFn | None = None,
) -> Volume:
    """Evaluation mask of ``truth``: 1 = scored, 0 = in the boundary exclusion zone.

    Foreground is :func:`organet.volumes.foreground.foreground` (labels and masks ``> 0``).
    ``inner``/``outer`` in voxels (city-block distance, as :func:`organet evaluate`
    uses); computed blockwise (stage ``"write"``; ``block`` rounded to whole ``chunks``)
    with a context of ``max(inner, outer) + 1`` voxels, equal to the whole-volume result.
    Runs here or on the Dask ``client``; resumable like :func:`organet.preprocess.preprocess_volume`
    (``DST.partial`` + ledger ``DST.progress``, renamed when complete). Pass the result to
    ``organet evaluate --mask``.
    """
    if inner < 0 or outer < 0:
        raise InputError(f"exclusion widths must be >= 0 voxels, got inner={inner}, outer={outer}")
    halo = max(inner, outer) + 1
    plan = plan_blocks(truth.roi, chunks, as_int3(block, "block", minimum=1), context=(halo, halo, halo))
    run = {
        "kind": "exclusion_mask",
        "source": volume_identity(truth),
        "source_shape": list(truth.shape),
        "voxel_size": list(truth.voxel_size),
        "offset": list(truth.offset),
        "exclusion_zone_vox": [inner, outer],
        "chunks": list(plan.chunks),
        "block_shape": list(plan.block_shape),
    }
    out = ResumableOutput(dst, run, overwrite=overwrite)
    if out.complete:
        return open_volume(out.path)
    attrs = {"kind": "evaluation_mask", "exclusion_zone_vox": [inner, outer], "source": truth.path}
    out.start(
        single_image(truth.shape, np.uint8, truth.voxel_size, truth.offset, plan.chunks, attrs, name=out.path.stem)
    )
    run_blocks(
        functools.partial(_exclusion_block, _ExclusionJob(truth, inner, outer, str(out.partial))),
        plan,
        stage="write",
        ledger=out.ledger,
        client=client,
        retries=retries,
        progress=progress,
    )
    return open_volume(out.commit())
