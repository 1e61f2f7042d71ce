"""Annotating the boxes of ``organet suggest``: one labels volume for all of them.

A suggestion folder (``organet suggest --output DIR``) names boxes by rank, in voxels of
the predicted volume. Each box is annotated on its own (scribbles + graph cut inside the
box, :func:`annotate_box`, or the napari widget) and written into one **annotation set**
``LABELS.zarr`` on the raw's grid, the layout training reads:

* ``LABELS.zarr/labels``: OME-Zarr image, uint8 0/1, the raw's shape (voxels), voxel size
  and offset (nm), chunks of :data:`CHUNKS`; 0 outside the annotated boxes;
* ``LABELS.zarr/scribbles``: the scribbles (0/1/2) each box was cut from, same grid;
* the ``labels`` image's organet attributes: ``raw`` (absolute path), ``annotated_rois``
  (one record per finished box: ``roi_vox``, ``rank``, ``source`` = the suggestion
  folder, ``scribbles``, ``date``, ...) and, only while a box is being written,
  ``writing``.

Training takes the recorded boxes as ROIs of that one labels volume
(:func:`finetune_args`, :func:`train_yaml`, :func:`roi_specs`).

Rules (:func:`write_box_labels`), chosen so that no annotation is lost silently:

* adding a box needs nothing; the set is created with the first box;
* re-annotating a recorded box (same ``roi_vox``) needs ``replace`` (``--overwrite``);
* a box may overlap recorded boxes where the new labels equal the stored ones; where
  they differ, ``replace`` is needed, and then the new labels win in the overlap and
  the overlapped boxes stay recorded (with those labels);
* a write is recorded in three steps: ``writing`` (the box, and the recorded boxes whose
  labels it changes, taken out of ``annotated_rois``), the data (chunks fsynced), then
  the record. A box half written by a killed run is therefore never listed as done; the
  set refuses other boxes until that write is rerun (the same box again), which
  restores the boxes it had taken out.

One writer at a time: two processes writing boxes into one set at once are not guarded.
Coordinates: voxels (z, y, x), boxes ``[begin, end)``; voxel size and offset in nm.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import shlex
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from organet.annotate.graphcut import GraphCutParams, GraphCutResult, segment_from_scribbles
from organet.annotate.suggest import SUMMARY_JSON, UNCERTAINTY, Box, SuggestResult, read_result
from organet.blockwise.output import PARTIAL_SUFFIX, read_run, write_block
from organet.errors import IncompatibleError, InputError, OrganetError
from organet.volumes import Roi, Volume, open_volume, parse_roi, write_ome_zarr
from organet.volumes.geometry import check_same_voxel_size, fmt_vec, same_voxel_size
from organet.volumes.ome_zarr import ORGANET_KEY

if TYPE_CHECKING:  # pragma: no cover
    from organet.config import RoiSpec

LABELS = "labels"
SCRIBBLES = "scribbles"
ANNOTATED_ROIS = "annotated_rois"
WRITING = "writing"
CHUNKS = (32, 64, 64)
"""Chunks (voxels, z y x) of an annotation set: a box of a few hundred voxels per axis
spans tens of chunks, and writing it rewrites at most one partial chunk around it."""


# --------------------------------------------------------------------------- suggestion folders


@dataclass(frozen=True)
class Suggestions:
    """A finished suggestion folder: its boxes and the grid they are voxels of.

    ``shape`` in voxels, ``voxel_size`` and ``offset`` in nm, all (z, y, x).
    """

    folder: Path
    result: SuggestResult
    shape: tuple[int, int, int]

    @property
    def boxes(self) -> list[Box]:
        return self.result.boxes

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        return self.result.voxel_size

    @property
    def offset(self) -> tuple[float, float, float]:
        return self.result.offset

    @property
    def uncertainty(self) -> Path:
        """The uncertainty map (OME-Zarr, uint8 = round(255 x bits)) of the folder."""
        return self.folder / UNCERTAINTY

    def box(self, rank: int) -> Box:
        """The box of ``rank`` (1 = best); InputError listing the ranks otherwise."""
        for b in self.boxes:
            if b.rank == int(rank):
                return b
        ranks = ", ".join(str(b.rank) for b in self.boxes) or "none"
        raise InputError(f"{self.folder} has no box of rank {rank}; its boxes have ranks {ranks}")


def read_suggestions(folder: str | Path) -> Suggestions:
    """Open a finished ``organet suggest`` output folder (InputError when ``folder`` is not one)."""
    path = Path(folder).expanduser()
    what = f"{path} is not an `organet suggest` output folder"
    if not path.is_dir():
        partial = path.with_name(path.name + PARTIAL_SUFFIX)
        if partial.is_dir():
            raise InputError(f"{what}: the suggest run is unfinished ({partial}); rerun the same organet suggest")
        raise InputError(f"{what}: no such folder")
    run = read_run(path)
    if not (path / SUMMARY_JSON).is_file() or run is None or run.get("pass") != "suggest":
        raise InputError(f"{what} (expected {SUMMARY_JSON} and the suggest run record written by organet suggest)")
    try:
        result = read_result(path)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, OrganetError):
            raise
        raise InputError(
            f"{path / SUMMARY_JSON} is not a summary of organet suggest: {type(e).__name__}: {e}"
        ) from None
    unc = open_volume(path / UNCERTAINTY)
    return Suggestions(path, result, unc.shape)


def suggested_boxes(folder: str | Path) -> list[Box]:
    """The boxes of a suggestion folder, by rank (voxels of the predicted volume)."""
    return read_suggestions(folder).boxes


def box_roi(folder: str | Path, rank: int) -> Roi:
    """The ROI (voxels, z y x) of box ``rank`` of a suggestion folder."""
    return read_suggestions(folder).box(rank).roi


def parse_box(text: str) -> tuple[Path, int]:
    """``--box DIR:RANK`` -> (DIR, RANK); RANK an integer >= 1."""
    folder, sep, rank = str(text).rpartition(":")
    try:
        value = int(rank)
    except ValueError:
        value = 0
    if not sep or not folder or value < 1:
        raise InputError(
            f"--box expects DIR:RANK (a suggestion folder and a box rank >= 1, e.g. where:2), got {text!r}"
        )
    return Path(folder), value


def check_grid(raw: Volume, suggestions: Suggestions) -> None:
    """The suggestion folder's boxes are voxels of ``raw``: same shape, voxel size and offset
    (else :class:`~organet.errors.IncompatibleError` naming both)."""
    what = f"the suggestion folder {suggestions.folder}"
    hint = "suggest on a prediction of this raw volume (same grid)"
    _check_on_grid(what, suggestions.shape, suggestions.voxel_size, suggestions.offset, raw, hint)


def _check_on_grid(
    what: str, shape: Sequence[int], voxel_size: Sequence[float], offset: Sequence[float], raw: Volume, hint: str
) -> None:
    a = raw.path or "the raw volume"
    if tuple(shape) != tuple(raw.shape):
        raise IncompatibleError(f"{what} is for shape {tuple(shape)} voxels but {a} has {raw.shape}; {hint}")
    check_same_voxel_size(voxel_size, raw.voxel_size, what, a, hint)
    if not np.allclose(offset, raw.offset, rtol=0.0, atol=1e-3 * min(raw.voxel_size)):
        raise IncompatibleError(f"{what} has offset {fmt_vec(offset)} nm but {a} has {fmt_vec(raw.offset)} nm; {hint}")


# --------------------------------------------------------------------------- annotation sets


@dataclass
class BoxWrite:
    """What :func:`write_box_labels` did: the box's ``record``, whether the set was
    ``created``, the ``roi_vox`` of recorded boxes whose labels it changed (``replaced``)
    and the ``roi_vox`` of every recorded box afterwards (``rois``)."""

    path: Path
    record: dict[str, Any]
    created: bool
    replaced: list[str] = field(default_factory=list)
    rois: list[str] = field(default_factory=list)


def roi_vox(roi: Roi) -> str:
    """``"z0:z1,y0:y1,x0:x1"`` (voxels), the ``--roi-vox`` syntax (as :attr:`Box.roi_vox`)."""
    return Box(0, roi, 0.0).roi_vox


def read_set_attrs(labels_path: str | Path) -> dict[str, Any]:
    """The organet attributes of an annotation set's ``labels`` image (InputError when
    ``labels_path`` is not an annotation set)."""
    path = Path(labels_path).expanduser()
    try:
        attrs = open_volume(path / LABELS).attrs if (path / LABELS).is_dir() else {}
    except OrganetError:
        attrs = {}
    if ANNOTATED_ROIS not in attrs:
        raise InputError(
            f"{path} is not an annotation set (no '{ANNOTATED_ROIS}' in the attributes of {path / LABELS}); "
            "give a new path or one written by organet annotate with --box"
        )
    return attrs


def is_annotation_set(path: str | Path) -> bool:
    """Whether ``path`` holds an annotation set (a ``labels`` image recording boxes)."""
    try:
        read_set_attrs(path)
    except InputError:
        return False
    return True


def annotated_rois(labels_path: str | Path) -> list[dict[str, Any]]:
    """The records of the finished boxes of an annotation set, in the order they were written."""
    return [dict(r) for r in read_set_attrs(labels_path)[ANNOTATED_ROIS]]


def _set_attrs(path: Path, attrs: dict[str, Any]) -> None:
    # one zarr.json rewrite (the local store writes it to a temporary file and renames it)
    zarr.open_group(str(path / LABELS), mode="r+").attrs[ORGANET_KEY] = attrs


def _create_set(path: Path, raw: Volume, chunks: Sequence[int]) -> None:
    attrs = {
        "kind": "mask",
        "source": "organet annotation set",
        "raw": _abs(raw.path),
        ANNOTATED_ROIS: [],
    }
    scrib_attrs = {"kind": "scribbles", "values": {"0": "unlabeled", "1": "object", "2": "background"}}
    with write_ome_zarr(path) as w:
        w.create_image(LABELS, raw.shape, np.uint8, raw.voxel_size, raw.offset, chunks, attrs)
        w.create_image(SCRIBBLES, raw.shape, np.uint8, raw.voxel_size, raw.offset, chunks, scrib_attrs)


def _abs(path: str) -> str:
    """An absolute, normalised path (``..`` removed, links kept), "" for ""."""
    return os.path.abspath(Path(path).expanduser()) if path else ""


def _check_set_grid(path: Path, lab: Volume, raw: Volume, attrs: dict[str, Any]) -> None:
    hint = "an annotation set holds the labels of one raw volume; give another --output for another volume"
    _check_on_grid(str(path / LABELS), lab.shape, lab.voxel_size, lab.offset, raw, hint)
    if raw.path and attrs.get("raw") and attrs["raw"] != _abs(raw.path):
        raise IncompatibleError(f"{path} holds labels of raw {attrs['raw']}, not of {_abs(raw.path)}; {hint}")


def check_box_writable(labels_path: str | Path, raw: Volume, roi: Roi, replace: bool = False) -> None:
    """Refuse early what :func:`write_box_labels` would refuse before any labels exist:
    an ROI outside ``raw``, a set of another grid or raw, an interrupted write of another
    box, and re-annotating a recorded box without ``replace``."""
    if roi.empty or not raw.roi.contains(roi):
        raise InputError(f"box {roi} is empty or outside the raw volume {raw.path or ''} of shape {raw.shape}")
    path = Path(labels_path).expanduser()
    if not (path.exists() or path.is_symlink()):
        return
    attrs = read_set_attrs(path)
    _check_set_grid(path, open_volume(path / LABELS), raw, attrs)
    text = roi_vox(roi)
    pending = attrs.get(WRITING)
    if pending and pending.get("roi_vox") != text:
        taken = [r["roi_vox"] for r in pending.get("suspended", [])]
        raise InputError(
            f"{path}: writing box {pending.get('roi_vox')} ({_describe(pending)}, started {pending.get('date')}) was "
            "interrupted; rerun that annotation first"
            + (f" (it restores the boxes {', '.join(taken)} it overlaps)" if taken else "")
        )
    same = [r for r in attrs[ANNOTATED_ROIS] if r.get("roi_vox") == text]
    if same and not replace:
        raise InputError(
            f"box {text} ({_describe(same[0])}) is already annotated in {path} (on {same[0].get('date')}); "
            "pass --overwrite to replace its labels"
        )


def _describe(record: dict[str, Any]) -> str:
    if record.get("rank") is not None:
        return f"rank {record['rank']} of {record.get('source')}"
    return "no suggestion rank"


def write_box_labels(
    labels_path: str | Path,
    raw: Volume,
    roi: Roi,
    labels: np.ndarray,
    *,
    scribbles: np.ndarray | None = None,
    rank: int | None = None,
    source: str | Path | None = None,
    scribbles_source: str | None = None,
    replace: bool = False,
    extra: dict[str, Any] | None = None,
    chunks: Sequence[int] = CHUNKS,
) -> BoxWrite:
    """Write one box's labels into the annotation set ``labels_path`` (created on first use).

    Parameters
    ----------
    labels_path
        The set, ``LABELS.zarr`` (see the module docstring for the layout and the rules).
    raw
        The raw volume the labels are of (its shape, voxel size and offset make the grid;
        its path is recorded for training).
    roi
        The box in voxels of ``raw`` (z, y, x).
    labels
        The box's labels, shape ``roi.shape``, values 0/1 (bool or integers).
    scribbles
        The box's scribbles (0/1/2, shape ``roi.shape``), stored in ``LABELS.zarr/scribbles``.
    rank, source
        The box's rank in the suggestion folder ``source`` (both None for a free ROI).
    scribbles_source
        Where the scribbles came from, for the record (default ``LABELS.zarr/scribbles``
        when ``scribbles`` is given).
    replace
        Allow changing the labels of recorded boxes (re-annotating one, or an overlap
        where the labels differ); ``--overwrite`` on the command line.
    extra
        More JSON items for the box's record (e.g. the graph-cut settings).
    chunks
        Chunks (voxels) of a new set.
    """
    path = Path(labels_path).expanduser()
    lab = np.asarray(labels)
    if lab.shape != tuple(roi.shape):
        raise InputError(f"labels of shape {lab.shape} do not fit box {roi_vox(roi)} of shape {tuple(roi.shape)}")
    if lab.dtype.kind not in "uib" or (lab.size and not np.isin(np.unique(lab), (0, 1)).all()):
        raise InputError(f"labels of box {roi_vox(roi)} must be 0/1, got values {np.unique(lab)[:8].tolist()}")
    lab = lab.astype(np.uint8)
    if scribbles is not None and np.shape(scribbles) != tuple(roi.shape):
        raise InputError(f"scribbles of shape {np.shape(scribbles)} do not fit box {roi_vox(roi)}")
    if not raw.path:
        raise InputError("the raw volume needs a path: training reads the labels together with it")
    check_box_writable(path, raw, roi, replace)
    created = not (path.exists() or path.is_symlink())
    if created:
        _create_set(path, raw, chunks)
    attrs = read_set_attrs(path)
    labels_vol = open_volume(path / LABELS)
    text = roi_vox(roi)
    pending = attrs.get(WRITING) or {}
    suspended: list[dict[str, Any]] = list(pending.get("suspended", []))  # a rerun of an interrupted write
    kept: list[dict[str, Any]] = []
    conflicts: list[str] = []
    for rec in attrs[ANNOTATED_ROIS]:
        inter = parse_roi(rec["roi_vox"], "vox", labels_vol).intersect(roi)
        if rec["roi_vox"] == text:
            suspended.append(rec)
        elif inter.empty:
            kept.append(rec)
        elif differ := int(np.count_nonzero(labels_vol.read(inter) != lab[inter.shift(_neg(roi.offset)).slices()])):
            suspended.append(rec)
            conflicts.append(f"{rec['roi_vox']} ({_describe(rec)}: {differ} voxels)")
        else:
            kept.append(rec)
    if conflicts and not replace:
        raise InputError(
            f"box {text} overlaps annotated boxes of {path} where the new labels differ: {'; '.join(conflicts)}; "
            "pass --overwrite to let the new labels replace them there (those boxes stay annotated)"
        )
    if suspended and not replace:
        raise InputError(f"finishing the interrupted write of box {text} changes annotated boxes; pass --overwrite")
    record: dict[str, Any] = {
        "roi_vox": text,
        "rank": int(rank) if rank is not None else None,
        "source": _abs(str(source)) if source is not None else None,
        "scribbles": scribbles_source or (f"{path}/{SCRIBBLES}" if scribbles is not None else None),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "object_voxels": int(lab.sum()),
        **(extra or {}),
    }
    _set_attrs(path, {**attrs, ANNOTATED_ROIS: kept, WRITING: {**record, "suspended": suspended}})
    write_block(path / LABELS / "s0", roi.slices(), lab)
    if scribbles is not None:
        write_block(path / SCRIBBLES / "s0", roi.slices(), np.asarray(scribbles).astype(np.uint8))
    restored = []
    for rec in suspended:
        if rec["roi_vox"] != text:
            changed = [t for t in rec.get("changed_by", []) if t != text]
            restored.append({**rec, "changed_by": [*changed, text]})
    done = {k: v for k, v in attrs.items() if k != WRITING}
    done[ANNOTATED_ROIS] = [*kept, *restored, record]
    _set_attrs(path, done)
    rois = [r["roi_vox"] for r in done[ANNOTATED_ROIS]]
    return BoxWrite(path, record, created, sorted({r["roi_vox"] for r in suspended}), rois)


def _neg(v: Sequence[int]) -> tuple[int, int, int]:
    return (-int(v[0]), -int(v[1]), -int(v[2]))


def annotate_box(
    raw: Volume,
    scribbles: np.ndarray,
    labels_path: str | Path,
    roi: Roi,
    *,
    params: GraphCutParams | None = None,
    rank: int | None = None,
    source: str | Path | None = None,
    scribbles_source: str | None = None,
    replace: bool = False,
    log: Callable[[str], None] | None = None,
) -> tuple[GraphCutResult, BoxWrite]:
    """Graph cut inside one box and write it into the annotation set ``labels_path``.

    ``scribbles``: the box's (0/1/2, shape ``roi.shape``, voxels z y x). The cut is
    :func:`~organet.annotate.graphcut.segment_from_scribbles` on ``raw`` read over ``roi``
    (the working grid chosen from ``raw``'s voxel size unless ``params`` fixes it), as in
    ``organet annotate graphcut``; the labels go through :func:`write_box_labels`.
    Whatever that would refuse before any labels exist is refused before the cut.
    """
    check_box_writable(labels_path, raw, roi, replace)
    p = params or GraphCutParams()
    if p.voxel_size is None:
        p = dataclasses.replace(p, voxel_size=raw.voxel_size)
    res = segment_from_scribbles(raw.read(roi), scribbles, p, log)
    extra = {"graphcut": p.record(), "working_grid": res.working_grid.record() if res.working_grid else None}
    written = write_box_labels(
        labels_path,
        raw,
        roi,
        res.labels,
        scribbles=scribbles,
        rank=rank,
        source=source,
        scribbles_source=scribbles_source,
        replace=replace,
        extra=extra,
    )
    return res, written


# --------------------------------------------------------------------------- training arguments


def _train_rois(labels_path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    attrs = read_set_attrs(labels_path)
    records = list(attrs[ANNOTATED_ROIS])
    if not records:
        raise InputError(f"{labels_path} has no annotated boxes yet")
    return attrs, records


def _voxel_size_flag(raw: str, labels: Volume) -> tuple[float, float, float] | None:
    """The labels' voxel size when the raw's file does not carry the same (so training must be told)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            vol = open_volume(raw)
        except OrganetError:
            return labels.voxel_size
    if any("no voxel size" in str(w.message) for w in caught) or not same_voxel_size(vol.voxel_size, labels.voxel_size):
        return labels.voxel_size
    return None


def finetune_args(labels_path: str | Path) -> list[str]:
    """``organet finetune`` arguments for every recorded box of a set: ``--raw R --labels
    LABELS.zarr/labels [--voxel-size Z Y X] --roi-vox R1 --roi-vox R2 ...`` (``--voxel-size``
    only when the raw's file lacks the labels' voxel size)."""
    path = Path(labels_path).expanduser()
    attrs, records = _train_rois(path)
    args = ["--raw", str(attrs["raw"]), "--labels", _abs(str(path / LABELS))]
    vs = _voxel_size_flag(str(attrs["raw"]), open_volume(path / LABELS))
    if vs is not None:
        args += ["--voxel-size", *(f"{v:g}" for v in vs)]
    for r in records:
        args += ["--roi-vox", r["roi_vox"]]
    return args


def finetune_command(labels_path: str | Path, model: str = "MODEL", output: str = "RUN_DIR") -> str:
    """The ready ``organet finetune --from MODEL --output RUN_DIR ...`` line (shell-quoted)."""
    return shlex.join(["organet", "finetune", "--from", model, "--output", output, *finetune_args(labels_path)])


def _spec_items(labels_path: str | Path) -> list[dict[str, Any]]:
    path = Path(labels_path).expanduser()
    attrs, records = _train_rois(path)
    vs = _voxel_size_flag(str(attrs["raw"]), open_volume(path / LABELS))
    items = []
    for i, r in enumerate(records):
        name = f"box{r['rank']}" if r.get("rank") is not None else f"roi{i}"
        item: dict[str, Any] = {"name": name, "raw": str(attrs["raw"]), "labels": _abs(str(path / LABELS))}
        item["roi_vox"] = r["roi_vox"]
        if vs is not None:
            item["voxel_size"] = list(vs)
        items.append(item)
    return items


def train_yaml(labels_path: str | Path) -> str:
    """A ``data.train`` snippet for an experiment config with one entry per recorded box."""
    import yaml

    return yaml.safe_dump({"data": {"train": _spec_items(labels_path)}}, sort_keys=False)


def roi_specs(labels_path: str | Path) -> list[RoiSpec]:
    """The recorded boxes as :class:`~organet.config.RoiSpec` (the ROIs training reads)."""
    from organet.config import RoiSpec

    return [RoiSpec(**item) for item in _spec_items(labels_path)]


__all__ = [
    "ANNOTATED_ROIS",
    "CHUNKS",
    "BoxWrite",
    "Suggestions",
    "annotate_box",
    "annotated_rois",
    "box_roi",
    "check_box_writable",
    "check_grid",
    "finetune_args",
    "finetune_command",
    "is_annotation_set",
    "parse_box",
    "read_set_attrs",
    "read_suggestions",
    "roi_specs",
    "roi_vox",
    "suggested_boxes",
    "train_yaml",
    "write_box_labels",
]
