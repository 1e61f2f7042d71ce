"""Where the sample is: blocks without sample are skipped by blockwise prediction (and read 0)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from organet.errors import InputError
from organet.volumes import Roi, Volume

_RULE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*$")
_OPS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    ">": np.greater,
    ">=": np.greater_equal,
    "<": np.less,
    "<=": np.less_equal,
    "==": np.equal,
    "!=": np.not_equal,
}


def parse_rule(rule: str) -> tuple[str, float]:
    """``">0"``, ``"<= 250"`` ... -> (operator, value); raises ValueError otherwise."""
    m = _RULE.match(rule)
    if not m:
        raise InputError(f"mask rule {rule!r} is not understood; write e.g. '>0', '>=20' or '<250'")
    return m.group(1), float(m.group(2))


@dataclass(frozen=True)
class SampleMask:
    """Where the sample is: a mask volume (any resolution, aligned by nm) and/or a rule.

    ``rule`` (e.g. ``">0"``) is applied to the mask volume (default ``"!=0"``) or, without
    a volume, to the raw intensities. A block is predicted when any voxel in its extent
    passes; other blocks are skipped and read as 0. Outside the mask volume = no sample.
    """

    volume: Volume | None = None
    rule: str | None = None

    def __post_init__(self) -> None:
        if self.volume is None and self.rule is None:
            raise InputError("a sample mask needs a mask volume or a rule")
        if self.rule is not None:
            parse_rule(self.rule)

    def describe(self) -> dict[str, Any]:
        return {"volume": self.volume.path if self.volume is not None else None, "rule": self.rule}

    def has_sample(self, raw: Volume, block: Roi) -> bool:
        """True when the block (raw voxels) contains sample."""
        op, value = parse_rule(self.rule or "!=0")
        if self.volume is None:
            return bool(_OPS[op](raw.read(block), value).any())
        m = self.volume
        begin_nm = [o + b * v for o, b, v in zip(raw.offset, block.offset, raw.voxel_size)]
        end_nm = [o + e * v for o, e, v in zip(raw.offset, block.end, raw.voxel_size)]
        lo = [max(0, math.floor((b - o) / v + 1e-6)) for b, o, v in zip(begin_nm, m.offset, m.voxel_size)]
        hi = [min(n, math.ceil((e - o) / v - 1e-6)) for e, o, v, n in zip(end_nm, m.offset, m.voxel_size, m.shape)]
        if any(b <= a for a, b in zip(lo, hi)):
            return False
        return bool(_OPS[op](m.read(Roi(lo, [b - a for a, b in zip(lo, hi)])), value).any())

    def voxels(self, raw: Volume, block: Roi) -> np.ndarray:
        """Where the sample is, voxel by voxel: a boolean array of ``block.shape`` (voxels
        of ``raw``, z, y, x). The rule is applied to the mask voxel holding each voxel's
        centre (aligned by nm; outside the mask volume = no sample) or, without a mask
        volume, to the raw intensities."""
        op, value = parse_rule(self.rule or "!=0")
        if self.volume is None:
            return np.asarray(_OPS[op](raw.read(block), value), bool)
        m = self.volume
        idx = []
        for a in range(3):
            centres = raw.offset[a] + (np.arange(block.offset[a], block.end[a]) + 0.5) * raw.voxel_size[a]
            idx.append(np.floor((centres - m.offset[a]) / m.voxel_size[a]).astype(np.int64))
        inside = [(i >= 0) & (i < n) for i, n in zip(idx, m.shape)]
        out = np.zeros(block.shape, bool)
        if not all(k.any() for k in inside):
            return out
        lo = [int(i[k].min()) for i, k in zip(idx, inside)]
        hi = [int(i[k].max()) + 1 for i, k in zip(idx, inside)]
        sub = m.read(Roi(lo, [b - a for a, b in zip(lo, hi)]))
        out[np.ix_(*inside)] = _OPS[op](sub[np.ix_(*(i[k] - o for i, k, o in zip(idx, inside, lo)))], value)
        return out
