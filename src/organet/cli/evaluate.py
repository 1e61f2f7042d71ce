"""``organet evaluate``: voxel F1 / precision / recall / IoU, a threshold sweep and its plot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
from organet.cli.tables import evaluation_tables, print_tables
from organet.errors import InputError
from organet.volumes.geometry import check_same_voxel_size

SWEEP = tuple(round(0.05 * i, 2) for i in range(1, 20))


@handle_errors
@with_cluster_options
def evaluate(
    pred: Annotated[str, typer.Option(help="prediction: probability (uint8 0-255 or float) or binary mask")],
    truth: Annotated[str, typer.Option(help="ground-truth labels (foreground > 0)")],
    mask: Annotated[str | None, typer.Option(help="evaluate only where this is > 0")] = None,
    voxel_size: Annotated[
        tuple[float, float, float] | None,
        typer.Option(help="nm (z, y, x) of prediction, truth and mask files that lack it"),
    ] = None,
    exclusion_zone: Annotated[
        tuple[int, int] | None, typer.Option(help="ignore IN voxels inside / OUT outside the true boundary")
    ] = None,
    organelle: Annotated[str | None, typer.Option(help="use incasem's exclusion width for this organelle")] = None,
    threshold: Annotated[list[float] | None, typer.Option(help="repeat for several")] = None,
    sweep: Annotated[bool, typer.Option(help="thresholds 0.05..0.95 and a PNG")] = False,
    roi_vox: Annotated[str | None, typer.Option("--roi-vox", help="region in truth voxels: z0:z1,y0:y1,x0:x1")] = None,
    roi_nm: RoiNm = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="write the result as JSON; the evaluation then resumes from JSON.progress"),
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="PNG of the threshold sweep")] = None,
    dask: ClusterOptions = ClusterOptions(),
) -> None:
    """Voxel F1 / precision / recall / IoU with an optional boundary exclusion zone.

    Prediction, truth and mask are aligned by their offsets (nm): by default the
    region evaluated is the prediction's extent, so a prediction of an ROI is
    scored against the matching part of a whole-volume ground truth.
    """
    from organet.evaluate import EXCLUSION_ZONE_WIDTHS, evaluate_volumes, plot_threshold_sweep
    from organet.volumes import open_volume

    p = open_volume(pred, default_voxel_size=voxel_size)
    t = open_volume(truth, default_voxel_size=voxel_size)
    m = open_volume(mask, default_voxel_size=voxel_size) if mask else None
    if exclusion_zone is not None and organelle is not None:
        raise InputError("give either --exclusion-zone or --organelle, not both")
    ez = exclusion_zone
    if organelle is not None:
        if organelle not in EXCLUSION_ZONE_WIDTHS:
            raise InputError(f"--organelle {organelle!r}: expected one of {sorted(EXCLUSION_ZONE_WIDTHS)}")
        ez = (EXCLUSION_ZONE_WIDTHS[organelle],) * 2
    for v, what in ((t, f"truth {truth}"), (m, f"mask {mask}")):
        if v is not None:
            check_same_voxel_size(
                v.voxel_size, p.voxel_size, what, f"the prediction {pred}", "pass --voxel-size for files that lack it"
            )
    roi = parse_roi_options(t, roi_vox, roi_nm)
    begin, end = roi.to_nm(t.voxel_size, t.offset) if roi is not None else p.bounds_nm
    p, t = p.crop_nm(begin, end), t.crop_nm(begin, end)
    m = m.crop_nm(begin, end) if m is not None else None
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
