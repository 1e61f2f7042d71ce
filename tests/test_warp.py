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


@pytest.mark.parametrize("order", [0, 1])
def test_mirror_and_transpose_in_the_same_pass(order):
    in_shape, up, centre, cos, sin, disp = _case(6, in_shape=(26, 26, 26))
    a = np.random.default_rng(6).uniform(size=up).astype(np.float32)
    if order == 0:
        a = (a > 0.5).astype(np.uint8)
    box = (slice(3, 21), slice(3, 21), slice(3, 21))
    plain = warp_sample(a, box, in_shape, centre, cos, sin, disp, order, a.dtype)
    for mirror in [(True, False, False), (False, True, True), (True, True, True)]:
        for perm in [(0, 1, 2), (0, 2, 1), (2, 0, 1), (1, 2, 0)]:
            got = warp_sample(a, box, in_shape, centre, cos, sin, disp, order, a.dtype, mirror, perm)
            flips = tuple(x for x in range(3) if mirror[x])
            np.testing.assert_array_equal(got, np.transpose(np.flip(plain, flips), perm))
            assert got.flags.c_contiguous
    # a box that is not a cube: the output takes the permuted shape
    box = (slice(0, 5), slice(2, 9), slice(1, 12))
    plain = warp_sample(a, box, in_shape, centre, cos, sin, disp, order, a.dtype)
    got = warp_sample(a, box, in_shape, centre, cos, sin, disp, order, a.dtype, (False, True, False), (2, 0, 1))
    np.testing.assert_array_equal(got, np.transpose(np.flip(plain, 1), (2, 0, 1)))


def test_control_point_spline_equals_scipy_zoom():
    """The elastic field's cubic spline through the control points, done with one matrix
    per axis, equals ``ndi.zoom`` (order 3, mode nearest) of the 3-D control grid."""
    from organet.train.augment import AugmentConfig, AugmentParams, _n_points, _Warp

    cfg = AugmentConfig(jitter_sigma=3.0)
    in_shape = (44, 60, 52)
    jit = np.random.default_rng(7).normal(0, 3.0, (3, 3, 4, 5))
    w = _Warp.build(in_shape, (60, 80, 72), AugmentParams(jitter=jit), cfg)
    n_sub = tuple(_n_points(n, cfg.elastic_subsample) for n in in_shape)
    zoom = tuple(s / c for s, c in zip(n_sub, jit.shape[1:]))
    want = np.stack([ndi.zoom(jit[d], zoom, order=3, mode="nearest") for d in range(3)])
    want = np.clip(want, -12, 12).astype(np.float32)
    assert w.disp_sub is not None and w.disp_sub.shape == want.shape
    np.testing.assert_allclose(w.disp_sub, want, atol=1e-5)


@pytest.mark.parametrize("threads", [2, 3, 50])
def test_threads_split_the_box_without_changing_the_result(threads):
    in_shape, up, centre, cos, sin, disp = _case(8, in_shape=(26, 26, 26))
    a = np.random.default_rng(8).uniform(size=up).astype(np.float32)
    box = (slice(2, 24), slice(0, 26), slice(5, 20))
    for mirror, perm in [((False, False, False), (0, 1, 2)), ((True, False, True), (2, 0, 1))]:
        one = warp_sample(a, box, in_shape, centre, cos, sin, disp, 1, np.float32, mirror, perm)
        many = warp_sample(a, box, in_shape, centre, cos, sin, disp, 1, np.float32, mirror, perm, threads=threads)
        np.testing.assert_array_equal(many, one)
