"""Intensity normalization of raw EM data to the network's range [-1, 1].

The normalization is part of a model: it is stored in every checkpoint and
prediction applies the same one, so train and predict cannot disagree.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator


class Normalization(BaseModel):
    """Maps raw intensities linearly so that ``low -> -1`` and ``high -> +1``.

    ``method="dtype_range"`` takes low/high from the integer dtype (0..255 for
    uint8); ``method="linear"`` uses the given ``low``/``high``. Values outside
    are not clipped (intensity augmentation may push them a little beyond).
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["dtype_range", "linear"] = "dtype_range"
    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _check(self) -> "Normalization":
        if self.method == "linear":
            if self.low is None or self.high is None:
                raise ValueError("method 'linear' needs both 'low' and 'high'")
            if not self.high > self.low:
                raise ValueError(f"'high' ({self.high}) must be greater than 'low' ({self.low})")
        return self

    def bounds(self, dtype: np.dtype) -> tuple[float, float]:
        """(low, high) raw values that map to -1 and +1."""
        if self.method == "linear":
            return float(self.low), float(self.high)  # type: ignore[arg-type]
        dtype = np.dtype(dtype)
        if dtype.kind in "ui":
            info = np.iinfo(dtype)
            return float(info.min), float(info.max)
        if dtype.kind == "b":
            return 0.0, 1.0
        # float data is assumed to be in [0, 1]
        return 0.0, 1.0

    def apply(self, raw: np.ndarray, dtype: np.dtype | None = None) -> np.ndarray:
        """Normalized float32 copy of ``raw`` (dtype of the source volume if given)."""
        lo, hi = self.bounds(dtype if dtype is not None else raw.dtype)
        out = raw.astype(np.float32)
        out -= lo
        out *= 2.0 / (hi - lo)
        out -= 1.0
        return out

    def describe(self) -> str:
        if self.method == "linear":
            return f"linear [{self.low}, {self.high}] -> [-1, 1]"
        return "dtype range -> [-1, 1]"
