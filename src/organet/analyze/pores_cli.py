"""``organet analyze pores``: the command-line face of :mod:`organet.analyze.pores`.

Wire it with ``analyze_app.command("pores")(pores_command)``. Bad input (missing volume,
empty prediction, bad parameter) prints one ``error:`` line and exits with code 2.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console

from organet.clierrors import print_error


def pores_command(
    pred: Annotated[str, typer.Option("--pred", help="nuclear-pore prediction (probability or mask), any volume form")],
    raw: Annotated[str, typer.Option("--raw", help="raw EM volume the diameters are measured on")],
    output: Annotated[str, typer.Option("--output", help="output folder (CSV, Parquet, PNG plots)")],
    min_size_nm3: Annotated[float, typer.Option(help="drop pore components smaller than this (nm^3)")] = 10_000.0,
    threshold: Annotated[float, typer.Option(help="probability threshold (uint8 = value/255; 0/1 masks as is)")] = 0.5,
    alpha_nm: Annotated[Optional[float], typer.Option(
        help="alpha-shape radius (nm); default 2 x median nearest-neighbour distance of the pores")] = None,
    min_diameter_nm: Annotated[float, typer.Option(help="smallest membrane diameter searched (nm)")] = 30.0,
    max_diameter_nm: Annotated[float, typer.Option(help="largest membrane diameter searched (nm)")] = 200.0,
    smooth_nm: Annotated[float, typer.Option(help="Gaussian sigma applied to each profile (nm)")] = 3.0,
    line_width_nm: Annotated[float, typer.Option(help="profile line width/thickness averaged (nm)")] = 5.0,
    min_prominence: Annotated[float, typer.Option(
        help="minimum prominence of a membrane minimum, in profile-noise SDs")] = 3.0,
    nucleus_centre: Annotated[Optional[tuple[float, float, float]], typer.Option(
        help="nucleus centre (nm, z y x) to orient normals outward; default: fitted sphere centre")] = None,
    voxel_size: Annotated[Optional[tuple[float, float, float]], typer.Option(
        help="nm, (z, y, x); overrides the metadata of both volumes")] = None,
    gallery: Annotated[bool, typer.Option(
        "--gallery/--no-gallery", help="also write gallery.png (en-face views)")] = False,
) -> int:
    """Nuclear-pore membrane diameters across a nuclear envelope: table (CSV + Parquet) and plots."""
    from organet.volumes import VolumeError, open_volume

    from .pores import analyze_pores, write_outputs

    console, err = Console(), Console(stderr=True)
    try:
        p = open_volume(pred, voxel_size=voxel_size)
        r = open_volume(raw, voxel_size=voxel_size)
        result = analyze_pores(
            p, r, min_size_nm3, threshold=threshold, alpha_nm=alpha_nm, min_diameter_nm=min_diameter_nm,
            max_diameter_nm=max_diameter_nm, smooth_nm=smooth_nm, line_width_nm=line_width_nm,
            min_prominence=min_prominence, nucleus_centre_nm=nucleus_centre, keep_views=gallery,
        )
        files = write_outputs(result, output, gallery=gallery)
    except (VolumeError, ValueError, FileNotFoundError) as e:
        print_error(err, e)
        raise typer.Exit(2) from None
    t = result.table
    d = t["diameter_mean_nm"].dropna()
    for m in result.messages:
        err.print(f"[yellow]warning:[/] {m}", highlight=False, soft_wrap=True)
    summary = f"{len(t)} pores, {len(d)} measured"
    if len(d):
        summary += f"; membrane diameter median {d.median():.1f} nm (range {d.min():.1f}–{d.max():.1f})"
    flagged = int((t["flags"] != "").sum())
    if flagged:
        summary += f"; {flagged} flagged"
    console.print(summary, highlight=False)
    for name, path in files.items():
        console.print(f"  {name}: {path}", highlight=False)
    return 0
