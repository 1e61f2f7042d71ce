"""The one Predictor: the only code that turns raw voxels into foreground probabilities.

A :class:`Predictor` bundles a model (a checkpoint path, or a live network during
training), its contrast normalization, the map between its voxel size and the input's
(any ratio per axis: the input is seen through :class:`~organet.volumes.resample.ResampledVolume`,
area means where the model is coarser and linear interpolation where it is finer, and the
probabilities come back through the inverse map), the tile shape, test-time augmentation,
device and precision.
``organet predict`` (in-process and on Dask), training validation, the napari widget
and the demo all call :meth:`Predictor.predict`.

Within a run the result for a voxel does not depend on which block asked for it: tiles
lie on one grid of the model-resolution volume, fixed per run by :meth:`Predictor.for_region`
(:mod:`organet.predict.tiled`), so blocks predicted separately, in any process, give the
same bytes as one region.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from organet.errors import IncompatibleError, InputError
from organet.model.unet import UNetConfig
from organet.preprocess.normalize import Normalization
from organet.volumes.geometry import Shape3, Vec3, fmt_vec
from organet.volumes.resample import GridMap, ResampledVolume
from organet.volumes.roi import Roi

from .plan import TilePlan, memory_budget, plan_tiles
from .tiled import (
    BACKENDS,
    OPENVINO_MISSING,
    OpenVinoNetwork,
    TileGrid,
    openvino_model,
    resolve_precision,
    run_tiles,
    tile_grid,
    tta_variants,
)

_MODELS: dict[tuple[str, int, int, str, str, int], Any] = {}
_MODELS_LOCK = threading.Lock()


def openvino_ir_path(checkpoint: str | os.PathLike[str]) -> Path:
    """Where the OpenVINO model of ``checkpoint`` is cached: ``<cache>/openvino/<sha256 of the
    checkpoint>-organet<version>-openvino<version>/model.xml`` (cache root:
    :func:`organet.model.registry.cache_dir`)."""
    import openvino as ov

    from organet import __version__
    from organet.model.checkpoint import file_sha256
    from organet.model.registry import cache_dir

    key = f"{file_sha256(checkpoint)}-organet{__version__}-openvino{ov.__version__.split('-')[0]}"
    return cache_dir() / "openvino" / key / "model.xml"


def _cached_model(checkpoint: str, device: str, backend: str = "torch", threads: int = 0) -> Any:
    """The network of ``checkpoint`` on ``device`` for ``backend`` (with ``threads`` CPU
    threads for OpenVINO), loaded once per process (keyed by path, size, mtime, device,
    backend and threads)."""
    import torch

    from organet.model.checkpoint import load_checkpoint

    st = os.stat(checkpoint)
    key = (os.path.abspath(checkpoint), st.st_size, st.st_mtime_ns, device, backend, threads)
    with _MODELS_LOCK:
        if key not in _MODELS:
            net: Any = load_checkpoint(checkpoint).build_model().to(device).eval()
            if backend == "torch" and torch.device(device).type == "cpu":
                net = net.to(memory_format=torch.channels_last_3d)  # oneDNN's fast layout; run_tiles follows
            if backend == "openvino":
                net = OpenVinoNetwork(openvino_model(net, openvino_ir_path(checkpoint)), threads)
            _MODELS[key] = net
        return _MODELS[key]


def _worker_device(device: str) -> str:
    """``auto``: CUDA if present (one GPU per Dask worker, by worker name), else CPU."""
    import torch

    if device != "auto":
        return device
    if not torch.cuda.is_available():
        return "cpu"
    n = torch.cuda.device_count()
    try:
        from distributed import get_worker

        name = get_worker().name
        idx = int(name) if str(name).lstrip("-").isdigit() else int(hashlib.md5(str(name).encode()).hexdigest(), 16)
    except (ImportError, ValueError):
        idx = 0
    return f"cuda:{idx % n}"


MAX_SCALE = 64.0
"""Refuse to resample by more than this per axis (a model at 0.5 nm on 40 nm data is a mistake)."""


def model_grid_map(volume: Any, model_nm: Sequence[float]) -> GridMap:
    """The map from ``volume``'s grid to the model's voxel size ``model_nm`` (nm, z, y, x).

    Raises :class:`IncompatibleError` when an axis would be resampled by more than
    :data:`MAX_SCALE` either way.
    """
    m = GridMap.between(volume, model_nm)
    if any(k > MAX_SCALE or k < 1 / MAX_SCALE for k in m.scale):
        raise IncompatibleError(
            f"the model was trained at {fmt_vec(model_nm)} nm but the input {getattr(volume, 'path', None) or ''} "
            f"has {fmt_vec(volume.voxel_size)} nm voxels: more than {MAX_SCALE:g}x apart on an axis; "
            "check the voxel sizes (--voxel-size)"
        )
    return m


@dataclass(frozen=True)
class Predictor:
    """Model + normalization + resampling + tiles + TTA + device: raw voxels in, probabilities out.

    Build one with :meth:`from_checkpoint` (picklable: workers load the checkpoint once
    per process) or :meth:`from_model` (a live network, in this process only).
    ``tile`` is the network input shape, ``anchor`` a voxel the tile grid passes through
    and ``extent`` the voxels from the anchor the grid covers (all at the model's voxel
    size; None: chosen by :meth:`for_region`, the tile as the least work that fits
    ``memory_gib``, :mod:`organet.predict.plan`). ``precision``: ``auto`` (bf16 on CUDA
    devices that support it, else fp32), ``fp32``, ``bf16`` or ``fp16``.
    ``threads``: torch CPU threads per process (None: torch's default). ``backend``: ``torch``
    or ``openvino`` (CPU and fp32 only, :data:`~organet.predict.tiled.BACKENDS`).
    """

    architecture: UNetConfig
    voxel_size: Vec3
    normalization: Normalization
    checkpoint: str | None = None
    tile: Shape3 | None = None
    anchor: Shape3 | None = None
    extent: Shape3 | None = None
    batch_size: int = 1
    device: str = "auto"
    tta: str | None = None
    precision: str = "auto"
    memory_gib: float | None = None
    threads: int | None = None
    backend: str = "torch"
    organelle: str = ""
    iteration: int = 0
    _model: Any = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], **settings: Any) -> Predictor:
        """A Predictor for the checkpoint at ``path`` (validated now; weights loaded on first use)."""
        from organet.model.checkpoint import load_checkpoint

        p = Path(path).expanduser().resolve()
        ck = load_checkpoint(p)
        return cls(
            ck.architecture,
            ck.voxel_size,
            ck.normalization,
            checkpoint=str(p),
            organelle=ck.organelle,
            iteration=ck.iteration,
            **settings,
        )

    @classmethod
    def from_model(
        cls, model: Any, voxel_size: Sequence[float], normalization: Normalization, **settings: Any
    ) -> Predictor:
        """A Predictor for a live ``UNet`` (training validation); not sent to other processes."""
        vs = (float(voxel_size[0]), float(voxel_size[1]), float(voxel_size[2]))
        return cls(model.cfg, vs, normalization, _model=model, **settings)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {self.batch_size}")
        if self.memory_gib is not None and not self.memory_gib > 0:
            raise InputError(f"memory budget must be > 0 GiB, got {self.memory_gib}")
        resolve_precision(self.precision, "cuda" if self.precision == "fp16" else "cpu")
        if self.backend not in BACKENDS:
            raise InputError(f"unknown backend {self.backend!r}; expected one of {', '.join(BACKENDS)}")
        if self.backend != "torch" and (self.device not in ("auto", "cpu") or self.precision not in ("auto", "fp32")):
            raise InputError(
                f"backend {self.backend!r} runs on the CPU in fp32; got device {self.device!r} and precision "
                f"{self.precision!r} (use --backend torch for other devices or precisions)"
            )
        if self.backend == "openvino" and importlib.util.find_spec("openvino") is None:
            raise InputError(OPENVINO_MISSING)
        if self.tile is not None:
            tile_grid(self.architecture, self.tile)  # validate now
            tta_variants(self.tta, self.tile)
        else:
            tta_variants(self.tta, (2, 2, 2))

    def __getstate__(self) -> dict[str, Any]:
        if self._model is not None and self.checkpoint is None:
            raise TypeError("a Predictor of a live network cannot be sent to another process; use a checkpoint")
        state = dict(self.__dict__)
        state["_model"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # ------------------------------------------------------------------ geometry
    def grid_map(self, volume: Any) -> GridMap:
        """The map from ``volume``'s grid to the model's voxel size."""
        return model_grid_map(volume, self.voxel_size)

    def grid(self) -> TileGrid:
        if self.tile is None:
            raise ValueError("Predictor.tile is not set; call for_region() first")  # a defect in the caller
        grid = tile_grid(self.architecture, self.tile)
        return grid if self.extent is None else grid.with_extent(self.extent)

    def model_grid(self, volume: Any) -> Any:
        """``volume`` as the model sees it: itself, or resampled to the model's voxel size."""
        m = self.grid_map(volume)
        return volume if m.identity else ResampledVolume(volume, self.voxel_size)

    def model_region(self, volume: Any, roi: Roi) -> Roi:
        """The model-grid voxels needed for ``roi`` (input voxels): the ROI itself on the same
        grid, else the model voxels the probabilities of ``roi`` are resampled from."""
        m = self.grid_map(volume)
        return roi if m.identity else m.inverse().source_box(roi.offset, roi.end)

    def memory_bytes(self) -> int:
        """The memory budget (bytes) for one forward pass: ``memory_gib``, or
        :func:`~organet.predict.plan.memory_budget` of the device."""
        if self.memory_gib is not None:
            return int(self.memory_gib * 2**30)
        return memory_budget(self._device())

    def resolved_precision(self) -> str:
        """The precision the forward passes use on this Predictor's device."""
        return resolve_precision(self.precision, self._device())

    def _device(self) -> str:
        return "cpu" if self.backend != "torch" else _worker_device(self.device)

    def tile_plan(self, region_shape: Sequence[int]) -> TilePlan:
        """The tile with the least work for a model-grid region of ``region_shape`` (voxels)
        within :meth:`memory_bytes` (:func:`~organet.predict.plan.plan_tiles`)."""
        return plan_tiles(self.architecture, region_shape, self.memory_bytes(), precision=self.resolved_precision())

    def for_region(self, volume: Any, roi: Roi) -> Predictor:
        """This Predictor with its tile grid fixed for predicting ``roi`` of ``volume``:
        the tile (if not set) with the least work for the region that fits the memory
        budget (:func:`~organet.predict.plan.plan_tiles`), and the grid through the origin
        of the model-grid region, ending at its far side (anchor and extent, kept if set).

        Fix them once per run, before splitting the work: the bytes depend on them.
        """
        region = self.model_region(volume, roi)
        tile = self.tile
        batch = self.batch_size
        if tile is None:
            plan = plan_tiles(self.architecture, region.shape, self.memory_bytes(), precision=self.resolved_precision())
            tile = plan.tile_in
        if self.anchor is not None:
            return replace(self, tile=tile, batch_size=batch)
        return replace(self, tile=tile, batch_size=batch, anchor=region.offset, extent=region.shape)

    def context_vox(self, volume: Any) -> Shape3:
        """Input voxels the network reads around its output on each side (its context,
        plus the reach of the resampling)."""
        c = self.grid().context
        scale = self.grid_map(volume).scale
        out = [math.ceil(n * k) + (math.ceil(k) + 1 if k != 1 else 0) for n, k in zip(c, scale)]
        return out[0], out[1], out[2]

    def describe(self) -> dict[str, Any]:
        """The settings that determine the output (for run records and metadata)."""
        return {
            "checkpoint": self.checkpoint,
            "voxel_size": list(self.voxel_size),
            "organelle": self.organelle,
            "iteration": self.iteration,
            "tile": list(self.tile) if self.tile else None,
            "anchor": list(self.anchor) if self.anchor else None,
            "extent": list(self.extent) if self.extent else None,
            "tta": self.tta,
            "precision": self.resolved_precision(),
            "normalization": self.normalization.model_dump(),
            "batch_size": self.batch_size,
            "backend": self.backend,
        }

    # ------------------------------------------------------------------ prediction
    def _network(self, device: str) -> Any:
        import torch

        threads = torch.get_num_threads() if self.backend != "torch" else 0
        if self._model is not None:
            if self.backend == "openvino":  # a live network changes between calls: converted each time
                return OpenVinoNetwork(openvino_model(self._model), threads)
            return self._model.to(device).eval()
        assert self.checkpoint is not None
        return _cached_model(self.checkpoint, device, self.backend, threads)

    def predict_model_grid(self, source: Any, region: Roi) -> np.ndarray:
        """Foreground probability (float32) of ``region``, in voxels of the model grid
        ``source`` (:meth:`model_grid`), computed by the tiles of this run's grid that cover it."""
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        device = self._device()
        grid = self.grid()
        origin, shape, starts = grid.covering(region.offset, region.end, self.anchor or (0, 0, 0))
        buf = np.zeros(shape, np.float32)

        anchor = self.anchor or (0, 0, 0)

        def write(start: Shape3, p: np.ndarray) -> None:
            w = grid.write_shape(start, anchor)
            buf[tuple(slice(a - o, a - o + n) for a, o, n in zip(start, origin, w))] = p[: w[0], : w[1], : w[2]]

        run_tiles(
            self._network(device),
            source,
            self.normalization,
            grid,
            starts,
            write,
            self.batch_size,
            device,
            self.tta,
            self.resolved_precision(),
        )
        return np.ascontiguousarray(
            buf[tuple(slice(a - o, b - o) for a, b, o in zip(region.offset, region.end, origin))]
        )

    def resample(self, volume: Any, model_probability: np.ndarray, region: Roi, roi: Roi) -> np.ndarray:
        """Probabilities on the input grid for ``roi`` from model-grid probabilities of
        ``region`` (which must cover :meth:`model_region` of ``roi``): linear interpolation
        where the input is finer than the model, area means where it is coarser."""
        m = self.grid_map(volume)
        if m.identity:
            sl = tuple(slice(a - o, b - o) for a, b, o in zip(roi.offset, roi.end, region.offset))
            return np.ascontiguousarray(model_probability[sl])
        return m.inverse().resample(model_probability, region.offset, roi.offset, roi.end)

    def predict(self, volume: Any, roi: Roi) -> np.ndarray:
        """Foreground probability (float32, ``roi.shape``) of ``roi`` (input voxels) of ``volume``.

        ``volume`` is an :class:`~organet.volumes.Volume` (or anything with ``shape``,
        ``dtype``, ``voxel_size``, ``offset`` and ``read``). With a model of another voxel
        size the model sees the input resampled to its grid, and its output is resampled
        back onto the input grid (:class:`~organet.volumes.resample.GridMap`).
        """
        fixed = self.for_region(volume, roi)
        region = fixed.model_region(volume, roi)
        return fixed.resample(volume, fixed.predict_model_grid(fixed.model_grid(volume), region), region, roi)


__all__ = ["MAX_SCALE", "Predictor", "model_grid_map"]
