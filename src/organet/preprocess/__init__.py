"""Preprocessing: contrast normalization (linear, histeq, 3-D CLAHE), masks, and the
intensity mapping to the network's range (stored in checkpoints)."""

from organet.preprocess.intensity import PreprocessParams, normalize_array, preprocess_volume
from organet.preprocess.normalize import Normalization, canonical_preprocess, check_preprocess

__all__ = [
    "Normalization",
    "PreprocessParams",
    "canonical_preprocess",
    "check_preprocess",
    "normalize_array",
    "preprocess_volume",
]
