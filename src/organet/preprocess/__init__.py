"""Preprocessing: intensity normalization of raw EM volumes."""

from organet.preprocess.normalize import Normalization

__all__ = ["Normalization"]
