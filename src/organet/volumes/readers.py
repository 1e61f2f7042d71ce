"""open_volume: lazy readers for TIFF stacks, slice folders, zarr/OME-Zarr, N5 and HDF5."""

from __future__ import annotations

import json
import os
import re
import threading
import warnings
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np

from organet.errors import VolumeError

from .geometry import Vec3, as_vec3, unit_to_nm
from .ome_zarr import ORGANET_KEY, find_multiscales, ome_geometry
from .remote import RemoteStore, is_url, kvstore_spec
from .volume import LazyArray, SqueezeLeading, Volume

ACCEPTED_FORMS = (
    "a multi-page TIFF (X.tif / X.tiff); a folder of TIFF or PNG slices (numbered, e.g. slice_0001.tif); "
    "a zarr v2/v3 array or OME-Zarr image (X.zarr, X.zarr/path/in/container); "
    "an N5 dataset (X.n5/dataset); an HDF5 dataset (X.h5:/group/dataset or X.h5/group/dataset, also .hdf5/.hdf); "
    "zarr, OME-Zarr and N5 also at http(s):// and s3:// URLs (read-only)"
)
_CONTAINER_SUFFIXES = {".zarr": "zarr", ".n5": "n5", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5"}
_TIFF_SUFFIXES = {".tif", ".tiff"}
_SLICE_SUFFIXES = _TIFF_SUFFIXES | {".png"}
_PIL_MODES = {
    "L": "uint8",
    "1": "bool",
    "I;16": "uint16",
    "I;16B": "uint16",
    "I;16L": "uint16",
    "I": "int32",
    "F": "float32",
}


@dataclass
class _Opened:
    """What a format reader found: data plus metadata (None = not in the file)."""

    data: Any
    voxel_size: Vec3 | None = None
    offset: Vec3 | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    chunks: Sequence[int] | None = None
    closers: list[Callable[[], Any]] = field(default_factory=list)
    writable: bool = False
    note: str = ""  # why the voxel size is missing, for the warning


# -- spec parsing ----------------------------------------------------------------------
def split_spec(spec: str) -> tuple[Path, str, str | None]:
    """Split a spec into (container or file path, path inside it, format or None).

    ``file.h5:/a/b`` splits at the colon; otherwise at the first path component ending
    in .zarr / .n5 / .h5 / .hdf5 / .hdf (case-insensitive).
    """
    m = re.match(r"^(.*\.(?:h5|hdf5|hdf)):(.*)$", spec, re.IGNORECASE)
    if m:
        return Path(m[1]).expanduser(), m[2].strip("/"), "hdf5"
    path = Path(spec).expanduser()
    parts = path.parts
    for i, part in enumerate(parts):
        kind = _CONTAINER_SUFFIXES.get(Path(part).suffix.lower())
        if kind is not None:
            return Path(*parts[: i + 1]), "/".join(parts[i + 1 :]), kind
    return path, "", None


def _sniff(path: Path) -> str | None:
    """Format of a path without a container suffix, from its contents."""
    if path.is_file():
        if path.suffix.lower() in _TIFF_SUFFIXES:
            return "tiff"
        if path.suffix.lower() == ".png":
            return "slices"
        with open(path, "rb") as f:
            head = f.read(8)
        if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return "tiff"
        if head == b"\x89HDF\r\n\x1a\n":
            return "hdf5"
        return None
    if path.is_dir():
        if any((path / f).is_file() for f in ("zarr.json", ".zarray", ".zgroup")):
            return "zarr"
        if (path / "attributes.json").is_file():
            return "n5"
        if any(p.suffix.lower() in _SLICE_SUFFIXES for p in path.iterdir() if not p.name.startswith(".")):
            return "slices"
    return None


# -- TIFF ------------------------------------------------------------------------------
def _tiff_voxel_size(tf: Any, n_planes: int) -> tuple[Vec3 | None, str]:
    """Voxel size (nm) from ImageJ or OME metadata; (None, reason) when absent."""
    page = tf.pages[0]
    if tf.is_ome and tf.ome_metadata:
        try:
            pixels = next(e for e in ET.fromstring(tf.ome_metadata).iter() if e.tag.rsplit("}", 1)[-1] == "Pixels")
        except (ET.ParseError, StopIteration):
            pixels = None
        if pixels is not None:
            sizes: dict[str, float] = {}
            for ax in "XYZ":
                value = pixels.get(f"PhysicalSize{ax}")
                factor = unit_to_nm(pixels.get(f"PhysicalSize{ax}Unit", "µm"))
                if value is not None and factor is not None:
                    sizes[ax] = float(value) * factor
            if "Z" not in sizes and n_planes == 1 and "Y" in sizes:
                sizes["Z"] = sizes["Y"]
            if len(sizes) == 3:
                return (sizes["Z"], sizes["Y"], sizes["X"]), ""
            return None, f"OME metadata gives only PhysicalSize{''.join(sizes) or ' nothing'}"
    if tf.is_imagej:
        md = tf.imagej_metadata or {}
        factor = unit_to_nm(md.get("unit"))
        if factor is None:
            return None, f"ImageJ unit {md.get('unit')!r} is not a length unit"
        res = []
        for tag in ("YResolution", "XResolution"):
            t = page.tags.get(tag)
            num, den = t.value if t is not None else (0, 1)
            if not num or not den:
                return None, f"ImageJ metadata has no {tag}"
            res.append(den / num * factor)  # pixels per unit -> nm per pixel
        spacing = md.get("spacing")
        if spacing is None:
            if n_planes > 1:
                return None, "ImageJ metadata has no z 'spacing'"
            spacing = res[0] / factor
        return (float(spacing) * factor, res[0], res[1]), ""
    return None, "no ImageJ or OME metadata"


def _open_tiff(path: Path, inner: str, mode: str) -> _Opened:
    import tifffile
    import zarr

    try:
        tf = tifffile.TiffFile(path)
    except Exception as e:  # noqa: BLE001 - tifffile raises many types for files that are not TIFF
        raise VolumeError(f"cannot read TIFF {path}: {type(e).__name__}: {e}; expected a TIFF image") from None
    try:
        series = tf.series[0]
        if len(tf.series) > 1:
            warnings.warn(
                f"{path} has {len(tf.series)} image series; using the first, shape {series.shape}", stacklevel=3
            )
        channel_axes = [a for a, n in zip(series.axes, series.shape) if a in "CS" and n > 1]
        if channel_axes:
            raise VolumeError(
                f"TIFF {path} has shape {series.shape} with axes {series.axes!r}: colour/channel axes "
                f"({''.join(channel_axes)}) are not supported; expected a grayscale (z, y, x) stack"
            )
        store = series.aszarr(level=0)
        arr = zarr.open_array(store, mode="r")
        vs, note = _tiff_voxel_size(tf, int(np.prod(series.shape[:-2])) if len(series.shape) > 2 else 1)
    except VolumeError:
        tf.close()
        raise
    except Exception as e:
        tf.close()
        raise VolumeError(f"cannot read TIFF {path}: {e}") from e
    chunks = tuple(arr.chunks) if arr.ndim == 3 else None
    return _Opened(arr, vs, attrs={}, chunks=chunks, closers=[store.close, tf.close], note=note)


# -- folder of slices ------------------------------------------------------------------
def _slice_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    if path.suffix.lower() in _TIFF_SUFFIXES:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            s = tf.series[0]
            return tuple(s.shape), np.dtype(s.dtype)
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in _PIL_MODES:
            raise VolumeError(f"slice {path} has image mode {im.mode!r}; expected a grayscale image")
        return (im.size[1], im.size[0]), np.dtype(_PIL_MODES[im.mode])


def _read_slice(path: Path) -> np.ndarray:
    if path.suffix.lower() in _TIFF_SUFFIXES:
        import tifffile

        return tifffile.imread(path)
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


class SliceStack(LazyArray):
    """Lazy (z, y, x) stack of 2-D image files; whole slices are decoded on demand and
    kept in a small per-instance LRU cache (``cache_bytes``)."""

    def __init__(
        self, files: Sequence[Path], shape2d: tuple[int, int], dtype: np.dtype, cache_bytes: int = 256 * 2**20
    ) -> None:
        self.files = list(files)
        self.shape = (len(self.files), *shape2d)
        self.dtype = np.dtype(dtype)
        self._max_cached = max(1, cache_bytes // max(1, shape2d[0] * shape2d[1] * self.dtype.itemsize))
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def _plane(self, z: int) -> np.ndarray:
        with self._lock:
            if z in self._cache:
                self._cache.move_to_end(z)
                return self._cache[z]
        plane = _read_slice(self.files[z])
        if plane.shape != self.shape[1:] or plane.dtype != self.dtype:
            raise VolumeError(
                f"slice {self.files[z]} has shape {plane.shape} {plane.dtype}; expected {self.shape[1:]} {self.dtype}"
            )
        with self._lock:
            self._cache[z] = plane
            while len(self._cache) > self._max_cached:
                self._cache.popitem(last=False)
        return plane

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        zs, ys, xs = slices
        return np.stack([self._plane(z)[ys, xs] for z in range(zs.start, zs.stop, zs.step)])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": OrderedDict(), "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def list_slices(folder: Path) -> list[Path]:
    """Image files of a slice folder in numeric order of the last integer in each name.

    Raises VolumeError for mixed formats, names without a number, duplicate numbers or
    a gap in the numbering.
    """
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _SLICE_SUFFIXES
    ]
    if not files:
        raise VolumeError(f"folder {folder} contains no .tif/.tiff/.png slices")
    if len({"tif" if p.suffix.lower() in _TIFF_SUFFIXES else "png" for p in files}) > 1:
        raise VolumeError(f"folder {folder} mixes TIFF and PNG slices; expected one format")
    numbered: dict[int, Path] = {}
    for p in files:
        nums = re.findall(r"\d+", p.stem)
        if not nums:
            raise VolumeError(f"slice file name {p.name!r} in {folder} has no number to order it by")
        n = int(nums[-1])
        if n in numbered:
            raise VolumeError(f"slices {numbered[n].name!r} and {p.name!r} in {folder} have the same number {n}")
        numbered[n] = p
    first, last = min(numbered), max(numbered)
    if len(numbered) != last - first + 1:
        missing = next(i for i in range(first, last + 1) if i not in numbered)
        raise VolumeError(f"slice folder {folder} has a gap: slice number {missing} is missing (found {first}..{last})")
    return [numbered[i] for i in range(first, last + 1)]


def _open_slices(path: Path, inner: str, mode: str) -> _Opened:
    files = list_slices(path) if path.is_dir() else [path]
    shape, dtype = _slice_header(files[0])
    if len(shape) != 2:
        raise VolumeError(f"slice {files[0]} has shape {shape}; expected a 2-D grayscale image")
    for f in files[1:]:
        s, d = _slice_header(f)
        if s != shape or d != dtype:
            raise VolumeError(f"slice {f} has shape {s} {d}; expected {shape} {dtype} like {files[0].name}")
    vs, note = None, "no metadata in slice images"
    if files[0].suffix.lower() in _TIFF_SUFFIXES:
        import tifffile

        with tifffile.TiffFile(files[0]) as tf:
            vs, note = _tiff_voxel_size(tf, len(files))
    data = SliceStack(files, (int(shape[0]), int(shape[1])), dtype)
    return _Opened(data, vs, chunks=(1, *shape), note=note)


# -- zarr ------------------------------------------------------------------------------
def _zarr_array_meta(arr: Any) -> tuple[Vec3 | None, Vec3 | None, dict[str, Any]]:
    """funlib/daisy-style array attributes: ``resolution``/``voxel_size``, ``offset`` (nm, z, y, x)."""
    return _array_attrs_meta(dict(arr.attrs), f"attributes of {arr.path or 'root array'}")


def _array_attrs_meta(a: dict[str, Any], where: str) -> tuple[Vec3 | None, Vec3 | None, dict[str, Any]]:
    """:func:`_zarr_array_meta` on an attribute dict (``where`` names it in messages)."""
    vs = next((a[k] for k in ("voxel_size", "resolution") if k in a), None)
    vs = as_vec3(vs, f"voxel size in {where}", positive=True) if vs is not None else None
    off = as_vec3(a["offset"], f"offset in {where}") if "offset" in a else None
    return vs, off, _organet_attrs(a)


def _organet_attrs(attrs: Any) -> dict[str, Any]:
    """organet's own metadata in zarr attributes (``attrs["organet"]``), {} when absent."""
    value = attrs.get(ORGANET_KEY)
    return dict(value) if isinstance(value, Mapping) else {}


def _open_zarr(container: Path, inner: str, mode: str) -> _Opened:
    import zarr

    zmode: Literal["r", "r+"] = "r+" if mode == "r+" else "r"
    try:
        node = zarr.open(store=str(container), mode=zmode, path=inner)
    except Exception as e:
        where = f"{inner!r} in zarr container {container}" if inner else f"zarr container {container}"
        if isinstance(e, (FileNotFoundError, KeyError)):  # zarr's NodeNotFoundError is a FileNotFoundError
            raise VolumeError(f"cannot open {where}: no zarr array or group found") from None
        raise VolumeError(f"cannot open {where}: {type(e).__name__}: {e}") from e
    where = f"{container}/{inner}" if inner else str(container)
    if isinstance(node, zarr.Group):
        ms = find_multiscales(dict(node.attrs))
        if ms is None:
            arrays = sorted(node.array_keys())
            if len(arrays) != 1:
                groups = sorted(node.group_keys())
                raise VolumeError(
                    f"{where} is a zarr group, not an image; name an array or OME-Zarr image inside it "
                    f"(arrays: {arrays or 'none'}, groups: {groups or 'none'})"
                )
            arr = node[arrays[0]]
            vs, off, attrs = _zarr_array_meta(arr)
            return _wrap_zarr(arr, 0, vs, off, attrs or _organet_attrs(node.attrs), mode, where)
        ds = ms[0]["datasets"][0]
        try:
            arr = node[ds["path"]]
        except KeyError:
            raise VolumeError(f"{where}: OME-Zarr dataset {ds['path']!r} is missing") from None
        if not isinstance(arr, zarr.Array):
            raise VolumeError(f"{where}: OME-Zarr dataset {ds['path']!r} is a group, not an array")
        n_lead, vs, off = ome_geometry(ms[0], ds, arr.shape, where)
        return _wrap_zarr(arr, n_lead, vs, off, _organet_attrs(node.attrs), mode, where)
    # An array: use the OME metadata of its parent image group when it has some.
    if inner:
        parent, _, name = inner.rpartition("/")
        try:
            group = zarr.open_group(store=str(container), mode="r", path=parent)
            ms = find_multiscales(dict(group.attrs))
        except Exception:
            ms = None
        ds = next((d for d in (ms[0]["datasets"] if ms else []) if d.get("path") == name), None)
        if ms and ds is not None:
            n_lead, vs, off = ome_geometry(ms[0], ds, node.shape, where)
            return _wrap_zarr(node, n_lead, vs, off, _organet_attrs(group.attrs), mode, where)
    vs, off, attrs = _zarr_array_meta(node)
    return _wrap_zarr(node, 0, vs, off, attrs, mode, where)


def _wrap_zarr(arr: Any, n_lead: int, vs: Vec3 | None, off: Vec3 | None, attrs: dict, mode: str, where: str) -> _Opened:
    data = SqueezeLeading(arr, n_lead) if n_lead else arr
    chunks = getattr(arr, "shards", None) or arr.chunks
    chunks = tuple(chunks[n_lead:]) if len(chunks) - n_lead == 3 else None
    return _Opened(
        data, vs, off, attrs, chunks, writable=mode == "r+", note=f"no voxel size in the attributes of {where}"
    )


# -- N5 --------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise VolumeError(f"cannot read {path}: {e}") from e


def _n5_meta(attrs: dict[str, Any], where: str) -> tuple[Vec3 | None, Vec3 | None]:
    """Voxel size / offset (nm, z, y, x) from N5 attributes, which are in (x, y, z) order."""
    vs = off = None
    tr = attrs.get("transform")
    if isinstance(tr, dict) and "axes" in tr and "scale" in tr:  # COSEM style, explicit axis names
        try:
            order = [list(tr["axes"]).index(a) for a in "zyx"]
            units = tr.get("units") or ["nm"] * len(tr["axes"])
            f = [unit_to_nm(units[i]) or 1.0 for i in order]
            vs = as_vec3([tr["scale"][i] * fi for i, fi in zip(order, f)], f"{where}: transform.scale", positive=True)
            if "translate" in tr:
                off = as_vec3([tr["translate"][i] * fi for i, fi in zip(order, f)], f"{where}: transform.translate")
        except (ValueError, IndexError, TypeError) as e:
            if isinstance(e, VolumeError):
                raise
            raise VolumeError(f"{where}: cannot read 'transform' attribute {tr}: {e}") from None
        return vs, off
    pr = attrs.get("pixelResolution")
    factor = 1.0
    if isinstance(pr, dict):
        factor = unit_to_nm(pr.get("unit", "nm")) or 1.0
        pr = pr.get("dimensions")
    raw = pr if pr is not None else attrs.get("resolution")
    if raw is not None:
        vs = as_vec3([float(v) * factor for v in reversed(list(raw))], f"{where}: resolution", positive=True)
    if attrs.get("offset") is not None:
        off = as_vec3(list(reversed(list(attrs["offset"]))), f"{where}: offset")
    return vs, off


def _open_n5(container: Path, inner: str, mode: str) -> _Opened:
    import tensorstore as ts

    ds_path = container / inner if inner else container
    if not ds_path.is_dir():
        raise VolumeError(f"no such N5 dataset: {inner!r} in {container}")
    attrs = _read_json(ds_path / "attributes.json")
    group_attrs: dict[str, Any] = {}
    if "dimensions" not in attrs:  # a group: its s0 or its only dataset
        children = sorted(p.name for p in ds_path.iterdir() if "dimensions" in _read_json(p / "attributes.json"))
        if "s0" in children or len(children) == 1:
            group_attrs, ds_path = attrs, ds_path / ("s0" if "s0" in children else children[0])
            attrs = _read_json(ds_path / "attributes.json")
        else:
            raise VolumeError(f"{ds_path} is an N5 group, not a dataset; name one of: {children or 'none found'}")
    try:
        store = ts.open(
            {"driver": "n5", "kvstore": {"driver": "file", "path": str(ds_path) + "/"}},
            read=True,
            write=mode == "r+",
        ).result()
    except Exception as e:
        raise VolumeError(f"cannot open N5 dataset {ds_path}: {e}") from e
    # tensorstore keeps N5's dimension order (x, y, z; attributes.json "dimensions"), so
    # transpose to (z, y, x).
    data = TensorStoreArray(store.T)
    where = str(ds_path)
    vs, off = _n5_meta(attrs, where)
    if vs is None and group_attrs:
        vs, off2 = _n5_meta(group_attrs, where)
        off = off if off is not None else off2
    return _Opened(
        data, vs, off, chunks=data.chunks, writable=mode == "r+", note=f"no resolution in {where}/attributes.json"
    )


class TensorStoreArray(LazyArray):
    """NumPy-style slicing over a tensorstore handle with a zero-origin domain."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.shape = tuple(int(n) for n in store.domain.shape)
        self.dtype = np.dtype(store.dtype.numpy_dtype)
        chunk = store.chunk_layout.read_chunk.shape
        self.chunks = tuple(int(c) if c else n for c, n in zip(chunk or self.shape, self.shape))

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(self.store[slices].read().result())

    def _write(self, slices: tuple[slice, ...], value: np.ndarray) -> None:
        self.store[slices].write(value).result()


# -- HDF5 ------------------------------------------------------------------------------
def _open_hdf5(path: Path, inner: str, mode: str) -> _Opened:
    import h5py

    try:
        f = h5py.File(path, mode)
    except OSError as e:
        raise VolumeError(f"cannot open HDF5 file {path}: {e}") from e
    try:
        node = f[inner] if inner else f
    except KeyError:
        node = None
    if not isinstance(node, h5py.Dataset):
        names: list[str] = []
        if node is not None:
            node.visititems(
                lambda n, obj: names.append(f"{node.name.rstrip('/')}/{n}") if isinstance(obj, h5py.Dataset) else None
            )
        if len(names) == 1:
            node = f[names[0]]
        else:
            if node is None:
                f.visititems(lambda n, obj: names.append("/" + n) if isinstance(obj, h5py.Dataset) else None)
            f.close()
            what = f"no dataset {inner!r}" if node is None else f"{inner or '/'!r} is a group, not a dataset"
            raise VolumeError(f"{path}: {what}; datasets in the file: {names[:20] or 'none'}")
    a = node.attrs
    where = f"{path}:{node.name}"
    vs = off = None
    try:
        raw = next((a[k] for k in ("resolution", "voxel_size") if k in a), None)
        if raw is not None:
            vs = as_vec3(raw, f"voxel size attribute of {where}", positive=True)
        elif "element_size_um" in a:
            vs = as_vec3([float(v) * 1e3 for v in a["element_size_um"]], f"element_size_um of {where}", positive=True)
        if "offset" in a:
            off = as_vec3(a["offset"], f"offset attribute of {where}")
        meta = a.get(ORGANET_KEY)
        attrs = json.loads(meta) if isinstance(meta, (str, bytes)) else {}
    except Exception:
        f.close()
        raise
    chunks = node.chunks or (1, *node.shape[-2:])
    return _Opened(
        node,
        vs,
        off,
        attrs,
        chunks if len(chunks) == 3 else None,
        [f.close],
        mode == "r+",
        note=f"no resolution/voxel_size/element_size_um attribute on {where}",
    )


# -- remote: http(s):// and s3:// zarr and N5 through tensorstore ------------------------
def split_url(url: str) -> tuple[str, str, str | None]:
    """Split a URL like :func:`split_spec`: (container URL, path inside it, "zarr" / "n5" / None).

    The container is the first path segment ending in .zarr or .n5 (case-insensitive).
    """
    parts = urlsplit(url)
    segments = [p for p in parts.path.split("/") if p]
    for i, seg in enumerate(segments):
        kind = _CONTAINER_SUFFIXES.get(PurePosixPath(seg).suffix.lower())
        if kind == "hdf5":
            raise VolumeError(f"cannot open {url}: HDF5 cannot be read from a URL; expected a zarr or N5 URL")
        if kind is not None:
            base = f"{parts.scheme}://{parts.netloc}/" + "/".join(segments[: i + 1])
            return base, "/".join(segments[i + 1 :]), kind
    return f"{parts.scheme}://{parts.netloc}/" + "/".join(segments), "", None


def _remote_zarr_node(store: RemoteStore, inner: str) -> tuple[str, int, dict[str, Any]] | None:
    """(node type "array" / "group", zarr format 2 / 3, attributes) at ``inner``; None if nothing is there."""
    pre = f"{inner}/" if inner else ""
    meta = store.read_json(pre + "zarr.json")
    if meta is not None:
        kind = meta.get("node_type")
        if kind not in ("array", "group"):
            raise VolumeError(f"{store.where(pre + 'zarr.json')}: node_type {kind!r}; expected 'array' or 'group'")
        return str(kind), 3, dict(meta.get("attributes") or {})
    for key, kind in ((".zarray", "array"), (".zgroup", "group")):
        if store.read_json(pre + key) is not None:
            return kind, 2, store.read_json(pre + ".zattrs") or {}
    return None


def _open_remote_zarr(store: RemoteStore, inner: str) -> _Opened:
    where = store.where(inner)
    node = _remote_zarr_node(store, inner)
    if node is None:
        raise VolumeError(f"cannot open {where}: no zarr array or group found (expected zarr.json, .zarray or .zgroup)")
    kind, fmt, attrs = node
    if kind == "group":
        ms = find_multiscales(attrs)
        if ms is None:
            raise VolumeError(
                f"{where} is a zarr group without OME-Zarr multiscales; name the array inside it "
                "(a remote group cannot be listed)"
            )
        ds = ms[0]["datasets"][0]
        path = f"{inner}/{ds['path']}".strip("/")
        sub = _remote_zarr_node(store, path)
        if sub is None or sub[0] != "array":
            raise VolumeError(f"{where}: OME-Zarr dataset {ds['path']!r} is {'missing' if sub is None else 'a group'}")
        arr = store.open_array("zarr3" if sub[1] == 3 else "zarr", path)
        n_lead, ome_vs, ome_off = ome_geometry(ms[0], ds, arr.shape, where)
        return _wrap_zarr(arr, n_lead, ome_vs, ome_off, _organet_attrs(attrs), "r", where)
    arr = store.open_array("zarr3" if fmt == 3 else "zarr", inner)
    if inner:  # an array: use the OME metadata of its parent image group when it has some
        parent, _, name = inner.rpartition("/")
        pnode = _remote_zarr_node(store, parent)
        ms = find_multiscales(pnode[2]) if pnode is not None and pnode[0] == "group" else None
        ds = next((d for d in (ms[0]["datasets"] if ms else []) if d.get("path") == name), None)
        if ms and ds is not None and pnode is not None:
            n_lead, ome_vs, ome_off = ome_geometry(ms[0], ds, arr.shape, where)
            return _wrap_zarr(arr, n_lead, ome_vs, ome_off, _organet_attrs(pnode[2]), "r", where)
    vs, off, own = _array_attrs_meta(attrs, f"attributes of {where}")
    return _wrap_zarr(arr, 0, vs, off, own, "r", where)


def _open_remote_n5(store: RemoteStore, inner: str) -> _Opened:
    where = store.where(inner)
    pre = f"{inner}/" if inner else ""
    attrs = store.read_json(pre + "attributes.json")
    if attrs is None:
        raise VolumeError(f"cannot open {where}: no attributes.json found; expected an N5 dataset or group")
    group_attrs: dict[str, Any] = {}
    if "dimensions" not in attrs:  # a group: its s0 (a remote group cannot be listed)
        s0 = store.read_json(pre + "s0/attributes.json")
        if s0 is None or "dimensions" not in s0:
            raise VolumeError(
                f"{where} is an N5 group without an s0 dataset; name a dataset inside it "
                "(a remote group cannot be listed)"
            )
        group_attrs, attrs, inner = attrs, s0, pre + "s0"
        where = store.where(inner)
    data = store.open_array("n5", inner).T  # N5 stores (x, y, z)
    vs, off = _n5_meta(attrs, where)
    if vs is None and group_attrs:
        vs, off2 = _n5_meta(group_attrs, where)
        off = off if off is not None else off2
    return _Opened(data, vs, off, chunks=data.chunks, note=f"no resolution in {where}/attributes.json")


def _open_remote(url: str, mode: str) -> _Opened:
    """Open a zarr / OME-Zarr / N5 volume at an http(s):// or s3:// URL, read-only."""
    if mode == "r+":
        raise VolumeError(f"cannot open {url} for writing: remote volumes are read-only; expected a local path")
    kvstore_spec(url)  # the scheme, host and form of the URL
    container, inner, kind = split_url(url)
    store = RemoteStore(container)
    if kind is None:
        if _remote_zarr_node(store, "") is not None:
            kind = "zarr"
        elif store.read_json("attributes.json") is not None:
            kind = "n5"
        else:
            raise VolumeError(
                f"cannot open {url}: no zarr.json, .zarray, .zgroup or N5 attributes.json found there; "
                "expected a zarr v2/v3 array, an OME-Zarr image or an N5 dataset"
            )
    return _open_remote_zarr(store, inner) if kind == "zarr" else _open_remote_n5(store, inner)


_READERS: dict[str, Callable[[Path, str, str], _Opened]] = {
    "tiff": _open_tiff,
    "slices": _open_slices,
    "zarr": _open_zarr,
    "n5": _open_n5,
    "hdf5": _open_hdf5,
}
_WRITABLE = {"zarr", "n5", "hdf5"}


def _open_local(text: str, mode: str) -> _Opened:
    container, inner, kind = split_spec(text)
    if not container.exists():
        raise VolumeError(f"no such file or directory: {container}")
    kind = kind or _sniff(container)
    if kind is None:
        raise VolumeError(f"cannot open {text}: unknown format. Accepted: {ACCEPTED_FORMS}")
    if kind == "zarr" and not container.is_dir():
        raise VolumeError(f"{container} is not a zarr directory")
    if kind in ("tiff", "slices") and inner:
        raise VolumeError(f"cannot open {text}: a path inside a {kind} image is not supported")
    if mode == "r+" and kind not in _WRITABLE:
        raise VolumeError(f"cannot open {text} for writing: {kind} volumes are read-only (use zarr, N5 or HDF5)")
    return _READERS[kind](container, inner, mode)


def open_volume(
    spec: str | os.PathLike[str],
    voxel_size: Sequence[float] | None = None,
    offset: Sequence[float] | None = None,
    *,
    mode: str = "r",
    default_voxel_size: Sequence[float] | None = None,
) -> Volume:
    """Open an image volume lazily (nothing but metadata is read).

    ``spec``: see ``ACCEPTED_FORMS``. ``voxel_size`` / ``offset`` (nm, z, y, x) override
    the file's metadata; ``default_voxel_size`` applies only when the file has none (a
    TIFF from instrument software); without any voxel size, (1, 1, 1) is used with a warning.
    ``mode="r+"`` opens local zarr, N5 and HDF5 data writable. An ``http(s)://`` or
    ``s3://`` URL of a zarr / OME-Zarr / N5 volume is opened read-only and only its
    metadata is fetched; reads fetch the chunks they cover (:mod:`organet.volumes.remote`).
    """
    if mode not in ("r", "r+"):
        raise VolumeError(f"mode must be 'r' or 'r+', got {mode!r}")
    text = os.fspath(spec)
    if default_voxel_size is not None:  # checked even where the file's own voxel size wins
        default_voxel_size = as_vec3(default_voxel_size, "voxel_size (nm)", positive=True)
    opened = _open_remote(text, mode) if is_url(text) else _open_local(text, mode)
    try:
        vs = as_vec3(voxel_size, "voxel_size (nm)", positive=True) if voxel_size is not None else opened.voxel_size
        if vs is None and default_voxel_size is not None:
            vs = as_vec3(default_voxel_size, "voxel_size (nm)", positive=True)
        if vs is None:
            warnings.warn(
                f"no voxel size found for {text} ({opened.note}); using (1.0, 1.0, 1.0) nm. "
                "Pass voxel_size=(z, y, x) in nm to set it.",
                stacklevel=2,
            )
            vs = (1.0, 1.0, 1.0)
        off = as_vec3(offset, "offset (nm)") if offset is not None else (opened.offset or (0.0, 0.0, 0.0))
        vol = Volume(
            opened.data, vs, off, path=text, attrs=opened.attrs, chunks=opened.chunks, writable=opened.writable
        )
    except BaseException:
        for close in opened.closers:
            close()
        raise
    vol._spec, vol._mode, vol._closers = text, mode, opened.closers
    return vol


__all__ = [
    "ACCEPTED_FORMS",
    "SliceStack",
    "TensorStoreArray",
    "list_slices",
    "open_volume",
    "split_spec",
    "split_url",
]
