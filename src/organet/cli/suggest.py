"""``organet suggest``: where to annotate next, from the uncertainty of predictions (resumable)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from organet.cli.errors import handle_errors
from organet.cli.options import (
    ClusterOptions,
    Overwrite,
    RoiNm,
    RoiVox,
    VoxelSize,
    parse_roi_options,
    with_cluster_options,
)
from organet.cli.output import console, say
from organet.cli.progress import ProgressBars
from organet.cli.tables import boxes_table
from organet.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from organet.annotate.suggest import Score, Strategy

BOXES = "Boxes"
BLOCKWISE = "Blocks (resumable: rerun the same command after a crash)"


@handle_errors
@with_cluster_options
def suggest(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="probability volumes on one grid (OUT.zarr of `organet predict` = OUT.zarr/probability); "
            "several = checkpoints or TTA variants of one model"
        ),
    ],
    output: Annotated[Path, typer.Option(help="output folder DIR")],
    box_nm: Annotated[
        tuple[float, float, float],
        typer.Option("--box-nm", help="box size in nm (z, y, x); rounded to voxels", rich_help_panel=BOXES),
    ],
    boxes: Annotated[int, typer.Option("--boxes", help="number of boxes K", rich_help_panel=BOXES)] = 5,
    score_name: Annotated[
        str,
        typer.Option(
            "--score",
            help="entropy (of the mean probability) | disagreement (mutual information; >= 2 inputs)",
            rich_help_panel=BOXES,
        ),
    ] = "entropy",
    strategy: Annotated[
        str,
        typer.Option(help="uncertainty (greedy, most uncertain first) | random (baseline)", rich_help_panel=BOXES),
    ] = "uncertainty",
    seed: Annotated[int, typer.Option(help="seed of --strategy random", rich_help_panel=BOXES)] = 0,
    min_spacing_nm: Annotated[
        tuple[float, float, float] | None,
        typer.Option(
            "--min-spacing-nm",
            help="boxes lie at least this far apart on some axis (nm, z y x); default half the box",
            rich_help_panel=BOXES,
        ),
    ] = None,
    roi_vox: RoiVox = None,
    roi_nm: RoiNm = None,
    mask: Annotated[
        str | None,
        typer.Option(help="sample mask volume: a box needs half its voxels in the sample", rich_help_panel=BOXES),
    ] = None,
    mask_rule: Annotated[
        str | None,
        typer.Option(
            help="sample where MASK passes this rule, e.g. '>0', '<250' (default: != 0)",
            rich_help_panel=BOXES,
        ),
    ] = None,
    voxel_size: VoxelSize = None,
    block: Annotated[
        tuple[int, int, int] | None,
        typer.Option(help="block shape (voxels); rounded to whole chunks", rich_help_panel=BLOCKWISE),
    ] = None,
    retries: Annotated[int, typer.Option(help="retries per failing block", rich_help_panel=BLOCKWISE)] = 2,
    overwrite: Overwrite = False,
    dask: ClusterOptions = ClusterOptions(),
) -> None:
    """Suggest where to annotate: the boxes of highest prediction uncertainty.

    Writes DIR/uncertainty.zarr (entropy or disagreement; uint8 = 255 x bits), boxes.csv (voxels, nm and
    --roi-vox text), boxes_napari.csv (a napari shapes layer), overview.png and summary.json.
    """
    from organet.annotate.suggest import open_probability
    from organet.annotate.suggest import suggest as run_suggest
    from organet.predict import SampleMask
    from organet.volumes import open_volume

    if mask_rule is not None and mask is None:
        raise InputError("--mask-rule applies to a --mask volume (give the raw volume as --mask to use its values)")
    ref = open_probability(inputs[0], voxel_size)
    roi = parse_roi_options(ref, roi_vox, roi_nm)
    sample = SampleMask(open_volume(mask, default_voxel_size=voxel_size), mask_rule) if mask is not None else None
    with warnings.catch_warnings(), dask.client() as client, ProgressBars() as progress:
        warnings.simplefilter("always")
        res = run_suggest(
            [ref, *inputs[1:]],
            output,
            box_nm=box_nm,
            k=boxes,
            score=cast("Score", score_name),  # checked by suggest
            strategy=cast("Strategy", strategy),
            seed=seed,
            min_spacing_nm=min_spacing_nm,
            roi=roi,
            sample_mask=sample,
            voxel_size=voxel_size,
            block_shape=block,
            client=client,
            retries=retries,
            overwrite=overwrite,
            progress=progress,
        )
    for note in res.notes:
        say(f"note: {note}")
    if res.already_complete:
        say(f"{res.output} is already complete; nothing to do")
    console.print(boxes_table(res))
    if not res.already_complete:
        captured = "n/a" if res.captured_fraction is None else f"{100 * res.captured_fraction:.1f} %"
        say(
            f"wrote {res.output}: uncertainty.zarr (+{res.pyramid_levels - 1} pyramid levels), boxes.csv, "
            f"boxes_napari.csv, overview.png, summary.json; {len(res.boxes)} boxes, {res.volume_um3:.4g} µm³, "
            f"{captured} of the region's uncertainty; {res.seconds:.1f} s"
        )


__all__ = ["suggest"]
