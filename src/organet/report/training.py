"""Report sections of a training run folder (see :mod:`organet.train.loop` for its layout):
curves, validation scores per checkpoint, checkpoint-averaged evaluations (``organet
evaluate --checkpoints`` output folders inside the run), the data record, the config and
the commands. Everything is read from the folder's files; nothing is recomputed except the
curves figure (redrawn from ``metrics.jsonl``)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from organet.errors import InputError

from . import html
from .html import Section

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
DATA = "data.json"


def is_run_dir(path: Path) -> bool:
    """A folder written by ``organet train``: ``config.yaml`` and metrics or checkpoints."""
    return (
        path.is_dir() and (path / CONFIG).is_file() and ((path / METRICS).is_file() or (path / "checkpoints").is_dir())
    )


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` (InputError naming the line that is not JSON)."""
    path = run_dir / METRICS
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            raise InputError(f"{path} line {i} is not JSON: {line[:80]!r}") from None
    return rows


def session_seconds(rows: list[dict[str, Any]]) -> tuple[float, int]:
    """Training time (s) summed over sessions, and the number of sessions: ``elapsed_s`` of
    the train rows restarts from 0 when a run is resumed."""
    total, last, sessions = 0.0, None, 0
    for r in rows:
        if r.get("kind") != "train" or r.get("elapsed_s") is None:
            continue
        e = float(r["elapsed_s"])
        if last is None or e < last:
            total += last or 0.0
            sessions += 1
        last = e
    return total + (last or 0.0), sessions


def checkpoint_files(run_dir: Path) -> dict[int, Path]:
    """``{iteration: path}`` of ``checkpoints/iter_*.pt``."""
    out = {}
    for p in sorted((run_dir / "checkpoints").glob("iter_*.pt")):
        try:
            out[int(p.stem.split("_", 1)[1])] = p
        except ValueError:
            continue
    return out


def checkpoint_evaluations(run_dir: Path) -> list[Path]:
    """Folders inside the run holding an ``organet evaluate --checkpoints`` ``summary.json``."""
    found = []
    for s in sorted(run_dir.glob("*/summary.json")):
        try:
            d = json.loads(s.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and "n_checkpoints" in d and isinstance(d.get("checkpoints"), list):
            found.append(s.parent)
    return found


def _q(x: object) -> str:
    return shlex.quote(str(x))


def _g(x: float) -> str:
    return f"{x:g}"


def evaluate_command(run_dir: Path, folder: Path, summary: dict[str, Any]) -> tuple[str, str | None]:
    """The ``organet evaluate --checkpoints`` command whose settings match the results stored in
    ``folder`` (rerunning it reuses them all), or an explanation of why it cannot be given."""
    from organet.volumes import Roi, open_volume

    results = sorted((folder / "results").glob("iter_*.json"))
    settings = None
    for r in results:
        try:
            settings = json.loads(r.read_text()).get("settings")
        except (OSError, ValueError):
            continue
        if settings:
            break
    if not settings:
        return "", f"{folder}/results has no readable per-checkpoint settings"
    raw_spec = settings.get("raw")
    try:
        raw = open_volume(raw_spec, default_voxel_size=summary.get("voxel_size_nm"))
    except Exception as e:  # noqa: BLE001 - any failure to open only removes the command
        return "", f"the input {raw_spec} cannot be opened from here ({type(e).__name__}), so its ROI in nm is unknown"
    roi = Roi(settings["roi_offset"], settings["roi_shape"])
    begin, end = roi.to_nm(raw.voxel_size, raw.offset)
    parts = [
        "organet evaluate --checkpoints",
        _q(run_dir),
        "--input",
        _q(raw_spec),
        "--truth",
        _q(settings["truth"]),
    ]
    if settings.get("mask"):
        parts += ["--mask", _q(settings["mask"])]
    parts += ["--roi-nm", ",".join(f"{_g(b)}:{_g(e)}" for b, e in zip(begin, end))]
    ez = settings.get("exclusion") or [0, 0]
    parts += ["--exclusion-zone", str(ez[0]), str(ez[1]), "--threshold", _g(float(settings["threshold"]))]
    if settings.get("tile"):
        parts += ["--tile", *map(str, settings["tile"])]
    its = [int(c["iteration"]) for c in summary["checkpoints"]]
    parts += ["--iterations", ",".join(map(str, its)), "--output", _q(folder)]
    return " ".join(parts), None


def _f(d: dict[str, Any], k: str) -> float:
    v = d.get(k)
    return float("nan") if v is None else float(v)


def _averaged_section(run_dir: Path, folder: Path, files: Path, save: Callable[[Path], None]) -> list[str]:
    s = json.loads((folder / "summary.json").read_text())
    rows: list[list[Any]] = [
        [int(c["iteration"]), _f(c, "f1"), _f(c, "precision"), _f(c, "recall"), _f(c, "iou")] for c in s["checkpoints"]
    ]
    mean, sd = s.get("mean", {}), s.get("sd", {})
    rows.append(
        ["mean ± SD"]
        + [f"{html.fmt(_f(mean, k))} ± {html.fmt(_f(sd, k))}" for k in ("f1", "precision", "recall", "iou")]
    )
    ez = s.get("exclusion")
    ez_text = "none" if not ez else f"{ez['inner']} in / {ez['outer']} out voxels"
    roi = s.get("roi_vox", {})
    blocks = [
        html.subheading(f"{folder.name}: {s['n_checkpoints']} checkpoints"),
        html.note(
            f"input {s.get('raw')}, truth {s.get('truth')}, ROI offset {roi.get('offset')} shape {roi.get('shape')} "
            f"(input voxels, z, y, x), voxel size {s.get('voxel_size_nm')} nm; organelle {s.get('organelle')}, "
            f"exclusion zone {ez_text}, threshold {s.get('threshold')} (foreground if p ≥ t). "
            f"{s.get('sd_definition', '')}"
        ),
        html.table(("iteration", "F1", "precision", "recall", "IoU"), rows, emphasize=[len(rows) - 1]),
    ]
    png = folder / "f1_vs_iteration.png"
    if png.is_file():
        dst = files / f"{folder.name}_f1_vs_iteration.png"
        dst.write_bytes(png.read_bytes())
        save(dst)
        blocks.append(html.image(dst, "checkpoint-averaged F1", f"from {png}"))
    cmd, why = evaluate_command(run_dir, folder, s)
    blocks.append(
        html.commands([("Recompute or extend (settings as stored; finished checkpoints are reused):", cmd)])
        if cmd
        else html.note(f"command not shown: {why}")
    )
    return blocks


def _data_record(run_dir: Path, cfg: dict[str, Any]) -> list[str]:
    path = run_dir / DATA
    if not path.is_file():
        data = cfg.get("data", {})
        rows = [
            [group, r.get("name"), r.get("raw"), r.get("labels"), r.get("roi_vox") or r.get("roi_nm") or "whole"]
            for group in ("train", "validation")
            for r in data.get(group, [])
        ]
        return [
            html.note(f"no {DATA} in this run (older runs lack it); the data as the config names it:"),
            html.table(("set", "name", "raw", "labels", "ROI"), rows),
        ]
    d = json.loads(path.read_text())
    blocks = [html.key_values({"model voxel size (nm, z, y, x)": d.get("voxel_size")})]
    train = [
        [
            r.get("name"),
            r.get("group"),
            r.get("voxel_size"),
            r.get("roi_vox"),
            r.get("voxels"),
            r.get("foreground"),
            "yes" if r.get("resampled") else "no",
        ]
        for r in d.get("train", [])
    ]
    blocks.append(
        html.table(
            ("training ROI", "group", "voxel size (nm)", "ROI (voxels)", "voxels", "foreground fraction", "resampled"),
            train,
        )
    )
    val = [[r.get("name"), r.get("voxel_size"), r.get("roi_vox")] for r in d.get("validation", [])]
    if val:
        blocks.append(html.table(("validation ROI", "voxel size (nm)", "ROI (voxels)"), val))
    blocks.append(html.details(f"{DATA} as written", html.pre(json.dumps(d, indent=2))))
    return blocks


def training_sections(
    run_dir: Path, files: Path, save: Callable[[Path], None], progress: Callable[[], None] = lambda: None
) -> tuple[list[Section], dict[str, Any]]:
    """The sections of a run folder's report, and facts for the page header (name, iteration).

    ``files``: folder for the PNGs; ``save(path)`` is told each PNG written."""
    import yaml

    from organet.model.checkpoint import load_checkpoint

    from . import plots

    cfg_text = (run_dir / CONFIG).read_text()
    try:
        cfg = yaml.safe_load(cfg_text) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{run_dir / CONFIG} is not valid YAML: {e}") from None
    rows = read_metrics(run_dir)
    ckpts = checkpoint_files(run_dir)
    train_rows = [r for r in rows if r.get("kind") == "train"]
    val_rows = [r for r in rows if r.get("kind") == "validation"]
    seconds, sessions = session_seconds(rows)
    last_it = max([r["iteration"] for r in rows] + list(ckpts), default=0)
    tc = cfg.get("training", {})

    overview = Section("Overview")
    overview.blocks.append(
        html.key_values(
            {
                "run folder": str(run_dir),
                "name": cfg.get("name"),
                "organelle": cfg.get("organelle"),
                "iterations done (last logged or checkpointed)": last_it,
                "iterations configured": tc.get("iterations"),
                "time budget (min)": tc.get("max_minutes"),
                "training time (s, summed over sessions)": round(seconds, 1) if train_rows else None,
                "sessions (a resume starts one)": sessions or None,
                "checkpoints": len(ckpts),
                "validation ROIs": len({r.get("roi") for r in val_rows}),
            }
        )
    )
    progress()

    curves = Section("Training and validation curves")
    if rows:
        png = plots.training_curves(rows, files / "curves.png")
        save(png)
        curves.blocks.append(html.image(png, "training curves", f"drawn from {run_dir / METRICS}"))
    else:
        curves.blocks.append(html.note(f"no {METRICS} in {run_dir}: nothing logged yet"))
    progress()

    scores = Section("Validation scores per checkpoint")
    if val_rows:
        table_rows = [
            [
                int(r["iteration"]),
                str(r.get("roi")),
                r.get("f1"),
                r.get("f1_no_exclusion"),
                r.get("precision"),
                r.get("recall"),
                r.get("iou"),
                r.get("loss"),
                "yes" if int(r["iteration"]) in ckpts else "no (removed)",
            ]
            for r in sorted(val_rows, key=lambda r: (r["iteration"], str(r.get("roi"))))
        ]
        best = max(range(len(table_rows)), key=lambda i: _nan_low(table_rows[i][2]))
        ez = val_rows[-1].get("exclusion_zone")
        scores.blocks.append(
            html.table(
                ("iteration", "ROI", "F1", "F1 (no exclusion)", "precision", "recall", "IoU", "loss", "checkpoint"),
                table_rows,
                emphasize=[best],
                caption=f"from {run_dir / METRICS}; exclusion zone {ez} voxels (in, out); "
                f"threshold {cfg.get('validation', {}).get('threshold')}; best F1 in bold",
            )
        )
    else:
        scores.blocks.append(html.note("this run has no validation ROIs (no validation rows in the metrics)"))
        scores.blocks.append(
            html.table(("checkpoint", "iteration"), [[p.name, it] for it, p in ckpts.items()], caption="checkpoints")
        )
    progress()

    sections = [overview, curves, scores]
    evals = checkpoint_evaluations(run_dir)
    if evals:
        avg = Section("Checkpoint-averaged evaluation")
        for folder in evals:
            avg.blocks.extend(_averaged_section(run_dir, folder, files, save))
        sections.append(avg)

    data = Section("Data")
    data.blocks.extend(_data_record(run_dir, cfg))
    sections.append(data)

    init_from = None
    if ckpts:
        last = ckpts[max(ckpts)]
        init_from = load_checkpoint(last).training_config.get("init_from")
    cmd = Section("Commands")
    items = [("Continue this run (add --iterations N to train further):", f"organet train --resume {_q(run_dir)}")]
    again = f"organet train {_q(run_dir / CONFIG)}" + (f" --init-from {_q(init_from)}" if init_from else "")
    items.append(
        (
            "The same training from the recorded config (command-line overrides are folded into it; it writes to "
            "its output_dir, this folder, so copy it and change output_dir first):",
            again,
        )
    )
    cmd.blocks.append(html.commands(items))
    cmd.blocks.append(
        html.note(
            "Both are read from the run's config.yaml and last checkpoint (init_from); the run folder does not "
            "record the original command line itself."
        )
    )
    sections.append(cmd)

    config = Section("Configuration")
    config.blocks.append(html.note(f"{run_dir / CONFIG}, as validated by organet train (absolute paths)"))
    config.blocks.append(html.pre(cfg_text))
    sections.append(config)
    progress()
    return sections, {"name": cfg.get("name") or run_dir.name, "iteration": last_it}


def _nan_low(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("-inf")
    return f if f == f else float("-inf")


__all__ = [
    "checkpoint_evaluations",
    "checkpoint_files",
    "evaluate_command",
    "is_run_dir",
    "read_metrics",
    "session_seconds",
    "training_sections",
]
