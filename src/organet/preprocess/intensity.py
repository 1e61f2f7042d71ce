"""Contrast normalization of raw EM volumes: linear percentile rescale, histogram
equalization, 3-D CLAHE and incasem's blockwise CLAHE, computed blockwise in bounded memory.

All methods are exact blockwise: global statistics (the intensity histogram and, for
CLAHE, one histogram per contextual tile) are gathered in one streaming pass over the
volume, after which every output voxel is a function of its own raw value and those
statistics. CLAHE reproduces :func:`skimage.exposure.equalize_adapthist` on the whole
volume exactly (same tile grid, reflect padding, clipping, bilinear interpolation and
final rescale); a test checks this on a small volume.

:func:`preprocess_volume` runs its passes on :func:`organet.blockwise.run_blocks`, in
this process or on a Dask client through the same code (same bytes):

* ``"statistics"``: one histogram per block (linear, histeq) or per CLAHE contextual
  tile (the blocks of that pass are the tiles), summed in block order;
* ``"clahe range"`` (CLAHE only): the minimum and maximum before skimage's final rescale;
* ``"write"``: the uint8 output, block by block.

``clahe-incasem`` (:mod:`organet.preprocess.clahe_incasem`) has no statistics: incasem
equalizes each of its write blocks on its own, so its only pass is ``"write"``, on organet
blocks made of whole write blocks when the chunks allow it.

It is resumable: the data lives in ``DST.partial`` and the finished blocks of every pass
(with their statistics) in the ledger ``DST.progress``; rerunning the same call resumes
and gives the same bytes; ``DST`` appears (by rename) only when complete.

Arrays are (z, y, x); kernel sizes and block shapes are in voxels. The output is
uint8 (0-255), so the training default ``Normalization(method="dtype_range")`` maps
it to [-1, 1].
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import zarr
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from organet.blockwise import run_blocks
from organet.blockwise.output import ResumableOutput, single_image, volume_identity, write_block
from organet.errors import VolumeError
from organet.progress import ProgressFn
from organet.volumes.blocks import Block, plan_blocks
from organet.volumes.geometry import Shape3, as_int3
from organet.volumes.ome_zarr import set_levels
from organet.volumes.readers import open_volume
from organet.volumes.roi import Roi
from organet.volumes.volume import Volume

if TYPE_CHECKING:  # pragma: no cover
    from organet.blockwise import Ledger

Method = Literal["none", "linear", "histeq", "clahe", "clahe-incasem"]
_NR_OF_GRAY = 2**14  # skimage's internal CLAHE grey range
STAGES = ("statistics", "clahe range", "write")
"""The passes of :func:`preprocess_volume` (ledger sections and progress labels)."""


class PreprocessParams(BaseModel):
    """Which contrast normalization to apply, with its parameters.

    ``low_percentile``/``high_percentile`` (0-100) for ``linear``; ``clip_limit``
    (normalized, 0.01-0.03 in the seed), ``kernel`` (contextual region, voxels, z y x)
    and ``nbins`` for ``clahe`` and ``clahe-incasem``; ``block`` (voxels, z y x) for
    ``clahe-incasem`` only: incasem's write block (its ``chunk_shape``), each computed
    on its own (:mod:`organet.preprocess.clahe_incasem`; the kernel must be even there).
    :meth:`record` (stored in the output's metadata) is compared by training and prediction.
    """

    model_config = ConfigDict(extra="forbid")

    method: Method = "none"
    low_percentile: float = Field(0.5, ge=0, le=100)
    high_percentile: float = Field(99.5, ge=0, le=100)
    clip_limit: float = Field(0.02, ge=0, le=1)
    kernel: tuple[int, int, int] = (128, 128, 128)
    nbins: int = Field(256, ge=2, le=_NR_OF_GRAY)
    block: tuple[int, int, int] = (128, 128, 128)

    @field_validator("kernel", "block", mode="before")
    @classmethod
    def _kernel3(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = (int(v),) * 3
        return v

    @model_validator(mode="after")
    def _check(self) -> PreprocessParams:
        # pydantic turns ValueError into a ValidationError naming the field
        if not self.high_percentile > self.low_percentile:
            raise ValueError(
                f"high_percentile ({self.high_percentile}) must be greater than low_percentile ({self.low_percentile})"
            )
        if any(k < 1 for k in self.kernel):
            raise ValueError(f"CLAHE kernel must be >= 1 voxel on every axis, got {self.kernel}")
        if any(b < 1 for b in self.block):
            raise ValueError(f"block must be >= 1 voxel on every axis, got {self.block}")
        if self.method == "clahe-incasem" and any(k % 2 for k in self.kernel):
            # incasem's context (voxel_size * kernel + 1) // 2 nm is whole voxels only for even kernels
            raise ValueError(f"clahe-incasem needs an even kernel on every axis, got {self.kernel}")
        return self

    def record(self) -> dict[str, Any]:
        """The parameters that matter for ``method`` (what is stored and compared)."""
        keys = {
            "none": (),
            "linear": ("low_percentile", "high_percentile"),
            "histeq": (),
            "clahe": ("clip_limit", "kernel", "nbins"),
            "clahe-incasem": ("clip_limit", "kernel", "nbins", "block"),
        }[self.method]
        d = self.model_dump()
        return {"method": self.method, **{k: (list(d[k]) if k in ("kernel", "block") else d[k]) for k in keys}}


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
    raise VolumeError(
        f"contrast normalization supports uint8, uint16 and float [0, 1] volumes, got {dtype}; convert the volume first"
    )


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
    data = vol.read(Roi(as_int3(lo, "box begin"), as_int3([b - a for a, b in zip(lo, hi)], "box shape")))
    return data[np.ix_(*(i - a for i, a in zip(idx, lo)))]


def _histogram(values: np.ndarray, domain: int) -> np.ndarray:
    return np.bincount(values.ravel(), minlength=domain).astype(np.int64, copy=False)


def pack_histogram(hist: np.ndarray) -> dict[str, np.ndarray]:
    """A histogram as its non-zero bins and counts in the smallest types (a compact block
    result for the ledger); :func:`unpack_histogram` inverts it."""
    nz = np.flatnonzero(hist)
    return {
        "values": nz.astype(np.uint8 if len(hist) <= 256 else np.uint16),
        "counts": hist[nz].astype(np.min_scalar_type(int(hist.max(initial=0)))),
    }


def unpack_histogram(packed: dict[str, Any], domain: int) -> np.ndarray:
    """The int64 histogram of ``domain`` bins of :func:`pack_histogram`'s result."""
    hist = np.zeros(domain, np.int64)
    hist[np.asarray(packed["values"], np.intp)] = packed["counts"]
    return hist


# -- the CLAHE core (scikit-image's arithmetic, shared with clahe-incasem) -------------


def clahe_maps(hist: np.ndarray, kernel: Sequence[int], clip_limit: float) -> np.ndarray:
    """Grey-level mappings of contextual tiles, as scikit-image's ``_clahe`` computes them.

    Parameters
    ----------
    hist
        Bin counts per tile, shape (..., bins), int64; modified in place by the clipping.
    kernel
        Contextual tile shape (voxels, z y x): its voxel count sets the clip limit
        (``int(clip_limit * voxels)``, at least 1; 0 = no clipping) and the scale.
    clip_limit
        Normalized clip limit in [0, 1].

    Returns
    -------
    The clipped, redistributed and cumulated histograms mapped onto ``[0, 2**14)`` (int).
    """
    from skimage.exposure._adapthist import clip_histogram, map_histogram

    kernel_elements = math.prod(int(k) for k in kernel)
    clim = int(np.clip(clip_limit * kernel_elements, 1, None)) if clip_limit > 0.0 else kernel_elements
    hist = np.apply_along_axis(clip_histogram, -1, hist, clip_limit=clim)
    return np.asarray(map_histogram(hist, 0, _NR_OF_GRAY - 1, kernel_elements))


def clahe_interpolate(bins: np.ndarray, maps: np.ndarray, offset: Sequence[int], kernel: Sequence[int]) -> np.ndarray:
    """scikit-image's ``_clahe`` result (uint16, before any rescale) for a box of voxels.

    Parameters
    ----------
    bins
        CLAHE bin of every voxel of the box, shape (z, y, x).
    maps
        :func:`clahe_maps` of the tiles, shape (tiles_z, tiles_y, tiles_x, bins); tile
        ``i`` covers voxels ``[i * kernel, (i + 1) * kernel)`` of the image.
    offset
        The box's first voxel in the image's voxels (z, y, x).
    kernel
        Contextual tile shape (voxels, z y x).

    Notes
    -----
    Each voxel blends the mappings of its 8 nearest tiles (edge tiles repeated) with
    scikit-image's weights, products and float32 accumulation, so the result equals
    ``_clahe`` on the whole image bit for bit.
    """
    k = [int(v) for v in kernel]
    nt = maps.shape[:3]
    tiles, weights, cells = [], [], []
    for axis in range(3):
        pos = np.arange(offset[axis], offset[axis] + bins.shape[axis]) + k[axis] // 2  # padded coordinate
        j, c = pos // k[axis], pos % k[axis]
        tiles.append((np.clip(j - 1, 0, nt[axis] - 1), np.clip(j, 0, nt[axis] - 1)))
        w = np.arange(k[axis]) / k[axis]
        weights.append((1 - w[c], w[c]))
        cuts = [0, *(np.flatnonzero(np.diff(j)) + 1).tolist(), len(j)]
        cells.append([slice(p, q) for p, q in zip(cuts[:-1], cuts[1:])])
    if math.prod(len(c) for c in cells) > 64:  # small kernels: one gather over all tiles beats many cells
        result = np.zeros(bins.shape, np.float32)
        for edge in itertools.product((0, 1), repeat=3):
            iz, iy, ix = (tiles[a][edge[a]] for a in range(3))
            mapped = maps[iz[:, None, None], iy[None, :, None], ix[None, None, :], bins]
            wz, wy, wx = (weights[a][edge[a]] for a in range(3))
            coeff = (wx[None, None, :] * wy[None, :, None]) * wz[:, None, None]
            result += (mapped * coeff).astype(np.float32)
        return result.astype(np.uint16)
    result = np.empty(bins.shape, np.float32)
    # one cell = the voxels between the same 8 tiles: their mappings are plain lookup tables
    for sz, sy, sx in itertools.product(*cells):
        b = bins[sz, sy, sx]
        acc = np.zeros(b.shape, np.float32)
        for edge in itertools.product((0, 1), repeat=3):
            lut = maps[tiles[0][edge[0]][sz.start], tiles[1][edge[1]][sy.start], tiles[2][edge[2]][sx.start]]
            wz, wy, wx = weights[0][edge[0]][sz], weights[1][edge[1]][sy], weights[2][edge[2]][sx]
            coeff = (wx[None, None, :] * wy[None, :, None]) * wz[:, None, None]
            acc += (lut[b] * coeff).astype(np.float32)
        result[sz, sy, sx] = acc
    return result.astype(np.uint16)


# -- statistics (one streaming pass) ------------------------------------------------


class IntensityStats:
    """Global histogram of a volume (values in its domain) and, for CLAHE, per-tile histograms.

    ``tile_hist`` has shape (tiles_z, tiles_y, tiles_x, domain): histograms of the
    contextual tiles ``[i*k, (i+1)*k)`` of the reflect-padded volume (voxels), the
    grid scikit-image uses.
    """

    def __init__(self, hist: np.ndarray, tile_hist: np.ndarray | None, kernel: Shape3 | None) -> None:
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


@dataclass(frozen=True)
class _StatsJob:
    """A statistics block: ``vol`` read plainly, or (``tiles``) as a reflect-padded CLAHE tile."""

    vol: Volume
    domain: int
    tiles: bool


def _stats_block(job: _StatsJob, block: Block) -> dict[str, Any]:
    roi = block.roi
    if not job.tiles:
        return {"tile": None, "inside": pack_histogram(_histogram(to_index(job.vol.read(roi)), job.domain))}
    data = to_index(_read_reflected(job.vol, roi.offset, roi.end))
    tile = _histogram(data, job.domain)
    inner = roi.intersect(job.vol.roi)
    if inner == roi:  # the tile lies inside the volume: both histograms are the same
        return {"tile": pack_histogram(tile), "inside": None}
    inside = data[tuple(slice(a - o, e - o) for a, e, o in zip(inner.offset, inner.end, roi.offset))]
    return {"tile": pack_histogram(tile), "inside": pack_histogram(_histogram(inside, job.domain))}


def gather_stats(
    vol: Volume,
    kernel: Sequence[int] | None = None,
    block: Sequence[int] = (64, 256, 256),
    *,
    client: Any | None = None,
    ledger: Ledger | None = None,
    retries: int = 2,
    progress: ProgressFn | None = None,
) -> IntensityStats:
    """One streaming pass (stage ``"statistics"``): the global histogram, plus the CLAHE
    tile histograms if ``kernel``.

    With ``kernel`` the blocks of the pass are the contextual tiles (each read once,
    reflect-padded at the far border), otherwise ``block``-sized pieces. Block results are
    summed in block order. Memory: one tile or block per worker, plus the histograms.
    """
    domain = value_domain(vol.dtype)
    k = as_int3(kernel, "CLAHE kernel", minimum=1) if kernel is not None else None
    if k is None:
        b = as_int3(block, "block", minimum=1)
        plan = plan_blocks(vol.roi, b, b)
    else:  # the tiles of the reflect-padded volume
        tiles = as_int3([math.ceil(s / kk) * kk for s, kk in zip(vol.shape, k)], "tiled shape")
        plan = plan_blocks(Roi((0, 0, 0), tiles), k, k)
    fn = functools.partial(_stats_block, _StatsJob(vol, domain, k is not None))
    done = run_blocks(fn, plan, stage="statistics", ledger=ledger, client=client, retries=retries, progress=progress)
    hist = np.zeros(domain, np.int64)
    tile_hist = np.zeros((*plan.grid, domain), np.int64) if k is not None else None
    for index, entry in done.items():  # block order
        r = entry["result"]
        if tile_hist is None:
            hist += unpack_histogram(r["inside"], domain)
            continue
        tile = unpack_histogram(r["tile"], domain)
        tile_hist[index] = tile
        hist += tile if r["inside"] is None else unpack_histogram(r["inside"], domain)
    return IntensityStats(hist, tile_hist, k)


# -- per-method transforms -------------------------------------------------------------


class Transform:
    """A blockwise transform ``raw block -> float64 in [0, 1]``; exact for any block split.

    Built from the statistics (not kept: a Transform is small enough to send to workers).
    CLAHE needs one more pass, :meth:`prepare`, before it can transform blocks.
    """

    def __init__(self, params: PreprocessParams, stats: IntensityStats, dtype: np.dtype, shape: Sequence[int]) -> None:
        self.params, self.dtype = params, np.dtype(dtype)
        self.shape = tuple(int(s) for s in shape)
        self.domain = value_domain(self.dtype)
        self._rminmax: tuple[float, float] | None = None
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
            self._init_clahe(stats)

    # CLAHE (scikit-image's algorithm, reproduced blockwise) ------------------------------
    def _init_clahe(self, st: IntensityStats) -> None:
        from skimage.exposure import rescale_intensity

        p = self.params
        if st.tile_hist is None or st.kernel is None:
            raise ValueError("CLAHE needs the tile histograms: gather_stats(..., kernel=...)")  # a defect
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
        self.maps = clahe_maps(hist, k, p.clip_limit).reshape(st.tile_hist.shape[:3] + (-1,))
        self.kernel = k

    def _clahe_raw(self, block: np.ndarray, roi: Roi) -> np.ndarray:
        """scikit-image's ``_clahe`` output (uint16, before the final rescale) for a block."""
        return clahe_interpolate(self.bins[to_index(block)], self.maps, roi.offset, self.kernel)

    def prepare(
        self,
        vol: Volume,
        block: Sequence[int],
        *,
        client: Any | None = None,
        ledger: Ledger | None = None,
        retries: int = 2,
        progress: ProgressFn | None = None,
    ) -> None:
        """CLAHE only: a streaming pass (stage ``"clahe range"``, ``block``-sized blocks) for
        the output min/max of skimage's final rescale."""
        if self.params.method != "clahe":
            return
        b = as_int3(block, "block", minimum=1)
        done = run_blocks(
            functools.partial(_range_block, _RangeJob(self, vol)),
            plan_blocks(vol.roi, b, b),
            stage="clahe range",
            ledger=ledger,
            client=client,
            retries=retries,
            progress=progress,
        )
        ranges = [e["result"] for e in done.values()]
        self._rminmax = (min(float(r[0]) for r in ranges), max(float(r[1]) for r in ranges))

    def __call__(self, block: np.ndarray, roi: Roi) -> np.ndarray:
        """float64 in [0, 1] for a raw block at voxel ROI ``roi`` of the volume."""
        if self.params.method != "clahe":
            return self.lut[to_index(block)]
        from skimage.exposure import rescale_intensity

        if self._rminmax is None:
            raise RuntimeError("call prepare() before transforming blocks with CLAHE")
        # skimage rescales in the input's float type (float32 for float32/float16 input)
        ftype = np.float32 if self.dtype.kind == "f" and self.dtype.itemsize <= 4 else np.float64
        r = self._clahe_raw(block, roi).astype(ftype)
        lo, hi = self._rminmax
        if hi == lo:
            return np.clip(r, 0.0, 1.0)
        return rescale_intensity(r, in_range=(lo, hi), out_range=(0.0, 1.0))


@dataclass(frozen=True)
class _RangeJob:
    tf: Transform
    vol: Volume


def _range_block(job: _RangeJob, block: Block) -> list[float]:
    r = job.tf._clahe_raw(job.vol.read(block.roi), block.roi)
    return [float(r.min()), float(r.max())]


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 0-255 (rounded)."""
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def normalize_array(raw: np.ndarray, params: PreprocessParams, block: Sequence[int] | None = None) -> np.ndarray:
    """Normalize an in-memory (z, y, x) array; float64 in [0, 1]. ``block`` (voxels) to compute blockwise
    (``clahe-incasem`` is computed in its own write blocks, ``params.block``: its uint8 / 255)."""
    vol = Volume(raw)
    if params.method == "clahe-incasem":  # blockwise by definition: incasem's write blocks
        from .clahe_incasem import clahe_incasem_box

        return clahe_incasem_box(vol, vol.roi, params) / 255.0
    b = as_int3(block, "block", minimum=1) if block is not None else vol.shape
    stats = gather_stats(vol, params.kernel if params.method == "clahe" else None, b)
    tf = Transform(params, stats, vol.dtype, vol.shape)
    tf.prepare(vol, b)
    out = np.empty(vol.shape, np.float64)
    for blk in plan_blocks(vol.roi, b, b):
        out[blk.roi.slices()] = tf(vol.read(blk.roi), blk.roi)
    return out


@dataclass(frozen=True)
class _WriteJob:
    tf: Transform
    vol: Volume
    partial: str


def _write_block(job: _WriteJob, block: Block) -> None:
    write_block(Path(job.partial) / "s0", block.roi.slices(), to_uint8(job.tf(job.vol.read(block.roi), block.roi)))


def preprocess_volume(
    src: Volume,
    dst: str | os.PathLike[str],
    params: PreprocessParams,
    block: Sequence[int] = (64, 256, 256),
    chunks: Sequence[int] = (64, 64, 64),
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    *,
    client: Any | None = None,
    retries: int = 2,
) -> Volume:
    """Normalize ``src`` blockwise into a uint8 OME-Zarr image ``dst``; returns it opened.

    ``dst`` may be a new container (``raw_clahe.zarr``) or a path inside an existing one
    (``raw.zarr/clahe``). The output keeps the voxel size and offset (nm) of ``src`` and
    records ``{"preprocess": params.record(), ...}`` in its organet metadata, which
    training and prediction compare (:func:`organet.preprocess.check_preprocess`).

    Parameters
    ----------
    block
        Voxels processed at a time (z, y, x), rounded to whole ``chunks``; memory is a few
        blocks per worker, or one CLAHE tile (``kernel``), whichever is larger. For
        ``clahe-incasem`` rounded to whole ``lcm(params.block, chunks)`` when that is at most
        4 write blocks, so no write block is computed twice.
    chunks
        Chunk shape of the output (voxels).
    overwrite
        Replace an existing ``dst`` (atomically, when the new one is complete) and start
        over from a ledger of other settings. Without it an existing ``dst`` is refused.
    progress
        ``progress(stage, advance, total)`` for the stages in :data:`STAGES`.
    client
        A Dask ``distributed.Client``: the blocks of every pass run as tasks (same bytes
        as in-process); None runs them here.
    retries
        Extra attempts per failing block; blocks that still fail raise
        :class:`~organet.errors.BlockFailures` and a rerun resumes.

    Notes
    -----
    The data is written into ``DST.partial``, finished blocks (and statistics) are
    recorded in ``DST.progress``; a killed run rerun with the same arguments resumes and
    gives the same bytes. ``DST`` appears by rename only when complete.
    """
    if src.attrs.get("preprocess") not in (None, {"method": "none"}):
        raise VolumeError(
            f"{src.path} is already normalized ({src.attrs['preprocess']}); normalize the raw volume instead"
        )
    domain = value_domain(src.dtype)
    unit = None
    if params.method == "clahe-incasem":  # organet blocks of whole incasem write blocks when the chunks allow
        from .clahe_incasem import incasem_unit

        unit = incasem_unit(params.block, as_int3(chunks, "chunks", minimum=1), src.shape)
    plan = plan_blocks(src.roi, chunks, as_int3(block, "block", minimum=1), unit=unit)
    record = params.record()
    run = {
        "kind": "preprocess",
        "preprocess": record,
        "source": volume_identity(src),
        "source_shape": list(src.shape),
        "source_dtype": str(src.dtype),
        "voxel_size": list(src.voxel_size),
        "offset": list(src.offset),
        "chunks": list(plan.chunks),
        "block_shape": list(plan.block_shape),
    }
    out = ResumableOutput(dst, run, overwrite=overwrite)
    if out.complete:
        return open_volume(out.path)
    info: dict[str, Any] = {"source": src.path, "source_dtype": str(src.dtype), "output": "uint8 0-255"}
    attrs = {"preprocess": record, "preprocess_info": info}
    out.start(single_image(src.shape, np.uint8, src.voxel_size, src.offset, plan.chunks, attrs, name=out.path.stem))
    passes: dict[str, Any] = {"client": client, "ledger": out.ledger, "retries": retries, "progress": progress}
    if params.method == "clahe-incasem":  # no statistics: every write block stands alone
        from .clahe_incasem import IncasemJob, write_incasem_block

        job = IncasemJob(src, params, str(out.partial / "s0"))
        run_blocks(functools.partial(write_incasem_block, job), plan, stage="write", **passes)
        return open_volume(out.commit())
    if params.method == "none":
        stats = IntensityStats(np.zeros(domain, np.int64), None, None)
    else:
        stats = gather_stats(src, params.kernel if params.method == "clahe" else None, plan.block_shape, **passes)
    tf = Transform(params, stats, src.dtype, src.shape)
    del stats
    tf.prepare(src, plan.block_shape, **passes)
    if params.method == "linear":
        info["linear_bounds"] = list(tf.bounds)
        set_levels(zarr.open_group(str(out.partial), mode="r+"), 1, attrs)
    run_blocks(functools.partial(_write_block, _WriteJob(tf, src, str(out.partial))), plan, stage="write", **passes)
    return open_volume(out.commit())


__all__ = [
    "STAGES",
    "IntensityStats",
    "PreprocessParams",
    "Transform",
    "gather_stats",
    "normalize_array",
    "pack_histogram",
    "preprocess_volume",
    "to_uint8",
    "unpack_histogram",
    "value_domain",
]
