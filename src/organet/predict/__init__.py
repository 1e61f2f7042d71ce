"""Prediction: the one :class:`Predictor` (raw voxels -> probabilities) and the one
driver :func:`predict_volume` (a volume -> OME-Zarr probability + mask + pyramids,
in-process or on Dask, resumable)."""

from .predictor import Predictor, model_grid_map
from .run import PredictionResult, predict_volume
from .sample_mask import SampleMask

__all__ = ["PredictionResult", "Predictor", "SampleMask", "model_grid_map", "predict_volume"]
