"""Geometry types and validation helpers: the one place for ``Shape3``/``Vec3`` and the
voxel-size tolerance. Axis order is (z, y, x) throughout; sizes in nm unless named ``_vox``."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

from organet.errors import IncompatibleError, VolumeError

Vec3 = tuple[float, float, float]
"""Three floats (z, y, x), e.g. a voxel size or offset in nm."""
Shape3 = tuple[int, int, int]
"""Three integers (z, y, x), e.g. a shape, offset or factor in voxels."""

VOXEL_SIZE_RTOL = 1e-3
"""Relative tolerance under which two voxel sizes count as the same (5.0 vs 5.004 nm)."""


def same_voxel_size(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when two voxel sizes (nm, z, y, x) agree within :data:`VOXEL_SIZE_RTOL` on every axis."""
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=VOXEL_SIZE_RTOL) for x, y in zip(a, b))


def check_same_voxel_size(a: Sequence[float], b: Sequence[float], what_a: str, what_b: str, hint: str = "") -> None:
    """Raise :class:`IncompatibleError` unless :func:`same_voxel_size` (``hint`` is appended)."""
    if not same_voxel_size(a, b):
        raise IncompatibleError(
            f"{what_a} has voxel size {fmt_vec(a)} nm but {what_b} has {fmt_vec(b)} nm" + (f"; {hint}" if hint else "")
        )


# Length units -> nanometres. Keys are lower case.
_UNIT_TO_NM: dict[str, float] = {
    **dict.fromkeys(["nm", "nanometer", "nanometers", "nanometre", "nanometres"], 1.0),
    **dict.fromkeys(
        ["um", "µm", "μm", "\\u00b5m", "micron", "microns", "micrometer", "micrometers", "micrometre", "micrometres"],
        1e3,
    ),
    **dict.fromkeys(["å", "angstrom", "angstroms", "ångström"], 0.1),
    **dict.fromkeys(["pm", "picometer", "picometers", "picometre"], 1e-3),
    **dict.fromkeys(["mm", "millimeter", "millimeters", "millimetre"], 1e6),
    **dict.fromkeys(["cm", "centimeter", "centimeters", "centimetre"], 1e7),
    **dict.fromkeys(["m", "meter", "meters", "metre"], 1e9),
}


def unit_to_nm(unit: Any) -> float | None:
    """Factor converting a length in ``unit`` to nanometres; None for unknown units."""
    if not isinstance(unit, str):
        return None
    return _UNIT_TO_NM.get(unit.strip().lower())


def as_vec3(value: Any, what: str, *, positive: bool = False) -> Vec3:
    """Validate a (z, y, x) triple of finite floats; a pair (y, x) gets z = 1.0 prepended."""
    try:
        vals = [float(v) for v in value]
    except (TypeError, ValueError):
        raise VolumeError(f"{what} must be 3 numbers (z, y, x), got {value!r}") from None
    if len(vals) == 2:
        vals = [1.0, *vals]
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise VolumeError(f"{what} must be 3 finite numbers (z, y, x), got {value!r}")
    if positive and not all(v > 0 for v in vals):
        raise VolumeError(f"{what} must be positive, got {value!r}")
    return (vals[0], vals[1], vals[2])


def as_int3(value: Any, what: str, *, minimum: int | None = None) -> Shape3:
    """Validate a (z, y, x) triple of integers (optionally each >= minimum)."""
    try:
        if isinstance(value, (str, bytes)) or len(value) != 3:
            raise TypeError
        vals = tuple(operator.index(v) for v in value)
        if any(isinstance(v, bool) for v in value):
            raise TypeError
    except TypeError:
        raise VolumeError(f"{what} must be 3 integers (z, y, x), got {value!r}") from None
    if minimum is not None and any(v < minimum for v in vals):
        raise VolumeError(f"{what} must be >= {minimum} on every axis, got {value!r}")
    return (vals[0], vals[1], vals[2])


def fmt_vec(values: Sequence[float]) -> str:
    """Short '(a, b, c)' rendering with %g floats."""
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
