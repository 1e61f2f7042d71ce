"""The one foreground rule: uint8 probabilities threshold exactly like the floats they came from."""

from __future__ import annotations

import numpy as np
import pytest

from organet.errors import InputError
from organet.volumes import Volume
from organet.volumes.foreground import foreground, prediction_kind, probability_to_uint8, uint8_cut


def test_uint8_probabilities_threshold_like_their_floats():
    p = np.linspace(0, 1, 100_001, dtype=np.float64)
    u = probability_to_uint8(p)
    assert probability_to_uint8(np.array([0.0, 0.4999, 0.5, 0.50001, 1.0, np.nan])).tolist() == [
        0,
        127,
        128,
        128,
        255,
        0,
    ]
    for t in (0.0, 0.1, 0.25, 0.5, 0.7, 0.99, 1.0):
        rounded = np.round(p * 255) / 255  # what the uint8 value stands for
        np.testing.assert_array_equal(foreground(u, "probability_uint8", t), rounded >= t - 1e-12, err_msg=str(t))
    assert uint8_cut(0.5) == 128 and uint8_cut(128 / 255) == 128 and uint8_cut(0.0) == 0 and uint8_cut(1.0) == 255


def test_kinds_and_their_foreground():
    prob = Volume(np.array([[[0, 127, 128, 255]]], np.uint8), attrs={"kind": "probability"})
    mask = Volume(np.array([[[0, 1, 2, 0]]], np.uint8))
    floats = Volume(np.array([[[0.2, 0.5, np.nan, 0.9]]], np.float32))
    labels = Volume(np.array([[[0, 7, 0, 70000]]], np.uint32))
    assert [prediction_kind(v) for v in (prob, mask, floats, labels)] == [
        "probability_uint8",
        "binary",
        "probability",
        "binary",
    ]
    assert foreground(prob.read(), "probability_uint8").ravel().tolist() == [False, False, True, True]
    assert foreground(mask.read(), "binary", 0.9).ravel().tolist() == [False, True, True, False]
    assert foreground(floats.read(), "probability").ravel().tolist() == [False, True, False, True]
    with pytest.raises(InputError, match=r"threshold 1.5 must lie in \[0, 1\]"):
        foreground(floats.read(), "probability", 1.5)
    with pytest.raises(InputError, match="dtype complex64"):
        prediction_kind(Volume(np.zeros((1, 1, 1), np.complex64)))
