"""``organet evaluate``: voxel F1 / precision / recall / IoU of a prediction (``--pred``), with a
threshold sweep and its plot, or of the checkpoints of a training run (``--checkpoints``,
mean ± sample SD over checkpoints), or instance metrics of labels (``--instances``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from organet.cli.errors import handle_errors
from organet.cli.options import (
    ClusterOptions,
    RoiNm,
    parse_roi_options,
    with_cluster_options,
)
from organet.cli.output import console, say
from organet.cli.progress import ProgressBars
from organet.cli.tables import checkpoint_table, evaluation_tables, instance_tables, print_tables
from organet.errors import InputError
from organet.evaluate.metrics import SWEEP
from organet.volumes.geometry import check_same_voxel_size

if TYPE_CHECKING:  # pragma: no cover
    from organet.volumes import Volume

CKPT = "Checkpoints of a training run (--checkpoints; mean ± SD over checkpoints)"
INST = "Instances (--instances: labels, or masks as connected components)"
VOXEL_HINT = "pass --voxel-size for files that lack it"


@handle_errors
@with_cluster_options
def evaluate(
    truth: Annotated[str, typer.Option(help="ground-truth labels (foreground > 0)")],
    pred: Annotated[
        str | None, typer.Option(help="prediction: probability (uint8 0-255 or float) or binary mask")
    ] = None,
    mask: Annotated[str | None, typer.Option(help="evaluate only where this is > 0")] = None,
    voxel_size: Annotated[
        tuple[float, float, float] | None,
        typer.Option(help="nm (z, y, x) of prediction, input, truth and mask files that lack it"),
    ] = None,
    exclusion_zone: Annotated[
        tuple[int, int] | None,
        typer.Option(help="ignore IN voxels inside / OUT outside the true boundary (0 0: none)"),
    ] = None,
    organelle: Annotated[
        str | None, typer.Option(help="use incasem's exclusion width for this organelle (mito, golgi, er, np, ccp)")
    ] = None,
    threshold: Annotated[list[float] | None, typer.Option(help="repeat for several (--pred only)")] = None,
    sweep: Annotated[bool, typer.Option(help="thresholds 0.05..0.95 and a PNG")] = False,
    roi_vox: Annotated[str | None, typer.Option("--roi-vox", help="region in truth voxels: z0:z1,y0:y1,x0:x1")] = None,
    roi_nm: RoiNm = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="write the result as JSON; the evaluation then resumes from JSON.progress"),
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="PNG of the threshold sweep")] = None,
    checkpoints: Annotated[
        Path | None,
        typer.Option(help="training run folder: score its checkpoints (checkpoints/iter_*.pt)", rich_help_panel=CKPT),
    ] = None,
    input: Annotated[
        str | None, typer.Option("--input", help="raw volume to predict (with --checkpoints)", rich_help_panel=CKPT)
    ] = None,
    last: Annotated[int | None, typer.Option(help="the last N checkpoints", rich_help_panel=CKPT)] = None,
    every: Annotated[
        int | None, typer.Option(help="checkpoints at multiples of K iterations", rich_help_panel=CKPT)
    ] = None,
    iterations: Annotated[
        str | None, typer.Option(help="exactly these iterations, e.g. 1000,2000,3000", rich_help_panel=CKPT)
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            help="output folder (default RUN_DIR/eval_<hash of input, truth, ROI, threshold>)", rich_help_panel=CKPT
        ),
    ] = None,
    tile: Annotated[
        tuple[int, int, int] | None, typer.Option(help="network input per tile (voxels)", rich_help_panel=CKPT)
    ] = None,
    batch_size: Annotated[int, typer.Option(help="tiles per forward pass", rich_help_panel=CKPT)] = 1,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N]", rich_help_panel=CKPT)] = "auto",
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="recompute every checkpoint instead of reusing finished ones", rich_help_panel=CKPT
        ),
    ] = False,
    instances: Annotated[
        bool,
        typer.Option(
            "--instances",
            help="score objects: matched F1 at IoU 0.5-0.95, ARAND, VI, merges, splits",
            rich_help_panel=INST,
        ),
    ] = False,
    min_overlap: Annotated[
        float,
        typer.Option(
            help="merge: >= 2 true objects each with this fraction inside one predicted object (split: vice versa)",
            rich_help_panel=INST,
        ),
    ] = 0.5,
    min_size: Annotated[
        float,
        typer.Option(
            "--min-size", help="ignore objects (predicted and true) smaller than this (nm³)", rich_help_panel=INST
        ),
    ] = 0.0,
    dask: ClusterOptions = ClusterOptions(),
) -> None:
    """Voxel F1 / precision / recall / IoU with an optional boundary exclusion zone.

    With --pred: prediction, truth and mask are aligned by their offsets (nm); by default
    the region evaluated is the prediction's extent, so a prediction of an ROI is scored
    against the matching part of a whole-volume ground truth.

    With --checkpoints RUN_DIR --input RAW: each selected checkpoint (all by default;
    --last, --every, --iterations) predicts the ROI (default: what the truth covers) and its
    probability is scored; per-checkpoint scores, their mean and sample SD (ddof = 1) go to
    a table, OUTPUT/summary.json, summary.md and f1_vs_iteration.png. Rerunning skips
    finished checkpoints. The exclusion zone defaults to the checkpoints' organelle.

    With --instances --pred LABELS --truth LABELS_OR_MASK: objects against objects (a mask,
    0/1 or bool, becomes its connected components): matched precision, recall, F1 and AP at
    IoU 0.50-0.95, adapted Rand error, variation of information (split / merge), merges and
    splits; --json writes them, --plot (default: the JSON path with .png) draws them.
    """
    from organet.organelles import organelle as find_organelle

    if exclusion_zone is not None and organelle is not None:
        raise InputError("give either --exclusion-zone or --organelle, not both")
    if organelle is not None:
        find_organelle(organelle, "--organelle")  # an unknown name fails here, with the nearest one
    if pred is not None and checkpoints is not None:
        raise InputError(
            "give either --pred (score a prediction) or --checkpoints (predict --input with each checkpoint "
            "of a run and score those), not both"
        )
    if instances:
        other = {
            "--checkpoints": checkpoints,
            "--input": input,
            "--threshold": threshold,
            "--sweep": sweep or None,
            "--exclusion-zone": exclusion_zone,
            "--organelle": organelle,
            "--last": last,
            "--every": every,
            "--iterations": iterations,
            "--output": output,
            "--tile": tile,
        }
        for flag, value in other.items():
            if value is not None:
                raise InputError(f"{flag} does not apply to --instances")
        _evaluate_instances(pred, truth, mask, voxel_size, roi_vox, roi_nm, json_out, plot, min_overlap, min_size, dask)
        return
    if checkpoints is not None:
        for flag, value in (("--sweep", sweep or None), ("--json", json_out), ("--plot", plot)):
            if value is not None:
                raise InputError(f"{flag} applies to --pred; with --checkpoints the results go to --output")
        if threshold is not None and len(threshold) > 1:
            raise InputError(f"with --checkpoints give one --threshold, got {len(threshold)}")
        if input is None:
            raise InputError("--checkpoints needs --input RAW: the volume each checkpoint predicts")
        _evaluate_checkpoints(
            run_dir=checkpoints,
            raw_path=input,
            truth_path=truth,
            mask_path=mask,
            voxel_size=voxel_size,
            exclusion=exclusion_zone if exclusion_zone is not None else organelle,
            threshold=threshold[0] if threshold else 0.5,
            roi_vox=roi_vox,
            roi_nm=roi_nm,
            selection={"last": last, "every": every, "iterations": iterations},
            output=output,
            predictor={"tile": tile, "batch_size": batch_size, "device": device},
            overwrite=overwrite,
            dask=dask,
        )
        return
    if pred is None:
        raise InputError(
            "give --pred PRED to score a prediction, or --checkpoints RUN_DIR --input RAW to score "
            "the checkpoints of a training run"
        )
    given: dict[str, Any] = {
        "--input": input,
        "--last": last,
        "--every": every,
        "--iterations": iterations,
        "--output": output,
    }
    given |= {"--tile": tile, "--overwrite": overwrite or None}
    for flag, value in given.items():
        if value is not None:
            raise InputError(f"{flag} applies to --checkpoints, not to --pred")
    _evaluate_prediction(
        pred,
        truth,
        mask,
        voxel_size,
        exclusion_zone,
        organelle,
        threshold,
        sweep,
        roi_vox,
        roi_nm,
        json_out,
        plot,
        dask,
    )


def _evaluate_prediction(
    pred: str,
    truth: str,
    mask: str | None,
    voxel_size: tuple[float, float, float] | None,
    exclusion_zone: tuple[int, int] | None,
    organelle: str | None,
    threshold: list[float] | None,
    sweep: bool,
    roi_vox: str | None,
    roi_nm: str | None,
    json_out: Path | None,
    plot: Path | None,
    dask: ClusterOptions,
) -> None:
    from organet.evaluate import evaluate_volumes, plot_threshold_sweep
    from organet.organelles import organelle as find_organelle

    p, t, m = _aligned(pred, truth, mask, voxel_size, roi_vox, roi_nm)
    ez = exclusion_zone
    if organelle is not None:
        ez = (find_organelle(organelle, "--organelle").exclusion_zone,) * 2
    thresholds = SWEEP if sweep else tuple(threshold or [0.5])
    with dask.client() as client, ProgressBars() as progress:
        ledger = json_out.with_name(json_out.name + ".progress") if json_out else None
        res = evaluate_volumes(
            p,
            t,
            m,
            exclusion=ez,
            thresholds=thresholds,
            client=client,
            ledger=ledger,
            overwrite=True,  # a ledger of another evaluation is only a cache: start over
            progress=progress,
        )
    print_tables(console, evaluation_tables(res))
    if json_out:
        res.write_json(json_out)
        say(f"wrote {json_out}")
    if (sweep or plot) and res.per_threshold:
        out = plot or Path("threshold_sweep.png")
        plot_threshold_sweep(res, out)
        say(f"wrote {out}")


def _evaluate_instances(
    pred: str | None,
    truth: str,
    mask: str | None,
    voxel_size: tuple[float, float, float] | None,
    roi_vox: str | None,
    roi_nm: str | None,
    json_out: Path | None,
    plot: Path | None,
    min_overlap: float,
    min_size: float,
    dask: ClusterOptions,
) -> None:
    from organet.evaluate.instances import evaluate_instances
    from organet.evaluate.instances_plot import plot_instance_scores

    if pred is None:
        raise InputError("--instances needs --pred LABELS (e.g. the labels.zarr of `organet instances`)")
    p, t, m = _aligned(pred, truth, mask, voxel_size, roi_vox, roi_nm)
    with dask.client() as client, ProgressBars() as progress:
        res = evaluate_instances(
            p, t, m, min_overlap=min_overlap, min_size_nm3=min_size, client=client, progress=progress
        )
    print_tables(console, instance_tables(res))
    if json_out:
        res.write_json(json_out)
        say(f"wrote {json_out}")
    out = plot or (json_out.with_suffix(".png") if json_out else None)
    if out is not None:
        plot_instance_scores(res, out)
        say(f"wrote {out}")


def _parse_iterations(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise InputError(f"--iterations {text!r}: expected whole numbers separated by commas, e.g. 1000,2000") from None


def _input_roi(raw: Volume, truth: Volume, roi_vox: str | None, roi_nm: str | None) -> Any:
    """The ROI of --roi-vox / --roi-nm (truth voxels, or nm) in the input's voxels (None: not given)."""
    from organet.volumes import Roi

    roi_t = parse_roi_options(truth, roi_vox, roi_nm)
    if roi_t is None:
        return None
    begin, end = roi_t.to_nm(truth.voxel_size, truth.offset)
    raw.crop_nm(begin, end)  # on the input's grid and inside it, or a clear error
    return Roi.from_nm(begin, end, raw.voxel_size, raw.offset)


def _evaluate_checkpoints(
    *,
    run_dir: Path,
    raw_path: str,
    truth_path: str,
    mask_path: str | None,
    voxel_size: tuple[float, float, float] | None,
    exclusion: tuple[int, int] | str | None,
    threshold: float,
    roi_vox: str | None,
    roi_nm: str | None,
    selection: dict[str, Any],
    output: Path | None,
    predictor: dict[str, Any],
    overwrite: bool,
    dask: ClusterOptions,
) -> None:
    from organet.evaluate import default_output_dir, evaluate_checkpoints, select_checkpoints
    from organet.volumes import open_volume

    paths = select_checkpoints(
        run_dir, selection["last"], selection["every"], _parse_iterations(selection["iterations"])
    )
    raw = open_volume(raw_path, default_voxel_size=voxel_size)
    truth = open_volume(truth_path, default_voxel_size=voxel_size)
    check_same_voxel_size(truth.voxel_size, raw.voxel_size, f"truth {truth_path}", f"the input {raw_path}", VOXEL_HINT)
    roi = _input_roi(raw, truth, roi_vox, roi_nm)
    out = output if output is not None else default_output_dir(run_dir, raw, truth, roi, threshold)
    say(f"evaluating {len(paths)} checkpoints of {run_dir} into {out}")
    with dask.client() as client, ProgressBars() as progress:
        res = evaluate_checkpoints(
            paths,
            raw,
            truth,
            output_dir=out,
            roi=roi,
            mask=mask_path,
            exclusion=exclusion,
            threshold=threshold,
            default_voxel_size=voxel_size,
            client=client,
            overwrite=overwrite,
            progress=progress,
            **predictor,
        )
    print_tables(console, [checkpoint_table(res)])
    reused = len(res.rows) - res.computed
    say(
        f"wrote {out}/summary.json, summary.md and f1_vs_iteration.png "
        f"({res.computed} checkpoints computed, {reused} reused)"
    )


def _aligned(
    pred: str,
    truth: str,
    mask: str | None,
    voxel_size: Any,
    roi_vox: str | None,
    roi_nm: str | None,
) -> tuple[Any, Any, Any]:
    """Prediction, truth and mask (or None) opened, checked for one voxel size and cropped to
    the ROI (given on the truth's grid; default the prediction's bounds), all in nm."""
    from organet.volumes import open_volume

    p = open_volume(pred, default_voxel_size=voxel_size)
    t = open_volume(truth, default_voxel_size=voxel_size)
    m = open_volume(mask, default_voxel_size=voxel_size) if mask else None
    for v, what in ((t, f"truth {truth}"), (m, f"mask {mask}")):
        if v is not None:
            check_same_voxel_size(v.voxel_size, p.voxel_size, what, f"the prediction {pred}", VOXEL_HINT)
    roi = parse_roi_options(t, roi_vox, roi_nm)
    begin, end = roi.to_nm(t.voxel_size, t.offset) if roi is not None else p.bounds_nm
    return (
        p.crop_nm(begin, end),
        t.crop_nm(begin, end),
        m.crop_nm(begin, end) if m is not None else None,
    )
