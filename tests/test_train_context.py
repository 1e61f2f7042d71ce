"""Real raw context around training ROIs (sampling.context: volume) versus the old padding (pad)."""

import math

import numpy as np
import pytest
import torch
import yaml

from organet.config import ConfigError, RoiSpec, SamplingConfig, parse_config
from organet.model.checkpoint import load_checkpoint, save_checkpoint
from organet.preprocess import Normalization
from organet.train.augment import AugmentConfig, AugmentParams, apply_params, augment, upstream_shape
from organet.train.loop import Trainer
from organet.train.loss import balanced_cross_entropy, class_weights
from organet.train.sampling import BlockSampler, load_roi, raw_context
from organet.volumes import Roi, write_ome_zarr

SHAPE = (30, 40, 40)
OUT, UP = (6, 6, 6), (16, 16, 16)  # context (16 - 6) / 2 = 5 voxels per side
GREY = 128
NO_REJECT = SamplingConfig(reject_probability=0, mask_reject_probability=0)


@pytest.fixture(scope="module")
def vol(tmp_path_factory):
    d = tmp_path_factory.mktemp("context")
    rng = np.random.default_rng(0)
    arrays = {
        "raw": rng.integers(0, 256, SHAPE, dtype=np.uint8),
        "labels": (rng.random(SHAPE) < 0.3).astype(np.uint8),
    }
    for name, arr in arrays.items():
        with write_ome_zarr(d / f"{name}.zarr") as w:
            w.create_image(None, arr.shape, arr.dtype, (5.0, 5.0, 5.0), chunks=(15, 20, 20)).write(
                (slice(None),) * 3, arr
            )
    return {
        "raw": str(d / "raw.zarr"),
        "labels": str(d / "labels.zarr"),
        **{f"{k}_array": v for k, v in arrays.items()},
    }


def _spec(vol, roi_vox):
    return RoiSpec(raw=vol["raw"], labels=vol["labels"], roi_vox=roi_vox)


def _box(array, start, shape, fill):
    """``array[start:start + shape]`` (volume voxels), ``fill`` outside the array (independent of crop_padded)."""
    m = max(shape) + max(abs(s) for s in start)
    padded = np.pad(array, m, constant_values=fill)
    return padded[tuple(slice(s + m, s + m + n) for s, n in zip(start, shape))]


def _in_roi(roi, start, shape):
    """1 where the box at ``start`` (volume voxels) lies inside ``roi``."""
    inside = np.zeros(SHAPE, np.uint8)
    inside[roi.slices()] = 1
    return _box(inside, start, shape, 0)


def _upstream_start(roi, sample):
    return tuple(r + s - (u - o) // 2 for r, s, u, o in zip(roi.offset, sample.out_start, UP, OUT))


def test_interior_roi_sees_the_real_volume_around_it(vol):
    rd = load_roi(_spec(vol, "10:20,14:26,14:26"), 1.0, 0, OUT, UP)
    assert rd.raw_roi == Roi((5, 9, 9), (20, 22, 22)) and rd.raw.shape == (20, 22, 22)
    assert rd.labels.shape == (10, 12, 12)
    sampler = BlockSampler([rd], OUT, UP, NO_REJECT)
    rng = np.random.default_rng(3)
    no_aug = AugmentConfig(enabled=False)
    norm = Normalization()
    for _ in range(15):
        s = sampler.draw(rng)
        at = _upstream_start(rd.roi, s)
        inside = _in_roi(rd.roi, at, UP)
        assert 0 < inside.sum() < inside.size  # the upstream block reaches beyond the ROI
        assert (s.raw == vol["raw_array"][tuple(slice(a, a + u) for a, u in zip(at, UP))]).all()
        assert (s.labels == vol["labels_array"][tuple(slice(a, a + u) for a, u in zip(at, UP))] * inside).all()
        assert (s.mask == inside).all()
        # augmentation off: the network input is the normalized volume around the output block
        x, y, m = augment(norm.apply(s.raw, rd.raw_dtype), s.labels, s.mask, UP, OUT, no_aug, rng)
        assert np.array_equal(x, norm.apply(s.raw, rd.raw_dtype))
        assert (m == inside[5:11, 5:11, 5:11]).all() and m.all()  # ROI >= output: output inside the ROI


def test_at_the_volume_border_raw_is_padding(vol):
    rd = load_roi(_spec(vol, "0:10,0:12,28:40"), 1.0, 0, OUT, UP)
    assert rd.raw_roi == Roi((0, 0, 23), (15, 17, 17))  # grown by 5, clipped to the volume
    sampler = BlockSampler([rd], OUT, UP, NO_REJECT)
    rng = np.random.default_rng(4)
    for _ in range(15):
        s = sampler.draw(rng)
        at = _upstream_start(rd.roi, s)
        outside_volume = _box(np.zeros(SHAPE, bool), at, UP, True)
        assert outside_volume.any() and not outside_volume.all()
        assert (s.raw == _box(vol["raw_array"], at, UP, GREY)).all()
        assert (s.raw[outside_volume] == GREY).all()
        assert (s.mask == _in_roi(rd.roi, at, UP)).all() and not s.mask[outside_volume].any()


def test_outside_the_roi_has_loss_weight_zero(vol):
    # z: ROI 4 voxels < output 6, so every output block holds voxels outside the ROI
    rd = load_roi(_spec(vol, "12:16,14:26,14:26"), 1.0, 0, OUT, UP)
    assert raw_context(rd.roi.shape, OUT, UP) == (7, 5, 5)
    sampler = BlockSampler([rd], OUT, UP, NO_REJECT)
    rng = np.random.default_rng(5)
    s = sampler.draw(rng)
    at = _upstream_start(rd.roi, s)
    assert (s.raw == _box(vol["raw_array"], at, UP, GREY)).all()
    x, y, m = augment(s.raw.astype(np.float32), s.labels, s.mask, UP, OUT, AugmentConfig(enabled=False), rng)
    out_inside = _in_roi(rd.roi, [a + 5 for a in at], OUT).astype(bool)
    assert out_inside.any() and not out_inside.all()
    assert (m == out_inside).all() and not y[~out_inside].any()
    yt, mt = torch.from_numpy(y)[None], torch.from_numpy(m)[None]
    assert (class_weights(yt, mt)[0][torch.from_numpy(~out_inside)] == 0).all()
    logits = torch.randn(1, 2, *OUT, generator=torch.Generator().manual_seed(0))
    loss = balanced_cross_entropy(logits, yt, mt)
    moved = logits.clone()
    moved[:, :, torch.from_numpy(~out_inside)] += torch.tensor([5.0, -5.0])[None, :, None]
    assert torch.equal(balanced_cross_entropy(moved, yt, mt), loss)  # outside the ROI: no effect
    moved[:, :, torch.from_numpy(out_inside)] += torch.tensor([5.0, -5.0])[None, :, None]
    assert not torch.equal(balanced_cross_entropy(moved, yt, mt), loss)

    # augmentation carries "outside the ROI" as mask 0: a quarter turn turns the mask with the data
    up_rot = (16, 16, 16)
    _, _, m0 = apply_params(s.raw.astype(np.float32), s.labels, s.mask, up_rot, OUT, AugmentParams(), AugmentConfig())
    _, _, m90 = apply_params(
        s.raw.astype(np.float32), s.labels, s.mask, up_rot, OUT, AugmentParams(angle=math.pi / 2), AugmentConfig()
    )
    assert (m90 == np.rot90(m0, k=1, axes=(1, 2))).all() and not m90.all()
    # full random augmentation: labels only where the loss mask is 1, and the outside stays masked
    cfg = AugmentConfig()
    full = BlockSampler(
        [load_roi(_spec(vol, "12:16,14:26,14:26"), 1.0, 0, OUT, upstream_shape(UP, cfg))],
        OUT,
        upstream_shape(UP, cfg),
        NO_REJECT,
    )
    for _ in range(3):
        d = full.draw(rng)
        _, ya, ma = augment(Normalization().apply(d.raw, np.dtype(np.uint8)), d.labels, d.mask, UP, OUT, cfg, rng)
        assert (ya <= ma).all() and 0 < ma.sum() < ma.size


def test_context_pad_reproduces_the_old_padding(vol):
    spec = _spec(vol, "10:20,14:26,14:26")
    old = load_roi(spec, 1.0, 0)  # no shapes: raw for the ROI only, as before
    assert old.raw_roi == old.roi and old.raw.shape == (10, 12, 12)
    grown = load_roi(spec, 1.0, 0, OUT, UP)
    pad = SamplingConfig(reject_probability=0, mask_reject_probability=0, context="pad")
    rngs = [np.random.default_rng(6) for _ in range(3)]
    samplers = [
        BlockSampler([old], OUT, UP, pad),
        BlockSampler([grown], OUT, UP, pad),
        BlockSampler([grown], OUT, UP, NO_REJECT),
    ]
    for _ in range(10):
        a, b, v = (sm.draw(r) for sm, r in zip(samplers, rngs))
        assert a.out_start == b.out_start == v.out_start  # same draws whatever the context
        inside = _in_roi(old.roi, _upstream_start(old.roi, a), UP).astype(bool)
        for x, y in ((a.raw, b.raw), (a.labels, b.labels), (a.mask, b.mask)):
            assert np.array_equal(x, y)
        assert (a.raw[~inside] == GREY).all() and (a.raw[inside] == v.raw[inside]).all()
        assert (v.raw[~inside] != GREY).any()
        assert (a.mask == 1).all() and (a.labels == v.labels).all()


def test_memory_limit_counts_the_grown_box(vol):
    spec = _spec(vol, "10:20,14:26,14:26")
    # ROI alone: 1440 voxels raw + 1440 labels = 2880 bytes; grown raw 20 x 22 x 22 = 9680 + 1440 labels
    limit = 5000 / 2**30
    assert load_roi(spec, limit, 0).raw.size == 1440
    with pytest.raises(ConfigError, match=r"data\.train\.0: .*raw context \[5, 5, 5\].*data\.cache_max_gib"):
        load_roi(spec, limit, 0, OUT, UP)
    assert load_roi(spec, 11120 / 2**30, 0, OUT, UP).raw.size == 9680


def test_sampler_refuses_raw_without_its_context(vol):
    old = load_roi(_spec(vol, "10:20,14:26,14:26"), 1.0, 0)
    with pytest.raises(ValueError, match="reach"):
        BlockSampler([old], OUT, UP, NO_REJECT)


def _cfg(vol, out, context=None):
    sampling = {"context": context} if context else {}
    return parse_config(
        {
            "output_dir": str(out),
            "model": {"num_fmaps": 2, "downsample_factors": [[2, 2, 2], [2, 2, 2]], "input_shape": [52, 52, 52]},
            "data": {"train": [{"raw": vol["raw"], "labels": vol["labels"], "roi_vox": "8:22,10:30,10:30"}]},
            "sampling": sampling,
        }
    )


def test_trainer_loads_context_records_it_and_refuses_another_on_resume(vol, tmp_path):
    t = Trainer(_cfg(vol, tmp_path / "run"), log=lambda s: None)
    r = t.train_rois[0]
    assert r.raw_roi == r.roi.grow(raw_context(r.roi.shape, t.out_shape, t.upstream)).intersect(Roi((0, 0, 0), SHAPE))
    assert r.raw_roi != r.roi
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["sampling"]["context"] == "volume"
    ckpt_path = t.checkpoint({})
    assert load_checkpoint(ckpt_path).training_config["sampling"]["context"] == "volume"
    with pytest.raises(ConfigError, match="sampling.context='volume'.*says 'pad'"):
        Trainer(_cfg(vol, tmp_path / "run", "pad"), resume=True, log=lambda s: None)
    # a run from before the setting (no sampling.context in its checkpoint) padded
    ckpt = load_checkpoint(ckpt_path)
    del ckpt.training_config["sampling"]["context"]
    save_checkpoint(ckpt, ckpt_path)
    with pytest.raises(ConfigError, match="sampling.context='pad'"):
        Trainer(_cfg(vol, tmp_path / "run"), resume=True, log=lambda s: None)
    p = Trainer(_cfg(vol, tmp_path / "run", "pad"), resume=True, log=lambda s: None)
    assert p.train_rois[0].raw_roi == p.train_rois[0].roi
