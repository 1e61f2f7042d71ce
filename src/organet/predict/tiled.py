"""Tiles of the U-Net over a volume: the low-level arithmetic under :class:`~organet.predict.Predictor`.

Output tiles lie on one grid through a fixed anchor voxel (the origin of the region a
run predicts) of the volume the network sees, with a step that is a multiple of the
network's total downsampling factor (8 for the ASEM net). So within a run every output
voxel is always computed by the same tile from the same input, whichever block or
process asks for it, and the result equals one untiled forward pass over the volume
(valid convolutions). Each tile's
input is read with its context from the real neighbourhood; only beyond the volume
border is the raw data mirrored.

Shapes and offsets are in voxels, axis order (z, y, x).
"""

from __future__ import annotations

import copy
import itertools
import math
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from organet.errors import InputError
from organet.model.unet import UNet, UNetConfig, output_shape, valid_sizes
from organet.preprocess.normalize import Normalization
from organet.volumes.geometry import Shape3


class ArrayLike3D(Protocol):
    shape: tuple[int, ...]
    dtype: Any

    def read(self, roi: Any) -> np.ndarray: ...


def reflect_indices(start: int, stop: int, size: int) -> np.ndarray:
    """Indices ``start..stop-1`` mirrored into ``[0, size)`` (numpy 'reflect' mode)."""
    idx = np.arange(start, stop)
    if size == 1:
        return np.zeros_like(idx)
    period = 2 * (size - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= size, period - idx, idx)


def read_with_context(volume: ArrayLike3D, start: Sequence[int], stop: Sequence[int]) -> np.ndarray:
    """Read the box ``[start, stop)`` (voxels, may extend past the volume) with
    mirror padding outside the volume. Only the needed in-bounds region is read."""
    shape = volume.shape
    idx = [reflect_indices(a, b, n) for a, b, n in zip(start, stop, shape)]
    lo = [int(i.min()) for i in idx]
    hi = [int(i.max()) + 1 for i in idx]
    block = np.asarray(volume.read(tuple(slice(a, b) for a, b in zip(lo, hi))))
    inside = all(a >= 0 for a in start) and all(b <= n for b, n in zip(stop, shape))
    if inside:
        return block
    return block[np.ix_(*(i - a for i, a in zip(idx, lo)))]


@dataclass(frozen=True)
class TileGrid:
    """The tile grid of a network input shape through an anchor voxel: tile ``k`` (per
    axis) reads ``[k * step - context, k * step - context + tile_in)`` and writes the
    output voxels ``[k * step, (k + 1) * step)``.

    With ``extent`` (voxels from the anchor a run covers, per axis) the grid ends there:
    the last tile on an axis is the first whose whole output reaches the extent, and it
    writes all of it up to the extent, so a region needs no more tiles than its size
    requires (a 110³ ASEM region is one 204³ tile, not 8). Which tile writes a voxel then
    depends only on the grid, never on the block asking.
    """

    tile_in: Shape3
    tile_out: Shape3
    step: Shape3
    extent: Shape3 | None = None

    @property
    def context(self) -> Shape3:
        c = [(i - o) // 2 for i, o in zip(self.tile_in, self.tile_out)]
        return (c[0], c[1], c[2])

    def with_extent(self, extent: Sequence[int]) -> TileGrid:
        """This grid ending ``extent`` voxels from the anchor."""
        return replace(self, extent=(int(extent[0]), int(extent[1]), int(extent[2])))

    def tiles_per_axis(self) -> Shape3 | None:
        """Tiles along each axis up to the extent (None without one)."""
        if self.extent is None:
            return None
        k = [1 if e <= o else math.ceil((e - o) / s) + 1 for e, o, s in zip(self.extent, self.tile_out, self.step)]
        return (k[0], k[1], k[2])

    def _index(self, rel: int, axis: int) -> int:
        k = math.floor(rel / self.step[axis])
        n = self.tiles_per_axis()
        return k if n is None else min(k, n[axis] - 1)

    def _width(self, k: int, axis: int) -> int:
        n = self.tiles_per_axis()
        if n is None or k < n[axis] - 1:
            return self.step[axis]
        assert self.extent is not None
        return self.extent[axis] - k * self.step[axis]

    def write_shape(self, start: Sequence[int], anchor: Sequence[int] = (0, 0, 0)) -> Shape3:
        """Output voxels the tile with output start ``start`` writes (from its first output voxel)."""
        w = [self._width((a - o) // s, i) for i, (a, o, s) in enumerate(zip(start, anchor, self.step))]
        return (w[0], w[1], w[2])

    def covering(
        self, lo: Sequence[int], hi: Sequence[int], anchor: Sequence[int] = (0, 0, 0)
    ) -> tuple[Shape3, Shape3, list[Shape3]]:
        """Tiles of the grid through ``anchor`` whose outputs cover ``[lo, hi)``:
        (origin and shape of the box they write, tile output starts)."""
        if self.extent is not None and any(
            a < o or b > o + e for a, b, o, e in zip(lo, hi, anchor, self.extent)
        ):  # a defect in the caller: a run predicts only its own region
            raise ValueError(f"[{tuple(lo)}, {tuple(hi)}) lies outside the tile grid's extent {self.extent}")
        k0 = [self._index(a - o, i) for i, (a, o) in enumerate(zip(lo, anchor))]
        k1 = [self._index(b - 1 - o, i) + 1 for i, (b, o) in enumerate(zip(hi, anchor))]
        org = [o + k * s for o, k, s in zip(anchor, k0, self.step)]
        end = [o + (k - 1) * s + self._width(k - 1, i) for i, (o, k, s) in enumerate(zip(anchor, k1, self.step))]
        starts = [
            (org[0] + k[0] * self.step[0], org[1] + k[1] * self.step[1], org[2] + k[2] * self.step[2])
            for k in itertools.product(*(range(b - a) for a, b in zip(k0, k1)))
        ]
        return (org[0], org[1], org[2]), (end[0] - org[0], end[1] - org[1], end[2] - org[2]), starts

    def count(self, lo: Sequence[int], hi: Sequence[int], anchor: Sequence[int] = (0, 0, 0)) -> int:
        """Number of tiles that cover ``[lo, hi)``."""
        return math.prod(
            self._index(b - 1 - o, i) + 1 - self._index(a - o, i) for i, (a, b, o) in enumerate(zip(lo, hi, anchor))
        )


def tile_grid(cfg: UNetConfig, tile_in: Sequence[int]) -> TileGrid:
    """The grid of a network input shape; :class:`InputError` if the shape is not valid."""
    t = (int(tile_in[0]), int(tile_in[1]), int(tile_in[2]))
    tile_out = output_shape(cfg, t)
    if tile_out is None:
        near = sorted((i for i, _ in valid_sizes(cfg, max_size=max(t) + 64)), key=lambda s: abs(s - t[0]))[:4]
        raise InputError(f"tile {t} is not a valid network input; valid sizes per axis near it: {sorted(near)}")
    f = cfg.total_factor
    step = ((tile_out[0] // f[0]) * f[0], (tile_out[1] // f[1]) * f[1], (tile_out[2] // f[2]) * f[2])
    if any(s == 0 for s in step):
        raise InputError(
            f"tile {t} gives {tile_out} output voxels, fewer than the downsampling factor {f}; use a larger tile"
        )
    return TileGrid(t, tile_out, step)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


TTA_MODES = ("mirror", "mirror+transpose")


def tta_variants(tta: str | None, tile_in: Sequence[int]) -> list[tuple[list[int], bool]]:
    """Test-time augmentations as (flipped tensor dims of (N, C, z, y, x), transpose y-x).

    The identity comes first; raises InputError for an unknown mode or a transpose of
    a tile that is not square in (y, x).
    """
    if tta is None or tta in ("", "none", "off"):
        return [([], False)]
    if tta not in TTA_MODES:
        raise InputError(f"unknown test-time augmentation {tta!r}; expected one of {TTA_MODES}")
    flips = [[2 + a for a, f in enumerate(c) if f] for c in itertools.product((False, True), repeat=3)]
    out = [(f, False) for f in flips]
    if tta == "mirror+transpose":
        if tile_in[1] != tile_in[2]:
            raise InputError(f"--tta mirror+transpose needs a tile with equal y and x sizes, got {tuple(tile_in)}")
        out += [(f, True) for f in flips]
    return out


def resolve_precision(precision: str | None, device: torch.device | str) -> str:
    """``auto``/None: bf16 on a CUDA device that supports it, else fp32; otherwise the
    named precision (``fp32``, ``bf16``, ``fp16``; fp16 only on CUDA)."""
    from organet.predict.plan import PRECISIONS

    dev = torch.device(device)
    if precision in (None, "auto"):
        return "bf16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; expected auto or one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and dev.type != "cuda":
        raise InputError(f"fp16 needs a CUDA device; {dev} computes in fp32 or bf16")
    return precision


_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}

BACKENDS = ("torch", "openvino")
"""Forward-pass backends: ``torch`` (any device and precision) or ``openvino`` (CPU, fp32;
``pip install 'organet[openvino]'``; speed measured by ``benchmarks/backends.py``)."""

OPENVINO_MISSING = "backend 'openvino' needs the openvino package: pip install 'organet[openvino]'"


def openvino_model(network: UNet, ir: Path | None = None) -> Any:
    """``network`` as an OpenVINO model with dynamic batch and spatial axes (one model serves
    every valid tile shape).

    With ``ir`` (the ``.xml`` path of an OpenVINO IR) it is read from there if present, else
    converted (OpenVINO's torch frontend) and saved there with fp32 weights, the folder of
    ``ir`` written whole or not at all.
    """
    try:
        import openvino as ov
    except ImportError:
        raise InputError(OPENVINO_MISSING) from None
    from organet.volumes.atomic import remove_path, temp_sibling

    if ir is not None and ir.exists():
        return ov.Core().read_model(str(ir))
    cfg = network.cfg
    size = next(i for i, o in valid_sizes(cfg, max_size=512) if o >= max(cfg.total_factor))
    example = torch.zeros(1, cfg.in_channels, size, size, size)
    net = copy.deepcopy(network).cpu().eval()  # the caller's network keeps its device and mode
    with warnings.catch_warnings():  # tracing notes on the shape checks of UNet.forward
        warnings.simplefilter("ignore")
        model = ov.convert_model(net, example_input=example, input=[(-1, cfg.in_channels, -1, -1, -1)])
    if ir is not None:
        ir.parent.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_sibling(ir.parent)
        ov.save_model(model, str(tmp / ir.name), compress_to_fp16=False)
        try:
            tmp.rename(ir.parent)
        except OSError:  # another process saved the same model first
            remove_path(tmp)
    return model


class OpenVinoNetwork:
    """An OpenVINO model compiled for the CPU, called like the torch network: logits
    ``(N, 2, z, y, x)`` from a float32 CPU tensor ``(N, 1, z, y, x)``, any batch and valid tile.

    Compiled in fp32 (OpenVINO would pick bf16 on CPUs that have it) with ``threads`` threads
    in one stream; each calling thread gets its own inference request.
    """

    def __init__(self, model: Any, threads: int) -> None:
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        self._local = threading.local()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        out = request.infer({0: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(np.array(out, dtype=np.float32))


def channels_last(model: Any) -> bool:
    """Whether ``model`` is a torch network whose convolution weights are in the
    ``channels_last_3d`` layout (then its inputs are given in that layout too)."""
    if not isinstance(model, torch.nn.Module):
        return False
    ws = [p for p in model.parameters() if p.dim() == 5 and p.shape[1] > 1 and p.shape[2:].numel() > 1]
    return bool(ws) and all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in ws)


@torch.no_grad()
def run_tiles(
    model: UNet | Callable[[torch.Tensor], torch.Tensor],
    raw: ArrayLike3D,
    normalization: Normalization,
    grid: TileGrid,
    starts: Sequence[Shape3],
    write: Callable[[Shape3, np.ndarray], None],
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    tta: str | None = None,
    precision: str | None = None,
) -> None:
    """Run ``model`` on the tiles with output starts ``starts`` and hand each tile's
    foreground probability (float32, the whole ``grid.tile_out``) to ``write(out_start, prob)``;
    the caller keeps the part the tile writes (:meth:`TileGrid.write_shape`).

    The next batch is read and normalized in a background thread while the current one
    computes. ``precision``: see :func:`resolve_precision` (autocast for bf16/fp16; the
    softmax is taken in fp32). ``tta``: None (off), ``"mirror"`` (mean over the 8 mirror
    combinations) or ``"mirror+transpose"`` (16; needs a tile square in y, x). ``model``: the
    torch network or anything called like it on the CPU (:class:`OpenVinoNetwork`).
    """
    from concurrent.futures import ThreadPoolExecutor

    device = torch.device(device)
    if isinstance(model, torch.nn.Module):
        model = model.to(device).eval()
    fmt = torch.channels_last_3d if channels_last(model) else torch.contiguous_format
    prec = resolve_precision(precision, device)
    variants = tta_variants(tta, grid.tile_in)
    ctx = grid.context
    batches = [starts[b : b + batch_size] for b in range(0, len(starts), batch_size)]
    pin = device.type == "cuda"

    def prepare(batch: Sequence[Shape3]) -> torch.Tensor:
        x = np.stack(
            [
                normalization.apply(
                    read_with_context(
                        raw, [a - c for a, c in zip(s, ctx)], [a - c + t for a, c, t in zip(s, ctx, grid.tile_in)]
                    ),
                    raw.dtype,
                    str(getattr(raw, "path", "") or ""),
                )
                for s in batch
            ]
        )[:, None]
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return t.pin_memory() if pin else t

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="organet-tiles") as pool:
        nxt = pool.submit(prepare, batches[0]) if batches else None
        for i, batch in enumerate(batches):
            assert nxt is not None
            xt = nxt.result().to(device, non_blocking=pin)
            nxt = pool.submit(prepare, batches[i + 1]) if i + 1 < len(batches) else None
            acc = None
            for flips, transpose in variants:
                xv = xt.flip(flips) if flips else xt
                xv = xv.transpose(3, 4) if transpose else xv
                xv = xv.contiguous(memory_format=fmt)
                with torch.autocast(device.type, dtype=_AUTOCAST.get(prec, torch.bfloat16), enabled=prec != "fp32"):
                    logits = model(xv)
                pv = torch.softmax(logits.float(), dim=1)[:, 1]
                pv = pv.transpose(2, 3) if transpose else pv  # (N, z, y, x): undo in reverse order
                pv = pv.flip([a - 1 for a in flips]) if flips else pv
                acc = pv if acc is None else acc + pv
            assert acc is not None
            prob = (acc / len(variants) if len(variants) > 1 else acc).cpu().numpy()
            for s, p in zip(batch, prob):
                write(s, p)
