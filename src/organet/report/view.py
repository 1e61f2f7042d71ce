"""Neuroglancer views of organet outputs (``organet view``): the raw, probability and label
images of an output served lazily from this machine, for a browser instead of napari.

:func:`view_layers` finds the images of an output and what each is (no neuroglancer
needed); :func:`viewer_state` turns them into a neuroglancer state (layers in nm, axes
z, y, x); :func:`start_viewer` serves that state on a local port and returns the link.

What an output holds (:func:`view_layers`):

* ``OUT.zarr`` of ``organet predict``: ``probability`` (an image layer) and its NGFF label
  images ``probability/labels/NAME`` (segmentation layers; outputs written before that
  layout keep the mask in ``OUT.zarr/mask``);
* ``DIR`` of ``organet instances``: ``DIR/labels.zarr`` (a segmentation layer);
* any other OME-Zarr image (``uncertainty.zarr`` of ``organet suggest``, ...), or any volume
  :func:`organet.volumes.open_volume` opens (zarr, N5, HDF5, TIFF, a URL): one layer.

An image is a segmentation layer when its NGFF metadata has ``image-label``, organet's
metadata says ``kind`` is ``mask``, ``instances`` or ``labels``, or, without a ``kind``,
its dtype is an integer wider than 8 bits. Reads happen when the browser asks for a chunk:
only the region shown is read, from the stored pyramid level that fits (``s0, s1, ...``;
finer levels are reduced on the fly, by the mean for images and by striding for labels).
Meshes are not served (they would need the whole volume in memory).
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from organet.annotate.napari_reader import LABEL_KINDS
from organet.blockwise.output import read_run
from organet.errors import InputError, VolumeError
from organet.volumes import Volume, open_volume
from organet.volumes.geometry import Shape3, fmt_vec
from organet.volumes.ome_zarr import LABELS_GROUP, find_multiscales, image_label, label_colours, label_names
from organet.volumes.remote import is_url

from .prediction import _find

NEUROGLANCER_MISSING = "neuroglancer is not installed: pip install 'organet[neuroglancer]'"
AXES = ("z", "y", "x")
LayerKind = Literal["image", "segmentation"]
INSTANCES_LABELS = "labels.zarr"
"""The labels image inside an ``organet instances`` folder."""
PROBABILITY_COLOURS = {"probability": "#ff00ff", "uncertainty": "#00c8ff"}
"""Colour of a probability-like image (organet ``kind``) in its shader."""
MAX_DOWNSAMPLING = 64
"""Voxels of the finest stored level that one shown voxel may average (neuroglancer's
default); with a pyramid, up to this many voxels of its coarsest level."""


@dataclass(frozen=True)
class ViewLayer:
    """One layer of a view.

    Attributes
    ----------
    name
        Layer name (unique within a view).
    kind
        ``"image"`` or ``"segmentation"``.
    levels
        The pyramid, finest (``s0``) first; the levels after the first are those whose
        shape is ``ceil(s0 shape / factor)`` for an integer factor per axis.
    factors
        Per level, its factor (z, y, x) to ``s0``, in voxels; ``(1, 1, 1)`` first.
    role
        What the layer shows: ``raw``, ``probability``, ``uncertainty``, ``mask``,
        ``instances``, ``labels``, ``image``.
    path
        Where the image was read from.
    shader
        Neuroglancer shader (GLSL) of an image layer; None for neuroglancer's default.
    colours
        Segmentation colours, label value -> ``#rrggbb`` (from NGFF ``image-label``).
    """

    name: str
    kind: LayerKind
    levels: tuple[Volume, ...]
    factors: tuple[Shape3, ...]
    role: str
    path: str
    shader: str | None = None
    colours: dict[int, str] = field(default_factory=dict)

    @property
    def volume(self) -> Volume:
        """Level 0: voxel size and offset in nm (z, y, x) of the layer."""
        return self.levels[0]

    def describe(self) -> str:
        """One line: name, kind, dtype, shape (voxels) and voxel size (nm), levels."""
        v = self.volume
        shape = "x".join(map(str, v.shape))
        more = f", {len(self.levels)} levels" if len(self.levels) > 1 else ""
        return f"{self.name} ({self.kind}, {v.dtype}, {shape} voxels of {fmt_vec(v.voxel_size)} nm{more})"


# -- what an output holds ----------------------------------------------------------------
def _attrs(path: Path) -> dict[str, Any] | None:
    """The attributes of the zarr group at ``path``; None when there is none."""
    import zarr

    if not ((path / "zarr.json").is_file() or (path / ".zgroup").is_file()):
        return None
    try:
        return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # noqa: BLE001 - an array or something not zarr: no group here
        return None


def _image_groups(path: Path) -> list[tuple[Path, str]]:
    """The OME-Zarr images in ``path`` as (group, default layer name): ``path`` itself when it
    is an image, else its child images; after each image, the label images its ``labels``
    group lists."""
    attrs = _attrs(path)
    if attrs is None:
        return []
    if find_multiscales(attrs) is not None:
        images = [(path, path.stem)]
    else:
        images = [(c, c.name) for c in sorted(path.iterdir()) if c.is_dir() and find_multiscales(_attrs(c) or {})]
    found: list[tuple[Path, str]] = []
    for image, name in images:
        found.append((image, name))
        for lab in label_names(_attrs(image / LABELS_GROUP) or {}):
            if find_multiscales(_attrs(image / LABELS_GROUP / lab) or {}) is not None:
                found.append((image / LABELS_GROUP / lab, lab))
    return found


def _levels(group: Path, s0: Volume) -> tuple[tuple[Volume, ...], tuple[Shape3, ...]]:
    """The pyramid levels of the OME-Zarr image ``group`` usable with ``s0`` and their factors."""
    ms = find_multiscales(_attrs(group) or {})
    levels, factors = [s0], [(1, 1, 1)]
    for ds in ms[0]["datasets"][1:] if ms else []:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                level = open_volume(str(group / str(ds.get("path", ""))))
            except VolumeError:
                continue
        ratio = [a / b for a, b in zip(level.voxel_size, s0.voxel_size)]
        f = tuple(round(r) for r in ratio)
        exact = all(n >= 1 and abs(r - n) <= 1e-3 * n for r, n in zip(ratio, f))
        if exact and level.shape == tuple(math.ceil(s / n) for s, n in zip(s0.shape, f)):
            levels.append(level)
            factors.append((f[0], f[1], f[2]))
    return tuple(levels), tuple(factors)


def _is_labels(attrs: dict[str, Any], meta: dict[str, Any], dtype: np.dtype) -> bool:
    if image_label(attrs) is not None:
        return True
    if "kind" in meta:
        return meta["kind"] in LABEL_KINDS
    return dtype.kind in "ui" and dtype.itemsize > 1


def _label_colours(attrs: dict[str, Any]) -> dict[int, str]:
    """label value -> ``#rrggbb`` from NGFF ``image-label.colors`` (transparent ones left out)."""
    return {
        v: "#{:02x}{:02x}{:02x}".format(*rgba[:3])
        for v, rgba in label_colours(image_label(attrs)).items()
        if v != 0 and rgba[3] > 0
    }


def probability_shader(top: float, colour: str) -> str:
    """Shader of a probability image stored as ``0..top`` (255 for organet's uint8, 1 for
    floats): ``colour`` with opacity = probability; the range is a control in the layer panel."""
    return (
        f"#uicontrol invlerp p(range=[0, {top:g}], window=[0, {top:g}])\n"
        f'#uicontrol vec3 colour color(default="{colour}")\n'
        "void main() {\n  float v = clamp(p(), 0.0, 1.0);\n  emitRGBA(vec4(colour, v));\n}\n"
    )


def grey_shader(low: float, high: float) -> str:
    """Grey-value shader with contrast range ``[low, high]`` (data units)."""
    return (
        f"#uicontrol invlerp normalized(range=[{low:g}, {high:g}])\n"
        "void main() {\n  emitGrayscale(normalized());\n}\n"
    )


def _grey_range(layer_levels: tuple[Volume, ...]) -> tuple[float, float]:
    """Contrast range of an intensity image: the full range of uint8, else the 0.5 and
    99.5 percentiles of the middle z plane of the coarsest level (at most its central
    1024 x 1024 voxels are read)."""
    v = layer_levels[-1]
    if v.dtype == np.uint8:
        return 0.0, 255.0
    y, x = (slice(max(0, n // 2 - 512), n // 2 + 512) for n in v.shape[1:])
    plane = v[v.shape[0] // 2, y, x]
    lo, hi = (float(q) for q in np.percentile(plane, [0.5, 99.5]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _layer(spec: str, group: Path | None, name: str, role: str | None = None) -> ViewLayer:
    """The layer of the volume ``spec`` (``group``: its OME-Zarr image group, for the pyramid)."""
    s0 = open_volume(spec)
    attrs = (_attrs(group) if group is not None else None) or {}
    meta = dict(s0.attrs)
    levels, factors = _levels(group, s0) if group is not None else ((s0,), ((1, 1, 1),))
    if role != "raw" and _is_labels(attrs, meta, s0.dtype):
        if s0.dtype.kind != "u":
            raise VolumeError(f"{spec} holds labels of dtype {s0.dtype}; expected unsigned integers")
        role = str(meta.get("kind") or "labels")
        return ViewLayer(name, "segmentation", levels, factors, role, spec, colours=_label_colours(attrs))
    kind = str(meta.get("kind", ""))
    if role != "raw" and kind in PROBABILITY_COLOURS:
        top = float(meta.get("scale") or (255 if s0.dtype == np.uint8 else 1))
        return ViewLayer(name, "image", levels, factors, kind, spec, probability_shader(top, PROBABILITY_COLOURS[kind]))
    return ViewLayer(name, "image", levels, factors, role or "image", spec, grey_shader(*_grey_range(levels)))


def _recorded_raw(output: Path) -> str | None:
    """The raw volume the run record of ``output`` names (``input`` of organet predict, ``raw``
    of organet instances), when it is found from here or beside the output; else None."""
    run = read_run(output)
    if not run:
        return None
    spec = run.get("input") if "predictor" in run else run.get("raw")
    return _find(spec, output.parent) if isinstance(spec, str) else None


def view_layers(
    output: str | os.PathLike[str], raw: str | None = None, *, recorded_raw: bool = True
) -> list[ViewLayer]:
    """The layers showing ``output``: raw first, then images, then segmentations (on top).

    Parameters
    ----------
    output
        ``OUT.zarr`` of organet predict, a folder of organet instances, an OME-Zarr image or
        any volume :func:`~organet.volumes.open_volume` opens (see the module docstring).
    raw
        The raw EM volume (any path or URL :func:`~organet.volumes.open_volume` accepts),
        shown below; it may cover more than the output: layers are placed by their offsets (nm).
    recorded_raw
        Without ``raw``: show the raw volume the output's run record names, when it is found.

    Raises
    ------
    InputError
        ``output`` does not exist or holds nothing to show (a :class:`VolumeError` for an
        unreadable volume).
    """
    text = os.fspath(output)
    layers: list[ViewLayer] = []
    path = Path(text).expanduser()
    if is_url(text):
        layers.append(_layer(text, None, Path(text.rstrip("/")).stem or "image"))
    else:
        if not path.exists():
            raise InputError(
                f"no such file or directory: {path}; expected OUT.zarr of organet predict, a folder of "
                "organet instances or a volume"
            )
        groups = _image_groups(path)
        if not groups and (path / INSTANCES_LABELS).is_dir():
            found = _image_groups(path / INSTANCES_LABELS)
            groups = [(g, "instances" if i == 0 else n) for i, (g, n) in enumerate(found)]
        if groups:
            layers += [_layer(str(g), g, n) for g, n in groups]
        else:
            try:
                layers.append(_layer(text, _image_group(text), path.stem))
            except VolumeError as e:
                raise InputError(
                    f"{path} is not an organet output ({e}); expected OUT.zarr of organet predict, a folder "
                    "of organet instances (with labels.zarr) or a volume"
                ) from None
    raw_spec = raw if raw is not None else (_recorded_raw(path) if recorded_raw and not is_url(text) else None)
    if raw_spec is not None:
        layers.insert(0, _layer(raw_spec, _image_group(raw_spec), "raw", role="raw"))
    seen: dict[str, int] = {}
    named = []
    for lay in layers:
        n = seen[lay.name] = seen.get(lay.name, 0) + 1
        named.append(lay if n == 1 else replace(lay, name=f"{lay.name} {n}"))
    return [lay for lay in named if lay.kind == "image"] + [lay for lay in named if lay.kind == "segmentation"]


def _image_group(spec: str) -> Path | None:
    """The local OME-Zarr image group whose pyramid starts at the volume ``spec`` (the group
    itself or its first array ``s0``); None for other volumes, other levels and URLs."""
    if is_url(spec):
        return None
    path = Path(spec).expanduser()
    for group in (path, path.parent):
        ms = find_multiscales(_attrs(group) or {})
        if ms and (group == path or ms[0]["datasets"][0].get("path") == path.name):
            return group
    return None


# -- neuroglancer ----------------------------------------------------------------------
def require_neuroglancer() -> Any:
    """The ``neuroglancer`` module; :class:`InputError` naming the extra when it is missing."""
    try:
        import neuroglancer
    except ImportError:
        raise InputError(NEUROGLANCER_MISSING) from None
    return neuroglancer


_PYRAMID: Any = None
_PYRAMID_LOCK = threading.Lock()


def pyramid_volume_class() -> Any:
    """``PyramidVolume``: a neuroglancer ``LocalVolume`` over a :class:`ViewLayer` that answers
    each chunk request from the coarsest stored level that divides the requested
    downsampling (the rest reduced on the fly) and serves no meshes."""
    global _PYRAMID
    with _PYRAMID_LOCK:
        if _PYRAMID is not None:
            return _PYRAMID
        require_neuroglancer()
        from neuroglancer import LocalVolume
        from neuroglancer.local_volume import MeshesNotSupportedForVolume

        class PyramidVolume(LocalVolume):
            def __init__(self, layer: ViewLayer, dimensions: Any, voxel_offset: Any) -> None:
                most = max(int(np.prod(f)) for f in layer.factors) * MAX_DOWNSAMPLING
                kw = {"volume_type": layer.kind, "max_downsampling": most}
                super().__init__(layer.volume, dimensions=dimensions, voxel_offset=voxel_offset, **kw)
                self.layer = layer
                self.stored = [
                    (np.array(f, dtype=np.int64), LocalVolume(v, dimensions=dimensions, **kw))
                    for f, v in zip(layer.factors, layer.levels)
                ]

            def get_encoded_subvolume(self, data_format: str, start: Any, end: Any, scale_key: str) -> Any:
                factor = np.array(scale_key.split(","), dtype=np.int64)
                if len(factor) != 3 or np.any(factor < 1) or np.prod(factor) > self.max_downsampling:
                    raise ValueError("Invalid downsampling factor.")
                f, level = max(
                    ((f, lv) for f, lv in self.stored if not np.any(factor % f)), key=lambda t: int(np.prod(t[0]))
                )
                rest = ",".join(str(int(r)) for r in factor // f)
                return level.get_encoded_subvolume(data_format=data_format, start=start, end=end, scale_key=rest)

            def get_object_mesh(self, object_id: int) -> Any:
                raise MeshesNotSupportedForVolume()

        _PYRAMID = PyramidVolume
        return _PYRAMID


def _source(layer: ViewLayer) -> Any:
    """The layer's data source: a ``PyramidVolume`` in a coordinate space of axes z, y, x in
    nm with the voxel size as scales, placed at its offset (whole voxels as the volume's
    voxel offset, otherwise a translation of the source transform)."""
    ng = require_neuroglancer()
    v = layer.volume
    dims = ng.CoordinateSpace(names=list(AXES), units="nm", scales=list(v.voxel_size))
    shift = [o / s for o, s in zip(v.offset, v.voxel_size)]
    whole = all(abs(t - round(t)) < 1e-6 for t in shift)
    vol = pyramid_volume_class()(layer, dims, [round(t) for t in shift] if whole else [0, 0, 0])
    kw: dict[str, Any] = {"url": vol}
    if layer.kind == "segmentation":
        kw["subsources"] = {"meshes": False}  # meshes would need the whole volume in memory
    if not whole:
        matrix = [[1.0 if i == j else 0.0 for j in range(3)] + [shift[i]] for i in range(3)]
        kw["transform"] = ng.CoordinateSpaceTransform(output_dimensions=dims, matrix=matrix)
    return ng.LayerDataSource(**kw)


def viewer_state(layers: list[ViewLayer]) -> Any:
    """A neuroglancer ``ViewerState`` of ``layers``: global axes z, y, x in nm at the finest
    voxel size, the cross-hair at the centre of the first non-raw layer, four panels.

    Needs the neuroglancer extra (:class:`InputError` otherwise); starts no server."""
    ng = require_neuroglancer()
    if not layers:
        raise InputError("nothing to show: no layers")
    finest = min((lay.volume.voxel_size for lay in layers), key=lambda vs: float(np.prod(vs)))
    state = ng.ViewerState()
    state.dimensions = ng.CoordinateSpace(names=list(AXES), units="nm", scales=list(finest))
    for lay in layers:
        source = _source(lay)
        if lay.kind == "segmentation":
            state.layers[lay.name] = ng.SegmentationLayer(source=source, segment_colors=lay.colours or None)
        else:
            opacity = 1.0 if lay.role in ("raw", "image") else 0.8
            state.layers[lay.name] = ng.ImageLayer(source=source, shader=lay.shader, opacity=opacity)
    focus = next((lay for lay in layers if lay.role != "raw"), layers[0]).volume
    begin, end = focus.bounds_nm
    state.position = [(b + e) / 2 / s for b, e, s in zip(begin, end, finest)]
    state.layout = "4panel"
    return state


@dataclass
class ViewSession:
    """A served view: ``url`` opens it (the state lives on the server, which runs in a
    background thread of this process until :meth:`stop`)."""

    url: str
    viewer: Any
    layers: list[ViewLayer]

    def stop(self) -> None:
        """Stop the server; the link stops working."""
        import neuroglancer

        neuroglancer.stop()


def start_viewer(layers: list[ViewLayer], *, bind_address: str = "127.0.0.1", port: int = 0) -> ViewSession:
    """Serve ``layers`` on ``bind_address:port`` (0: a free port) and return the link.

    ``127.0.0.1`` serves this machine only; ``0.0.0.0`` every network interface (the link
    then names this host). One server per process: a second call replaces the first's.

    Raises
    ------
    InputError
        The neuroglancer extra is missing, or the address/port cannot be used.
    """
    ng = require_neuroglancer()
    if not 0 <= int(port) <= 65535:
        raise InputError(f"--port {port}: expected 0 (a free port) to 65535")
    state = viewer_state(layers)
    ng.stop()
    ng.set_server_bind_address(bind_address, int(port))
    try:
        viewer = ng.Viewer()
    except OSError as e:
        raise InputError(
            f"cannot serve on {bind_address}:{port}: {e.strerror or e}; pick another --port or --bind"
        ) from None
    viewer.set_state(state)
    return ViewSession(viewer.get_viewer_url(), viewer, layers)


__all__ = [
    "NEUROGLANCER_MISSING",
    "ViewLayer",
    "ViewSession",
    "grey_shader",
    "probability_shader",
    "pyramid_volume_class",
    "require_neuroglancer",
    "start_viewer",
    "view_layers",
    "viewer_state",
]
