"""Training on sources of different voxel sizes (resampled to the model's) and anisotropic networks."""

import json

import numpy as np
import pytest

from organet.config import ConfigError, RoiSpec, parse_config
from organet.demo.phantom import make_phantom
from organet.model.checkpoint import load_checkpoint
from organet.predict import Predictor, predict_volume
from organet.train.loop import Trainer, train
from organet.train.sampling import load_roi
from organet.volumes import open_volume, write_ome_zarr
from organet.volumes.resample import GridMap, ResampledVolume


def _write(path, arr, vs):
    with write_ome_zarr(path) as w:
        w.create_image(None, arr.shape, arr.dtype, vs, chunks=(8, 32, 32)).write((slice(None),) * 3, arr)
    return str(path)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A: a 10 nm isotropic phantom; B: an SBEM-like phantom at 5.9 x 5.9 x 40 nm (another generator seed,
    denser objects), as a new cell would come."""
    d = tmp_path_factory.mktemp("vs")
    a = make_phantom((36, 48, 48), voxel_size=10.0, seed=4)
    iso = make_phantom((56, 90, 84), voxel_size=5.9, seed=9)  # every 7th plane: ~40 nm sections
    b = type(iso)(iso.raw[::7].copy(), iso.labels[::7].copy(), iso.voxel_size)
    return {
        "a_raw": _write(d / "a_raw.zarr", a.raw, (10.0, 10.0, 10.0)),
        "a_lab": _write(d / "a_lab.zarr", a.labels, (10.0, 10.0, 10.0)),
        "b_raw": _write(d / "b_raw.zarr", b.raw, (40.0, 5.9, 5.9)),
        "b_lab": _write(d / "b_lab.zarr", b.labels, (40.0, 5.9, 5.9)),
        "b_labels": b.labels,
    }


def test_a_source_of_another_voxel_size_is_read_on_the_model_grid(sources):
    spec = RoiSpec(raw=sources["b_raw"], labels=sources["b_lab"], roi_vox="1:7,10:80,5:84")
    rd = load_roi(spec, 1.0, 0, voxel_size=(10, 10, 10))
    m = GridMap.between(open_volume(sources["b_raw"]), (10, 10, 10))
    # the model-grid voxels wholly inside the ROI: z 1:7 at 40 nm = 4:28 at 10 nm; y 10:80 at 5.9 nm = 59-472 nm
    assert str(rd.roi) == "[4:28, 6:47, 3:49]"
    assert rd.voxel_size == (10.0, 10.0, 10.0) and rd.labels.shape == (24, 41, 46)
    labels = ResampledVolume(open_volume(sources["b_lab"]), (10, 10, 10), "majority").read(rd.roi)
    np.testing.assert_array_equal(rd.labels, labels)
    assert 0.02 < rd.labels.mean() < 0.6 and set(np.unique(rd.labels).tolist()) == {0, 1}
    # voxel fractions agree with the source's up to the boundary voxels of the resampling
    src = sources["b_labels"][1:7, 10:80, 5:84]
    assert abs(rd.labels.mean() - src.mean()) < 0.03
    raw = ResampledVolume(open_volume(sources["b_raw"]), (10, 10, 10)).read(rd.roi)
    np.testing.assert_array_equal(rd.raw, raw)
    assert rd.resampling is not None and rd.resampling["modes"] == ["linear", "area", "area"]
    assert rd.resampling["scale"] == [0.25, round(10 / 5.9, 6), round(10 / 5.9, 6)]
    assert m.shape == (32, 54, 50)  # ceil(90 * 5.9 / 10), ceil(84 * 5.9 / 10)


def test_an_roi_thinner_than_a_model_voxel_is_refused(sources):
    spec = RoiSpec(raw=sources["b_raw"], labels=sources["b_lab"], roi_vox=":,10:11,:")  # 5.9 nm thick
    with pytest.raises(ConfigError, match=r"holds no whole voxel of the model's grid \(voxel size \(10, 10, 10\) nm\)"):
        load_roi(spec, 1.0, 0, voxel_size=(10, 10, 10))


def _cfg(sources, out, **model):
    return parse_config(
        {
            "output_dir": str(out),
            "seed": 0,
            "model": {"num_fmaps": 2, "downsample_factors": [[2, 2, 2]], "input_shape": [24, 24, 24], **model},
            "data": {
                "train": [
                    {"name": "a", "raw": sources["a_raw"], "labels": sources["a_lab"]},
                    {"name": "b", "raw": sources["b_raw"], "labels": sources["b_lab"], "roi_vox": "0:6,:,:"},
                ],
                "validation": [
                    {"name": "b_val", "raw": sources["b_raw"], "labels": sources["b_lab"], "roi_vox": "6:8,:,:"}
                ],
            },
            "sampling": {"reject_probability": 0},  # locations by ROI size only
            "training": {"iterations": 4, "checkpoint_every": 4, "log_every": 1},
        }
    )


def test_training_on_two_voxel_sizes_samples_both_and_records_it(sources, tmp_path):
    logs = []
    t = Trainer(_cfg(sources, tmp_path / "run"), log=logs.append)
    assert t.voxel_size == (10.0, 10.0, 10.0)  # the first source's
    rng = np.random.default_rng(0)
    drawn = [t.sampler.draw(rng).roi_index for _ in range(200)]
    share_b = drawn.count(1) / len(drawn)
    size_share_b = t.train_rois[1].size / (t.train_rois[0].size + t.train_rois[1].size)
    assert drawn.count(0) > 0 and drawn.count(1) > 0  # both sources are sampled
    assert abs(share_b - size_share_b) < 0.15  # by their size on the model grid
    rec = json.loads((tmp_path / "run" / "data.json").read_text())
    assert rec["voxel_size"] == [10.0, 10.0, 10.0]
    assert rec["train"][0]["resampled"] is None
    assert rec["train"][1]["resampled"]["source_voxel_size"] == [40.0, 5.9, 5.9]
    assert rec["train"][1]["resampled"]["labels"] == "majority"
    assert rec["validation"][0]["voxel_size"] == [40.0, 5.9, 5.9]  # validated on its own grid
    assert any("b: (40, 5.9, 5.9) nm resampled to (10, 10, 10) nm" in line for line in logs)


def test_model_voxel_size_from_the_config_and_validation_on_the_source_grid(sources, tmp_path):
    res = train(_cfg(sources, tmp_path / "run", voxel_size=[8, 8, 8]), log=lambda s: None)
    ck = load_checkpoint(res.last_checkpoint)
    assert ck.voxel_size == (8.0, 8.0, 8.0)
    rec = json.loads((tmp_path / "run" / "data.json").read_text())
    assert rec["train"][0]["resampled"]["scale"] == [0.8, 0.8, 0.8]  # the 10 nm source is resampled too
    (row,) = res.validation
    assert row["roi"] == "b_val" and 0 <= row["f1"] <= 1 and np.isfinite(row["loss"])


def test_an_anisotropic_network_trains_and_predicts_natively(sources, tmp_path):
    """downsample_factors (1, 2, 2) on 40 x 5.9 x 5.9 nm data: no resampling anywhere."""
    cfg = parse_config(
        {
            "output_dir": str(tmp_path / "aniso"),
            "model": {"num_fmaps": 2, "downsample_factors": [[1, 2, 2]], "input_shape": [20, 24, 24]},
            "data": {"train": [{"raw": sources["b_raw"], "labels": sources["b_lab"]}]},
            "training": {"iterations": 3, "checkpoint_every": 3},
        }
    )
    res = train(cfg, log=lambda s: None)
    ck = load_checkpoint(res.last_checkpoint)
    assert ck.voxel_size == (40.0, 5.9, 5.9) and ck.architecture.downsample_factors == ((1, 2, 2),)
    rec = json.loads((tmp_path / "aniso" / "data.json").read_text())
    assert rec["train"][0]["resampled"] is None
    out = tmp_path / "p.zarr"
    predict_volume(Predictor.from_checkpoint(res.last_checkpoint, device="cpu"), sources["b_raw"], out)
    prob = open_volume(out / "probability")
    assert prob.shape == (8, 90, 84) and prob.voxel_size == (40.0, 5.9, 5.9)
    assert "resampled" not in prob.attrs
