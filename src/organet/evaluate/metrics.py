"""Voxel-wise binary confusion counts and metrics, and in-memory threshold sweeps.

Conventions (shared with :mod:`organet.evaluate.blockwise`):
  * A voxel is predicted foreground when ``float64(prob) >= threshold`` (as incasem);
    NaN probabilities are background. uint8 probabilities mean ``value / 255`` with the
    same comparison, so uint8 ``v`` and float ``v / 255`` give identical counts.
  * Ratios whose denominator is zero are NaN (no warning, no exception); ``Counts.empty``
    flags the case with no true and no predicted foreground, where F1/IoU are NaN.
Arrays are in (z, y, x) order; all sizes are in voxels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from organet.errors import IncompatibleError, InputError
from organet.evaluate.exclusion import ExclusionMetric, exclusion_zone, normalize_exclusion

SWEEP = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""The probability thresholds of a sweep (``organet evaluate --sweep``, reports): 0.05 … 0.95."""


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


@dataclass(frozen=True)
class Counts:
    """Voxel confusion counts for one binary prediction (only non-ignored voxels count)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Counts) -> Counts:
        if not isinstance(other, Counts):
            return NotImplemented
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    def __radd__(self, other: Any) -> Counts:
        if isinstance(other, int) and other == 0:  # allows sum(list_of_counts)
            return self
        return NotImplemented

    @property
    def total(self) -> int:
        """Number of evaluated (non-ignored) voxels."""
        return self.tp + self.fp + self.fn + self.tn

    @property
    def empty(self) -> bool:
        """True when there is neither true nor predicted foreground (F1 and IoU undefined)."""
        return self.tp + self.fp + self.fn == 0

    @property
    def precision(self) -> float:
        """tp / (tp + fp); NaN when nothing is predicted foreground."""
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        """tp / (tp + fn); NaN when there is no true foreground."""
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        """Dice = 2 tp / (2 tp + fp + fn); NaN only when :attr:`empty`."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def iou(self) -> float:
        """Jaccard = tp / (tp + fp + fn); NaN only when :attr:`empty`."""
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    @property
    def accuracy(self) -> float:
        """(tp + tn) / total; NaN when no voxel was evaluated."""
        return _ratio(self.tp + self.tn, self.total)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of counts and metrics; NaN metrics become None."""
        out: dict[str, Any] = {"tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn}
        for name in ("precision", "recall", "f1", "iou", "accuracy"):
            v = getattr(self, name)
            out[name] = None if math.isnan(v) else v
        out["empty"] = self.empty
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Counts:
        """Inverse of :meth:`to_dict` (metrics are recomputed from the counts)."""
        return cls(int(d["tp"]), int(d["fp"]), int(d["fn"]), int(d["tn"]))


def _check_same_shape(**arrays: Any) -> None:
    """Raise ValueError naming both shapes if any array's shape differs from the first's."""
    items = [(k, tuple(v.shape)) for k, v in arrays.items() if v is not None]
    ref_name, ref_shape = items[0]
    for name, shape in items[1:]:
        if shape != ref_shape:
            raise IncompatibleError(f"shape mismatch: {ref_name} has shape {ref_shape} but {name} has shape {shape}")


def binary_counts(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> Counts:
    """Confusion counts of boolean ``pred`` vs boolean ``truth`` over voxels where ``valid``.

    Args:
        pred: predicted foreground, bool (other dtypes: ``!= 0``), shape (z, y, x).
        truth: true foreground, bool (other dtypes: ``!= 0``), same shape.
        valid: voxels to count (True = evaluate); None = all voxels.
    """
    _check_same_shape(pred=pred, truth=truth, valid=valid)
    p = np.asarray(pred).astype(bool, copy=False)
    t = np.asarray(truth).astype(bool, copy=False)
    if valid is not None:
        v = np.asarray(valid).astype(bool, copy=False)
        p = p & v
        t = t & v
        n = int(np.count_nonzero(v))
    else:
        n = p.size
    tp = int(np.count_nonzero(p & t))
    n_p = int(np.count_nonzero(p))
    n_t = int(np.count_nonzero(t))
    return Counts(tp=tp, fp=n_p - tp, fn=n_t - tp, tn=n - n_p - n_t + tp)


def normalize_thresholds(thresholds: Iterable[float] | float) -> tuple[float, ...]:
    """Sorted, de-duplicated tuple of finite float thresholds (at least one)."""
    values = [thresholds] if isinstance(thresholds, (int, float, np.number)) else list(thresholds)
    arr = np.asarray(values, dtype=np.float64)
    ts = sorted({float(t) for t in arr.ravel()})
    if not ts:
        raise InputError("at least one threshold is required")
    if not all(math.isfinite(t) for t in ts):
        raise InputError(f"thresholds must be finite, got {ts}")
    return tuple(ts)


def _counts_from_hist(hist_fg: np.ndarray, hist_bg: np.ndarray) -> list[Counts]:
    """Per-threshold Counts from histograms over ``k`` = number of thresholds passed.

    ``hist_*[k]`` counts voxels (true fg / true bg) whose probability is ``>=`` exactly the
    ``k`` lowest thresholds; threshold ``j`` (ascending) is passed iff ``k > j``.
    """
    tail_fg = np.cumsum(hist_fg[::-1])[::-1]  # tail[k] = sum(hist[k:])
    tail_bg = np.cumsum(hist_bg[::-1])[::-1]
    n_fg, n_bg = int(tail_fg[0]), int(tail_bg[0])
    out = []
    for j in range(len(hist_fg) - 1):
        tp, fp = int(tail_fg[j + 1]), int(tail_bg[j + 1])
        out.append(Counts(tp=tp, fp=fp, fn=n_fg - tp, tn=n_bg - fp))
    return out


def sweep_counts_float(
    prob: np.ndarray, truth: np.ndarray, valid: np.ndarray | None, thresholds: tuple[float, ...]
) -> list[Counts]:
    """Counts per (sorted) threshold for float probabilities: foreground iff ``prob >= t``.

    One pass over the data regardless of the number of thresholds. NaN → background.
    """
    p = np.asarray(prob)
    t = np.asarray(truth).astype(bool, copy=False)
    if valid is not None:
        v = np.asarray(valid).astype(bool, copy=False)
        p, t = p[v], t[v]
    else:
        p, t = p.ravel(), t.ravel()
    thr = np.asarray(thresholds, dtype=np.float64)
    # k = number of thresholds <= p, compared in float64
    k = np.searchsorted(thr, p.astype(np.float64, copy=False), side="right")
    if np.issubdtype(p.dtype, np.floating):
        nan = np.isnan(p)
        if nan.any():
            k[nan] = 0
    nb = len(thr) + 1
    hist = np.bincount(k * 2 + t, minlength=2 * nb)
    return _counts_from_hist(hist[1::2], hist[0::2])


def sweep_counts_uint8(
    prob_u8: np.ndarray, truth: np.ndarray, valid: np.ndarray | None, thresholds: tuple[float, ...]
) -> list[Counts]:
    """Counts per (sorted) threshold for uint8 probabilities ``value / 255``.

    Foreground iff ``float64(value) / 255 >= t``: identical to :func:`sweep_counts_float`
    applied to ``value / 255.0``.
    """
    q = np.asarray(prob_u8)
    if q.dtype != np.uint8:
        raise TypeError(f"expected uint8 probabilities, got {q.dtype}")
    t = np.asarray(truth).astype(bool, copy=False)
    if valid is not None:
        v = np.asarray(valid).astype(bool, copy=False)
        q, t = q[v], t[v]
    else:
        q, t = q.ravel(), t.ravel()
    hist = np.bincount(q.astype(np.intp) * 2 + t, minlength=512)
    levels = np.arange(256, dtype=np.float64) / 255.0
    thr = np.asarray(thresholds, dtype=np.float64)
    # k per level = number of thresholds <= level (same rule as the float path)
    k_of_level = np.searchsorted(thr, levels, side="right")
    nb = len(thr) + 1
    hist_fg = np.bincount(k_of_level, weights=hist[1::2], minlength=nb).astype(np.int64)
    hist_bg = np.bincount(k_of_level, weights=hist[0::2], minlength=nb).astype(np.int64)
    return _counts_from_hist(hist_fg, hist_bg)


def evaluate_arrays(
    prob: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray | None = None,
    exclusion: tuple[int, int] | int | str | None = None,
    thresholds: Iterable[float] = (0.5,),
    exclusion_metric: ExclusionMetric = "taxicab",
) -> dict[float, Counts]:
    """In-memory evaluation of a foreground probability map (e.g. during validation).

    Args:
        prob: float foreground probability in [0, 1], shape (z, y, x); foreground iff
            ``prob >= threshold`` (float64 comparison; NaN = background). bool is taken as
            0/1. uint8 is taken as ``value / 255``. Other dtypes raise TypeError.
        truth: ground truth, foreground where ``> 0``; same shape.
        mask: optional, 0 = ignore voxel; same shape.
        exclusion: boundary exclusion ``(inner, outer)`` in voxels, a single width, an
            organelle name from ``EXCLUSION_ZONE_WIDTHS``, or None (see ``exclusion_zone``).
        thresholds: probability thresholds; all evaluated in one pass.
        exclusion_metric: distance metric of the exclusion zone.

    Returns:
        ``{threshold: Counts}`` in ascending threshold order.
    """
    _check_same_shape(prob=prob, truth=truth, mask=mask)
    ts = normalize_thresholds(thresholds)
    prob = np.asarray(prob)
    fg = np.asarray(truth) > 0
    valid = None if mask is None else np.asarray(mask) != 0
    excl = normalize_exclusion(exclusion)
    if excl is not None:
        keep = ~exclusion_zone(fg, excl[0], excl[1], exclusion_metric)
        valid = keep if valid is None else valid & keep
    if prob.dtype == np.uint8:
        counts = sweep_counts_uint8(prob, fg, valid, ts)
    elif prob.dtype == np.bool_ or np.issubdtype(prob.dtype, np.floating):
        counts = sweep_counts_float(prob, fg, valid, ts)
    else:
        raise TypeError(f"prob must be a float (probability), bool or uint8 (value/255) array, got {prob.dtype}")
    return dict(zip(ts, counts))
