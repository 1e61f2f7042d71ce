"""Resampling between voxel grids: block means on disk and on read, any-ratio (non-integer,
anisotropic) area and linear resampling checked against direct whole-volume references,
and prediction with a model of another voxel size than the input (seam-free across blocks)."""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import pytest
import torch

from organet.errors import IncompatibleError
from organet.model.checkpoint import Checkpoint, save_checkpoint
from organet.model.unet import UNet, UNetConfig, init_weights
from organet.predict import Predictor, predict_volume
from organet.preprocess import Normalization
from organet.volumes import Roi, VolumeError, convert_volume, open_volume, write_ome_zarr
from organet.volumes.ome_zarr import mask_path
from organet.volumes.resample import (
    DownsampledVolume,
    GridMap,
    ResampledVolume,
    axis_scale,
    downsample_block,
)


def _write(path, a, vs=(5, 5, 5), off=(0, 0, 0), chunks=(8, 8, 8)):
    with write_ome_zarr(path) as w:
        w.create_image(None, a.shape, a.dtype, vs, off, chunks).write(..., a)
    return open_volume(path)


def test_downsample_block_modes_and_partial_blocks():
    a = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    m = downsample_block(a, (2, 2, 2), "mean")
    assert m.shape == (2, 2, 3) and m.dtype == np.uint8
    assert m[0, 0, 0] == math.floor(a[:2, :2, :2].mean() + 0.5)  # means round half up
    assert m[1, 1, 2] == math.floor(a[2:, 2:, 4:].mean() + 0.5) == 57  # partial block: only the voxels it has
    lab = np.zeros((4, 4, 4), np.uint8)
    lab[:2, :2, :2] = 1
    lab[2:, 2:, 2:][0, 0, 0] = 1  # 1 of 8 voxels
    maj = downsample_block(lab, 2, "majority")
    assert maj[0, 0, 0] == 1 and maj[1, 1, 1] == 0
    assert downsample_block(lab, 2, "max")[1, 1, 1] == 1
    np.testing.assert_array_equal(downsample_block(lab * 255, 2, "majority"), maj)  # masks stored as 0/255
    with pytest.raises(VolumeError, match="mode"):
        downsample_block(a, (2, 2, 2), cast(Any, "median"))


def test_axis_scale_snaps_near_whole_ratios_only():
    assert axis_scale(10, 5) == 2 and axis_scale(10, 4.9) == 2  # 2.04 -> 2
    assert axis_scale(5, 5.2) == 1  # 4 % apart: same grid
    assert axis_scale(10, 40) == 0.25  # finer model: 4 model voxels per input voxel
    assert axis_scale(10, 5.9) == pytest.approx(10 / 5.9)
    assert axis_scale(8, 5) == pytest.approx(1.6)
    with pytest.raises(VolumeError, match="positive"):
        axis_scale(10, 0)


class _Grid:
    def __init__(self, a, vs, off=(0.0, 0.0, 0.0)):
        self.shape, self.voxel_size, self.offset = a.shape, vs, off


def _scipy_linear(a, m):
    """Direct reference: scipy's trilinear interpolation of the whole volume at the target centres."""
    from scipy import ndimage

    axes = [np.clip((np.arange(n) + 0.5) * k - 0.5, 0, s - 1) for n, k, s in zip(m.shape, m.scale, a.shape)]
    return ndimage.map_coordinates(a.astype(np.float64), np.meshgrid(*axes, indexing="ij"), order=1, mode="nearest")


def _area_reference(a, m):
    """Direct reference: per axis, the exact integral of the piecewise-constant source over
    each target voxel (cumulative sums interpolated with np.interp), divided by its length."""
    out = a.astype(np.float64)
    for ax, (n_t, k) in enumerate(zip(m.shape, m.scale)):
        n = out.shape[ax]
        c = np.concatenate([np.zeros_like(np.take(out, [0], axis=ax)), np.cumsum(out, axis=ax)], axis=ax)
        lo = np.minimum(np.arange(n_t) * k, n - 1)
        hi = np.minimum((np.arange(n_t) + 1) * k, n)
        moved = np.moveaxis(c, ax, -1)
        f = lambda x, moved=moved, n=n: np.apply_along_axis(lambda r: np.interp(x, np.arange(n + 1), r), -1, moved)  # noqa: E731
        out = np.moveaxis((f(hi) - f(lo)) / (hi - lo), -1, ax)
    return out


@pytest.mark.parametrize(
    ("source_vs", "target_vs"),
    [((40, 5.9, 5.9), (10, 10, 10)), ((5, 5, 5), (8, 12.5, 3.3)), ((4, 4, 5.2), (10, 10, 10))],
)
def test_resampling_by_any_ratio_matches_whole_volume_references(source_vs, target_vs):
    a = np.random.default_rng(3).random((13, 41, 37)).astype(np.float32)
    m = GridMap.between(_Grid(a, source_vs, (7.0, 0.0, -3.0)), target_vs)
    assert m.shape == tuple(int(np.ceil(n / k - 1e-9)) for n, k in zip(a.shape, m.scale))
    # the target grid starts where the source starts (voxel edges, nm)
    for o, v, to, tv in zip((7.0, 0.0, -3.0), source_vs, m.offset, m.voxel_size):
        assert to - tv / 2 == pytest.approx(o - v / 2)
    whole = m.resample(a, (0, 0, 0), (0, 0, 0), m.shape, "linear")
    np.testing.assert_allclose(whole, _scipy_linear(a, m), atol=2e-6)
    area = m.resample(a, (0, 0, 0), (0, 0, 0), m.shape, "area")
    np.testing.assert_allclose(area, _area_reference(a, m), atol=2e-6)
    # auto: area along coarser axes, linear along finer ones
    assert m.modes() == tuple("area" if k > 1 else "linear" for k in m.scale)
    # any block computed alone equals the whole, bit for bit
    lo, hi = (1, 2, 3), tuple(max(2, n - 2) for n in m.shape)
    for mode in ("linear", "area", "auto"):
        box = m.source_box(lo, hi, mode)
        part = m.resample(a[box.slices()], box.offset, lo, hi, mode)
        full = m.resample(a, (0, 0, 0), (0, 0, 0), m.shape, mode)
        np.testing.assert_array_equal(part, full[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]])
    back = m.inverse()
    assert back.shape[0] >= a.shape[0] and back.offset == pytest.approx((7.0, 0.0, -3.0))


def test_resampled_volume_views(tmp_path):
    rng = np.random.default_rng(4)
    a = rng.integers(0, 255, (12, 40, 44), dtype=np.uint8)
    vol = _write(tmp_path / "a.zarr", a, vs=(40, 5.9, 5.9))
    view = ResampledVolume(vol, (10, 10, 10))
    m = GridMap.between(vol, (10, 10, 10))
    assert view.shape == m.shape == (48, 24, 26) and view.dtype == np.uint8
    whole = view.read(view.roi)
    np.testing.assert_array_equal(whole, np.floor(m.resample(a, (0, 0, 0), (0, 0, 0), m.shape) + 0.5).astype(np.uint8))
    np.testing.assert_array_equal(view.read(Roi((5, 3, 4), (20, 10, 9))), whole[5:25, 3:13, 4:13])
    # labels: the same weights, then >= 0.5; whole factors are exactly the block means of convert
    lab = (rng.random((12, 40, 44)) > 0.7).astype(np.uint8)
    lv = ResampledVolume(_write(tmp_path / "l.zarr", lab, vs=(40, 5.9, 5.9)), (10, 10, 10), "majority")
    got = lv.read(lv.roi)
    assert set(np.unique(got).tolist()) <= {0, 1}
    np.testing.assert_array_equal(got, (m.resample(lab, (0, 0, 0), (0, 0, 0), m.shape) >= 0.5).astype(np.uint8))
    v5 = ResampledVolume(_write(tmp_path / "b.zarr", a, vs=(5, 5, 5)), (10, 10, 10))
    np.testing.assert_array_equal(v5.read(v5.roi), downsample_block(a, 2))
    np.testing.assert_array_equal(v5.read(v5.roi), DownsampledVolume(open_volume(tmp_path / "b.zarr"), 2).read(v5.roi))


def test_convert_downsample_geometry_and_content(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (21, 30, 33), dtype=np.uint8)
    _write(tmp_path / "a.zarr", a, off=(100, 0, 50))
    v = convert_volume(
        tmp_path / "a.zarr",
        tmp_path / "b.zarr",
        downsample=(1, 2, 3),
        chunks=(4, 8, 8),
        roi=Roi((1, 0, 0), (20, 30, 33)),
    )
    assert v.shape == (20, 15, 11)
    assert v.voxel_size == (5, 10, 15)
    # OME translation is the centre of voxel 0: it moves by (f - 1) / 2 fine voxels
    assert v.offset == (105, 2.5, 55)
    np.testing.assert_array_equal(v.read(), downsample_block(a[1:], (1, 2, 3)))
    assert v.attrs["downsampled"] == {"factor": [1, 2, 3], "mode": "mean", "source_voxel_size": [5.0, 5.0, 5.0]}


def test_downsampled_view_reads_only_what_it_needs(tmp_path):
    a = np.random.default_rng(1).integers(0, 255, (17, 19, 23), dtype=np.uint8)
    vol = _write(tmp_path / "a.zarr", a)
    view = DownsampledVolume(vol, 2)
    assert view.shape == (9, 10, 12) and view.voxel_size == (10, 10, 10)
    whole = downsample_block(a, 2)
    np.testing.assert_array_equal(view.read(Roi((3, 4, 5), (6, 6, 7))), whole[3:9, 4:10, 5:12])


def test_linear_back_to_a_finer_grid_is_exact_on_ramps():
    zz, yy, xx = np.meshgrid(np.arange(6), np.arange(7), np.arange(8), indexing="ij")
    coarse = (2 * zz + 3 * yy - xx).astype(np.float32)
    m = GridMap(coarse.shape, (10.0, 10.0, 15.0), (0.0, 0.0, 0.0), (5.0, 5.0, 5.0))  # factors 2, 2, 3 finer
    whole = m.resample(coarse, (0, 0, 0), (0, 0, 0), m.shape)
    assert whole.shape == (12, 14, 24)
    j = np.arange(12)
    cz = (j + 0.5) / 2 - 0.5
    inner = (cz >= 0) & (cz <= 5)  # a ramp is reproduced between the first and last coarse centres
    np.testing.assert_allclose(whole[inner, 5, 7] - whole[inner, 5, 7][0], 2 * (cz[inner] - cz[inner][0]), atol=1e-5)


CFG = UNetConfig(num_fmaps=2, downsample_factors=((2, 2, 2),))
TILE = (34, 34, 34)


@pytest.fixture()
def coarse_model(tmp_path):
    torch.manual_seed(0)
    net = UNet(CFG)
    save_checkpoint(
        Checkpoint(CFG, TILE, (10.0, 10.0, 10.0), Normalization(), "mito", net.state_dict()), tmp_path / "m10.pt"
    )
    return net, tmp_path / "m10.pt"


def test_predict_with_a_coarser_model_resamples_input_and_output(tmp_path, coarse_model):
    net, ckpt = coarse_model
    a = np.random.default_rng(2).integers(0, 255, (40, 44, 46), dtype=np.uint8)
    vol = _write(tmp_path / "raw.zarr", a, off=(50, 0, 0))
    roi = Roi((3, 5, 7), (30, 33, 36))
    res = predict_volume(
        Predictor.from_checkpoint(ckpt, tile=TILE, device="cpu"), vol, tmp_path / "p.zarr", roi=roi, chunks=(8, 8, 8)
    )
    prob = open_volume(tmp_path / "p.zarr/probability")
    assert prob.shape == roi.shape and prob.voxel_size == (5, 5, 5)
    assert prob.offset == (65, 25, 35)
    assert prob.attrs["resampled"]["to_model"]["scale"] == [2, 2, 2]
    assert prob.attrs["resampled"]["to_model"]["modes"] == ["area"] * 3
    assert prob.attrs["resampled"]["back"]["modes"] == ["linear"] * 3
    # reference: whole coarse volume predicted in memory, interpolated, cropped
    coarse = DownsampledVolume(vol, (2, 2, 2))
    np.testing.assert_array_equal(coarse.read(Roi((0, 0, 0), coarse.shape)), downsample_block(a, 2))
    ref_predictor = Predictor.from_model(net, coarse.voxel_size, Normalization(), tile=TILE, device="cpu")
    p = ref_predictor.predict(coarse, Roi((0, 0, 0), coarse.shape))
    back = GridMap.between(coarse, vol.voxel_size)
    ref = back.resample(p, (0, 0, 0), roi.offset, roi.end)
    got = prob.read().astype(np.float32) / 255
    assert np.abs(got - ref).max() <= 0.5 / 255 + 1e-6
    mask = open_volume(mask_path(tmp_path / "p.zarr")).read()
    np.testing.assert_array_equal(mask, (prob.read() >= 128).astype(np.uint8))
    assert res.blocks >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m10.pt", "p.zarr", "raw.zarr"]  # no partial, no ledger


def test_sbem_volume_under_a_10nm_model_is_seam_free_across_blocks(tmp_path):
    """5.9 x 5.9 x 40 nm input, isotropic 10 nm model: z is resampled 4x finer, y and x
    1.69x coarser, and back; small blocks give the bytes of one block and of the in-memory
    reference (the whole volume resampled, predicted and resampled back)."""
    from scipy import ndimage

    torch.manual_seed(0)
    net = UNet(CFG)
    init_weights(net, "kaiming")
    with torch.no_grad():  # a contrasty random network: its output varies over the volume
        for w in net.parameters():
            w.mul_(3.0)
    ckpt = tmp_path / "m10.pt"
    save_checkpoint(Checkpoint(CFG, TILE, (10.0, 10.0, 10.0), Normalization(), "mito", net.state_dict()), ckpt)
    smooth = ndimage.gaussian_filter(np.random.default_rng(5).random((9, 70, 64)), (0.5, 3, 3))
    a = np.round(255 * (smooth - smooth.min()) / np.ptp(smooth)).astype(np.uint8)
    vol = _write(tmp_path / "sbem.zarr", a, vs=(40, 5.9, 5.9), chunks=(3, 16, 16))
    outs = {}
    for name, block in (("one", (9, 70, 64)), ("small", (3, 16, 16))):
        pred = Predictor.from_checkpoint(ckpt, tile=TILE, device="cpu")
        predict_volume(pred, vol, tmp_path / f"{name}.zarr", chunks=(3, 16, 16), block_shape=block)
        outs[name] = open_volume(tmp_path / f"{name}.zarr/probability").read()
    np.testing.assert_array_equal(outs["small"], outs["one"])
    prob = open_volume(tmp_path / "small.zarr/probability")
    assert prob.shape == a.shape and prob.voxel_size == (40, 5.9, 5.9)
    assert prob.attrs["resampled"]["to_model"]["modes"] == ["linear", "area", "area"]
    assert prob.attrs["resampled"]["back"]["modes"] == ["area", "linear", "linear"]
    model_view = ResampledVolume(vol, (10, 10, 10))
    p = Predictor.from_model(net, (10, 10, 10), Normalization(), tile=TILE, device="cpu").predict(
        model_view, model_view.roi
    )
    ref = GridMap.between(model_view, vol.voxel_size).resample(p, (0, 0, 0), (0, 0, 0), a.shape)
    assert np.abs(outs["one"].astype(np.float32) / 255 - ref).max() <= 0.5 / 255 + 1e-5
    assert np.ptp(outs["one"]) > 20  # the network's output varies: the comparison is not trivially equal


def test_extreme_voxel_size_ratios_are_refused(tmp_path, coarse_model):
    _, ckpt = coarse_model
    _write(tmp_path / "r.zarr", np.zeros((40, 40, 40), np.uint8), vs=(0.1, 0.1, 0.1))
    with pytest.raises(IncompatibleError, match="more than 64x apart"):
        predict_volume(Predictor.from_checkpoint(ckpt, device="cpu"), tmp_path / "r.zarr", tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()
