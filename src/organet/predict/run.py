"""Predict a volume (or an ROI of it) with a checkpoint and write OME-Zarr.

Output container ``OUT.zarr`` (zarr v3, OME-Zarr 0.5) holds two images with the
input's voxel size and the ROI's offset in nm (a model trained at a coarser voxel
size is applied on the fly, see :func:`predict_volume`):

* ``OUT.zarr/probability``: foreground probability as uint8 (0-255);
* ``OUT.zarr/mask``: binary mask (uint8 0/1), ``probability >= threshold``.

The container appears only when complete (written under a temporary name).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from organet.model.checkpoint import Checkpoint, load_checkpoint
from organet.predict.tiled import (
    default_tile_shape,
    plan_tiles,
    predict_tiles,
    probability_to_uint8,
    resolve_device,
)
from organet.volumes import Roi, Volume, open_volume, write_ome_zarr
from organet.volumes.resample import DownsampledVolume, coarse_cover, integer_factor, upsample_linear


@dataclass
class PredictionResult:
    output: Path
    roi: Roi
    tiles: int
    seconds: float
    voxels_per_second: float


def predict_volume(
    model: str | Path | Checkpoint,
    raw: str | Path | Volume,
    output: str | Path,
    roi: Roi | None = None,
    tile_shape: Sequence[int] | None = None,
    batch_size: int = 1,
    device: str = "auto",
    threshold: float = 0.5,
    chunks: Sequence[int] = (64, 64, 64),
    overwrite: bool = False,
    progress: bool = True,
    tta: str | None = None,
    check_preprocess: bool = True,
) -> PredictionResult:
    """Predict ``roi`` (voxels; default the whole volume) of ``raw`` into ``output``.

    ``tile_shape`` is the network input per tile (voxels); by default a tile
    with about 96 output voxels per axis. The result equals an untiled forward
    pass over the ROI (context comes from the real neighbourhood). ``tta``: see
    :func:`organet.predict.tiled.predict_tiles` (default off). An input whose recorded
    contrast normalization (``organet preprocess``) differs from the model's is refused
    unless ``check_preprocess=False``.

    A model trained at a whole multiple of the input's voxel size (10 nm on 5 nm data)
    sees block means of the input; its probabilities are interpolated linearly back onto
    the input grid, so the output always has the input's voxel size. Other voxel size
    mismatches raise ValueError.
    """
    ckpt = model if isinstance(model, Checkpoint) else load_checkpoint(model)
    vol = raw if isinstance(raw, Volume) else open_volume(raw)
    if check_preprocess:
        from organet.preprocess.normalize import check_preprocess as _check

        _check(ckpt.normalization.preprocess, vol.attrs, f"input {vol.path}", "the model")
    factor = model_factor(ckpt.voxel_size, vol.voxel_size)
    roi = roi if roi is not None else vol.roi
    if not vol.roi.contains(roi):
        raise ValueError(f"ROI {roi} lies outside the volume {vol.roi}")
    net = ckpt.build_model()
    dev = resolve_device(device)
    offset_nm = tuple(o + r * v for o, r, v in zip(vol.offset, roi.offset, vol.voxel_size))
    meta = {
        "model": {
            "organelle": ckpt.organelle,
            "iteration": ckpt.iteration,
            "path": None if isinstance(model, Checkpoint) else str(model),
            "voxel_size": list(ckpt.voxel_size),
        },
        "normalization": ckpt.normalization.model_dump(),
        "source": str(vol.path),
        "roi_vox": {"offset": list(roi.offset), "shape": list(roi.shape)},
        **({"tta": tta} if tta else {}),
        **({"resampled": {"factor": list(factor), "upsampling": "linear"}} if factor != (1, 1, 1) else {}),
    }
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    t0 = time.time()
    with write_ome_zarr(output, overwrite=overwrite) as out, Progress(*columns, disable=not progress) as bar:
        prob = out.create_image(
            "probability", roi.shape, np.uint8, vol.voxel_size, offset_nm, chunks,
            attrs={"kind": "probability", "scale": 255, **meta},
        )
        mask = out.create_image(
            "mask", roi.shape, np.uint8, vol.voxel_size, offset_nm, chunks,
            attrs={"kind": "mask", "threshold": threshold, **meta},
        )
        cut = int(np.ceil(threshold * 255 - 1e-9))

        def write(out_start: Sequence[int], p: np.ndarray) -> None:
            sl = tuple(slice(a - o, a - o + s) for a, o, s in zip(out_start, roi.offset, p.shape))
            u = probability_to_uint8(p)
            prob.write(sl, u)
            mask.write(sl, (u >= cut).astype(np.uint8))

        def run(source: Any, region: Roi, sink: Callable[[Sequence[int], np.ndarray], None]) -> int:
            tile = tuple(tile_shape) if tile_shape is not None else default_tile_shape(ckpt.architecture, region.shape)
            plan = plan_tiles(ckpt.architecture, tile, region.offset, region.shape)
            task = bar.add_task("predict", total=len(plan))
            predict_tiles(net, source, ckpt.normalization, plan, sink, batch_size, dev,
                          progress=lambda n: bar.advance(task, n), tta=tta)
            return len(plan)

        if factor == (1, 1, 1):
            n_tiles = run(vol, roi, write)
        else:
            n_tiles = _predict_resampled(run, vol, roi, factor, Path(output), chunks, write, bar)
    dt = time.time() - t0
    return PredictionResult(Path(output), roi, n_tiles, dt, roi.size / max(dt, 1e-9))


def model_factor(model_nm: Sequence[float], input_nm: Sequence[float]) -> tuple[int, int, int]:
    """How many input voxels make one model voxel per axis (1 = same grid).

    Raises ValueError when the model's voxel size is not an integer multiple (within 5 %)
    of the input's: resample the input first (``organet convert --downsample``).
    """
    f = integer_factor(model_nm, input_nm)
    if f is None:
        raise ValueError(
            f"the model was trained at {tuple(model_nm)} nm but the input has {tuple(input_nm)} nm voxels; "
            "prediction resamples only by whole factors (model voxel = k x input voxel). Convert the input "
            "to the model's voxel size first (organet convert --downsample, or your own resampling)"
        )
    return f


def _predict_resampled(
    run: Callable[[Any, Roi, Callable[[Sequence[int], np.ndarray], None]], int],
    vol: Volume,
    roi: Roi,
    factor: tuple[int, int, int],
    output: Path,
    chunks: Sequence[int],
    write: Callable[[Sequence[int], np.ndarray], None],
    bar: Any,
) -> int:
    """Predict at the model's coarser grid (block means of the input), keep the coarse
    probabilities in a temporary float32 zarr beside ``output``, then interpolate them
    linearly onto the input grid chunk by chunk (memory bounded by a chunk)."""
    import zarr

    from organet.volumes.convert import iter_blocks

    coarse_vol = DownsampledVolume(vol, factor)
    lo, hi = coarse_cover(roi.offset, roi.end, factor, coarse_vol.shape)
    croi = Roi(lo, tuple(b - a for a, b in zip(lo, hi)))
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.coarse-", dir=output.parent))
    try:
        store = zarr.open_array(str(tmp / "p.zarr"), mode="w", shape=croi.shape, dtype=np.float32,
                                chunks=tuple(min(64, n) for n in croi.shape))

        def keep(out_start: Sequence[int], p: np.ndarray) -> None:
            store[tuple(slice(a - o, a - o + s) for a, o, s in zip(out_start, croi.offset, p.shape))] = p

        n_tiles = run(coarse_vol, croi, keep)
        blocks = list(iter_blocks(roi.shape, chunks, 4, 64 * 2**20))
        task = bar.add_task(f"upsample x{'x'.join(map(str, factor))}", total=len(blocks))
        for block in blocks:
            f_lo = tuple(a + b for a, b in zip(roi.offset, block.offset))
            f_hi = tuple(a + b for a, b in zip(f_lo, block.shape))
            c_lo, c_hi = coarse_cover(f_lo, f_hi, factor, coarse_vol.shape)
            c = store[tuple(slice(a - o, b - o) for a, b, o in zip(c_lo, c_hi, croi.offset))]
            write(f_lo, upsample_linear(c, c_lo, coarse_vol.shape, factor, f_lo, f_hi))
            bar.advance(task)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return n_tiles
