"""Tests for organet.train.augment (small blocks; whole file runs in a few seconds)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from organet.train.augment import (
    AugmentConfig,
    AugmentParams,
    apply_params,
    augment,
    center_crop,
    coordinate_map,
    sample_params,
    transpose_axes_from_voxel_size,
    upstream_shape,
)

IN = (36, 36, 36)
OUT = (20, 20, 20)
ALL_OFF = dict(mirror=False, transpose=False, elastic=False, rotate_xy=False, intensity=False)


def _spheres(shape, rng, n=14) -> np.ndarray:
    """Binary uint8 volume with random ellipsoids."""
    zz, yy, xx = np.indices(shape, dtype=np.float32)
    lab = np.zeros(shape, dtype=bool)
    for _ in range(n):
        c = rng.uniform(0, shape)
        r = rng.uniform(3, 9, size=3)
        lab |= ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
    return lab.astype(np.uint8)


def _block(shape, seed=0):
    rng = np.random.default_rng(seed)
    labels = _spheres(shape, rng)
    raw = (2.0 * labels - 1.0).astype(np.float32)
    mask = (rng.random(shape) < 0.8).astype(np.uint8)
    return raw, labels, mask


def _random_block(shape, seed=0):
    rng = np.random.default_rng(seed)
    raw = rng.uniform(-1, 1, shape).astype(np.float32)
    labels = (rng.random(shape) < 0.5).astype(np.uint8)
    mask = (rng.random(shape) < 0.5).astype(np.uint8)
    return raw, labels, mask


# --------------------------------------------------------------------------- upstream shape


def test_upstream_shape_identity_and_parity():
    assert upstream_shape(IN, AugmentConfig(enabled=False)) == IN
    assert upstream_shape((7, 20, 33), AugmentConfig(**ALL_OFF)) == (7, 20, 33)
    for shape in [IN, (7, 20, 33), (204, 204, 204), (84, 84, 84)]:
        up = upstream_shape(shape, AugmentConfig())
        assert all((u - n) % 2 == 0 and u >= n for u, n in zip(up, shape))
    # rotation only enlarges y, x; elastic adds 2 * ceil(4 * sigma) everywhere
    up = upstream_shape((204, 204, 204), AugmentConfig(elastic=False))
    assert up[0] == 204 and up[1] == up[2] == 290  # 2 * 101.5 * sqrt(2) + 1 = 288.1 -> 289 -> even: 290
    up = upstream_shape((204, 204, 204), AugmentConfig(rotate_xy=False))
    assert up == (220, 220, 220)
    small = upstream_shape((204, 204, 204), AugmentConfig(elastic=False, rotation_max=0.1))
    assert 204 < small[1] < 290


@pytest.mark.parametrize("in_shape", [IN, (12, 30, 44), (9, 21, 21)])
def test_upstream_shape_contains_all_coordinates(in_shape):
    cfg = AugmentConfig(control_point_spacing=8)
    up = upstream_shape(in_shape, cfg)
    hy, hx = (in_shape[1] - 1) / 2, (in_shape[2] - 1) / 2
    worst = math.atan2(hx, hy)  # angle at which the rotated half-diagonal is axis-aligned
    params = [sample_params(in_shape, in_shape, cfg, np.random.default_rng(s)) for s in range(6)]
    for angle in (worst, math.pi / 2 - worst, cfg.rotation_max):
        p = sample_params(in_shape, in_shape, cfg, np.random.default_rng(99))
        p.angle = angle
        p.jitter = np.where(np.random.default_rng(1).random(p.jitter.shape) < 0.5, -50.0, 50.0)  # hits the clip
        params.append(p)
    for p in params:
        c = coordinate_map(in_shape, up, p, cfg)
        assert c.shape == (3, *in_shape)
        for a in range(3):
            assert c[a].min() >= 0 and c[a].max() <= up[a] - 1, (a, c[a].min(), c[a].max(), up)
    # the clipped extreme jitter actually reaches the margin
    c = coordinate_map(in_shape, up, params[-1], cfg)
    p0 = AugmentParams(angle=params[-1].angle)
    d = c - coordinate_map(in_shape, up, p0, cfg)
    assert np.abs(d).max() == pytest.approx(cfg.elastic_margin, abs=1e-3)


def test_coordinate_map_identity():
    up = (40, 44, 50)
    c = coordinate_map(IN, up, AugmentParams(), AugmentConfig())
    ref = np.indices(IN, dtype=np.float32) + np.array([2, 4, 7], dtype=np.float32)[:, None, None, None]
    np.testing.assert_array_equal(c, ref)


# --------------------------------------------------------------------------- identity / simple augment


def test_identity_when_disabled():
    up = upstream_shape(IN, AugmentConfig())
    raw, labels, mask = _random_block(up)
    for cfg in (AugmentConfig(enabled=False), AugmentConfig(**ALL_OFF)):
        r, l, m = augment(raw, labels, mask, IN, OUT, cfg, np.random.default_rng(3))
        np.testing.assert_array_equal(r, center_crop(raw, IN))
        np.testing.assert_array_equal(l, center_crop(labels, OUT))
        np.testing.assert_array_equal(m, center_crop(mask, OUT))
        assert r.dtype == np.float32 and l.dtype == np.uint8 and m.dtype == np.uint8
        assert r.flags.c_contiguous and l.flags.c_contiguous and m.flags.c_contiguous
    # outputs never alias the inputs, even when the block is exactly in_shape
    raw2, labels2, mask2 = _random_block(IN)
    r, l, m = augment(raw2, labels2, mask2, IN, IN, AugmentConfig(enabled=False), np.random.default_rng(0))
    r[...] = 5
    l[...] = 1
    assert raw2.max() <= 1 and labels2.min() == 0


def test_center_crop():
    a = np.arange(7 * 8 * 9).reshape(7, 8, 9)
    c = center_crop(a, (3, 4, 5))
    np.testing.assert_array_equal(c, a[2:5, 2:6, 2:7])
    assert center_crop(np.zeros((2, 10, 10)), (4, 4)).shape == (2, 4, 4)
    with pytest.raises(ValueError):
        center_crop(a, (8, 4, 4))


def test_mirror_transpose_only_is_exact_flip_and_permutation():
    up = (30, 30, 30)
    raw, labels, mask = _random_block(up)
    cfg = AugmentConfig(elastic=False, rotate_xy=False, intensity=False)
    crops = center_crop(raw, (24, 24, 24)), center_crop(labels, (16, 16, 16)), center_crop(mask, (16, 16, 16))
    seen = set()
    for seed in range(12):
        r, l, m = augment(raw, labels, mask, (24, 24, 24), (16, 16, 16), cfg, np.random.default_rng(seed))
        matches = []
        for flips in itertools.product([False, True], repeat=3):
            ax = tuple(a for a in range(3) if flips[a])
            for perm in itertools.permutations(range(3)):
                ops = [np.transpose(np.flip(c, ax), perm) for c in crops]
                if all(np.array_equal(o, x) for o, x in zip(ops, (r, l, m))):
                    matches.append((flips, perm))
        assert len(matches) == 1, matches
        seen.add(matches[0])
    assert len(seen) > 3  # the draws really vary


def test_transpose_only_among_given_axes():
    cfg = AugmentConfig(mirror=False, elastic=False, rotate_xy=False, intensity=False)
    perms = {
        sample_params(IN, OUT, cfg, np.random.default_rng(s), transpose_axes=(1, 2)).permutation for s in range(40)
    }
    assert perms == {(0, 1, 2), (0, 2, 1)}
    # z-distinct data: every z slice has its own offset, so mixing z in would be visible
    up = (30, 30, 30)
    raw, labels, mask = _random_block(up)
    raw += np.arange(30, dtype=np.float32)[:, None, None] * 10
    for s in range(8):
        r, _, _ = augment(raw, labels, mask, (24,) * 3, (16,) * 3, cfg, np.random.default_rng(s), transpose_axes=(1, 2))
        crop = center_crop(raw, (24,) * 3)
        assert np.array_equal(r, crop) or np.array_equal(r, crop.transpose(0, 2, 1))
    # axes of different size are never exchanged (shapes must stay fixed)
    shapes = {sample_params((8, 12, 12), (4, 8, 8), cfg, np.random.default_rng(s)).permutation for s in range(40)}
    assert shapes == {(0, 1, 2), (0, 2, 1)}
    assert transpose_axes_from_voxel_size((5, 5, 5)) == (0, 1, 2)
    assert transpose_axes_from_voxel_size((10, 5, 5)) == (1, 2)
    assert transpose_axes_from_voxel_size((3, 4, 5)) == ()
    with pytest.raises(ValueError):
        sample_params(IN, OUT, cfg, np.random.default_rng(0), transpose_axes=(1, 1))


# --------------------------------------------------------------------------- rotation / elastic


@pytest.mark.parametrize("in_shape,out_shape", [((8, 10, 10), (4, 6, 6)), ((7, 11, 11), (3, 5, 5))])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_rotation_by_multiples_of_90_degrees_is_rot90(in_shape, out_shape, k):
    up = (in_shape[0] + 2, in_shape[1] + 8, in_shape[2] + 8)
    raw, labels, mask = _random_block(up, seed=k)
    cfg = AugmentConfig(**ALL_OFF)
    r, l, m = apply_params(raw, labels, mask, in_shape, out_shape, AugmentParams(angle=k * math.pi / 2), cfg)
    np.testing.assert_array_equal(r, np.rot90(center_crop(raw, in_shape), k, axes=(1, 2)))
    np.testing.assert_array_equal(l, np.rot90(center_crop(labels, out_shape), k, axes=(1, 2)))
    np.testing.assert_array_equal(m, np.rot90(center_crop(mask, out_shape), k, axes=(1, 2)))


def test_labels_stay_aligned_with_raw():
    cfg = AugmentConfig(intensity=False, control_point_spacing=12)
    up = upstream_shape(IN, cfg)
    raw, labels, mask = _block(up)
    changed = 0
    for seed in range(5):
        r, l, m = augment(raw, labels, mask, IN, OUT, cfg, np.random.default_rng(seed))
        agree = np.mean((center_crop(r, OUT) > 0) == (l == 1))
        assert agree >= 0.98, (seed, agree)
        assert set(np.unique(l)) <= {0, 1} and set(np.unique(m)) <= {0, 1}
        changed += not np.array_equal(l, center_crop(labels, OUT))
        # mask is sampled by the very same map as labels
        _, l2, m2 = augment(raw, labels, labels, IN, OUT, cfg, np.random.default_rng(seed))
        np.testing.assert_array_equal(m2, l2)
        np.testing.assert_array_equal(l2, l)
    assert changed >= 4
    # with intensity on the sign still matches (|shift| < scale)
    r, l, _ = augment(raw, labels, mask, IN, OUT, AugmentConfig(control_point_spacing=12), np.random.default_rng(7))
    assert np.mean((center_crop(r, OUT) > 0) == (l == 1)) >= 0.98


def test_elastic_only_is_bounded_smooth_deformation():
    cfg = AugmentConfig(mirror=False, transpose=False, rotate_xy=False, intensity=False, control_point_spacing=12)
    up = upstream_shape(IN, cfg)
    p = sample_params(IN, OUT, cfg, np.random.default_rng(0))
    assert p.angle == 0 and p.jitter is not None and p.jitter.shape == (3, 4, 4, 4)
    d = coordinate_map(IN, up, p, cfg) - coordinate_map(IN, up, AugmentParams(), cfg)
    assert np.abs(d).mean() > 0.3 and np.abs(d).max() <= cfg.elastic_margin
    assert np.abs(np.diff(d, axis=3)).max() < 1.0  # neighbouring voxels move together


# --------------------------------------------------------------------------- intensity, checks, determinism


def test_intensity_scale_shift_and_clip():
    raw, labels, mask = _random_block(IN)
    raw *= 0.9
    on = AugmentConfig(mirror=False, transpose=False, elastic=False, rotate_xy=False)
    p = AugmentParams(scale=1.1, shift=0.12)
    crop = center_crop(raw, IN)
    m = crop.mean()
    # gunpowder's rule on [0, 1] data, mapped to [-1, 1]: scale about the mean, shift doubled
    expected = m + (crop - m) * 1.1 + 2 * 0.12
    r, _, _ = apply_params(raw, labels, mask, IN, OUT, p, on)
    np.testing.assert_allclose(r, np.clip(expected, -1, 1), atol=1e-5)
    assert r.max() == 1.0
    r, _, _ = apply_params(raw, labels, mask, IN, OUT, p, AugmentConfig(intensity_clip=False))
    np.testing.assert_allclose(r, expected, atol=1e-5)
    # the same change computed in gunpowder's [0, 1] space
    a = (crop + 1) / 2
    a2 = a.mean() + (a - a.mean()) * 1.1 + 0.12
    np.testing.assert_allclose(r, 2 * a2 - 1, atol=1e-5)
    for s in range(10):
        q = sample_params(IN, OUT, on, np.random.default_rng(s))
        assert 0.85 <= q.scale <= 1.15 and -0.15 <= q.shift <= 0.15


def test_non_binary_labels_raise():
    up = upstream_shape(IN, AugmentConfig())
    raw, labels, mask = _random_block(up)
    bad = labels.copy()
    bad[0, 0, 0] = 2
    with pytest.raises(ValueError, match="labels must be binary"):
        augment(raw, bad, mask, IN, OUT, AugmentConfig(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="mask must be binary"):
        augment(raw, labels, bad, IN, OUT, AugmentConfig(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="labels must be binary"):
        augment(raw, labels.astype(np.float32) * 0.5, mask, IN, OUT, AugmentConfig(), np.random.default_rng(0))
    # bool labels are fine
    _, l, _ = augment(raw, labels.astype(bool), mask, IN, OUT, AugmentConfig(), np.random.default_rng(0))
    assert l.dtype == np.uint8 and set(np.unique(l)) <= {0, 1}


def test_shape_errors():
    raw, labels, mask = _random_block(IN)
    with pytest.raises(ValueError, match="even difference"):
        augment(raw, labels, mask, IN, (21, 20, 20), AugmentConfig(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="smaller than in_shape"):
        augment(raw, labels, mask, (40, 36, 36), OUT, AugmentConfig(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="equal shapes"):
        augment(raw, labels[1:], mask, IN, OUT, AugmentConfig(), np.random.default_rng(0))


def test_deterministic_given_seed():
    cfg = AugmentConfig(control_point_spacing=12)
    up = upstream_shape(IN, cfg)
    raw, labels, mask = _block(up)
    a = augment(raw, labels, mask, IN, OUT, cfg, np.random.default_rng(123))
    b = augment(raw, labels, mask, IN, OUT, cfg, np.random.default_rng(123))
    c = augment(raw, labels, mask, IN, OUT, cfg, np.random.default_rng(124))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


# --------------------------------------------------------------------------- one schema: the config's augment section


def test_the_config_section_is_the_augmenter_settings():
    from pydantic import ValidationError

    from organet.config import ConfigError, parse_config

    cfg = parse_config({"data": {"train": [{"raw": "r.tif", "labels": "l.tif"}]}, "augment": {"jitter_sigma": 3}})
    assert isinstance(cfg.augment, AugmentConfig) and cfg.augment.elastic_margin == 12
    with pytest.raises(ConfigError, match="augment.intensity_scale"):
        parse_config({"data": {"train": [{"raw": "r", "labels": "l"}]}, "augment": {"intensity_scale": [1.2, 0.8]}})
    with pytest.raises(ConfigError, match="augment.elastc: unknown key"):
        parse_config({"data": {"train": [{"raw": "r", "labels": "l"}]}, "augment": {"elastc": False}})
    with pytest.raises(ValidationError):
        AugmentConfig(control_point_spacing=0)


def test_settings_for_a_voxel_size():
    a = AugmentConfig()
    assert a.for_voxel_size((5, 5, 5)) == a and a.transpose_axes((5, 5, 5)) == (0, 1, 2)
    aniso = a.for_voxel_size((10, 5, 5))  # z differs: y and x still mix, rotation in y-x is fine
    assert aniso.transpose and aniso.rotate_xy and a.transpose_axes((10, 5, 5)) == (1, 2)
    odd = a.for_voxel_size((5, 4, 6))  # no two axes alike, y-x voxels not square
    assert not odd.transpose and not odd.rotate_xy and a.transpose_axes((5, 4, 6)) == ()
    assert a.transpose_axes((5, 5, 5.001)) == (0, 1, 2)  # 1e-3 relative tolerance
    off = AugmentConfig(transpose=False, rotate_xy=False).for_voxel_size((5, 5, 5))
    assert not off.transpose and not off.rotate_xy
    assert a.rotate_xy and a.transpose  # the original is unchanged
