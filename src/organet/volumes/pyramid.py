"""Multiscale pyramids of OME-Zarr images, built blockwise on the one runner.

Level ``k`` halves level ``k - 1`` per axis with :func:`~organet.volumes.resample.downsample_block`
(``mean`` rounded half up for intensities and probabilities, ``max`` for masks and labels),
until every axis fits in one chunk. Each level is a pass of
:func:`organet.blockwise.run_blocks`, so it runs in-process or on Dask with the same
bytes and resumes from a ledger.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .blocks import Block, plan_blocks
from .geometry import Shape3
from .ome_zarr import create_ome_image, set_levels
from .resample import Mode, downsample_block
from .roi import Roi


def pyramid_shapes(shape: Sequence[int], chunks: Sequence[int], max_levels: int = 8) -> list[Shape3]:
    """Shapes of s0, s1, ... (factor 2 per axis) until every axis fits in one chunk."""
    shapes: list[Shape3] = [(int(shape[0]), int(shape[1]), int(shape[2]))]
    while len(shapes) < max_levels and any(s > c for s, c in zip(shapes[-1], chunks)):
        z, y, x = (max(1, math.ceil(s / 2)) for s in shapes[-1])
        shapes.append((z, y, x))
    return shapes


def _level_block(group: str, level: int, mode: Mode, block: Block) -> None:
    src = zarr.open_array(group, path=f"s{level - 1}", mode="r")
    dst = zarr.open_array(group, path=f"s{level}", mode="r+")
    b, e = block.roi.offset, block.roi.end
    a = np.asarray(src[tuple(slice(2 * lo, min(2 * hi, n)) for lo, hi, n in zip(b, e, src.shape))])
    dst[block.roi.slices()] = downsample_block(a, (2, 2, 2), mode)


def build_pyramid(
    group_path: str,
    mode: Mode,
    *,
    client: Any | None = None,
    retries: int = 2,
    ledger: Any | None = None,
    progress: Any | None = None,
) -> int:
    """Add levels ``s1, s2, ...`` to the OME-Zarr image group at ``group_path`` (which has ``s0``).

    Chunks of every level are those of ``s0`` (clipped). ``ledger``
    (:class:`organet.blockwise.Ledger`) makes the passes resumable. Returns the number
    of levels including ``s0``.
    """
    from organet.blockwise import run_blocks

    group = zarr.open_group(group_path, mode="r+")
    s0 = group["s0"]
    assert isinstance(s0, zarr.Array)
    chunks = tuple(int(c) for c in s0.chunks)
    shapes = pyramid_shapes(s0.shape, chunks)
    for lvl in range(1, len(shapes)):
        stage = f"pyramid {Path(group_path).name} s{lvl}"
        if ledger is None or not ledger.entries(stage):
            create_ome_image(
                group,
                shapes[lvl],
                s0.dtype,
                (1.0, 1.0, 1.0),
                chunks=chunks,
                level=lvl,
                overwrite=True,
                fill_value=s0.fill_value,
            )
        plan = plan_blocks(Roi((0, 0, 0), shapes[lvl]), chunks, target=2 * max(chunks))
        run_blocks(
            functools.partial(_level_block, group_path, lvl, mode),
            plan,
            stage=stage,
            ledger=ledger,
            client=client,
            retries=retries,
            progress=progress,
        )
    set_levels(group, len(shapes), {"pyramid": {"levels": len(shapes), "downsample": mode}})
    return len(shapes)


__all__ = ["build_pyramid", "pyramid_shapes"]
