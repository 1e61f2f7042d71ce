"""The ``organet`` command line: a thin layer over the Python API.

Every command that takes a volume accepts a multi-page TIFF, a folder of
slices, zarr v2/v3 (``path.zarr/array``), OME-Zarr, N5 (``path.n5/dataset``) or
HDF5 (``file.h5:/dataset``). Bad input prints one ``error:`` line and exits 2.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import numpy as np
import typer
from rich.console import Console

from organet.clierrors import print_error

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Organelle segmentation in volume EM with 3D U-Nets (ASEM pipeline).",
)
console = Console()
err_console = Console(stderr=True)


def _fail(msg: str) -> NoReturn:
    print_error(err_console, msg)
    raise typer.Exit(2)


def _user_errors() -> tuple[type[BaseException], ...]:
    from organet.config import ConfigError
    from organet.model.checkpoint import CheckpointError
    from organet.volumes import VolumeError

    return (ConfigError, CheckpointError, VolumeError, FileNotFoundError, ValueError)


def _run(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Call ``fn``; user errors become one clear line and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except _user_errors() as e:
        _fail(str(e))


def _roi(volume, roi_vox: str | None, roi_nm: str | None):  # type: ignore[no-untyped-def]
    from organet.volumes import parse_roi

    if roi_vox and roi_nm:
        _fail("give either --roi-vox or --roi-nm, not both")
    if roi_vox:
        return _run(parse_roi, roi_vox, "vox", volume)
    if roi_nm:
        return _run(parse_roi, roi_nm, "nm", volume)
    return None


Triple = Annotated[Optional[tuple[float, float, float]], typer.Option(help="nm, (z, y, x); overrides metadata")]
RoiVox = Annotated[Optional[str], typer.Option("--roi-vox", help="ROI in voxels: z0:z1,y0:y1,x0:x1")]
RoiNm = Annotated[Optional[str], typer.Option("--roi-nm", help="ROI in nm (world coordinates): z0:z1,y0:y1,x0:x1")]


@app.command()
def convert(
    src: Annotated[str, typer.Argument(help="input volume (any supported format)")],
    dst: Annotated[str, typer.Argument(help="output OME-Zarr 0.5 container (DST.zarr)")],
    voxel_size: Triple = None,
    offset: Annotated[Optional[tuple[float, float, float]], typer.Option(help="nm, (z, y, x)")] = None,
    chunks: Annotated[tuple[int, int, int], typer.Option(help="output chunk shape (voxels)")] = (64, 64, 64),
    roi_vox: RoiVox = None,
    roi_nm: RoiNm = None,
    downsample: Annotated[Optional[tuple[int, int, int]], typer.Option(
        help="write at this many times the voxel size (z, y, x), e.g. 2 2 2: 5 nm -> 10 nm")] = None,
    downsample_mode: Annotated[str, typer.Option(
        help="how a block becomes one voxel: mean (raw), majority (0/1 labels) or max")] = "mean",
    overwrite: bool = False,
) -> None:
    """Stream any volume into OME-Zarr 0.5 (never the whole volume in memory)."""
    from organet.volumes import convert_volume, open_volume

    src_vol = _run(open_volume, src, voxel_size=voxel_size, offset=offset)
    roi = _roi(src_vol, roi_vox, roi_nm)
    out = _run(
        convert_volume, src, dst, voxel_size=voxel_size, offset=offset, chunks=chunks, roi=roi, overwrite=overwrite,
        downsample=downsample, downsample_mode=downsample_mode,
    )
    console.print(f"wrote {dst}: shape {tuple(out.shape)} {out.dtype}, voxel size {tuple(out.voxel_size)} nm, "
                  f"offset {tuple(out.offset)} nm")


@app.command()
def info(path: Annotated[str, typer.Argument(help="a volume or a checkpoint (.pt)")]) -> None:
    """Show a volume's shape, dtype, voxel size and offset, or a checkpoint's metadata."""
    if path.endswith(".pt"):
        from organet.model.checkpoint import load_checkpoint

        ckpt = _run(load_checkpoint, path)
        console.print_json(json.dumps(ckpt.summary(), default=str))
        return
    from organet.volumes import open_volume

    v = _run(open_volume, path)
    console.print(
        f"{v.path}\n  shape (z, y, x) {tuple(v.shape)}  dtype {v.dtype}  chunks {tuple(v.chunks)}\n"
        f"  voxel size {tuple(v.voxel_size)} nm  offset {tuple(v.offset)} nm  extent {tuple(v.extent_nm)} nm"
    )


@app.command("valid-sizes")
def valid_sizes_cmd(
    num_fmaps: int = 32,
    levels: Annotated[int, typer.Option(help="number of levels (downsamplings + 1)")] = 4,
    max_size: int = 300,
) -> None:
    """List valid isotropic input sizes of a U-Net and their output sizes."""
    from organet.model.unet import UNetConfig, valid_sizes

    cfg = UNetConfig(num_fmaps=num_fmaps, downsample_factors=((2, 2, 2),) * (levels - 1))
    for i, o in valid_sizes(cfg, max_size):
        console.print(f"{i:4d} -> {o:4d}   (context {(i - o) // 2} per side)")


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Argument(help="experiment YAML")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="continue the run in this folder")] = None,
    init_from: Annotated[Optional[Path], typer.Option(help="fine-tune: start from this checkpoint")] = None,
    iterations: Annotated[Optional[int], typer.Option(help="override training.iterations")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(help="override training.max_minutes")] = None,
) -> None:
    """Train a U-Net from a YAML experiment config (or resume a run)."""
    from organet.config import ConfigError, load_config
    from organet.train.loop import train as run_training

    if resume is not None:
        cfg_path = resume / "config.yaml"
        if config is not None and config.resolve() != cfg_path.resolve():
            _fail("with --resume the run folder's own config.yaml is used; do not pass another config")
        if not cfg_path.is_file():
            _fail(f"--resume {resume}: no config.yaml in that folder")
        config = cfg_path
    if config is None:
        _fail("give a config file, or --resume RUN_DIR")
    cfg = _run(load_config, config)
    if iterations is not None:
        cfg.training.iterations = iterations
    if max_minutes is not None:
        cfg.training.max_minutes = max_minutes
    if resume is not None and Path(cfg.output_dir).resolve() != resume.resolve():
        _fail(f"config.yaml in {resume} points to another output_dir ({cfg.output_dir})")
    result = _run(run_training, cfg, resume=resume is not None, init_from=init_from)
    console.print(f"trained to iteration {result.iteration}; last checkpoint {result.last_checkpoint}")


@app.command()
def predict(
    model: Annotated[Path, typer.Option(help="checkpoint (.pt); it carries everything else")],
    input: Annotated[str, typer.Option("--input", help="raw volume")],
    output: Annotated[str, typer.Option(help="output container OUT.zarr")],
    roi_vox: RoiVox = None,
    roi_nm: RoiNm = None,
    voxel_size: Annotated[
        Optional[tuple[float, float, float]], typer.Option(help="nm (z, y, x) of the input if its file lacks it")
    ] = None,
    tile: Annotated[Optional[tuple[int, int, int]], typer.Option(help="network input per tile (voxels)")] = None,
    batch_size: int = 1,
    device: str = "auto",
    threshold: float = 0.5,
    overwrite: bool = False,
    tta: Annotated[Optional[str], typer.Option(help="test-time augmentation: mirror | mirror+transpose")] = None,
    chunks: Annotated[Optional[tuple[int, int, int]], typer.Option(
        help="output chunk shape (voxels); default 64^3, blockwise one that fits the tile step")] = None,
    workers: Annotated[Optional[int], typer.Option(help="blockwise on Dask with this many workers")] = None,
    cluster: Annotated[Optional[str], typer.Option(help="Dask cluster: local | slurm | lsf | pbs")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="join a running Dask scheduler (tcp://...)")] = None,
    cluster_config: Annotated[Optional[Path], typer.Option(
        help="YAML of batch-queue settings (docs/cluster.md)")] = None,
    queue: Annotated[Optional[str], typer.Option(help="batch queue / partition")] = None,
    cores: Annotated[Optional[int], typer.Option(help="cores per batch job")] = None,
    memory: Annotated[Optional[str], typer.Option(help="memory per batch job, e.g. 32GB")] = None,
    walltime: Annotated[Optional[str], typer.Option(help="batch job walltime")] = None,
    gpus: Annotated[Optional[int], typer.Option(help="GPUs per batch job (one worker per job)")] = None,
    retries: Annotated[int, typer.Option(help="blockwise: retries per failing block")] = 2,
    block: Annotated[Optional[tuple[int, int, int]], typer.Option(
        help="blockwise: block shape (voxels; a multiple of the tile step and of --chunks)")] = None,
    mask: Annotated[Optional[str], typer.Option(
        help="blockwise: sample mask volume; blocks without sample read 0")] = None,
    mask_rule: Annotated[Optional[str], typer.Option(
        help="blockwise: sample where MASK (or, without --mask, raw) passes this rule, e.g. '>0', '<250'")] = None,
) -> None:
    """Predict foreground probability (uint8) and a mask over a volume or ROI.

    With --workers/--cluster/--scheduler (or --mask/--mask-rule/--block) the ROI is
    predicted in blocks on Dask, resumably: rerun the same command after a crash.
    """
    from organet.predict.run import predict_volume
    from organet.volumes import open_volume

    vol = _run(open_volume, input, voxel_size=voxel_size)
    roi = _roi(vol, roi_vox, roi_nm)
    blockwise_opts = (workers, cluster, scheduler, cluster_config, mask, mask_rule, block, queue, cores, memory,
                      walltime, gpus)
    if any(v is not None for v in blockwise_opts):
        _predict_blockwise(
            model, vol, output, roi, tile, batch_size, device, threshold, overwrite, tta, workers, cluster, scheduler,
            cluster_config, dict(queue=queue, cores=cores, memory=memory, walltime=walltime, gpus=gpus), retries,
            block, mask, mask_rule, voxel_size, chunks,
        )
        return
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        res = _run(
            predict_volume, model, vol, output, roi=roi, tile_shape=tile, batch_size=batch_size, device=device,
            threshold=threshold, overwrite=overwrite, tta=tta, chunks=chunks or (64, 64, 64),
        )
    console.print(
        f"wrote {res.output}/probability and /mask: ROI {res.roi}, {res.tiles} tiles, {res.seconds:.1f} s, "
        f"{res.voxels_per_second:,.0f} voxels/s"
    )


def _predict_blockwise(  # type: ignore[no-untyped-def]
    model, vol, output, roi, tile, batch_size, device, threshold, overwrite, tta, workers, cluster, scheduler,
    cluster_config, batch_options, retries, block, mask, mask_rule, voxel_size, chunks,
) -> None:
    """`organet predict` on Dask: blockwise, resumable; failing blocks exit 1 with their list."""
    from contextlib import nullcontext

    from organet.predict.blockwise import BlockFailures, SampleMask, predict_blockwise
    from organet.predict.cluster import dask_client
    from organet.volumes import open_volume

    sample = None
    if mask is not None or mask_rule is not None:
        mvol = _run(open_volume, mask, voxel_size=voxel_size) if mask is not None else None
        sample = _run(SampleMask, mvol, mask_rule)
    batch = {k: v for k, v in batch_options.items() if v is not None}
    if batch and (cluster or "local") == "local":
        _fail(f"--{next(iter(batch))} applies to --cluster slurm, lsf or pbs")
    on_dask = workers is not None or cluster is not None or scheduler is not None
    try:
        ctx = dask_client(workers, cluster, scheduler, cluster_config, **batch) if on_dask else nullcontext(None)
        with warnings.catch_warnings(), ctx as client:
            warnings.simplefilter("always")
            res = _run(
                predict_blockwise, model, vol, output, roi=roi, tile_shape=tile, block_shape=block,
                batch_size=batch_size, device=device, threshold=threshold, tta=tta, sample_mask=sample,
                retries=retries, client=client, overwrite=overwrite, chunks=chunks,
            )
    except BlockFailures as e:
        print_error(err_console, e)
        raise typer.Exit(1) from None
    except _user_errors() as e:  # raised while starting the cluster
        _fail(str(e))
    if res.already_complete:
        console.print(f"{res.output} is already complete ({res.blocks} blocks); nothing to do")
        return
    console.print(
        f"wrote {res.output}/probability and /mask (+{res.pyramid_levels - 1} pyramid levels): ROI {res.roi}, "
        f"{res.blocks} blocks ({res.resumed} done before, {res.skipped_by_mask} without sample), "
        f"{res.seconds:.1f} s, {res.voxels_per_second:,.0f} voxels/s"
    )


@app.command()
def evaluate(
    pred: Annotated[str, typer.Option(help="prediction: probability (uint8 0-255 or float) or binary mask")],
    truth: Annotated[str, typer.Option(help="ground-truth labels (foreground > 0)")],
    mask: Annotated[Optional[str], typer.Option(help="evaluate only where this is > 0")] = None,
    voxel_size: Annotated[
        Optional[tuple[float, float, float]], typer.Option(help="nm (z, y, x) of truth and mask if their files lack it")
    ] = None,
    exclusion_zone: Annotated[
        Optional[tuple[int, int]], typer.Option(help="ignore IN voxels inside / OUT outside the true boundary")
    ] = None,
    organelle: Annotated[Optional[str], typer.Option(help="use incasem's exclusion width for this organelle")] = None,
    threshold: Annotated[Optional[list[float]], typer.Option(help="repeat for several")] = None,
    sweep: Annotated[bool, typer.Option(help="thresholds 0.05..0.95 and a PNG")] = False,
    roi_vox: Annotated[Optional[str], typer.Option("--roi-vox", help="region in truth voxels: z0:z1,y0:y1,x0:x1")] = None,
    roi_nm: RoiNm = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write the result as JSON")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="PNG of the threshold sweep")] = None,
    workers: Annotated[Optional[int], typer.Option(help="evaluate blocks on Dask with this many workers")] = None,
    cluster: Annotated[Optional[str], typer.Option(help="Dask cluster: local | slurm | lsf | pbs")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="join a running Dask scheduler (tcp://...)")] = None,
    cluster_config: Annotated[Optional[Path], typer.Option(
        help="YAML of batch-queue settings (docs/cluster.md)")] = None,
) -> None:
    """Voxel F1 / precision / recall / IoU with an optional boundary exclusion zone.

    Prediction, truth and mask are aligned by their offsets (nm): by default the
    region evaluated is the prediction's extent, so a prediction of an ROI is
    scored against the matching part of a whole-volume ground truth.
    """
    from organet.evaluate import EXCLUSION_ZONE_WIDTHS, evaluate_volumes, plot_threshold_sweep
    from organet.volumes import open_volume

    p = _run(open_volume, pred)
    t = _run(open_volume, truth, voxel_size=voxel_size)
    m = _run(open_volume, mask, voxel_size=voxel_size) if mask else None
    if exclusion_zone is not None and organelle is not None:
        _fail("give either --exclusion-zone or --organelle, not both")
    ez = exclusion_zone
    if organelle is not None:
        if organelle not in EXCLUSION_ZONE_WIDTHS:
            _fail(f"--organelle {organelle!r}: expected one of {sorted(EXCLUSION_ZONE_WIDTHS)}")
        ez = (EXCLUSION_ZONE_WIDTHS[organelle],) * 2
    for v, what in ((t, "truth"), (m, "mask")):
        if v is not None and not np.allclose(v.voxel_size, p.voxel_size, rtol=1e-3):
            _fail(f"{what} voxel size {tuple(v.voxel_size)} nm differs from the prediction's {tuple(p.voxel_size)} nm; "
                  "pass --voxel-size if the file lacks it")
    roi = _roi(t, roi_vox, roi_nm)
    begin, end = roi.to_nm(t.voxel_size, t.offset) if roi is not None else p.bounds_nm
    p, t, m = (_run(v.crop_nm, begin, end) if v is not None else None for v in (p, t, m))
    thresholds = [round(0.05 * i, 2) for i in range(1, 20)] if sweep else (threshold or [0.5])
    if workers is None and cluster is None and scheduler is None:
        res = _run(evaluate_volumes, p, t, m, exclusion=ez, thresholds=tuple(thresholds))
    else:
        from organet.predict.cluster import dask_client

        try:
            with dask_client(workers, cluster, scheduler, cluster_config) as client:
                res = _run(evaluate_volumes, p, t, m, exclusion=ez, thresholds=tuple(thresholds), client=client)
        except _user_errors() as e:
            _fail(str(e))
        except RuntimeError as e:
            if isinstance(e, typer.Exit):
                raise
            print_error(err_console, e)
            raise typer.Exit(1) from None
    console.print(res.to_table())
    if json_out:
        res.write_json(json_out)
        console.print(f"wrote {json_out}")
    if (sweep or plot) and res.per_threshold:
        out = plot or Path("threshold_sweep.png")
        plot_threshold_sweep(res, out)
        console.print(f"wrote {out}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("organet-demo"),
    minutes: Annotated[float, typer.Option(help="training time budget")] = 3.0,
    data: Annotated[Optional[Path], typer.Option(help="real data folder in lucchi_pp layout")] = None,
    seed: int = 0,
    overwrite: bool = False,
) -> None:
    """Synthesize a FIB-SEM-like volume, train a small U-Net, predict held-out data, print F1."""
    from organet.demo.run import run_demo

    res = _run(run_demo, out, minutes=minutes, data=data, seed=seed, overwrite=overwrite, log=console.print)
    console.print(res.table())


analyze_app = typer.Typer(
    no_args_is_help=True, help="Measure organelles in predictions (nuclear pores, coated pits)."
)
app.add_typer(analyze_app, name="analyze")


def _register_analyze() -> None:
    from organet.analyze.coated_pits_cli import coated_pits_command
    from organet.analyze.pores_cli import pores_command

    analyze_app.command("pores")(pores_command)
    analyze_app.command("coated-pits")(coated_pits_command)


_register_analyze()


def _register_instances() -> None:
    from organet.analyze.instances_cli import instances_command

    app.command("instances")(instances_command)


_register_instances()


annotate_app = typer.Typer(no_args_is_help=True, help="Ground-truth annotation from sparse scribbles (graph cut).")
app.add_typer(annotate_app, name="annotate")


def _register_preprocess_annotate() -> None:
    from organet.annotate.cli import graphcut_command, napari_command
    from organet.preprocess.cli import masks_app, preprocess_command

    app.command("preprocess")(preprocess_command)
    app.add_typer(masks_app, name="masks")
    annotate_app.command("graphcut")(graphcut_command)
    annotate_app.command("napari")(napari_command)


_register_preprocess_annotate()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
