"""Training data: ROIs held in memory and the seed's random block sampler.

Locations are drawn uniformly over all training ROIs (so each ROI is weighted
by its size). A block whose output region has less than ``min_foreground``
foreground is re-drawn with probability ``reject_probability``; one with at
most ``min_masked`` of its output inside the sample mask is re-drawn with
probability ``mask_reject_probability``. Everything outside an ROI is padding:
raw mid-grey, labels background, mask 1 (as in the seed), so neighbouring
validation data never leaks into training.

Shapes and offsets in voxels, axis order (z, y, x).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from organet.config import RoiSpec, SamplingConfig
from organet.errors import ConfigError
from organet.volumes import Roi, Volume, open_volume, parse_roi
from organet.volumes.foreground import foreground, prediction_kind
from organet.volumes.geometry import Shape3


@dataclass
class RoiData:
    """Raw, labels and mask of one ROI, in memory."""

    name: str
    raw: np.ndarray
    labels: np.ndarray  # uint8 0/1
    mask: np.ndarray | None  # uint8 0/1, None = everything valid
    raw_dtype: np.dtype
    voxel_size: tuple[float, float, float]
    roi: Roi  # position in its volume (voxels)

    @property
    def size(self) -> int:
        return int(self.labels.size)


def open_roi_volumes(spec: RoiSpec) -> tuple[Volume, Volume, Volume | None, Roi]:
    """Open raw/labels/mask of a spec, check they agree and resolve its ROI."""
    raw = open_volume(spec.raw, voxel_size=spec.voxel_size)
    labels = open_volume(spec.labels, voxel_size=spec.voxel_size or raw.voxel_size)
    mask = open_volume(spec.mask, voxel_size=spec.voxel_size or raw.voxel_size) if spec.mask else None
    for other, what in ((labels, "labels"), (mask, "mask")):
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
    return raw, labels, mask, roi


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


def load_roi(spec: RoiSpec, cache_max_gib: float, index: int) -> RoiData:
    raw, labels, mask, roi = open_roi_volumes(spec)
    nbytes = roi.size * (raw.dtype.itemsize + 1 + (1 if mask is not None else 0))
    if nbytes > cache_max_gib * 2**30:
        raise ConfigError(
            f"data.train.{index}: ROI {roi} needs {nbytes / 2**30:.1f} GiB in memory, more than "
            f"data.cache_max_gib={cache_max_gib}; split it into smaller ROIs or raise the limit"
        )
    name = spec.name or f"train{index}"
    lab = check_binary(labels.read(roi), f"{labels.path} (ROI {roi})")
    m = None
    if mask is not None:
        m = foreground(mask.read(roi), prediction_kind(mask)).astype(np.uint8)
    return RoiData(name, raw.read(roi), lab, m, raw.dtype, raw.voxel_size, roi)


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


@dataclass
class Sample:
    raw: np.ndarray  # upstream block, raw dtype (padding = mid-grey)
    labels: np.ndarray  # upstream block, uint8
    mask: np.ndarray  # upstream block, uint8
    roi_index: int
    out_start: Shape3  # position of the output block inside its ROI
    foreground: float  # fraction of fg in the output block
    tries: int  # draws needed (1 = first draw accepted)


class BlockSampler:
    """Draws upstream blocks (``upstream`` shape, centred on an output block of
    ``out_shape``) from ROIs with the seed's rejection rules."""

    def __init__(
        self,
        rois: Sequence[RoiData],
        out_shape: Sequence[int],
        upstream: Sequence[int],
        cfg: SamplingConfig,
        max_tries: int = 10_000,
    ) -> None:
        if not rois:
            raise ValueError("no training ROIs")
        self.rois = list(rois)
        self.out_shape = tuple(out_shape)
        self.upstream = tuple(upstream)
        self.cfg = cfg
        self.max_tries = max_tries
        sizes = np.array([r.size for r in self.rois], dtype=np.float64)
        self.weights = sizes / sizes.sum()

    def _mid_grey(self, r: RoiData) -> float:
        if r.raw_dtype.kind in "ui":
            info = np.iinfo(r.raw_dtype)
            return (int(info.min) + int(info.max) + 1) // 2
        return 0.5

    def _location(self, rng: np.random.Generator) -> tuple[int, Shape3]:
        i = int(rng.choice(len(self.rois), p=self.weights))
        start = []
        for n, o in zip(self.rois[i].labels.shape, self.out_shape):
            lo, hi = (0, n - o) if n >= o else (n - o, 0)
            start.append(int(rng.integers(lo, hi + 1)))
        return i, (start[0], start[1], start[2])

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
            up_start = tuple(s - (u - o) // 2 for s, u, o in zip(start, self.upstream, self.out_shape))
            raw = crop_padded(r.raw, up_start, self.upstream, self._mid_grey(r))
            labels = crop_padded(r.labels, up_start, self.upstream, 0)
            mask = (
                crop_padded(r.mask, up_start, self.upstream, 1)
                if r.mask is not None
                else np.ones(self.upstream, np.uint8)
            )
            return Sample(raw, labels, mask, i, start, fg, tries)
        raise ConfigError(
            f"no training block accepted in {self.max_tries} draws; check the sampling settings and masks"
        )
