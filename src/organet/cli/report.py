"""``organet report``: one self-contained HTML page of a training run or a prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from organet.cli.errors import handle_errors
from organet.cli.output import say
from organet.cli.progress import ProgressBars
from organet.errors import InputError


def _parse_point(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        z, y, x = (int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise InputError(f"--point {text!r}: expected three voxel indices z,y,x, e.g. 20,384,512") from None
    return (z, y, x)


@handle_errors
def report(
    target: Annotated[str, typer.Argument(help="training run folder (organet train) or OUT.zarr (organet predict)")],
    output: Annotated[Path, typer.Option(help="HTML file; its PNGs go to NAME_files/ beside it")] = Path("report.html"),
    truth: Annotated[
        str | None,
        typer.Option(help="ground truth on the prediction's grid: overlays, F1 and a threshold sweep"),
    ] = None,
    raw: Annotated[
        str | None, typer.Option(help="raw volume under the prediction (default: the input its run record names)")
    ] = None,
    instances: Annotated[
        Path | None,
        typer.Option(help="folder with objects.csv / shapes.csv (organet instances, analyze shapes): histograms"),
    ] = None,
    point: Annotated[
        str | None, typer.Option(help="input voxel z,y,x the planes pass through (default: the ROI's centre)")
    ] = None,
    max_px: Annotated[int, typer.Option(help="largest plane side in pixels (picks the pyramid level)")] = 1024,
) -> None:
    """Write one HTML page (images inline, no network) about a training run or a prediction.

    A run folder: curves, validation F1 per checkpoint, checkpoint-averaged scores of
    `organet evaluate --checkpoints` folders inside it, the data record, config and commands.
    A prediction: metadata, z/y/x planes of raw with the prediction (and --truth) overlaid,
    with --truth its F1 and a threshold sweep, and the command.
    """
    from organet.report import build_report

    with ProgressBars(transient=True) as progress:
        res = build_report(
            target,
            output,
            truth=truth,
            raw=raw,
            instances=instances,
            point=_parse_point(point),
            max_px=max_px,
            progress=progress,
        )
    folder = res.images[0].parent.name if res.images else ""
    say(
        f"wrote {res.output} ({res.kind} report: {', '.join(res.sections)}; "
        f"{len(res.images)} PNGs in {folder}/) in {res.seconds:.1f} s"
    )


__all__ = ["report"]
