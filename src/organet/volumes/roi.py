"""Regions of interest: axis-aligned boxes in voxels, axis order (z, y, x)."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from organet.errors import VolumeError

from .geometry import Shape3, Vec3, as_int3, as_vec3, fmt_vec

if TYPE_CHECKING:
    from .volume import Volume

# Tolerance (in voxels) for snapping nm coordinates that are a multiple of the voxel size
# up to floating-point error (e.g. 520 / 5.2 = 100.00000000000001).
_SNAP = 1e-6


@dataclass(frozen=True, init=False)
class Roi:
    """A box in voxels: ``offset`` (first voxel) and ``shape``, both (z, y, x).

    Built from any three integers each (tuples, lists, NumPy integers); stored as tuples
    of ``int``. The offset may be negative or lie outside any volume (e.g. context
    padding); the shape is >= 0 on every axis.
    """

    offset: Shape3
    shape: Shape3

    def __init__(self, offset: Sequence[int], shape: Sequence[int]) -> None:
        object.__setattr__(self, "offset", as_int3(offset, "ROI offset"))
        object.__setattr__(self, "shape", as_int3(shape, "ROI shape", minimum=0))

    @property
    def end(self) -> Shape3:
        """One past the last voxel, (z, y, x)."""
        o, s = self.offset, self.shape
        return (o[0] + s[0], o[1] + s[1], o[2] + s[2])

    @property
    def size(self) -> int:
        """Number of voxels."""
        return self.shape[0] * self.shape[1] * self.shape[2]

    @property
    def empty(self) -> bool:
        return self.size == 0

    def slices(self) -> tuple[slice, slice, slice]:
        """``(slice(z0, z1), slice(y0, y1), slice(x0, x1))``."""
        b, e = self.offset, self.end
        return (slice(b[0], e[0]), slice(b[1], e[1]), slice(b[2], e[2]))

    def intersect(self, other: Roi) -> Roi:
        """Overlap of two boxes; shape is 0 on axes where they do not overlap."""
        begin = tuple(max(a, b) for a, b in zip(self.offset, other.offset))
        end = tuple(min(a, b) for a, b in zip(self.end, other.end))
        return Roi(begin, tuple(max(0, e - b) for b, e in zip(begin, end)))

    def contains(self, other: Roi) -> bool:
        """True when ``other`` lies completely inside this box."""
        return all(a <= b for a, b in zip(self.offset, other.offset)) and all(
            a >= b for a, b in zip(self.end, other.end)
        )

    def grow(self, amount: int | Sequence[int]) -> Roi:
        """Grow by ``amount`` voxels on both sides of each axis (negative shrinks)."""
        if isinstance(amount, Sequence) or hasattr(amount, "__len__"):  # also NumPy arrays
            a = as_int3(amount, "grow amount")
        else:
            n = operator.index(amount)
            a = (n, n, n)
        shape = tuple(s + 2 * g for s, g in zip(self.shape, a))
        if any(s < 0 for s in shape):
            raise VolumeError(f"cannot shrink ROI {self} by {-min(a)} voxels per side: shape would be negative")
        return Roi(tuple(o - g for o, g in zip(self.offset, a)), shape)

    def shift(self, delta: Sequence[int]) -> Roi:
        """Translate by ``delta`` voxels (z, y, x)."""
        d = as_int3(delta, "shift")
        return Roi(tuple(o + x for o, x in zip(self.offset, d)), self.shape)

    @classmethod
    def from_slices(cls, slices: Sequence[slice], shape: Sequence[int] | None = None) -> Roi:
        """Box from 3 slices (step None or 1).

        With ``shape`` the slices are read NumPy-style relative to that shape (None =
        full axis, negative = from the end, clipped); without it start/stop are
        literal voxel coordinates (start None = 0, stop None is an error).
        """
        if len(slices) != 3 or not all(isinstance(s, slice) for s in slices):
            raise VolumeError(f"expected 3 slices (z, y, x), got {slices!r}")
        begin, end = [], []
        for axis, s in enumerate(slices):
            if s.step not in (None, 1):
                raise VolumeError(f"ROI slices must have step 1, got {s!r} on axis {'zyx'[axis]}")
            if shape is not None:
                b, e, _ = s.indices(int(shape[axis]))
                e = max(b, e)
            else:
                if s.stop is None:
                    raise VolumeError(f"open-ended slice {s!r} on axis {'zyx'[axis]} needs a shape")
                b, e = (0 if s.start is None else s.start), s.stop
            begin.append(b)
            end.append(e)
        if any(e < b for b, e in zip(begin, end)):
            raise VolumeError(f"slices {slices!r} have stop < start")
        return cls(tuple(begin), tuple(e - b for b, e in zip(begin, end)))

    @classmethod
    def from_nm(
        cls,
        begin_nm: Sequence[float],
        end_nm: Sequence[float],
        voxel_size: Sequence[float],
        offset_nm: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> Roi:
        """Voxel box covering the physical box [begin_nm, end_nm) (world nm, z, y, x).

        ``offset_nm`` is the world coordinate of voxel (0, 0, 0); begin is floored and
        end is ceiled, so the result covers the whole physical box.
        """
        b = as_vec3(begin_nm, "ROI begin (nm)")
        e = as_vec3(end_nm, "ROI end (nm)")
        vs = as_vec3(voxel_size, "voxel size (nm)", positive=True)
        off = as_vec3(offset_nm, "volume offset (nm)")
        if any(ei < bi for bi, ei in zip(b, e)):
            raise VolumeError(f"ROI end {fmt_vec(e)} nm lies before its begin {fmt_vec(b)} nm")
        vb = tuple(math.floor((bi - oi) / v + _SNAP) for bi, oi, v in zip(b, off, vs))
        ve = tuple(math.ceil((ei - oi) / v - _SNAP) for ei, oi, v in zip(e, off, vs))
        return cls(vb, tuple(max(0, y - x) for x, y in zip(vb, ve)))

    def to_nm(self, voxel_size: Sequence[float], offset_nm: Sequence[float] = (0.0, 0.0, 0.0)) -> tuple[Vec3, Vec3]:
        """(begin_nm, end_nm) world coordinates of this box, (z, y, x)."""
        vs = as_vec3(voxel_size, "voxel size (nm)", positive=True)
        off = as_vec3(offset_nm, "volume offset (nm)")
        b = tuple(o + i * v for o, i, v in zip(off, self.offset, vs))
        e = tuple(o + i * v for o, i, v in zip(off, self.end, vs))
        return (b[0], b[1], b[2]), (e[0], e[1], e[2])

    def __str__(self) -> str:
        return "[" + ", ".join(f"{b}:{e}" for b, e in zip(self.offset, self.end)) + "]"


def _fmt_box(begin: Sequence[float], end: Sequence[float]) -> str:
    return ", ".join(f"{ax} {b:g}:{e:g}" for ax, b, e in zip("zyx", begin, end))


def parse_roi(text: str, unit: Literal["nm", "vox"], volume: Volume) -> Roi:
    """Parse ``"z0:z1,y0:y1,x0:x1"`` into a voxel Roi inside ``volume``.

    ``unit="vox"``: integer voxel indices. ``unit="nm"``: world coordinates in nm
    (the volume offset included), converted with :meth:`Roi.from_nm`. An empty
    bound (``":"``, ``"10:"``) means the volume's edge on that axis.
    """
    if unit not in ("nm", "vox"):
        raise VolumeError(f"ROI unit must be 'nm' or 'vox', got {unit!r}")
    parts = str(text).strip().split(",")
    if len(parts) != 3 or any(p.count(":") != 1 for p in parts):
        raise VolumeError(f"cannot parse ROI {text!r}: expected 'z0:z1,y0:y1,x0:x1' ({unit}; a bound may be empty)")
    vol_b, vol_e = volume.bounds_nm if unit == "nm" else ((0, 0, 0), volume.shape)
    begin: list[float] = []
    end: list[float] = []
    for axis, part in enumerate(parts):
        bounds = []
        for i, s in enumerate(part.split(":")):
            s = s.strip()
            if not s:
                bounds.append((vol_b, vol_e)[i][axis])
                continue
            try:
                bounds.append(int(s) if unit == "vox" else float(s))
            except ValueError:
                kind = "an integer" if unit == "vox" else "a number"
                raise VolumeError(f"cannot parse ROI {text!r}: {s!r} on axis {'zyx'[axis]} is not {kind}") from None
        if bounds[1] <= bounds[0]:
            raise VolumeError(f"ROI {text!r} ({unit}) is empty on axis {'zyx'[axis]}: end must be > begin")
        begin.append(bounds[0])
        end.append(bounds[1])
    if unit == "vox":
        roi = Roi(tuple(int(b) for b in begin), tuple(int(e - b) for b, e in zip(begin, end)))
    else:
        roi = Roi.from_nm(begin, end, volume.voxel_size, volume.offset)
    if not volume.roi.contains(roi):
        extent = f"{_fmt_box(vol_b, vol_e)} ({'nm, world coordinates' if unit == 'nm' else 'voxels'})"
        raise VolumeError(
            f"ROI {text!r} ({unit}) lies outside the volume {volume.path or '<in memory>'}, which spans {extent}"
        )
    return roi
