"""Tiled prediction that equals one untiled forward pass.

The ROI to predict is covered by output tiles placed on a grid whose step is a
multiple of the network's total downsampling factor (8 for the ASEM net), so
every tile sees the max-pooling grid aligned exactly as a single forward pass
over the whole ROI would. Each tile's input is read with its context from the
real neighbourhood of the volume; only beyond the volume border is the raw data
mirrored. Memory is bounded by ``batch_size`` tiles.

Shapes and offsets are in voxels, axis order (z, y, x).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch

from organet.model.unet import UNet, UNetConfig, output_shape
from organet.preprocess.normalize import Normalization

Shape3 = tuple[int, int, int]


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
class TilePlan:
    """Output tiles covering ``roi_offset + [0, roi_shape)``.

    ``tile_in``/``tile_out`` are the network's input/output shapes; ``step`` is
    the output written per tile (tile_out rounded down to the downsampling
    factor). Tile ``k`` covers output voxels ``roi_offset + k*step`` onward.
    """

    roi_offset: Shape3
    roi_shape: Shape3
    tile_in: Shape3
    tile_out: Shape3
    step: Shape3

    @property
    def context(self) -> Shape3:
        return tuple((i - o) // 2 for i, o in zip(self.tile_in, self.tile_out))  # type: ignore[return-value]

    @property
    def grid(self) -> Shape3:
        return tuple(math.ceil(r / s) for r, s in zip(self.roi_shape, self.step))  # type: ignore[return-value]

    def __len__(self) -> int:
        return math.prod(self.grid)

    def tiles(self) -> Iterator[tuple[Shape3, Shape3, Shape3]]:
        """Yields (input_start, output_start, write_shape) in volume voxels."""
        ctx = self.context
        for k in itertools.product(*(range(g) for g in self.grid)):
            out_start = tuple(o + i * s for o, i, s in zip(self.roi_offset, k, self.step))
            write = tuple(
                min(s, o + r - a) for s, o, r, a in zip(self.step, self.roi_offset, self.roi_shape, out_start)
            )
            in_start = tuple(a - c for a, c in zip(out_start, ctx))
            yield in_start, out_start, write  # type: ignore[misc]


def plan_tiles(cfg: UNetConfig, tile_in: Sequence[int], roi_offset: Sequence[int], roi_shape: Sequence[int]) -> TilePlan:
    """Tile plan for a network input shape; raises ValueError if the shape is invalid."""
    tile_out = output_shape(cfg, tile_in)
    if tile_out is None:
        raise ValueError(f"tile input shape {tuple(tile_in)} is not a valid input for this network")
    step = tuple((o // f) * f for o, f in zip(tile_out, cfg.total_factor))
    if any(s == 0 for s in step):
        raise ValueError(
            f"tile output {tile_out} is smaller than the downsampling factor {cfg.total_factor}; use a larger tile"
        )
    return TilePlan(tuple(roi_offset), tuple(roi_shape), tuple(tile_in), tile_out, step)  # type: ignore[arg-type]


def default_tile_shape(cfg: UNetConfig, roi_shape: Sequence[int], target: int = 96) -> Shape3:
    """A valid tile input shape whose output is about ``target`` voxels per axis
    (smaller along axes where the ROI is small), for reasonable memory use."""
    from organet.model.unet import valid_sizes

    sizes = valid_sizes(cfg, max_size=4 * target + 400)
    shape = []
    for r in roi_shape:
        want = min(target, r)
        cand = [i for i, o in sizes if o >= want and (o // cfg.total_factor[0]) * cfg.total_factor[0] > 0]
        shape.append(cand[0] if cand else sizes[-1][0])
    return tuple(shape)  # type: ignore[return-value]


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def predict_tiles(
    model: UNet,
    raw: ArrayLike3D,
    normalization: Normalization,
    plan: TilePlan,
    write: Callable[[Shape3, np.ndarray], None],
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    tiles: Sequence[tuple[Shape3, Shape3, Shape3]] | None = None,
    progress: Callable[[int], None] | None = None,
    tta: str | None = None,
) -> None:
    """Run ``model`` over the tiles of ``plan`` and hand each tile's foreground
    probability (float32, shape ``write_shape``) to ``write(out_start, prob)``.

    ``tiles`` restricts the run to a subset of ``plan.tiles()`` (for blockwise
    and resumable drivers). bf16 autocast is used on CUDA, fp32 elsewhere.
    ``tta``: None (off), ``"mirror"`` (mean over the 8 mirror combinations) or
    ``"mirror+transpose"`` (also the y-x transpose: 16; needs a tile square in y, x).
    """
    device = torch.device(device)
    model = model.to(device).eval()
    todo = list(plan.tiles()) if tiles is None else list(tiles)
    autocast = device.type == "cuda"
    variants = tta_variants(tta, plan.tile_in)
    for b in range(0, len(todo), batch_size):
        batch = todo[b : b + batch_size]
        x = np.stack(
            [
                normalization.apply(
                    read_with_context(raw, s, [a + t for a, t in zip(s, plan.tile_in)]), raw.dtype
                )
                for s, _, _ in batch
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
        for (_, out_start, wshape), p in zip(batch, prob):
            write(out_start, np.ascontiguousarray(p[: wshape[0], : wshape[1], : wshape[2]]))
        if progress is not None:
            progress(len(batch))


TTA_MODES = ("mirror", "mirror+transpose")


def tta_variants(tta: str | None, tile_in: Sequence[int]) -> list[tuple[list[int], bool]]:
    """Test-time augmentations as (flipped tensor dims of (N, C, z, y, x), transpose y-x).

    The identity comes first; raises ValueError for an unknown mode or a transpose of
    a tile that is not square in (y, x).
    """
    if tta is None or tta in ("", "none", "off"):
        return [([], False)]
    if tta not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r}; expected one of {TTA_MODES}")
    flips = [[2 + a for a, f in enumerate(c) if f] for c in itertools.product((False, True), repeat=3)]
    out = [(f, False) for f in flips]
    if tta == "mirror+transpose":
        if tile_in[1] != tile_in[2]:
            raise ValueError(f"--tta mirror+transpose needs a tile with equal y and x sizes, got {tuple(tile_in)}")
        out += [(f, True) for f in flips]
    return out


def predict_array(
    model: UNet,
    raw: ArrayLike3D,
    normalization: Normalization,
    roi_offset: Sequence[int],
    roi_shape: Sequence[int],
    tile_in: Sequence[int] | None = None,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Foreground probability (float32) over an ROI, in memory. For ROIs that fit."""
    cfg = model.cfg
    tile_in = tuple(tile_in) if tile_in is not None else default_tile_shape(cfg, roi_shape)
    plan = plan_tiles(cfg, tile_in, roi_offset, roi_shape)
    out = np.zeros(tuple(roi_shape), np.float32)

    def write(out_start: Shape3, p: np.ndarray) -> None:
        sl = tuple(slice(a - o, a - o + s) for a, o, s in zip(out_start, roi_offset, p.shape))
        out[sl] = p

    predict_tiles(model, raw, normalization, plan, write, batch_size, device, progress=progress)
    return out


def probability_to_uint8(p: np.ndarray) -> np.ndarray:
    """Foreground probability in [0, 1] -> uint8 0..255 (rounded).

    ``u >= 128`` exactly when ``p >= 0.5``, so thresholding either gives the same mask.
    """
    return np.round(np.clip(p, 0.0, 1.0) * 255.0).astype(np.uint8)
