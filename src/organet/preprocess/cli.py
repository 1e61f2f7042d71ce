"""``organet preprocess`` and ``organet masks``: command-line faces of :mod:`organet.preprocess`.

Wired by ``organet.cli``. Bad input prints one ``error:`` line and exits with code 2.
"""

from __future__ import annotations

from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console

from organet.clierrors import print_error

console, err_console = Console(), Console(stderr=True)


def _fail(msg: str) -> NoReturn:
    print_error(err_console, msg)
    raise typer.Exit(2)


def _errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from organet.volumes import VolumeError

    return (VolumeError, ValueError, FileNotFoundError, ValidationError)


def _open(path: str, voxel_size, roi_vox: str | None):  # type: ignore[no-untyped-def]
    from organet.volumes import open_volume, parse_roi

    vol = open_volume(path, voxel_size=voxel_size)
    if roi_vox:
        vol = vol.crop(parse_roi(roi_vox, "vox", vol))
    return vol


VoxelSize = Annotated[Optional[tuple[float, float, float]], typer.Option(help="nm, (z, y, x); overrides metadata")]
RoiVox = Annotated[Optional[str], typer.Option("--roi-vox", help="ROI in voxels: z0:z1,y0:y1,x0:x1")]


def preprocess_command(
    raw: Annotated[str, typer.Argument(help="raw volume (any supported format)")],
    output: Annotated[str, typer.Option("--output", "-o", help="output OME-Zarr (new.zarr, or raw.zarr/clahe inside an existing container)")],
    method: Annotated[str, typer.Option(help="none | linear | histeq | clahe")] = "clahe",
    clip_limit: Annotated[float, typer.Option(help="CLAHE clip limit (normalized; seed: 0.01/0.02/0.03)")] = 0.02,
    kernel: Annotated[int, typer.Option(help="CLAHE contextual region (voxels per axis)")] = 128,
    nbins: Annotated[int, typer.Option(help="CLAHE histogram bins")] = 256,
    low_percentile: Annotated[float, typer.Option(help="linear: percentile mapped to 0")] = 0.5,
    high_percentile: Annotated[float, typer.Option(help="linear: percentile mapped to 255")] = 99.5,
    block: Annotated[tuple[int, int, int], typer.Option(help="voxels processed at a time (z, y, x)")] = (64, 256, 256),
    voxel_size: VoxelSize = None,
    roi_vox: RoiVox = None,
    overwrite: bool = False,
) -> None:
    """Contrast-normalize a raw volume blockwise into a uint8 OME-Zarr (method recorded in its metadata)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from organet.preprocess.intensity import PreprocessParams, preprocess_volume

    try:
        params = PreprocessParams(method=method, clip_limit=clip_limit, kernel=kernel, nbins=nbins,  # type: ignore[arg-type]
                                  low_percentile=low_percentile, high_percentile=high_percentile)
        vol = _open(raw, voxel_size, roi_vox)
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=err_console) as bar:
            tasks: dict[str, int] = {}

            def progress(stage: str, n: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.advance(tasks[stage], n)

            out = preprocess_volume(vol, output, params, block=block, overwrite=overwrite, progress=progress)
    except _errors() as e:
        _fail(_msg(e))
    console.print(f"wrote {output}: {params.record()} shape {out.shape} uint8, voxel size {out.voxel_size} nm",
                  highlight=False)


def _msg(e: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        return "; ".join(f"{'.'.join(str(x) for x in d['loc'])}: {d['msg']}" for d in e.errors())
    return str(e)


masks_app = typer.Typer(no_args_is_help=True, help="Sample/cell masks and evaluation (exclusion-zone) masks.")


@masks_app.command("sample")
def sample_mask_command(
    raw: Annotated[str, typer.Argument(help="raw volume")],
    output: Annotated[str, typer.Option("--output", "-o", help="output OME-Zarr mask (uint8 0/1)")],
    low: Annotated[Optional[float], typer.Option(help="keep raw >= low")] = None,
    high: Annotated[Optional[float], typer.Option(help="keep raw <= high")] = None,
    smooth_nm: Annotated[float, typer.Option(help="Gaussian sigma before thresholding (nm)")] = 0.0,
    min_object_nm3: Annotated[float, typer.Option(help="remove objects smaller than this (nm^3)")] = 0.0,
    max_hole_nm3: Annotated[Optional[float], typer.Option(help="fill holes up to this size (nm^3); default all")] = None,
    keep_largest: Annotated[bool, typer.Option(help="keep only the largest component")] = False,
    voxel_size: VoxelSize = None,
    roi_vox: RoiVox = None,
    overwrite: bool = False,
) -> None:
    """Sample/cell mask from intensity thresholds, hole filling and small-object removal."""
    from organet.preprocess.masks import sample_mask_volume

    try:
        vol = _open(raw, voxel_size, roi_vox)
        out = sample_mask_volume(vol, output, overwrite=overwrite, low=low, high=high, smooth_nm=smooth_nm,
                                 min_object_nm3=min_object_nm3, max_hole_nm3=max_hole_nm3, keep_largest=keep_largest)
    except _errors() as e:
        _fail(_msg(e))
    frac = float(out.read().mean())
    console.print(f"wrote {output}: {100 * frac:.1f} % inside", highlight=False)


@masks_app.command("exclusion")
def exclusion_mask_command(
    truth: Annotated[str, typer.Argument(help="ground-truth labels (foreground > 0)")],
    output: Annotated[str, typer.Option("--output", "-o", help="output OME-Zarr mask: 1 scored, 0 ignored")],
    inner: Annotated[int, typer.Option(help="exclusion width inside objects (voxels)")] = 4,
    outer: Annotated[int, typer.Option(help="exclusion width outside objects (voxels)")] = 4,
    voxel_size: VoxelSize = None,
    roi_vox: RoiVox = None,
    overwrite: bool = False,
) -> None:
    """Evaluation mask with the boundary exclusion zone of ``organet evaluate --exclusion-zone``."""
    from organet.preprocess.masks import exclusion_mask_volume

    try:
        vol = _open(truth, voxel_size, roi_vox)
        exclusion_mask_volume(vol, output, inner, outer, overwrite=overwrite)
    except _errors() as e:
        _fail(_msg(e))
    console.print(f"wrote {output}", highlight=False)
