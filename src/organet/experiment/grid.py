"""Experiment grids: train and score a grid of configs the ASEM way (Tables S5–S8).

A grid file names a base training config, the axes of the grid and how to score each
cell::

    name: lucchi_normalization
    base: lucchi_mito_cpu.yaml            # a training config (relative to this file)
    output_dir: ../runs/grid_norm         # relative to this file
    overrides:                            # applied to every cell (dotted keys)
      training.iterations: 400
    axes:
      normalization:                      # named variants: each a set of dotted overrides
        none: {}
        clahe-incasem:
          normalization.preprocess: clahe-incasem
          data.train.0.raw: ../data/lucchi_raw_10nm_clahe.zarr
          evaluation.input: ../data/lucchi_raw_10nm_clahe.zarr
      seed: [0, 1]                        # a list: the values of that config key
    evaluation:
      input: ../data/lucchi_raw_10nm.zarr
      truth: ../data/lucchi_mito_10nm.zarr
      roi_vox: "63:83,:,:"
      last: 5                             # checkpoints averaged per cell

Every cell (the Cartesian product of the axes, in file order) is trained
(:func:`organet.train.loop.train`) into ``OUTPUT/cells/<cell>/run`` and scored with
:func:`organet.evaluate.checkpoints.evaluate_checkpoints` over its last checkpoints; the
grid writes ``OUTPUT/results.md``, ``results.csv`` and ``results.png`` (F1 mean ± SD per
cell). A finished cell (``cells/<cell>/summary.json``) is skipped on a rerun; a cell
whose training was interrupted resumes from its last checkpoint. With a Dask client the
cells run as tasks on the cluster, otherwise one after another here.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from organet.config import ExperimentConfig, format_validation_error, load_config, read_yaml_mapping
from organet.errors import ConfigError
from organet.progress import ProgressFn
from organet.volumes.atomic import atomic_write_text
from organet.volumes.remote import is_url

PATH_KEYS = re.compile(r"^(data\.(train|validation)\.\d+\.(raw|labels|mask)|evaluation\.(input|truth|mask))$")
"""Dotted keys whose values are paths (resolved against the grid file's folder)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvaluationSpec(_Strict):
    """How each cell is scored: its last ``last`` checkpoints on ``input`` against ``truth``.

    ``exclusion_zone`` (inner, outer voxels) defaults to the organelle's; ``[0, 0]`` = none.
    ``voxel_size`` (nm, z y x) for files that lack it.
    """

    input: str
    truth: str
    roi_vox: str | None = None
    roi_nm: str | None = None
    voxel_size: tuple[float, float, float] | None = None
    last: int = Field(default=5, ge=1)
    threshold: float = Field(default=0.5, gt=0, lt=1)
    exclusion_zone: tuple[int, int] | None = None


Axis = list[Any] | dict[str, dict[str, Any]]


class GridSpec(_Strict):
    """A grid file (see the module docstring)."""

    name: str = "grid"
    base: str
    output_dir: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    axes: dict[str, Axis] = Field(min_length=1)
    evaluation: EvaluationSpec

    @field_validator("axes")
    @classmethod
    def _non_empty(cls, v: dict[str, Axis]) -> dict[str, Axis]:
        for name, values in v.items():
            if not values:
                raise ValueError(f"axis {name!r} has no values")
            if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
                raise ValueError(f"axis name {name!r}: use letters, digits, '_', '-' and '.'")
        return v


@dataclass
class Cell:
    """One cell of a grid: its coordinates, training config and evaluation settings."""

    name: str
    coords: dict[str, str]
    config: ExperimentConfig
    evaluation: EvaluationSpec
    folder: Path

    @property
    def run_dir(self) -> Path:
        return self.folder / "run"

    def fingerprint(self) -> str:
        """sha256 of what defines the cell (config without its output folder, evaluation)."""
        cfg = self.config.model_dump(mode="json")
        cfg.pop("output_dir", None)
        blob = json.dumps({"config": cfg, "evaluation": self.evaluation.model_dump(mode="json")}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class CellResult:
    """The checkpoint-averaged scores of one cell (means and sample SDs over checkpoints)."""

    name: str
    coords: dict[str, str]
    iterations: list[int]
    mean: dict[str, float]
    sd: dict[str, float]
    per_checkpoint: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "coords": self.coords,
            "iterations": self.iterations,
            "mean": self.mean,
            "sd": self.sd,
            "per_checkpoint": self.per_checkpoint,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CellResult:
        return cls(d["name"], d["coords"], d["iterations"], d["mean"], d["sd"], d.get("per_checkpoint", []))


# -- reading a grid --------------------------------------------------------------------


def _set_dotted(d: dict[str, Any], key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    node: Any = d
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise ConfigError(f"{where}: {key!r}: {'.'.join(parts[:i]) or 'top'} has no item {p!r}")
            if last:
                node[int(p)] = value
            else:
                node = node[int(p)]
        elif isinstance(node, dict):
            if last:
                node[p] = value
            else:
                if node.get(p) is None:
                    node[p] = {}
                node = node[p]
        else:
            raise ConfigError(f"{where}: {key!r}: {'.'.join(parts[:i])} is a value, not a section")


def _resolve(key: str, value: Any, base: Path) -> Any:
    if isinstance(value, str) and PATH_KEYS.match(key):
        inner = value.split(":/")[0]
        return value if is_url(value) or Path(inner).is_absolute() else str(base / value)
    return value


def _slug(value: Any) -> str:
    s = re.sub(r"[^A-Za-z0-9.\-]+", "-", str(value)).strip("-")
    return s or "x"


def load_grid(path: str | Path) -> tuple[GridSpec, list[Cell]]:
    """Read and validate a grid file; returns the spec and its cells (paths absolute).

    Raises :class:`~organet.errors.ConfigError` naming the file, the cell and the key for
    every problem (unknown keys, bad values, a base config that does not validate).
    """
    path = Path(path)
    data = read_yaml_mapping(path, "grid file")
    try:
        spec = GridSpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None
    here = path.parent.resolve()
    base_path = Path(spec.base) if Path(spec.base).is_absolute() else here / spec.base
    base = load_config(base_path).model_dump(mode="json")
    out = (Path(spec.output_dir) if Path(spec.output_dir).is_absolute() else here / spec.output_dir).resolve()
    eval_base = spec.evaluation.model_dump(mode="json")
    for k in ("input", "truth"):
        eval_base[k] = _resolve(f"evaluation.{k}", eval_base[k], here)

    axes: list[list[tuple[str, dict[str, Any]]]] = []
    for name, values in spec.axes.items():
        if isinstance(values, dict):
            axes.append([(str(label), dict(over or {})) for label, over in values.items()])
        else:
            axes.append([(_slug(v), {name: v}) for v in values])
    names = list(spec.axes)
    cells = []
    for combo in itertools.product(*axes):
        coords = {n: label for n, (label, _) in zip(names, combo)}
        cell_name = "_".join(f"{_slug(n)}-{_slug(label)}" for n, label in coords.items())
        where = f"{path}: cell {cell_name}"
        cfg, ev = json.loads(json.dumps(base)), dict(eval_base)
        for over in (spec.overrides, *(o for _, o in combo)):
            for key, value in over.items():
                value = _resolve(key, value, here)
                if key.startswith("evaluation."):
                    ev[key.split(".", 1)[1]] = value
                else:
                    _set_dotted(cfg, key, value, where)
        folder = out / "cells" / cell_name
        cfg["output_dir"] = str(folder / "run")
        try:
            config = ExperimentConfig.model_validate(cfg)
            evaluation = EvaluationSpec.model_validate(ev)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, where)) from None
        cells.append(Cell(cell_name, coords, config, evaluation, folder))
    return spec, cells


def grid_output(spec: GridSpec, grid_path: str | Path) -> Path:
    """The grid's output folder (``output_dir`` resolved against the grid file)."""
    p = Path(spec.output_dir)
    return (p if p.is_absolute() else Path(grid_path).parent.resolve() / p).resolve()


# -- running a cell ----------------------------------------------------------------------


def _summary_path(cell: Cell) -> Path:
    return cell.folder / "summary.json"


def finished(cell: Cell) -> CellResult | None:
    """The cell's result if it finished with the same settings; raises if it ran with others."""
    p = _summary_path(cell)
    if not p.is_file():
        return None
    d = json.loads(p.read_text())
    if d.get("fingerprint") != cell.fingerprint():
        raise ConfigError(
            f"cell {cell.name} in {cell.folder} was run with other settings; "
            "use a new output_dir for a changed grid (or delete that cell's folder)"
        )
    return CellResult.from_dict(d["result"])


def run_cell(cell: Cell, progress: ProgressFn | None = None, log: Callable[[str], None] | None = None) -> CellResult:
    """Train ``cell`` (resuming an interrupted run) and score its last checkpoints."""
    from organet.evaluate.checkpoints import evaluate_checkpoints, select_checkpoints
    from organet.train.loop import latest_checkpoint, train
    from organet.volumes import open_volume, parse_roi

    done = finished(cell)
    if done is not None:
        return done
    logf = log or (lambda s: None)
    cell.folder.mkdir(parents=True, exist_ok=True)
    trained = cell.folder / "trained.json"
    if not trained.is_file():
        resume = latest_checkpoint(cell.run_dir) is not None
        logf(f"{cell.name}: {'resuming' if resume else 'training'} in {cell.run_dir}")
        res = train(cell.config, resume=resume, progress=progress, log=logf)
        atomic_write_text(trained, json.dumps({"iteration": res.iteration, "checkpoint": str(res.last_checkpoint)}))
    ev = cell.evaluation
    raw = open_volume(ev.input, default_voxel_size=ev.voxel_size)
    truth = open_volume(ev.truth, default_voxel_size=ev.voxel_size)
    roi = None
    if ev.roi_vox is not None:
        roi = parse_roi(ev.roi_vox, "vox", raw)
    elif ev.roi_nm is not None:
        roi = parse_roi(ev.roi_nm, "nm", raw)
    ckpts = select_checkpoints(cell.run_dir, last=ev.last)
    logf(f"{cell.name}: scoring {len(ckpts)} checkpoints")
    result = evaluate_checkpoints(
        ckpts,
        raw,
        truth,
        roi=roi,
        exclusion=ev.exclusion_zone,
        threshold=ev.threshold,
        output_dir=cell.folder / "eval",
        progress=progress,
    )
    out = CellResult(
        cell.name,
        cell.coords,
        [r.iteration for r in result.rows],
        {k: float(v) for k, v in result.mean.items()},
        {k: float(v) for k, v in result.sd.items()},
        [r.to_dict() for r in result.rows],
    )
    atomic_write_text(
        _summary_path(cell),
        json.dumps({"fingerprint": cell.fingerprint(), "result": out.to_dict()}, indent=2),
    )
    return out


def _run_cell_task(cell: Cell) -> dict[str, Any]:
    return run_cell(cell).to_dict()


def run_grid(
    cells: Sequence[Cell],
    *,
    client: Any | None = None,
    progress: ProgressFn | None = None,
    log: Callable[[str], None] | None = None,
) -> list[CellResult]:
    """Run every unfinished cell (here, in order, or as Dask tasks) and return all results in cell order."""
    results: dict[str, CellResult] = {}
    todo = []
    for c in cells:
        r = finished(c)
        if r is not None:
            results[c.name] = r
            if log:
                log(f"{c.name}: finished earlier, skipped")
        else:
            todo.append(c)
    if client is None:
        for c in todo:
            results[c.name] = run_cell(c, progress=progress, log=log)
    else:
        from distributed import as_completed

        futures = {client.submit(_run_cell_task, c, pure=False, key=f"organet-cell-{c.name}"): c for c in todo}
        for fut in as_completed(futures):
            c = futures[fut]
            results[c.name] = CellResult.from_dict(fut.result())
            if log:
                log(f"{c.name}: done on the cluster")
    return [results[c.name] for c in cells]


# -- the grid's table ------------------------------------------------------------------

METRICS = ("f1", "precision", "recall", "iou")


def _pm(mean: float, sd: float) -> str:
    if math.isnan(sd):
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {sd:.3f}"


def seed_groups(results: Sequence[CellResult], axis: str = "seed") -> list[dict[str, Any]]:
    """Rows over all axes but ``axis``: the mean and SD across that axis of the cells' mean F1."""
    import numpy as np

    groups: dict[tuple[tuple[str, str], ...], list[CellResult]] = {}
    for r in results:
        if axis not in r.coords:
            return []
        key = tuple((k, v) for k, v in r.coords.items() if k != axis)
        groups.setdefault(key, []).append(r)
    rows = []
    for key, rs in groups.items():
        row: dict[str, Any] = dict(key)
        row["cells"] = len(rs)
        for m in METRICS:
            vals = np.array([r.mean[m] for r in rs], float)
            row[m] = float(vals.mean())
            row[f"{m}_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
        rows.append(row)
    return rows


def results_table(results: Sequence[CellResult]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings) of the per-cell table: axes, checkpoints, metrics mean ± SD."""
    axes = list(results[0].coords) if results else []
    header = [*axes, "checkpoints (iterations)", *(f"{m} (mean ± SD)" for m in ("F1", "precision", "recall", "IoU"))]
    rows = []
    for r in results:
        its = r.iterations
        span = f"{len(its)} ({its[0]}–{its[-1]})" if its else "0"
        rows.append([*(r.coords[a] for a in axes), span, *(_pm(r.mean[m], r.sd[m]) for m in METRICS)])
    return header, rows


def write_results(results: Sequence[CellResult], out: Path, title: str, notes: str = "") -> list[Path]:
    """``results.md`` (per cell, and across seeds if there is a ``seed`` axis), ``results.csv``
    and ``results.png`` in ``out``; returns their paths."""
    from organet.experiment.plot import plot_grid

    header, rows = results_table(results)
    md = [f"# {title}", ""]
    if notes:
        md += [notes, ""]
    md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    groups = seed_groups(results)
    if groups:
        axes = [a for a in results[0].coords if a != "seed"]
        md += ["", "Across seeds (mean ± SD of the cells' checkpoint means):", ""]
        md += ["| " + " | ".join([*axes, "seeds", "F1", "precision", "recall", "IoU"]) + " |"]
        md += ["|" + "---|" * (len(axes) + 5)]
        for g in groups:
            cols = [*(g[a] for a in axes), str(g["cells"]), *(_pm(g[m], g[f"{m}_sd"]) for m in METRICS)]
            md.append("| " + " | ".join(cols) + " |")
    out.mkdir(parents=True, exist_ok=True)
    md_path, csv_path, png_path = out / "results.md", out / "results.csv", out / "results.png"
    atomic_write_text(md_path, "\n".join(md) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf)
    axes_all = list(results[0].coords) if results else []
    w.writerow(
        [
            *axes_all,
            "checkpoints",
            "first_iteration",
            "last_iteration",
            *(f"{m}_{s}" for m in METRICS for s in ("mean", "sd")),
        ]
    )
    for r in results:
        its = r.iterations or [0]
        w.writerow(
            [*(r.coords[a] for a in axes_all), len(r.iterations), its[0], its[-1]]
            + [f"{x:.6f}" for m in METRICS for x in (r.mean[m], r.sd[m])]
        )
    atomic_write_text(csv_path, buf.getvalue())
    plot_grid(results, png_path, title)
    return [md_path, csv_path, png_path]


__all__ = [
    "Cell",
    "CellResult",
    "EvaluationSpec",
    "GridSpec",
    "finished",
    "grid_output",
    "load_grid",
    "results_table",
    "run_cell",
    "run_grid",
    "seed_groups",
    "write_results",
]
