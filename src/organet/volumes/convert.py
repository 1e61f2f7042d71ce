"""Streaming conversion of any readable volume to OME-Zarr 0.5, resumable
(:class:`organet.blockwise.output.ResumableOutput`)."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from organet.errors import VolumeError
from organet.progress import ProgressFn

from .blocks import Block, plan_blocks
from .geometry import as_int3
from .readers import open_volume
from .resample import DownsampledVolume, Mode, as_factor, downsampled_geometry
from .roi import Roi
from .volume import Volume

if TYPE_CHECKING:  # pragma: no cover
    pass


@dataclass(frozen=True)
class _CopyJob:
    reader: Any  # Volume or DownsampledVolume (picklable: volumes reopen by path)
    partial: str


def _copy_block(job: _CopyJob, block: Block) -> None:
    from organet.blockwise.output import write_block

    write_block(Path(job.partial) / "s0", block.roi.slices(), job.reader.read(block.roi))


def convert_volume(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    voxel_size: Sequence[float] | None = None,
    offset: Sequence[float] | None = None,
    chunks: Sequence[int] = (64, 64, 64),
    roi: Roi | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    downsample: int | Sequence[int] | None = None,
    downsample_mode: Mode = "mean",
    *,
    max_block_bytes: int = 256 * 2**20,
    client: Any | None = None,
    retries: int = 2,
) -> Volume:
    """Copy ``src`` (any spec accepted by open_volume) to an OME-Zarr 0.5 image at ``dst``.

    Streams blocks of ``chunks[0]`` z-planes aligned to the output chunks (split in y/x
    above ``max_block_bytes``; :func:`~organet.volumes.blocks.plan_blocks` with
    ``max_bytes``), so memory stays bounded. ``roi`` (voxels of the source) selects a
    sub-volume; the output offset is source offset + roi.offset * voxel_size (nm).
    ``voxel_size``/``offset`` override the source metadata. ``downsample`` (1 or 3
    integers, z, y, x) writes the ROI at that many times the voxel size, each output voxel
    the ``downsample_mode`` of its block (``mean`` for raw, ``majority`` for 0/1 labels,
    ``max``); see :mod:`organet.volumes.resample`.

    The blocks run on :func:`organet.blockwise.run_blocks` (stage ``"convert"``): here, or
    on the Dask ``client``. The write is resumable and atomic (:class:`~organet.blockwise.output.ResumableOutput`:
    ``DST.partial`` + ledger ``DST.progress``, renamed when complete); ``progress`` gets
    ``progress(stage, advance, total)``. Returns the opened result.
    """
    from organet.blockwise import run_blocks
    from organet.blockwise.output import ResumableOutput, single_image

    if isinstance(progress, bool):  # transitional: callers of the former progress=True/False flag
        progress = None
    chunks = as_int3(chunks, "chunks", minimum=1)
    source = open_volume(src, voxel_size=voxel_size, offset=offset)
    try:
        roi = source.roi if roi is None else roi
        if not isinstance(roi, Roi):
            raise VolumeError(f"roi must be a Roi, got {type(roi).__name__}")
        if roi.empty or not source.roi.contains(roi):
            raise VolumeError(f"ROI {roi} is empty or outside {src} of shape {source.shape} voxels")
        vs: Sequence[float] = source.voxel_size
        out_offset: Sequence[float] = tuple(o + r * v for o, r, v in zip(source.offset, roi.offset, vs))
        reader: Volume | DownsampledVolume = source.crop(roi)
        attrs = dict(source.attrs)
        factor = as_factor(downsample) if downsample is not None else (1, 1, 1)
        itemsize = source.dtype.itemsize
        if factor != (1, 1, 1):
            reader = DownsampledVolume(reader, factor, downsample_mode)
            vs, out_offset = downsampled_geometry(vs, out_offset, factor)
            attrs["downsampled"] = {
                "factor": list(factor),
                "mode": downsample_mode,
                "source_voxel_size": list(source.voxel_size),
            }
            itemsize *= factor[0] * factor[1] * factor[2]  # a block reads this many source bytes per voxel
        shape = as_int3(reader.shape, "output shape", minimum=1)
        plan = plan_blocks(Roi((0, 0, 0), shape), chunks, max_bytes=max_block_bytes, itemsize=itemsize)
        run = {
            "kind": "convert",
            "source": os.fspath(src),
            "source_shape": list(source.shape),
            "dtype": str(source.dtype),
            "voxel_size": list(source.voxel_size),
            "offset": list(source.offset),
            "roi_offset": list(roi.offset),
            "roi_shape": list(roi.shape),
            "downsample": list(factor),
            "downsample_mode": downsample_mode,
            "chunks": list(plan.chunks),
            "block_shape": list(plan.block_shape),
        }
        out = ResumableOutput(dst, run, overwrite=overwrite)
        if out.complete:
            return open_volume(out.path)
        out.start(single_image(shape, source.dtype, vs, out_offset, plan.chunks, attrs, name=out.path.stem))
        run_blocks(
            functools.partial(_copy_block, _CopyJob(reader, str(out.partial))),
            plan,
            stage="convert",
            ledger=out.ledger,
            client=client,
            retries=retries,
            progress=progress,
        )
        return open_volume(out.commit())
    finally:
        source.close()


__all__ = ["convert_volume"]
