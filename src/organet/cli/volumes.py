"""``organet convert``, ``organet info`` and ``organet valid-sizes``."""

from __future__ import annotations

import json
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

if TYPE_CHECKING:  # pragma: no cover
    from organet.volumes.resample import Mode


@handle_errors
@with_cluster_options
def convert(
    src: Annotated[str, typer.Argument(help="input volume (any supported format)")],
    dst: Annotated[str, typer.Argument(help="output OME-Zarr 0.5 container (DST.zarr)")],
    voxel_size: VoxelSize = None,
    offset: Annotated[tuple[float, float, float] | None, typer.Option(help="nm, (z, y, x)")] = None,
    chunks: Annotated[tuple[int, int, int], typer.Option(help="output chunk shape (voxels)")] = (64, 64, 64),
    roi_vox: RoiVox = None,
    roi_nm: RoiNm = None,
    downsample: Annotated[
        tuple[int, int, int] | None,
        typer.Option(help="write at this many times the voxel size (z, y, x), e.g. 2 2 2: 5 nm -> 10 nm"),
    ] = None,
    downsample_mode: Annotated[
        str, typer.Option(help="how a block becomes one voxel: mean (raw), majority (0/1 labels) or max")
    ] = "mean",
    overwrite: Overwrite = False,
    retries: Annotated[int, typer.Option(help="retries per failing block")] = 2,
    dask: ClusterOptions = ClusterOptions(),
) -> None:
    """Stream any volume into OME-Zarr 0.5 (never the whole volume in memory)."""
    from organet.volumes import convert_volume, open_volume

    src_vol = open_volume(src, voxel_size=voxel_size, offset=offset)
    roi = parse_roi_options(src_vol, roi_vox, roi_nm)
    with dask.client() as client, ProgressBars() as progress:
        out = convert_volume(
            src,
            dst,
            voxel_size=voxel_size,
            offset=offset,
            chunks=chunks,
            roi=roi,
            overwrite=overwrite,
            downsample=downsample,
            downsample_mode=cast("Mode", downsample_mode),  # convert_volume checks the name
            progress=progress,
            client=client,
            retries=retries,
        )
    say(
        f"wrote {dst}: shape {tuple(out.shape)} {out.dtype}, voxel size {tuple(out.voxel_size)} nm, "
        f"offset {tuple(out.offset)} nm"
    )


@handle_errors
def info(path: Annotated[str, typer.Argument(help="a volume or a checkpoint (.pt)")]) -> None:
    """Show a volume's shape, dtype, voxel size and offset, or a checkpoint's metadata."""
    if path.endswith(".pt"):
        from organet.model.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        console.print_json(json.dumps(ckpt.summary(), default=str))
        return
    from organet.volumes import open_volume

    v = open_volume(path)
    say(
        f"{v.path}\n  shape (z, y, x) {tuple(v.shape)}  dtype {v.dtype}  chunks {tuple(v.chunks)}\n"
        f"  voxel size {tuple(v.voxel_size)} nm  offset {tuple(v.offset)} nm  extent {tuple(v.extent_nm)} nm"
    )


@handle_errors
def valid_sizes(
    num_fmaps: Annotated[int, typer.Option(help="feature maps of the first level")] = 32,
    levels: Annotated[int, typer.Option(help="number of levels (downsamplings + 1)")] = 4,
    max_size: Annotated[int, typer.Option(help="largest input size listed")] = 300,
) -> None:
    """List valid isotropic input sizes of a U-Net and their output sizes."""
    from organet.errors import InputError
    from organet.model.unet import UNetConfig, valid_sizes

    if levels < 1 or num_fmaps < 1:
        raise InputError(f"--levels and --num-fmaps must be >= 1, got {levels} and {num_fmaps}")
    cfg = UNetConfig(num_fmaps=num_fmaps, downsample_factors=((2, 2, 2),) * (levels - 1))
    for i, o in valid_sizes(cfg, max_size):
        say(f"{i:4d} -> {o:4d}   (context {(i - o) // 2} per side)")
