"""``organet export MODEL --bioimageio OUT.zip``: a model for other tools (bioimage.io:
ilastik, deepImageJ, bioimageio.core), written by :func:`organet.model.bioimageio.export_bioimageio`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from organet.cli.errors import handle_errors
from organet.cli.options import Overwrite, VoxelSize
from organet.cli.output import say
from organet.cli.progress import ProgressBars


@handle_errors
def export(
    model: Annotated[str, typer.Argument(help="checkpoint file or model name (organet models list)")],
    bioimageio: Annotated[
        Path, typer.Option("--bioimageio", help="write a bioimage.io model package (spec 0.5) to this .zip")
    ],
    license: Annotated[
        str | None,
        typer.Option(
            "--license", help="SPDX licence id of the weights, e.g. CC-BY-4.0 (default: the registry's, if SPDX)"
        ),
    ] = None,
    author: Annotated[
        list[str] | None,
        typer.Option("--author", help="author name (repeat for several; default: organet contributors)"),
    ] = None,
    name: Annotated[str | None, typer.Option(help="model name (default: organet ORGANELLE VOXEL-SIZE nm)")] = None,
    input_dtype: Annotated[
        str | None,
        typer.Option(help="input data type the package declares (default: the sample's, else uint8 or float32)"),
    ] = None,
    sample: Annotated[
        str | None,
        typer.Option(help="raw volume at the model's voxel size; the test input is cropped from its centre"),
    ] = None,
    voxel_size: VoxelSize = None,
    overwrite: Overwrite = False,
) -> None:
    """Export a model: a bioimage.io package with PyTorch and TorchScript weights, test data and a cover."""
    from organet.model.bioimageio import export_bioimageio, require_spec

    require_spec()
    vol = None
    if sample is not None:
        from organet.volumes.readers import open_volume

        vol = open_volume(sample, default_voxel_size=voxel_size)
    with ProgressBars(transient=True) as bars:
        out = export_bioimageio(
            model,
            bioimageio,
            license=license,
            authors=tuple(author or ()),
            name=name,
            input_dtype=input_dtype,
            sample=vol,
            overwrite=overwrite,
            progress=bars,
        )
    size = out.stat().st_size / 2**20
    say(f"wrote {out} ({size:.1f} MiB); check it with: bioimageio test {out}")
