"""OME-Zarr metadata (0.4 / 0.5), NGFF label images, and the atomic OME-Zarr 0.5 writer.

A label image (NGFF ``image-label``) lives in the ``labels`` group of the image it
annotates, ``IMAGE/labels/NAME``, listed by ``IMAGE/labels``'s ``labels`` attribute;
``organet predict`` writes its mask there (:data:`PREDICTION_MASK`).
"""

from __future__ import annotations

import json
import os
import secrets
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from organet.errors import VolumeError

from .atomic import remove_path, replace_path
from .geometry import Vec3, as_int3, as_vec3, unit_to_nm
from .remote import check_local_output
from .volume import Unavailable, Volume

OME_VERSION = "0.5"
ORGANET_KEY = "organet"  # group attribute holding organet's own metadata (Volume.attrs)
LABELS_GROUP = "labels"  # NGFF: the group of an image's label images
PREDICTION_IMAGE, PREDICTION_LABEL = "probability", "mask"
PREDICTION_MASK = f"{PREDICTION_IMAGE}/{LABELS_GROUP}/{PREDICTION_LABEL}"
"""Where ``organet predict`` writes its images inside ``OUT.zarr``: the probability image and
the binary mask as its NGFF label image ``mask``."""
LEGACY_PREDICTION_MASK = "mask"  # the mask of outputs written before the NGFF label layout
MASK_RGBA = (255, 200, 0, 255)
"""Display colour (RGBA, 0..255) of label 1 in organet's binary masks."""


def mask_path(output: str | os.PathLike[str]) -> Path:
    """The mask image group ``organet predict`` writes into ``output`` (``OUT.zarr``)."""
    return Path(output).expanduser() / PREDICTION_MASK


def find_mask(output: str | os.PathLike[str]) -> Path | None:
    """The mask image group of an existing ``organet predict`` output: :func:`mask_path`, else
    the ``OUT.zarr/mask`` of outputs written before the NGFF label layout; None when neither is."""
    for path in (mask_path(output), Path(output).expanduser() / LEGACY_PREDICTION_MASK):
        if (path / "zarr.json").is_file():
            return path
    return None


def image_label_attrs(
    *,
    colors: dict[int, Sequence[int]] | None = None,
    properties: dict[int, dict[str, Any]] | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """The NGFF 0.5 ``image-label`` object of a label image.

    ``colors``: label value -> RGBA (four integers 0..255); ``properties``: label value ->
    JSON-serialisable key/values; ``source``: path of the image the labels belong to,
    relative to the label image group (e.g. ``"../../"``) or a URL. Each is optional.
    """
    meta: dict[str, Any] = {"version": OME_VERSION}
    if colors:
        meta["colors"] = [{"label-value": int(k), "rgba": [int(c) for c in v]} for k, v in sorted(colors.items())]
    if properties:
        meta["properties"] = [{"label-value": int(k), **dict(v)} for k, v in sorted(properties.items())]
    if source is not None:
        meta["source"] = {"image": source}
    return meta


def create_label_group(image: zarr.Group, name: str) -> zarr.Group:
    """The empty group ``labels/<name>`` of the OME-Zarr image group ``image``, listed in the
    ``labels`` attribute of ``image/labels`` (created if needed); write the label image into
    it with :func:`create_ome_image` and ``image_label=``."""
    labels = image.require_group(LABELS_GROUP)
    old = labels.attrs.get("ome")
    ome: dict[str, Any] = dict(old) if isinstance(old, dict) else {}
    listed = ome.get("labels")
    names = [str(n) for n in listed] if isinstance(listed, list) else []
    labels.attrs["ome"] = {**ome, "version": OME_VERSION, "labels": [*names, name] if name not in names else names}
    return labels.require_group(name)


def label_source(spec: str | os.PathLike[str], label_image: str | os.PathLike[str]) -> str | None:
    """The NGFF ``source`` image of a label image at ``label_image`` derived from the volume
    ``spec``: the OME-Zarr image group holding ``spec`` (the group, or the group of its
    array ``sN``) relative to ``label_image``; a URL as given; None for other data (TIFF,
    N5, HDF5, plain zarr arrays, crops)."""
    from .remote import is_url

    text = os.fspath(spec)
    if is_url(text):
        return text
    path = Path(text).expanduser()
    for group in (path, path.parent):
        try:
            attrs = dict(zarr.open_group(str(group), mode="r").attrs) if (group / "zarr.json").is_file() else {}
        except Exception:  # noqa: BLE001 - not an OME-Zarr group: no source to name
            continue
        ms = find_multiscales(attrs)
        if ms is not None and (group == path or any(d.get("path") == path.name for d in ms[0]["datasets"])):
            return os.path.relpath(group.resolve(), Path(label_image).expanduser().resolve())
    return None


def image_label(attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The NGFF ``image-label`` object of a group's attributes (0.5: under ``ome``; <= 0.4: top
    level); None when the group is no label image."""
    ome = attrs.get("ome")
    label = ome.get("image-label") if isinstance(ome, Mapping) and "image-label" in ome else attrs.get("image-label")
    return dict(label) if isinstance(label, Mapping) else None


def label_colours(label: Mapping[str, Any] | None) -> dict[int, tuple[int, int, int, int]]:
    """Label value -> RGBA (0..255) from an ``image-label``'s ``colors`` (malformed entries skipped)."""
    out: dict[int, tuple[int, int, int, int]] = {}
    colors = (label or {}).get("colors")
    for c in colors if isinstance(colors, list) else []:
        try:
            value, rgba = int(c["label-value"]), [int(v) for v in c["rgba"]]
        except (KeyError, TypeError, ValueError):
            continue
        if len(rgba) == 4:
            out[value] = (rgba[0], rgba[1], rgba[2], rgba[3])
    return out


def label_names(attrs: Mapping[str, Any]) -> list[str]:
    """The label images an NGFF ``labels`` group lists (its ``labels`` attribute, 0.4 or 0.5)."""
    ome = attrs.get("ome")
    names = attrs.get("labels", ome.get("labels") if isinstance(ome, Mapping) else None)
    return [str(n) for n in names] if isinstance(names, list) else []


def find_multiscales(attrs: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The ``multiscales`` list of a group: 0.5 (``attrs["ome"]``) or <= 0.4 (top level)."""
    ome = attrs.get("ome")
    if isinstance(ome, dict) and isinstance(ome.get("multiscales"), list) and ome["multiscales"]:
        return ome["multiscales"]
    ms = attrs.get("multiscales")
    if isinstance(ms, list) and ms:
        return ms
    return None


def ome_geometry(
    multiscale: dict[str, Any], dataset: dict[str, Any], shape: Sequence[int], where: str
) -> tuple[int, Vec3, Vec3]:
    """Geometry of one OME-Zarr dataset.

    Returns (number of leading non-spatial axes to squeeze, voxel size nm, offset nm),
    both (z, y, x); composes dataset- then multiscale-level transforms and converts
    axis units to nm.
    """
    ndim = len(shape)
    axes = multiscale.get("axes")
    if axes is None:  # OME-Zarr <= 0.2: implicitly t, c, z, y, x
        names = ["t", "c", "z", "y", "x"][-ndim:]
        types: list[Any] = [None] * ndim
        units: list[Any] = [None] * ndim
    else:
        if len(axes) != ndim:
            raise VolumeError(f"{where}: {len(axes)} OME axes but the array has {ndim} dimensions")
        names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
        types = [a.get("type") if isinstance(a, dict) else None for a in axes]
        units = [a.get("unit") if isinstance(a, dict) else None for a in axes]
    spatial = [i for i, (n, t) in enumerate(zip(names, types)) if t == "space" or (t is None and n in ("z", "y", "x"))]
    spatial_names = [names[i] for i in spatial]
    if spatial_names not in (["z", "y", "x"], ["y", "x"]) or spatial != list(range(ndim - len(spatial), ndim)):
        raise VolumeError(f"{where}: OME axes {names} are not supported; expected trailing spatial axes z, y, x")
    n_lead = ndim - len(spatial)
    if any(int(s) != 1 for s in shape[:n_lead]):
        raise VolumeError(
            f"{where}: non-spatial axes {names[:n_lead]} have shape {tuple(shape[:n_lead])}; only size 1 is supported"
        )
    scale = np.ones(ndim)
    trans = np.zeros(ndim)
    for t in list(dataset.get("coordinateTransformations") or []) + list(
        multiscale.get("coordinateTransformations") or []
    ):
        kind = t.get("type")
        if kind == "identity":
            continue
        if "path" in t or kind not in ("scale", "translation"):
            raise VolumeError(f"{where}: unsupported OME coordinate transformation {t}")
        values = np.asarray(t[kind], dtype=float)
        if values.shape != (ndim,):
            raise VolumeError(f"{where}: OME {kind} {t[kind]} does not match {ndim} axes")
        if kind == "scale":
            scale, trans = scale * values, trans * values
        else:
            trans = trans + values
    factors = []
    for i in spatial:
        if units[i] is None:
            warnings.warn(f"{where}: OME axis {names[i]!r} has no unit; assuming nanometer", stacklevel=3)
            factors.append(1.0)
        elif (f := unit_to_nm(units[i])) is None:
            raise VolumeError(f"{where}: unsupported unit {units[i]!r} on OME axis {names[i]!r}")
        else:
            factors.append(f)
    vs = [float(scale[i] * f) for i, f in zip(spatial, factors)]
    off = [float(trans[i] * f) for i, f in zip(spatial, factors)]
    if len(vs) == 2:
        vs, off = [1.0, *vs], [0.0, *off]
    return n_lead, as_vec3(vs, f"{where}: OME scale", positive=True), as_vec3(off, f"{where}: OME translation")


def ome_multiscale_attrs(
    name: str, voxel_size: Sequence[float], offset: Sequence[float], levels: int = 1
) -> dict[str, Any]:
    """Group attributes of an OME-Zarr 0.5 image with ``levels`` scales ``s0, s1, ...``.

    Level ``k`` has voxels ``2**k`` times ``voxel_size`` (nm, z, y, x); its translation
    is the centre of its first voxel, ``offset + (2**k - 1) / 2 * voxel_size``
    (:func:`organet.volumes.resample.downsampled_geometry`).
    """
    from .resample import downsampled_geometry

    datasets = []
    for lvl in range(levels):
        vs, off = downsampled_geometry(voxel_size, offset, (2**lvl,) * 3)
        datasets.append(
            {
                "path": f"s{lvl}",
                "coordinateTransformations": [
                    {"type": "scale", "scale": list(vs)},
                    {"type": "translation", "translation": list(off)},
                ],
            }
        )
    axes = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    return {"ome": {"version": OME_VERSION, "multiscales": [{"name": name, "axes": axes, "datasets": datasets}]}}


def create_ome_image(
    group: zarr.Group,
    shape: Sequence[int],
    dtype: Any,
    voxel_size: Sequence[float],
    offset: Sequence[float] = (0.0, 0.0, 0.0),
    chunks: Sequence[int] = (64, 64, 64),
    attrs: dict[str, Any] | None = None,
    *,
    name: str | None = None,
    fill_value: Any = 0,
    level: int = 0,
    overwrite: bool = False,
    image_label: dict[str, Any] | None = None,
) -> zarr.Array:
    """The one way organet creates an OME-Zarr 0.5 array: ``s{level}`` in ``group``.

    ``shape``/``chunks`` in voxels (chunks clipped to the shape), ``voxel_size``/``offset``
    of level 0 in nm, all (z, y, x); blosc-zstd compressed. Level 0 also writes the
    group's multiscale metadata (one level; :func:`set_levels` adds the others),
    ``attrs`` under the ``"organet"`` key and, for a label image, ``image_label``
    (:func:`image_label_attrs`) as its NGFF ``image-label``.
    """
    shape = as_int3(shape, "image shape", minimum=1)
    ch = as_int3(chunks, "chunks", minimum=1)
    ch = (min(ch[0], shape[0]), min(ch[1], shape[1]), min(ch[2], shape[2]))
    dtype = np.dtype(dtype)
    if level == 0:
        ome = ome_multiscale_attrs(name or group.basename or "image", voxel_size, offset)
        if image_label is not None:
            ome["ome"]["image-label"] = dict(image_label)
        group.attrs.update({**ome, ORGANET_KEY: dict(attrs or {})})
    shuffle: Literal["noshuffle", "shuffle"] = "noshuffle" if dtype.itemsize == 1 else "shuffle"  # helps >1 byte
    return group.create_array(
        f"s{level}",
        shape=shape,
        dtype=dtype,
        chunks=ch,
        fill_value=fill_value,
        compressors=[BloscCodec(cname="zstd", clevel=3, shuffle=shuffle)],
        dimension_names=["z", "y", "x"],
        overwrite=overwrite,
    )


def set_levels(group: zarr.Group, levels: int, extra: dict[str, Any] | None = None) -> None:
    """Rewrite ``group``'s multiscale metadata for ``levels`` scales (keeping its name, voxel
    size and offset, and its other NGFF metadata such as ``image-label``) and merge ``extra``
    into its organet attributes."""
    ms = find_multiscales(dict(group.attrs))
    if not ms:
        raise ValueError(f"{group.store_path} has no OME multiscale metadata")  # a defect: we created it
    ds0 = ms[0]["datasets"][0]["coordinateTransformations"]
    vs = next(t["scale"] for t in ds0 if t["type"] == "scale")
    off = next(t["translation"] for t in ds0 if t["type"] == "translation")
    old = group.attrs.get(ORGANET_KEY)
    meta = {**(dict(old) if isinstance(old, dict) else {}), **(extra or {})}
    new = ome_multiscale_attrs(ms[0].get("name", "image"), vs, off, levels)
    old_ome = group.attrs.get("ome")
    if isinstance(old_ome, dict):
        new["ome"] = {**old_ome, **new["ome"]}
    group.attrs.update({**new, ORGANET_KEY: meta})


class OmeZarrWriter:
    """Creates OME-Zarr 0.5 images inside the temporary container of :func:`write_ome_zarr`."""

    def __init__(self, root: zarr.Group, tmp: Path, dst: Path) -> None:
        self.root, self.tmp_path, self.path = root, tmp, dst
        self._images: dict[str | None, Volume] = {}
        self._open = True

    def create_image(
        self,
        name: str | None,
        shape: Sequence[int],
        dtype: Any,
        voxel_size: Sequence[float],
        offset: Sequence[float] = (0.0, 0.0, 0.0),
        chunks: Sequence[int] = (64, 64, 64),
        attrs: dict[str, Any] | None = None,
        fill_value: Any = 0,
    ) -> Volume:
        """Create an image group (``name`` None = the root group) with array ``s0``.

        ``shape``/``chunks`` in voxels, ``voxel_size``/``offset`` in nm, all (z, y, x);
        chunks are clipped to the shape. ``attrs`` (JSON-serialisable) is stored under
        the group attribute ``"organet"`` and returned as ``Volume.attrs`` when opened.
        Returns a writable Volume (read-only after the ``with`` block commits).
        """
        if not self._open:
            raise VolumeError(f"writer for {self.path} is closed")
        if name is not None:
            name = str(name).strip("/")
            if not name or any(p in ("", ".", "..") for p in name.split("/")):
                raise VolumeError(f"invalid image name {name!r}")
        if name in self._images:
            raise VolumeError(f"image {name or '<root>'!r} already exists in {self.path}")
        vs = as_vec3(voxel_size, "voxel size (nm)", positive=True)
        off = as_vec3(offset, "offset (nm)")
        try:
            meta = json.loads(json.dumps(attrs or {}))
        except (TypeError, ValueError) as e:
            raise VolumeError(f"image attrs must be JSON-serialisable: {e}") from None
        group = self.root if name is None else self.root.require_group(name)
        arr = create_ome_image(
            group, shape, dtype, vs, off, chunks, meta, name=name or self.path.stem, fill_value=fill_value
        )
        final = str(self.path) if name is None else f"{self.path}/{name}"
        vol = Volume(arr, vs, off, path=final, attrs=meta, chunks=arr.chunks, writable=True)
        vol._spec, vol._mode = (str(self.tmp_path) if name is None else f"{self.tmp_path}/{name}"), "r+"
        self._images[name] = vol
        return vol

    def _commit(self) -> None:
        """Rebind the created volumes to the committed container (read-only)."""
        self._open = False
        for name, vol in self._images.items():
            vol.data = zarr.open_array(str(self.path), path=f"{name}/s0" if name else "s0", mode="r")
            vol.writable, vol._spec, vol._mode = False, vol.path, "r"

    def _abort(self) -> None:
        self._open = False
        for vol in self._images.values():
            vol.data = Unavailable(vol.shape, vol.dtype, f"writing {vol.path} was aborted; nothing was written")
            vol.writable, vol._spec = False, None


@contextmanager
def write_ome_zarr(dst: str | os.PathLike[str], overwrite: bool = False) -> Iterator[OmeZarrWriter]:
    """Write a zarr v3 OME-Zarr container atomically.

    Everything is written to a temporary sibling ``<dst>.tmp-<random>`` that is renamed
    to ``dst`` when the block exits normally (replacing ``dst`` if ``overwrite``); on an
    exception it is deleted and ``dst`` is untouched. ``dst`` may also be a path inside
    an existing container (``out.zarr/probability``) to add one image atomically.
    """
    check_local_output(dst)
    dst = Path(dst).expanduser()
    if (dst.exists() or dst.is_symlink()) and not overwrite:
        raise VolumeError(f"output already exists: {dst} (pass --overwrite, or overwrite=True, to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.tmp-{secrets.token_hex(4)}")
    try:
        root = zarr.open_group(str(tmp), mode="w-", zarr_format=3)
    except Exception as e:
        remove_path(tmp)
        raise VolumeError(f"cannot create zarr container {tmp}: {e}") from e
    writer = OmeZarrWriter(root, tmp, dst)
    try:
        yield writer
    except BaseException:
        writer._abort()
        remove_path(tmp)
        raise
    if (dst.exists() or dst.is_symlink()) and not overwrite:
        writer._abort()
        remove_path(tmp)
        raise VolumeError(f"output appeared while writing: {dst} (pass --overwrite, or overwrite=True, to replace it)")
    replace_path(tmp, dst)
    writer._commit()
