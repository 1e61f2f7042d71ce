"""Report section of per-object tables: ``objects.csv`` of ``organet instances`` and
``shapes.csv`` of ``organet analyze shapes`` (one row per object; sizes in nm, nm², nm³)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from organet.errors import InputError

from . import html
from .html import Section

TABLES = ("shapes.csv", "objects.csv")
"""The per-object tables looked for in an instances folder, in this order."""

NOT_MEASURES = {"id", "nn_id", "cell_id", "cut_by_border"}
"""Columns that identify rather than measure an object (no histogram)."""


def measure_columns(columns: list[str], numeric: list[str]) -> list[str]:
    """The numeric columns worth a histogram: not identifiers, centroids or bounding boxes."""
    return [c for c in columns if c in numeric and c not in NOT_MEASURES and not c.startswith(("centroid_", "bbox_"))]


def find_tables(path: Path) -> list[Path]:
    """The per-object CSV files of ``path`` (a folder, or one CSV file)."""
    if path.is_file() and path.suffix.lower() == ".csv":
        return [path]
    if path.is_dir():
        found = [path / n for n in TABLES if (path / n).is_file()]
        if found:
            return found
    raise InputError(
        f"--instances {path}: expected a folder with {' or '.join(TABLES)} (from organet instances or organet "
        "analyze shapes), or one such CSV file"
    )


def instance_sections(path: Path, files: Path, save: Callable[[Path], None]) -> list[Section]:
    """One section with a summary table and histograms per per-object table."""
    import pandas as pd

    from . import plots

    section = Section("Objects")
    for csv in find_tables(path):
        try:
            table = pd.read_csv(csv)
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read {csv} as a CSV table: {e}") from None
        numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
        cols = measure_columns(list(table.columns), numeric)
        section.blocks.append(html.subheading(f"{csv.name}: {len(table)} objects"))
        section.blocks.append(html.note(str(csv)))
        if len(table) == 0 or not cols:
            section.blocks.append(html.note("no objects or no measurement columns to show"))
            continue
        rows = []
        for c in cols:
            v = np.asarray(table[c], np.float64)
            v = v[np.isfinite(v)]
            stats = [float(v.min()), float(np.median(v)), float(v.mean()), float(v.max())] if v.size else [None] * 4
            rows.append([c, int(v.size), *stats])
        section.blocks.append(
            html.table(("column", "objects with a value", "min", "median", "mean", "max"), rows, digits=4)
        )
        shown = [r[0] for r in rows if r[1] > 0]  # columns without any value get no empty panel
        if not shown:
            continue
        png = plots.histograms(table, shown, files / f"hist_{csv.stem}.png", f"{csv.name} ({len(table)} objects)")
        save(png)
        section.blocks.append(html.image(png, f"histograms of {csv.name}", f"one histogram per column of {csv.name}"))
    return [section]


__all__ = ["NOT_MEASURES", "TABLES", "find_tables", "instance_sections", "measure_columns"]
