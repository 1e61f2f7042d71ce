"""The one output contract: what counts as foreground in a volume.

Every command that reads a prediction, a mask or labels asks :func:`foreground`:

* float probabilities (any float dtype): ``p >= threshold`` (NaN is background);
* uint8 probabilities written by ``organet predict`` (``attrs["kind"] == "probability"``,
  value = round(255 p)): ``v >= ceil(255 * threshold)``, which equals thresholding the
  float probability it came from (:func:`probability_to_uint8`);
* everything else (bool masks, uint8 0/1 masks, integer label or instance images):
  ``v > 0``; the threshold does not apply.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from organet.errors import InputError

Kind = Literal["probability", "probability_uint8", "binary"]


def _attrs(v: Any) -> Mapping[str, Any]:
    a = getattr(v, "attrs", None)
    if isinstance(a, Mapping):
        return a
    try:
        return dict(a) if a is not None else {}
    except (TypeError, ValueError):
        return {}


def prediction_kind(volume: Any) -> Kind:
    """How a volume (anything with ``dtype`` and optional ``attrs``) is read.

    ``"probability"`` for float dtypes; ``"probability_uint8"`` for uint8 marked
    ``kind: probability`` (in ``attrs["organet"]`` or ``attrs``); ``"binary"`` (foreground
    ``> 0``) for bool and every other integer type.
    """
    dtype = np.dtype(volume.dtype)
    if np.issubdtype(dtype, np.floating):
        return "probability"
    if dtype == np.uint8:
        attrs = _attrs(volume)
        nested = attrs.get("organet")
        kind = nested.get("kind") if isinstance(nested, Mapping) else None
        if kind is None:
            kind = attrs.get("kind")
        return "probability_uint8" if kind == "probability" else "binary"
    if dtype == np.bool_ or np.issubdtype(dtype, np.integer):
        return "binary"
    raise InputError(f"cannot read a volume of dtype {dtype} as a prediction, mask or labels")


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float in [0, 1]; :class:`~organet.errors.InputError` otherwise."""
    t = float(threshold)
    if not (0.0 <= t <= 1.0):
        raise InputError(f"threshold {threshold!r} must lie in [0, 1] (a foreground probability)")
    return t


def uint8_cut(threshold: float) -> int:
    """The uint8 value from which a probability stored as ``round(255 p)`` is foreground."""
    return int(math.ceil(check_threshold(threshold) * 255 - 1e-9))


def probability_to_uint8(p: np.ndarray) -> np.ndarray:
    """Foreground probability in [0, 1] -> uint8 0..255 (rounded; NaN -> 0)."""
    return np.round(np.nan_to_num(np.clip(p, 0.0, 1.0), nan=0.0) * 255.0).astype(np.uint8)


def foreground(data: np.ndarray, kind: Kind, threshold: float = 0.5) -> np.ndarray:
    """Boolean foreground of ``data`` read as ``kind`` (see :func:`prediction_kind`)."""
    if kind == "probability":
        return np.asarray(data, np.float64) >= check_threshold(threshold)
    if kind == "probability_uint8":
        return np.asarray(data) >= uint8_cut(threshold)
    return np.asarray(data) > 0


def as_probability(data: np.ndarray, kind: Kind, where: str = "the input") -> np.ndarray:
    """Foreground probability (float64, [0, 1]) of data read as ``kind``
    (:func:`prediction_kind`): uint8 ``v`` marked as a probability is ``v / 255``, floats are
    clipped (NaN = 0); binary masks are refused (:class:`~organet.errors.InputError` naming ``where``)."""
    if kind == "probability_uint8":
        return np.asarray(data, np.float64) / 255.0
    if kind == "probability":
        return np.clip(np.nan_to_num(np.asarray(data, np.float64), nan=0.0), 0.0, 1.0)
    raise not_probability(where)


def not_probability(where: str) -> InputError:
    """The error for a binary mask given where a probability is needed."""
    return InputError(
        f"{where} is not a probability (it reads as a binary mask); expected OUT.zarr/probability of "
        "`organet predict` (uint8 0-255) or float probabilities in [0, 1]"
    )


__all__ = [
    "Kind",
    "as_probability",
    "check_threshold",
    "foreground",
    "not_probability",
    "prediction_kind",
    "probability_to_uint8",
    "uint8_cut",
]
