"""The compiled augmentation warp (organet.train.warp) against scipy and numpy written out."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from organet.train.warp import warp_coordinates, warp_sample


def _case(seed: int, in_shape=(23, 30, 27), up=(31, 44, 41), coarse=(4, 6, 5)):
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, 2 * math.pi)
    centre = (np.array(up) - 1) / 2 + rng.uniform(-2, 2, 3)
    disp = rng.normal(0, 2.5, (3, *coarse)).astype(np.float32)
    return in_shape, up, centre, math.cos(angle), math.sin(angle), disp


def _box(in_shape, lo=(0, 0, 0)):
    return tuple(slice(a, n) for a, n in zip(lo, in_shape))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_is_rotation_plus_corner_aligned_trilinear_displacement(seed):
    in_shape, _, centre, cos, sin, disp = _case(seed)
    got = warp_coordinates(_box(in_shape), in_shape, centre, cos, sin, disp)
    idx = np.indices(in_shape, dtype=np.float64)
    # displacement: trilinear through the coarse grid, whose corners sit on the input grid's corners
    at = np.stack([idx[a] * (disp.shape[1 + a] - 1) / (in_shape[a] - 1) for a in range(3)])
    d = np.stack([ndi.map_coordinates(disp[c].astype(np.float64), at, order=1) for c in range(3)])
    p = idx - ((np.array(in_shape) - 1) / 2)[:, None, None, None]
    want = np.stack([p[0] + centre[0], cos * p[1] + sin * p[2] + centre[1], -sin * p[1] + cos * p[2] + centre[2]])
    np.testing.assert_allclose(got, want + d, atol=1e-9)


def test_map_without_displacement_and_of_a_sub_box():
    in_shape, _, centre, cos, sin, disp = _case(3)
    full = warp_coordinates(_box(in_shape), in_shape, centre, cos, sin, disp)
    sub = warp_coordinates((slice(5, 17), slice(3, 30), slice(10, 12)), in_shape, centre, cos, sin, disp)
    np.testing.assert_array_equal(sub, full[:, 5:17, 3:30, 10:12])
    ident = warp_coordinates(_box(in_shape), in_shape, (11, 15, 13), 1.0, 0.0, None)
    np.testing.assert_array_equal(ident, np.indices(in_shape) + np.array([0, 0.5, 0])[:, None, None, None])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_samples_equal_scipy_at_the_same_coordinates(seed):
    """Linear and nearest sampling equal ``map_coordinates`` (mode reflect) at the map's
    coordinates, including points outside the block (the up shape is smaller than the
    input grid on purpose)."""
    in_shape, _, centre, cos, sin, disp = _case(seed, up=(18, 25, 22))
    rng = np.random.default_rng(10 + seed)
    raw = rng.uniform(-1, 1, (18, 25, 22)).astype(np.float32)
    lab = (rng.uniform(size=raw.shape) > 0.5).astype(np.uint8)
    box = _box(in_shape)
    c = warp_coordinates(box, in_shape, centre, cos, sin, disp)
    assert (c[1] < 0).any() and (c[1] > raw.shape[1] - 1).any(), "the case must leave the block"
    got = warp_sample(raw, box, in_shape, centre, cos, sin, disp, 1, np.float32)
    want = ndi.map_coordinates(raw.astype(np.float64), c, order=1, mode="reflect", prefilter=False)
    np.testing.assert_allclose(got, want, atol=2e-6)
    got0 = warp_sample(lab, box, in_shape, centre, cos, sin, disp, 0, np.uint8)
    assert got0.dtype == np.uint8
    np.testing.assert_array_equal(got0, ndi.map_coordinates(lab, c, order=0, mode="reflect", prefilter=False))


def test_sample_box_is_the_part_of_the_full_grid():
    in_shape, up, centre, cos, sin, disp = _case(4)
    raw = np.random.default_rng(4).uniform(size=up).astype(np.float32)
    full = warp_sample(raw, _box(in_shape), in_shape, centre, cos, sin, disp, 1, np.float32)
    box = (slice(4, 19), slice(7, 23), slice(6, 21))
    part = warp_sample(raw, box, in_shape, centre, cos, sin, disp, 1, np.float32)
    np.testing.assert_array_equal(part, full[box])


def test_bad_order_and_displacement():
    in_shape, up, centre, cos, sin, disp = _case(5)
    raw = np.zeros(up, np.float32)
    with pytest.raises(ValueError, match="order must be 0 or 1"):
        warp_sample(raw, _box(in_shape), in_shape, centre, cos, sin, disp, 3, np.float32)
    with pytest.raises(ValueError, match=r"shape \(3, sz, sy, sx\)"):
        warp_sample(raw, _box(in_shape), in_shape, centre, cos, sin, disp[:2], 1, np.float32)
