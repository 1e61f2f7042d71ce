"""Masks written as arrays: a sample/cell mask from intensity thresholds and morphology,
and the boundary exclusion-zone mask used by evaluation.

Arrays are (z, y, x); sizes of objects and holes are in nm³ (converted with the volume's
voxel size), widths of the exclusion zone in voxels (as in :mod:`organet.evaluate`).
Masks are uint8 with 1 = inside / scored, 0 = outside / ignored.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from organet.evaluate.exclusion import exclusion_zone
from organet.preprocess.intensity import iter_blocks
from organet.volumes import Volume, VolumeError


def nm3_to_voxels(size_nm3: float, voxel_size: Sequence[float]) -> int:
    """Volume in nm³ -> number of voxels (rounded up), voxel size in nm (z, y, x)."""
    if size_nm3 < 0:
        raise VolumeError(f"sizes must be >= 0 nm³, got {size_nm3}")
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
        raise VolumeError("give at least one intensity threshold (low and/or high)")
    if low is not None and high is not None and not high >= low:
        raise VolumeError(f"high threshold ({high}) must be >= low threshold ({low})")
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


def write_mask(dst: str, src: Volume, mask_fn, attrs: dict, block: Sequence[int], halo: int = 0,  # type: ignore[no-untyped-def]
               chunks: Sequence[int] = (64, 64, 64), overwrite: bool = False) -> Volume:
    """Write ``mask_fn(block with halo) -> uint8`` blockwise into OME-Zarr ``dst`` (atomic)."""
    from organet.volumes import write_ome_zarr

    with write_ome_zarr(dst, overwrite=overwrite) as w:
        out = w.create_image(None, src.shape, np.uint8, src.voxel_size, src.offset, chunks, attrs=attrs)
        for roi in iter_blocks(src.shape, block):
            ext = roi.grow(halo).intersect(src.roi)
            m = mask_fn(src.read(ext))
            inner = tuple(slice(a - b, a - b + s) for a, b, s in zip(roi.offset, ext.offset, roi.shape))
            out.write(roi, m[inner])
    return out


def sample_mask_volume(src: Volume, dst: str, overwrite: bool = False, **kwargs: object) -> Volume:
    """:func:`sample_mask_array` of a whole Volume into OME-Zarr ``dst``.

    Hole filling and component sizes are global, so the volume (or the ROI of a
    cropped Volume) is held in memory as 1 byte + 4 bytes per voxel.
    """
    m = sample_mask_array(src.read(), src.voxel_size, **kwargs)  # type: ignore[arg-type]
    attrs = {"kind": "sample_mask", "params": {k: v for k, v in kwargs.items()}, "source": src.path}
    return _write_array(dst, src, m, attrs, overwrite)


def _write_array(dst: str, like: Volume, m: np.ndarray, attrs: dict, overwrite: bool) -> Volume:
    from organet.volumes import write_ome_zarr

    with write_ome_zarr(dst, overwrite=overwrite) as w:
        out = w.create_image(None, like.shape, np.uint8, like.voxel_size, like.offset, (64, 64, 64), attrs=attrs)
        out.write(like.roi, m)
    return out


def exclusion_mask_volume(
    truth: Volume,
    dst: str,
    inner: int,
    outer: int,
    block: Sequence[int] = (64, 256, 256),
    overwrite: bool = False,
) -> Volume:
    """Evaluation mask of ``truth``: 1 = scored, 0 = in the boundary exclusion zone.

    ``inner``/``outer`` in voxels (city-block distance, as :func:`organet evaluate`
    uses); computed blockwise with a halo of ``max(inner, outer) + 1`` voxels, equal to
    the whole-volume result. Pass it to ``organet evaluate --mask``.
    """
    if inner < 0 or outer < 0:
        raise VolumeError(f"exclusion widths must be >= 0 voxels, got inner={inner}, outer={outer}")
    halo = max(inner, outer) + 1
    attrs = {"kind": "evaluation_mask", "exclusion_zone_vox": [inner, outer], "source": truth.path}
    return write_mask(dst, truth, lambda t: (~exclusion_zone(t > 0, inner, outer)).astype(np.uint8), attrs,
                      block, halo, overwrite=overwrite)
