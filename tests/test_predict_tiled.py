import numpy as np
import pytest
import torch

from organet.model.unet import UNet, UNetConfig, context, valid_sizes
from organet.predict.tiled import plan_tiles, predict_array, probability_to_uint8, read_with_context, reflect_indices
from organet.preprocess import Normalization

CFG = UNetConfig(num_fmaps=3, downsample_factors=((2, 2, 2), (2, 2, 2)))


class ArrayVolume:
    """Minimal in-memory stand-in for a Volume (reads count the voxels touched)."""

    def __init__(self, a: np.ndarray) -> None:
        self.a, self.shape, self.dtype, self.voxels_read = a, a.shape, a.dtype, 0

    def read(self, sl):
        out = self.a[sl]
        self.voxels_read += out.size
        return out


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return UNet(CFG).eval()


def untiled(net, raw: np.ndarray, offset, shape) -> np.ndarray:
    """One forward pass over the ROI plus context (mirror beyond the volume)."""
    out_size = [next(o for _, o in valid_sizes(CFG, 400) if o >= s) for s in shape]
    in_size = [next(i for i, o in valid_sizes(CFG, 400) if o == s) for s in out_size]
    ctx = context(CFG, in_size)
    start = [o - c for o, c in zip(offset, ctx)]
    x = read_with_context(ArrayVolume(raw), start, [a + s for a, s in zip(start, in_size)])
    with torch.no_grad():
        p = torch.softmax(net(torch.from_numpy(Normalization().apply(x))[None, None]), 1)[0, 1].numpy()
    return p[: shape[0], : shape[1], : shape[2]]


def test_reflect_matches_numpy_pad():
    a = np.arange(7)
    for lo, hi in ((-5, 12), (-20, 30), (3, 5)):
        ref = np.pad(a, 30, mode="reflect")[lo + 30 : hi + 30]
        np.testing.assert_array_equal(a[reflect_indices(lo, hi, 7)], ref)


def test_read_with_context_mirrors_only_outside_volume():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (20, 21, 22), dtype=np.uint8)
    block = read_with_context(ArrayVolume(a), (-3, 5, 10), (10, 15, 30))
    padded = np.pad(a, 10, mode="reflect")
    np.testing.assert_array_equal(block, padded[7:20, 15:25, 20:40])
    # inside the volume: a plain read
    np.testing.assert_array_equal(read_with_context(ArrayVolume(a), (2, 3, 4), (5, 6, 7)), a[2:5, 3:6, 4:7])


@pytest.mark.parametrize("tile", [(56, 56, 56), (52, 60, 56), (68, 48, 76)])
def test_tiled_prediction_equals_untiled_forward_pass(net, tile):
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 255, (37, 45, 50), dtype=np.uint8)
    whole = untiled(net, raw, (0, 0, 0), raw.shape)
    tiled = predict_array(net, ArrayVolume(raw), Normalization(), (0, 0, 0), raw.shape, tile_in=tile)
    assert len(plan_tiles(CFG, tile, (0, 0, 0), raw.shape)) > 1
    # fp32 convolutions of different spatial sizes may round differently in the last bit;
    # the written uint8 output is identical.
    assert np.abs(tiled - whole).max() < 1e-6
    np.testing.assert_array_equal(probability_to_uint8(tiled), probability_to_uint8(whole))


def test_roi_prediction_uses_real_context(net):
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 255, (60, 70, 80), dtype=np.uint8)
    offset, shape = (25, 21, 30), (20, 30, 33)
    vol = ArrayVolume(raw)
    roi_pred = predict_array(net, vol, Normalization(), offset, shape, tile_in=(52, 52, 52))
    np.testing.assert_array_equal(
        probability_to_uint8(roi_pred), probability_to_uint8(untiled(net, raw, offset, shape))
    )
    # the ROI's context differs from mirror padding of the ROI alone
    alone = predict_array(net, ArrayVolume(raw[25:45, 21:51, 30:63].copy()), Normalization(), (0, 0, 0), shape,
                          tile_in=(52, 52, 52))
    assert np.abs(alone - roi_pred).max() > 1e-3


def test_tile_plan_steps_are_multiples_of_the_downsampling_factor():
    asem = UNetConfig()
    plan = plan_tiles(asem, (204, 204, 204), (0, 0, 0), (300, 250, 111))
    assert plan.tile_out == (110, 110, 110) and plan.step == (104, 104, 104)
    assert plan.grid == (3, 3, 2) and len(list(plan.tiles())) == 18
    covered = np.zeros((300, 250, 111), bool)
    for _, start, write in plan.tiles():
        sl = tuple(slice(a, a + w) for a, w in zip(start, write))
        assert not covered[sl].any()
        covered[sl] = True
    assert covered.all()
    with pytest.raises(ValueError, match="not a valid input"):
        plan_tiles(asem, (200, 200, 200), (0, 0, 0), (10, 10, 10))


def test_probability_to_uint8_threshold_is_consistent():
    p = np.array([0.0, 0.4999, 0.5, 0.50001, 1.0], np.float32)
    u = probability_to_uint8(p)
    assert u.tolist() == [0, 127, 128, 128, 255]
    assert ((u >= 128) == (p >= 0.5)).all()
