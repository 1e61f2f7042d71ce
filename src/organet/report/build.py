"""``build_report``: one self-contained HTML page of a training run or a prediction."""

from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from organet.errors import InputError
from organet.progress import ProgressFn, advance, announce
from organet.volumes.atomic import atomic_write_text

from . import html
from .html import Section
from .prediction import prediction_record, prediction_sections
from .training import is_run_dir, training_sections

STAGE = "report"
"""Progress stage: one unit per part of the page."""

Kind = Literal["training", "prediction"]


@dataclass(frozen=True)
class ReportResult:
    """What :func:`build_report` wrote: the page, the PNGs beside it (also inlined in the
    page), the kind of target and the section titles."""

    output: Path
    kind: Kind
    images: tuple[Path, ...]
    sections: tuple[str, ...]
    seconds: float
    notes: tuple[str, ...] = field(default=())


def target_kind(target: Path) -> Kind:
    """``"training"`` for a run folder of ``organet train``, ``"prediction"`` for an output of
    ``organet predict``; :class:`~organet.errors.InputError` naming what was expected otherwise."""
    if is_run_dir(target):
        return "training"
    if prediction_record(target) is not None:
        return "prediction"
    if target.name.endswith(".partial") or target.with_name(target.name + ".partial").exists():
        raise InputError(f"{target} is an unfinished prediction: rerun its organet predict command to complete it")
    expected = (
        "a training run folder (config.yaml with metrics.jsonl or checkpoints/, from organet train) or an "
        "organet predict output (OUT.zarr with probability/, mask/ and its run record)"
    )
    if not target.exists():
        raise InputError(f"{target} does not exist; expected {expected}")
    raise InputError(f"{target} is not {expected}")


def files_dir(output: Path) -> Path:
    """The folder of the PNGs beside ``output``: ``NAME_files`` for ``NAME.html``."""
    return output.with_name(output.stem + "_files")


def build_report(
    target: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    truth: str | None = None,
    raw: str | None = None,
    instances: str | os.PathLike[str] | None = None,
    point: tuple[int, int, int] | None = None,
    max_px: int = 1024,
    progress: ProgressFn | None = None,
) -> ReportResult:
    """Write one self-contained HTML page about ``target`` and its figures as PNGs beside it.

    Parameters
    ----------
    target
        A training run folder (``config.yaml``, ``metrics.jsonl``, ``checkpoints/``,
        ``data.json``) or an ``OUT.zarr`` of ``organet predict``.
    output
        The HTML file; PNGs go to ``NAME_files/`` beside it (replaced files, atomic writes).
    truth
        Ground truth on the prediction's grid (voxel size, nm offsets): overlaid on the planes,
        and voxel scores with a threshold sweep (prediction targets only).
    raw
        The raw volume to show under a prediction (default: the input its run record names).
    instances
        A folder with ``objects.csv`` / ``shapes.csv`` (``organet instances`` / ``organet
        analyze shapes``), or one such CSV: summary and histograms per column.
    point
        Voxel (z, y, x) of the input the three planes pass through (default: the ROI's centre).
    max_px
        Largest side (pixels) of a plane: the prediction is shown at the finest pyramid level
        that fits.
    progress
        ``progress(stage, advance, total)``: stage :data:`STAGE` in parts of the page, plus the
        ``evaluate`` stage (blocks) when scoring against ``truth``.
    """
    t0 = time.time()
    tgt = Path(target).expanduser()
    kind = target_kind(tgt)
    if kind == "training" and (truth is not None or raw is not None or point is not None):
        given = [n for n, v in (("--truth", truth), ("--raw", raw), ("--point", point)) if v is not None]
        raise InputError(
            f"{', '.join(given)} apply to a prediction output, but {tgt} is a training run; score its checkpoints "
            "with organet evaluate --checkpoints (the report then shows them)"
        )
    out = Path(output).expanduser()
    if out.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"--output {out}: expected an .html file")
    files = files_dir(out)
    files.mkdir(parents=True, exist_ok=True)
    images: list[Path] = []
    total = (4 if kind == "training" else 2 + (truth is not None)) + (instances is not None) + 1
    announce(progress, STAGE, total)

    def step() -> None:
        advance(progress, STAGE, 1, total)

    sections: list[Section]
    if kind == "training":
        sections, facts = training_sections(tgt, files, images.append, step)
        title = f"organet training run: {facts['name']}"
    else:
        run = prediction_record(tgt)
        assert run is not None
        sections, facts = prediction_sections(
            tgt,
            run,
            files,
            images.append,
            target_text=str(target),
            raw=raw,
            truth=truth,
            point=point,
            max_px=max_px,
            progress=step,
            eval_progress=progress,
        )
        title = f"organet prediction: {facts['name']}"
    if instances is not None:
        from .instances import instance_sections

        objs = instance_sections(Path(instances).expanduser(), files, images.append)
        at = next((i for i, s in enumerate(sections) if s.title == "Commands"), len(sections))
        sections[at:at] = objs
        step()
    from organet import __version__

    subtitle = [
        f"{tgt.resolve()}",
        f"made by organet {__version__} on {_dt.datetime.now().isoformat(timespec='seconds')}; "
        f"figures also in {files.name}/",
    ]
    atomic_write_text(out, html.page(title, subtitle, sections))
    step()
    return ReportResult(
        output=out,
        kind=kind,
        images=tuple(images),
        sections=tuple(s.title for s in sections),
        seconds=time.time() - t0,
    )


__all__ = ["STAGE", "ReportResult", "build_report", "files_dir", "target_kind"]
