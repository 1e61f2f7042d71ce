"""``organet demo``: the whole loop on a synthetic volume or on real data in the lucchi_pp layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from organet.cli.errors import handle_errors
from organet.cli.output import console, say
from organet.cli.progress import ProgressBars
from organet.cli.tables import demo_table


@handle_errors
def demo(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("organet-demo"),
    minutes: Annotated[float, typer.Option(help="training time budget")] = 3.0,
    data: Annotated[Path | None, typer.Option(help="real data folder in lucchi_pp layout")] = None,
    seed: Annotated[int, typer.Option(help="seed of the synthetic volume and of training")] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty output folder")] = False,
) -> None:
    """Synthesize a FIB-SEM-like volume, train a small U-Net, predict held-out data, print F1."""
    from organet.demo.run import run_demo

    with ProgressBars() as progress:
        res = run_demo(out, minutes=minutes, data=data, seed=seed, overwrite=overwrite, log=say, progress=progress)
    console.print(demo_table(res))
