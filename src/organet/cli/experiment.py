"""``organet experiment``: train and score a grid of configs (the ASEM Tables S5–S8 layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from organet.cli.errors import handle_errors
from organet.cli.options import ClusterOptions, with_cluster_options
from organet.cli.output import console, say
from organet.cli.progress import ProgressBars


@handle_errors
@with_cluster_options
def experiment(
    grid: Annotated[Path, typer.Argument(help="grid YAML: base config, axes, evaluation")],
    dry_run: Annotated[bool, typer.Option(help="list the cells and whether they are finished; run nothing")] = False,
    dask: ClusterOptions = ClusterOptions(),
) -> None:
    """Train every cell of a grid, score each over its last checkpoints (mean ± SD), and
    write one table (Markdown + CSV) and a bar plot. Rerunning skips finished cells."""
    from rich.table import Table

    from organet.experiment import grid_output, load_grid, run_grid, write_results
    from organet.experiment.grid import finished

    spec, cells = load_grid(grid)
    out = grid_output(spec, grid)
    if dry_run:
        t = Table(title=f"{spec.name}: {len(cells)} cells -> {out}")
        for col in (*spec.axes, "status"):
            t.add_column(col)
        for c in cells:
            r = finished(c)
            status = (
                f"finished, F1 {r.mean['f1']:.3f}" if r else ("training started" if c.run_dir.exists() else "to do")
            )
            t.add_row(*(c.coords[a] for a in spec.axes), status)
        console.print(t)
        return
    with dask.client() as client, ProgressBars() as progress:
        results = run_grid(cells, client=client, progress=None if client else progress, log=say)
    ev = spec.evaluation
    notes = (
        f"Grid `{grid}`; each cell scored over its last {ev.last} checkpoints on `{Path(ev.input).name}` "
        f"against `{Path(ev.truth).name}`"
        + (f" (ROI {ev.roi_vox or ev.roi_nm})" if ev.roi_vox or ev.roi_nm else "")
        + f", threshold {ev.threshold:g}; SD is the sample SD over checkpoints."
    )
    for p in write_results(results, out, spec.name, notes):
        say(f"wrote {p}")
    say((out / "results.md").read_text())
