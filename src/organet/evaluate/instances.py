"""Instance metrics: predicted objects (labels) against true objects (labels, or a mask whose
connected components are the objects).

Everything is computed from one overlap table (a sparse contingency table: voxels per pair of
predicted id and true id, 0 = background), summed block by block on the engine runner
(:func:`organet.blockwise.run_blocks`), so volumes larger than memory are fine. From it:

* **matching** at an IoU threshold ``τ``: a predicted and a true object match when their IoU
  (voxels in both / voxels in either) is ``>= τ``; each object matches at most one other (for
  ``τ > 0.5`` this is automatic; ties at 0.5 are resolved by a maximum-IoU assignment).
  ``TP`` = matches, ``FP`` = predicted objects without a match, ``FN`` = true objects without
  one; precision ``TP / (TP + FP)``, recall ``TP / (TP + FN)``, F1 ``2TP / (2TP + FP + FN)``
  and ``AP = TP / (TP + FP + FN)`` (the "average precision" of the 2018 Data Science Bowl,
  StarDist and empanada), at ``τ`` = 0.50, 0.55, …, 0.95, and their means over the sweep;
* **adapted Rand error** (Arganda-Carreras et al. 2015, as :func:`skimage.metrics.adapted_rand_error`)
  over the voxels inside true objects: predicted background there is one more segment;
  ``1 - 2 Σp_ij² / (Σa_i² + Σb_j²)`` on pair counts. Its precision falls with merges (voxel
  pairs in one predicted object but different true ones), its recall with splits;
* **variation of information** (bits) over the same voxels, split part ``H(pred | true)`` and
  merge part ``H(true | pred)`` (as :func:`skimage.metrics.variation_of_information`);
* **merges and splits**, with a fraction ``f`` (``min_overlap``, default 0.5):
  a predicted object is a *merge* when at least 2 true objects each have ``>= f`` of their
  voxels inside it; a true object is *split* when at least 2 predicted objects each have
  ``>= f`` of their voxels inside it. With ``f > 0.5`` each true (predicted) object lies mostly
  in at most one predicted (true) object, so merges and splits are counted once. Each pair of
  true objects joined by a merge is a *merged pair*, with its *gap*: the fewest background
  voxels on a straight line (along an axis or a diagonal) between the two in the truth
  (chessboard distance minus one; 0 when they touch).

Axis order (z, y, x); sizes in voxels.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from organet.blockwise import run_blocks
from organet.errors import IncompatibleError, InputError
from organet.progress import ProgressFn
from organet.volumes.atomic import atomic_write_text
from organet.volumes.blocks import Block, plan_blocks
from organet.volumes.foreground import prediction_kind
from organet.volumes.roi import Roi

IOU_SWEEP = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
STAGE = "overlaps"


def _read(v: Any, slices: tuple[slice, ...]) -> np.ndarray:
    return np.asarray(v.read(slices) if hasattr(v, "read") else v[slices])


@dataclass(frozen=True)
class Overlaps:
    """Voxels per pair (``pred[k]``, ``true[k]``) of ids (0 = background) over the evaluated
    voxels (pairs with a count of 0 are absent), and the bounding box of every true object
    (``true_ids``, ``true_bbox`` rows ``[z0, y0, x0, z1, y1, x1)`` in voxels)."""

    pred: np.ndarray
    true: np.ndarray
    count: np.ndarray
    true_ids: np.ndarray
    true_bbox: np.ndarray


@dataclass(frozen=True)
class _Job:
    pred: Any
    truth: Any
    mask: Any


def _pairs(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (p, t) pairs of two equally shaped id arrays with their counts."""
    import fastremap

    p, t = p.ravel().astype(np.uint64), t.ravel().astype(np.uint64)
    if p.size == 0:
        z = np.zeros(0, np.int64)
        return z, z, z
    if int(p.max()) < 2**32 and int(t.max()) < 2**32:
        keys, counts = fastremap.unique((p << np.uint64(32)) | t, return_counts=True)
        keys = np.asarray(keys, np.uint64)
        return (keys >> np.uint64(32)).astype(np.int64), (keys & np.uint64(2**32 - 1)).astype(np.int64), counts
    uniq, counts = np.unique(np.stack([p, t], 1), axis=0, return_counts=True)
    return uniq[:, 0].astype(np.int64), uniq[:, 1].astype(np.int64), counts


def _overlap_block(job: _Job, block: Block) -> dict[str, np.ndarray]:
    """Block function of the "overlaps" pass: the pairs with counts and the true objects' boxes."""
    import fastremap
    from scipy import ndimage

    box = block.roi.slices()
    p, t = _read(job.pred, box), _read(job.truth, box)
    if job.mask is not None:
        keep = _read(job.mask, box) != 0
        p, t = p[keep], t[keep]
    pi, ti, c = _pairs(p, t)
    t_full = _read(job.truth, box)
    ren, remap = fastremap.renumber(np.ascontiguousarray(t_full), preserve_zero=True, in_place=False)
    inv = {int(v): int(k) for k, v in remap.items() if v}
    objs = ndimage.find_objects(np.asarray(ren, np.int64))
    ids, boxes = [], []
    for k, sl in enumerate(objs, start=1):
        if sl is None:
            continue
        ids.append(inv[k])
        boxes.append([s.start + b.start for s, b in zip(sl, box)] + [s.stop + b.start for s, b in zip(sl, box)])
    return {
        "pred": pi,
        "true": ti,
        "count": np.asarray(c, np.int64),
        "true_ids": np.array(ids, np.int64),
        "true_bbox": np.array(boxes, np.int64).reshape(-1, 6),
    }


def overlap_table(
    pred: Any,
    truth: Any,
    mask: Any | None = None,
    block_shape: Sequence[int] = (64, 256, 256),
    client: Any | None = None,
    retries: int = 2,
    progress: ProgressFn | None = None,
) -> Overlaps:
    """The overlap table of two label volumes (z, y, x; same shape), summed over blocks of
    ``block_shape`` voxels on :func:`~organet.blockwise.run_blocks` (in this process or on the
    Dask ``client``); voxels where ``mask`` is 0 are left out."""
    shape = tuple(int(n) for n in pred.shape)
    for name, v in (("truth", truth), ("mask", mask)):
        if v is not None and tuple(int(n) for n in v.shape) != shape:
            raise IncompatibleError(f"shape mismatch: the prediction has shape {shape} but the {name} {tuple(v.shape)}")
    plan = plan_blocks(Roi((0, 0, 0), shape), block_shape, block_shape)
    done = run_blocks(
        functools.partial(_overlap_block, _Job(pred, truth, mask)),
        plan,
        stage=STAGE,
        client=client,
        retries=retries,
        progress=progress,
    )
    parts = [e["result"] for e in done.values()]
    pi = np.concatenate([np.asarray(r["pred"], np.int64) for r in parts])
    ti = np.concatenate([np.asarray(r["true"], np.int64) for r in parts])
    c = np.concatenate([np.asarray(r["count"], np.int64) for r in parts])
    pairs, inv = np.unique(np.stack([pi, ti], 1), axis=0, return_inverse=True)
    counts = np.bincount(inv.ravel(), weights=c, minlength=len(pairs)).astype(np.int64)
    bid = np.concatenate([np.asarray(r["true_ids"], np.int64) for r in parts])
    bb = np.concatenate([np.asarray(r["true_bbox"], np.int64).reshape(-1, 6) for r in parts])
    ids, binv = np.unique(bid, return_inverse=True)
    boxes = np.zeros((len(ids), 6), np.int64)
    boxes[:, :3] = np.iinfo(np.int64).max
    for a in range(3):
        np.minimum.at(boxes[:, a], binv, bb[:, a])
        np.maximum.at(boxes[:, a + 3], binv, bb[:, a + 3])
    return Overlaps(pairs[:, 0].reshape(-1), pairs[:, 1].reshape(-1), counts, ids, boxes)


@dataclass(frozen=True)
class MatchScores:
    """Matching at one IoU threshold."""

    iou: float
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else math.nan

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else math.nan

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else math.nan

    @property
    def ap(self) -> float:
        d = self.tp + self.fp + self.fn
        return self.tp / d if d else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "iou": self.iou,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": _json_float(self.precision),
            "recall": _json_float(self.recall),
            "f1": _json_float(self.f1),
            "ap": _json_float(self.ap),
        }


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


@dataclass(frozen=True)
class MergedPair:
    """Two true objects (``a < b``) that the predicted object ``pred`` joins; ``gap``: background
    voxels between them in the truth (see the module doc; None when not measured)."""

    pred: int
    a: int
    b: int
    gap: int | None = None


@dataclass(frozen=True)
class InstanceEvaluation:
    """Outcome of :func:`score_instances` / :func:`evaluate_instances` (see the module doc)."""

    pred_objects: int
    true_objects: int
    sweep: tuple[MatchScores, ...]
    arand: float
    arand_precision: float
    arand_recall: float
    vi_split: float
    vi_merge: float
    min_overlap: float
    merges: dict[int, list[int]]
    splits: dict[int, list[int]]
    merged_pairs: tuple[MergedPair, ...]
    matched_iou: tuple[float, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def at(self, iou: float) -> MatchScores:
        """The matching at IoU threshold ``iou`` (one of the sweep)."""
        for m in self.sweep:
            if abs(m.iou - iou) < 1e-9:
                return m
        raise KeyError(f"IoU threshold {iou} is not in the sweep {[m.iou for m in self.sweep]}")

    @property
    def mean_f1(self) -> float:
        return float(np.mean([m.f1 for m in self.sweep])) if self.sweep else math.nan

    @property
    def mean_ap(self) -> float:
        return float(np.mean([m.ap for m in self.sweep])) if self.sweep else math.nan

    def separated_pairs(self, gap: int = 2) -> int:
        """Merged pairs whose true objects are at least ``gap`` background voxels apart."""
        return sum(1 for p in self.merged_pairs if p.gap is not None and p.gap >= gap)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (NaN becomes None)."""
        return {
            "pred_objects": self.pred_objects,
            "true_objects": self.true_objects,
            "sweep": [m.to_dict() for m in self.sweep],
            "mean_f1": _json_float(self.mean_f1),
            "mean_ap": _json_float(self.mean_ap),
            "arand": _json_float(self.arand),
            "arand_precision": _json_float(self.arand_precision),
            "arand_recall": _json_float(self.arand_recall),
            "vi_split": _json_float(self.vi_split),
            "vi_merge": _json_float(self.vi_merge),
            "min_overlap": self.min_overlap,
            "merges": {str(k): v for k, v in self.merges.items()},
            "splits": {str(k): v for k, v in self.splits.items()},
            "merged_pairs": [asdict(p) for p in self.merged_pairs],
            "merged_pairs_separated_2": self.separated_pairs(2),
            "matched_iou_at_0.5": list(self.matched_iou),
            **({"extra": self.extra} if self.extra else {}),
        }

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as JSON atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")


def _match(pi: np.ndarray, ti: np.ndarray, iou: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the candidate pairs matched at IoU ``>= tau`` (one partner per object)."""
    from scipy.optimize import linear_sum_assignment

    cand = np.flatnonzero(iou >= tau)
    if cand.size == 0:
        return cand, iou[cand]
    p, t = pi[cand], ti[cand]
    if len(np.unique(p)) == len(p) and len(np.unique(t)) == len(t):
        return cand, iou[cand]
    up, pinv = np.unique(p, return_inverse=True)
    ut, tinv = np.unique(t, return_inverse=True)
    cost = np.zeros((len(up), len(ut)))
    cost[pinv, tinv] = -(1.0 + iou[cand])  # most matches first, then the highest IoU
    rows, cols = linear_sum_assignment(cost)
    lookup = {(int(a), int(b)): int(k) for a, b, k in zip(pinv, tinv, cand)}
    chosen = np.array([lookup[(int(r), int(c))] for r, c in zip(rows, cols) if (int(r), int(c)) in lookup], np.int64)
    return chosen, iou[chosen]


def _xlogx(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x, dtype=np.float64)
    nz = x > 0
    out[nz] = x[nz] * np.log2(x[nz])
    return out


def drop_small(table: Overlaps, min_voxels: float) -> Overlaps:
    """``table`` with the objects (predicted and true) of fewer than ``min_voxels`` voxels (in the
    evaluated region) turned into background: they neither match nor count as false or missed."""
    if min_voxels <= 0:
        return table
    pi, ti, c = table.pred.copy(), table.true.copy(), table.count
    for ids in (pi, ti):
        uniq, inv = np.unique(ids, return_inverse=True)
        small = np.bincount(inv.ravel(), weights=c) < min_voxels
        ids[small[inv.ravel()] & (ids > 0)] = 0
    pairs, inv = np.unique(np.stack([pi, ti], 1), axis=0, return_inverse=True)
    counts = np.bincount(inv.ravel(), weights=c, minlength=len(pairs)).astype(np.int64)
    return Overlaps(pairs[:, 0].reshape(-1), pairs[:, 1].reshape(-1), counts, table.true_ids, table.true_bbox)


def score_instances(
    table: Overlaps, iou_thresholds: Sequence[float] = IOU_SWEEP, min_overlap: float = 0.5
) -> InstanceEvaluation:
    """Every metric of the module doc from an overlap table."""
    if not 0 < min_overlap <= 1:
        raise InputError(f"--min-overlap must lie in (0, 1], got {min_overlap}")
    taus = tuple(float(t) for t in iou_thresholds)
    if not taus or any(not 0 < t <= 1 for t in taus):
        raise InputError(f"IoU thresholds must lie in (0, 1], got {list(taus)}")
    pi, ti, c = table.pred, table.true, table.count.astype(np.float64)
    p_ids, p_inv = np.unique(pi, return_inverse=True)
    t_ids, t_inv = np.unique(ti, return_inverse=True)
    p_size = dict(zip(p_ids.tolist(), np.bincount(p_inv.ravel(), weights=c).tolist()))
    t_size = dict(zip(t_ids.tolist(), np.bincount(t_inv.ravel(), weights=c).tolist()))
    n_pred = int(np.count_nonzero(p_ids))
    n_true = int(np.count_nonzero(t_ids))
    both = (pi > 0) & (ti > 0)
    bp, bt, bc = pi[both], ti[both], c[both]
    ps = np.array([p_size[int(x)] for x in bp], np.float64)
    ts = np.array([t_size[int(x)] for x in bt], np.float64)
    iou = bc / (ps + ts - bc) if len(bc) else np.zeros(0)

    sweep: list[MatchScores] = []
    matched_iou: tuple[float, ...] = ()
    for tau in taus:
        chosen, vals = _match(bp, bt, iou, tau)
        tp = len(chosen)
        sweep.append(MatchScores(tau, tp, n_pred - tp, n_true - tp))
        if abs(tau - 0.5) < 1e-9:
            matched_iou = tuple(float(v) for v in np.sort(vals))

    # adapted Rand error and VI over the voxels inside true objects
    inside = ti > 0
    nij = c[inside]
    n = float(nij.sum())
    if n > 0:
        a = np.bincount(np.unique(ti[inside], return_inverse=True)[1].ravel(), weights=nij)  # per true
        b = np.bincount(np.unique(pi[inside], return_inverse=True)[1].ravel(), weights=nij)  # per pred
        sum_p2 = float(nij @ nij - n)
        sum_a2, sum_b2 = float(a @ a - n), float(b @ b - n)
        denom = 0.5 * (sum_a2 + sum_b2)
        arand = 1.0 - sum_p2 / denom if denom > 0 else 0.0
        arand_precision = sum_p2 / sum_b2 if sum_b2 > 0 else 1.0
        arand_recall = sum_p2 / sum_a2 if sum_a2 > 0 else 1.0
        pij, pa, pb = nij / n, a / n, b / n
        h_joint = -float(_xlogx(pij).sum())
        vi_split = h_joint + float(_xlogx(pa).sum())  # H(pred | true)
        vi_merge = h_joint + float(_xlogx(pb).sum())  # H(true | pred)
    else:
        arand = arand_precision = arand_recall = vi_split = vi_merge = math.nan

    merges: dict[int, list[int]] = {}
    splits: dict[int, list[int]] = {}
    for p, t, k in zip(bp.tolist(), bt.tolist(), bc.tolist()):
        if k >= min_overlap * t_size[t]:
            merges.setdefault(p, []).append(t)
        if k >= min_overlap * p_size[p]:
            splits.setdefault(t, []).append(p)
    merges = {p: sorted(ts_) for p, ts_ in sorted(merges.items()) if len(ts_) >= 2}
    splits = {t: sorted(ps_) for t, ps_ in sorted(splits.items()) if len(ps_) >= 2}
    pairs = tuple(MergedPair(p, a_, b_) for p, ts_ in merges.items() for i, a_ in enumerate(ts_) for b_ in ts_[i + 1 :])
    return InstanceEvaluation(
        pred_objects=n_pred,
        true_objects=n_true,
        sweep=tuple(sweep),
        arand=arand,
        arand_precision=arand_precision,
        arand_recall=arand_recall,
        vi_split=max(vi_split, 0.0) if not math.isnan(vi_split) else vi_split,
        vi_merge=max(vi_merge, 0.0) if not math.isnan(vi_merge) else vi_merge,
        min_overlap=float(min_overlap),
        merges=merges,
        splits=splits,
        merged_pairs=pairs,
        matched_iou=matched_iou,
    )


def pair_gap(truth: Any, a: int, b: int, box_a: Sequence[int], box_b: Sequence[int]) -> int:
    """Background voxels between true objects ``a`` and ``b`` (chessboard distance minus one),
    read from ``truth`` over the union of their boxes (``[z0, y0, x0, z1, y1, x1)``)."""
    from scipy import ndimage

    lo = [min(box_a[i], box_b[i]) for i in range(3)]
    hi = [max(box_a[i + 3], box_b[i + 3]) for i in range(3)]
    lab = _read(truth, tuple(slice(s, e) for s, e in zip(lo, hi)))
    d = ndimage.distance_transform_cdt(lab != a, metric="chessboard")
    return int(d[lab == b].min()) - 1


def _max_value(v: Any, block_shape: Sequence[int], client: Any | None, progress: ProgressFn | None) -> int:
    """The largest value of an integer volume (a pass over it)."""
    shape = tuple(int(n) for n in v.shape)
    plan = plan_blocks(Roi((0, 0, 0), shape), block_shape, block_shape)
    done = run_blocks(functools.partial(_block_max, v), plan, stage="scan", client=client, progress=progress, retries=0)
    return max(int(e["result"]) for e in done.values())


def _block_max(v: Any, block: Block) -> int:
    a = _read(v, block.roi.slices())
    return int(a.max()) if a.size else 0


def as_instances(
    volume: Any,
    what: str,
    scratch: Path,
    connectivity: int = 1,
    block_shape: Sequence[int] = (64, 256, 256),
    client: Any | None = None,
    progress: ProgressFn | None = None,
) -> tuple[Any, bool]:
    """``volume`` as instance labels: labels as they are; a mask (bool, or values 0/1) as its
    connected components (:func:`~organet.analyze.instances.label_instances` into ``scratch``).
    Returns the labels and whether they were computed. ``what`` names the volume in errors."""
    from organet.analyze.instances import label_instances
    from organet.volumes import Volume, open_volume

    kind = prediction_kind(volume)
    if kind != "binary":
        raise InputError(
            f"the {what} {getattr(volume, 'path', '') or ''} holds probabilities ({np.dtype(volume.dtype)}"
            f"{', kind: probability' if kind == 'probability_uint8' else ''}); expected labels or a mask: "
            "run `organet instances` on it first"
        )
    if np.dtype(volume.dtype) != np.bool_ and _max_value(volume, block_shape, client, progress) > 1:
        return volume, False
    v = volume if isinstance(volume, Volume) else Volume(np.asarray(volume))
    out = scratch / f"{what}_components"
    label_instances(v, out, connectivity=connectivity, client=client, overwrite=True, progress=progress)
    return open_volume(out / "labels.zarr"), True


def evaluate_instances(
    pred: Any,
    truth: Any,
    mask: Any | None = None,
    *,
    iou_thresholds: Sequence[float] = IOU_SWEEP,
    min_overlap: float = 0.5,
    min_size_nm3: float = 0.0,
    connectivity: int = 1,
    block_shape: Sequence[int] = (64, 256, 256),
    scratch: str | Path | None = None,
    client: Any | None = None,
    progress: ProgressFn | None = None,
) -> InstanceEvaluation:
    """Instance metrics (module doc) of ``pred`` against ``truth`` (same shape, z, y, x).

    Either may be labels (e.g. ``organet instances`` output, ids > 0) or a mask (bool or 0/1),
    which becomes its connected components (``connectivity`` 1, 2 or 3) in a folder under
    ``scratch`` (None: a temporary folder, removed afterwards). ``mask`` (optional): evaluate
    only where it is > 0. Objects, predicted or true, smaller than ``min_size_nm3`` nm³ inside
    the evaluated region (voxel size of ``pred``) are ignored (:func:`drop_small`). Blocks of
    ``block_shape`` voxels run on the engine runner (Dask with ``client``);
    ``progress(stage, advance, total)`` follows the passes.
    """
    if tuple(pred.shape) != tuple(truth.shape):
        raise IncompatibleError(
            f"shape mismatch: the prediction has shape {tuple(pred.shape)} but the truth {tuple(truth.shape)}"
        )
    with tempfile.TemporaryDirectory(prefix="organet-instances-", dir=scratch) as tmp:
        p, p_cc = as_instances(pred, "prediction", Path(tmp), connectivity, block_shape, client, progress)
        t, t_cc = as_instances(truth, "truth", Path(tmp), connectivity, block_shape, client, progress)
        table = overlap_table(p, t, mask, block_shape, client, progress=progress)
        if not min_size_nm3 >= 0:
            raise InputError(f"--min-size must be >= 0 nm³, got {min_size_nm3}")
        voxel_nm3 = float(np.prod(getattr(pred, "voxel_size", (1.0, 1.0, 1.0))))
        res = score_instances(drop_small(table, min_size_nm3 / voxel_nm3), iou_thresholds, min_overlap)
        boxes = {int(i): b for i, b in zip(table.true_ids, table.true_bbox.tolist())}
        pairs = tuple(
            MergedPair(m.pred, m.a, m.b, pair_gap(t, m.a, m.b, boxes[m.a], boxes[m.b])) for m in res.merged_pairs
        )
    extra = {
        "pred_components": p_cc,
        "truth_components": t_cc,
        "shape": [int(n) for n in pred.shape],
        "min_size_nm3": float(min_size_nm3),
    }
    return dataclasses.replace(res, merged_pairs=pairs, extra=extra)


__all__ = [
    "IOU_SWEEP",
    "InstanceEvaluation",
    "MatchScores",
    "MergedPair",
    "Overlaps",
    "as_instances",
    "drop_small",
    "evaluate_instances",
    "overlap_table",
    "pair_gap",
    "score_instances",
]
