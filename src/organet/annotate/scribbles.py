"""Simulated annotators: sparse scribbles drawn from a ground truth (for tests and benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from organet.annotate.graphcut import BACKGROUND, OBJECT, AnnotationError
from organet.volumes import Roi
from organet.volumes.foreground import foreground, prediction_kind


def merge_scribbles(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Scribbles ``old`` with the labelled voxels of ``new`` drawn over them (the newer stroke wins)."""
    return np.where(new > 0, new, old).astype(np.uint8)


def simulate_scribbles(
    truth: np.ndarray,
    planes: Sequence[int],
    strokes_per_object: int = 1,
    background_strokes: int = 6,
    margin: int = 3,
    object_margin: int | None = None,
    length: int = 15,
    width: int = 1,
    seed: int = 0,
) -> np.ndarray:
    """Scribbles (0/1/2) on the given z planes of a (z, y, x) ground truth, like a human would draw.

    On each plane: ``strokes_per_object`` short straight strokes (``length`` voxels, ``width``
    voxels thick, random direction) centred at random points at least ``margin`` voxels
    inside each object cross-section, and ``background_strokes`` strokes in the background
    at least ``margin`` voxels from any object (``object_margin`` overrides the margin
    inside objects; 0 lets strokes reach the object's own membrane). Stroke voxels falling outside the allowed
    (eroded) region are dropped, so no stroke crosses a boundary. Objects are the foreground
    of ``truth`` as :func:`organet.volumes.foreground.foreground` reads it (labels ``> 0``).
    """
    kind = prediction_kind(truth)
    rng = np.random.default_rng(seed)
    out = np.zeros(truth.shape, np.uint8)
    fp = np.ones((2 * margin + 1,) * 2, bool)
    om = margin if object_margin is None else object_margin
    fpo = np.ones((2 * om + 1,) * 2, bool)
    for z in planes:
        fg = foreground(truth[z], kind)
        inside = ndimage.binary_erosion(fg, fpo) if om else fg
        outside = ndimage.binary_erosion(~fg, fp, border_value=1) if margin else ~fg
        lab, n = ndimage.label(inside)
        groups = [(lab == i, OBJECT, strokes_per_object) for i in range(1, n + 1)]
        groups.append((outside, BACKGROUND, background_strokes))
        for allowed, value, count in groups:
            if not allowed.any():
                continue
            for _ in range(count):
                _stroke(out[z], allowed, value, length, width, rng)
    return out


def simulate_corrections(
    pred: np.ndarray,
    truth: np.ndarray,
    planes: Sequence[int],
    min_area: int = 50,
    margin: int = 2,
    length: int = 41,
    width: int = 3,
    max_per_plane: int = 20,
    seed: int = 1,
) -> np.ndarray:
    """Correction strokes a user would add after looking at a result on the given planes.

    On each plane, the wrong regions (``pred != truth``) are eroded by ``margin`` voxels; each
    remaining component of at least ``min_area`` voxels (largest first, at most
    ``max_per_plane``) gets one stroke with the true label (1 object, 2 background).
    Returns scribbles (0/1/2) to merge with the previous ones. Foreground of ``pred`` and
    ``truth`` as :func:`organet.volumes.foreground.foreground` reads them (labels and
    masks ``> 0``, float probabilities ``>= 0.5``).
    """
    pred_kind, truth_kind = prediction_kind(pred), prediction_kind(truth)
    rng = np.random.default_rng(seed)
    out = np.zeros(truth.shape, np.uint8)
    fp = np.ones((2 * margin + 1,) * 2, bool)
    for z in planes:
        fg_truth = foreground(truth[z], truth_kind)
        wrong = foreground(pred[z], pred_kind) != fg_truth
        wrong = ndimage.binary_erosion(wrong, fp) if margin else wrong
        lab, n = ndimage.label(wrong)
        if not n:
            continue
        sizes = np.bincount(lab.ravel())[1:]
        order = np.argsort(sizes)[::-1][:max_per_plane]
        for i in order:
            if sizes[i] < min_area:
                break
            region = lab == i + 1
            is_obj = fg_truth[region].mean() > 0.5
            value = OBJECT if is_obj else BACKGROUND
            _stroke(out[z], region & (fg_truth == is_obj), value, length, width, rng)
    return out


def _stroke(
    plane: np.ndarray, allowed: np.ndarray, value: int, length: int, width: int, rng: np.random.Generator
) -> None:
    ys, xs = np.nonzero(allowed)
    k = rng.integers(len(ys))
    ang = rng.uniform(0, np.pi)
    t = np.arange(-(length // 2), length // 2 + 1)
    for o in range(-(width // 2), width - width // 2):
        py = np.round(ys[k] + t * np.sin(ang) + o * np.cos(ang)).astype(int)
        px = np.round(xs[k] + t * np.cos(ang) - o * np.sin(ang)).astype(int)
        ok = (py >= 0) & (py < plane.shape[0]) & (px >= 0) & (px < plane.shape[1])
        py, px = py[ok], px[ok]
        keep = allowed[py, px]
        plane[py[keep], px[keep]] = value


def scribbles_in(scribbles: Any, raw_shape: Sequence[int], roi: Roi, what: str = "the ROI") -> np.ndarray:
    """The scribbles of ``roi`` from a scribble volume on the raw's grid (``raw_shape``) or
    one of the ROI's own shape (voxels, z, y, x); ``what`` names the ROI in the error."""
    if tuple(scribbles.shape) == tuple(raw_shape):
        return np.asarray(scribbles.read(roi))
    if tuple(scribbles.shape) == tuple(roi.shape):
        return np.asarray(scribbles.read())
    raise AnnotationError(
        f"scribbles {scribbles.path} have shape {tuple(scribbles.shape)}; expected the raw's {tuple(raw_shape)} "
        f"or {what}'s {tuple(roi.shape)} (z, y, x)"
    )
