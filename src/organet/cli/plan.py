"""``organet plan``: the valid tiles of a model, their memory and useful fraction, and the tile predict would pick."""

from __future__ import annotations

from typing import Annotated

import typer

from organet.cli.errors import handle_errors
from organet.cli.options import parse_roi_options
from organet.cli.output import console, say

ROWS = 16
"""Rows of the table (an even selection of the valid tiles)."""


@handle_errors
def plan(
    model: Annotated[str, typer.Option(help="checkpoint (.pt) or a model name from `organet models list`")],
    shape: Annotated[
        tuple[int, int, int] | None, typer.Option(help="region to plan for (voxels of the model grid, z y x)")
    ] = None,
    input: Annotated[
        str | None, typer.Option("--input", help="plan for this volume (or its --roi-vox/--roi-nm) instead")
    ] = None,
    roi_vox: Annotated[str | None, typer.Option("--roi-vox", help="ROI in voxels: z0:z1,y0:y1,x0:x1")] = None,
    roi_nm: Annotated[str | None, typer.Option("--roi-nm", help="ROI in nm (world coordinates)")] = None,
    memory_gib: Annotated[
        float | None,
        typer.Option(help="memory for one forward pass (GiB); default as organet predict: 60 % of the available RAM"),
    ] = None,
    precision: Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16")] = "auto",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N]")] = "auto",
    max_size: Annotated[int, typer.Option(help="largest tile input listed (voxels per axis)")] = 500,
) -> None:
    """Valid tiles of MODEL with their estimated memory and useful fraction; with a region (--shape or
    --input), the tiles it needs, their work, and the tile `organet predict` picks (least work within memory)."""
    from organet.cli.tables import plan_table
    from organet.errors import InputError
    from organet.model.registry import resolve_model
    from organet.predict import Predictor
    from organet.predict.plan import candidate_tiles, plan_for, valid_tile_sizes

    pred = Predictor.from_checkpoint(resolve_model(model), device=device, precision=precision, memory_gib=memory_gib)
    if shape is not None and input is not None:
        raise InputError("give --shape or --input, not both")
    region = None
    if input is not None:
        from organet.volumes import open_volume

        vol = open_volume(input)
        roi = parse_roi_options(vol, roi_vox, roi_nm)
        region = pred.model_region(vol, roi if roi is not None else vol.roi).shape
    elif shape is not None:
        if any(s < 1 for s in shape):
            raise InputError(f"--shape must be 3 positive voxel counts, got {shape}")
        region = (int(shape[0]), int(shape[1]), int(shape[2]))
    arch, prec, budget = pred.architecture, pred.resolved_precision(), pred.memory_bytes()
    if region is None:
        sizes = valid_tile_sizes(arch, max_size)
        n = min(len(s) for s in sizes)
        tiles = [(sizes[0][i], sizes[1][i], sizes[2][i]) for i in range(n)]
        plans = []
        for t in tiles:
            try:
                plans.append(plan_for(arch, t, t, 1, prec))
            except InputError:  # output smaller than the downsampling factor
                continue
        fitting = [p for p in plans if p.memory <= budget]
        chosen = fitting[-1] if fitting else None
    else:
        plans = [plan_for(arch, t, region, 1, prec) for t in candidate_tiles(arch, region, max_size)]
        chosen = pred.tile_plan(region)
    if len(plans) > ROWS:  # an even selection, always with the smallest, the largest and the plan
        keep = {round(i * (len(plans) - 1) / (ROWS - 1)) for i in range(ROWS)}
        plans = [p for i, p in enumerate(plans) if i in keep or (chosen is not None and p.tile_in == chosen.tile_in)]
    if chosen is not None and all(p.tile_in != chosen.tile_in for p in plans):
        plans = sorted([*plans, chosen], key=lambda p: p.tile_in)
    console.print(plan_table(plans, chosen, budget, region))
    if chosen is not None:
        what = "largest tile within memory" if region is None else "least work within memory"
        say(f"{what}: {'x'.join(map(str, chosen.tile_in))} ({prec}, {100 * chosen.useful:.1f} % useful)")


__all__ = ["plan"]
