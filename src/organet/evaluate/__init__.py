"""Voxel-wise binary segmentation metrics of predicted organelle masks against ground truth.

As in the ASEM paper (incasem): voxels near the true object boundary can be excluded
(:func:`exclusion_zone`), probabilities are thresholded as ``p >= t``, and large volumes are
evaluated blockwise with an exact result (:func:`evaluate_volumes`). The checkpoints of a
training run are scored together, mean ± sample SD (:func:`evaluate_checkpoints`). Axis order
is (z, y, x); all sizes and distances are in voxels.
"""

from organet.evaluate.blockwise import EvaluationResult, evaluate_volumes, prediction_kind
from organet.evaluate.checkpoints import (
    CheckpointEvaluation,
    CheckpointScore,
    default_output_dir,
    evaluate_checkpoints,
    select_checkpoints,
)
from organet.evaluate.exclusion import EXCLUSION_ZONE_WIDTHS, exclusion_zone, normalize_exclusion, resolve_exclusion
from organet.evaluate.metrics import Counts, binary_counts, evaluate_arrays
from organet.evaluate.plot import plot_checkpoint_scores, plot_threshold_sweep

__all__ = [
    "EXCLUSION_ZONE_WIDTHS",
    "CheckpointEvaluation",
    "CheckpointScore",
    "Counts",
    "EvaluationResult",
    "binary_counts",
    "default_output_dir",
    "evaluate_checkpoints",
    "evaluate_arrays",
    "evaluate_volumes",
    "exclusion_zone",
    "normalize_exclusion",
    "plot_checkpoint_scores",
    "plot_threshold_sweep",
    "prediction_kind",
    "resolve_exclusion",
    "select_checkpoints",
]
