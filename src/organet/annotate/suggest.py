"""Where to annotate: the uncertainty of a prediction and the boxes where new annotations
should help fine-tuning most (``organet suggest``).

Inputs are foreground probabilities on one grid (``organet predict`` writes them as
``OUT.zarr/probability``; several inputs = several checkpoints or TTA variants of one
model), read through the one foreground rule (:mod:`organet.volumes.foreground`). Per
voxel, with ``p̄`` the mean probability over the inputs and ``H`` the binary entropy in bits:

* ``entropy`` = ``H(p̄)``, 0 (certain) .. 1 bit (p̄ = 0.5);
* ``disagreement`` = ``H(p̄) - mean_i H(p_i)`` (mutual information, BALD; >= 2 inputs):
  high where the inputs are each confident but disagree.

:func:`suggest` computes the chosen map blockwise on the one runner into a resumable
output folder, then picks boxes: it sums the map over cells of about a quarter box
(:class:`CellGrid`), scores every candidate box on that grid (window sums of the cell
sums), and takes the best boxes greedily, each at least ``min_spacing`` away from those
already taken (:func:`select_boxes`); ``strategy="random"`` draws uniformly random
non-overlapping boxes under the same region and sample rules instead, for comparisons.
The score reported for a box is the exact mean uncertainty over its voxels.

Coordinates: voxels of the input volume, axis order (z, y, x), boxes ``[begin, end)``;
``_nm`` values are world coordinates (the volume offset included), a voxel ``i`` spanning
``offset + i * voxel_size`` to ``offset + (i + 1) * voxel_size`` as in ``--roi-nm``.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr

from organet.blockwise import run_blocks
from organet.blockwise.output import ResumableOutput, volume_identity, write_block
from organet.errors import IncompatibleError, InputError, VolumeError
from organet.predict.sample_mask import SampleMask
from organet.progress import ProgressFn
from organet.volumes import Roi, Volume, open_volume
from organet.volumes.atomic import atomic_path, atomic_write_text
from organet.volumes.blocks import Block, BlockPlan, plan_blocks
from organet.volumes.foreground import Kind, as_probability, not_probability, prediction_kind, probability_to_uint8
from organet.volumes.geometry import Shape3, Vec3, as_int3, as_vec3, check_same_voxel_size, fmt_vec
from organet.volumes.ome_zarr import create_ome_image
from organet.volumes.pyramid import build_pyramid

Score = Literal["entropy", "disagreement"]
Strategy = Literal["uncertainty", "random"]
SCORES: tuple[Score, ...] = ("entropy", "disagreement")
STRATEGIES: tuple[Strategy, ...] = ("uncertainty", "random")

UNCERTAINTY = "uncertainty.zarr"
BOXES_CSV = "boxes.csv"
NAPARI_CSV = "boxes_napari.csv"
OVERVIEW_PNG = "overview.png"
SUMMARY_JSON = "summary.json"
STAGES = ("uncertainty", "pyramid uncertainty.zarr s1, s2, ...", "box scores", "overview")
"""The blockwise passes of :func:`suggest`, in order (progress stages and ledger sections)."""

MIN_SAMPLE_FRACTION = 0.5
"""With a sample mask, a box needs at least this fraction of its voxels in the sample."""
MAX_CELLS = 2**20
"""The cell grid is coarsened (stride doubled) until it has at most this many cells."""
OVERVIEW_PIXELS = 1024
"""The overview projects the first pyramid level whose every axis is at most this long."""

BOX_COLUMNS = [
    "rank",
    "score",
    "z0",
    "y0",
    "x0",
    "z1",
    "y1",
    "x1",
    "z0_nm",
    "y0_nm",
    "x0_nm",
    "z1_nm",
    "y1_nm",
    "x1_nm",
    "volume_um3",
    "roi_vox",
    "sample_fraction",
    "uncertainty_fraction",
]
"""Columns of ``boxes.csv``: voxel bounds ``[z0, z1)`` etc., the same in world nm, the box
volume (µm³), ``roi_vox`` ready for ``--roi-vox``, the fraction of the box in the sample
and the fraction of the region's uncertainty that the box holds."""
NAPARI_COLUMNS = ["index", "shape-type", "vertex-index", "axis-0", "axis-1", "axis-2"]


# --------------------------------------------------------------------------- uncertainty


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Binary entropy ``-p log2 p - (1 - p) log2 (1 - p)`` in bits (float64, 0..1) of
    probabilities ``p`` (clipped to [0, 1]; ``0 log 0 = 0``)."""
    from scipy.special import xlogy

    p = np.clip(np.asarray(p, np.float64), 0.0, 1.0)
    q = 1.0 - p
    return np.asarray(-(xlogy(p, p) + xlogy(q, q)) / math.log(2.0))


def _check_score(score: str, n_inputs: int) -> Score:
    if score not in SCORES:
        raise InputError(f"unknown score {score!r}; expected one of {', '.join(SCORES)}")
    if score == "disagreement" and n_inputs < 2:
        raise InputError(
            f"score 'disagreement' needs at least 2 probability inputs (checkpoints or TTA variants), got {n_inputs}; "
            "use --score entropy with one input"
        )
    return "disagreement" if score == "disagreement" else "entropy"


def uncertainty_map(probabilities: Sequence[np.ndarray], score: Score = "entropy") -> np.ndarray:
    """Voxelwise uncertainty in bits (float64, 0..1) of probabilities on one grid.

    Parameters
    ----------
    probabilities
        Foreground probabilities in [0, 1] of equal shape (z, y, x), one per model variant
        (NaN counts as 0, as in :func:`~organet.volumes.foreground.probability_to_uint8`).
    score
        ``"entropy"``: ``H(p̄)`` of the mean probability ``p̄``; ``"disagreement"`` (>= 2
        inputs): ``H(p̄) - mean_i H(p_i)``, the mutual information between the prediction
        and the choice of variant (BALD), clipped to [0, 1].
    """
    score = _check_score(score, len(probabilities))
    ps = [np.clip(np.nan_to_num(np.asarray(p, np.float64), nan=0.0), 0.0, 1.0) for p in probabilities]
    shapes = {p.shape for p in ps}
    if len(shapes) != 1:
        raise IncompatibleError(f"probabilities of different shapes {sorted(shapes)} cannot be combined")
    mean = functools.reduce(np.add, ps) / len(ps)
    h = binary_entropy(mean)
    if score == "entropy":
        return h
    expected = functools.reduce(np.add, (binary_entropy(p) for p in ps)) / len(ps)
    return np.clip(h - expected, 0.0, 1.0)


def _name(v: Volume) -> str:
    return v.path or "<in memory>"


def open_probability(spec: str | Path | Volume, voxel_size: Sequence[float] | None = None) -> Volume:
    """A probability volume: ``spec`` as :func:`~organet.volumes.open_volume` reads it, or
    ``OUT.zarr`` of ``organet predict`` meaning ``OUT.zarr/probability``.
    ``voxel_size`` (nm, z, y, x) overrides the file's. Masks are refused (InputError)."""
    if isinstance(spec, Volume):
        vol = spec
    else:
        try:
            vol = open_volume(spec, voxel_size=voxel_size)
        except VolumeError:
            if not (Path(spec).expanduser() / "probability").is_dir():
                raise
            vol = open_volume(Path(spec) / "probability", voxel_size=voxel_size)
    if prediction_kind(vol) == "binary":
        raise not_probability(f"{_name(vol)} (dtype {vol.dtype})")
    return vol


def check_same_grid(volumes: Sequence[Volume]) -> None:
    """All volumes share shape (voxels), voxel size and offset (nm); else
    :class:`~organet.errors.IncompatibleError` naming the first and the differing volume."""
    ref = volumes[0]
    hint = "all inputs must lie on one grid (predict them over the same volume and ROI)"
    for v in volumes[1:]:
        a, b = _name(ref), _name(v)
        if v.shape != ref.shape:
            raise IncompatibleError(f"{b} has shape {v.shape} voxels but {a} has {ref.shape}; {hint}")
        check_same_voxel_size(v.voxel_size, ref.voxel_size, b, a, hint)
        if not np.allclose(v.offset, ref.offset, rtol=0.0, atol=1e-3 * min(ref.voxel_size)):
            raise IncompatibleError(
                f"{b} has offset {fmt_vec(v.offset)} nm but {a} has {fmt_vec(ref.offset)} nm; {hint}"
            )


# --------------------------------------------------------------------------- boxes


@dataclass(frozen=True)
class Box:
    """A suggested box.

    ``roi``: voxels of the volume (z, y, x), ``[begin, end)``; ``score``: mean uncertainty
    (bit) over its voxels; ``sample_fraction``: fraction of its voxels in the sample (1
    without a mask); ``uncertainty_sum``: uncertainty (bit x voxels) of its voxels in the
    sample (all voxels without a mask).
    """

    rank: int
    roi: Roi
    score: float
    sample_fraction: float = 1.0
    uncertainty_sum: float = 0.0

    @property
    def roi_vox(self) -> str:
        """``"z0:z1,y0:y1,x0:x1"`` (voxels), ready for ``--roi-vox``."""
        return ",".join(f"{b}:{e}" for b, e in zip(self.roi.offset, self.roi.end))

    def row(self, voxel_size: Sequence[float], offset: Sequence[float], total: float = 0.0) -> dict[str, Any]:
        """The box as a row of ``boxes.csv`` (:data:`BOX_COLUMNS`); ``voxel_size``/``offset``
        in nm, ``total`` the region's uncertainty (bit x voxels; 0: fraction left empty)."""
        (bz, by, bx), (ez, ey, ex) = self.roi.to_nm(voxel_size, offset)
        (z0, y0, x0), (z1, y1, x1) = self.roi.offset, self.roi.end
        volume = (ez - bz) * (ey - by) * (ex - bx) / 1e9
        return {
            "rank": self.rank,
            "score": round(self.score, 6),
            **{"z0": z0, "y0": y0, "x0": x0, "z1": z1, "y1": y1, "x1": x1},
            **{"z0_nm": bz, "y0_nm": by, "x0_nm": bx, "z1_nm": ez, "y1_nm": ey, "x1_nm": ex},
            "volume_um3": round(volume, 9),
            "roi_vox": self.roi_vox,
            "sample_fraction": round(self.sample_fraction, 6),
            "uncertainty_fraction": round(self.uncertainty_sum / total, 6) if total > 0 else None,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any], total: float = 0.0) -> Box:
        """Inverse of :meth:`row` (``uncertainty_sum`` back from the fraction and ``total``)."""
        lo = [int(row[f"{a}0"]) for a in "zyx"]
        hi = [int(row[f"{a}1"]) for a in "zyx"]
        frac = row.get("uncertainty_fraction")
        return cls(
            int(row["rank"]),
            Roi(lo, [b - a for a, b in zip(lo, hi)]),
            float(row["score"]),
            float(row["sample_fraction"]),
            float(frac) * total if frac is not None else 0.0,
        )


def box_voxels(box_nm: Sequence[float], voxel_size: Sequence[float], region_shape: Sequence[int]) -> tuple[Shape3, str]:
    """The box (nm, z, y, x) in voxels: rounded, at least 1, at most the region (voxels).

    Returns the box and a note naming the axes where it was clipped ("" when none).
    """
    nm = as_vec3(box_nm, "box size (nm)", positive=True)
    vs = as_vec3(voxel_size, "voxel size (nm)", positive=True)
    want = [max(1, math.floor(n / v + 0.5)) for n, v in zip(nm, vs)]
    got = [min(w, int(r)) for w, r in zip(want, region_shape)]
    note = ""
    if got != want:
        axes = " and ".join(a for a, w, g in zip("zyx", want, got) if w != g)
        note = (
            f"the box of {fmt_vec(want)} voxels is larger than the region {fmt_vec(region_shape)} in {axes}; "
            f"clipped to {fmt_vec(got)} voxels"
        )
    return (got[0], got[1], got[2]), note


def default_stride(box: Sequence[int], region_shape: Sequence[int], max_cells: int = MAX_CELLS) -> Shape3:
    """Cell size (voxels) for scoring boxes: a quarter box per axis (at least 1), doubled
    (up to the box) until the region has at most ``max_cells`` cells."""
    s = [max(1, int(b) // 4) for b in box]
    while math.prod(math.ceil(r / c) for r, c in zip(region_shape, s)) > max_cells:
        grown = [min(2 * c, int(b)) for c, b in zip(s, box)]
        if grown == s:
            break
        s = grown
    return (s[0], s[1], s[2])


def cell_sums(values: np.ndarray, stride: Sequence[int]) -> np.ndarray:
    """Sums of ``values`` (z, y, x) over cells of ``stride`` voxels from its first voxel
    (the last cell on an axis may be shorter)."""
    a = np.asarray(values)
    for axis, s in enumerate(stride):
        a = np.add.reduceat(a, np.arange(0, a.shape[axis], int(s)), axis=axis)
    return a


@dataclass(frozen=True)
class CellGrid:
    """Sums of the uncertainty map over cells of ``stride`` voxels tiling ``region`` (voxels)
    from its first voxel (the last cell on an axis may be shorter).

    ``total``: uncertainty (bit x voxels) per cell; ``sample``: voxels in the sample per
    cell and ``sample_total``: their uncertainty (both None without a sample mask).
    """

    region: Roi
    stride: Shape3
    total: np.ndarray
    sample: np.ndarray | None = None
    sample_total: np.ndarray | None = None

    @classmethod
    def from_arrays(
        cls, values: np.ndarray, region: Roi, stride: Sequence[int], sample: np.ndarray | None = None
    ) -> CellGrid:
        """Cells of an in-memory uncertainty map (bits) and sample (bool), both of the region's shape."""
        st = (int(stride[0]), int(stride[1]), int(stride[2]))
        v = np.asarray(values, np.float64)
        if sample is None:
            return cls(region, st, cell_sums(v, st))
        s = np.asarray(sample, bool)
        return cls(region, st, cell_sums(v, st), cell_sums(s.astype(np.int64), st), cell_sums(np.where(s, v, 0.0), st))

    @property
    def region_total(self) -> float:
        """Uncertainty (bit x voxels) of the region, over the sample when there is a mask."""
        return float((self.sample_total if self.sample_total is not None else self.total).sum())

    @property
    def region_sample_voxels(self) -> int:
        """Voxels of the region in the sample (all of them without a mask)."""
        return int(self.sample.sum()) if self.sample is not None else self.region.size


def _window_sums(cells: np.ndarray, axis: int, stride: int, length: int, starts: np.ndarray, box: int) -> np.ndarray:
    """Along ``axis``: the sum over ``[a, a + box)`` (voxels from the region origin) for each
    ``a`` in ``starts``, each cell's sum spread evenly over its voxels."""
    n = cells.shape[axis]
    lens = np.minimum(stride, length - np.arange(n) * stride).astype(np.float64)
    zero = np.zeros_like(np.take(cells, [0], axis=axis), dtype=np.float64)
    cum = np.concatenate([zero, np.cumsum(cells, axis=axis, dtype=np.float64)], axis=axis)
    shape = [1, 1, 1]
    shape[axis] = -1

    def integral(x: np.ndarray) -> np.ndarray:
        i = np.minimum(x // stride, n - 1)
        frac = ((x - i * stride) / lens[i]).reshape(shape)
        return np.asarray(np.take(cum, i, axis=axis) + frac * np.take(cells, i, axis=axis))

    return integral(starts + box) - integral(starts)


def _starts(length: int, box: int, stride: int) -> np.ndarray:
    """Candidate box starts on one axis: every ``stride`` voxels, and flush with the far end."""
    last = length - box
    s = list(range(0, last + 1, stride))
    if s[-1] != last:
        s.append(last)
    return np.asarray(s, np.int64)


def _conflicts(starts: np.ndarray, box: Sequence[int], chosen: Roi, spacing: Sequence[float]) -> np.ndarray:
    """Which boxes (``starts`` (n, 3) voxels, shape ``box``) lie closer than ``spacing``
    (voxels per axis) to ``chosen``: their gap is below the spacing on every axis (a
    negative gap = overlap, so spacing 0 means overlapping)."""
    b = np.asarray(box, np.int64)
    gap = np.maximum(starts, np.asarray(chosen.offset)) - np.minimum(starts + b, np.asarray(chosen.end))
    return np.asarray(np.all(gap < np.asarray(spacing, np.float64), axis=1))


Measure = Callable[[Roi], tuple[float, float, float]]
"""Exact statistics of a box (voxels): (mean uncertainty in bits, fraction in the sample,
uncertainty (bit x voxels) of its voxels in the sample)."""


def _measure(values: np.ndarray, inside: np.ndarray | None) -> tuple[float, float, float]:
    if inside is None:
        return float(values.mean()), 1.0, float(values.sum())
    return float(values.mean()), float(inside.mean()), float(values[inside].sum())


def _ranked(found: list[tuple[Roi, float, float, float]]) -> list[Box]:
    found = sorted(found, key=lambda f: (-f[1], f[0].offset))
    return [Box(i + 1, roi, m, fr, us) for i, (roi, m, fr, us) in enumerate(found)]


def select_boxes(
    grid: CellGrid,
    box: Sequence[int],
    k: int,
    measure: Measure,
    *,
    min_spacing_vox: Sequence[float] | None = None,
    strategy: Strategy = "uncertainty",
    rng: np.random.Generator | int | None = None,
) -> list[Box]:
    """Up to ``k`` boxes of ``box`` voxels in ``grid.region``, ranked by score (highest first).

    Parameters
    ----------
    grid
        Cell sums of the uncertainty map over the region.
    box
        Box shape (voxels, z, y, x), at most the region's.
    measure
        Exact statistics of a box (:data:`Measure`); gives the reported score and decides
        the sample rule (:data:`MIN_SAMPLE_FRACTION`, checked when ``grid`` has a sample).
    min_spacing_vox
        ``"uncertainty"``: a box is taken only when it lies at least this far (voxels per
        axis) from every box taken before on some axis; default half the box.
    strategy
        ``"uncertainty"``: candidates every cell (and flush with the region's far end),
        scored by the mean uncertainty on the cell grid, taken greedily from the highest;
        ``"random"``: uniformly random positions, kept when they overlap no earlier box
        and pass the sample rule (no spacing), with ``rng`` (a seed or Generator).

    Returns
    -------
    list[Box]
        Fewer than ``k`` boxes when no more fit.
    """
    if int(k) < 1:
        raise InputError(f"the number of boxes must be >= 1, got {k}")
    region = grid.region
    b = (int(box[0]), int(box[1]), int(box[2]))
    if any(x < 1 or x > r for x, r in zip(b, region.shape)):
        raise InputError(f"box {fmt_vec(b)} voxels does not fit the region {region} (shape {fmt_vec(region.shape)})")
    if strategy not in STRATEGIES:
        raise InputError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    masked = grid.sample is not None
    found: list[tuple[Roi, float, float, float]] = []
    if strategy == "random":
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        high = np.asarray(region.shape) - np.asarray(b) + 1
        tries = 1000 + 100 * int(k)
        for _ in range(tries):
            if len(found) >= k:
                break
            roi = Roi(np.asarray(region.offset) + gen.integers(0, high), b)
            if any(roi.intersect(f[0]).size for f in found):
                continue
            stats = measure(roi)
            if masked and stats[1] < MIN_SAMPLE_FRACTION:
                continue
            found.append((roi, *stats))
        return _ranked(found)

    spacing = [x / 2 for x in b] if min_spacing_vox is None else [float(x) for x in min_spacing_vox]
    if len(spacing) != 3 or any(not s >= 0 for s in spacing):
        raise InputError(f"minimum spacing must be 3 numbers >= 0 (voxels, z, y, x), got {min_spacing_vox!r}")
    starts = [_starts(r, x, s) for r, x, s in zip(region.shape, b, grid.stride)]

    def windows(cells: np.ndarray) -> np.ndarray:
        for axis in range(3):
            cells = _window_sums(cells, axis, grid.stride[axis], region.shape[axis], starts[axis], b[axis])
        return cells.ravel()

    size = float(math.prod(b))
    score = np.round(windows(grid.total) / size, 9)  # ties (equal cells) go to the first in raster order
    alive = np.ones(score.size, bool)
    if grid.sample is not None:  # a loose cut on the cell grid; the exact rule is checked below
        alive = windows(grid.sample) / size >= MIN_SAMPLE_FRACTION / 2
    grids = np.meshgrid(*starts, indexing="ij")
    pos = np.stack([g.ravel() for g in grids], axis=1) + np.asarray(region.offset, np.int64)
    order = np.argsort(-score, kind="stable")
    i = 0
    while len(found) < k:
        rest = alive[order[i:]]
        if not rest.any():
            break
        i += int(np.argmax(rest))
        c = int(order[i])
        i += 1
        alive[c] = False
        roi = Roi(pos[c], b)
        stats = measure(roi)
        if masked and stats[1] < MIN_SAMPLE_FRACTION:
            continue
        found.append((roi, *stats))
        alive &= ~_conflicts(pos, b, roi, spacing)
    return _ranked(found)


def _bits(values: Any) -> np.ndarray:
    a = values.read() if isinstance(values, Volume) else np.asarray(values)
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    return np.clip(np.nan_to_num(np.asarray(a, np.float64), nan=0.0), 0.0, 1.0)


def propose_boxes(
    score: np.ndarray | Volume,
    box_vox: Sequence[int],
    k: int,
    *,
    roi: Roi | None = None,
    sample: np.ndarray | None = None,
    min_spacing_vox: Sequence[float] | None = None,
    strategy: Strategy = "uncertainty",
    rng: np.random.Generator | int | None = None,
    stride: Sequence[int] | None = None,
) -> list[Box]:
    """Boxes on an uncertainty map held in memory (see :func:`select_boxes`).

    Parameters
    ----------
    score
        Uncertainty map (z, y, x): floats in bits, or uint8 ``round(255 bits)`` as in
        ``uncertainty.zarr`` (a Volume is read whole).
    box_vox
        Box shape (voxels, z, y, x); clipped to the region.
    roi
        Region the boxes must lie in (voxels); default the whole map.
    sample
        Boolean sample mask of the map's shape: a box needs
        :data:`MIN_SAMPLE_FRACTION` of its voxels in it.
    stride
        Cell size (voxels) of the scoring grid; default :func:`default_stride`.
    """
    u = _bits(score)
    region = roi if roi is not None else Roi((0, 0, 0), u.shape)
    if region.empty or not Roi((0, 0, 0), u.shape).contains(region):
        raise InputError(f"region {region} lies outside the map of shape {u.shape} or is empty")
    b = tuple(max(1, min(int(x), r)) for x, r in zip(box_vox, region.shape))
    s = None
    if sample is not None:
        s = np.asarray(sample, bool)
        if s.shape != u.shape:
            raise IncompatibleError(f"sample mask of shape {s.shape} does not match the map's {u.shape}")
    st = default_stride(b, region.shape) if stride is None else stride
    sl = region.slices()
    grid = CellGrid.from_arrays(u[sl], region, st, None if s is None else s[sl])

    def measure(r: Roi) -> tuple[float, float, float]:
        return _measure(u[r.slices()], None if s is None else s[r.slices()])

    return select_boxes(grid, b, k, measure, min_spacing_vox=min_spacing_vox, strategy=strategy, rng=rng)


# --------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class _Job:
    """What a worker needs for one block of the uncertainty pass (picklable; volumes by path)."""

    inputs: tuple[Volume, ...]
    kinds: tuple[Kind, ...]
    score: Score
    array: str


def _uncertainty_block(job: _Job, block: Block) -> None:
    ps = [as_probability(v.read(block.roi), k, _name(v)) for v, k in zip(job.inputs, job.kinds)]
    write_block(job.array, block.roi.slices(), probability_to_uint8(uncertainty_map(ps, job.score)))


@dataclass(frozen=True)
class _CellJob:
    """One block of the box-score pass: ``uncertainty`` (the uint8 map, by path), the sample mask."""

    uncertainty: Volume
    sample: SampleMask | None


def _cells_block(job: _CellJob, stride: Shape3, block: Block) -> dict[str, np.ndarray]:
    """Cell sums of one block (whole cells: blocks start on the cell grid), uint8 units."""
    u = job.uncertainty.read(block.roi).astype(np.int64)
    out = {"total": cell_sums(u, stride)}
    if job.sample is not None:
        inside = job.sample.voxels(job.uncertainty, block.roi)
        out["sample"] = cell_sums(inside.astype(np.int64), stride)
        out["sample_total"] = cell_sums(np.where(inside, u, 0), stride)
    return out


def _projections_block(array: str, block: Block) -> dict[str, np.ndarray]:
    a = np.asarray(zarr.open_array(array, mode="r")[block.roi.slices()])
    return {"z": a.max(axis=0), "y": a.max(axis=1), "x": a.max(axis=2)}


@dataclass
class SuggestResult:
    """What :func:`suggest` did. ``captured_fraction``: the boxes' share of the region's
    uncertainty (None when the region has none); ``notes``: clipped box, fewer boxes, resume."""

    output: Path
    boxes: list[Box]
    requested: int
    box_vox: Shape3
    region: Roi
    score: Score
    strategy: Strategy
    voxel_size: Vec3
    offset: Vec3
    volume_um3: float
    captured_fraction: float | None
    pyramid_levels: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    already_complete: bool = False


def _create_map(folder: Path, *, shape: Shape3, voxel_size: Vec3, offset: Vec3, chunks: Shape3, meta: dict) -> None:
    root = zarr.open_group(str(folder / UNCERTAINTY), mode="w", zarr_format=3)
    create_ome_image(root, shape, np.uint8, voxel_size, offset, chunks, meta, name="uncertainty")


def napari_rows(boxes: Sequence[Box], voxel_size: Sequence[float], offset: Sequence[float]) -> list[dict[str, Any]]:
    """The boxes as napari shapes (rows of :data:`NAPARI_COLUMNS`): one rectangle per box on
    its middle z plane.

    Coordinates are world nm, the units of an image layer opened with ``scale`` = voxel
    size and ``translate`` = offset (nm, z, y, x); a shapes layer read from the CSV (scale
    1) then lies on that image. napari draws voxel ``i`` of such a layer centred at
    ``offset + i * voxel_size``, so the rectangle's edges lie half a voxel outside the box's
    first and last voxels (``offset + (y0 - 0.5) vy`` .. ``offset + (y1 - 0.5) vy``) and its
    plane is ``offset + zm vz`` with ``zm = (z0 + z1 - 1) // 2``.
    """
    rows: list[dict[str, Any]] = []
    vz, vy, vx = (float(v) for v in voxel_size)
    oz, oy, ox = (float(o) for o in offset)
    for i, bx in enumerate(boxes):
        (z0, y0, x0), (z1, y1, x1) = bx.roi.offset, bx.roi.end
        z = oz + ((z0 + z1 - 1) // 2) * vz
        ya, yb = oy + (y0 - 0.5) * vy, oy + (y1 - 0.5) * vy
        xa, xb = ox + (x0 - 0.5) * vx, ox + (x1 - 0.5) * vx
        for j, (y, x) in enumerate(((ya, xa), (ya, xb), (yb, xb), (yb, xa))):
            rows.append(dict(zip(NAPARI_COLUMNS, (i, "rectangle", j, z, y, x))))
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    import pandas as pd

    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=columns).to_csv(tmp, index=False)


def _overview_level(group: Path) -> tuple[int, str]:
    g = zarr.open_group(str(group), mode="r")
    levels = sorted(int(k[1:]) for k in g.array_keys() if k.startswith("s") and k[1:].isdigit())
    for lvl in levels:
        if max(zarr.open_array(str(group / f"s{lvl}"), mode="r").shape) <= OVERVIEW_PIXELS:
            return lvl, str(group / f"s{lvl}")
    return levels[-1], str(group / f"s{levels[-1]}")


def suggest(
    inputs: Sequence[str | Path | Volume],
    output: str | Path,
    *,
    box_nm: Sequence[float],
    k: int = 5,
    score: Score = "entropy",
    strategy: Strategy = "uncertainty",
    seed: int = 0,
    min_spacing_nm: Sequence[float] | None = None,
    roi: Roi | None = None,
    sample_mask: SampleMask | None = None,
    voxel_size: Sequence[float] | None = None,
    chunks: Sequence[int] = (64, 64, 64),
    block_shape: Sequence[int] | None = None,
    client: Any | None = None,
    retries: int = 2,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> SuggestResult:
    """Uncertainty of ``inputs`` and ``k`` boxes to annotate, into the folder ``output``.

    Parameters
    ----------
    inputs
        Probability volumes on one grid (paths, ``OUT.zarr`` = ``OUT.zarr/probability``, or
        Volumes): uint8 0-255 marked as probability, or floats in [0, 1].
    output
        Folder ``DIR``; refused when it exists and is not empty, unless ``overwrite`` (a
        complete output of the same run is reported as such and left alone). It gets
        ``uncertainty.zarr`` (OME-Zarr, uint8 ``round(255 bits)``, the inputs' voxel size
        and offset, mean pyramid), ``boxes.csv`` (:data:`BOX_COLUMNS`), ``boxes_napari.csv``
        (:func:`napari_rows`), ``overview.png`` and ``summary.json``.
    box_nm
        Box size (nm, z, y, x); rounded to voxels (at least 1) and clipped to the region
        (:attr:`SuggestResult.notes` says so).
    k
        Number of boxes; fewer are returned (and noted) when no more fit.
    score
        Map used for the boxes: ``"entropy"`` or ``"disagreement"`` (>= 2 inputs),
        see :func:`uncertainty_map`.
    strategy, seed
        ``"uncertainty"`` (greedy, highest mean uncertainty first) or ``"random"``
        (uniformly random non-overlapping boxes, drawn with ``seed``).
    min_spacing_nm
        Boxes of ``"uncertainty"`` lie at least this far apart (nm, z, y, x) on some axis;
        default half the box, which spreads them over the cell.
    roi
        Region (voxels) the boxes must lie in; default the whole volume. The uncertainty
        map always covers the whole volume.
    sample_mask
        A mask volume (any resolution, aligned by nm) and rule: a box needs
        :data:`MIN_SAMPLE_FRACTION` of its voxels in the sample.
    voxel_size
        nm (z, y, x), overriding the inputs' metadata.
    chunks, block_shape
        Chunks of ``uncertainty.zarr`` and the blocks of the uncertainty pass (voxels;
        default about 64 x 256 x 256, rounded to whole chunks).
    client, retries, progress
        Dask client (None: in this process), retries per failing block, progress callback
        (stages :data:`STAGES`). The passes resume from ``DIR.progress`` after a kill.
    """
    t0 = time.time()
    if not inputs:
        raise InputError("give at least one probability volume")
    vols = [open_probability(x, voxel_size) for x in inputs]
    check_same_grid(vols)
    score = _check_score(score, len(vols))
    if strategy not in STRATEGIES:
        raise InputError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if int(k) < 1:
        raise InputError(f"the number of boxes must be >= 1, got {k}")
    if sample_mask is not None and sample_mask.volume is None:
        raise InputError("a sample mask for suggest needs a mask volume (--mask); the rule applies to it")
    ref = vols[0]
    vs, off = ref.voxel_size, ref.offset
    region = roi if roi is not None else ref.roi
    if region.empty or not ref.roi.contains(region):
        raise InputError(f"ROI {region} lies outside the volume {_name(ref)} of shape {ref.shape} or is empty")
    box, clip_note = box_voxels(box_nm, vs, region.shape)
    if min_spacing_nm is None:
        spacing_nm = [b * v / 2 for b, v in zip(box, vs)]
    else:
        spacing_nm = list(as_vec3(min_spacing_nm, "minimum spacing (nm)"))
        if any(s < 0 for s in spacing_nm):
            raise InputError(f"minimum spacing must be >= 0 nm, got {fmt_vec(spacing_nm)}")
    spacing_vox = [s / v for s, v in zip(spacing_nm, vs)]
    ch = as_int3(chunks, "chunks", minimum=1)
    ch = (min(ch[0], ref.shape[0]), min(ch[1], ref.shape[1]), min(ch[2], ref.shape[2]))
    plan = plan_blocks(ref.roi, ch, block_shape, target=(64, 256, 256))
    stride = default_stride(box, region.shape)
    cell_plan = plan_blocks(region, stride, target=(64, 256, 256))
    output = Path(output).expanduser()
    run = {
        "pass": "suggest",
        "inputs": [volume_identity(v) for v in vols],
        "kinds": [prediction_kind(v) for v in vols],
        "shape": list(ref.shape),
        "voxel_size": list(vs),
        "offset": list(off),
        "score": score,
        "strategy": strategy,
        "seed": int(seed),
        "k": int(k),
        "box_vox": list(box),
        "min_spacing_nm": spacing_nm,
        "region_offset": list(region.offset),
        "region_shape": list(region.shape),
        "sample_mask": sample_mask.describe() if sample_mask is not None else None,
        "plan": plan.describe(),
        "cells": cell_plan.describe(),
    }
    if output.is_dir() and not output.is_symlink() and not any(output.iterdir()):
        output.rmdir()  # an empty folder made for us
    out = ResumableOutput(output, run, overwrite=overwrite)
    if out.complete:
        res = read_result(output)
        res.already_complete, res.seconds = True, time.time() - t0
        return res
    meta = {
        "kind": "uncertainty",
        "score": score,
        "unit": "bit",
        "scale": 255,
        "inputs": [_name(v) for v in vols],
    }
    out.start(functools.partial(_create_map, shape=ref.shape, voxel_size=vs, offset=off, chunks=ch, meta=meta))
    resumed = out.resumed
    passes = functools.partial(run_blocks, ledger=out.ledger, client=client, retries=retries, progress=progress)
    group = out.partial / UNCERTAINTY
    job = _Job(tuple(vols), tuple(prediction_kind(v) for v in vols), score, str(group / "s0"))
    passes(functools.partial(_uncertainty_block, job), plan, stage="uncertainty")
    levels = build_pyramid(str(group), "mean", client=client, retries=retries, ledger=out.ledger, progress=progress)

    unc = open_volume(group)
    cells = passes(functools.partial(_cells_block, _CellJob(unc, sample_mask), stride), cell_plan, stage="box scores")
    grid = _assemble(cells, cell_plan, region, stride, masked=sample_mask is not None)

    def measure(r: Roi) -> tuple[float, float, float]:
        inside = sample_mask.voxels(unc, r) if sample_mask is not None else None
        return _measure(unc.read(r).astype(np.float64) / 255.0, inside)

    boxes = select_boxes(
        grid, box, k, measure, min_spacing_vox=spacing_vox, strategy=strategy, rng=np.random.default_rng(seed)
    )
    notes = [n for n in (clip_note, plan.note) if n]
    if len(boxes) < k:
        notes.append(
            f"only {len(boxes)} of {k} boxes of {fmt_vec(box)} voxels fit the region"
            + (" and the sample mask" if sample_mask is not None else "")
            + (" at the minimum spacing" if strategy == "uncertainty" else "")
        )
    if resumed:
        notes.append(f"resumed an interrupted run ({resumed} blocks were done)")

    lvl, level_array = _overview_level(group)
    proj_plan = plan_blocks(Roi((0, 0, 0), zarr.open_array(level_array, mode="r").shape), ch, target=256)
    parts = passes(functools.partial(_projections_block, level_array), proj_plan, stage="overview")
    mips = _assemble_projections(parts, proj_plan)

    total = grid.region_total
    rows = [b.row(vs, off, total) for b in boxes]
    volume = float(sum(r["volume_um3"] for r in rows))
    captured = sum(b.uncertainty_sum for b in boxes) / total if total > 0 else None
    summary = {
        "inputs": [_name(v) for v in vols],
        "input_kinds": run["kinds"],
        "score": score,
        "strategy": strategy,
        "seed": int(seed),
        "boxes_requested": int(k),
        "boxes_found": len(boxes),
        "box_nm": list(as_vec3(box_nm, "box size (nm)", positive=True)),
        "box_vox": list(box),
        "min_spacing_nm": spacing_nm if strategy == "uncertainty" else None,
        "min_sample_fraction": MIN_SAMPLE_FRACTION if sample_mask is not None else None,
        "sample_mask": run["sample_mask"],
        "voxel_size_nm": list(vs),
        "offset_nm": list(off),
        "shape_vox": list(ref.shape),
        "region": {
            "roi_vox": Box(0, region, 0.0).roi_vox,
            "roi_nm": [list(x) for x in region.to_nm(vs, off)],
            "voxels": region.size,
            "sample_voxels": grid.region_sample_voxels,
            "uncertainty_bit_voxels": round(total, 6),
        },
        "cell_stride_vox": list(stride),
        "uncertainty": {"path": UNCERTAINTY, "encoding": "uint8 = round(255 * bits)", "pyramid_levels": levels},
        "total_volume_um3": round(volume, 9),
        "captured_fraction": round(captured, 6) if captured is not None else None,
        "boxes": rows,
        "notes": notes,
    }
    _write_csv(out.partial / BOXES_CSV, rows, BOX_COLUMNS)
    _write_csv(out.partial / NAPARI_CSV, napari_rows(boxes, vs, off), NAPARI_COLUMNS)
    from .suggest_plots import plot_overview

    plot_overview(
        mips,
        tuple(v * 2**lvl for v in vs),
        off,
        boxes,
        vs,
        region if region != ref.roi else None,
        out.partial / OVERVIEW_PNG,
        title=f"{score} of {len(vols)} input{'s' if len(vols) > 1 else ''}, {strategy} boxes",
    )
    atomic_write_text(out.partial / SUMMARY_JSON, json.dumps(summary, indent=1, allow_nan=False) + "\n")
    out.commit()
    return SuggestResult(
        output,
        boxes,
        int(k),
        box,
        region,
        score,
        strategy,
        vs,
        off,
        volume,
        captured,
        levels,
        time.time() - t0,
        notes,
    )


def _assemble(
    results: dict[Shape3, dict[str, Any]], plan: BlockPlan, region: Roi, stride: Shape3, masked: bool
) -> CellGrid:
    """The region's :class:`CellGrid` from the per-block cell sums (uint8 units -> bits)."""
    shape = tuple(math.ceil(r / s) for r, s in zip(region.shape, stride))
    arrays = {
        name: np.zeros(shape, np.int64) for name in (("total", "sample", "sample_total") if masked else ("total",))
    }
    for index in plan.indices():
        b = plan.block(index)
        lo = [(o - r) // s for o, r, s in zip(b.roi.offset, region.offset, stride)]
        for name, a in arrays.items():
            part = np.asarray(results[index]["result"][name])
            a[tuple(slice(x, x + n) for x, n in zip(lo, part.shape))] = part
    if not masked:
        return CellGrid(region, stride, arrays["total"] / 255.0)
    return CellGrid(region, stride, arrays["total"] / 255.0, arrays["sample"], arrays["sample_total"] / 255.0)


def _assemble_projections(results: dict[Shape3, dict[str, Any]], plan: BlockPlan) -> dict[str, np.ndarray]:
    """Maximum projections along z, y and x (uint8) from the per-block ones."""
    z, y, x = plan.roi.shape
    mips = {"z": np.zeros((y, x), np.uint8), "y": np.zeros((z, x), np.uint8), "x": np.zeros((z, y), np.uint8)}
    for index in plan.indices():
        sz, sy, sx = plan.block(index).roi.slices()
        part = results[index]["result"]
        for name, sl in (("z", (sy, sx)), ("y", (sz, sx)), ("x", (sz, sy))):
            mips[name][sl] = np.maximum(mips[name][sl], np.asarray(part[name], np.uint8))
    return mips


def read_result(output: str | Path) -> SuggestResult:
    """The :class:`SuggestResult` of a finished output folder (from its ``summary.json``)."""
    path = Path(output)
    try:
        s = json.loads((path / SUMMARY_JSON).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path / SUMMARY_JSON}: {e}") from None
    total = float(s["region"]["uncertainty_bit_voxels"])
    bounds = [[int(x) for x in part.split(":")] for part in s["region"]["roi_vox"].split(",")]
    region = Roi([b for b, _ in bounds], [e - b for b, e in bounds])
    return SuggestResult(
        path,
        [Box.from_row(r, total) for r in s["boxes"]],
        int(s["boxes_requested"]),
        (int(s["box_vox"][0]), int(s["box_vox"][1]), int(s["box_vox"][2])),
        region,
        s["score"],
        s["strategy"],
        as_vec3(s["voxel_size_nm"], "voxel size"),
        as_vec3(s["offset_nm"], "offset"),
        float(s["total_volume_um3"]),
        s["captured_fraction"],
        int(s["uncertainty"]["pyramid_levels"]),
        0.0,
        list(s["notes"]),
    )


__all__ = [
    "BOX_COLUMNS",
    "MIN_SAMPLE_FRACTION",
    "NAPARI_COLUMNS",
    "SCORES",
    "STAGES",
    "STRATEGIES",
    "Box",
    "CellGrid",
    "Score",
    "Strategy",
    "SuggestResult",
    "as_probability",
    "binary_entropy",
    "box_voxels",
    "cell_sums",
    "check_same_grid",
    "default_stride",
    "napari_rows",
    "open_probability",
    "propose_boxes",
    "read_result",
    "select_boxes",
    "suggest",
    "uncertainty_map",
]
