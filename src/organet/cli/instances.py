"""``organet instances``: connected components over the whole volume, size filter, object table."""

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
from organet.volumes.geometry import check_same_voxel_size


@handle_errors
@with_cluster_options
def instances(
    mask: Annotated[str, typer.Argument(help="binary mask or probability (e.g. OUT.zarr/mask), any volume form")],
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
    overwrite: Overwrite = False,
    dask: ClusterOptions = ClusterOptions(),
) -> None:
    """Organelle instances: connected components over the whole volume, a size filter in nm³, a table.

    Components are labelled blockwise and merged across blocks; each object gets a row in objects.csv/.parquet.
    """
    from organet.analyze.instances import label_instances
    from organet.volumes import open_volume

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
        )
    say(
        f"wrote {res.output}: {res.objects} objects ({res.removed_small} smaller than {min_size:g} nm³ "
        f"removed), labels.zarr, objects.csv, objects.parquet; {res.seconds:.1f} s"
    )
