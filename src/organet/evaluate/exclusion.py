"""Boundary exclusion zone: voxels next to the true object boundary that are ignored in metrics.

All distances are in voxels; arrays are in (z, y, x) order (any dimensionality works).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

import numpy as np
from scipy import ndimage

from organet.errors import InputError
from organet.organelles import ORGANELLES, organelle

ExclusionMetric = Literal["euclidean", "taxicab"]

#: Half-widths (voxels) of the boundary exclusion zone per organelle (canonical names, see
#: :data:`organet.organelles.ORGANELLES`), as used by incasem (ASEM, Gallusser et al. 2023).
#: Each value applies both inwards and outwards.
EXCLUSION_ZONE_WIDTHS: Mapping[str, int] = MappingProxyType({o.name: o.exclusion_zone for o in ORGANELLES.values()})


def _distance_to(target: np.ndarray, metric: ExclusionMetric) -> np.ndarray:
    """Distance (voxels) from every voxel to the nearest voxel where ``target`` is True.

    ``target`` must contain at least one True voxel. Only voxels inside the array count.
    """
    if metric == "euclidean":
        return ndimage.distance_transform_edt(~target)
    if metric == "taxicab":
        return ndimage.distance_transform_cdt(~target, metric="taxicab")
    raise InputError(f"unknown exclusion metric {metric!r}; use 'euclidean' or 'taxicab'")


def exclusion_zone(
    truth: np.ndarray,
    inner: int,
    outer: int,
    metric: ExclusionMetric = "taxicab",
) -> np.ndarray:
    """Boolean mask of voxels to IGNORE around the boundary of the true foreground.

    A voxel is ignored if it is
      * foreground (``truth > 0``) and its distance to the nearest background voxel is
        ``<= inner`` voxels, or
      * background and its distance to the nearest foreground voxel is ``<= outer`` voxels.

    Distances are measured between voxel centres, in voxels (isotropic grid), with the
    taxicab (city-block, 6-connected) metric by default, which reproduces incasem's
    ``iterations``-based binary dilation/erosion exactly so F1 compares with the seed;
    ``metric="euclidean"`` ignores a slightly larger zone (diagonal neighbours). Only voxels inside the
    array count: the array border is not an object boundary, so an all-foreground or
    all-background array ignores nothing, and ``inner == outer == 0`` ignores nothing.

    Args:
        truth: ground truth, any shape (z, y, x); foreground where ``> 0``.
        inner: exclusion width inside objects (voxels, >= 0).
        outer: exclusion width outside objects (voxels, >= 0).
        metric: ``"euclidean"`` or ``"taxicab"``.

    Returns:
        bool array of ``truth.shape``; True = ignore.
    """
    inner, outer = int(inner), int(outer)
    if inner < 0 or outer < 0:
        raise InputError(f"exclusion widths must be >= 0, got inner={inner}, outer={outer}")
    fg = np.asarray(truth) > 0
    zone = np.zeros(fg.shape, dtype=bool)
    has_fg = bool(fg.any())
    has_bg = not bool(fg.all())
    if not (has_fg and has_bg):
        return zone  # no boundary anywhere
    if inner > 0:
        # distance of each voxel to the nearest background voxel
        zone |= fg & (_distance_to(~fg, metric) <= inner)
    if outer > 0:
        zone |= ~fg & (_distance_to(fg, metric) <= outer)
    return zone


def normalize_exclusion(
    exclusion: tuple[int, int] | int | str | None,
) -> tuple[int, int] | None:
    """Turn an exclusion spec into ``(inner, outer)`` voxels, or None for no exclusion.

    Accepts ``(inner, outer)``, a single int (same width both ways), an organelle name
    (canonical or alias, see :mod:`organet.organelles`), or None. ``(0, 0)`` is returned as None.
    """
    if exclusion is None:
        return None
    if isinstance(exclusion, str):
        inner = outer = organelle(exclusion, "exclusion").exclusion_zone
    elif isinstance(exclusion, (int, np.integer)):
        inner = outer = int(exclusion)
    else:
        inner, outer = (int(v) for v in exclusion)
    if inner < 0 or outer < 0:
        raise InputError(f"exclusion widths must be >= 0, got ({inner}, {outer})")
    if inner == 0 and outer == 0:
        return None
    return inner, outer


def resolve_exclusion(
    exclusion: tuple[int, int] | int | str | None,
    organelle_name: str | None,
) -> tuple[int, int] | None:
    """The exclusion zone to use, ``(inner, outer)`` voxels, or None for none.

    ``exclusion`` wins when given (``(0, 0)`` or ``0`` say "no exclusion"); None means
    the default of ``organelle_name`` (its width inwards and outwards, e.g. ``np`` -> (1, 1)),
    or no exclusion when no organelle is known either. Raises
    :class:`~organet.errors.InputError` for an unknown organelle (naming the nearest).
    """
    if exclusion is not None:
        return normalize_exclusion(exclusion)
    if organelle_name is None:
        return None
    return normalize_exclusion(organelle(organelle_name).exclusion_zone)
