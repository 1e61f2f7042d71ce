"""Streaming conversion of any readable volume to OME-Zarr 0.5, and :class:`ResumableImage`,
the resumable write of one OME-Zarr image by blocks that conversion, preprocessing and
masks share.

A :class:`ResumableImage` keeps its data in ``DST.partial`` and its finished blocks in the
ledger ``DST.progress`` (:class:`organet.blockwise.Ledger`, with the run's settings). A
killed run rerun with the same settings resumes; ``DST`` appears (by rename) only when
complete, so nothing half-written looks complete.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from organet.errors import InputError, VolumeError
from organet.progress import ProgressFn

from .atomic import fsync_chunks, remove_path, replace_path, temp_sibling
from .blocks import Block, plan_blocks
from .geometry import as_int3
from .ome_zarr import create_ome_image
from .readers import open_volume
from .resample import DownsampledVolume, Mode, as_factor, downsampled_geometry
from .roi import Roi
from .volume import Volume

if TYPE_CHECKING:  # pragma: no cover
    from organet.blockwise import Ledger

RUN_KEY = "organet_run"  # group attribute: the settings of the run that wrote the image
PARTIAL_SUFFIX = ".partial"
PROGRESS_SUFFIX = ".progress"


def _read_run(path: Path) -> dict[str, Any] | None:
    try:
        run = zarr.open_group(str(path), mode="r").attrs.get(RUN_KEY)
    except Exception:  # noqa: BLE001 - not ours / not zarr
        return None
    return dict(run) if isinstance(run, dict) else None


def write_image_block(partial: str | os.PathLike[str], roi: Roi, data: np.ndarray) -> None:
    """Write ``data`` at ``roi`` (voxels) of the image ``s0`` in ``partial`` and make its
    chunks durable (call from a block function, before its ledger entry is written)."""
    arr = zarr.open_array(str(partial), path="s0", mode="r+")
    sl = roi.slices()
    arr[sl] = data
    fsync_chunks(Path(partial) / "s0", sl, arr.chunks)


class ResumableImage:
    """One OME-Zarr 0.5 image (at the root of ``dst``) written by blocks, resumably.

    ``run`` (JSON) holds every setting that determines the bytes; it is recorded in the
    ledger ``DST.progress`` and in the image's group attributes (``organet_run``).

    * ``dst`` exists: refused (:class:`~organet.errors.InputError`) unless ``overwrite``,
      except when it holds this very run and its ledger is still there (a run that ended
      between its rename and removing the ledger): then :attr:`complete` is True.
    * a ledger of another run: refused unless ``overwrite`` (then it starts over).

    Use: open; run the passes with ``ledger=self.ledger``; :meth:`create` the image; run
    the write pass with block functions that call :func:`write_image_block` on
    ``str(self.partial)``; :meth:`commit`.
    """

    def __init__(self, dst: str | os.PathLike[str], run: dict[str, Any], overwrite: bool = False) -> None:
        from organet.blockwise import Ledger

        self.path = Path(dst).expanduser()
        self.partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self.ledger_path = self.path.with_name(self.path.name + PROGRESS_SUFFIX)
        self.run: dict[str, Any] = json.loads(json.dumps(run))
        self.overwrite = overwrite
        self.complete = False
        self.ledger: Ledger | None = None
        if self.path.exists() or self.path.is_symlink():
            if not overwrite and _read_run(self.path) == self.run and self._ledger_run() == self.run:
                remove_path(self.ledger_path)  # the run was renamed into place just before it ended
                self.complete = True
                return
            if not overwrite:
                raise InputError(f"output already exists: {self.path} (pass --overwrite to replace it)")
        self.ledger = Ledger.open(self.ledger_path, self.run, overwrite=overwrite)

    def _ledger_run(self) -> dict[str, Any] | None:
        """The settings recorded in a ledger at ``DST.progress`` (None: none or unreadable)."""
        try:
            run = json.loads((self.ledger_path / "ledger.json").read_text()).get("run")
        except (OSError, ValueError, AttributeError):
            return None
        return run if isinstance(run, dict) else None

    def _ledger(self) -> Ledger:
        if self.ledger is None:
            raise ValueError(f"{self.path} is already complete")  # a defect in the caller
        return self.ledger

    def create(
        self,
        shape: Sequence[int],
        dtype: Any,
        voxel_size: Sequence[float],
        offset: Sequence[float],
        chunks: Sequence[int],
        attrs: dict[str, Any],
        *,
        stage: str = "write",
        fill_value: Any = 0,
    ) -> None:
        """Create ``DST.partial`` with an empty image ``s0`` (``attrs`` under ``"organet"``),
        unless a partial of this run with finished blocks of ``stage`` is there to resume."""
        ledger = self._ledger()
        if self.partial.is_dir() and _read_run(self.partial) == self.run and ledger.entries(stage):
            return
        remove_path(ledger.stage_dir(stage))  # blocks recorded without their data: redo them
        remove_path(self.partial)
        tmp = temp_sibling(self.partial)
        try:
            root = zarr.open_group(str(tmp), mode="w-", zarr_format=3)
            create_ome_image(
                root, shape, dtype, voxel_size, offset, chunks, attrs, name=self.path.stem, fill_value=fill_value
            )
            root.attrs[RUN_KEY] = self.run
            replace_path(tmp, self.partial)
        except BaseException:
            remove_path(tmp)
            raise

    def commit(self) -> Volume:
        """Rename the finished partial to ``dst`` (replacing it if ``overwrite``), drop the
        ledger and return the result opened read-only."""
        ledger = self._ledger()
        if (self.path.exists() or self.path.is_symlink()) and not self.overwrite:
            raise InputError(f"output appeared while writing: {self.path} (pass --overwrite to replace it)")
        replace_path(self.partial, self.path)
        ledger.remove()
        self.complete = True
        return self.open()

    def open(self) -> Volume:
        """The finished image."""
        return open_volume(self.path)


@dataclass(frozen=True)
class _CopyJob:
    reader: Any  # Volume or DownsampledVolume (picklable: volumes reopen by path)
    partial: str


def _copy_block(job: _CopyJob, block: Block) -> None:
    write_image_block(job.partial, block.roi, job.reader.read(block.roi))


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
    on the Dask ``client``. The write is resumable and atomic (:class:`ResumableImage`:
    ``DST.partial`` + ledger ``DST.progress``, renamed when complete); ``progress`` gets
    ``progress(stage, advance, total)``. Returns the opened result.
    """
    from organet.blockwise import run_blocks

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
        out = ResumableImage(dst, run, overwrite=overwrite)
        if out.complete:
            return out.open()
        out.create(shape, source.dtype, vs, out_offset, plan.chunks, attrs, stage="convert")
        run_blocks(
            functools.partial(_copy_block, _CopyJob(reader, str(out.partial))),
            plan,
            stage="convert",
            ledger=out.ledger,
            client=client,
            retries=retries,
            progress=progress,
        )
        return out.commit()
    finally:
        source.close()


__all__ = ["PARTIAL_SUFFIX", "PROGRESS_SUFFIX", "RUN_KEY", "ResumableImage", "convert_volume", "write_image_block"]
