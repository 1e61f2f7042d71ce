"""Predict a volume (or an ROI of it) with a checkpoint and write OME-Zarr.

Output container ``OUT.zarr`` (zarr v3, OME-Zarr 0.5) holds two images with the
input's voxel size and the ROI's offset in nm:

* ``OUT.zarr/probability``: foreground probability as uint8 (0-255);
* ``OUT.zarr/mask``: binary mask (uint8 0/1), ``probability >= threshold``.

The container appears only when complete (written under a temporary name).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from organet.model.checkpoint import Checkpoint, load_checkpoint
from organet.predict.tiled import (
    default_tile_shape,
    plan_tiles,
    predict_tiles,
    probability_to_uint8,
    resolve_device,
)
from organet.volumes import Roi, Volume, open_volume, write_ome_zarr


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
    """
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    ckpt = model if isinstance(model, Checkpoint) else load_checkpoint(model)
    vol = raw if isinstance(raw, Volume) else open_volume(raw)
    if check_preprocess:
        from organet.preprocess.normalize import check_preprocess as _check

        _check(ckpt.normalization.preprocess, vol.attrs, f"input {vol.path}", "the model")
    if not np.allclose(vol.voxel_size, ckpt.voxel_size, rtol=0.1):
        warnings.warn(
            f"input voxel size {tuple(vol.voxel_size)} nm differs from the model's {tuple(ckpt.voxel_size)} nm "
            "by more than 10 %; resample the input for reliable predictions",
            stacklevel=2,
        )
    roi = roi if roi is not None else vol.roi
    if not vol.roi.contains(roi):
        raise ValueError(f"ROI {roi} lies outside the volume {vol.roi}")
    net = ckpt.build_model()
    tile = tuple(tile_shape) if tile_shape is not None else default_tile_shape(ckpt.architecture, roi.shape)
    plan = plan_tiles(ckpt.architecture, tile, roi.offset, roi.shape)
    dev = resolve_device(device)
    offset_nm = tuple(o + r * v for o, r, v in zip(vol.offset, roi.offset, vol.voxel_size))
    meta = {
        "model": {"organelle": ckpt.organelle, "iteration": ckpt.iteration, "path": str(model) if not isinstance(model, Checkpoint) else None},
        "normalization": ckpt.normalization.model_dump(),
        "source": str(vol.path),
        "roi_vox": {"offset": list(roi.offset), "shape": list(roi.shape)},
        **({"tta": tta} if tta else {}),
    }
    t0 = time.time()
    with write_ome_zarr(output, overwrite=overwrite) as out:
        prob = out.create_image(
            "probability", roi.shape, np.uint8, vol.voxel_size, offset_nm, chunks,
            attrs={"kind": "probability", "scale": 255, **meta},
        )
        mask = out.create_image(
            "mask", roi.shape, np.uint8, vol.voxel_size, offset_nm, chunks,
            attrs={"kind": "mask", "threshold": threshold, **meta},
        )
        cut = int(np.ceil(threshold * 255 - 1e-9))

        def write(out_start: tuple[int, int, int], p: np.ndarray) -> None:
            sl = tuple(slice(a - o, a - o + s) for a, o, s in zip(out_start, roi.offset, p.shape))
            u = probability_to_uint8(p)
            prob.write(sl, u)
            mask.write(sl, (u >= cut).astype(np.uint8))

        with Progress(
            TextColumn("[bold]predict"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), disable=not progress,
        ) as bar:
            task = bar.add_task("predict", total=len(plan))
            predict_tiles(
                net, vol, ckpt.normalization, plan, write, batch_size, dev,
                progress=lambda n: bar.advance(task, n), tta=tta,
            )
    dt = time.time() - t0
    return PredictionResult(Path(output), roi, len(plan), dt, roi.size / max(dt, 1e-9))
