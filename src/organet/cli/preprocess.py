"""``organet preprocess`` (contrast normalization) and ``organet masks sample|exclusion``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from organet.cli.errors import handle_errors
from organet.cli.options import (
    ClusterOptions,
    Overwrite,
    RoiVox,
    VoxelSize,
    with_cluster_options,
)
from organet.cli.output import say
from organet.cli.progress import ProgressBars

if TYPE_CHECKING:  # pragma: no cover
    from organet.volumes import Volume

masks_app = typer.Typer(no_args_is_help=True, help="Sample/cell masks and evaluation (exclusion-zone) masks.")


def _open(path: str, voxel_size: tuple[float, float, float] | None, roi_vox: str | None) -> Volume:
    from organet.volumes import open_volume, parse_roi

    vol = open_volume(path, voxel_size=voxel_size)
    if roi_vox:
        vol = vol.crop(parse_roi(roi_vox, "vox", vol))
    return vol


@handle_errors
@with_cluster_options
def preprocess(
    raw: Annotated[str, typer.Argument(help="raw volume (any supported format)")],
    output: Annotated[
        str,
        typer.Option(
            "--output", "-o", help="output OME-Zarr (new.zarr, or raw.zarr/clahe inside an existing container)"
        ),
    ],
    method: Annotated[str, typer.Option(help="none | linear | histeq | clahe | clahe-incasem")] = "clahe",
    clip_limit: Annotated[float, typer.Option(help="CLAHE clip limit (normalized; seed: 0.01/0.02/0.03)")] = 0.02,
    kernel: Annotated[int, typer.Option(help="CLAHE contextual region (voxels per axis)")] = 128,
    nbins: Annotated[int, typer.Option(help="CLAHE histogram bins")] = 256,
    incasem_block: Annotated[
        int, typer.Option(help="clahe-incasem: incasem's write block, each equalized on its own (voxels per axis)")
    ] = 128,
    low_percentile: Annotated[float, typer.Option(help="linear: percentile mapped to 0")] = 0.5,
    high_percentile: Annotated[float, typer.Option(help="linear: percentile mapped to 255")] = 99.5,
    block: Annotated[tuple[int, int, int], typer.Option(help="voxels processed at a time (z, y, x)")] = (64, 256, 256),
    voxel_size: VoxelSize = None,
    roi_vox: RoiVox = None,
    overwrite: Overwrite = False,
    retries: Annotated[int, typer.Option(help="retries per failing block")] = 2,
    dask: ClusterOptions = ClusterOptions(),
) -> None:
    """Contrast-normalize a raw volume blockwise into a uint8 OME-Zarr (method recorded in its metadata)."""
    from organet.preprocess.intensity import PreprocessParams, preprocess_volume

    params = PreprocessParams.model_validate(
        {
            "method": method,
            "clip_limit": clip_limit,
            "kernel": kernel,
            "nbins": nbins,
            "low_percentile": low_percentile,
            "high_percentile": high_percentile,
            "block": incasem_block,
        }
    )
    vol = _open(raw, voxel_size, roi_vox)
    with dask.client() as client, ProgressBars() as progress:
        out = preprocess_volume(
            vol, output, params, block=block, overwrite=overwrite, progress=progress, client=client, retries=retries
        )
    say(f"wrote {output}: {params.record()} shape {out.shape} uint8, voxel size {out.voxel_size} nm")


@handle_errors
def sample_mask(
    raw: Annotated[str, typer.Argument(help="raw volume")],
    output: Annotated[str, typer.Option("--output", "-o", help="output OME-Zarr mask (uint8 0/1)")],
    low: Annotated[float | None, typer.Option(help="keep raw >= low")] = None,
    high: Annotated[float | None, typer.Option(help="keep raw <= high")] = None,
    smooth_nm: Annotated[float, typer.Option(help="Gaussian sigma before thresholding (nm)")] = 0.0,
    min_object_nm3: Annotated[float, typer.Option(help="remove objects smaller than this (nm^3)")] = 0.0,
    max_hole_nm3: Annotated[float | None, typer.Option(help="fill holes up to this size (nm^3); default all")] = None,
    keep_largest: Annotated[bool, typer.Option(help="keep only the largest component")] = False,
    voxel_size: VoxelSize = None,
    roi_vox: RoiVox = None,
    overwrite: Overwrite = False,
) -> None:
    """Sample/cell mask from intensity thresholds, hole filling and small-object removal."""
    from organet.preprocess.masks import sample_mask_volume

    vol = _open(raw, voxel_size, roi_vox)
    out = sample_mask_volume(
        vol,
        output,
        overwrite=overwrite,
        low=low,
        high=high,
        smooth_nm=smooth_nm,
        min_object_nm3=min_object_nm3,
        max_hole_nm3=max_hole_nm3,
        keep_largest=keep_largest,
    )
    frac = float(out.read().mean())
    say(f"wrote {output}: {100 * frac:.1f} % inside")


@handle_errors
def exclusion_mask(
    truth: Annotated[str, typer.Argument(help="ground-truth labels (foreground > 0)")],
    output: Annotated[str, typer.Option("--output", "-o", help="output OME-Zarr mask: 1 scored, 0 ignored")],
    inner: Annotated[int, typer.Option(help="exclusion width inside objects (voxels)")] = 4,
    outer: Annotated[int, typer.Option(help="exclusion width outside objects (voxels)")] = 4,
    voxel_size: VoxelSize = None,
    roi_vox: RoiVox = None,
    overwrite: Overwrite = False,
) -> None:
    """Evaluation mask with the boundary exclusion zone of ``organet evaluate --exclusion-zone``."""
    from organet.preprocess.masks import exclusion_mask_volume

    vol = _open(truth, voxel_size, roi_vox)
    exclusion_mask_volume(vol, output, inner, outer, overwrite=overwrite)
    say(f"wrote {output}")
