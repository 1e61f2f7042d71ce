"""napari reader (npe2 ``readers`` contribution): organet outputs as layers in nm.

Opens, lazily (dask arrays over the zarr chunks, every pyramid level ``s0, s1, ...`` as one
multiscale layer), with ``scale`` = voxel size and ``translate`` = offset of level 0 (nm,
axis order z, y, x) taken from the OME-Zarr metadata (:func:`organet.volumes.ome_zarr.ome_geometry`):

* ``OUT.zarr`` of ``organet predict``: ``probability`` as an image layer and its NGFF label
  image ``probability/labels/mask`` as a labels layer (so does ``OUT.zarr/probability``; the
  ``OUT.zarr/mask`` of earlier versions too); the label images listed by the ``labels`` group of
  any image are labels layers;
* ``DIR/labels.zarr`` of ``organet instances`` and masks saved by the annotation widget: labels;
* ``uncertainty.zarr`` of ``organet suggest`` and any other OME-Zarr image: an image layer.

An image is a labels layer when its NGFF metadata has ``image-label`` (whose ``colors`` become
the layer's colours) or organet's metadata says ``kind`` is ``mask``, ``instances`` or
``labels``. Nothing here imports napari: the functions return napari ``LayerData`` tuples
``(data, kwargs, layer_type)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from organet.errors import VolumeError
from organet.volumes.ome_zarr import (
    LABELS_GROUP,
    ORGANET_KEY,
    find_multiscales,
    image_label,
    label_colours,
    label_names,
    ome_geometry,
)

LayerData = tuple[Any, dict[str, Any], str]
LABEL_KINDS = ("mask", "instances", "labels")
"""organet ``kind`` values read as a labels layer."""


def _attrs(group: Any) -> dict[str, Any]:
    return dict(group.attrs)


def _organet(attrs: Mapping[str, Any]) -> dict[str, Any]:
    value = attrs.get(ORGANET_KEY)
    return dict(value) if isinstance(value, Mapping) else {}


def _is_label_image(attrs: Mapping[str, Any]) -> bool:
    return image_label(attrs) is not None or _organet(attrs).get("kind") in LABEL_KINDS


def _label_colormap(label: Mapping[str, Any] | None) -> dict[int | None, list[float]] | None:
    """napari's direct label colormap (label value -> RGBA 0..1) from NGFF ``colors``; values
    without a colour are transparent. None when there are no colours."""
    colours = label_colours(label)
    if not colours:
        return None
    cmap: dict[int | None, list[float]] = {None: [0.0, 0.0, 0.0, 0.0]}
    cmap.update({v: [x / 255.0 for x in rgba] for v, rgba in colours.items()})
    return cmap


def _ngff_label_names(group: Any) -> list[str]:
    """Names listed by an NGFF ``labels`` group."""
    return label_names(_attrs(group))


def image_layer(group: Any, where: str, name: str) -> LayerData:
    """One OME-Zarr image group as a napari layer: every dataset of its first multiscale as
    a lazy (dask) level, ``scale``/``translate`` (nm, z, y, x) of level 0, layer type from
    the metadata (see the module docstring)."""
    import dask.array as da

    attrs = _attrs(group)
    ms = find_multiscales(attrs)
    if ms is None:
        raise VolumeError(f"{where} has no OME-Zarr multiscale metadata")
    levels = []
    scale = translate = None
    for i, ds in enumerate(ms[0]["datasets"]):
        try:
            arr = group[ds["path"]]
        except KeyError:
            raise VolumeError(f"{where}: OME-Zarr dataset {ds['path']!r} is missing") from None
        n_lead, vs, off = ome_geometry(ms[0], ds, arr.shape, f"{where}/{ds['path']}")
        a = da.from_zarr(arr)
        a = a[(0,) * n_lead] if n_lead else a
        if a.ndim == 2:
            a = a[None]
        if i == 0:
            scale, translate = vs, off
        levels.append(a)
    meta = _organet(attrs)
    labels = _is_label_image(attrs)
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": scale,
        "translate": translate,
        "multiscale": len(levels) > 1,
        "metadata": {"path": where, ORGANET_KEY: meta},
    }
    data: Any = levels if len(levels) > 1 else levels[0]
    if labels:
        if not np.issubdtype(levels[0].dtype, np.integer):
            raise VolumeError(f"{where} is marked as labels but has dtype {levels[0].dtype}; expected integers")
        cmap = _label_colormap(image_label(attrs))
        return data, {**kwargs, "opacity": 0.5, **({"colormap": cmap} if cmap else {})}, "labels"
    dtype = np.dtype(levels[0].dtype)
    if meta.get("kind") in ("probability", "uncertainty"):
        top = 255.0 if dtype == np.uint8 else 1.0
        kwargs |= {"colormap": "magma" if meta["kind"] == "uncertainty" else "inferno", "blending": "additive"}
        kwargs["contrast_limits"] = (0.0, top)
    elif dtype == np.uint8:
        kwargs["contrast_limits"] = (0.0, 255.0)  # napari would read the data to find them
    return data, kwargs, "image"


def _listed_labels(labels: Any, where: str, stem: str) -> list[tuple[Any, str, str]]:
    """The image groups an NGFF ``labels`` group lists, as (group, location, layer name)."""
    import zarr

    found = []
    for lab in _ngff_label_names(labels):
        sub = labels.get(lab, None)
        if isinstance(sub, zarr.Group) and find_multiscales(_attrs(sub)) is not None:
            found.append((sub, f"{where}/{lab}", f"{stem} {lab}"))
    return found


def _groups(path: Path) -> list[tuple[Any, str, str]]:
    """The OME-Zarr image groups of ``path`` as (group, location, layer name): the root
    when it is an image, else its image children; each followed by the label images its
    NGFF ``labels`` group lists (and those of a ``labels`` group at the root)."""
    import zarr

    root = zarr.open_group(str(path), mode="r")
    stem = path.name
    images: list[tuple[Any, str, str]] = []
    found: list[tuple[Any, str, str]] = []
    if find_multiscales(_attrs(root)) is not None:
        images.append((root, str(path), stem))
    else:
        for key in sorted(root.group_keys()):
            child = root[key]
            if not isinstance(child, zarr.Group):
                continue
            if find_multiscales(_attrs(child)) is not None:
                images.append((child, f"{path}/{key}", f"{stem} {key}"))
            else:
                found += _listed_labels(child, f"{path}/{key}", stem)
    for group, where, name in images:
        found.append((group, where, name))
        labels = group.get(LABELS_GROUP, None)
        if isinstance(labels, zarr.Group):
            found += _listed_labels(labels, f"{where}/{LABELS_GROUP}", stem)
    return found


def read_layers(path: str | os.PathLike[str]) -> list[LayerData]:
    """Every image of the organet output (or OME-Zarr image) at ``path`` as napari
    ``LayerData``, images first and labels last (drawn on top).

    Raises :class:`~organet.errors.VolumeError` when ``path`` holds no OME-Zarr image.
    """
    p = Path(path)
    groups = _groups(p)
    if not groups:
        raise VolumeError(f"{p} holds no OME-Zarr image (expected OUT.zarr of organet predict or an OME-Zarr image)")
    layers = [image_layer(g, where, name) for g, where, name in groups]
    return [lay for lay in layers if lay[2] == "image"] + [lay for lay in layers if lay[2] == "labels"]


def _one_path(path: str | Sequence[str]) -> str | None:
    if isinstance(path, (list, tuple)):
        return str(path[0]) if len(path) == 1 else None
    return str(path)


def get_reader(path: str | Sequence[str]) -> Callable[[str | Sequence[str]], list[LayerData]] | None:
    """npe2 reader hook: :func:`napari_read` when ``path`` is one zarr folder holding an
    OME-Zarr image or images, else None (another reader may take it)."""
    p = _one_path(path)
    if p is None or not Path(p).is_dir():
        return None
    try:
        if not _groups(Path(p)):
            return None
    except Exception:  # noqa: BLE001 - not ours to read: napari tries the next reader
        return None
    return napari_read


def napari_read(path: str | Sequence[str]) -> list[LayerData]:
    """The reader :func:`get_reader` returns: :func:`read_layers` of the one path."""
    p = _one_path(path)
    if p is None:
        raise VolumeError(f"organet opens one output at a time, got {list(path)}")
    return read_layers(p)


__all__ = ["LABEL_KINDS", "LayerData", "get_reader", "image_layer", "napari_read", "read_layers"]
