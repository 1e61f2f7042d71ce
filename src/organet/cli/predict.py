"""``organet predict``: blockwise prediction in this process or on Dask, through the same code (resumable)."""

from __future__ import annotations

import warnings
from typing import Annotated

import typer

from organet.cli.errors import handle_errors
from organet.cli.options import (
    ClusterOptions,
    parse_roi_options,
    with_cluster_options,
)
from organet.cli.output import say
from organet.cli.progress import ProgressBars
from organet.volumes.ome_zarr import PREDICTION_IMAGE, PREDICTION_MASK

IO = "Input and output"
PREDICTION = "Prediction"
BLOCKWISE = "Blocks (resumable: rerun the same command after a crash)"


@handle_errors
@with_cluster_options
def predict(
    model: Annotated[
        str,
        typer.Option(
            help="checkpoint (.pt) or a model name from `organet models list` (downloaded once into the cache); "
            "it carries everything else",
            rich_help_panel=IO,
        ),
    ],
    input: Annotated[str, typer.Option("--input", help="raw volume", rich_help_panel=IO)],
    output: Annotated[str, typer.Option(help="output container OUT.zarr", rich_help_panel=IO)],
    roi_vox: Annotated[
        str | None, typer.Option("--roi-vox", help="ROI in voxels: z0:z1,y0:y1,x0:x1", rich_help_panel=IO)
    ] = None,
    roi_nm: Annotated[
        str | None, typer.Option("--roi-nm", help="ROI in nm (world coordinates)", rich_help_panel=IO)
    ] = None,
    voxel_size: Annotated[
        tuple[float, float, float] | None,
        typer.Option(help="nm (z, y, x) of the input if its file lacks it", rich_help_panel=IO),
    ] = None,
    chunks: Annotated[
        tuple[int, int, int] | None,
        typer.Option(help="output chunk shape (voxels); default: 64 or a divisor of the tile step", rich_help_panel=IO),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output", rich_help_panel=IO)] = False,
    tile: Annotated[
        tuple[int, int, int] | None,
        typer.Option(
            help="network input per tile (voxels); default the least work that fits --memory-gib (organet plan)",
            rich_help_panel=PREDICTION,
        ),
    ] = None,
    memory_gib: Annotated[
        float | None,
        typer.Option(
            help="memory for one forward pass per process (GiB); default 60 % of the available RAM (split over "
            "--workers), or 80 % of a GPU's free memory",
            rich_help_panel=PREDICTION,
        ),
    ] = None,
    precision: Annotated[
        str,
        typer.Option(help="auto (bf16 on GPUs with it, else fp32) | fp32 | bf16 | fp16", rich_help_panel=PREDICTION),
    ] = "auto",
    batch_size: Annotated[int, typer.Option(help="tiles per forward pass", rich_help_panel=PREDICTION)] = 1,
    backend: Annotated[
        str,
        typer.Option(
            help="torch | openvino (CPU and fp32 only; pip install 'organet[openvino]'; benchmarks/backends.py)",
            rich_help_panel=PREDICTION,
        ),
    ] = "torch",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N]", rich_help_panel=PREDICTION)] = "auto",
    threshold: Annotated[
        float, typer.Option(help="probability threshold of the mask", rich_help_panel=PREDICTION)
    ] = 0.5,
    tta: Annotated[
        str | None,
        typer.Option(help="test-time augmentation: mirror | mirror+transpose", rich_help_panel=PREDICTION),
    ] = None,
    retries: Annotated[int, typer.Option(help="retries per failing block", rich_help_panel=BLOCKWISE)] = 2,
    block: Annotated[
        tuple[int, int, int] | None,
        typer.Option(
            help="block shape (voxels); rounded to whole chunks, the rounding is reported", rich_help_panel=BLOCKWISE
        ),
    ] = None,
    mask: Annotated[
        str | None, typer.Option(help="sample mask volume; blocks without sample read 0", rich_help_panel=BLOCKWISE)
    ] = None,
    mask_rule: Annotated[
        str | None,
        typer.Option(
            help="sample where MASK (or, without --mask, raw) passes this rule, e.g. '>0', '<250'",
            rich_help_panel=BLOCKWISE,
        ),
    ] = None,
    dask: ClusterOptions = ClusterOptions(),
) -> None:
    """Predict foreground probability (uint8) and a mask over a volume or ROI.

    The ROI is predicted in blocks, in this process or on Dask (--workers, --cluster, --scheduler), resumably:
    rerun the same command after a crash.
    """
    from organet.model.registry import resolve_model
    from organet.predict import Predictor, SampleMask, predict_volume
    from organet.volumes import open_volume

    vol = open_volume(input, default_voxel_size=voxel_size)
    roi = parse_roi_options(vol, roi_vox, roi_nm)
    with ProgressBars(transient=True) as bars:
        checkpoint = resolve_model(model, progress=bars)
    if memory_gib is None and tile is None and dask.workers and not device.startswith("cuda"):
        from organet.predict.plan import memory_budget

        memory_gib = memory_budget("cpu", workers=dask.workers) / 2**30
    predictor = Predictor.from_checkpoint(
        checkpoint,
        tile=tile,
        batch_size=batch_size,
        device=device,
        tta=tta,
        precision=precision,
        memory_gib=memory_gib,
        backend=backend,
    )
    sample = None
    if mask is not None or mask_rule is not None:
        mvol = open_volume(mask, default_voxel_size=voxel_size) if mask is not None else None
        sample = SampleMask(mvol, mask_rule)
    with warnings.catch_warnings(), dask.client() as client, ProgressBars() as progress:
        warnings.simplefilter("always")
        res = predict_volume(
            predictor,
            vol,
            output,
            roi=roi,
            threshold=threshold,
            chunks=chunks,
            block_shape=block,
            sample_mask=sample,
            client=client,
            retries=retries,
            overwrite=overwrite,
            progress=progress,
        )
    if res.note:
        say(f"note: {res.note}")
    if res.preprocess_on_the_fly:
        from organet.preprocess.normalize import describe_preprocess

        say(f"note: input normalized on the fly as the model expects: {describe_preprocess(res.preprocess_on_the_fly)}")
    if res.already_complete:
        say(f"{res.output} is already complete ({res.blocks} blocks); nothing to do")
        return
    say(
        f"wrote {res.output}/{PREDICTION_IMAGE} and its mask {res.output}/{PREDICTION_MASK} "
        f"(+{res.pyramid_levels - 1} pyramid levels): ROI {res.roi}, "
        f"{res.blocks} blocks ({res.resumed} done before, {res.skipped_by_mask} without sample), "
        f"tiles {'x'.join(map(str, res.tile or ()))} in {res.precision}, "
        f"{res.seconds:.1f} s, {res.voxels_per_second:,.0f} voxels/s"
    )


__all__ = ["predict"]
