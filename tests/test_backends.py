"""Optional forward-pass backends of the Predictor: OpenVINO gives torch's probabilities
(within 1e-5) on tiles of any shape, with TTA and batches, from a cached converted model;
settings it cannot honour are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.helpers import spread_unet

from organet.blockwise.output import read_run
from organet.errors import InputError
from organet.model.checkpoint import Checkpoint, save_checkpoint
from organet.model.unet import UNet, UNetConfig
from organet.predict import Predictor, predict_volume
from organet.predict import predictor as predictor_module
from organet.preprocess import Normalization
from organet.volumes import Roi, write_ome_zarr
from organet.volumes.foreground import probability_to_uint8

CFG = UNetConfig(num_fmaps=3, downsample_factors=((2, 2, 2), (2, 2, 2)))
TOL = 1e-4
"""Largest |difference| of a foreground probability from torch's fp32 result that we accept:
fp32 convolutions in another library round differently in the last bits (here, with weights
scaled 3x, up to 1.3e-5; 6e-8 on networks of default initialization, benchmarks/backends.py).
A voxel on a rounding boundary of the uint8 scale may move by one step."""


def close(got: np.ndarray, ref: np.ndarray) -> None:
    assert np.abs(got - ref).max() < TOL
    du = np.abs(probability_to_uint8(got).astype(int) - probability_to_uint8(ref))
    assert du.max() <= 1 and (du > 0).mean() < 1e-3


def lively(seed: int = 0) -> UNet:
    """A random network with weights scaled up, so its probabilities span [0, 1]."""
    torch.manual_seed(seed)
    net = spread_unet(CFG)
    return net.eval()


class ArrayVolume:
    """Minimal in-memory stand-in for a Volume."""

    def __init__(self, a: np.ndarray) -> None:
        self.a, self.shape, self.dtype, self.voxel_size, self.offset = a, a.shape, a.dtype, (5.0, 5.0, 5.0), (0, 0, 0)

    def read(self, sl):
        return self.a[sl]


RAW = np.random.default_rng(1).integers(0, 255, (29, 35, 38), dtype=np.uint8)
ROI = Roi((0, 0, 0), RAW.shape)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("backends")
    save_checkpoint(Checkpoint(CFG, (56, 56, 56), (5.0, 5.0, 5.0), Normalization(), "mito", lively().state_dict()),
                    d / "model.pt")  # fmt: skip
    return d / "model.pt"


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ORGANET_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def predict(path, backend, roi=ROI, **settings) -> np.ndarray:
    pred = Predictor.from_checkpoint(path, device="cpu", backend=backend, **settings)
    return pred.predict(ArrayVolume(RAW), roi)


def test_backend_settings_are_validated_and_recorded():
    with pytest.raises(InputError, match="unknown backend 'tensorrt'; expected one of torch, openvino"):
        Predictor.from_model(lively(), (5, 5, 5), Normalization(), backend="tensorrt")
    with pytest.raises(InputError, match="runs on the CPU in fp32; got device 'cuda'"):
        Predictor.from_model(lively(), (5, 5, 5), Normalization(), backend="openvino", device="cuda")
    with pytest.raises(InputError, match="precision 'bf16'"):
        Predictor.from_model(lively(), (5, 5, 5), Normalization(), backend="openvino", precision="bf16")
    assert Predictor.from_model(lively(), (5, 5, 5), Normalization()).describe()["backend"] == "torch"


def test_openvino_equals_torch_on_tiles_of_any_shape_with_tta_and_batches(checkpoint, cache):
    pytest.importorskip("openvino")
    tile = (52, 60, 56)  # anisotropic: one converted model serves every valid tile shape
    ref = predict(checkpoint, "torch", tile=tile)
    got = predict(checkpoint, "openvino", tile=tile)
    assert np.ptp(ref) > 0.5  # a lively network, not a constant
    close(got, ref)
    # batches of 3 with a short last batch (8 tiles), and the 8 mirror variants
    part = Roi((0, 0, 0), (20, 30, 30))
    ref = predict(checkpoint, "torch", roi=part, tile=(60, 60, 60), batch_size=3, tta="mirror")
    got = predict(checkpoint, "openvino", roi=part, tile=(60, 60, 60), batch_size=3, tta="mirror")
    fixed = Predictor.from_checkpoint(checkpoint, tile=(60, 60, 60)).for_region(ArrayVolume(RAW), part)
    assert fixed.grid().count(part.offset, part.end) == 8
    close(got, ref)


def test_the_converted_model_is_cached_by_checkpoint_hash(checkpoint, cache, monkeypatch):
    ov = pytest.importorskip("openvino")
    ir = predictor_module.openvino_ir_path(checkpoint)
    assert ir.is_relative_to(cache) and not ir.exists()
    monkeypatch.setattr(predictor_module, "_MODELS", {})  # as in a new process
    first = predict(checkpoint, "openvino", tile=(56, 56, 56))
    assert ir.is_file() and ir.with_suffix(".bin").is_file()
    assert [p.name for p in ir.parent.parent.iterdir()] == [ir.parent.name]  # no temporary folder left
    monkeypatch.setattr(predictor_module, "_MODELS", {})  # another new process: reads the IR, converts nothing

    def refuse(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(ov, "convert_model", refuse)
    np.testing.assert_array_equal(predict(checkpoint, "openvino", tile=(56, 56, 56)), first)


def test_openvino_on_a_live_network_and_in_the_run_record(checkpoint, cache, tmp_path):
    pytest.importorskip("openvino")
    net = lively()
    pred = Predictor.from_model(net, (5, 5, 5), Normalization(), tile=(56, 56, 56), backend="openvino")
    got = pred.predict(ArrayVolume(RAW), ROI)
    ref = Predictor.from_model(net, (5, 5, 5), Normalization(), tile=(56, 56, 56)).predict(ArrayVolume(RAW), ROI)
    close(got, ref)
    assert net.training is False  # the caller's network is left as it was

    with write_ome_zarr(tmp_path / "raw.zarr") as w:
        w.create_image(None, RAW.shape, np.uint8, (5, 5, 5), (0, 0, 0), (16, 16, 16)).write(..., RAW)
    pred = Predictor.from_checkpoint(checkpoint, tile=(56, 56, 56), backend="openvino")
    predict_volume(pred, tmp_path / "raw.zarr", tmp_path / "out.zarr")
    run = read_run(tmp_path / "out.zarr")
    assert run is not None and run["predictor"]["backend"] == "openvino" and run["predictor"]["precision"] == "fp32"
