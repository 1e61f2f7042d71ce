"""``organet instances``: connected components over the whole volume, touching objects split by a
seeded watershed (``--split watershed``), size filter, object table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from organet.cli.errors import handle_errors
from organet.cli.options import (
    ClusterOptions,
    Overwrite,
    with_cluster_options,
)
from organet.cli.output import say
from organet.errors import InputError
from organet.volumes.geometry import check_same_voxel_size

SPLIT = "Splitting touching objects (--split watershed)"
FILTER = "Dropping false objects"


@handle_errors
@with_cluster_options
def instances(
    mask: Annotated[
        str, typer.Argument(help="binary mask or probability (e.g. OUT.zarr/probability/labels/mask), any volume form")
    ],
    output: Annotated[Path, typer.Option(help="output folder: labels.zarr, objects.csv, objects.parquet")],
    min_size: Annotated[float, typer.Option("--min-size", help="drop objects smaller than this volume (nm³)")] = 0.0,
    raw: Annotated[str | None, typer.Option(help="raw volume for the mean intensity (aligned by nm)")] = None,
    connectivity: Annotated[int, typer.Option(help="1 faces (scipy's default), 2 +edges, 3 +corners")] = 1,
    threshold: Annotated[float, typer.Option(help="probability threshold (uint8 = value/255; masks > 0)")] = 0.5,
    block: Annotated[tuple[int, int, int], typer.Option(help="block shape (voxels, z y x)")] = (128, 128, 128),
    voxel_size: Annotated[
        tuple[float, float, float] | None, typer.Option(help="nm (z, y, x); overrides the metadata of both volumes")
    ] = None,
    retries: Annotated[int, typer.Option(help="retries per failing block")] = 2,
    split: Annotated[
        str, typer.Option(help="none: connected components; watershed: split touching objects (seeded watershed)")
    ] = "none",
    seed_distance: Annotated[
        float,
        typer.Option(
            "--seed-distance",
            help="--split watershed: seeds are the parts deeper than this (nm) inside the mask; a neck thinner "
            "than twice this splits",
            rich_help_panel=SPLIT,
        ),
    ] = 100.0,
    min_seed_size: Annotated[
        float,
        typer.Option(
            "--min-seed-size", help="--split watershed: ignore seeds smaller than this (nm³)", rich_help_panel=SPLIT
        ),
    ] = 0.0,
    context: Annotated[
        float,
        typer.Option(
            help="--split watershed: read this far (nm) around each block; objects larger than a block plus this "
            "are reported (their split may differ at block faces)",
            rich_help_panel=SPLIT,
        ),
    ] = 400.0,
    seed_threshold: Annotated[
        float | None,
        typer.Option(
            help="--split watershed on a probability: seeds from the mask p >= this (stricter than --threshold "
            "opens faint seams between touching objects)",
            rich_help_panel=SPLIT,
        ),
    ] = None,
    min_radius: Annotated[
        float,
        typer.Option(
            "--min-radius",
            help="drop objects with no voxel this far (nm) from the background: thinner than twice this "
            "(sheets and threads along membranes); 0: keep all",
            rich_help_panel=FILTER,
        ),
    ] = 0.0,
    min_mean_probability: Annotated[
        float | None,
        typer.Option(
            "--min-mean-probability",
            help="drop objects whose mean probability is below this (needs a probability input)",
            rich_help_panel=FILTER,
        ),
    ] = None,
    overwrite: Overwrite = False,
    dask: ClusterOptions = ClusterOptions(),
) -> None:
    """Organelle instances: connected components over the whole volume, a size filter in nm³, a table.

    Components are labelled blockwise and merged across blocks; each object gets a row in objects.csv/.parquet.
    With --split watershed, touching objects are split: seeds are the connected cores deeper than
    --seed-distance nm in the mask (distance transform in nm, anisotropic voxels allowed), flooded
    back over the mask by a watershed of the distance; components without a seed stay whole.
    --min-radius and --min-mean-probability drop false objects that are too thin or too unsure
    (after the split, like --min-size); the table has each object's mean probability.
    """
    from organet.analyze.instances import ObjectFilter, label_instances
    from organet.analyze.split import METHODS, SplitParams
    from organet.volumes import open_volume

    if split not in METHODS:
        raise InputError(f"--split {split!r}: expected one of {', '.join(METHODS)}")
    params = SplitParams(seed_distance, min_seed_size, context, seed_threshold) if split == "watershed" else None
    object_filter = ObjectFilter(min_radius, min_mean_probability)

    m = open_volume(mask, voxel_size=voxel_size)
    r = None
    if raw is not None:
        r = open_volume(raw, voxel_size=voxel_size)
        check_same_voxel_size(r.voxel_size, m.voxel_size, f"the raw volume {raw}", f"the mask {mask}")
        r = r.crop_nm(*m.bounds_nm)
    with dask.client() as client:
        res = label_instances(
            m,
            output,
            raw=r,
            min_size_nm3=min_size,
            connectivity=connectivity,
            threshold=threshold,
            block_shape=block,
            client=client,
            retries=retries,
            overwrite=overwrite,
            split=params,
            object_filter=object_filter,
        )
    seeds = f", {res.seeds} seeds" if params is not None else ""
    filtered = f", {res.removed_filtered} too thin or unsure removed" if object_filter.active else ""
    say(
        f"wrote {res.output}: {res.objects} objects ({res.removed_small} smaller than {min_size:g} nm³ "
        f"removed{filtered}{seeds}), labels.zarr, objects.csv, objects.parquet; {res.seconds:.1f} s"
    )
    if res.note:
        say(res.note)
