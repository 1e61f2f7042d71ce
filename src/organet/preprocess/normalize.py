"""Intensity normalization of raw EM data to the network's range [-1, 1].

The normalization is part of a model: it is stored in every checkpoint and
prediction applies the same one, so train and predict cannot disagree.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from organet.errors import IncompatibleError, InputError


class Normalization(BaseModel):
    """Maps raw intensities linearly so that ``low -> -1`` and ``high -> +1``.

    ``method="dtype_range"`` takes low/high from the integer dtype (0..255 for
    uint8); ``method="linear"`` uses the given ``low``/``high``. Values outside
    are not clipped (intensity augmentation may push them a little beyond).

    ``preprocess`` names the contrast normalization the raw data had before this
    mapping (``organet preprocess``: ``{method: clahe, clip_limit: 0.02, kernel: 128}``;
    None = untouched raw). Training checks it against the raw volume's metadata and
    the checkpoint keeps it, so prediction can refuse input preprocessed differently.
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["dtype_range", "linear"] = "dtype_range"
    low: float | None = None
    high: float | None = None
    preprocess: dict[str, Any] | None = None

    @field_validator("preprocess", mode="before")
    @classmethod
    def _canonical_preprocess(cls, v: Any) -> Any:
        return canonical_preprocess(v)

    @model_validator(mode="after")
    def _check(self) -> Normalization:
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

    def apply(self, raw: np.ndarray, dtype: np.dtype | None = None, where: str = "") -> np.ndarray:
        """Normalized float32 copy of ``raw`` (dtype of the source volume if given).

        Float data holding NaN or infinity raise :class:`~organet.errors.InputError` naming
        ``where`` (the volume): a network fed them writes garbage without a word.
        """
        lo, hi = self.bounds(dtype if dtype is not None else raw.dtype)
        if raw.dtype.kind == "f" and not np.isfinite(raw).all():
            bad = np.argwhere(~np.isfinite(raw))[0].tolist()
            raise InputError(
                f"{where or 'raw data'} contains NaN or infinite values ({raw.dtype}, e.g. at {bad} of the block "
                "read); expected finite intensities: fill or mask them first"
            )
        out = raw.astype(np.float32)
        out -= lo
        out *= 2.0 / (hi - lo)
        out -= 1.0
        return out

    def describe(self) -> str:
        pre = f"{describe_preprocess(self.preprocess)}, then " if self.preprocess else ""
        if self.method == "linear":
            return f"{pre}linear [{self.low}, {self.high}] -> [-1, 1]"
        return f"{pre}dtype range -> [-1, 1]"


def canonical_preprocess(value: Any) -> dict[str, Any] | None:
    """A preprocessing record in canonical form (``PreprocessParams.record()``); None for none.

    Accepts None, a method name (``"clahe"``, defaults for the rest) or a dict.
    """
    from organet.preprocess.intensity import PreprocessParams

    if value is None:
        return None
    if isinstance(value, str):
        value = {"method": value}
    if isinstance(value, PreprocessParams):
        rec = value.record()
    elif isinstance(value, dict):
        rec = PreprocessParams(**value).record()
    else:
        raise InputError(f"preprocess must be a method name or a mapping, got {value!r}")
    return None if rec["method"] == "none" else rec


def describe_preprocess(rec: dict[str, Any] | None) -> str:
    if not rec:
        return "no contrast normalization"
    params = ", ".join(f"{k} {v}" for k, v in rec.items() if k != "method")
    return f"{rec['method']}{f' ({params})' if params else ''}"


ON_THE_FLY = ("clahe-incasem",)
"""Preprocessing methods prediction computes itself from untouched raw (blockwise, no global statistics)."""


def check_preprocess(
    expected: dict[str, Any] | None, attrs: dict[str, Any], where: str, what: str, *, on_the_fly: bool = False
) -> dict[str, Any] | None:
    """Raise IncompatibleError if volume ``attrs`` record another preprocessing than ``expected``.

    ``attrs`` is ``Volume.attrs`` (``organet preprocess`` writes ``attrs["preprocess"]``);
    ``what`` names who expects it (``"the model"``, ``"the config"``). With ``on_the_fly``
    (prediction) an input without preprocessing is accepted when ``expected`` is a method
    of :data:`ON_THE_FLY`; the canonical record to compute is then returned (else None).
    """
    try:
        actual = canonical_preprocess(attrs.get("preprocess"))
    except ValueError as e:
        raise InputError(f"{where}: unreadable preprocessing metadata: {e}") from None
    want = canonical_preprocess(expected)
    if actual == want:
        return None
    if on_the_fly and actual is None and want is not None and want["method"] in ON_THE_FLY:
        return want
    raise IncompatibleError(
        f"{where} has {describe_preprocess(actual)} but {what} expects {describe_preprocess(expected)}; "
        "use an input normalized the same way (organet preprocess), or set normalization.preprocess to match"
    )
