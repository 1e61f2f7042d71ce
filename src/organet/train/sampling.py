"""Training data: ROIs held in memory and the seed's random block sampler.

Locations are drawn uniformly over all training ROIs (so each ROI is weighted
by its size), or per group of ROIs with given shares (:func:`roi_weights`; fine-tuning
mixes new and original data this way). An output block lies inside its ROI where the ROI is at least as
large as the block, and covers the ROI where it is smaller (per axis). A block
whose output region has less than ``min_foreground`` foreground is re-drawn
with probability ``reject_probability``; one with at most ``min_masked`` of its
output inside the sample mask is re-drawn with probability
``mask_reject_probability`` (voxels outside the ROI count as inside the sample
mask here, so blocks of thin ROIs are not rejected, as in incasem).

What a block holds outside its ROI depends on ``sampling.context``:

``volume`` (default, incasem's "baseline_with_context" pipeline)
    Raw is the real volume: each ROI's raw is read grown by :func:`raw_context`
    voxels per side (every voxel any upstream block drawn from it can reach),
    clipped to the volume; only outside the volume is raw padded, with
    mid-grey (:func:`mid_grey`, the middle of the dtype range: incasem pads
    with 0.5 on its [0, 1] scale, ``PadDownstreamOfRandomLocation(RAW,
    value=0.5)``). Labels and the sample mask are read for the ROI only; outside
    it labels are 0 and the loss mask is 0, so such voxels have loss weight 0
    (:func:`organet.train.loss.class_weights`). incasem pads its loss mask with
    1 instead (``PadDownstreamOfRandomLocation(MASK, value=1)``), which trains
    the unannotated surroundings of a small ROI as background; we keep its
    value 1 only for the rejection rule above.
``pad`` (the behaviour before this setting existed; to reproduce old runs)
    Everything outside an ROI is padding: raw mid-grey, labels background,
    mask 1.

incasem grows the raw ROI by the network context ``(input - output) / 2`` and
places its augmentation-enlarged request inside that box (padding grey where
the box is too small); we grow by the upstream reach, so rotated and
elastically deformed inputs see real data wherever the volume has it, and keep
the location rule above (incasem also keeps the output inside the ROI, but
additionally pulls blocks away from the volume border).

Sources of another voxel size than the model's are read through resampled views
(:func:`open_roi_volumes`): everything here then works in voxels of the model's grid.

Shapes and offsets in voxels, axis order (z, y, x).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from organet.config import RoiSpec, SamplingConfig
from organet.errors import ConfigError
from organet.volumes import Roi, Volume, open_volume, parse_roi
from organet.volumes.foreground import foreground, prediction_kind
from organet.volumes.geometry import Shape3, check_same_voxel_size, fmt_vec
from organet.volumes.resample import GridMap, ResampledVolume, ResampleMode


@dataclass
class RoiData:
    """Raw, labels and mask of one ROI, in memory.

    ``raw`` covers ``raw_roi`` (the ROI grown by the raw context and clipped to
    the volume; None = ``roi``), ``labels`` and ``mask`` cover ``roi``; all
    boxes in voxels of the volume, whose extent is ``volume_roi`` (None = ``roi``,
    i.e. the ROI is the whole volume).
    """

    name: str
    raw: np.ndarray
    labels: np.ndarray  # uint8 0/1
    mask: np.ndarray | None  # uint8 0/1, None = everything valid
    raw_dtype: np.dtype
    voxel_size: tuple[float, float, float]
    roi: Roi  # position in its volume (voxels)
    raw_roi: Roi | None = None
    volume_roi: Roi | None = None
    resampling: dict[str, Any] | None = None  # how it was resampled to the model's voxel size
    group: str = "train"  # sampling group (data.group_weights)

    @property
    def size(self) -> int:
        return int(self.labels.size)

    @property
    def raw_box(self) -> Roi:
        """The box ``raw`` covers (volume voxels)."""
        return self.raw_roi if self.raw_roi is not None else self.roi

    @property
    def volume_box(self) -> Roi:
        """The extent of the volume (voxels)."""
        return self.volume_roi if self.volume_roi is not None else self.roi

    def raw_at(self, start: Sequence[int]) -> Shape3:
        """Index into ``raw`` of the voxel at ``start`` relative to the ROI's first voxel."""
        a, b = self.roi.offset, self.raw_box.offset
        return (start[0] + a[0] - b[0], start[1] + a[1] - b[1], start[2] + a[2] - b[2])


def raw_context(roi_shape: Sequence[int], out_shape: Sequence[int], upstream: Sequence[int]) -> Shape3:
    """Voxels per side (z, y, x) that upstream blocks drawn from an ROI of ``roi_shape`` reach beyond it.

    An upstream block reaches ``ceil((upstream - out) / 2)`` beyond its output
    block, and an output block reaches ``max(0, out - roi)`` beyond the ROI
    (it covers an ROI smaller than itself).
    """
    c = [math.ceil((u - o) / 2) + max(0, o - n) for n, o, u in zip(roi_shape, out_shape, upstream)]
    return c[0], c[1], c[2]


def open_roi_volumes(
    spec: RoiSpec,
    voxel_size: Sequence[float] | None = None,
    raw_mode: ResampleMode = "auto",
    label_mode: ResampleMode = "majority",
) -> tuple[Volume | ResampledVolume, Volume | ResampledVolume, Volume | ResampledVolume | None, Roi]:
    """Open raw/labels/mask of a spec, check they agree and resolve its ROI.

    With ``voxel_size`` (nm, z, y, x) other than the data's, raw, labels and mask are
    returned as :class:`~organet.volumes.resample.ResampledVolume` views at that voxel
    size (raw with ``raw_mode``, labels with ``label_mode``, the sample mask with
    ``nearest``, so the foreground rule reads it as stored) and the ROI as the voxels of
    the new grid that lie wholly inside it (so resampled labels are those of the annotated
    ROI: a voxel's majority is decided inside it). The source labels of the ROI are checked
    to be binary first.
    """
    raw = open_volume(spec.raw, voxel_size=spec.voxel_size)
    # labels and mask without voxel-size metadata (plain TIFF) take the raw's; with their own
    # they must agree with it: a silent override would train on misaligned labels
    labels = open_volume(spec.labels, spec.voxel_size, default_voxel_size=raw.voxel_size)
    mask = open_volume(spec.mask, spec.voxel_size, default_voxel_size=raw.voxel_size) if spec.mask else None
    for other, what in ((labels, "labels"), (mask, "mask")):
        if other is not None:
            check_same_voxel_size(
                other.voxel_size,
                raw.voxel_size,
                f"{what} {other.path}",
                f"raw {raw.path}",
                "the labels and mask of an ROI must be on its raw's voxel grid: resample them (organet convert "
                "--downsample), or set the ROI's voxel_size: [z, y, x] if the file metadata is wrong",
            )
        if other is not None and tuple(other.shape) != tuple(raw.shape):
            raise ConfigError(
                f"{what} {other.path} has shape {tuple(other.shape)} but raw {raw.path} has {tuple(raw.shape)}"
            )
    if spec.roi_vox is not None:
        roi = parse_roi(spec.roi_vox, "vox", raw)
    elif spec.roi_nm is not None:
        roi = parse_roi(spec.roi_nm, "nm", raw)
    else:
        roi = raw.roi
    if voxel_size is None or GridMap.between(raw, voxel_size).identity:
        return raw, labels, mask, roi
    check_binary(labels.read(roi), f"{labels.path} (ROI {roi})")
    gmap = GridMap.between(raw, voxel_size)
    lo = [math.ceil(a / k - 1e-6) for a, k in zip(roi.offset, gmap.scale)]
    hi = [min(n, math.floor(b / k + 1e-6)) for b, k, n in zip(roi.end, gmap.scale, gmap.shape)]
    if any(b <= a for a, b in zip(lo, hi)):
        raise ConfigError(
            f"ROI {roi} of {raw.path} (voxel size {fmt_vec(raw.voxel_size)} nm) holds no whole voxel of the "
            f"model's grid (voxel size {fmt_vec(gmap.voxel_size)} nm); annotate a larger ROI"
        )
    views = (
        ResampledVolume(raw, voxel_size, raw_mode),
        ResampledVolume(labels, voxel_size, label_mode),
        ResampledVolume(mask, voxel_size, "nearest") if mask is not None else None,  # keeps values and kind
    )
    return (*views, Roi(lo, [b - a for a, b in zip(lo, hi)]))


def resampling_record(raw: Any, roi: Roi, raw_mode: ResampleMode, label_mode: str) -> dict[str, Any] | None:
    """What a run records about an ROI read through resampled views (None: read as stored)."""
    if not isinstance(raw, ResampledVolume):
        return None
    return {
        **raw.map.describe(raw_mode),
        "labels": label_mode,
        "roi_vox": str(roi),
    }


def check_binary(labels: np.ndarray, where: str) -> np.ndarray:
    """``labels`` as uint8 0/1; raises ConfigError if it holds other values."""
    values = np.unique(labels)
    if not set(values.tolist()) <= {0, 1}:
        shown = values[:8].tolist()
        raise ConfigError(
            f"labels in {where} are not binary: values {shown}{' ...' if len(values) > 8 else ''} "
            "(expected 0 = background, 1 = organelle)"
        )
    return labels.astype(np.uint8, copy=False)


def load_roi(
    spec: RoiSpec,
    cache_max_gib: float,
    index: int,
    out_shape: Sequence[int] | None = None,
    upstream: Sequence[int] | None = None,
    voxel_size: Sequence[float] | None = None,
    raw_mode: ResampleMode = "auto",
    label_mode: ResampleMode = "majority",
) -> RoiData:
    """Read one training ROI into memory, at ``voxel_size`` (nm) if given (resampled as
    :func:`open_roi_volumes` says; boxes are then voxels of that grid).

    With ``out_shape`` and ``upstream`` (the sampler's output and upstream block
    shapes, voxels) raw is read for the ROI grown by :func:`raw_context`,
    clipped to the volume (``sampling.context: volume``); without them for the
    ROI only (``pad``). Labels and mask are read for the ROI. Raises ConfigError
    when raw (grown box), labels and mask together need more than
    ``cache_max_gib`` GiB.
    """
    if (out_shape is None) != (upstream is None):
        raise ValueError("load_roi: give both out_shape and upstream, or neither")
    raw, labels, mask, roi = open_roi_volumes(spec, voxel_size, raw_mode, label_mode)
    context: Shape3 = (0, 0, 0)
    if out_shape is not None and upstream is not None:
        context = raw_context(roi.shape, out_shape, upstream)
    raw_roi = roi.grow(context).intersect(raw.roi)
    nbytes = raw_roi.size * raw.dtype.itemsize + roi.size * (1 + (1 if mask is not None else 0))
    if nbytes > cache_max_gib * 2**30:
        grown = f" with raw context {list(context)} voxels per side (raw box {raw_roi})" if any(context) else ""
        raise ConfigError(
            f"data.train.{index}: ROI {roi}{grown} needs {nbytes / 2**30:.3g} GiB in memory, more than "
            f"data.cache_max_gib={cache_max_gib}; split it into smaller ROIs or raise the limit"
        )
    name = spec.name or f"train{index}"
    lab = check_binary(labels.read(roi), f"{labels.path} (ROI {roi})")
    m = None
    if mask is not None:
        m = foreground(mask.read(roi), prediction_kind(mask)).astype(np.uint8)
    return RoiData(
        name,
        raw.read(raw_roi),
        lab,
        m,
        raw.dtype,
        raw.voxel_size,
        roi,
        raw_roi,
        raw.roi,
        resampling_record(raw, roi, raw_mode, label_mode),
        spec.group,
    )


def crop_padded(array: np.ndarray, start: Sequence[int], shape: Sequence[int], fill: float) -> np.ndarray:
    """``array[start:start+shape]`` with ``fill`` where the box leaves the array."""
    out = np.full(tuple(shape), fill, dtype=array.dtype)
    src, dst = [], []
    for a, s, n in zip(start, shape, array.shape):
        lo, hi = max(a, 0), min(a + s, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - a, hi - a))
    out[tuple(dst)] = array[tuple(src)]
    return out


def mid_grey(dtype: np.dtype) -> float:
    """Raw padding value: the middle of an integer dtype's range (128 for uint8), 0.5 for float data."""
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return (int(info.min) + int(info.max) + 1) // 2
    return 0.5


@dataclass
class Sample:
    """One upstream block (z, y, x) centred on an output block.

    ``mask`` is the loss mask: 1 where the voxel counts in the loss; with
    ``sampling.context: volume`` 0 outside the ROI and outside the sample mask,
    with ``pad`` 1 outside the ROI.
    """

    raw: np.ndarray  # upstream block, raw dtype (padding = mid-grey)
    labels: np.ndarray  # upstream block, uint8
    mask: np.ndarray  # upstream block, uint8
    roi_index: int
    out_start: Shape3  # position of the output block inside its ROI
    foreground: float  # fraction of fg in the output block
    tries: int  # draws needed (1 = first draw accepted)


def roi_weights(rois: Sequence[RoiData], group_weights: dict[str, float] | None = None) -> np.ndarray:
    """Probability of drawing each ROI: its size over all ROIs, or with ``group_weights``
    the weight of its group times its size over the group's."""
    sizes = np.array([r.size for r in rois], dtype=np.float64)
    if not group_weights:
        return sizes / sizes.sum()
    totals: dict[str, float] = {}
    for r, n in zip(rois, sizes):
        totals[r.group] = totals.get(r.group, 0.0) + n
    w = np.array([group_weights[r.group] * n / totals[r.group] for r, n in zip(rois, sizes)])
    return w / w.sum()


class BlockSampler:
    """Draws upstream blocks (``upstream`` shape, centred on an output block of
    ``out_shape``) from ROIs with the seed's rejection rules; ``cfg.context``
    says what lies outside an ROI (module docstring). With ``context: volume``
    each ROI's raw must cover its :func:`raw_context` (clipped to the volume),
    as :func:`load_roi` reads it when given the same shapes."""

    def __init__(
        self,
        rois: Sequence[RoiData],
        out_shape: Sequence[int],
        upstream: Sequence[int],
        cfg: SamplingConfig,
        max_tries: int = 10_000,
        group_weights: dict[str, float] | None = None,
    ) -> None:
        if not rois:
            raise ValueError("no training ROIs")
        self.rois = list(rois)
        self.out_shape = tuple(out_shape)
        self.upstream = tuple(upstream)
        self.cfg = cfg
        self.max_tries = max_tries
        self.weights = roi_weights(self.rois, group_weights)
        if cfg.context == "volume":
            for r in self.rois:
                need = r.roi.grow(raw_context(r.roi.shape, self.out_shape, self.upstream)).intersect(r.volume_box)
                if not r.raw_box.contains(need):
                    raise ValueError(
                        f"training ROI {r.name}: raw is held for {r.raw_box} but upstream blocks {self.upstream} "
                        f"around outputs {self.out_shape} reach {need}; load it with load_roi(..., out_shape, "
                        "upstream) or sample with context 'pad'"
                    )

    def _location(self, rng: np.random.Generator) -> tuple[int, Shape3]:
        i = int(rng.choice(len(self.rois), p=self.weights))
        start = []
        for n, o in zip(self.rois[i].labels.shape, self.out_shape):
            lo, hi = (0, n - o) if n >= o else (n - o, 0)
            start.append(int(rng.integers(lo, hi + 1)))
        return i, (start[0], start[1], start[2])

    def _block(self, r: RoiData, up_start: Shape3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw, labels and loss mask of the upstream block at ``up_start`` (relative to the ROI)."""
        grey = mid_grey(r.raw_dtype)
        labels = crop_padded(r.labels, up_start, self.upstream, 0)
        if self.cfg.context == "volume":
            raw = crop_padded(r.raw, r.raw_at(up_start), self.upstream, grey)
            valid = r.mask if r.mask is not None else np.broadcast_to(np.uint8(1), r.labels.shape)
            return raw, labels, crop_padded(valid, up_start, self.upstream, 0)
        in_roi = tuple(slice(a, a + n) for a, n in zip(r.raw_at((0, 0, 0)), r.roi.shape))
        raw = crop_padded(r.raw[in_roi], up_start, self.upstream, grey)
        if r.mask is None:
            return raw, labels, np.ones(self.upstream, np.uint8)
        return raw, labels, crop_padded(r.mask, up_start, self.upstream, 1)

    def draw(self, rng: np.random.Generator) -> Sample:
        c = self.cfg
        for tries in range(1, self.max_tries + 1):
            i, start = self._location(rng)
            r = self.rois[i]
            lab = crop_padded(r.labels, start, self.out_shape, 0)
            fg = float(lab.mean())
            if fg < c.min_foreground and rng.random() < c.reject_probability:
                continue
            if r.mask is not None:
                inside = float(crop_padded(r.mask, start, self.out_shape, 1).mean())
                if inside <= c.min_masked and rng.random() < c.mask_reject_probability:
                    continue
            u = [s - (u - o) // 2 for s, u, o in zip(start, self.upstream, self.out_shape)]
            raw, labels, mask = self._block(r, (u[0], u[1], u[2]))
            return Sample(raw, labels, mask, i, start, fg, tries)
        raise ConfigError(
            f"no training block accepted in {self.max_tries} draws; check the sampling settings and masks"
        )
