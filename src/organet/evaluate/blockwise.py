"""Streamed (blockwise) evaluation of predicted volumes against ground truth.

Volumes are any objects with ``.shape``, ``.dtype``, optional ``.attrs`` and either
``.read(tuple_of_slices) -> np.ndarray`` (``organet.volumes.Volume``) or numpy-style
``__getitem__`` (numpy / zarr arrays). Axis order is (z, y, x); sizes are in voxels.

The volume is cut into blocks by :func:`organet.volumes.blocks.plan_blocks` and the
blocks run through :func:`organet.blockwise.run_blocks` (in this process or on Dask);
with a ``ledger`` folder the per-block counts are recorded, so a killed evaluation
rerun with the same ledger resumes and gives identical totals.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from organet.blockwise import Ledger, Skip, run_blocks
from organet.blockwise.output import volume_identity
from organet.errors import IncompatibleError, InputError
from organet.evaluate.exclusion import ExclusionMetric, exclusion_zone, normalize_exclusion
from organet.evaluate.metrics import (
    Counts,
    binary_counts,
    normalize_thresholds,
    sweep_counts_float,
    sweep_counts_uint8,
)
from organet.progress import ProgressFn
from organet.volumes.atomic import atomic_write_text
from organet.volumes.blocks import Block, plan_blocks
from organet.volumes.foreground import Kind, check_threshold, foreground, prediction_kind
from organet.volumes.roi import Roi

PredKind = Kind
"""How a prediction is read (:func:`organet.volumes.foreground.prediction_kind`)."""

STAGE = "evaluate"


def _read(v: Any, slices: tuple[slice, ...]) -> np.ndarray:
    """Read a block: ``v.read(slices)`` if available, else ``v[slices]``."""
    out = v.read(slices) if hasattr(v, "read") else v[slices]
    return np.asarray(out)


def _check_same_shape(**volumes: Any) -> tuple[int, ...]:
    """The common shape of ``volumes`` (None entries skipped); IncompatibleError naming both shapes otherwise."""
    items = [(k, tuple(int(n) for n in v.shape)) for k, v in volumes.items() if v is not None]
    ref_name, ref_shape = items[0]
    for name, shape in items[1:]:
        if shape != ref_shape:
            raise IncompatibleError(f"shape mismatch: {ref_name} has shape {ref_shape} but {name} has shape {shape}")
    return ref_shape


def evaluate_block(
    pred: Any,
    truth: Any,
    mask: Any | None,
    core: tuple[slice, ...],
    kind: PredKind,
    thresholds: tuple[float, ...],
    exclusion: tuple[int, int] | None,
    exclusion_metric: ExclusionMetric = "taxicab",
) -> list[Counts] | None:
    """Counts of one block ``core`` (voxel slices, z, y, x): one per threshold, or one
    for a binary prediction; None when the mask excludes the whole block. The
    exclusion zone is computed from truth read with a halo of ``max(exclusion) + 1``."""
    shape = tuple(int(n) for n in pred.shape)
    valid = None
    if mask is not None:
        valid = _read(mask, core) != 0
        if not valid.any():
            return None
    if exclusion is not None:
        halo = max(exclusion) + 1
        ext = tuple(slice(max(c.start - halo, 0), min(c.stop + halo, n)) for c, n in zip(core, shape))
        inner_sl = tuple(slice(c.start - e.start, c.stop - e.start) for c, e in zip(core, ext))
        truth_ext = foreground(_read(truth, ext), "binary")
        keep = ~exclusion_zone(truth_ext, exclusion[0], exclusion[1], exclusion_metric)[inner_sl]
        fg = truth_ext[inner_sl]
        valid = keep if valid is None else valid & keep
    else:
        fg = foreground(_read(truth, core), "binary")
    p = _read(pred, core)
    if kind == "probability":
        return sweep_counts_float(p, fg, valid, thresholds)
    if kind == "probability_uint8":
        return sweep_counts_uint8(p, fg, valid, thresholds)
    return [binary_counts(foreground(p, "binary"), fg, valid)]


@dataclass(frozen=True)
class _Job:
    """What a worker needs for one block (picklable; volumes from files travel by path)."""

    pred: Any
    truth: Any
    mask: Any
    kind: PredKind
    thresholds: tuple[float, ...]
    exclusion: tuple[int, int] | None
    metric: ExclusionMetric


def _evaluate_block(job: _Job, block: Block) -> Any:
    """Block function of the "evaluate" pass: int64 array (n, 4) of (tp, fp, fn, tn) per
    threshold (one row for a binary prediction), or :class:`Skip` for a fully masked block."""
    counts = evaluate_block(
        job.pred, job.truth, job.mask, block.roi.slices(), job.kind, job.thresholds, job.exclusion, job.metric
    )
    if counts is None:
        return Skip()
    return np.array([[c.tp, c.fp, c.fn, c.tn] for c in counts], np.int64)


@dataclass(frozen=True)
class EvaluationResult:
    """Outcome of :func:`evaluate_volumes`.

    ``per_threshold`` maps each threshold (ascending) to its Counts for probability
    predictions and is empty for binary ones, whose Counts are in ``binary``.
    """

    per_threshold: dict[float, Counts]
    binary: Counts | None
    pred_kind: PredKind
    pred_dtype: str
    thresholds: tuple[float, ...]
    exclusion: tuple[int, int] | None
    exclusion_metric: str
    shape: tuple[int, ...]
    block_shape: tuple[int, ...]
    masked: bool
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best_threshold(self) -> float | None:
        """Threshold with the highest F1 (NaN F1 ignored; ties → lowest threshold).

        None for binary predictions or when F1 is undefined at every threshold.
        """
        best, best_f1 = None, -math.inf
        for t, c in self.per_threshold.items():
            f1 = c.f1
            if not math.isnan(f1) and f1 > best_f1:
                best, best_f1 = t, f1
        return best

    @property
    def counts(self) -> Counts:
        """Counts at :attr:`best_threshold` (binary: the only Counts; all-NaN F1: lowest threshold)."""
        if self.binary is not None:
            return self.binary
        t = self.best_threshold
        return self.per_threshold[t if t is not None else self.thresholds[0]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (NaN metrics become None)."""
        return {
            "pred_kind": self.pred_kind,
            "pred_dtype": self.pred_dtype,
            "shape": list(self.shape),
            "block_shape": list(self.block_shape),
            "masked": self.masked,
            "exclusion": None
            if self.exclusion is None
            else {"inner": self.exclusion[0], "outer": self.exclusion[1], "metric": self.exclusion_metric},
            "thresholds": list(self.thresholds),
            "best_threshold": self.best_threshold,
            "counts": self.counts.to_dict(),
            "per_threshold": [{"threshold": t, **c.to_dict()} for t, c in self.per_threshold.items()],
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvaluationResult:
        """Inverse of :meth:`to_dict`."""
        excl = d.get("exclusion")
        per = {float(r["threshold"]): Counts.from_dict(r) for r in d.get("per_threshold", [])}
        return cls(
            per_threshold=per,
            binary=Counts.from_dict(d["counts"]) if d["pred_kind"] == "binary" else None,
            pred_kind=d["pred_kind"],
            pred_dtype=d["pred_dtype"],
            thresholds=tuple(float(t) for t in d["thresholds"]),
            exclusion=None if excl is None else (int(excl["inner"]), int(excl["outer"])),
            exclusion_metric="taxicab" if excl is None else excl.get("metric", "taxicab"),
            shape=tuple(d["shape"]),
            block_shape=tuple(d["block_shape"]),
            masked=bool(d["masked"]),
            extra=dict(d.get("extra", {})),
        )

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as JSON atomically (:func:`organet.volumes.atomic.atomic_write_text`)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")


def _thresholds(thresholds: Iterable[float] | float) -> tuple[float, ...]:
    try:
        ts = normalize_thresholds(thresholds)
    except (TypeError, ValueError) as e:
        raise InputError(f"bad thresholds {thresholds!r}: {e}") from None
    for t in ts:
        check_threshold(t)
    return ts


def evaluate_volumes(
    pred: Any,
    truth: Any,
    mask: Any | None = None,
    exclusion: tuple[int, int] | int | str | None = None,
    thresholds: Iterable[float] | float = (0.5,),
    block_shape: Sequence[int] = (64, 256, 256),
    progress: ProgressFn | None = None,
    exclusion_metric: ExclusionMetric = "taxicab",
    client: Any | None = None,
    retries: int = 2,
    *,
    ledger: str | Path | None = None,
    overwrite: bool = False,
) -> EvaluationResult:
    """Voxel-wise evaluation of a predicted volume against ground truth, streamed in blocks.

    The result equals whole-volume evaluation exactly: the exclusion zone of each block is
    computed from truth read with a halo of ``max(inner, outer) + 1`` voxels (clipped at
    the volume border, which is not an object boundary).

    Args:
        pred: prediction volume (z, y, x); read per
            :func:`organet.volumes.foreground.prediction_kind`. Probabilities are
            foreground iff ``p >= threshold`` (float64 comparison, NaN = background;
            uint8 ``v`` marked ``kind: probability`` means ``v / 255``); anything else is
            a mask or labels, foreground where ``> 0``.
        truth: ground truth volume, foreground where ``> 0``.
        mask: optional volume, 0 = ignore voxel.
        exclusion: boundary exclusion ``(inner, outer)`` voxels, single width, organelle
            name in ``EXCLUSION_ZONE_WIDTHS``, or None.
        thresholds: probability thresholds in [0, 1], all accumulated in one pass
            (ignored for binary predictions).
        block_shape: block size in voxels (z, y, x); need not divide the volume shape.
        progress: ``progress(stage, advance, total)`` callback (stage ``"evaluate"``, blocks).
        exclusion_metric: ``"taxicab"`` (default, incasem-exact) or ``"euclidean"``.
        client: a Dask ``distributed.Client``: blocks are evaluated as tasks on its
            workers (volumes opened from files travel by path), so each worker holds a
            block at a time; the result is the same.
        retries: extra attempts per failing block.
        ledger: a folder recording the counts of finished blocks, so a killed evaluation
            rerun with the same ledger resumes (identical totals); removed when the
            evaluation completes. None: nothing is recorded.
        overwrite: start the ledger over when it records a run with other settings
            (otherwise that raises :class:`~organet.errors.IncompatibleError`).

    Raises:
        IncompatibleError: shapes of pred / truth / mask differ, or ``ledger`` records another run.
        InputError: bad block_shape, thresholds or exclusion.
        BlockFailures: blocks that still failed after ``retries`` (finished ones stay in the ledger).
    """
    shape = _check_same_shape(pred=pred, truth=truth, mask=mask)
    if len(shape) != 3:
        raise InputError(f"expected 3-D (z, y, x) volumes, got shape {shape}")
    try:
        bs = tuple(int(b) for b in block_shape)
    except (TypeError, ValueError):
        raise InputError(f"block_shape {block_shape!r} must be 3 positive integers (z, y, x)") from None
    if len(bs) != 3 or any(b < 1 for b in bs):
        raise InputError(f"block_shape {tuple(block_shape)} must have 3 positive entries for shape {shape}")
    if any(n < 1 for n in shape):
        raise InputError(f"cannot evaluate an empty volume of shape {shape}")
    kind = prediction_kind(pred)
    ts = _thresholds(thresholds)
    ts = ts if kind != "binary" else ()
    try:
        excl = normalize_exclusion(exclusion)
    except (TypeError, ValueError) as e:
        raise InputError(str(e)) from None
    if exclusion_metric not in ("taxicab", "euclidean"):
        raise InputError(f"unknown exclusion metric {exclusion_metric!r}; use 'euclidean' or 'taxicab'")
    progress = progress if callable(progress) else None  # tolerate the old progress=False

    roi = Roi((0, 0, 0), (shape[0], shape[1], shape[2]))
    halo = max(excl) + 1 if excl is not None else 0
    plan = plan_blocks(roi, bs, bs, context=(halo,) * 3)
    job = _Job(pred, truth, mask, kind, ts, excl, exclusion_metric)
    led = None
    if ledger is not None:
        run = {
            "pass": "evaluate",
            "pred": volume_identity(pred),
            "truth": volume_identity(truth),
            "mask": volume_identity(mask),
            "shape": list(shape),
            "pred_dtype": str(np.dtype(pred.dtype)),
            "pred_kind": kind,
            "thresholds": list(ts),
            "exclusion": list(excl) if excl is not None else None,
            "exclusion_metric": exclusion_metric,
            "plan": plan.describe(),
        }
        led = Ledger.open(ledger, run, overwrite=overwrite)
    done = run_blocks(
        functools.partial(_evaluate_block, job),
        plan,
        stage=STAGE,
        ledger=led,
        client=client,
        retries=retries,
        progress=progress,
    )
    n_res = len(ts) if kind != "binary" else 1
    total = np.zeros((n_res, 4), np.int64)
    for entry in done.values():  # in block order: the same sums in-process, on Dask and resumed
        if entry["status"] == "done":
            total += np.asarray(entry["result"], np.int64).reshape(n_res, 4)
    totals = [Counts(*(int(x) for x in row)) for row in total]
    if led is not None:
        led.remove()
    return EvaluationResult(
        per_threshold=dict(zip(ts, totals)) if kind != "binary" else {},
        binary=totals[0] if kind == "binary" else None,
        pred_kind=kind,
        pred_dtype=str(np.dtype(pred.dtype)),
        thresholds=ts,
        exclusion=excl,
        exclusion_metric=exclusion_metric,
        shape=shape,
        block_shape=plan.block_shape,
        masked=mask is not None,
    )


__all__ = ["EvaluationResult", "PredKind", "evaluate_block", "evaluate_volumes", "prediction_kind"]
