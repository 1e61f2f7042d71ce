"""Report sections of an ``organet predict`` output (``OUT.zarr``, see
:mod:`organet.predict.run`): metadata from its run record, orthogonal planes with the
prediction (and truth) overlaid, and with truth the voxel scores and a threshold sweep
computed by :func:`organet.evaluate.evaluate_volumes`."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from organet.blockwise.output import read_run
from organet.errors import InputError
from organet.evaluate.metrics import SWEEP
from organet.volumes import Roi, Volume, open_volume
from organet.volumes.geometry import check_same_voxel_size, fmt_vec
from organet.volumes.ome_zarr import PREDICTION_IMAGE, find_mask

from . import html
from .html import Section

"""Thresholds of the sweep (those of ``organet evaluate --sweep``), plus the run's own threshold."""


REQUIRED = ("input", "input_shape", "voxel_size", "roi_offset", "roi_shape", "threshold")
"""Keys of the run record the report needs (every organet predict record has them)."""


def prediction_record(path: Path) -> dict[str, Any] | None:
    """The run record of a complete ``organet predict`` output, None if ``path`` is not one."""
    if not (path / PREDICTION_IMAGE).is_dir() or find_mask(path) is None:
        return None
    run = read_run(path)
    if not run or "predictor" not in run:
        return None
    return run


def _q(x: object) -> str:
    return shlex.quote(str(x))


def roi_text(offset: Sequence[int], shape: Sequence[int]) -> str:
    """``z0:z1,y0:y1,x0:x1`` (the form of ``--roi-vox``)."""
    return ",".join(f"{o}:{o + n}" for o, n in zip(offset, shape))


def predict_command(output: str, run: dict[str, Any], input_voxel_size: Sequence[float] | None) -> str:
    """The ``organet predict`` command whose run record equals ``run`` (rerunning it reports
    "already complete"). ``input_voxel_size``: the input file's own voxel size (None: unknown),
    so ``--voxel-size`` is added only where the file lacks the recorded one."""
    p = run["predictor"]
    parts = ["organet predict", "--model", _q(p["checkpoint"]), "--input", _q(run["input"]), "--output", _q(output)]
    if list(run["roi_offset"]) != [0, 0, 0] or list(run["roi_shape"]) != list(run["input_shape"]):
        parts += ["--roi-vox", roi_text(run["roi_offset"], run["roi_shape"])]
    vs = run["voxel_size"]
    if input_voxel_size is None or any(abs(a - b) > 1e-9 * max(abs(b), 1) for a, b in zip(input_voxel_size, vs)):
        parts += ["--voxel-size", *(f"{v:g}" for v in vs)]
    if p.get("tile"):
        parts += ["--tile", *map(str, p["tile"])]
    if p.get("precision"):
        parts += ["--precision", str(p["precision"])]
    if int(p.get("batch_size", 1)) != 1:
        parts += ["--batch-size", str(p["batch_size"])]
    if p.get("tta"):
        parts += ["--tta", _q(p["tta"])]
    if float(run["threshold"]) != 0.5:
        parts += ["--threshold", f"{float(run['threshold']):g}"]
    if run.get("chunks"):
        parts += ["--chunks", *map(str, run["chunks"])]
    if run.get("block_shape"):
        parts += ["--block", *map(str, run["block_shape"])]
    sm = run.get("sample_mask")
    if sm:
        if sm.get("volume"):
            parts += ["--mask", _q(sm["volume"])]
        if sm.get("rule"):
            parts += ["--mask-rule", _q(sm["rule"])]
    return " ".join(parts)


def _find(spec: str, base: Path) -> str | None:
    """``spec`` as given if it opens from here, else relative to ``base``; None if neither exists."""
    from organet.volumes.readers import split_spec

    if not spec or spec.startswith("sha256:"):
        return None
    if split_spec(spec)[0].exists():
        return spec
    alt = base / spec
    return str(alt) if not Path(spec).is_absolute() and split_spec(str(alt))[0].exists() else None


def _file_times(output: Path) -> tuple[float, float] | None:
    """(start, end) of the run by file times: the ``s0`` array metadata is written when the
    output is created, the root metadata last, when the run record is marked complete."""
    try:
        return (output / "probability" / "s0" / "zarr.json").stat().st_mtime, (output / "zarr.json").stat().st_mtime
    except OSError:
        return None


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t).isoformat(timespec="seconds")


def _point(run: dict[str, Any], point: Sequence[int] | None) -> tuple[int, int, int]:
    """The point in s0 voxels of the prediction: the centre, or ``point`` given in input voxels."""
    off, shape = run["roi_offset"], run["roi_shape"]
    if point is None:
        return (shape[0] // 2, shape[1] // 2, shape[2] // 2)
    if len(point) != 3:
        raise InputError(f"point {list(point)} must be 3 voxel indices (z, y, x) of the input")
    local = [int(p) - int(o) for p, o in zip(point, off)]
    if any(not 0 <= v < n for v, n in zip(local, shape)):
        raise InputError(
            f"point {list(point)} (input voxels, z, y, x) lies outside the predicted ROI "
            f"{roi_text(off, shape)}; give a point inside it"
        )
    return (local[0], local[1], local[2])


def _crop_to(vol: Volume, pred: Volume, what: str) -> Volume:
    check_same_voxel_size(
        vol.voxel_size, pred.voxel_size, what, f"the prediction {pred.path}", "pass a volume on the prediction's grid"
    )
    begin, end = pred.bounds_nm
    try:
        return vol.crop_nm(begin, end)
    except Exception as e:
        from organet.errors import OrganetError

        if isinstance(e, OrganetError):
            raise InputError(f"{what} does not cover the prediction {pred.path}: {e}") from None
        raise


def prediction_sections(
    output: Path,
    run: dict[str, Any],
    files: Path,
    save: Callable[[Path], None],
    *,
    target_text: str,
    raw: str | None = None,
    truth: str | None = None,
    point: Sequence[int] | None = None,
    max_px: int = 1024,
    progress: Callable[[], None] = lambda: None,
    eval_progress: Any = None,
) -> tuple[list[Section], dict[str, Any]]:
    """The sections of a prediction's report and facts for the page header.

    ``raw`` overrides the recorded input (found as recorded, or relative to the output's
    folder); ``truth`` adds truth overlays, scores and a sweep; ``point`` (input voxels,
    z, y, x) moves the planes off the centre. ``target_text``: the output as the user named
    it (used in the commands)."""
    from organet.evaluate import evaluate_volumes, resolve_exclusion
    from organet.volumes.foreground import check_threshold

    from . import plots
    from .slices import read_planes

    missing = [k for k in REQUIRED if k not in run] + [
        f"predictor.{k}" for k in ("checkpoint",) if k not in run["predictor"]
    ]
    if missing:
        raise InputError(
            f"the run record of {output} lacks {', '.join(missing)}; expected the record of organet predict "
            "(root attribute organet_run)"
        )
    p = run["predictor"]
    vs = run["voxel_size"]
    prob = open_volume(output / "probability")
    threshold = check_threshold(float(run["threshold"]))
    roi = Roi(run["roi_offset"], run["roi_shape"])
    begin, end = prob.bounds_nm
    times = _file_times(output)
    levels = sorted(q.name for q in (output / "probability").iterdir() if q.name[:1] == "s" and q.name[1:].isdigit())

    raw_spec = raw if raw is not None else _find(str(run.get("input", "")), output.parent)
    raw_vol = None
    raw_note = ""
    input_vs = None
    if raw_spec is not None:
        raw_vol = _crop_to(open_volume(raw_spec, default_voxel_size=vs), prob, f"raw {raw_spec}")
        if raw is None:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                input_vs = open_volume(raw_spec).voxel_size
    else:
        raw_note = f"the recorded input {run.get('input')!r} is not found from here; pass --raw to show it"
    truth_vol = _crop_to(open_volume(truth, default_voxel_size=vs), prob, f"truth {truth}") if truth else None

    meta = Section("Prediction")
    meta.blocks.append(
        html.key_values(
            {
                "output": str(output),
                "model": p.get("checkpoint"),
                "model sha256": run.get("checkpoint_sha256"),
                "organelle": p.get("organelle"),
                "model iteration": p.get("iteration"),
                "model voxel size (nm, z, y, x)": p.get("voxel_size"),
                "normalization": ", ".join(f"{k} {v}" for k, v in (p.get("normalization") or {}).items()),
                "input": run.get("input"),
                "input shape (voxels, z, y, x)": run.get("input_shape"),
                "voxel size (nm, z, y, x)": vs,
                "ROI (input voxels)": roi_text(roi.offset, roi.shape),
                "ROI (nm)": f"{fmt_vec(begin)} to {fmt_vec(end)}",
                "resampled to the model's grid": "yes" if run.get("resampled") else "no",
                "tile (network input, voxels)": p.get("tile"),
                "precision": p.get("precision") or "not recorded (older organet)",
                "batch size": p.get("batch_size"),
                "test-time augmentation": p.get("tta") or "none",
                "threshold of the mask (foreground if p ≥ t)": threshold,
                "chunks (voxels)": run.get("chunks"),
                "block shape (voxels)": run.get("block_shape"),
                "sample mask": run.get("sample_mask") or "none",
                "pyramid levels": ", ".join(levels),
                "written (file times)": f"{_iso(times[0])} to {_iso(times[1])} ({times[1] - times[0]:.1f} s)"
                if times
                else None,
            }
        )
    )
    meta.blocks.append(
        html.note(
            "The run record holds no timing; the span is that of the output's files, from its creation to its "
            "completion (a resumed run includes the pause)."
        )
    )
    progress()

    pt = _point(run, point)
    planes = read_planes(output, pt, raw=raw_vol, truth=truth_vol, max_px=max_px)
    views = Section("Orthogonal planes")
    level = planes[0].level
    views.blocks.append(
        html.note(
            f"Through voxel {[o + c for o, c in zip(roi.offset, pt)]} of the input (z, y, x; "
            f"{list(pt)} in the prediction); prediction at pyramid level s{level}"
            + (", raw and truth reduced from their full-resolution plane to that grid" if level else "")
            + ". "
            + raw_note
        )
    )
    for pl in planes:
        png = plots.plane_figure(
            pl, files / f"plane_{pl.name}.png", f"{pl.name} = {roi.offset[pl.axis] + pl.index} (input voxels)"
        )
        save(png)
        views.blocks.append(html.image(png, f"{pl.name} plane", f"{pl.name} plane"))
    progress()
    sections = [meta, views]

    current = all(k in p for k in ("precision", "tile", "anchor")) and "chunks" in run and "block_shape" in run
    what = (
        "The prediction (rebuilt from the run record; rerunning it in the same place reports the output as "
        "already complete; add --workers N for Dask, same bytes):"
        if current
        else "The prediction, rebuilt from a run record of an older organet that lacks some settings (e.g. "
        "precision): today's organet records more, so rerunning it into the same place is refused as another run:"
    )
    commands = [(what, predict_command(target_text, run, input_vs))]
    if truth_vol is not None:
        ez = resolve_exclusion(None, p.get("organelle"))
        thresholds = tuple(sorted(set(SWEEP) | {threshold}))
        res = evaluate_volumes(prob, truth_vol, None, exclusion=ez, thresholds=thresholds, progress=eval_progress)
        at = res.per_threshold[threshold]
        scores = Section("Scores against the truth")
        ez_text = "none" if ez is None else f"{ez[0]} in / {ez[1]} out voxels (the organelle's default)"
        scores.blocks.append(
            html.note(
                f"truth {truth}; voxel scores of {output}/probability over the whole prediction, exclusion zone "
                f"{ez_text}; foreground if p ≥ t"
            )
        )
        best = res.best_threshold
        rows = []
        for t in thresholds:
            c = res.per_threshold[t]
            rows.append([t, c.f1, c.precision, c.recall, c.iou, c.tp, c.fp, c.fn])
        em = [i for i, t in enumerate(thresholds) if t in (threshold, best)]
        scores.blocks.append(
            html.key_values(
                {
                    f"F1 at the mask's threshold {threshold:g}": at.f1,
                    "precision": at.precision,
                    "recall": at.recall,
                    "IoU": at.iou,
                    "best threshold (highest F1)": best,
                    "F1 there": res.per_threshold[best].f1 if best is not None else None,
                }
            )
        )
        png = plots.threshold_sweep(res, files / "threshold_sweep.png")
        save(png)
        scores.blocks.append(html.image(png, "threshold sweep", "precision, recall, F1 and IoU against threshold"))
        scores.blocks.append(
            html.table(
                ("threshold", "F1", "precision", "recall", "IoU", "TP", "FP", "FN"),
                rows,
                emphasize=em,
                caption="voxel counts per threshold; the mask's threshold and the best one in bold",
            )
        )
        sections.append(scores)
        ez_opt = "0 0" if ez is None else f"{ez[0]} {ez[1]}"
        commands.append(
            (
                "These scores (the same evaluation code; its sweep has the thresholds 0.05 to 0.95):",
                f"organet evaluate --pred {_q(os.path.join(target_text, 'probability'))} --truth {_q(truth)} "
                f"--exclusion-zone {ez_opt} --sweep",
            )
        )
        progress()
    cmd = Section("Commands")
    cmd.blocks.append(html.commands(commands))
    sections.append(cmd)
    record = Section("Run record")
    record.blocks.append(
        html.details("organet_run (root attributes of the output)", html.pre(json.dumps(run, indent=2)))
    )
    sections.append(record)
    return sections, {"name": output.name, "model": p.get("checkpoint")}


__all__ = ["predict_command", "prediction_record", "prediction_sections", "roi_text"]
