"""``organet predict``: a volume (or an ROI of it) to OME-Zarr probabilities and a mask.

One driver, in-process or on Dask through the same block plan and runner, so both give
the same bytes. Output container ``OUT.zarr`` (zarr v3, OME-Zarr 0.5), with the
input's voxel size and the ROI's offset in nm (a model trained at another voxel size is
applied through :class:`~organet.predict.Predictor`, which resamples both ways)::

    OUT.zarr/probability/s0, s1, ...               uint8 0..255 = round(255 p); pyramid: mean
    OUT.zarr/probability/labels/mask/s0, s1, ...   uint8 0/1 = probability >= threshold; pyramid: max

The mask is the NGFF label image of the probability (``image-label`` metadata: colour and
properties of label 1, ``source`` = the probability image), so OME-Zarr viewers show it as
labels over the image (:data:`~organet.volumes.ome_zarr.PREDICTION_MASK`). Outputs of
earlier versions kept it in ``OUT.zarr/mask``.

While running, the data lives in ``OUT.zarr.partial`` and the finished blocks in the
ledger ``OUT.zarr.progress`` (:class:`~organet.blockwise.Ledger`); a rerun of the same
command resumes, and ``OUT.zarr`` appears (by rename) only when complete.

Passes: ``clahe-incasem`` (only when the model expects incasem's CLAHE and the input is
untouched raw: the region the tiles read, in incasem's write blocks, into the uint8 scratch
``OUT.zarr.partial/clahe_incasem``, which the network then reads), ``predict`` (output
blocks; with a model of another voxel size, blocks of the model grid made of whole tiles,
kept as float32 in ``OUT.zarr.partial/model_grid``), then ``resample`` (resampled runs:
output blocks resampled from the model grid), then the pyramids. No tile is
computed twice when the blocks are whole tile steps. Scratch arrays are removed before the
output is complete.

Sizes and offsets are in voxels, (z, y, x), unless named ``_nm``.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from organet.blockwise import Skip, run_blocks
from organet.blockwise.output import PARTIAL_SUFFIX, ResumableOutput, read_run, volume_identity, write_block
from organet.errors import IncompatibleError, InputError, VolumeError
from organet.model.checkpoint import file_sha256
from organet.progress import ProgressFn
from organet.volumes import Roi, Volume, open_volume
from organet.volumes.atomic import remove_path
from organet.volumes.blocks import Block, plan_blocks
from organet.volumes.foreground import probability_to_uint8, uint8_cut
from organet.volumes.geometry import Shape3, fmt_vec
from organet.volumes.ome_zarr import (
    MASK_RGBA,
    PREDICTION_IMAGE,
    PREDICTION_LABEL,
    PREDICTION_MASK,
    create_label_group,
    create_ome_image,
    image_label_attrs,
)
from organet.volumes.pyramid import build_pyramid
from organet.volumes.resample import Mode

from .predictor import Predictor
from .sample_mask import SampleMask
from .tiled import reflect_indices

MODEL_GRID = "model_grid"  # scratch array of a resampled run, removed before the output is complete
CLAHE_INCASEM = "clahe_incasem"  # scratch input normalized on the fly, removed before the output is complete
IMAGES: dict[str, Mode] = {PREDICTION_IMAGE: "mean", PREDICTION_MASK: "max"}
"""The images of ``OUT.zarr`` (paths inside it) and the downsampling of their pyramids."""


@dataclass
class PredictionResult:
    """What :func:`predict_volume` did. ``note`` reports adjustments (e.g. a rounded block shape)."""

    output: Path
    roi: Roi
    blocks: int
    computed: int
    skipped_by_mask: int
    resumed: int
    seconds: float
    voxels_per_second: float
    pyramid_levels: int
    already_complete: bool = False
    note: str = ""
    preprocess_on_the_fly: dict[str, Any] | None = None
    tile: Shape3 | None = None
    precision: str = ""


def default_chunks(step: Sequence[int], preferred: int = 64) -> Shape3:
    """Output chunks that fit the tile step (input voxels): ``preferred`` where its least
    common multiple with the step is at most 4 steps, else the divisor of the step closest
    to ``preferred``."""
    out = []
    for s in (int(v) for v in step):
        if math.lcm(s, preferred) <= 4 * max(s, preferred):
            out.append(preferred)
        else:
            out.append(min((d for d in range(1, s + 1) if s % d == 0), key=lambda d: (abs(d - preferred), -d)))
    return (out[0], out[1], out[2])


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs for one block (picklable; volumes reopen by path).

    ``origin``: the output's first voxel (input grid); ``region``: the model-grid region
    whose probabilities a resampled run keeps in ``partial/model_grid`` (float32);
    ``net_input``: what the network reads when it is not ``raw`` (the input normalized on
    the fly; ``raw`` still decides where the sample is)."""

    predictor: Predictor
    raw: Volume
    partial: str
    origin: Shape3
    region: Roi
    cut: int
    sample_mask: SampleMask | None
    net_input: Volume | None = None


def _write_output(job: _Job, block: Block, p: np.ndarray) -> None:
    u = probability_to_uint8(p)
    sl = block.local(job.origin)
    write_block(Path(job.partial) / PREDICTION_IMAGE / "s0", sl, u)
    write_block(Path(job.partial) / PREDICTION_MASK / "s0", sl, (u >= job.cut).astype(np.uint8))


def _predict_block(job: _Job, block: Block) -> Any:
    """The model on the input's grid: probabilities of one output block."""
    if job.sample_mask is not None and not job.sample_mask.has_sample(job.raw, block.roi):
        return Skip()
    src = job.net_input if job.net_input is not None else job.raw
    _write_output(job, block, job.predictor.predict(src, block.roi))
    return None


def recorded_tile(output: str | Path, pred: Predictor) -> Shape3 | None:
    """The tile an earlier run of the same model into ``output`` (unfinished or complete)
    used, so that resuming or rerunning it plans the same tiles whatever memory is free now."""
    out = Path(output).expanduser()
    for path in (out.with_name(out.name + PARTIAL_SUFFIX), out):
        run = read_run(path) if path.is_dir() else None
        rec = (run or {}).get("predictor") or {}
        if rec.get("checkpoint") == pred.checkpoint and isinstance(rec.get("tile"), list) and len(rec["tile"]) == 3:
            t = rec["tile"]
            return (int(t[0]), int(t[1]), int(t[2]))
    return None


def input_box(pred: Predictor, vol: Volume, roi: Roi) -> Roi:
    """The input voxels the tiles of ``pred`` (tile and anchor fixed, same voxel size as
    ``vol``) read to predict ``roi``: their inputs, mirrored into the volume, as one box."""
    grid = pred.grid()
    _, _, starts = grid.covering(roi.offset, roi.end, pred.anchor or (0, 0, 0))
    lo, hi = [], []
    for axis, (c, t, size) in enumerate(zip(grid.context, grid.tile_in, vol.shape)):
        first, last = min(s[axis] for s in starts), max(s[axis] for s in starts)
        idx = reflect_indices(first - c, last - c + t, size)
        lo.append(int(idx.min()))
        hi.append(int(idx.max()) + 1)
    return Roi(lo, [b - a for a, b in zip(lo, hi)])


def _model_grid_block(job: _Job, block: Block) -> Any:
    """A resampled run, pass 1: probabilities of one block of the model grid (whole tiles)."""
    if job.sample_mask is not None and not job.sample_mask.has_sample(
        job.raw, job.predictor.grid_map(job.raw).source_box(block.roi.offset, block.roi.end)
    ):
        return Skip()
    p = job.predictor.predict_model_grid(job.predictor.model_grid(job.raw), block.roi)
    write_block(Path(job.partial) / MODEL_GRID, block.local(job.region.offset), p)
    return None


def _resample_block(job: _Job, block: Block) -> Any:
    """A resampled run, pass 2: one output block interpolated from the stored model-grid probabilities."""
    if job.sample_mask is not None and not job.sample_mask.has_sample(job.raw, block.roi):
        return Skip()
    need = job.predictor.model_region(job.raw, block.roi)
    stored = zarr.open_array(str(Path(job.partial) / MODEL_GRID), mode="r")
    p = np.asarray(stored[tuple(slice(a - o, b - o) for a, b, o in zip(need.offset, need.end, job.region.offset))])
    _write_output(job, block, job.predictor.resample(job.raw, p, need, block.roi))
    return None


def predict_volume(
    predictor: Predictor | str | Path,
    raw: str | Path | Volume,
    output: str | Path,
    *,
    roi: Roi | None = None,
    threshold: float = 0.5,
    chunks: Sequence[int] | None = None,
    block_shape: Sequence[int] | None = None,
    sample_mask: SampleMask | None = None,
    client: Any | None = None,
    retries: int = 2,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    check_preprocess: bool = True,
) -> PredictionResult:
    """Predict ``roi`` (input voxels; default the whole volume) of ``raw`` into ``output``.

    Parameters
    ----------
    predictor
        A :class:`Predictor` (or a checkpoint path, with default settings).
    raw
        The input volume (or its path).
    output
        ``OUT.zarr``; refused if it exists unless ``overwrite`` (a complete output of the
        same run is reported as such and left alone).
    threshold
        Foreground probability for the mask, in [0, 1].
    chunks, block_shape
        Output chunks and block shape (voxels). By default chunks that fit the tile step
        and blocks of whole tiles and chunks near 256 voxels; a given block shape is rounded
        to whole chunks (:attr:`PredictionResult.note` says how).
    sample_mask
        Blocks without sample are skipped (read 0).
    client
        A Dask ``distributed.Client``; None runs the same blocks in this process.
    retries
        Extra attempts per failing block; blocks that still fail raise
        :class:`~organet.errors.BlockFailures` and the partial output stays for a rerun.
    check_preprocess
        Refuse an input whose recorded contrast normalization differs from the model's.
        A model that expects ``clahe-incasem`` applied to untouched raw at its own voxel
        size normalizes it on the fly (pass ``clahe-incasem``; recorded in the metadata);
        False turns both off (for data normalized by another tool, e.g. incasem itself).
    """
    t0 = time.time()
    pred = predictor if isinstance(predictor, Predictor) else Predictor.from_checkpoint(predictor)
    if pred.checkpoint is None and client is not None:
        raise InputError("prediction on Dask needs a model from a checkpoint file")
    vol = raw if isinstance(raw, Volume) else open_volume(raw)
    on_fly: dict[str, Any] | None = None
    if check_preprocess:
        from organet.preprocess.normalize import check_preprocess as _check

        on_fly = _check(pred.normalization.preprocess, vol.attrs, f"input {vol.path}", "the model", on_the_fly=True)
    gmap = pred.grid_map(vol)
    resampled = not gmap.identity
    if on_fly is not None and resampled:
        raise IncompatibleError(
            f"the model expects {on_fly['method']} contrast computed at its voxel size {fmt_vec(pred.voxel_size)} nm, "
            f"but the input {vol.path or '<in memory>'} has {fmt_vec(vol.voxel_size)} nm voxels and no preprocessing; "
            f"run `organet preprocess --method {on_fly['method']}` on data at {fmt_vec(pred.voxel_size)} nm "
            "(resample it there first, e.g. organet convert --downsample) and predict on that"
        )
    if client is not None and vol._spec is None and not isinstance(vol.data, np.ndarray):
        raise VolumeError(f"{vol.path or 'the input volume'} cannot be sent to Dask workers: open it from a file")
    roi = roi if roi is not None else vol.roi
    if roi.empty or not vol.roi.contains(roi):
        raise InputError(f"ROI {roi} lies outside the volume {vol.path} of shape {vol.shape} or is empty")
    cut = uint8_cut(threshold)
    if pred.tile is None and not overwrite:
        pred = replace(pred, tile=recorded_tile(output, pred))
    pred = pred.for_region(vol, roi)
    step = pred.grid().step
    region = pred.model_region(vol, roi)
    if chunks is not None:
        ch = tuple(int(c) for c in chunks)
    else:
        ch = (64, 64, 64) if resampled else default_chunks(step)
    ch = (min(ch[0], roi.shape[0]), min(ch[1], roi.shape[1]), min(ch[2], roi.shape[2]))
    unit = tuple(math.lcm(s, c) for s, c in zip(step, ch))
    if resampled or block_shape is not None or any(u > 4 * max(s, c) for u, s, c in zip(unit, step, ch)):
        unit = ch
    plan = plan_blocks(roi, ch, block_shape, unit=unit, context=pred.context_vox(vol))
    note = plan.note
    if resampled:  # pass 1 on the model grid in whole tiles, pass 2 interpolates output blocks
        model_plan = plan_blocks(region, step, unit=step, target=128)
    elif any(b % s and b < n for b, s, n in zip(plan.block_shape, step, roi.shape)):
        note = (note + "; " if note else "") + (
            f"blocks are not whole tile steps ({'x'.join(map(str, step))} voxels), so tiles on block edges are "
            "computed more than once"
        )
    clahe_plan = None
    if on_fly is not None:  # the region the tiles read, in whole write blocks of incasem's grid
        from organet.preprocess.clahe_incasem import snap_to_grid

        wb = tuple(min(int(b), n) for b, n in zip(on_fly["block"], vol.shape))
        clahe_plan = plan_blocks(snap_to_grid(input_box(pred, vol, roi), wb, vol.shape), wb, wb)
    offset_nm = tuple(o + r * v for o, r, v in zip(vol.offset, roi.offset, vol.voxel_size))
    output = Path(output).expanduser()
    model_path = pred.checkpoint
    run = {
        "predictor": pred.describe(),
        "checkpoint_sha256": file_sha256(model_path) if model_path else None,
        "input": volume_identity(vol),
        "input_shape": list(vol.shape),
        "voxel_size": list(vol.voxel_size),
        "roi_offset": list(roi.offset),
        "roi_shape": list(roi.shape),
        "chunks": list(ch),
        "block_shape": list(plan.block_shape),
        "threshold": float(threshold),
        "resampled": gmap.describe() if resampled else None,
        "sample_mask": sample_mask.describe() if sample_mask is not None else None,
        **({"preprocess_on_the_fly": on_fly} if on_fly is not None else {}),
        "mask_path": PREDICTION_MASK,  # the layout: runs of earlier layouts are not resumed into this one
    }
    meta = {
        "model": {
            "organelle": pred.organelle,
            "iteration": pred.iteration,
            "path": model_path,
            "voxel_size": list(pred.voxel_size),
        },
        "normalization": pred.normalization.model_dump(),
        "source": vol.path,
        "roi_vox": {"offset": list(roi.offset), "shape": list(roi.shape)},
        **({"tta": pred.tta} if pred.tta else {}),
        **({"resampled": {"to_model": gmap.describe(), "back": gmap.inverse().describe()}} if resampled else {}),
        **({"preprocess_on_the_fly": on_fly} if on_fly is not None else {}),
    }
    out = ResumableOutput(output, run, overwrite=overwrite)
    if out.complete:
        return PredictionResult(
            output,
            roi,
            len(plan),
            0,
            0,
            len(plan),
            time.time() - t0,
            0.0,
            _levels(output),
            already_complete=True,
            note=note,
            preprocess_on_the_fly=on_fly,
            tile=pred.tile,
            precision=pred.resolved_precision(),
        )
    out.start(
        functools.partial(
            _create_images,
            model_grid=(region.shape, step) if resampled else None,
            scratch=(vol.shape, clahe_plan.chunks) if clahe_plan is not None else None,
            shape=roi.shape,
            chunks=ch,
            voxel_size=vol.voxel_size,
            offset_nm=offset_nm,
            meta=meta,
            threshold=threshold,
        )
    )
    passes = functools.partial(run_blocks, ledger=out.ledger, client=client, retries=retries, progress=progress)
    net_input = None
    if on_fly is not None and clahe_plan is not None:
        from organet.preprocess.clahe_incasem import IncasemJob, write_incasem_block
        from organet.preprocess.intensity import PreprocessParams

        scratch = out.partial / CLAHE_INCASEM
        clahe_job = IncasemJob(vol, PreprocessParams(**on_fly), str(scratch))
        passes(functools.partial(write_incasem_block, clahe_job), clahe_plan, stage="clahe-incasem")
        if scratch.is_dir():
            net_input = open_volume(scratch, voxel_size=vol.voxel_size, offset=vol.offset)
        elif len(out.ledger.entries("predict")) < len(plan):  # removed only after the predict pass
            raise RuntimeError(f"{scratch} is missing but blocks remain to predict")  # a defect
    job = _Job(pred, vol, str(out.partial), roi.offset, region, cut, sample_mask, net_input)
    if resampled:
        passes(functools.partial(_model_grid_block, job), model_plan, stage="predict")
        stage, fn = "resample", _resample_block
    else:
        stage, fn = "predict", _predict_block
    resumed = len(out.ledger.entries(stage))
    done = passes(functools.partial(fn, job), plan, stage=stage)
    remove_path(out.partial / MODEL_GRID)
    remove_path(out.partial / CLAHE_INCASEM)
    levels = 1
    for name, mode in IMAGES.items():
        levels = build_pyramid(
            str(out.partial / name), mode, client=client, retries=retries, ledger=out.ledger, progress=progress
        )
    out.commit()
    skipped = sum(1 for e in done.values() if e["status"] == "skipped")
    dt = time.time() - t0
    return PredictionResult(
        output,
        roi,
        len(plan),
        len(plan) - resumed,
        skipped,
        resumed,
        dt,
        roi.size / max(dt, 1e-9),
        levels,
        note=note,
        preprocess_on_the_fly=on_fly,
        tile=pred.tile,
        precision=pred.resolved_precision(),
    )


def _levels(output: Path) -> int:
    try:
        g = zarr.open_group(str(output / PREDICTION_IMAGE), mode="r")
        return sum(1 for k in g.array_keys() if k.startswith("s"))
    except Exception:  # noqa: BLE001
        return 0


def _create_images(
    folder: Path,
    *,
    shape: Shape3,
    chunks: Shape3,
    voxel_size: Sequence[float],
    offset_nm: Sequence[float],
    meta: dict[str, Any],
    threshold: float,
    model_grid: tuple[Shape3, Shape3] | None,
    scratch: tuple[Shape3, Shape3] | None = None,
) -> None:
    """The empty ``probability`` image and its ``labels/mask`` label image in a fresh
    ``OUT.zarr.partial`` (and, for a resampled run, the float32 model-grid probabilities of
    shape and chunks ``model_grid``; for an input normalized on the fly, its uint8 array of
    shape and chunks ``scratch``)."""
    root = zarr.open_group(str(folder), mode="w", zarr_format=3)
    for name, spec, dtype in ((CLAHE_INCASEM, scratch, np.uint8), (MODEL_GRID, model_grid, np.float32)):
        if spec is not None:
            zarr.create_array(
                str(folder / name), shape=spec[0], chunks=spec[1], dtype=dtype, fill_value=0, zarr_format=3
            )
    image = root.require_group(PREDICTION_IMAGE)
    geometry = (shape, np.uint8, voxel_size, offset_nm, chunks)
    create_ome_image(image, *geometry, {"kind": "probability", "scale": 255, **meta}, name=PREDICTION_IMAGE)
    organelle = meta.get("model", {}).get("organelle") or "foreground"
    label = image_label_attrs(
        colors={0: (0, 0, 0, 0), 1: MASK_RGBA},
        properties={0: {"class": "background"}, 1: {"class": organelle, "threshold": threshold}},
        source="../../",
    )
    create_ome_image(
        create_label_group(image, PREDICTION_LABEL),
        *geometry,
        {"kind": "mask", "threshold": threshold, **meta},
        name=PREDICTION_LABEL,
        image_label=label,
    )


__all__ = ["PredictionResult", "default_chunks", "predict_volume"]
