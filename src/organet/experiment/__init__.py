"""Experiment grids: many training configs, each trained and scored with the
checkpoint-averaged protocol of the ASEM paper, summarised in one table and plot."""

from organet.experiment.grid import (
    Cell,
    CellResult,
    EvaluationSpec,
    GridSpec,
    grid_output,
    load_grid,
    run_cell,
    run_grid,
    write_results,
)

__all__ = [
    "Cell",
    "CellResult",
    "EvaluationSpec",
    "GridSpec",
    "grid_output",
    "load_grid",
    "run_cell",
    "run_grid",
    "write_results",
]
