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

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    """The global tile grid of a network input shape: tile ``k`` writes the output voxels
    ``[k * step, (k + 1) * step)`` and reads ``[k * step - context, k * step - context + tile_in)``."""

    tile_in: Shape3
    tile_out: Shape3
    step: Shape3

    @property
    def context(self) -> Shape3:
        c = [(i - o) // 2 for i, o in zip(self.tile_in, self.tile_out)]
        return (c[0], c[1], c[2])

    def covering(
        self, lo: Sequence[int], hi: Sequence[int], anchor: Sequence[int] = (0, 0, 0)
    ) -> tuple[Shape3, Shape3, list[Shape3]]:
        """Tiles of the grid through ``anchor`` whose outputs cover ``[lo, hi)``:
        (buffer origin, buffer shape, tile output starts)."""
        k0 = [math.floor((a - o) / s) for a, o, s in zip(lo, anchor, self.step)]
        k1 = [math.ceil((b - o) / s) for b, o, s in zip(hi, anchor, self.step)]
        org = [o + k * s for o, k, s in zip(anchor, k0, self.step)]
        shape = [(b - a) * s for a, b, s in zip(k0, k1, self.step)]
        starts = [
            (org[0] + k[0] * self.step[0], org[1] + k[1] * self.step[1], org[2] + k[2] * self.step[2])
            for k in itertools.product(*(range(b - a) for a, b in zip(k0, k1)))
        ]
        return (org[0], org[1], org[2]), (shape[0], shape[1], shape[2]), starts

    def count(self, lo: Sequence[int], hi: Sequence[int], anchor: Sequence[int] = (0, 0, 0)) -> int:
        """Number of tiles that cover ``[lo, hi)``."""
        return math.prod(
            math.ceil((b - o) / s) - math.floor((a - o) / s) for a, b, o, s in zip(lo, hi, anchor, self.step)
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


def default_tile_shape(cfg: UNetConfig, roi_shape: Sequence[int], target: int = 96) -> Shape3:
    """A valid tile input shape whose output is about ``target`` voxels per axis
    (smaller along axes where the ROI is small), for reasonable memory use."""
    sizes = valid_sizes(cfg, max_size=4 * target + 400)
    shape = []
    for axis, r in enumerate(roi_shape):
        f = cfg.total_factor[axis]
        want = min(target, int(r))
        cand = [i for i, o in sizes if o >= want and (o // f) * f > 0]
        shape.append(cand[0] if cand else sizes[-1][0])
    return (shape[0], shape[1], shape[2])


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


@torch.no_grad()
def run_tiles(
    model: UNet,
    raw: ArrayLike3D,
    normalization: Normalization,
    grid: TileGrid,
    starts: Sequence[Shape3],
    write: Callable[[Shape3, np.ndarray], None],
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    tta: str | None = None,
) -> None:
    """Run ``model`` on the tiles with output starts ``starts`` and hand each tile's
    foreground probability (float32, shape ``grid.step``) to ``write(out_start, prob)``.

    bf16 autocast is used on CUDA, fp32 elsewhere. ``tta``: None (off), ``"mirror"``
    (mean over the 8 mirror combinations) or ``"mirror+transpose"`` (16; needs a tile
    square in y, x).
    """
    device = torch.device(device)
    model = model.to(device).eval()
    autocast = device.type == "cuda"
    variants = tta_variants(tta, grid.tile_in)
    ctx, step = grid.context, grid.step
    for b in range(0, len(starts), batch_size):
        batch = starts[b : b + batch_size]
        x = np.stack(
            [
                normalization.apply(
                    read_with_context(
                        raw, [a - c for a, c in zip(s, ctx)], [a - c + t for a, c, t in zip(s, ctx, grid.tile_in)]
                    ),
                    raw.dtype,
                )
                for s in batch
            ]
        )[:, None]
        xt = torch.from_numpy(x).to(device)
        acc = None
        for flips, transpose in variants:
            xv = xt.flip(flips) if flips else xt
            xv = xv.transpose(3, 4) if transpose else xv
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(xv)
            pv = torch.softmax(logits.float(), dim=1)[:, 1]
            pv = pv.transpose(2, 3) if transpose else pv  # (N, z, y, x): undo in reverse order
            pv = pv.flip([a - 1 for a in flips]) if flips else pv
            acc = pv if acc is None else acc + pv
        assert acc is not None
        prob = (acc / len(variants) if len(variants) > 1 else acc).cpu().numpy()
        for s, p in zip(batch, prob):
            write(s, np.ascontiguousarray(p[: step[0], : step[1], : step[2]]))
