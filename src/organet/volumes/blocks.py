"""The one block plan: an ROI cut into chunk-aligned blocks, each with its read context.

Every blockwise pass (prediction, evaluation, instances, preprocessing, conversion,
pyramids) iterates a :class:`BlockPlan`. Blocks start at the ROI origin and are whole
multiples of the output chunks, so no two blocks ever write the same chunk. A block
shape that is not a multiple of the chunks is rounded to the nearest one that is, and
the plan says so (:attr:`BlockPlan.note`) instead of refusing.

Shapes, offsets and contexts are in voxels of the volume, axis order (z, y, x);
:meth:`BlockPlan.context_nm` gives the context in nm.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from organet.errors import InputError

from .geometry import Shape3, as_int3, fmt_vec
from .roi import Roi


@dataclass(frozen=True)
class Block:
    """One block: ``index`` in the block grid, ``roi`` (the voxels it writes, in volume
    voxels) and ``context`` (voxels read around it on each side)."""

    index: Shape3
    roi: Roi
    context: Shape3 = (0, 0, 0)

    @property
    def read_roi(self) -> Roi:
        """The region to read: ``roi`` grown by ``context`` (may extend past the volume)."""
        return self.roi.grow(self.context)

    @property
    def name(self) -> str:
        """``"z_y_x"`` of the index (ledger entries, task keys)."""
        return "_".join(str(i) for i in self.index)

    def local(self, origin: Sequence[int]) -> tuple[slice, slice, slice]:
        """The block's voxels as slices relative to ``origin`` (e.g. the ROI offset of an output array)."""
        b, e = self.roi.offset, self.roi.end
        return (
            slice(b[0] - origin[0], e[0] - origin[0]),
            slice(b[1] - origin[1], e[1] - origin[1]),
            slice(b[2] - origin[2], e[2] - origin[2]),
        )


@dataclass(frozen=True)
class BlockPlan:
    """Blocks of ``block_shape`` covering ``roi`` from its origin (the last ones clipped).

    ``chunks`` is the chunk shape of the arrays the blocks write (clipped to the ROI);
    ``context`` is read around every block. ``note`` says how a requested block shape
    was adjusted ("" when it was used as given or none was given).
    """

    roi: Roi
    block_shape: Shape3
    chunks: Shape3
    context: Shape3 = (0, 0, 0)
    note: str = field(default="", compare=False)

    @property
    def grid(self) -> Shape3:
        g = [math.ceil(r / b) if r else 0 for r, b in zip(self.roi.shape, self.block_shape)]
        return (g[0], g[1], g[2])

    def __len__(self) -> int:
        return math.prod(self.grid)

    def indices(self) -> Iterator[Shape3]:
        """Block indices in raster order (z slowest)."""
        for k in itertools.product(*(range(g) for g in self.grid)):
            yield (k[0], k[1], k[2])

    def __iter__(self) -> Iterator[Block]:
        return (self.block(i) for i in self.indices())

    def block(self, index: Sequence[int]) -> Block:
        """The block at ``index`` (clipped to the ROI)."""
        idx = as_int3(index, "block index", minimum=0)
        start = [o + i * b for o, i, b in zip(self.roi.offset, idx, self.block_shape)]
        stop = [min(s + b, e) for s, b, e in zip(start, self.block_shape, self.roi.end)]
        return Block(idx, Roi(start, [b - a for a, b in zip(start, stop)]), self.context)

    def context_nm(self, voxel_size: Sequence[float]) -> tuple[float, float, float]:
        """The read context in nm for voxels of ``voxel_size`` (nm, z, y, x)."""
        c = [n * float(v) for n, v in zip(self.context, voxel_size)]
        return (c[0], c[1], c[2])

    def describe(self) -> dict[str, object]:
        return {
            "roi_offset": list(self.roi.offset),
            "roi_shape": list(self.roi.shape),
            "block_shape": list(self.block_shape),
            "chunks": list(self.chunks),
            "context": list(self.context),
        }


def round_block_shape(requested: Sequence[int], unit: Sequence[int], extent: Sequence[int]) -> Shape3:
    """Nearest whole multiple of ``unit`` per axis (at least one unit; an axis that would
    cover ``extent`` is simply ``extent``). Ties round up."""
    out = []
    for r, u, n in zip(requested, unit, extent):
        k = max(1, math.floor(r / u + 0.5))
        out.append(min(k * u, n))
    return (out[0], out[1], out[2])


def plan_blocks(
    roi: Roi,
    chunks: Sequence[int],
    block_shape: Sequence[int] | None = None,
    *,
    context: Sequence[int] = (0, 0, 0),
    unit: Sequence[int] | None = None,
    target: int | Sequence[int] = 256,
    max_bytes: int | None = None,
    itemsize: int = 1,
) -> BlockPlan:
    """Cut ``roi`` (voxels) into blocks aligned to ``chunks``.

    Parameters
    ----------
    roi
        Region to cover, in volume voxels (z, y, x).
    chunks
        Chunk shape (voxels) of the arrays written; clipped to the ROI.
    block_shape
        Requested block shape (voxels). Rounded to the nearest multiple of the block
        unit; :attr:`BlockPlan.note` reports any change.
    context
        Voxels read around each block on every side.
    unit
        The block unit (default: the chunks). A caller whose work comes in larger pieces
        (prediction tiles) passes a multiple of the chunks.
    target
        Default block extent per axis (voxels) when no ``block_shape`` is given.
    max_bytes, itemsize
        Alternative default: blocks as thick as one unit in z and as wide in (y, x) as
        fit in ``max_bytes`` (whole planes when they fit), for streaming passes.
    """
    if roi.empty:
        raise InputError(f"cannot plan blocks over the empty ROI {roi}")
    ch = as_int3(chunks, "chunks", minimum=1)
    ch = (min(ch[0], roi.shape[0]), min(ch[1], roi.shape[1]), min(ch[2], roi.shape[2]))
    u = ch if unit is None else as_int3(unit, "block unit", minimum=1)
    if any(a % c and a < n for a, c, n in zip(u, ch, roi.shape)):
        raise ValueError(f"block unit {u} is not a multiple of the chunks {ch}")  # a defect in the caller
    ctx = as_int3(context, "block context", minimum=0)
    note = ""
    if block_shape is not None:
        req = as_int3(block_shape, "block shape", minimum=1)
        shape = round_block_shape(req, u, roi.shape)
        if shape != tuple(min(r, n) for r, n in zip(req, roi.shape)):
            note = (
                f"block shape {fmt_vec(req)} rounded to {fmt_vec(shape)} voxels "
                f"(a whole multiple of {fmt_vec(u)} per axis)"
            )
    elif max_bytes is not None:
        z = u[0]
        y, x = roi.shape[1], roi.shape[2]
        if z * y * x * itemsize > max_bytes:
            y = max(u[1], (max_bytes // (z * x * itemsize)) // u[1] * u[1])
            if z * y * x * itemsize > max_bytes:
                x = max(u[2], (max_bytes // (z * y * itemsize)) // u[2] * u[2])
        shape = (min(z, roi.shape[0]), min(y, roi.shape[1]), min(x, roi.shape[2]))
    else:
        t = (target,) * 3 if isinstance(target, int) else as_int3(target, "target block shape", minimum=1)
        s = [min(a * math.ceil(max(tt, a) / a), n) for a, tt, n in zip(u, t, roi.shape)]
        shape = (s[0], s[1], s[2])
    return BlockPlan(roi, shape, ch, ctx, note)


__all__ = ["Block", "BlockPlan", "plan_blocks", "round_block_shape"]
