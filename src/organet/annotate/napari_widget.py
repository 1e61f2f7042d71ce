"""napari dock widget: paint scribbles on any planes, run the graph cut, correct, save.

The widget works on an open 3-D image layer. It keeps a Labels layer ``scribbles``
(0 unlabeled, 1 object, 2 background) that the user paints, and a Labels layer
``graphcut`` (0/1) that each run replaces. The cut runs in a worker thread on the
bounding box of the scribbles grown by a margin (voxels), so only that box is read
and processed; outside it the result is 0. Corrections: paint more and run again.
``Save`` writes ``labels`` and ``scribbles`` as OME-Zarr with the image layer's
``scale`` as voxel size and its ``translate`` as offset (both nm, axis order z, y, x).

With a suggestion folder of ``organet suggest`` (:func:`open_viewer` ``suggestions``, or
the widget's ``load_suggestions``) the viewer also shows the uncertainty map and the boxes,
and the widget gets a box selector: a selected box moves the view to its middle plane,
the cut runs on exactly that box, and ``Save`` writes the box into the annotation set
(:func:`organet.annotate.boxes.write_box_labels`, the same as ``organet annotate
graphcut --box``; ``overwrite`` there means replacing an annotated box's labels).

Everything above the GUI section is plain NumPy (tested without napari). napari and
magicgui are imported only when the widget class is first used: the module itself
imports without them (``pip install 'organet[napari]'`` adds them).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from organet.annotate.boxes import (
    LABELS,
    SCRIBBLES,
    Suggestions,
    check_grid,
    finetune_command,
    is_annotation_set,
    read_set_attrs,
    read_suggestions,
    write_box_labels,
)
from organet.annotate.graphcut import (
    AnnotationError,
    GraphCutParams,
    GraphCutResult,
    segment_from_scribbles,
)
from organet.annotate.scribbles import scribbles_in
from organet.annotate.suggest import Box as SuggestedBox
from organet.annotate.suggest import napari_rows
from organet.volumes import Roi, Volume, open_volume

if TYPE_CHECKING:  # pragma: no cover
    import napari

NAPARI_MISSING = "napari is not installed: pip install 'organet[napari]'"
SCRIBBLES_LAYER = "scribbles"
GRAPHCUT_LAYER = "graphcut"
UNCERTAINTY_LAYER = "uncertainty"
BOXES_LAYER = "boxes"
DEFAULT_MARGIN = 32  # voxels added around the scribbles' bounding box, per side

Box = tuple[slice, slice, slice]


# --------------------------------------------------------------------------- plain functions


def as_margin(margin: int | Sequence[int]) -> tuple[int, int, int]:
    """A margin in voxels as (z, y, x); one int applies to all axes. Must be >= 0."""
    flat = np.ravel(np.asarray(margin))
    m = [int(flat[0])] * 3 if np.ndim(margin) == 0 else [int(v) for v in flat]
    if len(m) != 3 or min(m) < 0:
        raise AnnotationError(f"margin must be one or three integers >= 0 (voxels, z y x), got {margin!r}")
    return m[0], m[1], m[2]


def scribble_box(scribbles: np.ndarray, margin: int | Sequence[int] = DEFAULT_MARGIN) -> Box:
    """Bounding box (voxels, z, y, x) of the nonzero scribbles, grown by ``margin`` voxels per
    side and clipped to the volume. Raises :class:`AnnotationError` if nothing is scribbled."""
    s = np.asarray(scribbles)
    if s.ndim != 3:
        raise AnnotationError(f"scribbles must be 3-D (z, y, x), got shape {s.shape}")
    m = as_margin(margin)
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(np.any(s, axis=others))
        if hit.size == 0:
            raise AnnotationError("no scribbles: paint 1 (object) and 2 (background) in the 'scribbles' layer")
        box.append(slice(max(int(hit[0]) - m[axis], 0), min(int(hit[-1]) + 1 + m[axis], s.shape[axis])))
    return box[0], box[1], box[2]


def full_box(shape: Sequence[int]) -> Box:
    """The box covering a whole (z, y, x) volume."""
    z, y, x = (int(n) for n in shape)
    return slice(0, z), slice(0, y), slice(0, x)


def crop(data: Any, box: Box) -> np.ndarray:
    """``data[box]`` as a NumPy array; array-likes (zarr, dask, memmaps) read only the box."""
    return np.asarray(data[box])


def paste(target: np.ndarray, box: Box, block: np.ndarray) -> np.ndarray:
    """Write ``block`` into ``target[box]`` in place and return ``target``."""
    want = tuple(s.stop - s.start for s in box)
    if tuple(block.shape) != want:
        raise AnnotationError(f"block of shape {tuple(block.shape)} does not fit box {box_str(box)}")
    target[box] = block
    return target


def box_str(box: Box) -> str:
    """``z0:z1,y0:y1,x0:x1`` (voxels), the ``--roi-vox`` syntax of the CLI."""
    return ",".join(f"{s.start}:{s.stop}" for s in box)


@dataclass
class CutJob:
    """One graph-cut run prepared from layer data: the scribbles are a copy, so painting can
    go on while the cut runs; the image is cropped (read) only when the job runs."""

    image: Any  # full (z, y, x) array-like
    scribbles: np.ndarray  # the box's scribbles (copy), uint8-compatible
    box: Box
    shape: tuple[int, int, int]

    @property
    def n_voxels(self) -> int:
        return int(np.prod([s.stop - s.start for s in self.box]))


@dataclass
class LayerCut:
    """Result of :func:`run_cut`: ``labels`` (uint8 0/1) on the full grid, 0 outside ``box``."""

    labels: np.ndarray
    box: Box
    result: GraphCutResult  # on the box only (labels, probability, timings)
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    scribbles: np.ndarray | None = None  # the box's scribbles the cut was run from


def prepare_cut(
    image: Any,
    scribbles: Any,
    margin: int | Sequence[int] = DEFAULT_MARGIN,
    crop_to_scribbles: bool = True,
    box: Box | None = None,
) -> CutJob:
    """Check layer data and choose the box: ``box`` (voxels of the layer) when given, else the
    scribbles' bounding box plus ``margin`` voxels (``crop_to_scribbles``), else the whole
    volume. ``image`` and ``scribbles``: (z, y, x)."""
    dims = tuple(int(n) for n in np.shape(image))
    if len(dims) != 3:
        raise AnnotationError(f"the graph cut needs a 3-D (z, y, x) image layer; this one has shape {dims}")
    shape = (dims[0], dims[1], dims[2])
    s = np.asarray(scribbles)
    if s.shape != shape:
        raise AnnotationError(f"the scribbles layer has shape {s.shape} but the image has {shape} (z, y, x)")
    if box is not None:
        if any(b.start < 0 or b.stop > n or b.stop <= b.start for b, n in zip(box, shape)):
            raise AnnotationError(f"box {box_str(box)} lies outside the image of shape {shape} (z, y, x)")
        if not s[box].any():
            raise AnnotationError(f"no scribbles in box {box_str(box)}: paint 1 (object) and 2 (background) inside it")
    elif crop_to_scribbles:
        box = scribble_box(s, margin)
    else:
        box = full_box(shape)
        if not s.any():
            raise AnnotationError("no scribbles: paint 1 (object) and 2 (background) in the 'scribbles' layer")
    return CutJob(image, np.array(s[box], copy=True), box, shape)


def run_cut(job: CutJob, params: GraphCutParams | None = None, log: Callable[[str], None] | None = None) -> LayerCut:
    """Run :func:`organet.annotate.graphcut.segment_from_scribbles` (the core of
    ``organet annotate graphcut``) on the job's box and paste the labels into a full-size
    uint8 volume. Note: raw is scaled by the box's own 0.1/99.9 percentiles."""
    p = params or GraphCutParams()
    t0 = time.perf_counter()
    raw = crop(job.image, job.box)
    res = segment_from_scribbles(raw, job.scribbles, p, log)
    labels = paste(np.zeros(job.shape, np.uint8), job.box, res.labels)
    return LayerCut(labels, job.box, res, time.perf_counter() - t0, p.record(), job.scribbles)


def graphcut_layers(
    image: Any,
    scribbles: Any,
    params: GraphCutParams | None = None,
    margin: int | Sequence[int] = DEFAULT_MARGIN,
    crop_to_scribbles: bool = True,
    log: Callable[[str], None] | None = None,
) -> LayerCut:
    """Layer data in, full-size labels out: :func:`prepare_cut` then :func:`run_cut`."""
    return run_cut(prepare_cut(image, scribbles, margin, crop_to_scribbles), params, log)


def layer_box(
    roi: Roi,
    voxel_size: Sequence[float],
    offset: Sequence[float],
    scale: Sequence[float],
    translate: Sequence[float],
    shape: Sequence[int],
) -> Box:
    """A box (voxels of a volume of ``voxel_size``/``offset``, nm) as slices of a layer with
    ``scale``/``translate`` (nm) and ``shape`` (all z, y, x); the layer must lie on the same
    grid (e.g. the whole volume, or an ROI of it) and hold the box."""
    vs, sc = [float(v) for v in voxel_size], voxel_size_of(scale)
    tr = [float(t) for t in translate][-3:]
    if not all(abs(a - b) <= 1e-3 * b for a, b in zip(sc, vs)):
        raise AnnotationError(f"the image layer's scale {tuple(sc)} nm is not the boxes' voxel size {tuple(vs)} nm")
    shift = [(o - t) / v for o, t, v in zip(offset, tr, vs)]
    if any(abs(d - round(d)) > 1e-3 for d in shift):
        raise AnnotationError(f"the image layer (translate {tuple(tr)} nm) is not on the boxes' voxel grid")
    lo = [b + round(d) for b, d in zip(roi.offset, shift)]
    box = tuple(slice(a, a + n) for a, n in zip(lo, roi.shape))
    if any(a < 0 or a + n > int(m) for a, n, m in zip(lo, roi.shape, shape)):
        raise AnnotationError(f"box {roi} lies outside the image layer of shape {tuple(shape)} (z, y, x)")
    return box[0], box[1], box[2]


def box_shapes(boxes: Sequence[SuggestedBox], voxel_size: Sequence[float], offset: Sequence[float]) -> list[np.ndarray]:
    """The boxes as napari rectangles (4 vertices, world nm, z y x) on their middle z plane,
    the shapes of ``boxes_napari.csv`` (:func:`organet.annotate.suggest.napari_rows`)."""
    rows = napari_rows(boxes, voxel_size, offset)
    return [
        np.array([[r["axis-0"], r["axis-1"], r["axis-2"]] for r in rows if r["index"] == i], float)
        for i in range(len(boxes))
    ]


def box_view(box: SuggestedBox, voxel_size: Sequence[float], offset: Sequence[float]) -> tuple[float, float, float]:
    """World point (nm, z y x) to look at a box: its middle z plane (the plane of its
    rectangle) and the centre of its y and x extent."""
    (z0, y0, x0), (z1, y1, x1) = box.roi.offset, box.roi.end
    return (
        float(offset[0]) + ((z0 + z1 - 1) // 2) * float(voxel_size[0]),
        float(offset[1]) + (y0 + y1 - 1) / 2 * float(voxel_size[1]),
        float(offset[2]) + (x0 + x1 - 1) / 2 * float(voxel_size[2]),
    )


def parse_scales(text: str) -> tuple[float, ...]:
    """Feature scales from ``"1, 2, 4, 8"`` (working-grid voxels)."""
    try:
        scales = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise AnnotationError(f"feature scales must be numbers like '1, 2, 4, 8', got {text!r}") from None
    if not scales or min(scales) <= 0:
        raise AnnotationError(f"feature scales must be > 0, got {text!r}")
    return scales


def voxel_size_of(scale: Sequence[float]) -> tuple[float, float, float]:
    """Voxel size (nm, z y x) from a napari layer ``scale`` (its last three entries)."""
    vs = [float(v) for v in scale][-3:]
    if len(vs) != 3 or min(vs) <= 0:
        raise AnnotationError(f"layer scale {tuple(scale)} is not a positive (z, y, x) voxel size in nm")
    return vs[0], vs[1], vs[2]


def save_mask(
    path: str | Path,
    labels: np.ndarray,
    scale: Sequence[float],
    translate: Sequence[float] = (0.0, 0.0, 0.0),
    scribbles: np.ndarray | None = None,
    overwrite: bool = False,
    attrs: dict[str, Any] | None = None,
) -> str:
    """Write OME-Zarr ``path`` atomically with image ``labels`` (uint8 0/1, ``kind: mask``) and,
    if given, ``scribbles`` (uint8 0/1/2). ``scale`` = voxel size, ``translate`` = offset (nm, z y x),
    e.g. a napari layer's ``scale``/``translate``. Returns ``path/labels``."""
    from organet.volumes import write_ome_zarr

    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise AnnotationError(f"labels must be 3-D (z, y, x), got shape {lab.shape}")
    vs = voxel_size_of(scale)
    off = tuple(float(v) for v in translate)[-3:]
    meta = dict(attrs or {})
    with write_ome_zarr(path, overwrite=overwrite) as w:
        out = w.create_image("labels", lab.shape, np.uint8, vs, off, attrs={"kind": "mask", **meta})
        out.write(out.roi, (lab > 0).astype(np.uint8))
        if scribbles is not None:
            s = np.asarray(scribbles)
            if s.shape != lab.shape:
                raise AnnotationError(f"scribbles have shape {s.shape} but labels have {lab.shape}")
            sv = w.create_image(
                "scribbles",
                s.shape,
                np.uint8,
                vs,
                off,
                attrs={"kind": "scribbles", "values": {"0": "unlabeled", "1": "object", "2": "background"}},
            )
            sv.write(sv.roi, s.astype(np.uint8))
    return f"{path}/labels"


# --------------------------------------------------------------------------- napari (lazy)


def require_napari() -> None:
    """Import napari and magicgui or raise ImportError with :data:`NAPARI_MISSING`."""
    try:
        import magicgui  # noqa: F401
        import napari  # noqa: F401
    except ImportError as e:
        if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in ("napari", "magicgui"):
            raise ImportError(NAPARI_MISSING) from e
        raise ImportError(f"napari could not be imported: {e}") from e


def lazy_widget_class(define: Callable[[], type]) -> Callable[[], type]:
    """``define`` run once, on first call, after :func:`require_napari`: widget classes that
    subclass magicgui's need napari and magicgui, which the core does not import."""
    built: list[type] = []

    def get() -> type:
        if not built:
            require_napari()
            built.append(define())
        return built[0]

    return get


def __getattr__(name: str) -> Any:
    """``GraphCutWidget`` is built on first access (it needs napari and magicgui)."""
    if name == "GraphCutWidget":
        return _widget_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _define_widget_class() -> type:  # noqa: C901 - one GUI class
    from magicgui.types import FileDialogMode
    from magicgui.widgets import (
        CheckBox,
        ComboBox,
        Container,
        FileEdit,
        FloatSpinBox,
        Label,
        LineEdit,
        PushButton,
        SpinBox,
    )
    from napari.layers import Image, Labels
    from napari.qt.threading import thread_worker
    from napari.utils.notifications import show_error, show_info

    class GraphCutWidget(Container):
        """Dock widget: scribbles layer, graph-cut parameters, run (worker thread), save."""

        def __init__(self, napari_viewer: napari.components.ViewerModel) -> None:
            super().__init__(labels=True)
            self.viewer = napari_viewer  # a napari.Viewer, or a ViewerModel (no window) in tests
            self.last: LayerCut | None = None
            self.worker: Any = None
            self.suggestions: Suggestions | None = None  # with load_suggestions: its boxes, and
            self.raw: Volume | None = None  # the raw volume they are voxels of
            self.image = ComboBox(label="image", choices=self._image_choices, tooltip="3-D image layer (z, y, x)")
            self.new_scribbles = PushButton(text="Scribbles layer (1 object, 2 background)")
            self.smoothness = FloatSpinBox(
                value=10.0,
                min=0.0,
                max=1000.0,
                step=0.5,
                label="smoothness",
                tooltip="weight of the boundary term; 0 = forest + scribbles only",
            )
            self.contrast_sigma = FloatSpinBox(
                value=0.05,
                min=0.001,
                max=1.0,
                step=0.005,
                label="contrast sigma",
                tooltip="intensity scale of the boundary term (raw scaled to [0, 1])",
            )
            self.downsample = SpinBox(
                value=0,
                min=0,
                max=8,
                label="downsample",
                tooltip="work on a grid downsampled by this factor per axis (speed); "
                "0 = auto (full resolution up to 4 M voxels in the box)",
            )
            self.scales = LineEdit(
                value="1, 2, 4, 8", label="feature scales", tooltip="feature scales in working-grid voxels"
            )
            self.trees = SpinBox(value=64, min=1, max=1000, label="trees")
            self.autocontext = SpinBox(value=1, min=0, max=5, label="auto-context")
            self.supervoxels = SpinBox(
                value=0,
                min=0,
                max=64,
                label="supervoxels",
                tooltip="forest on watershed supervoxels of this edge length; 0 = per voxel",
            )
            self.fill_holes = CheckBox(value=False, text="fill holes")
            self.min_size = SpinBox(
                value=0,
                min=0,
                max=10**9,
                label="min size",
                tooltip="drop unscribbled objects smaller than this (working-grid voxels)",
            )
            self.jobs = SpinBox(value=1, min=1, max=64, label="threads")
            self.box = ComboBox(
                label="box",
                choices=self._box_choices,
                tooltip="a box of `organet suggest` (rank, score): the cut runs on exactly that box and Save "
                "adds it to the annotation set",
                visible=False,
            )
            self.crop_box = CheckBox(value=True, text="only the scribbles' box + margin")
            self.margin = SpinBox(value=DEFAULT_MARGIN, min=0, max=100_000, label="margin (voxels)")
            self.run_button = PushButton(text="Run graph cut")
            self.status = Label(value="")
            self.output = FileEdit(
                mode=FileDialogMode.OPTIONAL_FILE, filter="*.zarr", label="save to", value=Path("graphcut.zarr")
            )
            self.overwrite = CheckBox(value=False, text="overwrite")
            self.save_button = PushButton(text="Save")
            self.extend(
                [
                    self.image,
                    self.new_scribbles,
                    self.smoothness,
                    self.contrast_sigma,
                    self.downsample,
                    self.scales,
                    self.trees,
                    self.autocontext,
                    self.supervoxels,
                    self.fill_holes,
                    self.min_size,
                    self.jobs,
                    self.box,
                    self.crop_box,
                    self.margin,
                    self.run_button,
                    self.status,
                    self.output,
                    self.overwrite,
                    self.save_button,
                ]
            )
            self.new_scribbles.changed.connect(self.ensure_scribbles)
            self.run_button.changed.connect(self.run)
            self.save_button.changed.connect(self.save)
            self.box.changed.connect(self._box_changed)
            for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
                ev.connect(self._layers_changed)
            self.image.reset_choices()
            if self.image.value is not None and SCRIBBLES_LAYER not in self.viewer.layers:
                self.ensure_scribbles()

        # -- layers
        def _image_choices(self, _widget: Any = None) -> list[str]:
            return [lay.name for lay in self.viewer.layers if isinstance(lay, Image)]

        def _layers_changed(self, _event: Any = None) -> None:
            self.image.reset_choices()

        def image_layer(self) -> Image:
            name = self.image.value
            if name is None or name not in self.viewer.layers:
                raise AnnotationError("open a 3-D image layer first")
            return self.viewer.layers[name]

        @staticmethod
        def image_data(layer: Image) -> Any:
            return layer.data[0] if layer.multiscale else layer.data

        def ensure_scribbles(self, _value: Any = None) -> Labels | None:
            """Create (or select) the ``scribbles`` Labels layer matching the image, in paint mode."""
            try:
                img = self.image_layer()
            except AnnotationError as e:
                show_error(str(e))
                return None
            if SCRIBBLES_LAYER in self.viewer.layers:
                lay = self.viewer.layers[SCRIBBLES_LAYER]
            else:
                shape = tuple(self.image_data(img).shape)
                lay = self.viewer.add_labels(
                    np.zeros(shape, np.uint8), name=SCRIBBLES_LAYER, scale=img.scale, translate=img.translate
                )
            self.viewer.layers.selection.active = lay
            lay.selected_label = 1
            lay.mode = "paint"
            return lay

        def params(self) -> GraphCutParams:
            return GraphCutParams(
                downsample=int(self.downsample.value) or None,
                scales=parse_scales(self.scales.value),
                n_trees=int(self.trees.value),
                autocontext=int(self.autocontext.value),
                smoothness=float(self.smoothness.value),
                contrast_sigma=float(self.contrast_sigma.value),
                supervoxels=int(self.supervoxels.value),
                fill_holes=bool(self.fill_holes.value),
                min_size=int(self.min_size.value),
                n_jobs=int(self.jobs.value),
            )

        # -- suggested boxes
        def _box_choices(self, _widget: Any = None) -> list[tuple[str, int]]:
            choices = [("none (the scribbles' box)", 0)]
            if self.suggestions is not None:
                choices += [(f"{b.rank} (score {b.score:.3f})", b.rank) for b in self.suggestions.boxes]
            return choices

        def load_suggestions(self, folder: str | Path, raw: Volume) -> None:
            """Show the uncertainty map and the boxes of the suggestion folder ``folder`` (of
            ``raw``, whose path Save records) and offer its boxes in the box selector."""
            sug = read_suggestions(folder)
            check_grid(raw, sug)
            unc = open_volume(sug.uncertainty)
            self.viewer.add_image(
                unc.read(),
                name=UNCERTAINTY_LAYER,
                scale=sug.voxel_size,
                translate=sug.offset,
                colormap="magma",
                blending="additive",
                opacity=0.6,
                contrast_limits=(0, 255),
            )
            shapes = box_shapes(sug.boxes, sug.voxel_size, sug.offset)
            if shapes:
                self.viewer.add_shapes(
                    shapes,
                    shape_type="rectangle",
                    name=BOXES_LAYER,
                    edge_color="yellow",
                    face_color="transparent",
                    edge_width=2 * min(sug.voxel_size[1:]),
                    features={"rank": [b.rank for b in sug.boxes], "score": [b.score for b in sug.boxes]},
                    text={"string": "{rank}", "color": "yellow", "anchor": "upper_left"},
                )
            if SCRIBBLES_LAYER in self.viewer.layers:  # scribbles stay on top
                lay = self.viewer.layers[SCRIBBLES_LAYER]
                self.viewer.layers.move(self.viewer.layers.index(lay), len(self.viewer.layers))
                self.viewer.layers.selection.active = lay
            self.suggestions, self.raw = sug, raw
            self.box.visible = True
            self.box.reset_choices()

        def selected_box(self) -> SuggestedBox | None:
            """The box chosen in the selector (None: no box)."""
            rank = int(self.box.value or 0)
            return self.suggestions.box(rank) if self.suggestions is not None and rank else None

        def select_box(self, rank: int) -> None:
            """Choose box ``rank`` (0: none), as the selector does."""
            self.box.value = int(rank)

        def _box_changed(self, _value: Any = None) -> None:
            b = self.selected_box()
            if b is None or self.suggestions is None:
                return
            z, y, x = box_view(b, self.suggestions.voxel_size, self.suggestions.offset)
            self.viewer.dims.set_point(self.viewer.dims.ndim - 3, z)
            self.viewer.camera.center = (z, y, x)
            self.status.value = f"box {b.rank} ({b.roi_vox}): scribble inside it, then run"

        def _layer_box(self, img: Image) -> Box | None:
            b = self.selected_box()
            if b is None or self.suggestions is None:
                return None
            shape = tuple(self.image_data(img).shape)
            sug = self.suggestions
            return layer_box(b.roi, sug.voxel_size, sug.offset, img.scale, img.translate, shape)

        # -- run
        def run(self, _value: Any = None) -> Any:
            """Start the cut in a worker thread; returns the worker (None on bad input)."""
            if self.worker is not None:
                show_info("a graph cut is already running")
                return None
            try:
                img = self.image_layer()
                if SCRIBBLES_LAYER not in self.viewer.layers:
                    raise AnnotationError("no 'scribbles' layer: press the scribbles button and paint first")
                box = self._layer_box(img)
                job = prepare_cut(
                    self.image_data(img),
                    self.viewer.layers[SCRIBBLES_LAYER].data,
                    int(self.margin.value),
                    bool(self.crop_box.value),
                    box,
                )
                params = self.params()
                if box is not None and self.suggestions is not None:  # as organet annotate graphcut --box
                    params = dataclasses.replace(params, voxel_size=self.suggestions.voxel_size)
            except (AnnotationError, ValueError) as e:
                show_error(str(e))
                return None
            self.status.value = f"running on {box_str(job.box)} ({job.n_voxels / 1e6:.1f} M voxels) ..."
            self.run_button.enabled = False
            worker = thread_worker(run_cut)(job, params)
            worker.returned.connect(lambda cut: self._done(cut, img))
            worker.errored.connect(self._failed)
            worker.finished.connect(self._finished)
            self.worker = worker
            worker.start()
            return worker

        def _done(self, cut: LayerCut, img: Image) -> None:
            self.last = cut
            if GRAPHCUT_LAYER in self.viewer.layers:
                lay = self.viewer.layers[GRAPHCUT_LAYER]
                lay.data = cut.labels
            else:
                lay = self.viewer.add_labels(
                    cut.labels, name=GRAPHCUT_LAYER, scale=img.scale, translate=img.translate, opacity=0.5
                )
                if SCRIBBLES_LAYER in self.viewer.layers:  # keep the scribbles on top, selected
                    scrib = self.viewer.layers[SCRIBBLES_LAYER]
                    self.viewer.layers.move(self.viewer.layers.index(lay), self.viewer.layers.index(scrib))
                    self.viewer.layers.selection.active = scrib
            frac = float(cut.result.labels.mean())
            self.status.value = (
                f"done in {cut.seconds:.1f} s: {100 * frac:.1f} % object in {box_str(cut.box)}; "
                "paint corrections and run again"
            )

        def _failed(self, e: BaseException) -> None:
            self.status.value = f"failed: {e}"
            show_error(str(e))

        def _finished(self) -> None:
            self.worker = None
            self.run_button.enabled = True

        # -- save
        def save(self, _value: Any = None) -> str | None:
            """Write ``graphcut`` (and ``scribbles``) to the chosen OME-Zarr; returns ``path/labels``.
            With a box selected: add the box to the annotation set at that path instead."""
            if self.selected_box() is not None:
                return self.save_box()
            try:
                if GRAPHCUT_LAYER not in self.viewer.layers:
                    raise AnnotationError("nothing to save: run the graph cut first")
                lab = self.viewer.layers[GRAPHCUT_LAYER]
                scrib = self.viewer.layers[SCRIBBLES_LAYER].data if SCRIBBLES_LAYER in self.viewer.layers else None
                if scrib is not None and tuple(scrib.shape) != tuple(lab.data.shape):
                    scrib = None
                attrs: dict[str, Any] = {"source": "organet napari widget", "image_layer": self.image.value}
                if self.last is not None:
                    attrs.update(graphcut=self.last.params, box_vox=box_str(self.last.box))
                path = str(self.output.value)
                if is_annotation_set(path):
                    raise AnnotationError(
                        f"{path} is an annotation set of boxes: choose a box to add to it, or save elsewhere"
                    )
                out = save_mask(path, lab.data, lab.scale, lab.translate, scrib, bool(self.overwrite.value), attrs)
            except (AnnotationError, ValueError, OSError) as e:
                show_error(str(e))
                return None
            self.status.value = f"saved {out}"
            show_info(f"saved {out}")
            return out

        def save_box(self) -> str | None:
            """Write the last cut of the selected box into the annotation set at the chosen path
            (:func:`~organet.annotate.boxes.write_box_labels`); returns ``path/labels``."""
            try:
                b, sug, raw = self.selected_box(), self.suggestions, self.raw
                if b is None or sug is None or raw is None:
                    raise AnnotationError("choose a box first")
                box = self._layer_box(self.image_layer())
                if self.last is None or self.last.box != box or self.last.scribbles is None:
                    raise AnnotationError(f"nothing to save for box {b.rank}: run the graph cut on it first")
                path = Path(str(self.output.value))
                written = write_box_labels(
                    path,
                    raw,
                    b.roi,
                    self.last.result.labels,
                    scribbles=self.last.scribbles,
                    rank=b.rank,
                    source=sug.folder,
                    replace=bool(self.overwrite.value),
                    extra={"graphcut": self.last.params, "annotator": "organet napari widget"},
                )
            except (AnnotationError, ValueError, OSError) as e:
                show_error(str(e))
                return None
            out = f"{path}/{LABELS}"
            self.status.value = f"saved box {b.rank} into {out}; annotated boxes: {' '.join(written.rois)}"
            show_info(f"saved box {b.rank} into {out}\nfine-tune with: {finetune_command(path)}")
            return out

    return GraphCutWidget


def _show_scale_bar(viewer: Any) -> None:
    """Show the scale bar in nm (napari >= 0.9 keeps it in ``canvas.overlays`` and takes the
    unit from the layers; older versions have ``viewer.scale_bar.unit``)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    if overlays is not None and hasattr(overlays, "scale_bar"):
        overlays.scale_bar.visible = True
        for layer in viewer.layers:
            if hasattr(layer, "units"):
                layer.units = ("nm",) * layer.ndim
        return
    viewer.scale_bar.visible = True
    viewer.scale_bar.unit = "nm"


def open_viewer(
    raw: str,
    scribbles: str | None = None,
    output: str | None = None,
    voxel_size: Sequence[float] | None = None,
    roi_vox: str | None = None,
    show: bool = True,
    viewer: Any = None,
    suggestions: str | None = None,
) -> tuple[Any, Any]:
    """Open ``raw`` (only ``roi_vox``, into memory) in a napari viewer with scale = voxel size
    and translate = offset (nm, z y x), optional ``scribbles`` (same shape as raw or as the ROI;
    e.g. ``out.zarr/scribbles`` from Save), and the widget docked. Returns (viewer, widget).

    ``suggestions``: an ``organet suggest`` folder of this raw (whole volume, no ``roi_vox``):
    its uncertainty map and boxes are shown and offered in the widget's box selector;
    ``output`` is then the annotation set, whose scribbles are loaded when it exists and no
    ``scribbles`` are given.

    ``viewer``: add to this viewer instead of a new ``napari.Viewer``; a
    ``napari.components.ViewerModel`` (no window, no OpenGL) gets the layers and the widget
    without docking it, which is how the tests run without a display."""
    require_napari()
    import napari

    from organet.volumes import parse_roi

    if suggestions and roi_vox:
        raise AnnotationError("--suggestions and --roi-vox exclude each other: the boxes are voxels of the whole raw")
    r = open_volume(raw, voxel_size=voxel_size)
    roi = parse_roi(roi_vox, "vox", r) if roi_vox else r.roi
    sug = read_suggestions(suggestions) if suggestions else None
    if sug is not None:
        check_grid(r, sug)
        if not scribbles and output and (Path(output) / SCRIBBLES).is_dir():
            read_set_attrs(output)  # an annotation set: continue from its scribbles
            scribbles = str(Path(output) / SCRIBBLES)
    data = r.read(roi)
    translate = tuple(o + i * v for o, i, v in zip(r.offset, roi.offset, r.voxel_size))
    scrib = None
    if scribbles:
        s = open_volume(scribbles, voxel_size=voxel_size or r.voxel_size)
        scrib = scribbles_in(s, r.shape, roi)
        bad = np.setdiff1d(np.unique(scrib), [0, 1, 2])
        if bad.size:
            raise AnnotationError(f"scribbles {s.path} contain values {bad[:8].tolist()}; expected 0, 1, 2")
        scrib = scrib.astype(np.uint8)
    if viewer is None:
        viewer = napari.Viewer(title=f"organet graph cut: {Path(raw).name}", show=show)
    viewer.add_image(data, name=Path(str(raw).rstrip("/")).name or "raw", scale=r.voxel_size, translate=translate)
    if scrib is not None:
        viewer.add_labels(scrib, name=SCRIBBLES_LAYER, scale=r.voxel_size, translate=translate)
    _show_scale_bar(viewer)
    widget = _widget_class()(viewer)
    if output:
        widget.output.value = output
    elif sug is not None:
        widget.output.value = Path("labels.zarr")
    if sug is not None:
        widget.load_suggestions(sug.folder, r)
    window = getattr(viewer, "window", None)
    if window is not None:
        window.add_dock_widget(widget, name="organet graph cut", area="right")
    return viewer, widget


_widget_class = lazy_widget_class(_define_widget_class)
