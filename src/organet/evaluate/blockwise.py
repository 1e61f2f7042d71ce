"""Streamed (blockwise) evaluation of predicted volumes against ground truth.

Volumes are any objects with ``.shape``, ``.dtype``, optional ``.attrs`` and either
``.read(tuple_of_slices) -> np.ndarray`` (``organet.volumes.Volume``) or numpy-style
``__getitem__`` (numpy / zarr arrays). Axis order is (z, y, x); sizes are in voxels.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from organet.evaluate._io import atomic_write_bytes
from organet.evaluate.exclusion import ExclusionMetric, exclusion_zone, normalize_exclusion
from organet.evaluate.metrics import (
    Counts,
    _check_same_shape,
    binary_counts,
    normalize_thresholds,
    sweep_counts_float,
    sweep_counts_uint8,
)

PredKind = Literal["probability", "probability_uint8", "binary"]


def _attrs(v: Any) -> Mapping[str, Any]:
    a = getattr(v, "attrs", None)
    if isinstance(a, Mapping):
        return a
    try:
        return dict(a) if a is not None else {}
    except (TypeError, ValueError):
        return {}


def prediction_kind(pred: Any) -> PredKind:
    """How a prediction volume is interpreted.

    * float dtype → ``"probability"`` in [0, 1];
    * uint8 with ``attrs["organet"]["kind"] == "probability"`` or ``attrs["kind"] ==
      "probability"`` → ``"probability_uint8"`` (probability = value / 255);
    * bool → ``"binary"`` (the mask itself); any other integer → ``"binary"`` with
      foreground where ``> 0`` (labels / instances); thresholds are then irrelevant.
    """
    dtype = np.dtype(pred.dtype)
    if np.issubdtype(dtype, np.floating):
        return "probability"
    if dtype == np.bool_:
        return "binary"
    if dtype == np.uint8:
        attrs = _attrs(pred)
        nested = attrs.get("organet")
        kind = nested.get("kind") if isinstance(nested, Mapping) else None
        if kind is None:
            kind = attrs.get("kind")
        return "probability_uint8" if kind == "probability" else "binary"
    if np.issubdtype(dtype, np.integer):
        return "binary"
    raise TypeError(f"cannot interpret prediction of dtype {dtype}")


def _read(v: Any, slices: tuple[slice, ...]) -> np.ndarray:
    """Read a block: ``v.read(slices)`` if available, else ``v[slices]``."""
    out = v.read(slices) if hasattr(v, "read") else v[slices]
    return np.asarray(out)


def _blocks(shape: Sequence[int], block_shape: Sequence[int]) -> Iterator[tuple[slice, ...]]:
    starts = [range(0, n, b) for n, b in zip(shape, block_shape)]
    for origin in itertools.product(*starts):
        yield tuple(slice(o, min(o + b, n)) for o, b, n in zip(origin, block_shape, shape))


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
        truth_ext = _read(truth, ext) > 0
        keep = ~exclusion_zone(truth_ext, exclusion[0], exclusion[1], exclusion_metric)[inner_sl]
        fg = truth_ext[inner_sl]
        valid = keep if valid is None else valid & keep
    else:
        fg = _read(truth, core) > 0
    p = _read(pred, core)
    if kind == "probability":
        return sweep_counts_float(p, fg, valid, thresholds)
    if kind == "probability_uint8":
        return sweep_counts_uint8(p, fg, valid, thresholds)
    return [binary_counts(p > 0, fg, valid)]


def _evaluate_core(pred: Any, truth: Any, mask: Any, kind: PredKind, thresholds: tuple[float, ...],
                   exclusion: tuple[int, int] | None, metric: ExclusionMetric, core: tuple[slice, ...]) -> Any:
    return evaluate_block(pred, truth, mask, core, kind, thresholds, exclusion, metric)


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

    def to_table(self, title: str | None = None) -> Any:
        """A ``rich.table.Table`` with one row per threshold; the best row is bold."""
        from rich.table import Table

        if self.exclusion is None:
            excl = "none"
        else:
            excl = f"inner={self.exclusion[0]}, outer={self.exclusion[1]} vox ({self.exclusion_metric})"
        caption = (
            f"shape {self.shape} (z, y, x) · exclusion {excl} · mask {'yes' if self.masked else 'no'}"
            f" · pred {self.pred_kind} ({self.pred_dtype})"
        )
        table = Table(title=title or "Evaluation", caption=caption)
        for col in ("thr", "TP", "FP", "FN", "TN", "prec", "recall", "F1", "IoU", "acc"):
            table.add_column(col, justify="right", no_wrap=True)

        def fmt(x: float) -> str:
            return "nan" if math.isnan(x) else f"{x:.3f}"

        def row(label: str, c: Counts, style: str | None = None) -> None:
            table.add_row(
                label,
                f"{c.tp:,}",
                f"{c.fp:,}",
                f"{c.fn:,}",
                f"{c.tn:,}",
                fmt(c.precision),
                fmt(c.recall),
                fmt(c.f1),
                fmt(c.iou),
                fmt(c.accuracy),
                style=style,
            )

        if self.binary is not None:
            row("—", self.binary)
        best = self.best_threshold
        for t, c in self.per_threshold.items():
            row(f"{t:g}", c, "bold" if t == best else None)
        return table

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as JSON atomically (tmp file + ``os.replace``)."""
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        atomic_write_bytes(path, text.encode("utf-8"))


def evaluate_volumes(
    pred: Any,
    truth: Any,
    mask: Any | None = None,
    exclusion: tuple[int, int] | int | str | None = None,
    thresholds: Iterable[float] | float = (0.5,),
    block_shape: Sequence[int] = (64, 256, 256),
    progress: bool = True,
    exclusion_metric: ExclusionMetric = "taxicab",
    client: Any | None = None,
    retries: int = 2,
) -> EvaluationResult:
    """Voxel-wise evaluation of a predicted volume against ground truth, streamed in blocks.

    The result equals whole-volume evaluation exactly: the exclusion zone of each block is
    computed from truth read with a halo of ``max(inner, outer) + 1`` voxels (clipped at
    the volume border, which is not an object boundary).

    Args:
        pred: prediction volume (z, y, x); interpreted per :func:`prediction_kind`.
            Probabilities are foreground iff ``p >= threshold`` (float64 comparison, NaN =
            background; uint8 ``v`` means ``v / 255``).
        truth: ground truth volume, foreground where ``> 0``.
        mask: optional volume, 0 = ignore voxel.
        exclusion: boundary exclusion ``(inner, outer)`` voxels, single width, organelle
            name in ``EXCLUSION_ZONE_WIDTHS``, or None.
        thresholds: probability thresholds, all accumulated in one pass (ignored for
            binary predictions).
        block_shape: block size in voxels (z, y, x); need not divide the volume shape.
        progress: show a rich progress bar (on stderr).
        exclusion_metric: ``"taxicab"`` (default, incasem-exact) or ``"euclidean"``.
        client: a Dask ``distributed.Client``: blocks are evaluated as tasks on its
            workers (volumes opened from files travel by path), so each worker holds a
            block at a time; the result is the same. ``retries`` per failing block;
            blocks that still fail raise RuntimeError naming them.

    Raises:
        ValueError: shapes of pred / truth / mask differ, or bad block_shape / thresholds.
    """
    _check_same_shape(pred=pred, truth=truth, mask=mask)
    shape = tuple(int(n) for n in pred.shape)
    block_shape = tuple(int(b) for b in block_shape)
    if len(block_shape) != len(shape) or any(b < 1 for b in block_shape):
        raise ValueError(f"block_shape {block_shape} must have {len(shape)} positive entries for shape {shape}")
    kind = prediction_kind(pred)
    ts = normalize_thresholds(thresholds) if kind != "binary" else ()
    excl = normalize_exclusion(exclusion)

    n_res = len(ts) if kind != "binary" else 1
    totals = [Counts()] * n_res
    blocks = list(_blocks(shape, block_shape))

    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), disable=not progress, transient=False) as bar:
        task = bar.add_task("evaluating", total=len(blocks))
        if client is not None:
            import functools

            from organet.predict.tasks import run_tasks

            fn = functools.partial(_evaluate_core, pred, truth, mask, kind, ts, excl, exclusion_metric)
            results, fails = run_tasks(fn, blocks, client, retries, "evaluate blocks")
            if fails:
                lines = "\n  ".join(f"block {blocks[i]}: {m}" for i, m in sorted(fails.items()))
                raise RuntimeError(f"{len(fails)} of {len(blocks)} evaluation blocks failed:\n  {lines}")
            for i in range(len(blocks)):  # in block order: the same sums as in-process
                if results[i] is not None:
                    totals = [a + b for a, b in zip(totals, results[i])]
            bar.advance(task, len(blocks))
        for core in blocks if client is None else ():
            block_counts = evaluate_block(pred, truth, mask, core, kind, ts, excl, exclusion_metric)
            if block_counts is not None:
                totals = [a + b for a, b in zip(totals, block_counts)]
            bar.advance(task)

    return EvaluationResult(
        per_threshold=dict(zip(ts, totals)) if kind != "binary" else {},
        binary=totals[0] if kind == "binary" else None,
        pred_kind=kind,
        pred_dtype=str(np.dtype(pred.dtype)),
        thresholds=ts,
        exclusion=excl,
        exclusion_metric=exclusion_metric,
        shape=shape,
        block_shape=block_shape,
        masked=mask is not None,
    )
