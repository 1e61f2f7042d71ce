"""napari dock widget: predict a region of an image layer with an organet model.

The model is a name of the registry (:data:`organet.model.registry.DEFAULT_REGISTRY`,
downloaded on first use) or a checkpoint file; the region is the current view (the
visible (y, x) box and ``planes`` z planes around the current one; the whole image in a
3-D view), the whole image, or the box of the selected (else the last) shape of a shapes
layer. The image layer's ``scale`` is its voxel size and its ``translate`` its offset
(nm, z, y, x) unless a voxel size is typed in.

The prediction is :meth:`organet.predict.Predictor.predict` run block by block over the
block plan of the region (:func:`organet.volumes.blocks.plan_blocks`, blocks of whole tile
steps) with the tile grid fixed once for the whole region, so the result equals one
``Predictor.predict`` of the region; it runs in a napari worker thread, the progress bar
advances per block and ``Cancel`` stops between blocks. The result is an image layer
``<image> probability`` (float32, 0..1) and a labels layer ``<image> mask``
(:func:`organet.volumes.foreground.foreground` at the threshold), both with the image
layer's scale and placed at the region's origin.

Everything above the GUI section is plain NumPy/torch (tested without a window); napari
and magicgui are imported when the widget class is first used.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from organet.errors import InputError
from organet.volumes.blocks import plan_blocks
from organet.volumes.foreground import check_threshold, foreground
from organet.volumes.geometry import Vec3, as_vec3
from organet.volumes.roi import Roi
from organet.volumes.volume import Volume

from .napari_widget import lazy_widget_class

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from organet.predict import Predictor

VIEW = "current view"
WHOLE = "whole image"
CHECKPOINT = "checkpoint file"
DEFAULT_BLOCK = 128  # block edge (voxels), rounded to whole tile steps
DEFAULT_PLANES = 32  # z planes around the current one for the view or a flat shape


# --------------------------------------------------------------------------- plain functions


def model_names() -> list[str]:
    """The model names of :data:`organet.model.registry.DEFAULT_REGISTRY`."""
    from organet.model.registry import DEFAULT_REGISTRY

    return [e.name for e in DEFAULT_REGISTRY]


def world_roi(
    lo_nm: Sequence[float],
    hi_nm: Sequence[float],
    shape: Sequence[int],
    scale: Sequence[float],
    translate: Sequence[float],
) -> Roi:
    """The voxels (z, y, x) of a layer of ``shape``, ``scale`` and ``translate`` (nm) whose
    centres lie in the world box ``[lo_nm, hi_nm]`` (nm), clipped to the layer.

    napari draws voxel ``i`` centred at ``translate + i * scale``, so a rectangle drawn on
    voxel edges (e.g. the boxes of ``organet suggest``) gives exactly its voxels.
    Raises :class:`InputError` when no voxel lies in the box.
    """
    start, stop = [], []
    for lo, hi, n, s, t in zip(lo_nm, hi_nm, shape, scale, translate):
        a, b = sorted(((float(lo) - float(t)) / float(s), (float(hi) - float(t)) / float(s)))
        start.append(max(math.ceil(a - 1e-6), 0))
        stop.append(min(math.floor(b + 1e-6) + 1, int(n)))
    if any(b <= a for a, b in zip(start, stop)):
        raise InputError(
            f"the box {tuple(lo_nm)}..{tuple(hi_nm)} nm lies outside the image "
            f"(shape {tuple(shape)} voxels, scale {tuple(scale)} nm, translate {tuple(translate)} nm)"
        )
    return Roi(start, [b - a for a, b in zip(start, stop)])


def _planes_around(lo: float, hi: float, planes: int, scale: float, translate: float) -> tuple[float, float]:
    """A world range (nm) of ``planes`` voxels centred on the plane nearest the middle of [lo, hi]."""
    centre = round(((lo + hi) / 2 - translate) / scale)
    first = centre - planes // 2
    return translate + first * scale, translate + (first + planes - 1) * scale


def shape_roi(
    vertices: np.ndarray,
    shape: Sequence[int],
    scale: Sequence[float],
    translate: Sequence[float],
    planes: int = DEFAULT_PLANES,
) -> Roi:
    """The box of a napari shape (``vertices``: world nm, last three columns z, y, x) on a
    layer (see :func:`world_roi`). A flat shape (a rectangle on one z plane) gets ``planes``
    z planes centred on its plane."""
    v = np.asarray(vertices, float)
    if v.ndim != 2 or v.shape[1] < 3 or len(v) == 0:
        raise InputError(f"a shape for a 3-D region needs vertices (z, y, x); got an array of shape {v.shape}")
    v = v[:, -3:]
    lo, hi = v.min(axis=0), v.max(axis=0)
    if hi[0] - lo[0] < 0.5 * float(scale[0]):
        lo[0], hi[0] = _planes_around(lo[0], hi[0], planes, float(scale[0]), float(translate[0]))
    return world_roi(lo, hi, shape, scale, translate)


def view_roi(
    *,
    center: Sequence[float],
    point: Sequence[float],
    zoom: float,
    canvas_size: Sequence[int],
    displayed: Sequence[int],
    shape: Sequence[int],
    scale: Sequence[float],
    translate: Sequence[float],
    planes: int = DEFAULT_PLANES,
) -> Roi:
    """The voxels of a 3-D layer seen in a 2-D view: the visible box of the two
    ``displayed`` axes (``center`` (world nm) ± ``canvas_size`` (pixels, height, width) /
    2 ``zoom`` (pixels per nm)), and ``planes`` planes around ``point`` (world nm) on the
    third axis. With three displayed axes: the whole layer. All axes (z, y, x)."""
    if len(displayed) == 3:
        return Roi((0, 0, 0), shape)
    lo = [float(p) for p in point]
    hi = list(lo)
    for ax in range(3):
        if ax in displayed:
            half = float(canvas_size[list(displayed).index(ax)]) / (2 * float(zoom))
            lo[ax], hi[ax] = float(center[ax]) - half, float(center[ax]) + half
        else:
            lo[ax], hi[ax] = _planes_around(lo[ax], hi[ax], planes, float(scale[ax]), float(translate[ax]))
    return world_roi(lo, hi, shape, scale, translate)


def parse_voxel_size(text: str) -> Vec3 | None:
    """A voxel size (nm, z y x) from ``"8 4 4"`` or ``"8, 4, 4"``; None for an empty text."""
    parts = text.replace(",", " ").split()
    if not parts:
        return None
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InputError(f"voxel size must be three numbers in nm (z y x), got {text!r}") from None
    if len(values) == 1:
        values *= 3
    return as_vec3(values, "voxel size (nm)", positive=True)


@dataclass(frozen=True)
class PredictRequest:
    """One prediction of a layer region: ``model`` (registry name or checkpoint path),
    ``data`` (the layer's (z, y, x) array-like, level 0), ``scale``/``translate`` (nm, the
    layer's), ``voxel_size`` (nm; None: ``scale``), ``roi`` (voxels of ``data``), the mask
    ``threshold`` (probability), ``block`` (block edge in voxels, rounded to whole tile
    steps), ``tile`` (network input edge in voxels of the model grid; 0: the least work that
    fits in memory), ``device`` and ``tta`` as for :class:`~organet.predict.Predictor`."""

    model: str
    data: Any
    scale: Vec3
    translate: Vec3
    roi: Roi
    threshold: float = 0.5
    block: int = DEFAULT_BLOCK
    voxel_size: Vec3 | None = None
    tile: int = 0
    device: str = "auto"
    tta: str | None = None

    def volume(self) -> Volume:
        """The layer data as a :class:`~organet.volumes.Volume` (voxel size, offset in nm)."""
        return Volume(self.data, self.voxel_size or self.scale, self.translate, path="napari layer")


@dataclass
class LayerPrediction:
    """Result of :func:`predict_blocks`: ``probability`` (float32) and ``mask`` (uint8 0/1)
    of ``roi`` (voxels of the layer), ``translate`` (nm) of the result layers (the layer's,
    moved to the ROI origin), ``done`` of ``blocks`` blocks (fewer when cancelled)."""

    probability: np.ndarray
    mask: np.ndarray
    roi: Roi
    scale: Vec3
    translate: Vec3
    blocks: int
    done: int
    seconds: float
    predictor: Predictor | None = field(default=None, repr=False)

    @property
    def complete(self) -> bool:
        return self.done == self.blocks


def predictor_for(req: PredictRequest) -> Predictor:
    """The :class:`~organet.predict.Predictor` of ``req.model`` (a registry name is resolved,
    downloading on first use) with its tile grid fixed for ``req.roi``."""
    from organet.model.registry import resolve_model
    from organet.predict import Predictor

    check_threshold(req.threshold)
    tile = (req.tile,) * 3 if req.tile else None
    pred = Predictor.from_checkpoint(resolve_model(req.model), tile=tile, device=req.device, tta=req.tta)
    return pred.for_region(req.volume(), req.roi)


def predict_blocks(
    req: PredictRequest, cancel: threading.Event | None = None
) -> Generator[tuple[int, int], None, LayerPrediction]:
    """Predict ``req.roi`` block by block; yields ``(done, total)`` blocks before the first
    block and after each, and returns the :class:`LayerPrediction`.

    Blocks are whole tile steps of the model grid from the ROI origin (``req.block`` voxels
    per axis, rounded); every block is :meth:`Predictor.predict` with the grid fixed for the
    whole ROI, so the result equals one ``Predictor.predict(volume, roi)``. When ``cancel``
    is set the loop stops before the next block and returns what is done (``complete``
    False; voxels of blocks not done are 0).
    """
    t0 = time.perf_counter()
    vol = req.volume()
    roi = req.roi
    if roi.empty or not vol.roi.contains(roi):
        raise InputError(f"ROI {roi} lies outside the image of shape {vol.shape} or is empty")
    pred = predictor_for(req)
    gmap = pred.grid_map(vol)
    step = pred.grid().step
    unit = step if gmap.identity else (64, 64, 64)
    plan = plan_blocks(roi, unit, None, target=max(int(req.block), 1))
    prob = np.zeros(roi.shape, np.float32)
    total, done = len(plan), 0
    yield done, total
    for block in plan:
        if cancel is not None and cancel.is_set():
            break
        prob[block.local(roi.offset)] = pred.predict(vol, block.roi)
        done += 1
        yield done, total
    mask = foreground(prob, "probability", req.threshold).astype(np.uint8)
    translate = tuple(float(t) + o * float(s) for t, o, s in zip(req.translate, roi.offset, req.scale))
    return LayerPrediction(
        prob,
        mask,
        roi,
        req.scale,
        as_vec3(translate, "translate"),
        total,
        done,
        time.perf_counter() - t0,
        pred,
    )


def layer_geometry(layer: Any) -> tuple[Any, tuple[int, int, int], Vec3, Vec3]:
    """(level-0 data, shape, scale, translate) of a 3-D napari image layer (nm, z, y, x)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    if len(data.shape) != 3:
        raise InputError(f"layer {layer.name!r} has shape {tuple(data.shape)}; expected a 3-D (z, y, x) image")
    sh = tuple(int(n) for n in data.shape)
    scale = as_vec3([float(v) for v in layer.scale][-3:], f"scale of layer {layer.name!r}", positive=True)
    translate = as_vec3([float(v) for v in layer.translate][-3:], f"translate of layer {layer.name!r}")
    return data, (sh[0], sh[1], sh[2]), scale, translate


# --------------------------------------------------------------------------- the widget


def __getattr__(name: str) -> Any:
    """``PredictWidget`` is built on first access (it needs napari and magicgui)."""
    if name == "PredictWidget":
        return _widget_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _define_widget_class() -> type:  # noqa: C901 - one GUI class
    from magicgui.types import FileDialogMode
    from magicgui.widgets import (
        ComboBox,
        Container,
        FileEdit,
        FloatSpinBox,
        Label,
        LineEdit,
        ProgressBar,
        PushButton,
        SpinBox,
    )
    from napari.layers import Image, Shapes
    from napari.qt.threading import thread_worker
    from napari.utils.notifications import show_error

    from organet.errors import OrganetError

    class PredictWidget(Container):
        """Dock widget: model, image, region, threshold; Predict (worker thread) and Cancel."""

        def __init__(self, napari_viewer: napari.components.ViewerModel) -> None:
            super().__init__(labels=True)
            self.viewer = napari_viewer
            self.worker: Any = None
            self.last: LayerPrediction | None = None
            self._cancel = threading.Event()
            self.model = ComboBox(
                label="model", choices=[*model_names(), CHECKPOINT], tooltip="a registry model or a checkpoint file"
            )
            self.checkpoint = FileEdit(mode=FileDialogMode.EXISTING_FILE, filter="*.pt", label="checkpoint")
            self.image = ComboBox(label="image", choices=self._image_choices, tooltip="3-D image layer (z, y, x)")
            self.region = ComboBox(
                label="region",
                choices=self._region_choices,
                tooltip="the visible box, the whole image, or the box of the selected shape of a shapes layer",
            )
            self.planes = SpinBox(
                value=DEFAULT_PLANES, min=1, max=100_000, label="z planes", tooltip="for the view or a flat shape"
            )
            self.voxel_size = LineEdit(
                value="", label="voxel size (nm)", tooltip="z y x; empty: the image layer's scale"
            )
            self.threshold = FloatSpinBox(value=0.5, min=0.0, max=1.0, step=0.05, label="mask threshold")
            self.block = SpinBox(value=DEFAULT_BLOCK, min=1, max=100_000, label="block (voxels)")
            self.tile = SpinBox(
                value=0, min=0, max=1024, label="tile (voxels)", tooltip="network input edge; 0 = auto (fits memory)"
            )
            self.run_button = PushButton(text="Predict")
            self.cancel_button = PushButton(text="Cancel", enabled=False)
            self.progress = ProgressBar(value=0, min=0, max=1, label="blocks")
            self.status = Label(value="")
            self.extend(
                [
                    self.model,
                    self.checkpoint,
                    self.image,
                    self.region,
                    self.planes,
                    self.voxel_size,
                    self.threshold,
                    self.block,
                    self.tile,
                    self.run_button,
                    self.cancel_button,
                    self.progress,
                    self.status,
                ]
            )
            self.run_button.changed.connect(self.run)
            self.cancel_button.changed.connect(self.cancel)
            for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
                ev.connect(self._layers_changed)
            self._layers_changed()

        # -- choices
        def _image_choices(self, _widget: Any = None) -> list[str]:
            return [lay.name for lay in self.viewer.layers if isinstance(lay, Image)]

        def _region_choices(self, _widget: Any = None) -> list[str]:
            return [VIEW, WHOLE, *(lay.name for lay in self.viewer.layers if isinstance(lay, Shapes))]

        def _layers_changed(self, _event: Any = None) -> None:
            self.image.reset_choices()
            self.region.reset_choices()

        # -- the request
        def model_source(self) -> str:
            if self.model.value == CHECKPOINT:
                path = self.checkpoint.value
                if not isinstance(path, Path) or not path.is_file():
                    raise InputError(f"choose a checkpoint file (.pt); {path} is not a file")
                return str(path)
            return str(self.model.value)

        def roi(self, shape: Sequence[int], scale: Vec3, translate: Vec3) -> Roi:
            """The region (voxels of the image layer) chosen in ``region``."""
            choice = self.region.value
            planes = int(self.planes.value)
            if choice == WHOLE:
                return Roi((0, 0, 0), shape)
            if choice == VIEW:
                dims, cam = self.viewer.dims, self.viewer.camera
                lead = dims.ndim - 3
                if lead < 0:
                    raise InputError("the viewer shows fewer than three dimensions; choose a 3-D image")
                displayed = [d - lead for d in dims.displayed if d >= lead]
                point = [float(p) for p in dims.point][-3:]
                center = list(point)
                for d, c in zip(displayed, [float(c) for c in cam.center][-len(displayed) :]):
                    center[d] = c
                return view_roi(
                    center=center,
                    point=point,
                    zoom=float(cam.zoom),
                    canvas_size=tuple(self.viewer.canvas.size),
                    displayed=displayed,
                    shape=shape,
                    scale=scale,
                    translate=translate,
                    planes=planes,
                )
            layer = self.viewer.layers[choice]
            if len(layer.data) == 0:
                raise InputError(f"shapes layer {choice!r} has no shapes; draw a rectangle first")
            sel = sorted(layer.selected_data)
            verts = layer.data[sel[-1] if sel else -1]
            world = np.asarray([layer.data_to_world(v) for v in verts])
            return shape_roi(world, shape, scale, translate, planes)

        def request(self) -> PredictRequest:
            """The :class:`PredictRequest` of the current settings (InputError when incomplete)."""
            if self.image.value is None:
                raise InputError("no image layer: open a 3-D image first")
            layer = self.viewer.layers[self.image.value]
            data, shape, scale, translate = layer_geometry(layer)
            return PredictRequest(
                self.model_source(),
                data,
                scale,
                translate,
                self.roi(shape, scale, translate),
                threshold=float(self.threshold.value),
                block=int(self.block.value),
                tile=int(self.tile.value),
                voxel_size=parse_voxel_size(str(self.voxel_size.value)),
            )

        # -- run
        def run(self, _value: Any = None) -> Any:
            """Start the prediction in a worker thread; returns the worker (None on bad input)."""
            if self.worker is not None:
                show_error("a prediction is already running")
                return None
            try:
                req = self.request()
            except (OrganetError, ValueError) as e:
                show_error(str(e))
                self.status.value = f"error: {e}"
                return None
            name = str(self.image.value)
            self._cancel.clear()
            self.progress.value, self.progress.max = 0, 1
            self.status.value = f"predicting {req.roi} ({req.roi.size / 1e6:.2f} M voxels) ..."
            self.run_button.enabled, self.cancel_button.enabled = False, True
            worker = thread_worker(predict_blocks, ignore_errors=True)(req, self._cancel)  # errors: _failed
            worker.yielded.connect(self._advance)
            worker.returned.connect(lambda res: self._done(res, name))
            worker.errored.connect(self._failed)
            worker.finished.connect(self._finished)
            self.worker = worker
            worker.start()
            return worker

        def cancel(self, _value: Any = None) -> None:
            """Stop before the next block (the blocks done are dropped)."""
            self._cancel.set()
            self.status.value = "cancelling ..."

        def _advance(self, step: tuple[int, int]) -> None:
            done, total = step
            self.progress.max = max(total, 1)
            self.progress.value = done

        def _done(self, res: LayerPrediction, name: str) -> None:
            self.last = res
            if not res.complete:
                self.status.value = f"cancelled after {res.done} of {res.blocks} blocks"
                return
            self._advance((res.done, res.blocks))
            kw = {"scale": res.scale, "translate": res.translate}
            for suffix, data, kind in (("probability", res.probability, "image"), ("mask", res.mask, "labels")):
                lname = f"{name} {suffix}"
                if lname in self.viewer.layers:
                    self.viewer.layers.remove(lname)
                if kind == "image":
                    self.viewer.add_image(
                        data, name=lname, colormap="inferno", blending="additive", contrast_limits=(0.0, 1.0), **kw
                    )
                else:
                    self.viewer.add_labels(data, name=lname, opacity=0.5, **kw)
            frac = float(res.mask.mean()) if res.mask.size else 0.0
            self.status.value = (
                f"done in {res.seconds:.1f} s: {res.blocks} blocks, {100 * frac:.1f} % foreground in {res.roi}"
            )

        def _failed(self, e: BaseException) -> None:
            self.status.value = f"failed: {e}"
            show_error(str(e))

        def _finished(self) -> None:
            self.worker = None
            self.run_button.enabled, self.cancel_button.enabled = True, False

    return PredictWidget


_widget_class = lazy_widget_class(_define_widget_class)

__all__ = [
    "CHECKPOINT",
    "VIEW",
    "WHOLE",
    "LayerPrediction",
    "PredictRequest",
    "layer_geometry",
    "model_names",
    "parse_voxel_size",
    "predict_blocks",
    "predictor_for",
    "shape_roi",
    "view_roi",
    "world_roi",
]
