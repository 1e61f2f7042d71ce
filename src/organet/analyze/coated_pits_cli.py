"""``organet analyze coated-pits``: one plain typer-annotated function the CLI registers with
``analyze_app.command("coated-pits")(coated_pits_command)``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from organet.clierrors import print_error


def coated_pits_command(
    pred: Annotated[str, typer.Option(help="coated-pit prediction: mask, probability (uint8/float) or labels")],
    raw: Annotated[str, typer.Option(help="raw FIB-SEM volume (same grid as --pred)")],
    output: Annotated[str, typer.Option(help="output folder (table, figures)")],
    cell_mask: Annotated[
        Optional[str], typer.Option(help="cell mask (> 0 inside the cell); without it pits are 'unknown'")
    ] = None,
    voxel_size: Annotated[
        Optional[tuple[float, float, float]], typer.Option(help="nm, (z, y, x); overrides metadata")
    ] = None,
    threshold: Annotated[float, typer.Option(help="probability threshold of --pred")] = 0.5,
    margin_nm: Annotated[float, typer.Option(help="crop margin around each object (nm)")] = 60.0,
    endocytic_max_dist_nm: Annotated[
        float, typer.Option(help="pit foot within this of the cell-mask boundary → endocytic (nm)")
    ] = 50.0,
    min_voxels: Annotated[int, typer.Option(help="skip smaller components (flag too_small)")] = 27,
    seed: Annotated[int, typer.Option(help="k-means seed for early/late staging")] = 0,
    plots: Annotated[bool, typer.Option(help="write the PNG figures")] = True,
) -> int:
    """Measure clathrin-coated pits and vesicles: class, location, height, neck width, FWHM, ellipse
    axes; early/late staging; CSV + Parquet table and PNG figures in OUTPUT. Bad input prints one
    ``error:`` line and exits 2."""
    from rich.console import Console

    from organet.volumes import VolumeError, open_volume

    from .coated_pits import CoatedPitParams, analyze_coated_pits, write_outputs

    err = Console(stderr=True)
    try:
        vs = tuple(voxel_size) if voxel_size else None
        p = open_volume(pred, voxel_size=vs)
        r = open_volume(raw, voxel_size=vs)
        m = open_volume(cell_mask, voxel_size=vs) if cell_mask else None
        prm = CoatedPitParams(
            margin_nm=margin_nm, pred_threshold=threshold, endocytic_max_dist_nm=endocytic_max_dist_nm,
            min_voxels=min_voxels, seed=seed,
        )
        result = analyze_coated_pits(p, r, m, params=prm)
        written = write_outputs(result, output, plots=plots)
    except (VolumeError, ValueError, FileNotFoundError) as e:
        print_error(err, e)
        raise typer.Exit(2) from None
    t = result.table
    out = Console()
    n_pit = int((t["class"] == "pit").sum())
    n_ves = int((t["class"] == "vesicle").sum())
    n_skip = int((t["class"] == "skipped").sum())
    locs = t.loc[t["class"] == "pit", "location"].value_counts().to_dict()
    stages = t.loc[t["stage"] != "", "stage"].value_counts().to_dict()
    out.print(
        f"{len(t)} structures: {n_pit} pits ({', '.join(f'{v} {k}' for k, v in locs.items()) or 'none'}), "
        f"{n_ves} vesicles, {n_skip} skipped; stages: {', '.join(f'{v} {k}' for k, v in stages.items()) or 'none'}",
        highlight=False,
        soft_wrap=True,
    )
    flagged = int((t["flags"] != "").sum())
    if flagged:
        out.print(f"{flagged} structures flagged (see the 'flags' column)", highlight=False)
    for note in result.notes:
        out.print(f"note: {note}", highlight=False)
    out.print(f"wrote {len(written)} files to {output}", highlight=False)
    return 0


if __name__ == "__main__":  # pragma: no cover
    # ``python -m organet.analyze.coated_pits_cli FOLDER [--seed S]`` writes the phantom volumes;
    # ``... FOLDER --score OUT/coated_pits.csv`` scores an analysis against FOLDER/truth.json
    from .coated_pits_phantom import main

    raise SystemExit(main())
