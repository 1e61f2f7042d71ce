"""Voxel-wise binary segmentation metrics of predicted organelle masks against ground truth.

As in the ASEM paper (incasem): voxels near the true object boundary can be excluded
(:func:`exclusion_zone`), probabilities are thresholded as ``p >= t``, and large volumes are
evaluated blockwise with an exact result (:func:`evaluate_volumes`). Axis order is (z, y, x);
all sizes and distances are in voxels.
"""

from organet.evaluate.blockwise import EvaluationResult, evaluate_volumes, prediction_kind
from organet.evaluate.exclusion import EXCLUSION_ZONE_WIDTHS, exclusion_zone, normalize_exclusion
from organet.evaluate.metrics import Counts, binary_counts, evaluate_arrays
from organet.evaluate.plot import plot_threshold_sweep

__all__ = [
    "EXCLUSION_ZONE_WIDTHS",
    "Counts",
    "EvaluationResult",
    "binary_counts",
    "evaluate_arrays",
    "evaluate_volumes",
    "exclusion_zone",
    "normalize_exclusion",
    "plot_threshold_sweep",
    "prediction_kind",
]
