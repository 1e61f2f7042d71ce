"""``organet instances``: the command-line face of :mod:`organet.analyze.instances`.

Wire it with ``app.command("instances")(instances_command)``. Bad input prints one
``error:`` line and exits 2; blocks that still fail after their retries exit 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console

from organet.clierrors import print_error


def instances_command(
    mask: Annotated[str, typer.Argument(help="binary mask or probability (e.g. OUT.zarr/mask), any volume form")],
    output: Annotated[Path, typer.Option(help="output folder: labels.zarr, objects.csv, objects.parquet")],
    min_size: Annotated[float, typer.Option("--min-size", help="drop objects smaller than this volume (nm³)")] = 0.0,
    raw: Annotated[Optional[str], typer.Option(help="raw volume for the mean intensity (aligned by nm)")] = None,
    connectivity: Annotated[int, typer.Option(help="1 faces (scipy's default), 2 +edges, 3 +corners")] = 1,
    threshold: Annotated[float, typer.Option(help="probability threshold (uint8 = value/255; masks > 0)")] = 0.5,
    block: Annotated[tuple[int, int, int], typer.Option(help="block shape (voxels, z y x)")] = (128, 128, 128),
    voxel_size: Annotated[Optional[tuple[float, float, float]], typer.Option(
        help="nm (z, y, x); overrides the metadata of both volumes")] = None,
    workers: Annotated[Optional[int], typer.Option(help="run on a Dask cluster with this many workers")] = None,
    cluster: Annotated[Optional[str], typer.Option(help="local | slurm | lsf | pbs")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="address of a running Dask scheduler (tcp://...)")] = None,
    cluster_config: Annotated[Optional[Path], typer.Option(help="YAML with the batch-queue settings")] = None,
    retries: Annotated[int, typer.Option(help="retries per failing block")] = 2,
    overwrite: bool = False,
) -> None:
    """Organelle instances: connected components over the whole volume (blockwise,
    merged across blocks), a size filter in nm³ and a per-object table."""
    from contextlib import nullcontext

    import numpy as np

    from organet.predict.cluster import dask_client
    from organet.volumes import VolumeError, open_volume

    from .instances import label_instances

    console, err = Console(), Console(stderr=True)

    def fail(msg: str, code: int = 2) -> NoReturn:
        print_error(err, msg)
        raise typer.Exit(code)

    try:
        m = open_volume(mask, voxel_size=voxel_size)
        r = None
        if raw is not None:
            r = open_volume(raw, voxel_size=voxel_size)
            if not np.allclose(r.voxel_size, m.voxel_size, rtol=1e-3):
                fail(f"raw voxel size {tuple(r.voxel_size)} nm differs from the mask's {tuple(m.voxel_size)} nm")
            r = r.crop_nm(*m.bounds_nm)
        distributed = workers is not None or cluster is not None or scheduler is not None
        ctx = dask_client(workers, cluster, scheduler, cluster_config) if distributed else nullcontext(None)
        with ctx as client:
            res = label_instances(m, output, raw=r, min_size_nm3=min_size, connectivity=connectivity,
                                  threshold=threshold, block_shape=block, client=client, retries=retries,
                                  overwrite=overwrite)
    except typer.Exit:
        raise
    except (VolumeError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    except RuntimeError as e:  # blocks that kept failing
        fail(str(e), 1)
    console.print(f"wrote {res.output}: {res.objects} objects ({res.removed_small} smaller than {min_size:g} nm³ "
                  f"removed), labels.zarr, objects.csv, objects.parquet; {res.seconds:.1f} s")
