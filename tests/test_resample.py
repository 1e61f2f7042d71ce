"""Integer-factor resampling: block means on disk and on read, linear upsampling,
and prediction with a model trained at a coarser voxel size than the input."""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import pytest
import torch

from organet.errors import IncompatibleError
from organet.model.checkpoint import Checkpoint, save_checkpoint
from organet.model.unet import UNet, UNetConfig
from organet.predict import Predictor, predict_volume
from organet.preprocess import Normalization
from organet.volumes import Roi, VolumeError, convert_volume, open_volume, write_ome_zarr
from organet.volumes.resample import (
    DownsampledVolume,
    coarse_cover,
    downsample_block,
    integer_factor,
    upsample_linear,
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


def test_integer_factor():
    assert integer_factor((10, 10, 10), (5, 5, 5)) == (2, 2, 2)
    assert integer_factor((10, 10, 10.4), (5, 5, 5.2)) == (2, 2, 2)
    assert integer_factor((8, 8, 8), (5, 5, 5)) is None
    assert integer_factor((5, 5, 5), (10, 10, 10)) is None


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


def test_upsample_linear_is_exact_on_ramps_and_blockwise_equals_whole():
    zz, yy, xx = np.meshgrid(np.arange(6), np.arange(7), np.arange(8), indexing="ij")
    coarse = (2 * zz + 3 * yy - xx).astype(np.float32)
    f = (2, 2, 3)
    whole = upsample_linear(coarse, (0, 0, 0), coarse.shape, f, (0, 0, 0), (12, 14, 24))
    # a ramp is reproduced exactly between the first and last coarse voxel centres
    j = np.arange(12)
    cz = (j + 0.5) / 2 - 0.5
    inner = (cz >= 0) & (cz <= 5)
    np.testing.assert_allclose(whole[inner, 5, 7] - whole[inner, 5, 7][0], 2 * (cz[inner] - cz[inner][0]), atol=1e-5)
    lo_f, hi_f = (3, 5, 7), (10, 13, 20)
    lo, hi = coarse_cover(lo_f, hi_f, f, coarse.shape)
    part = upsample_linear(coarse[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], lo, coarse.shape, f, lo_f, hi_f)
    np.testing.assert_allclose(part, whole[3:10, 5:13, 7:20], atol=1e-6)


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
    assert prob.attrs["resampled"]["factor"] == [2, 2, 2]
    # reference: whole coarse volume predicted in memory, interpolated, cropped
    coarse = DownsampledVolume(vol, (2, 2, 2))
    np.testing.assert_array_equal(coarse.read(Roi((0, 0, 0), coarse.shape)), downsample_block(a, 2))
    ref_predictor = Predictor.from_model(net, coarse.voxel_size, Normalization(), tile=TILE, device="cpu")
    p = ref_predictor.predict(coarse, Roi((0, 0, 0), coarse.shape))
    ref = upsample_linear(p, (0, 0, 0), coarse.shape, (2, 2, 2), roi.offset, roi.end)
    got = prob.read().astype(np.float32) / 255
    assert np.abs(got - ref).max() <= 0.5 / 255 + 1e-6
    mask = open_volume(tmp_path / "p.zarr/mask").read()
    np.testing.assert_array_equal(mask, (prob.read() >= 128).astype(np.uint8))
    assert res.blocks >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m10.pt", "p.zarr", "raw.zarr"]  # no partial, no ledger


def test_non_integer_factor_is_refused(tmp_path, coarse_model):
    _, ckpt = coarse_model
    _write(tmp_path / "r8.zarr", np.zeros((40, 40, 40), np.uint8), vs=(8, 8, 8))
    with pytest.raises(IncompatibleError, match="whole factors"):
        predict_volume(Predictor.from_checkpoint(ckpt, device="cpu"), tmp_path / "r8.zarr", tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()
