"""Checkpoint-averaged evaluation: the checkpoints of one training run scored on the same data.

The ASEM paper (Gallusser et al. 2023, Tables S5–S8) reports F1 as the mean ± SD over
several checkpoints of a run rather than one hand-picked checkpoint.
:func:`evaluate_checkpoints` predicts the same region with each checkpoint
(:func:`organet.predict.predict_volume`, blockwise, resumable, in this process or on
Dask) and scores the predicted probability with
:func:`organet.evaluate.evaluate_volumes`, exactly as ``organet evaluate --pred
OUT/probability`` would, with one exclusion zone for all. Output folder::

    DIR/pred/iter_0001000.zarr       prediction of each checkpoint (OME-Zarr, see predict_volume)
    DIR/results/iter_0001000.json    its scores and the settings they were computed with
    DIR/summary.json, summary.md     per-checkpoint scores, mean and sample SD (ddof = 1)
    DIR/f1_vs_iteration.png          F1, precision and recall against iteration, mean ± SD band

A rerun skips every checkpoint whose result was computed with the same settings, and
resumes an unfinished prediction or evaluation from its ledger. ROIs are in voxels of the
input, (z, y, x); exclusion widths in voxels.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from organet.blockwise.output import volume_identity
from organet.errors import IncompatibleError, InputError
from organet.evaluate.blockwise import evaluate_volumes
from organet.evaluate.exclusion import resolve_exclusion
from organet.evaluate.metrics import Counts
from organet.progress import ProgressFn, advance, announce
from organet.volumes import Roi, Volume, open_volume
from organet.volumes.atomic import atomic_write_text
from organet.volumes.foreground import check_threshold
from organet.volumes.geometry import check_same_voxel_size, fmt_vec, same_voxel_size

METRICS = ("f1", "precision", "recall", "iou")
"""The scores averaged over checkpoints."""

STAGE = "checkpoints"
"""Progress stage: one unit per checkpoint (its predict and evaluate passes report their own)."""

_NAME = re.compile(r"^iter_(\d+)\.pt$")
SD_NOTE = "SD is the sample standard deviation over checkpoints (ddof = 1)"


def _run_checkpoints(run_dir: Path) -> dict[int, Path]:
    """``{iteration: path}`` of ``run_dir/checkpoints/iter_*.pt``, ascending."""
    if not run_dir.is_dir():
        raise InputError(f"run folder {run_dir} does not exist")
    folder = run_dir / "checkpoints"
    found = {}
    for p in folder.glob("iter_*.pt") if folder.is_dir() else ():
        m = _NAME.match(p.name)
        if m:
            found[int(m.group(1))] = p
    if not found:
        raise InputError(f"{run_dir} has no checkpoints (expected {folder}/iter_*.pt, as written by organet train)")
    return dict(sorted(found.items()))


def _fmt_iterations(its: Sequence[int]) -> str:
    shown = ", ".join(map(str, its)) if len(its) <= 8 else f"{', '.join(map(str, its[:3]))}, ..., {its[-1]}"
    return f"{shown} ({len(its)} checkpoint{'s' if len(its) != 1 else ''})"


def select_checkpoints(
    run_dir: str | os.PathLike[str],
    last: int | None = None,
    every: int | None = None,
    iterations: Sequence[int] | None = None,
) -> list[Path]:
    """The checkpoints of a training run to evaluate, in ascending iteration.

    Parameters
    ----------
    run_dir
        A run folder of ``organet train`` (checkpoints in ``run_dir/checkpoints/iter_*.pt``).
    last
        The last ``last`` checkpoints (of those at multiples of ``every`` when given).
    every
        Only checkpoints whose iteration is a multiple of ``every`` (iterations).
    iterations
        Exactly these iterations (not combined with ``last`` / ``every``).

    Notes
    -----
    Without any selection, every checkpoint of the run. Raises
    :class:`~organet.errors.InputError` for a folder without checkpoints, a selection that
    matches none, fewer checkpoints than ``last`` asks for, or a missing iteration.
    """
    run = Path(run_dir).expanduser()
    found = _run_checkpoints(run)
    have = list(found)
    if iterations is not None and (last is not None or every is not None):
        raise InputError("select checkpoints by iterations, or by last and/or every, not both")
    if iterations is not None:
        wanted = sorted({int(i) for i in iterations})
        if not wanted:
            raise InputError("no iterations given to select checkpoints")
        missing = [i for i in wanted if i not in found]
        if missing:
            raise InputError(
                f"{run}: no checkpoint at iteration {', '.join(map(str, missing))}; it has {_fmt_iterations(have)}"
            )
        return [found[i] for i in wanted]
    chosen = have
    if every is not None:
        if every < 1:
            raise InputError(f"every must be >= 1 iteration, got {every}")
        chosen = [i for i in have if i % every == 0]
        if not chosen:
            raise InputError(
                f"{run}: no checkpoint at a multiple of {every} iterations; it has {_fmt_iterations(have)}"
            )
    if last is not None:
        if last < 1:
            raise InputError(f"last must be >= 1 checkpoint, got {last}")
        if len(chosen) < last:
            which = f" at multiples of {every} iterations" if every is not None else ""
            raise InputError(
                f"{run}: asked for the last {last} checkpoints{which}, but there are only {_fmt_iterations(chosen)}"
            )
        chosen = chosen[-last:]
    return [found[i] for i in chosen]


@dataclass(frozen=True)
class CheckpointScore:
    """The scores of one checkpoint: voxel counts at the threshold, with its iteration and files."""

    iteration: int
    checkpoint: str
    prediction: str
    counts: Counts

    def metric(self, name: str) -> float:
        """One of :data:`METRICS` (NaN when its denominator is zero)."""
        return float(getattr(self.counts, name))

    def to_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "checkpoint": self.checkpoint,
            "prediction": self.prediction,
            **self.counts.to_dict(),
        }


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample SD (ddof = 1; NaN for one value); NaN if any value is NaN."""
    a = np.asarray(values, dtype=np.float64)
    mean = float(np.mean(a))
    sd = float(np.std(a, ddof=1)) if a.size >= 2 else math.nan
    return mean, sd


def _none_nan(x: float) -> float | None:
    return None if math.isnan(x) else x


@dataclass(frozen=True)
class CheckpointEvaluation:
    """Outcome of :func:`evaluate_checkpoints`: one row per checkpoint (ascending iteration),
    their mean and sample standard deviation (ddof = 1) per metric, and the settings."""

    rows: tuple[CheckpointScore, ...]
    organelle: str
    exclusion: tuple[int, int] | None
    threshold: float
    raw: str
    truth: str
    roi: Roi
    voxel_size: tuple[float, float, float]
    output_dir: Path
    computed: int = 0

    @property
    def mean(self) -> dict[str, float]:
        """Mean over checkpoints of each of :data:`METRICS` (NaN if a checkpoint's is undefined)."""
        return {m: _mean_sd([r.metric(m) for r in self.rows])[0] for m in METRICS}

    @property
    def sd(self) -> dict[str, float]:
        """Sample standard deviation (ddof = 1) over checkpoints; NaN for a single checkpoint."""
        return {m: _mean_sd([r.metric(m) for r in self.rows])[1] for m in METRICS}

    def _exclusion_text(self) -> str:
        return "none" if self.exclusion is None else f"{self.exclusion[0]} in / {self.exclusion[1]} out voxels"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (undefined metrics become None)."""
        return {
            "organelle": self.organelle,
            "exclusion": None if self.exclusion is None else {"inner": self.exclusion[0], "outer": self.exclusion[1]},
            "threshold": self.threshold,
            "raw": self.raw,
            "truth": self.truth,
            "roi_vox": {"offset": list(self.roi.offset), "shape": list(self.roi.shape)},
            "voxel_size_nm": list(self.voxel_size),
            "n_checkpoints": len(self.rows),
            "checkpoints": [r.to_dict() for r in self.rows],
            "mean": {k: _none_nan(v) for k, v in self.mean.items()},
            "sd": {k: _none_nan(v) for k, v in self.sd.items()},
            "sd_definition": SD_NOTE,
        }

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    def to_markdown(self) -> str:
        """A Markdown table: one row per checkpoint, then mean ± SD, with the settings above it."""

        def f(x: float) -> str:
            return "nan" if math.isnan(x) else f"{x:.4f}"

        mean, sd = self.mean, self.sd
        lines = [
            f"# Checkpoint-averaged evaluation ({len(self.rows)} checkpoints)",
            "",
            f"- input: {self.raw}, ROI {self.roi} (voxels, z, y, x), voxel size {fmt_vec(self.voxel_size)} nm",
            f"- truth: {self.truth}",
            f"- organelle {self.organelle}, exclusion zone {self._exclusion_text()}, "
            f"threshold {self.threshold:g} (foreground if p >= t)",
            f"- {SD_NOTE}",
            "",
            "| iteration | F1 | precision | recall | IoU |",
            "|---:|---:|---:|---:|---:|",
        ]
        lines += [f"| {r.iteration} | " + " | ".join(f(r.metric(m)) for m in METRICS) + " |" for r in self.rows]
        lines.append("| **mean ± SD** | " + " | ".join(f"{f(mean[m])} ± {f(sd[m])}" for m in METRICS) + " |")
        return "\n".join(lines) + "\n"


def default_output_dir(
    run_dir: str | os.PathLike[str],
    raw: Volume,
    truth: Volume,
    roi: Roi | None,
    threshold: float = 0.5,
) -> Path:
    """``run_dir/eval_<hash>``: one folder per input, truth, ROI (input voxels) and threshold.

    The exclusion zone and mask are not part of the name: changing them rescores the
    stored predictions in the same folder.
    """
    key = json.dumps(
        [volume_identity(raw), volume_identity(truth), None if roi is None else [roi.offset, roi.shape], threshold],
        default=list,
    )
    return Path(run_dir).expanduser() / f"eval_{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def _covered_roi(raw: Volume, truth: Volume) -> Roi:
    """The input voxels inside the truth's extent (nm)."""
    (rb, re_), (tb, te) = raw.bounds_nm, truth.bounds_nm
    begin = [max(a, b) for a, b in zip(rb, tb)]
    end = [min(a, b) for a, b in zip(re_, te)]
    if any(e <= b for b, e in zip(begin, end)):
        raise InputError(
            f"the truth {truth.path} (nm {fmt_vec(tb)} to {fmt_vec(te)}) does not overlap the input {raw.path} "
            f"(nm {fmt_vec(rb)} to {fmt_vec(re_)})"
        )
    return Roi.from_nm(begin, end, raw.voxel_size, raw.offset).intersect(raw.roi)


def _check_checkpoints_agree(checkpoints: Sequence[tuple[Path, Any]]) -> None:
    """Refuse checkpoints that differ in organelle, voxel size or normalization."""
    p0, c0 = checkpoints[0]
    for p, c in checkpoints[1:]:
        if c.organelle != c0.organelle:
            raise IncompatibleError(
                f"checkpoint {p} is for organelle {c.organelle!r} but {p0} is for {c0.organelle!r}; "
                "evaluate checkpoints of one organelle together"
            )
        if not same_voxel_size(c.voxel_size, c0.voxel_size):
            raise IncompatibleError(
                f"checkpoint {p} was trained at {fmt_vec(c.voxel_size)} nm but {p0} at {fmt_vec(c0.voxel_size)} nm; "
                "evaluate checkpoints of one voxel size together"
            )
        if c.normalization != c0.normalization:
            raise IncompatibleError(
                f"checkpoint {p} uses normalization {c.normalization.model_dump()} but {p0} uses "
                f"{c0.normalization.model_dump()}; evaluate checkpoints of one normalization together"
            )


def _open(v: str | os.PathLike[str] | Volume, default_voxel_size: Sequence[float] | None) -> Volume:
    return v if isinstance(v, Volume) else open_volume(v, default_voxel_size=default_voxel_size)


def evaluate_checkpoints(
    checkpoints: Sequence[str | os.PathLike[str]],
    raw: str | os.PathLike[str] | Volume,
    truth: str | os.PathLike[str] | Volume,
    *,
    output_dir: str | os.PathLike[str],
    roi: Roi | None = None,
    mask: str | os.PathLike[str] | Volume | None = None,
    exclusion: tuple[int, int] | int | str | None = None,
    threshold: float = 0.5,
    tile: Sequence[int] | None = None,
    batch_size: int = 1,
    device: str = "auto",
    default_voxel_size: Sequence[float] | None = None,
    client: Any | None = None,
    retries: int = 2,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> CheckpointEvaluation:
    """Predict ``roi`` of ``raw`` with each checkpoint, score each against ``truth``, and summarise.

    Parameters
    ----------
    checkpoints
        Checkpoint files (e.g. from :func:`select_checkpoints`); they must agree on
        organelle, voxel size and normalization, and have distinct iterations.
    raw, truth, mask
        Input volume, ground truth (foreground > 0) and optional evaluation mask (0 =
        ignore), aligned by their offsets (nm); truth and mask at the input's voxel size.
    output_dir
        Folder of predictions, per-checkpoint results and the summary (module docstring).
    roi
        Region in input voxels (z, y, x); default: the part of the input the truth covers.
    exclusion
        Boundary exclusion for every checkpoint: ``(inner, outer)`` voxels, one width, or an
        organelle's name for its width; ``(0, 0)``: none; None: the width of the checkpoints'
        organelle (e.g. ``np``: 1 voxel in and out).
    threshold
        Foreground if probability >= threshold (the stored uint8 probability is scored,
        as by ``organet evaluate --pred OUT/probability``).
    tile, batch_size, device
        Prediction settings (:class:`organet.predict.Predictor`).
    default_voxel_size
        nm (z, y, x) of input, truth and mask files that lack it.
    client, retries
        Dask client (None: in this process) and extra attempts per failing block.
    overwrite
        Recompute every selected checkpoint (predictions included) instead of reusing them.
    progress
        ``progress(stage, advance, total)``: stage :data:`STAGE` in checkpoints, plus the
        stages of prediction and evaluation.

    Returns
    -------
    CheckpointEvaluation
        Also written to ``output_dir`` as ``summary.json``, ``summary.md`` and
        ``f1_vs_iteration.png``.
    """
    from organet.model.checkpoint import file_sha256, load_checkpoint
    from organet.predict import Predictor, predict_volume

    from .plot import plot_checkpoint_scores

    if not checkpoints:
        raise InputError("no checkpoints to evaluate")
    paths = [Path(c).expanduser().resolve() for c in checkpoints]
    loaded = [(p, load_checkpoint(p)) for p in paths]
    _check_checkpoints_agree(loaded)
    seen: dict[int, Path] = {}
    for p, c in loaded:
        if c.iteration in seen:
            raise InputError(f"checkpoints {seen[c.iteration]} and {p} are both of iteration {c.iteration}")
        seen[c.iteration] = p
    loaded.sort(key=lambda pc: pc[1].iteration)
    ck_organelle = loaded[0][1].organelle
    excl = resolve_exclusion(exclusion, ck_organelle)
    t = check_threshold(threshold)

    raw_v = _open(raw, default_voxel_size)
    truth_v = _open(truth, default_voxel_size)
    mask_v = _open(mask, default_voxel_size) if mask is not None else None
    hint = "give files without a voxel size one (--voxel-size)"
    check_same_voxel_size(
        truth_v.voxel_size, raw_v.voxel_size, f"truth {truth_v.path}", f"the input {raw_v.path}", hint
    )
    if mask_v is not None:
        check_same_voxel_size(
            mask_v.voxel_size, raw_v.voxel_size, f"mask {mask_v.path}", f"the input {raw_v.path}", hint
        )
    region = roi if roi is not None else _covered_roi(raw_v, truth_v)
    if region.empty or not raw_v.roi.contains(region):
        raise InputError(f"ROI {region} lies outside the input {raw_v.path} of shape {raw_v.shape} or is empty")
    box = region.to_nm(raw_v.voxel_size, raw_v.offset)
    truth_v.crop_nm(*box)  # the truth must cover the ROI on the same grid: fail before predicting
    if mask_v is not None:
        mask_v.crop_nm(*box)

    out = Path(output_dir).expanduser()
    (out / "pred").mkdir(parents=True, exist_ok=True)
    (out / "results").mkdir(exist_ok=True)
    common = {
        "raw": volume_identity(raw_v),
        "truth": volume_identity(truth_v),
        "mask": volume_identity(mask_v),
        "roi_offset": list(region.offset),
        "roi_shape": list(region.shape),
        "exclusion": list(excl) if excl is not None else None,
        "threshold": t,
        "tile": list(tile) if tile is not None else None,
    }
    announce(progress, STAGE, len(loaded))
    rows: list[CheckpointScore] = []
    computed = 0
    for path, ck in loaded:
        name = f"iter_{ck.iteration:07d}"
        result_path = out / "results" / f"{name}.json"
        pred_path = out / "pred" / f"{name}.zarr"
        settings = json.loads(json.dumps({**common, "checkpoint_sha256": file_sha256(path)}))
        if not overwrite and result_path.is_file():
            stored = json.loads(result_path.read_text())
            if stored.get("settings") == settings:
                rows.append(CheckpointScore(ck.iteration, str(path), str(pred_path), Counts.from_dict(stored)))
                advance(progress, STAGE, 1, len(loaded))
                continue
        predictor = Predictor.from_checkpoint(path, tile=tile, batch_size=batch_size, device=device)
        predict_volume(
            predictor,
            raw_v,
            pred_path,
            roi=region,
            threshold=t,
            client=client,
            retries=retries,
            overwrite=overwrite,
            progress=progress,
        )
        prob = open_volume(pred_path / "probability")
        pbox = prob.bounds_nm
        res = evaluate_volumes(
            prob,
            truth_v.crop_nm(*pbox),
            mask_v.crop_nm(*pbox) if mask_v is not None else None,
            exclusion=excl,
            thresholds=(t,),
            client=client,
            retries=retries,
            ledger=result_path.with_name(result_path.name + ".progress"),
            overwrite=True,  # a ledger of other settings is only a cache: start over
            progress=progress,
        )
        row = CheckpointScore(ck.iteration, str(path), str(pred_path), res.counts)
        record = {**row.to_dict(), "settings": settings, "evaluation": res.to_dict()}
        atomic_write_text(result_path, json.dumps(record, indent=2, allow_nan=False) + "\n")
        rows.append(row)
        computed += 1
        advance(progress, STAGE, 1, len(loaded))

    result = CheckpointEvaluation(
        rows=tuple(rows),
        organelle=ck_organelle,
        exclusion=excl,
        threshold=t,
        raw=str(volume_identity(raw_v)),
        truth=str(volume_identity(truth_v)),
        roi=region,
        voxel_size=raw_v.voxel_size,
        output_dir=out,
        computed=computed,
    )
    result.write_json(out / "summary.json")
    atomic_write_text(out / "summary.md", result.to_markdown())
    plot_checkpoint_scores(result, out / "f1_vs_iteration.png")
    return result


__all__ = [
    "METRICS",
    "CheckpointEvaluation",
    "CheckpointScore",
    "default_output_dir",
    "evaluate_checkpoints",
    "select_checkpoints",
]
