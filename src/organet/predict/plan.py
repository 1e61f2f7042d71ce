"""Tile planning: the network input shape (and batch) that predicts a region fastest within a memory budget.

A U-Net with valid convolutions spends most of its work on context: a 204³ ASEM tile
yields 110³ outputs (16 % of its input), a 300³ tile 206³ (32 %). The cost of a region
is the number of tiles times the work of one tile, so the best tile is the largest that
fits in memory, unless a smaller one covers the region with fewer wasted voxels.
:func:`plan_tiles` searches the valid tiles for the least total work (multiply-adds of
every convolution, counted exactly from the architecture) among those whose estimated
peak memory fits the budget; :func:`forward_memory` walks the forward pass and adds up
the tensors alive at its worst moment.

Shapes are in voxels, axis order (z, y, x); memory in bytes.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from organet.errors import InputError
from organet.model.unet import UNetConfig, output_shape
from organet.volumes.geometry import Shape3

PRECISIONS = ("fp32", "bf16", "fp16")
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

WORKSPACE_FACTOR = 1.25
"""Peak memory of a forward pass over the sum of the live tensors: the backend's
reordered copies and workspaces. With it the estimate is within 6 % of the measured peak
for tiles of 140³ and more on CPU (``benchmarks/tiles.py``, docs/benchmarks.md)."""

FIXED_OVERHEAD = 128 * 2**20
"""Bytes a forward pass adds whatever the tile (the backend's buffers; measured ~80 MiB on CPU)."""

MAX_TILE = 700
"""Largest tile input (voxels per axis) the planner considers."""


def _smallest_cube(cfg: UNetConfig) -> int:
    for s in range(1, 4 * MAX_TILE):
        if output_shape(cfg, (s, s, s)) is not None:
            return s
    raise InputError(f"the network has no valid cubic input below {4 * MAX_TILE} voxels")


def valid_tile_sizes(cfg: UNetConfig, max_size: int = MAX_TILE) -> tuple[list[int], list[int], list[int]]:
    """Valid input sizes (voxels) per axis (z, y, x) up to ``max_size`` (the arithmetic of
    each axis is independent of the others)."""
    cube = _smallest_cube(cfg)
    sizes: list[list[int]] = []
    for axis in range(3):
        ok = []
        for s in range(1, max_size + 1):
            probe = [cube, cube, cube]
            probe[axis] = s
            if output_shape(cfg, probe) is not None:
                ok.append(s)
        sizes.append(ok)
    return sizes[0], sizes[1], sizes[2]


@dataclass(frozen=True)
class _Conv:
    in_ch: int
    out_ch: int
    out_shape: Shape3
    kernel: int


def _walk(cfg: UNetConfig, tile: Sequence[int]) -> tuple[list[_Conv], int]:
    """The convolutions of a forward pass over ``tile`` and the peak number of tensor
    elements alive at once (batch 1, no gradients; the input tensor and every skip
    connection stay alive until the pass ends, as in :meth:`UNet.forward`)."""
    if output_shape(cfg, tile) is None:
        raise InputError(f"tile {tuple(tile)} is not a valid network input")
    c = cfg.kernel_size - 1
    fm = [cfg.num_fmaps * cfg.fmap_inc_factor**lvl for lvl in range(cfg.num_levels)]
    convs: list[_Conv] = []
    peak = 0

    def n(ch: int, shape: Sequence[int]) -> int:
        return ch * math.prod(shape)

    def conv_pass(ch_in: int, ch_out: int, shape: list[int], held: int) -> list[int]:
        nonlocal peak
        x = n(ch_in, shape)
        for i in range(cfg.convs_per_level):
            out = [s - c for s in shape]
            convs.append(_Conv(ch_in if i == 0 else ch_out, ch_out, (out[0], out[1], out[2]), cfg.kernel_size))
            y = n(ch_out, out)
            peak = max(peak, held + x + y)
            x, shape = y, out
        return shape

    held = n(cfg.in_channels, tile)
    shape = [int(s) for s in tile]
    ch = cfg.in_channels
    for lvl, f in enumerate(cfg.downsample_factors):
        shape = conv_pass(ch, fm[lvl], shape, held if lvl else 0)
        held += n(fm[lvl], shape)  # the skip
        pooled = [s // k for s, k in zip(shape, f)]
        peak = max(peak, held + n(fm[lvl], pooled))
        shape, ch = pooled, fm[lvl]
    shape = conv_pass(ch, fm[-1], shape, held)
    ch = fm[-1]
    for lvl in reversed(range(len(cfg.downsample_factors))):
        factor = [1, 1, 1]
        for g in cfg.downsample_factors[lvl:]:
            factor = [a * b for a, b in zip(factor, g)]
        upsampled = [s * k for s, k in zip(shape, cfg.downsample_factors[lvl])]
        peak = max(peak, held + n(ch, shape) + n(ch, upsampled))
        cropped = [((s - cfg.conv_crop) // q) * q + cfg.conv_crop for s, q in zip(upsampled, factor)]
        peak = max(peak, held + n(ch, upsampled) + n(fm[lvl] + ch, cropped))
        shape = conv_pass(fm[lvl] + ch, fm[lvl], cropped, held)
        ch = fm[lvl]
    out = [s - (cfg.final_kernel_size - 1) for s in shape]
    convs.append(_Conv(ch, cfg.out_channels, (out[0], out[1], out[2]), cfg.final_kernel_size))
    peak = max(peak, held + n(ch, shape) + n(cfg.out_channels, out))
    return convs, peak


def forward_macs(cfg: UNetConfig, tile: Sequence[int]) -> int:
    """Multiply-adds of one forward pass over ``tile`` (batch 1): the work a tile costs."""
    convs, _ = _walk(cfg, tile)
    return sum(cv.in_ch * cv.out_ch * cv.kernel**3 * math.prod(cv.out_shape) for cv in convs)


def forward_memory(cfg: UNetConfig, tile: Sequence[int], batch: int = 1, precision: str = "fp32") -> int:
    """Estimated peak memory (bytes) of a forward pass over ``batch`` tiles: the tensors
    alive at the worst moment (:data:`WORKSPACE_FACTOR` for the backend's copies), the
    weights, and the fp32 input and probabilities."""
    if precision not in BYTES:
        raise InputError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    _, peak = _walk(cfg, tile)
    out = output_shape(cfg, tile)
    assert out is not None
    fm = [cfg.num_fmaps * cfg.fmap_inc_factor**lvl for lvl in range(cfg.num_levels)]
    params = sum(
        (fm[lvl - 1] if lvl else cfg.in_channels) * fm[lvl] * cfg.kernel_size**3 * 2 for lvl in range(cfg.num_levels)
    )
    io = batch * 4 * (math.prod(tile) + 2 * math.prod(out))
    return int(WORKSPACE_FACTOR * batch * peak * BYTES[precision] + 4 * params * 3 + io + FIXED_OVERHEAD)


@dataclass(frozen=True)
class TilePlan:
    """One tile choice for a region.

    ``tile_in``/``tile_out``: network input/output (voxels); ``step``: the tile grid's
    step (the output rounded down to the downsampling factor); ``tiles``: tiles covering
    the region (the last on each axis writes its whole output,
    :class:`~organet.predict.tiled.TileGrid`); ``useful``: fraction of a tile's input that becomes grid output;
    ``memory``: estimated peak bytes per forward pass; ``work``: multiply-adds for the
    region (tiles x per-tile work).
    """

    tile_in: Shape3
    tile_out: Shape3
    step: Shape3
    batch: int
    tiles: int
    useful: float
    memory: int
    work: int


def plan_for(
    cfg: UNetConfig, tile: Sequence[int], region: Sequence[int], batch: int = 1, precision: str = "fp32"
) -> TilePlan:
    """The :class:`TilePlan` of ``tile`` over a region of shape ``region`` (voxels)."""
    from organet.predict.tiled import tile_grid

    grid = tile_grid(cfg, tile)
    per_axis = grid.with_extent(region).tiles_per_axis()
    assert per_axis is not None
    t, out, step, tiles = grid.tile_in, grid.tile_out, grid.step, math.prod(per_axis)
    return TilePlan(
        t,
        out,
        step,
        batch,
        tiles,
        math.prod(step) / math.prod(t),
        forward_memory(cfg, t, batch, precision),
        tiles * forward_macs(cfg, t),
    )


MAX_TILES_PER_AXIS = 8
"""Tile counts per axis tried in every combination (beyond that, near-cubes only)."""


def candidate_tiles(cfg: UNetConfig, region: Sequence[int], max_size: int = MAX_TILE) -> list[Shape3]:
    """Tiles worth considering for ``region`` (voxels): on each axis, the smallest valid size
    that covers the region with 1, 2, … :data:`MAX_TILES_PER_AXIS` tiles, in every combination
    (a thin region gets a thin tile, a 220³ region may get 2 tiles of 316 x 316 x 212), plus
    every near-cube size clipped on each axis to the size that covers the region in one tile."""
    sizes = valid_tile_sizes(cfg, max_size)
    f = cfg.total_factor
    cube = [s[0] for s in sizes]
    per_axis: list[dict[int, int]] = []
    covering = []
    for axis in range(3):
        best: dict[int, int] = {}
        for s in sizes[axis]:
            probe = list(cube)
            probe[axis] = s
            o = output_shape(cfg, probe)
            if o is None or o[axis] < f[axis]:
                continue
            out, step = o[axis], (o[axis] // f[axis]) * f[axis]
            r = int(region[axis])
            k = 1 if r <= out else math.ceil((r - out) / step) + 1
            if k <= MAX_TILES_PER_AXIS and k not in best:
                best[k] = s
        per_axis.append(best)
        covering.append(best.get(1, sizes[axis][-1]))
    out_set: set[Shape3] = set()
    for combo in itertools.product(*(sorted(b.values()) for b in per_axis)):
        out_set.add((combo[0], combo[1], combo[2]))
    for s in sorted(set(sizes[0]) | set(sizes[1]) | set(sizes[2])):
        near = [min(min(sizes[axis], key=lambda v: (abs(v - s), v)), covering[axis]) for axis in range(3)]
        cand = (near[0], near[1], near[2])
        o = output_shape(cfg, cand)
        if o is not None and all(v >= k for v, k in zip(o, f)):
            out_set.add(cand)
    return sorted(out_set, key=lambda t: (math.prod(t), t))


def plan_tiles(
    cfg: UNetConfig,
    region: Sequence[int],
    memory_bytes: int,
    *,
    precision: str = "fp32",
    max_batch: int = 1,
    max_size: int = MAX_TILE,
) -> TilePlan:
    """The tile (and batch, up to ``max_batch``) with the least work for ``region``
    whose estimated memory fits ``memory_bytes``; ties go to the smaller tile.

    Raises :class:`InputError` when not even the smallest tile fits.
    """
    best: TilePlan | None = None
    for t in candidate_tiles(cfg, region, max_size):
        p = plan_for(cfg, t, region, 1, precision)
        if p.memory > memory_bytes:
            continue
        if best is None or p.work < best.work:
            best = p
    if best is None:
        smallest = plan_for(cfg, candidate_tiles(cfg, region, max_size)[0], region, 1, precision)
        raise InputError(
            f"no tile fits the memory budget of {memory_bytes / 2**30:.2f} GiB: the smallest valid tile "
            f"{smallest.tile_in} needs {smallest.memory / 2**30:.2f} GiB (--memory-gib raises the budget)"
        )
    batch = 1
    while batch < min(max_batch, best.tiles):
        if forward_memory(cfg, best.tile_in, batch + 1, precision) > memory_bytes:
            break
        batch += 1
    return plan_for(cfg, best.tile_in, region, batch, precision) if batch > 1 else best


def memory_budget(device: str = "cpu", fraction: float | None = None, workers: int = 1) -> int:
    """Default memory budget (bytes) for one process's forward passes on ``device``:
    60 % of the available RAM on CPU, 80 % of the free memory of a CUDA device, divided by
    the processes sharing it (``workers``)."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int((fraction if fraction is not None else 0.8) * free)
    try:
        import psutil

        avail = int(psutil.virtual_memory().available)
    except ImportError:
        avail = int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return int((fraction if fraction is not None else 0.6) * avail / max(1, workers))


__all__ = [
    "BYTES",
    "PRECISIONS",
    "TilePlan",
    "candidate_tiles",
    "forward_macs",
    "forward_memory",
    "memory_budget",
    "plan_for",
    "plan_tiles",
    "valid_tile_sizes",
]
