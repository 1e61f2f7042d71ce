"""Contrast normalization of raw EM volumes: linear percentile rescale, histogram
equalization and 3-D CLAHE, computed blockwise in bounded memory.

All methods are exact blockwise: global statistics (the intensity histogram and, for
CLAHE, one clipped histogram per contextual tile) are gathered in one streaming pass
over the volume, after which every output voxel is a function of its own raw value
and those statistics. CLAHE reproduces :func:`skimage.exposure.equalize_adapthist`
on the whole volume exactly (same tile grid, reflect padding, clipping, bilinear
interpolation and final rescale); a test checks this on a small volume.

Arrays are (z, y, x); kernel sizes and block shapes are in voxels. The output is
uint8 (0-255), so the training default ``Normalization(method="dtype_range")`` maps
it to [-1, 1].
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from organet.volumes import Roi, Volume, VolumeError

Method = Literal["none", "linear", "histeq", "clahe"]
_NR_OF_GRAY = 2**14  # skimage's internal CLAHE grey range


class PreprocessParams(BaseModel):
    """Which contrast normalization to apply, with its parameters.

    ``low_percentile``/``high_percentile`` (0-100) for ``linear``; ``clip_limit``
    (normalized, 0.01-0.03 in the seed), ``kernel`` (contextual region, voxels, z y x)
    and ``nbins`` for ``clahe``. Stored in the output's metadata and compared by
    training and prediction.
    """

    model_config = ConfigDict(extra="forbid")

    method: Method = "none"
    low_percentile: float = Field(0.5, ge=0, le=100)
    high_percentile: float = Field(99.5, ge=0, le=100)
    clip_limit: float = Field(0.02, ge=0, le=1)
    kernel: tuple[int, int, int] = (128, 128, 128)
    nbins: int = Field(256, ge=2, le=_NR_OF_GRAY)

    @field_validator("kernel", mode="before")
    @classmethod
    def _kernel3(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = (int(v),) * 3
        return v

    @model_validator(mode="after")
    def _check(self) -> "PreprocessParams":
        if not self.high_percentile > self.low_percentile:
            raise ValueError(
                f"high_percentile ({self.high_percentile}) must be greater than low_percentile ({self.low_percentile})"
            )
        if any(k < 1 for k in self.kernel):
            raise ValueError(f"CLAHE kernel must be >= 1 voxel on every axis, got {self.kernel}")
        return self

    def record(self) -> dict[str, Any]:
        """The parameters that matter for ``method`` (what is stored and compared)."""
        keys = {
            "none": (),
            "linear": ("low_percentile", "high_percentile"),
            "histeq": (),
            "clahe": ("clip_limit", "kernel", "nbins"),
        }[self.method]
        d = self.model_dump()
        return {"method": self.method, **{k: (list(d[k]) if k == "kernel" else d[k]) for k in keys}}


# -- value domain ---------------------------------------------------------------------

def value_domain(dtype: np.dtype) -> int:
    """Number of distinct integer values the histograms use for ``dtype``.

    uint8/bool: 256; uint16: 65536; float data (assumed in [0, 1]) is quantized to
    uint16 like scikit-image does. Other types are refused.
    """
    dtype = np.dtype(dtype)
    if dtype == np.uint8 or dtype == np.bool_:
        return 256
    if dtype == np.uint16 or dtype.kind == "f":
        return 65536
    raise VolumeError(f"contrast normalization supports uint8, uint16 and float [0, 1] volumes, got {dtype}; "
                      "convert the volume first")


def to_index(block: np.ndarray) -> np.ndarray:
    """Raw block -> integer values in ``[0, value_domain)`` (uint8 or uint16)."""
    if block.dtype == np.bool_:
        return block.astype(np.uint8)
    if block.dtype.kind == "f":
        from skimage.util import img_as_uint

        return img_as_uint(np.clip(block, 0.0, 1.0))
    value_domain(block.dtype)
    return block


def _to_uint16_scale(values: np.ndarray, domain: int) -> np.ndarray:
    """skimage's ``img_as_uint`` of integer values of a given domain (uint8 * 257)."""
    v = values.astype(np.uint16)
    return v * np.uint16(257) if domain == 256 else v


# -- blocks ---------------------------------------------------------------------------

def iter_blocks(shape: Sequence[int], block: Sequence[int]) -> Iterator[Roi]:
    """Non-overlapping voxel ROIs of at most ``block`` covering ``shape`` (z, y, x)."""
    ranges = [range(0, int(s), int(b)) for s, b in zip(shape, block)]
    for start in itertools.product(*ranges):
        yield Roi(start, tuple(min(b, s - o) for o, b, s in zip(start, block, shape)))


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    """NumPy ``mode='reflect'`` source index of (possibly out-of-range) indices."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m < n, m, period - m)


def _read_reflected(vol: Volume, begin: Sequence[int], end: Sequence[int]) -> np.ndarray:
    """Box [begin, end) of ``vol`` (voxels) with reflect padding outside the volume."""
    idx = [_reflect(np.arange(b, e), n) for b, e, n in zip(begin, end, vol.shape)]
    lo = [int(i.min()) for i in idx]
    hi = [int(i.max()) + 1 for i in idx]
    data = vol.read(Roi(lo, tuple(h - l for l, h in zip(lo, hi))))
    return data[np.ix_(*(i - l for i, l in zip(idx, lo)))]


# -- statistics (one streaming pass) ------------------------------------------------

class IntensityStats:
    """Global histogram of a volume (values in its domain) and, for CLAHE, per-tile histograms.

    ``tile_hist`` has shape (tiles_z, tiles_y, tiles_x, domain): histograms of the
    contextual tiles ``[i*k, (i+1)*k)`` of the reflect-padded volume (voxels), the
    grid scikit-image uses.
    """

    def __init__(self, hist: np.ndarray, tile_hist: np.ndarray | None, kernel: tuple[int, int, int] | None) -> None:
        self.hist, self.tile_hist, self.kernel = hist, tile_hist, kernel

    @property
    def count(self) -> int:
        return int(self.hist.sum())

    @property
    def vmin(self) -> int:
        return int(np.flatnonzero(self.hist)[0])

    @property
    def vmax(self) -> int:
        return int(np.flatnonzero(self.hist)[-1])

    def percentile(self, q: float) -> float:
        """Value at percentile ``q`` (0-100) of the volume, NumPy's 'linear' definition."""
        n = self.count
        pos = q / 100.0 * (n - 1)
        cum = np.cumsum(self.hist)
        lo = int(np.searchsorted(cum, math.floor(pos), side="right"))
        hi = int(np.searchsorted(cum, math.ceil(pos), side="right"))
        return float(lo + (hi - lo) * (pos - math.floor(pos)))


def gather_stats(
    vol: Volume,
    kernel: Sequence[int] | None = None,
    block: Sequence[int] = (64, 256, 256),
    progress: Callable[[int], None] | None = None,
) -> IntensityStats:
    """One streaming pass: the global histogram, plus CLAHE tile histograms if ``kernel``.

    With ``kernel`` the volume is read tile by tile (each tile once, reflect-padded
    at the far border), otherwise in ``block``-sized pieces. Memory: one tile or block.
    """
    domain = value_domain(vol.dtype)
    hist = np.zeros(domain, np.int64)
    if kernel is None:
        for roi in iter_blocks(vol.shape, block):
            hist += np.bincount(to_index(vol.read(roi)).ravel(), minlength=domain)
            if progress:
                progress(1)
        return IntensityStats(hist, None, None)
    k = tuple(int(v) for v in kernel)
    n_tiles = tuple(math.ceil(s / kk) for s, kk in zip(vol.shape, k))
    tile_hist = np.zeros((*n_tiles, domain), np.int64)
    for t in itertools.product(*(range(n) for n in n_tiles)):
        begin = [i * kk for i, kk in zip(t, k)]
        end = [b + kk for b, kk in zip(begin, k)]
        data = to_index(_read_reflected(vol, begin, end))
        tile_hist[t] = np.bincount(data.ravel(), minlength=domain)
        inside = tuple(slice(0, max(0, min(e, s) - b)) for b, e, s in zip(begin, end, vol.shape))
        hist += np.bincount(data[inside].ravel(), minlength=domain)
        if progress:
            progress(1)
    return IntensityStats(hist, tile_hist, k)


# -- per-method transforms -------------------------------------------------------------

class Transform:
    """A blockwise transform ``raw block -> float64 in [0, 1]``; exact for any block split."""

    def __init__(self, params: PreprocessParams, stats: IntensityStats, dtype: np.dtype, shape: Sequence[int]) -> None:
        self.params, self.stats, self.dtype = params, stats, np.dtype(dtype)
        self.shape = tuple(int(s) for s in shape)
        self.domain = value_domain(self.dtype)
        m = params.method
        values = np.arange(self.domain, dtype=np.float64)
        if m == "none":
            hi = 1.0 if self.domain == 256 and self.dtype == np.bool_ else float(self.domain - 1)
            self.lut = np.clip(values / hi, 0.0, 1.0)
        elif m == "linear":
            lo, hi = stats.percentile(params.low_percentile), stats.percentile(params.high_percentile)
            if not hi > lo:
                raise VolumeError(
                    f"linear rescale: percentiles {params.low_percentile}/{params.high_percentile} give the same value "
                    f"{lo:g} (the volume is nearly constant); widen the percentiles"
                )
            self.lut = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
            self.bounds = (lo, hi)
        elif m == "histeq":
            cdf = np.cumsum(stats.hist).astype(np.float64) / stats.count
            self.lut = cdf
        else:
            self._init_clahe()

    # CLAHE (scikit-image's algorithm, reproduced blockwise) ------------------------------
    def _init_clahe(self) -> None:
        from skimage.exposure import rescale_intensity
        from skimage.exposure._adapthist import clip_histogram, map_histogram

        p, st = self.params, self.stats
        assert st.tile_hist is not None and st.kernel is not None
        k = st.kernel
        # per raw value: skimage's img_as_uint + rescale to [0, 2**14) over the global min/max, then binning
        imin = float(_to_uint16_scale(np.array([st.vmin]), self.domain)[0])
        imax = float(_to_uint16_scale(np.array([st.vmax]), self.domain)[0])
        vals16 = _to_uint16_scale(np.arange(self.domain), self.domain)
        grey = np.round(rescale_intensity(vals16, in_range=(imin, imax), out_range=(0, _NR_OF_GRAY - 1)))
        grey = grey.astype(np.min_scalar_type(_NR_OF_GRAY))
        bin_size = 1 + _NR_OF_GRAY // p.nbins
        self.bins = (grey // bin_size).astype(np.intp)  # raw value -> CLAHE bin
        n_bins = max(p.nbins, int(self.bins.max()) + 1)
        th = st.tile_hist.reshape(-1, self.domain)
        hist = np.zeros((th.shape[0], n_bins), np.int64)
        for b in np.unique(self.bins):
            hist[:, b] = th[:, self.bins == b].sum(axis=1)
        kernel_elements = math.prod(k)
        clim = int(np.clip(p.clip_limit * kernel_elements, 1, None)) if p.clip_limit > 0.0 else kernel_elements
        hist = np.apply_along_axis(clip_histogram, -1, hist, clip_limit=clim)
        maps = map_histogram(hist, 0, _NR_OF_GRAY - 1, kernel_elements)
        self.maps = maps.reshape(st.tile_hist.shape[:3] + (-1,))
        self.kernel = k
        self._rminmax: tuple[float, float] | None = None

    def _clahe_raw(self, block: np.ndarray, roi: Roi) -> np.ndarray:
        """scikit-image's ``_clahe`` output (uint16, before the final rescale) for a block."""
        k, maps = self.kernel, self.maps
        nt = maps.shape[:3]
        b = self.bins[to_index(block)]
        lo_idx, weights = [], []
        for axis in range(3):
            pos = np.arange(roi.offset[axis], roi.end[axis]) + k[axis] // 2  # padded coordinate
            j, c = pos // k[axis], pos % k[axis]
            lo_idx.append((np.clip(j - 1, 0, nt[axis] - 1), np.clip(j, 0, nt[axis] - 1)))
            w = np.arange(k[axis]) / k[axis]
            weights.append((1 - w[c], w[c]))
        result = np.zeros(block.shape, np.float32)
        for edge in itertools.product((0, 1), repeat=3):
            iz, iy, ix = (lo_idx[a][edge[a]] for a in range(3))
            mapped = maps[iz[:, None, None], iy[None, :, None], ix[None, None, :], b]
            wz, wy, wx = (weights[a][edge[a]] for a in range(3))
            coeff = (wx[None, None, :] * wy[None, :, None]) * wz[:, None, None]
            result += (mapped * coeff).astype(np.float32)
        return result.astype(np.uint16)

    def prepare(self, vol: Volume, block: Sequence[int], progress: Callable[[int], None] | None = None) -> None:
        """CLAHE only: a streaming pass for the output min/max (skimage's final rescale)."""
        if self.params.method != "clahe":
            return
        lo, hi = np.inf, -np.inf
        for roi in iter_blocks(vol.shape, block):
            r = self._clahe_raw(vol.read(roi), roi)
            lo, hi = min(lo, float(r.min())), max(hi, float(r.max()))
            if progress:
                progress(1)
        self._rminmax = (lo, hi)

    def __call__(self, block: np.ndarray, roi: Roi) -> np.ndarray:
        """float64 in [0, 1] for a raw block at voxel ROI ``roi`` of the volume."""
        if self.params.method != "clahe":
            return self.lut[to_index(block)]
        from skimage.exposure import rescale_intensity

        if self._rminmax is None:
            raise RuntimeError("call prepare() before transforming blocks with CLAHE")
        # skimage rescales in the input's float type (float32 for float32/float16 input)
        r = self._clahe_raw(block, roi).astype(np.float32 if self.dtype.kind == "f" and self.dtype.itemsize <= 4 else np.float64)
        lo, hi = self._rminmax
        if hi == lo:
            return np.clip(r, 0.0, 1.0)
        return rescale_intensity(r, in_range=(lo, hi), out_range=(0.0, 1.0))


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 0-255 (rounded)."""
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def normalize_array(raw: np.ndarray, params: PreprocessParams, block: Sequence[int] | None = None) -> np.ndarray:
    """Normalize an in-memory (z, y, x) array; float64 in [0, 1]. ``block`` (voxels) to compute blockwise."""
    vol = Volume(raw)
    block = tuple(block) if block is not None else vol.shape
    stats = gather_stats(vol, params.kernel if params.method == "clahe" else None, block)
    tf = Transform(params, stats, vol.dtype, vol.shape)
    tf.prepare(vol, block)
    out = np.empty(vol.shape, np.float64)
    for roi in iter_blocks(vol.shape, block):
        out[roi.slices()] = tf(vol.read(roi), roi)
    return out


def preprocess_volume(
    src: Volume,
    dst: str,
    params: PreprocessParams,
    block: Sequence[int] = (64, 256, 256),
    chunks: Sequence[int] = (64, 64, 64),
    overwrite: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> Volume:
    """Normalize ``src`` blockwise into a uint8 OME-Zarr image ``dst`` (written atomically).

    ``dst`` may be a new container (``raw_clahe.zarr``) or a path inside an existing one
    (``raw.zarr/clahe``). The output keeps the voxel size and offset (nm) of ``src`` and
    records ``{"preprocess": params.record(), ...}`` in its organet metadata, which
    training and prediction compare (:func:`organet.preprocess.check_preprocess`).
    ``block``: voxels processed at a time (z, y, x); memory is a few blocks, or one
    CLAHE tile (``kernel``), whichever is larger.
    """
    from organet.volumes import write_ome_zarr

    if src.attrs.get("preprocess") not in (None, {"method": "none"}):
        raise VolumeError(
            f"{src.path} is already normalized ({src.attrs['preprocess']}); normalize the raw volume instead"
        )
    block = tuple(int(b) for b in block)
    if any(b < 1 for b in block):
        raise VolumeError(f"block must be >= 1 voxel on every axis, got {block}")
    n_blocks = math.prod(math.ceil(s / b) for s, b in zip(src.shape, block))

    def tick(stage: str, total: int) -> Callable[[int], None] | None:
        if progress is None:
            return None
        return lambda n: progress(stage, n, total)

    kernel = params.kernel if params.method == "clahe" else None
    n_stat = math.prod(math.ceil(s / k) for s, k in zip(src.shape, kernel)) if kernel else n_blocks
    stats = gather_stats(src, kernel, block, tick("statistics", n_stat))
    tf = Transform(params, stats, src.dtype, src.shape)
    tf.prepare(src, block, tick("clahe range", n_blocks))
    record = params.record()
    extra: dict[str, Any] = {"source": src.path, "source_dtype": str(src.dtype), "output": "uint8 0-255"}
    if params.method == "linear":
        extra["linear_bounds"] = list(tf.bounds)
    with write_ome_zarr(dst, overwrite=overwrite) as w:
        out = w.create_image(None, src.shape, np.uint8, src.voxel_size, src.offset, chunks,
                             attrs={"preprocess": record, "preprocess_info": extra})
        step = tick("write", n_blocks)
        for roi in iter_blocks(src.shape, block):
            out.write(roi, to_uint8(tf(src.read(roi), roi)))
            if step:
                step(1)
    return out
