"""Streaming conversion of any readable volume to OME-Zarr 0.5."""

from __future__ import annotations

import math
import os
from typing import Any, Iterator, Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from organet.errors import VolumeError

from .geometry import as_int3
from .ome_zarr import write_ome_zarr
from .readers import open_volume
from .resample import DownsampledVolume, Mode, as_factor, downsampled_geometry
from .roi import Roi
from .volume import Volume


def iter_blocks(shape: Sequence[int], chunks: Sequence[int], itemsize: int, max_bytes: int) -> Iterator[Roi]:
    """Chunk-aligned blocks covering ``shape`` (voxels, z, y, x), in z-major order.

    Each block is ``chunks[0]`` planes thick and spans the whole (y, x) plane when it fits
    in ``max_bytes``; otherwise y (then x) is split into multiples of the chunk size.
    """
    (sz, sy, sx), (cz, cy, cx) = shape, chunks
    by, bx = sy, sx
    if cz * sy * sx * itemsize > max_bytes:
        by = max(cy, (max_bytes // (cz * sx * itemsize)) // cy * cy)
        if cz * by * sx * itemsize > max_bytes:
            bx = max(cx, (max_bytes // (cz * by * itemsize)) // cx * cx)
    for z in range(0, sz, cz):
        for y in range(0, sy, by):
            for x in range(0, sx, bx):
                yield Roi((z, y, x), (min(cz, sz - z), min(by, sy - y), min(bx, sx - x)))


def convert_volume(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    voxel_size: Sequence[float] | None = None,
    offset: Sequence[float] | None = None,
    chunks: Sequence[int] = (64, 64, 64),
    roi: Roi | None = None,
    overwrite: bool = False,
    progress: bool = True,
    downsample: int | Sequence[int] | None = None,
    downsample_mode: Mode = "mean",
    *,
    max_block_bytes: int = 256 * 2**20,
) -> Volume:
    """Copy ``src`` (any spec accepted by open_volume) to an OME-Zarr 0.5 image at ``dst``.

    Streams blocks of ``chunks[0]`` z-planes aligned to the output chunks (split in y/x
    above ``max_block_bytes``), so memory stays bounded. ``roi`` (voxels of the source)
    selects a sub-volume; the output offset is source offset + roi.offset * voxel_size
    (nm). ``voxel_size``/``offset`` override the source metadata. ``downsample`` (1 or 3
    integers, z, y, x) writes the ROI at that many times the voxel size, each output voxel
    the ``downsample_mode`` of its block (``mean`` for raw, ``majority`` for 0/1 labels,
    ``max``); see :mod:`organet.volumes.resample`. The write is atomic; returns the opened
    result.
    """
    chunks = as_int3(chunks, "chunks", minimum=1)
    source = open_volume(src, voxel_size=voxel_size, offset=offset)
    try:
        roi = source.roi if roi is None else roi
        if not isinstance(roi, Roi):
            raise VolumeError(f"roi must be a Roi, got {type(roi).__name__}")
        if roi.empty or not source.roi.contains(roi):
            raise VolumeError(f"ROI {roi} is empty or outside {src} of shape {source.shape} voxels")
        vs = source.voxel_size
        out_offset = tuple(o + r * v for o, r, v in zip(source.offset, roi.offset, vs))
        reader: Any = source.crop(roi)
        attrs = dict(source.attrs)
        factor = as_factor(downsample) if downsample is not None else (1, 1, 1)
        if factor != (1, 1, 1):
            reader = DownsampledVolume(reader, factor, downsample_mode)
            vs, out_offset = downsampled_geometry(vs, out_offset, factor)
            attrs["downsampled"] = {"factor": list(factor), "mode": downsample_mode, "source_voxel_size": list(source.voxel_size)}
            max_block_bytes = max(1, max_block_bytes // math.prod(factor))
        shape = tuple(reader.shape)
        blocks = list(iter_blocks(shape, chunks, source.dtype.itemsize, max_block_bytes))
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with write_ome_zarr(dst, overwrite=overwrite) as writer:
            out = writer.create_image(None, shape, source.dtype, vs, out_offset, chunks, attrs=attrs)
            with Progress(*columns, disable=not progress) as bar:
                task = bar.add_task(f"converting {os.fspath(src)}", total=len(blocks))
                for block in blocks:
                    out.write(block, reader.read(block))
                    bar.advance(task)
    finally:
        source.close()
    return open_volume(dst)


__all__ = ["convert_volume", "iter_blocks"]
