"""``organet analyze pores``, ``coated-pits`` and ``shapes``: measurements on predictions and labels.

Both command functions can also be called from Python (keyword arguments); they return 0,
and bad input raises ``typer.Exit(2)`` after printing the ``error:`` line.
"""

from __future__ import annotations

from typing import Annotated

import typer

from organet.cli.errors import handle_errors, print_warning
from organet.cli.options import Overwrite, VoxelSize, refuse_existing_folder
from organet.cli.output import say


@handle_errors
def pores(
    pred: Annotated[str, typer.Option("--pred", help="nuclear-pore prediction (probability or mask), any volume form")],
    raw: Annotated[str, typer.Option("--raw", help="raw EM volume the diameters are measured on")],
    output: Annotated[str, typer.Option("--output", help="output folder (CSV, Parquet, PNG plots)")],
    min_size_nm3: Annotated[float, typer.Option(help="drop pore components smaller than this (nm^3)")] = 10_000.0,
    threshold: Annotated[float, typer.Option(help="probability threshold (uint8 = value/255; 0/1 masks as is)")] = 0.5,
    alpha_nm: Annotated[
        float | None,
        typer.Option(help="alpha-shape radius (nm); default 2 x median nearest-neighbour distance of the pores"),
    ] = None,
    min_diameter_nm: Annotated[float, typer.Option(help="smallest membrane diameter searched (nm)")] = 30.0,
    max_diameter_nm: Annotated[float, typer.Option(help="largest membrane diameter searched (nm)")] = 200.0,
    smooth_nm: Annotated[float, typer.Option(help="Gaussian sigma applied to each profile (nm)")] = 3.0,
    line_width_nm: Annotated[float, typer.Option(help="profile line width/thickness averaged (nm)")] = 5.0,
    min_prominence: Annotated[
        float, typer.Option(help="minimum prominence of a membrane minimum, in profile-noise SDs")
    ] = 3.0,
    nucleus_centre: Annotated[
        tuple[float, float, float] | None,
        typer.Option(help="nucleus centre (nm, z y x) to orient normals outward; default: fitted sphere centre"),
    ] = None,
    voxel_size: VoxelSize = None,
    gallery: Annotated[
        bool, typer.Option("--gallery/--no-gallery", help="also write gallery.png (en-face views)")
    ] = False,
    overwrite: Overwrite = False,
) -> int:
    """Nuclear-pore membrane diameters across a nuclear envelope: table (CSV + Parquet) and plots."""
    from organet.analyze.pores import analyze_pores, write_outputs
    from organet.volumes import open_volume

    refuse_existing_folder(output, overwrite)
    p = open_volume(pred, voxel_size=voxel_size)
    r = open_volume(raw, voxel_size=voxel_size)
    result = analyze_pores(
        p,
        r,
        min_size_nm3,
        threshold=threshold,
        alpha_nm=alpha_nm,
        min_diameter_nm=min_diameter_nm,
        max_diameter_nm=max_diameter_nm,
        smooth_nm=smooth_nm,
        line_width_nm=line_width_nm,
        min_prominence=min_prominence,
        nucleus_centre_nm=nucleus_centre,
        keep_views=gallery,
    )
    files = write_outputs(result, output, gallery=gallery)
    t = result.table
    d = t["diameter_mean_nm"].dropna()
    for m in result.messages:
        print_warning(m)
    summary = f"{len(t)} pores, {len(d)} measured"
    if len(d):
        summary += f"; membrane diameter median {d.median():.1f} nm (range {d.min():.1f}–{d.max():.1f})"
    flagged = int((t["flags"] != "").sum())
    if flagged:
        summary += f"; {flagged} flagged"
    say(summary)
    for name, path in files.items():
        say(f"  {name}: {path}")
    return 0


@handle_errors
def coated_pits(
    pred: Annotated[str, typer.Option(help="coated-pit prediction: mask, probability (uint8/float) or labels")],
    raw: Annotated[str, typer.Option(help="raw FIB-SEM volume (same grid as --pred)")],
    output: Annotated[str, typer.Option(help="output folder (table, figures)")],
    cell_mask: Annotated[
        str | None, typer.Option(help="cell mask (> 0 inside the cell); without it pits are 'unknown'")
    ] = None,
    voxel_size: VoxelSize = None,
    threshold: Annotated[float, typer.Option(help="probability threshold of --pred")] = 0.5,
    margin_nm: Annotated[float, typer.Option(help="crop margin around each object (nm)")] = 60.0,
    endocytic_max_dist_nm: Annotated[
        float, typer.Option(help="pit foot within this of the cell-mask boundary → endocytic (nm)")
    ] = 50.0,
    min_voxels: Annotated[int, typer.Option(help="skip smaller components (flag too_small)")] = 27,
    seed: Annotated[int, typer.Option(help="k-means seed for early/late staging")] = 0,
    plots: Annotated[bool, typer.Option(help="write the PNG figures")] = True,
    overwrite: Overwrite = False,
) -> int:
    """Measure clathrin-coated pits and vesicles; early/late staging; a table and figures in OUTPUT.

    Per structure: class, location, height, neck width, FWHM and ellipse axes (CSV + Parquet), and PNG figures.
    """
    from organet.analyze.coated_pits import CoatedPitParams, analyze_coated_pits, write_outputs
    from organet.volumes import open_volume

    refuse_existing_folder(output, overwrite)
    vs = tuple(voxel_size) if voxel_size else None
    p = open_volume(pred, voxel_size=vs)
    r = open_volume(raw, voxel_size=vs)
    m = open_volume(cell_mask, voxel_size=vs) if cell_mask else None
    prm = CoatedPitParams(
        margin_nm=margin_nm,
        pred_threshold=threshold,
        endocytic_max_dist_nm=endocytic_max_dist_nm,
        min_voxels=min_voxels,
        seed=seed,
    )
    result = analyze_coated_pits(p, r, m, params=prm)
    written = write_outputs(result, output, plots=plots)
    t = result.table
    n_pit = int((t["class"] == "pit").sum())
    n_ves = int((t["class"] == "vesicle").sum())
    n_skip = int((t["class"] == "skipped").sum())
    locs = t.loc[t["class"] == "pit", "location"].value_counts().to_dict()
    stages = t.loc[t["stage"] != "", "stage"].value_counts().to_dict()
    say(
        f"{len(t)} structures: {n_pit} pits ({', '.join(f'{v} {k}' for k, v in locs.items()) or 'none'}), "
        f"{n_ves} vesicles, {n_skip} skipped; stages: {', '.join(f'{v} {k}' for k, v in stages.items()) or 'none'}"
    )
    flagged = int((t["flags"] != "").sum())
    if flagged:
        say(f"{flagged} structures flagged (see the 'flags' column)")
    for note in result.notes:
        say(f"note: {note}")
    say(f"wrote {len(written)} files to {output}")
    return 0


@handle_errors
def shapes(
    labels: Annotated[str, typer.Argument(help="label volume (e.g. DIR/labels.zarr from `organet instances`)")],
    output: Annotated[str, typer.Option(help="output folder: shapes.csv/.parquet, cells.csv, summary.json, PNGs")],
    raw: Annotated[str | None, typer.Option(help="raw volume for mean/SD intensity per object")] = None,
    cell_mask: Annotated[
        str | None, typer.Option(help="cell or nucleus mask / labels (> 0 inside): cell id, distance to its boundary")
    ] = None,
    voxel_size: VoxelSize = None,
    plots: Annotated[bool, typer.Option(help="write the PNG figures")] = True,
    overwrite: Overwrite = False,
) -> int:
    """Shape of every object in nm: volume, area, sphericity, axes, skeleton, branching, neighbours.

    One row per object (CSV + Parquet), a per-cell summary (cells.csv) and histograms / scatter plots.
    """
    from rich.table import Table

    from organet.analyze.shapes import measure_shapes, write_outputs
    from organet.cli.output import console
    from organet.cli.progress import ProgressBars
    from organet.volumes import open_volume

    refuse_existing_folder(output, overwrite)
    vs = tuple(voxel_size) if voxel_size else None
    lab = open_volume(labels, voxel_size=vs)
    r = open_volume(raw, voxel_size=vs) if raw else None
    m = open_volume(cell_mask, voxel_size=vs) if cell_mask else None
    with ProgressBars(transient=True) as progress:
        result = measure_shapes(lab, raw=r, cell_mask=m, progress=progress)
    written = write_outputs(result, output, plots=plots)
    t = result.table
    say(f"{len(t)} objects, {int(t['cut_by_border'].sum())} cut by the volume border")
    table = Table(title="per cell (sizes over complete objects)", title_justify="left")
    for name in ("cell", "objects", "cut", "volume µm³", "median vol µm³", "median skel µm", "branch/obj", "branched"):
        table.add_column(name, justify="right", no_wrap=True)
    for _, c in result.cells.iterrows():
        table.add_row(
            str(c["cell_id"]) if cell_mask else "all",
            str(c["objects"]),
            str(c["cut_by_border"]),
            f"{c['total_volume_nm3'] * 1e-9:.4g}",
            f"{c['median_volume_nm3'] * 1e-9:.3g}",
            f"{c['median_skeleton_length_nm'] * 1e-3:.3g}",
            f"{c['branch_points_per_object']:.2f}",
            f"{100 * c['fraction_branched']:.0f} %" if c["fraction_branched"] == c["fraction_branched"] else "nan",
        )
    console.print(table)
    for note in result.notes:
        say(f"note: {note}")
    say(f"wrote {len(written)} files to {output}")
    return 0
