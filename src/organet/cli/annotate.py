"""``organet annotate graphcut`` and ``organet annotate napari``: ground truth from scribbles."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from organet.cli.errors import handle_errors
from organet.cli.options import VoxelSize
from organet.cli.output import err_console, say
from organet.errors import InputError, VolumeError

if TYPE_CHECKING:  # pragma: no cover
    from organet.annotate.graphcut import GraphCutParams
    from organet.volumes import Volume


@handle_errors
def graphcut(
    raw: Annotated[str, typer.Option("--raw", help="raw EM volume (any supported format)")],
    scribbles: Annotated[
        str,
        typer.Option(
            "--scribbles",
            help="scribble volume: 0 unlabeled, 1 object, 2 background (or a VAST/ilastik "
            "label export with --object-ids/--background-ids)",
        ),
    ],
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="output OME-Zarr: labels (0/1) and probability; with --box the annotation set LABELS.zarr "
            "(created by the first box, each further box added to it)",
        ),
    ],
    roi_vox: Annotated[
        str | None, typer.Option("--roi-vox", help="ROI in voxels: z0:z1,y0:y1,x0:x1 (only it is read)")
    ] = None,
    box: Annotated[
        str | None,
        typer.Option(
            "--box",
            help="DIR:RANK: cut inside box RANK of the `organet suggest` folder DIR and write it into the "
            "annotation set --output (instead of --roi-vox); scribbles of the raw's or of the box's shape",
        ),
    ] = None,
    object_ids: Annotated[
        list[int] | None, typer.Option("--object-ids", help="label values meaning object (imported label volumes)")
    ] = None,
    background_ids: Annotated[
        list[int] | None, typer.Option("--background-ids", help="label values meaning background")
    ] = None,
    smoothness: Annotated[float, typer.Option(help="weight of the pairwise (boundary) term; 0 = none")] = 10.0,
    contrast_sigma: Annotated[
        float, typer.Option(help="intensity scale of the pairwise term (raw scaled to [0, 1])")
    ] = 0.05,
    downsample: Annotated[
        str,
        typer.Option(
            help="working grid: 'auto' (full resolution up to --max-working-voxels, else coarsened by block "
            "means, finest axes first), one factor for all axes (1 = full resolution) or Z,Y,X"
        ),
    ] = "auto",
    max_working_voxels: Annotated[
        int, typer.Option(help="budget of --downsample auto, in working-grid voxels")
    ] = 4_000_000,
    scales: Annotated[
        list[float] | None, typer.Option("--scale", help="feature scales (working-grid voxels); repeat")
    ] = None,
    trees: Annotated[int, typer.Option(help="random-forest trees")] = 64,
    autocontext: Annotated[int, typer.Option(help="extra auto-context forest stages")] = 1,
    supervoxels: Annotated[
        int,
        typer.Option(help="forest on watershed supervoxels of this edge length (working-grid voxels); 0 = per voxel"),
    ] = 0,
    fill_holes: Annotated[
        bool, typer.Option("--fill-holes/--no-fill-holes", help="fill enclosed holes in objects")
    ] = False,
    min_size: Annotated[
        int, typer.Option(help="drop objects smaller than this (working-grid voxels) unless scribbled")
    ] = 0,
    jobs: Annotated[int, typer.Option(help="CPU threads for the forest")] = 1,
    seed: Annotated[int, typer.Option(help="random-forest seed")] = 0,
    voxel_size: VoxelSize = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="replace an existing output; with --box: replace the labels of an annotated box (the same box "
            "again, or where the new box overlaps one with other labels); other boxes are kept",
        ),
    ] = False,
) -> None:
    """Ground truth from sparse scribbles: random forest on multi-scale features + graph cut.

    With --box DIR:RANK the cut runs inside a box of `organet suggest` and the labels go into one annotation set
    (LABELS.zarr/labels on the raw's grid, 0 outside the boxes, the boxes listed in its attributes); the command
    prints the `organet finetune` arguments for all annotated boxes.
    """
    from organet.annotate.boxes import is_annotation_set
    from organet.annotate.graphcut import DEFAULT_SCALES, GraphCutParams, graphcut_volume, scribbles_from_labels
    from organet.volumes import Volume, open_volume, parse_roi

    if box is not None and roi_vox is not None:
        raise InputError("give either --box DIR:RANK or --roi-vox, not both")
    r = open_volume(raw, voxel_size=voxel_size)
    s = open_volume(scribbles, voxel_size=voxel_size or r.voxel_size)
    params = GraphCutParams(
        downsample=parse_downsample(downsample),
        max_working_voxels=max_working_voxels,
        scales=tuple(scales) if scales else DEFAULT_SCALES,
        n_trees=trees,
        autocontext=autocontext,
        smoothness=smoothness,
        contrast_sigma=contrast_sigma,
        fill_holes=fill_holes,
        min_size=min_size,
        supervoxels=supervoxels,
        seed=seed,
        n_jobs=jobs,
    )
    if box is not None:
        _graphcut_box(r, s, scribbles, box, output, params, object_ids, background_ids, overwrite)
        return
    if is_annotation_set(output):
        raise InputError(
            f"{output} is an annotation set of boxes; add a box to it with --box DIR:RANK, or give another --output"
        )
    roi = parse_roi(roi_vox, "vox", r) if roi_vox else None
    if object_ids or background_ids:
        # an imported label volume: map ids to scribbles over the ROI only
        rr = roi if roi is not None else r.roi
        if tuple(s.shape) != tuple(r.shape):
            raise VolumeError(f"labels {s.path} have shape {tuple(s.shape)} but raw has {tuple(r.shape)}")
        mapped = scribbles_from_labels(s.read(rr), object_ids or (1,), background_ids or (2,))
        s = Volume(_Placed(mapped, rr, r.shape), r.voxel_size, r.offset, path=f"{s.path} (imported)")
    res = graphcut_volume(
        r,
        s,
        output,
        roi=roi,
        params=params,
        overwrite=overwrite,
        log=lambda m: err_console.print(m, markup=False, highlight=False),
    )
    frac = float(res.labels.mean())
    grid = res.working_grid.describe() if res.working_grid else "?"
    say(
        f"wrote {output}: {100 * frac:.1f} % object; scribbled {res.n_scribbled[0]} object / "
        f"{res.n_scribbled[1]} background voxels; working grid: {grid}; {res.seconds['total']:.1f} s"
    )


def _graphcut_box(
    r: Volume,
    s: Volume,
    scribbles_path: str,
    box: str,
    output: str,
    params: GraphCutParams,
    object_ids: list[int] | None,
    background_ids: list[int] | None,
    overwrite: bool,
) -> None:
    """``graphcut --box DIR:RANK``: the cut inside that box, written into the annotation set ``output``."""
    from organet.annotate.boxes import annotate_box, check_grid, finetune_command, parse_box, read_suggestions
    from organet.annotate.graphcut import scribbles_from_labels
    from organet.annotate.scribbles import scribbles_in

    folder, rank = parse_box(box)
    sug = read_suggestions(folder)
    check_grid(r, sug)
    roi = sug.box(rank).roi
    scrib = scribbles_in(s, r.shape, roi, f"box {rank}")
    if object_ids or background_ids:
        scrib = scribbles_from_labels(scrib, object_ids or (1,), background_ids or (2,))
    res, written = annotate_box(
        r,
        scrib,
        output,
        roi,
        params=params,
        rank=rank,
        source=folder,
        scribbles_source=scribbles_path,
        replace=overwrite,
        log=lambda m: err_console.print(m, markup=False, highlight=False),
    )
    grid = res.working_grid.describe() if res.working_grid else "?"
    changed = f"; replaced the labels of {', '.join(written.replaced)}" if written.replaced else ""
    say(
        f"wrote box {rank} of {folder} ({written.record['roi_vox']}) into {output}/labels: "
        f"{100 * float(res.labels.mean()):.1f} % object; scribbled {res.n_scribbled[0]} object / "
        f"{res.n_scribbled[1]} background voxels; working grid: {grid}; {res.seconds['total']:.1f} s{changed}"
    )
    say(f"annotated boxes in {output} ({len(written.rois)}): {' '.join(written.rois)}")
    say("fine-tune on them:")
    say(f"  {finetune_command(output)}")


def parse_downsample(text: str) -> int | tuple[int, int, int] | None:
    """``--downsample``: 'auto' -> None, '2' -> 2, '1,2,2' -> (1, 2, 2) (z, y, x); factors >= 1."""
    t = text.strip().lower()
    if t == "auto":
        return None
    try:
        vals = [int(v) for v in t.replace(" ", "").split(",")]
    except ValueError:
        vals = []
    if len(vals) not in (1, 3) or min(vals) < 1:
        raise InputError(f"--downsample must be 'auto', one integer >= 1 or Z,Y,X integers >= 1, got {text!r}")
    return vals[0] if len(vals) == 1 else (vals[0], vals[1], vals[2])


@handle_errors
def napari(
    raw: Annotated[str, typer.Option("--raw", help="raw EM volume (any supported format)")],
    scribbles: Annotated[
        str | None,
        typer.Option(
            "--scribbles",
            help="scribbles to continue from (0/1/2; same shape as raw or as the ROI, e.g. OUT.zarr/scribbles)",
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="default path of the widget's Save (OME-Zarr); with --suggestions the annotation set the boxes "
            "are saved into (default labels.zarr; its scribbles are loaded when it exists)",
        ),
    ] = None,
    roi_vox: Annotated[
        str | None,
        typer.Option("--roi-vox", help="load only this ROI in voxels: z0:z1,y0:y1,x0:x1 (it is held in memory)"),
    ] = None,
    suggestions: Annotated[
        str | None,
        typer.Option(
            "--suggestions",
            help="an `organet suggest` folder of this raw: show its uncertainty map and boxes; the widget's box "
            "selector restricts the cut to a box and Save adds the box to --output",
        ),
    ] = None,
    voxel_size: VoxelSize = None,
) -> None:
    """Paint scribbles in napari and run the graph cut from a docked widget (needs the optional napari extra)."""
    from organet.annotate.napari_widget import open_viewer, require_napari

    try:
        require_napari()
    except ImportError as e:
        raise InputError(str(e)) from None
    import napari

    try:
        open_viewer(raw, scribbles, output=output, voxel_size=voxel_size, roi_vox=roi_vox, suggestions=suggestions)
    except ImportError as e:  # e.g. no Qt binding
        raise InputError(
            f"napari could not start: {e} (a Qt backend comes with pip install 'organet[napari]')"
        ) from None
    napari.run()


class _Placed:
    """An array known only inside ``roi`` of a volume of ``shape`` (reads must stay inside)."""

    def __init__(self, data: np.ndarray, roi: Any, shape: tuple[int, ...]) -> None:
        self.data, self.roi, self.shape, self.dtype = data, roi, tuple(shape), data.dtype

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        sl = tuple(slice(k.start - o, k.stop - o) for k, o in zip(key, self.roi.offset))
        if any(s.start < 0 or s.stop > n for s, n in zip(sl, self.data.shape)):
            raise VolumeError("read outside the imported ROI")
        return self.data[sl]
