"""The Volume type: a lazy 3-D (z, y, x) array with physical metadata in nm."""

from __future__ import annotations

import contextlib
import itertools
import operator
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from organet.errors import VolumeError

from .geometry import Vec3, as_int3, as_vec3, fmt_vec
from .roi import Roi

Key = Any  # NumPy basic index: ints, slices, Ellipsis


def normalize_key(key: Key, shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[int, ...]]:
    """Turn a basic NumPy index into concrete slices (start <= stop, step >= 1).

    Returns the slices (one per axis) and the axes that were indexed by an integer
    (to be squeezed from the result). Raises VolumeError for anything else.
    """
    ndim = len(shape)
    key = key if isinstance(key, tuple) else (key,)
    n_ellipsis = sum(k is Ellipsis for k in key)
    if n_ellipsis > 1:
        raise VolumeError(f"index {key!r} has more than one '...'")
    if n_ellipsis:
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1 :]
    if len(key) > ndim:
        raise VolumeError(f"too many indices {key!r} for a {ndim}-D array")
    key = key + (slice(None),) * (ndim - len(key))
    slices: list[slice] = []
    int_axes: list[int] = []
    for axis, (k, n) in enumerate(zip(key, shape)):
        if isinstance(k, slice):
            start, stop, step = k.indices(int(n))
            if step < 1:
                raise VolumeError(f"only positive slice steps are supported, got {k!r}")
            slices.append(slice(start, max(start, stop), step))
            continue
        if isinstance(k, (bool, np.bool_)):
            raise VolumeError(f"boolean index {k!r} is not supported (basic indexing only)")
        try:
            i = operator.index(k)
        except TypeError:
            raise VolumeError(f"unsupported index {k!r}: use integers, slices or '...'") from None
        if not -n <= i < n:
            raise VolumeError(f"index {i} is out of range for axis {axis} of size {n}")
        i %= n
        slices.append(slice(i, i + 1, 1))
        int_axes.append(axis)
    return tuple(slices), tuple(int_axes)


# Writes may cast within or up these kinds (bool < integers < floats < complex), never down.
_KIND_RANK = {"b": 0, "u": 1, "i": 1, "f": 2, "c": 3}


def _slice_len(s: slice) -> int:
    return len(range(s.start, s.stop, s.step))


class LazyArray:
    """Base for lazy array wrappers: NumPy basic indexing -> ``_read``/``_write`` on concrete slices."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        raise NotImplementedError

    def _write(self, slices: tuple[slice, ...], value: np.ndarray) -> None:
        raise VolumeError(f"{type(self).__name__} is read-only")

    def __getitem__(self, key: Key) -> np.ndarray:
        slices, int_axes = normalize_key(key, self.shape)
        lengths = tuple(_slice_len(s) for s in slices)
        if 0 in lengths:
            out = np.empty(lengths, self.dtype)
        else:
            out = np.asarray(self._read(slices))
        return out.squeeze(axis=int_axes) if int_axes else out

    def __setitem__(self, key: Key, value: Any) -> None:
        slices, int_axes = normalize_key(key, self.shape)
        lengths = tuple(_slice_len(s) for s in slices)
        kept = tuple(n for a, n in enumerate(lengths) if a not in int_axes)
        arr = np.broadcast_to(np.asarray(value, dtype=self.dtype), kept).reshape(lengths)
        if 0 not in lengths:
            self._write(slices, arr)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} shape={self.shape} dtype={self.dtype}>"


class Expand2D(LazyArray):
    """A 2-D (y, x) array seen as 3-D (1, y, x)."""

    def __init__(self, base: Any) -> None:
        self.base = base
        self.shape = (1, *(int(n) for n in base.shape))
        self.dtype = np.dtype(base.dtype)

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(self.base[slices[1], slices[2]])[None]

    def _write(self, slices: tuple[slice, ...], value: np.ndarray) -> None:
        self.base[slices[1], slices[2]] = value[0]


class SqueezeLeading(LazyArray):
    """Drop ``n`` leading axes of size 1 (e.g. OME-Zarr t/c axes)."""

    def __init__(self, base: Any, n: int) -> None:
        if any(int(s) != 1 for s in base.shape[:n]):
            raise VolumeError(f"cannot squeeze leading axes of shape {tuple(base.shape)}: they must have size 1")
        self.base, self.n = base, n
        self.shape = tuple(int(s) for s in base.shape[n:])
        self.dtype = np.dtype(base.dtype)

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(self.base[(0,) * self.n + slices])

    def _write(self, slices: tuple[slice, ...], value: np.ndarray) -> None:
        self.base[(0,) * self.n + slices] = value


class Cropped(LazyArray):
    """A box of another volume's data, indexed from the box's origin."""

    def __init__(self, base: Any, roi: Roi) -> None:
        self.base, self.roi = base, roi
        self.shape = tuple(roi.shape)
        self.dtype = np.dtype(base.dtype)

    def _shift(self, slices: tuple[slice, ...]) -> tuple[slice, ...]:
        return tuple(slice(s.start + o, s.stop + o, s.step) for s, o in zip(slices, self.roi.offset))

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(self.base[self._shift(slices)])

    def _write(self, slices: tuple[slice, ...], value: np.ndarray) -> None:
        self.base[self._shift(slices)] = value


class Unavailable(LazyArray):
    """Placeholder for data that no longer exists (aborted write, closed volume)."""

    def __init__(self, shape: Sequence[int], dtype: Any, reason: str) -> None:
        self.shape, self.dtype, self.reason = tuple(shape), np.dtype(dtype), reason

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        raise VolumeError(self.reason)

    def _write(self, slices: tuple[slice, ...], value: np.ndarray) -> None:
        raise VolumeError(self.reason)


def _array_name(data: Any) -> str:
    """Where a zarr array lives (``/path/to/x.zarr/s0``), for messages; "" for other data."""
    while isinstance(data, SqueezeLeading):
        data = data.base
    where = str(getattr(data, "store_path", ""))
    return where.removeprefix("file://") if where.startswith("file://") else ""


SUPPORTED_KINDS = {"b": "bool", "u": "unsigned integer", "i": "integer", "f": "float"}
"""NumPy dtype kinds a volume may hold (complex, string, object and structured data are refused)."""


class Volume:
    """A lazy 3-D image, axis order (z, y, x).

    ``data`` is any chunked array-like with ``.shape``, ``.dtype`` and NumPy basic
    slicing (zarr array, h5py dataset, wrappers from this package, numpy array).
    ``voxel_size`` is in nm, ``offset`` is the world coordinate (nm) of voxel
    (0, 0, 0), ``chunks`` is the efficient I/O block in voxels, ``attrs`` holds
    organet's own metadata (JSON-like). A 2-D array is seen as z = 1.
    """

    def __init__(
        self,
        data: Any,
        voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
        offset: Sequence[float] = (0.0, 0.0, 0.0),
        path: str = "",
        attrs: dict[str, Any] | None = None,
        chunks: Sequence[int] | None = None,
        writable: bool = False,
    ) -> None:
        if not all(hasattr(data, a) for a in ("shape", "dtype", "__getitem__")):
            raise VolumeError(f"volume data must be an array-like with shape/dtype/slicing, got {type(data).__name__}")
        if len(data.shape) == 2:
            data = Expand2D(data)
        if len(data.shape) != 3:
            raise VolumeError(
                f"expected 3-D (z, y, x) data{f' in {path}' if path else ''}, got shape {tuple(data.shape)}"
            )
        dtype = np.dtype(data.dtype)
        if dtype.kind not in SUPPORTED_KINDS:
            raise VolumeError(
                f"{path or 'volume data'} has dtype {dtype}; expected bool, integer or float data (z, y, x)"
            )
        self.data = data
        self.voxel_size: Vec3 = as_vec3(voxel_size, "voxel size (nm)", positive=True)
        self.offset: Vec3 = as_vec3(offset, "offset (nm)")
        self.path = str(path)
        self.attrs: dict[str, Any] = dict(attrs or {})
        shape = self.shape
        if chunks is None:
            chunks = (1, shape[1], shape[2])
        self.chunks = tuple(max(1, min(int(c), max(int(s), 1))) for c, s in zip(as_int3(chunks, "chunks"), shape))
        self.writable = bool(writable)
        # How to reopen after fork / unpickling (set by open_volume); file handles to close.
        self._spec: str | None = None
        self._mode = "r"
        self._closers: list[Callable[[], Any]] = []
        self._pid = os.getpid()

    # -- geometry --------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        s = self.data.shape
        return (int(s[0]), int(s[1]), int(s[2]))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def ndim(self) -> int:
        return 3

    @property
    def roi(self) -> Roi:
        """The whole volume as a voxel Roi."""
        return Roi((0, 0, 0), self.shape)

    @property
    def extent_nm(self) -> Vec3:
        """Physical size in nm, (z, y, x) = shape * voxel_size."""
        s, v = self.shape, self.voxel_size
        return (s[0] * v[0], s[1] * v[1], s[2] * v[2])

    @property
    def bounds_nm(self) -> tuple[Vec3, Vec3]:
        """(begin, end) world coordinates in nm, (z, y, x)."""
        return self.roi.to_nm(self.voxel_size, self.offset)

    def crop_nm(self, begin_nm: Sequence[float], end_nm: Sequence[float]) -> Volume:
        """A lazy view of the world box ``[begin_nm, end_nm)`` (nm, z, y, x), which must
        fall on this volume's voxel grid and inside it."""
        roi = Roi.from_nm(begin_nm, end_nm, self.voxel_size, self.offset)
        back = roi.to_nm(self.voxel_size, self.offset)
        if not np.allclose(np.array(back), np.array([begin_nm, end_nm]), atol=1e-3 * min(self.voxel_size)):
            raise VolumeError(
                f"box {fmt_vec(begin_nm)}-{fmt_vec(end_nm)} nm is not on the voxel grid of "
                f"{self.path or '<in memory>'} (voxel size {fmt_vec(self.voxel_size)} nm, "
                f"offset {fmt_vec(self.offset)} nm)"
            )
        return self.crop(roi)

    def crop(self, roi: Roi) -> Volume:
        """A lazy view of ``roi`` (voxels) as a Volume of its own: indices start at the
        ROI's corner and the offset (nm) moves to it. Writable if this volume is."""
        if not self.roi.contains(roi):
            raise VolumeError(
                f"cannot crop ROI {roi}: outside volume {self.path or '<in memory>'} of shape {self.shape}"
            )
        offset = tuple(o + r * v for o, r, v in zip(self.offset, roi.offset, self.voxel_size))
        return Volume(
            Cropped(self, roi), self.voxel_size, offset, f"{self.path}[{roi}]", self.attrs, self.chunks, self.writable
        )

    # -- I/O -------------------------------------------------------------------------
    def _key(self, where: Roi | Key | None, action: str) -> Key:
        if where is None:
            return self.roi.slices()
        if isinstance(where, Roi):
            if not self.roi.contains(where):
                raise VolumeError(
                    f"cannot {action} ROI {where}: outside volume {self.path or '<in memory>'} "
                    f"of shape {self.shape} voxels"
                )
            return where.slices()
        return where

    def _check_process(self) -> None:
        # File handles (HDF5, TIFF) must not be shared across fork: reopen in the child.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            if self._spec is not None:
                self._rebind(self._spec, self._mode)

    def _rebind(self, spec: str, mode: str) -> None:
        from .readers import open_volume

        fresh = open_volume(spec, voxel_size=self.voxel_size, offset=self.offset, mode=mode)
        self.data, self._closers, self._spec, self._mode = fresh.data, fresh._closers, spec, mode
        fresh._closers = []

    def read(self, roi: Roi | Key | None = None) -> np.ndarray:
        """Read a region (only that region is read from disk) as a new ndarray.

        ``roi``: a voxel Roi (must lie inside the volume), a tuple of slices/ints
        (NumPy semantics, clipped) or None for the whole volume.
        """
        return self[self._key(roi, "read")]

    def __getitem__(self, key: Key) -> np.ndarray:
        self._check_process()
        slices, int_axes = normalize_key(key, self.shape)
        lengths = tuple(_slice_len(s) for s in slices)
        if 0 in lengths:
            out = np.empty(lengths, self.dtype)
        else:
            try:
                raw = self.data[slices]
            except (VolumeError, OSError, MemoryError):
                raise
            except Exception as e:  # noqa: BLE001 - a damaged chunk, else re-raised as the bug it is
                damaged = self._damaged_chunk(slices)
                if damaged is None:
                    raise
                raise VolumeError(damaged) from e
            out = np.array(raw, copy=True) if isinstance(self.data, np.ndarray) else np.asarray(raw)
            if out.shape != lengths:
                raise VolumeError(f"reading {slices} from {self.path} returned shape {out.shape}, expected {lengths}")
        return out.squeeze(axis=int_axes) if int_axes else out

    def _damaged_chunk(self, slices: tuple[slice, ...]) -> str | None:
        """After a failed read of ``slices``: read it chunk by chunk and describe the first
        chunk that cannot be read (a damaged or cut-short chunk file), or None when every
        chunk reads on its own (then the failure was not the data's)."""
        ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(slices, self.chunks)]
        for idx in itertools.product(*ranges):
            box = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, self.chunks, self.shape))
            try:
                self.data[box]
            except Exception as e:  # noqa: BLE001 - this chunk is the one
                where = _array_name(self.data) or self.path or "<in memory>"
                voxels = ", ".join(f"{b.start}:{b.stop}" for b in box)
                return (
                    f"cannot read {where}: chunk {tuple(idx)} (voxels z, y, x {voxels}) is damaged or cut short "
                    f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else 'no message'}); "
                    "expected a readable chunk: copy the volume again or restore it"
                )
        return None

    def write(self, roi: Roi | Key, array: Any) -> None:
        """Write ``array`` (broadcastable to the region) into a voxel Roi or slices."""
        if not self.writable:
            raise VolumeError(f"volume {self.path or '<in memory>'} is read-only")
        self._check_process()
        slices, int_axes = normalize_key(self._key(roi, "write"), self.shape)
        lengths = tuple(_slice_len(s) for s in slices)
        kept = tuple(n for a, n in enumerate(lengths) if a not in int_axes)
        arr = np.asarray(array)
        if arr.dtype != self.dtype and _KIND_RANK.get(arr.dtype.kind, 9) > _KIND_RANK.get(self.dtype.kind, -1):
            raise VolumeError(f"cannot write {arr.dtype} data into {self.dtype} volume {self.path} (unsafe cast)")
        try:
            arr = np.broadcast_to(arr, kept).reshape(lengths)
        except ValueError:
            raise VolumeError(
                f"cannot write array of shape {arr.shape} into region {slices} of shape {kept} of {self.path}"
            ) from None
        if 0 not in lengths:
            self.data[slices] = arr.astype(self.dtype, copy=False)

    def __setitem__(self, key: Key, array: Any) -> None:
        self.write(key, array)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.read()
        return out if dtype is None else out.astype(dtype, copy=False)

    # -- lifetime --------------------------------------------------------------------
    def close(self) -> None:
        """Release file handles (TIFF, HDF5); later reads raise VolumeError."""
        closers, self._closers = self._closers, []
        for close in closers:
            with contextlib.suppress(Exception):  # closing is best effort
                close()
        if closers:
            self.data = Unavailable(self.shape, self.dtype, f"volume {self.path} is closed")

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("data", "_closers")}
        state["data"] = None if self._spec is not None else self.data
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._closers = []
        self._pid = os.getpid()
        if self._spec is not None:
            self._rebind(self._spec, self._mode)

    def __repr__(self) -> str:
        return (
            f"Volume({self.path or '<in memory>'!s}, shape={self.shape}, dtype={self.dtype}, "
            f"voxel_size={fmt_vec(self.voxel_size)} nm, offset={fmt_vec(self.offset)} nm)"
        )
