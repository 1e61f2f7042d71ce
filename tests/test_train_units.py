"""Sampler rejection rules, balanced loss, config validation."""

import numpy as np
import pytest
import torch

from organet.config import ConfigError, SamplingConfig, load_config, parse_config
from organet.train.loss import balanced_cross_entropy, class_weights
from organet.train.sampling import BlockSampler, RoiData, crop_padded
from organet.volumes import Roi


def _roi(labels, mask=None, raw=None, name="r"):
    raw = raw if raw is not None else np.full(labels.shape, 100, np.uint8)
    return RoiData(
        name, raw, labels.astype(np.uint8), mask, np.dtype(np.uint8), (5.0, 5.0, 5.0), Roi((0, 0, 0), labels.shape)
    )


def test_foreground_rejection_rate_matches_rule():
    # left half of the volume is foreground, right half empty; output blocks are 4 wide in x,
    # so a block is either all-fg, all-empty or straddles the middle.
    labels = np.zeros((4, 4, 200), np.uint8)
    labels[..., :100] = 1
    s = BlockSampler([_roi(labels)], (4, 4, 4), (4, 4, 4), SamplingConfig())
    rng = np.random.default_rng(0)
    draws = [s.draw(rng) for _ in range(4000)]
    empty = np.mean([d.foreground < 0.05 for d in draws])
    # among 197 start positions 97 give empty blocks: accepted empty fraction q*0.1/(q*0.1 + 1-q)
    q = 97 / 197
    expected = q * 0.1 / (q * 0.1 + (1 - q))
    assert abs(empty - expected) < 0.02, (empty, expected)
    # with rejection off, empty blocks come at their natural rate
    s0 = BlockSampler([_roi(labels)], (4, 4, 4), (4, 4, 4), SamplingConfig(reject_probability=0.0))
    empty0 = np.mean([s0.draw(rng).foreground < 0.05 for _ in range(4000)])
    assert abs(empty0 - q) < 0.03


def test_mask_rejection_and_roi_weighting():
    labels = np.ones((4, 4, 100), np.uint8)
    mask = np.zeros_like(labels)
    mask[..., :50] = 1
    s = BlockSampler([_roi(labels, mask)], (4, 4, 4), (4, 4, 4), SamplingConfig())
    rng = np.random.default_rng(1)
    outside = np.mean([s.draw(rng).out_start[2] >= 47 for _ in range(3000)])
    q = 50 / 97  # starts whose block has <= 75 % inside the mask
    expected = q * 0.05 / (q * 0.05 + (1 - q))
    assert abs(outside - expected) < 0.02
    # two ROIs: drawn in proportion to their size
    big, small = _roi(np.ones((10, 10, 30), np.uint8), name="big"), _roi(np.ones((10, 10, 10), np.uint8), name="small")
    s2 = BlockSampler([big, small], (4, 4, 4), (4, 4, 4), SamplingConfig())
    frac_big = np.mean([s2.draw(rng).roi_index == 0 for _ in range(3000)])
    assert abs(frac_big - 0.75) < 0.03


def test_small_roi_is_padded_grey_background_mask_one_with_context_pad():
    labels = np.ones((3, 3, 3), np.uint8)
    raw = np.full((3, 3, 3), 7, np.uint8)
    cfg = SamplingConfig(reject_probability=0, context="pad")
    s = BlockSampler([_roi(labels, raw=raw)], (5, 5, 5), (9, 9, 9), cfg)
    d = s.draw(np.random.default_rng(0))
    assert d.raw.shape == (9, 9, 9)
    assert set(np.unique(d.raw)) == {7, 128} and (d.raw == 7).sum() == 27
    assert (d.labels == 1).sum() == 27 and (d.mask == 1).all()
    # context 'volume' (default): this ROI is its whole volume, so raw outside is padding too,
    # but the loss mask is 0 outside the ROI
    v = BlockSampler([_roi(labels, raw=raw)], (5, 5, 5), (9, 9, 9), SamplingConfig(reject_probability=0))
    dv = v.draw(np.random.default_rng(0))
    assert (dv.raw == d.raw).all() and (dv.labels == d.labels).all()
    assert (dv.mask == (dv.raw == 7)).all() and dv.mask.sum() == 27


def test_crop_padded():
    a = np.arange(24).reshape(2, 3, 4)
    c = crop_padded(a, (-1, 1, 2), (3, 3, 3), -1)
    assert (c[0] == -1).all() and c[1, 0, 0] == a[0, 1, 2] and c[2, 1, 1] == a[1, 2, 3] and c[1, 2, 0] == -1


def test_class_weights_and_balanced_loss():
    labels = torch.zeros(1, 10, 10, 10, dtype=torch.uint8)
    labels[..., :2] = 1  # 20 % foreground
    mask = torch.ones_like(labels)
    w = class_weights(labels, mask)
    assert torch.isclose(w[labels == 1][0], torch.tensor(1 / (2 * 0.2)))
    assert torch.isclose(w[labels == 0][0], torch.tensor(1 / (2 * 0.8)))
    # both classes contribute equally in total
    assert torch.isclose(w[labels == 1].sum(), w[labels == 0].sum())
    # clipping: 0.1 % foreground clipped to 1 %
    lab2 = torch.zeros(1, 10, 10, 10, dtype=torch.uint8)
    lab2[0, 0, 0, 0] = 1
    assert torch.isclose(class_weights(lab2, mask)[lab2 == 1][0], torch.tensor(50.0))
    # masked voxels do not count
    mask2 = mask.clone()
    mask2[..., 5:] = 0
    logits = torch.randn(1, 2, 10, 10, 10)
    loss_all = balanced_cross_entropy(logits, labels, mask2)
    logits2 = logits.clone()
    logits2[..., 5:] = 100.0
    assert torch.isclose(loss_all, balanced_cross_entropy(logits2, labels, mask2))
    # a perfect prediction has ~0 loss
    perfect = torch.stack([(1 - labels.float()) * 50, labels.float() * 50], 1)
    assert balanced_cross_entropy(perfect, labels, mask) < 1e-6


MINIMAL = {"data": {"train": [{"raw": "r.tif", "labels": "l.tif"}]}}


def test_config_defaults_are_the_seed_recipe():
    cfg = parse_config(MINIMAL)
    assert cfg.model.input_shape == (204, 204, 204) and cfg.model.num_fmaps == 32
    assert cfg.optimizer.lr == 3e-5 and cfg.optimizer.weight_decay == 3e-5 and cfg.training.batch_size == 1
    assert cfg.sampling.min_foreground == 0.05 and cfg.sampling.reject_probability == 0.9
    assert cfg.sampling.min_masked == 0.75 and cfg.sampling.mask_reject_probability == 0.95
    assert cfg.augment.control_point_spacing == 32 and cfg.augment.jitter_sigma == 2
    assert cfg.training.checkpoint_every == 1000 and cfg.loss.frac_clip == (0.01, 0.99)


@pytest.mark.parametrize(
    "patch, key",
    [
        ({"trainig": {}}, "trainig: unknown key"),
        ({"training": {"iterations": 0}}, "training.iterations"),
        ({"optimizer": {"lr": "fast"}}, "optimizer.lr"),
        ({"model": {"input_shape": [200, 200, 200]}}, "model: Value error, input_shape [200, 200, 200] is not valid"),
        ({"data": {"train": [{"raw": "r.tif"}]}}, "data.train.0.labels: Field required"),
        ({"data": {"train": [{"raw": "r", "labels": "l", "roi_vox": "0:1", "roi_nm": "0:5"}]}}, "data.train.0"),
        ({"training": {"device": "tpu"}}, "training.device"),
        ({"sampling": {"reject_probability": 1.5}}, "sampling.reject_probability"),
    ],
)
def test_config_errors_name_the_key(patch, key):
    with pytest.raises(ConfigError) as e:
        parse_config({**MINIMAL, **patch}, "x.yaml")
    assert key in str(e.value), str(e.value)
    assert str(e.value).startswith("x.yaml: ")


def test_load_config_resolves_paths_relative_to_file(tmp_path):
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "c.yaml"
    f.write_text("data:\n  train:\n    - raw: ../d/raw.zarr/s0\n      labels: /abs/l.h5:/labels\noutput_dir: runs/a\n")
    cfg = load_config(f)
    assert cfg.data.train[0].raw == str(tmp_path / "sub" / "../d/raw.zarr/s0")
    assert cfg.data.train[0].labels == "/abs/l.h5:/labels"
    assert cfg.output_dir == str(tmp_path / "sub" / "runs/a")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "bad.yaml")


def test_cosine_lr_schedule_runs_from_lr_to_lr_min():
    from organet.config import OptimizerConfig

    const = OptimizerConfig(lr=1e-3)
    assert const.lr_at(0, 100) == const.lr_at(99, 100) == 1e-3
    cos = OptimizerConfig(lr=1e-3, lr_schedule="cosine", lr_min=1e-5)
    assert cos.lr_at(0, 100) == pytest.approx(1e-3)
    assert cos.lr_at(50, 100) == pytest.approx((1e-3 + 1e-5) / 2)
    assert cos.lr_at(100, 100) == pytest.approx(1e-5) and cos.lr_at(150, 100) == pytest.approx(1e-5)
    lrs = [cos.lr_at(i, 100) for i in range(101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
