"""Contrast normalization (linear, histeq, 3-D CLAHE): exact blockwise results, streaming
statistics, the `organet preprocess` command and the train/predict preprocessing check."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from skimage.exposure import equalize_adapthist
from typer.testing import CliRunner

from organet.cli import app
from organet.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from organet.model.unet import UNet, UNetConfig
from organet.predict import Predictor, predict_volume
from organet.preprocess import Normalization, PreprocessParams, check_preprocess, normalize_array
from organet.preprocess.intensity import gather_stats
from organet.volumes import Volume, open_volume, write_ome_zarr

runner = CliRunner()


def run(*args: object) -> tuple[int, str]:
    r = runner.invoke(app, [str(a) for a in args])
    return r.exit_code, " ".join(r.output.split())


def textured(shape, dtype=np.uint8, seed=0) -> np.ndarray:
    """Uneven illumination (a bright half, a gradient) plus noise: what CLAHE is for."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    a = 90 + 40 * (y > shape[1] // 2) + 30 * x / shape[2] + rng.normal(0, 12, shape)
    if dtype == np.uint16:
        return np.clip(a * 10, 0, 65535).astype(np.uint16)
    return np.clip(a, 0, 255).astype(dtype)


@pytest.mark.parametrize(
    "shape,kernel,block,dtype",
    [
        ((20, 40, 50), (8, 16, 16), (7, 13, 17), np.uint8),
        ((13, 30, 27), (5, 7, 9), (4, 11, 30), np.uint8),  # kernel not dividing the shape, odd sizes
        ((9, 20, 21), (4, 8, 8), (5, 5, 5), np.uint16),
        ((6, 12, 12), (16, 16, 16), (2, 5, 7), np.uint8),  # kernel larger than the volume
    ],
)
def test_clahe_blockwise_equals_skimage_whole_volume(shape, kernel, block, dtype):
    x = textured(shape, dtype)
    ref = equalize_adapthist(x, kernel_size=kernel, clip_limit=0.02)
    p = PreprocessParams(method="clahe", kernel=kernel, clip_limit=0.02)
    whole = normalize_array(x, p)
    blockwise = normalize_array(x, p, block=block)
    assert np.array_equal(whole, ref)
    assert np.array_equal(blockwise, ref)
    assert blockwise.min() == 0.0 and blockwise.max() == 1.0


def test_clahe_clip_limit_changes_the_result_and_raises_local_contrast():
    x = textured((16, 48, 48))
    low = normalize_array(x, PreprocessParams(method="clahe", kernel=16, clip_limit=0.01))
    high = normalize_array(x, PreprocessParams(method="clahe", kernel=16, clip_limit=0.03))
    assert not np.array_equal(low, high)
    # the bright and the dark half end up closer (uneven illumination reduced), relative to the spread
    half = x.shape[1] // 2

    def gap(v: np.ndarray) -> float:
        return abs(v[:, half + 4 :].mean() - v[:, : half - 4].mean()) / v.std()

    assert gap(high) < 0.7 * gap(x.astype(float))


def test_histeq_flattens_the_histogram_and_is_blockwise_exact():
    rng = np.random.default_rng(1)
    x = np.clip(rng.exponential(20, (12, 40, 40)), 0, 255).astype(np.uint8)  # very skewed
    p = PreprocessParams(method="histeq")
    out = normalize_array(x, p)
    assert np.array_equal(out, normalize_array(x, p, block=(5, 7, 9)))

    def worst_gap_to_uniform(v: np.ndarray) -> float:
        s = np.sort(v.ravel())
        return float(np.max(np.abs(s - np.linspace(s[0], s[-1], s.size))) / (s[-1] - s[0]))

    assert worst_gap_to_uniform(x.astype(float)) > 0.3
    assert worst_gap_to_uniform(out) < 0.05
    assert out.min() >= 0 and out.max() == 1.0


def test_linear_maps_percentiles_to_range_and_streaming_percentiles_match_numpy():
    rng = np.random.default_rng(2)
    x = rng.integers(20, 200, (10, 30, 30)).astype(np.uint8)
    stats = gather_stats(Volume(x), block=(3, 7, 11))
    for q in (0.5, 2.0, 50.0, 97.5, 99.5):
        assert stats.percentile(q) == pytest.approx(np.percentile(x, q))
    p = PreprocessParams(method="linear", low_percentile=5, high_percentile=95)
    out = normalize_array(x, p, block=(4, 4, 4))
    lo, hi = np.percentile(x, [5, 95])
    assert np.allclose(out, np.clip((x - lo) / (hi - lo), 0, 1))


def test_bad_parameters_and_types_are_refused():
    with pytest.raises(ValueError, match="high_percentile"):
        PreprocessParams(method="linear", low_percentile=90, high_percentile=10)
    with pytest.raises(ValueError):
        PreprocessParams.model_validate({"method": "gamma"})
    with pytest.raises(ValueError, match="uint8, uint16"):
        normalize_array(np.zeros((2, 4, 4), np.int32), PreprocessParams(method="histeq"))
    with pytest.raises(ValueError, match="nearly constant"):
        normalize_array(np.full((2, 4, 4), 7, np.uint8), PreprocessParams(method="linear"))


def _raw_zarr(tmp_path: Path, x: np.ndarray) -> Path:
    path = tmp_path / "raw.zarr"
    with write_ome_zarr(path) as w:
        v = w.create_image(None, x.shape, x.dtype, (5.0, 5.0, 5.0), (10.0, 0.0, 0.0), chunks=(8, 16, 16))
        v.write(v.roi, x)
    return path


def test_cli_preprocess_writes_recorded_uint8_next_to_raw(tmp_path):
    x = textured((12, 32, 40))
    raw = _raw_zarr(tmp_path, x)
    out = tmp_path / "raw_clahe.zarr"
    code, msg = run(
        "preprocess",
        raw,
        "-o",
        out,
        "--method",
        "clahe",
        "--clip-limit",
        "0.02",
        "--kernel",
        "8",
        "--block",
        "5",
        "9",
        "11",
    )
    assert code == 0, msg
    v = open_volume(str(out))
    assert v.dtype == np.uint8 and v.shape == x.shape
    assert v.voxel_size == (5.0, 5.0, 5.0) and v.offset == (10.0, 0.0, 0.0)
    assert v.attrs["preprocess"] == {"method": "clahe", "clip_limit": 0.02, "kernel": [8, 8, 8], "nbins": 256}
    ref = equalize_adapthist(x, kernel_size=8, clip_limit=0.02)
    assert np.array_equal(v.read(), np.round(ref * 255).astype(np.uint8))
    # inside the raw container ("next to the raw one"), and histeq too
    code, msg = run("preprocess", raw, "-o", f"{raw}/histeq", "--method", "histeq")
    assert code == 0, msg
    assert open_volume(f"{raw}/histeq").attrs["preprocess"] == {"method": "histeq"}
    # no temporary leftovers
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_cli_preprocess_errors_exit_2(tmp_path):
    raw = _raw_zarr(tmp_path, textured((4, 16, 16)))
    code, msg = run("preprocess", raw, "-o", tmp_path / "o.zarr", "--method", "gamma")
    assert code == 2 and "error:" in msg and "method" in msg
    code, msg = run("preprocess", tmp_path / "missing.zarr", "-o", tmp_path / "o.zarr")
    assert code == 2 and "error:" in msg
    assert run("preprocess", raw, "-o", tmp_path / "o.zarr", "--method", "histeq")[0] == 0
    code, msg = run("preprocess", tmp_path / "o.zarr", "-o", tmp_path / "o2.zarr")
    assert code == 2 and "already normalized" in msg


def test_prediction_refuses_input_with_other_preprocessing(tmp_path):
    cfg = UNetConfig(num_fmaps=2, downsample_factors=((2, 2, 2),))
    x = textured((8, 16, 16))
    raw = _raw_zarr(tmp_path, x)
    assert run("preprocess", raw, "-o", tmp_path / "c.zarr", "--kernel", "8")[0] == 0
    clahe = open_volume(str(tmp_path / "c.zarr"))

    def predictor(norm: Normalization) -> Predictor:
        return Predictor.from_model(UNet(cfg), (5.0, 5.0, 5.0), norm, tile=(34, 34, 34), device="cpu")

    plain = predictor(Normalization())
    with pytest.raises(ValueError, match="clahe.*the model expects no contrast normalization"):
        predict_volume(plain, clahe, tmp_path / "p.zarr")
    # checkpoint round trip keeps the preprocessing; the matching input is accepted
    norm = Normalization(preprocess={"method": "clahe", "kernel": 8})
    assert Normalization(**norm.model_dump()) == norm
    ck = Checkpoint(cfg, (34, 34, 34), (5.0, 5.0, 5.0), norm, "mito", UNet(cfg).state_dict())
    save_checkpoint(ck, tmp_path / "ck.pt")
    assert load_checkpoint(tmp_path / "ck.pt").normalization == norm
    matching = predictor(norm)
    predict_volume(matching, clahe, tmp_path / "p.zarr")
    with pytest.raises(ValueError, match="no contrast normalization but the model expects clahe"):
        predict_volume(matching, open_volume(str(raw)), tmp_path / "p2.zarr")
    # explicit override
    predict_volume(matching, open_volume(str(raw)), tmp_path / "p3.zarr", check_preprocess=False)
    # old checkpoints (no preprocess key) load as "none"
    assert Normalization(method="dtype_range").preprocess is None
    check_preprocess(None, {}, "x", "y")
    check_preprocess(
        {"method": "clahe"}, {"preprocess": {"method": "clahe", "clip_limit": 0.02, "kernel": [128] * 3}}, "x", "y"
    )


def test_training_config_names_the_preprocessing_and_trainer_checks_the_raw(tmp_path):
    from types import SimpleNamespace

    import yaml

    from organet.config import ConfigError, ExperimentConfig, load_config
    from organet.train.loop import Trainer

    x = textured((8, 16, 16))
    raw = _raw_zarr(tmp_path, x)
    with write_ome_zarr(tmp_path / "lab.zarr") as w:
        w.create_image(None, x.shape, np.uint8, (5.0, 5.0, 5.0), (10.0, 0.0, 0.0))
    assert run("preprocess", raw, "-o", f"{raw}/clahe", "--kernel", "8")[0] == 0

    def config(raw_path: str, preprocess: Any) -> ExperimentConfig:
        d = {
            "name": "t",
            "organelle": "mito",
            "output_dir": str(tmp_path / "run"),
            "normalization": {"method": "dtype_range", **({"preprocess": preprocess} if preprocess else {})},
            "data": {"train": [{"name": "a", "raw": raw_path, "labels": str(tmp_path / "lab.zarr")}]},
        }
        p = tmp_path / "c.yaml"
        p.write_text(yaml.safe_dump(d))
        return load_config(p)

    ok = config(f"{raw}/clahe", {"method": "clahe", "clip_limit": 0.02, "kernel": 8})
    assert ok.normalization.preprocess == {"method": "clahe", "clip_limit": 0.02, "kernel": [8, 8, 8], "nbins": 256}

    def check(cfg: ExperimentConfig) -> None:
        Trainer._check_preprocess(cast(Trainer, SimpleNamespace(cfg=cfg)))  # only its config is used

    check(ok)
    with pytest.raises(ConfigError, match="has clahe .* the config .* expects no contrast normalization"):
        check(config(f"{raw}/clahe", None))
    with pytest.raises(ConfigError, match="has no contrast normalization .* expects clahe"):
        check(config(str(raw), "clahe"))
    with pytest.raises(ConfigError, match=r"kernel \[16, 16, 16\]"):  # same method, other parameters
        check(config(f"{raw}/clahe", {"method": "clahe", "kernel": 16}))


LUCCHI = Path(__file__).resolve().parents[2] / "shared" / "data" / "lucchi_pp" / "train_image.tif"


def test_clahe_blockwise_on_a_real_lucchi_crop():
    if not LUCCHI.is_file():
        pytest.skip(f"real data not found: {LUCCHI} (../shared/data/lucchi_pp)")
    x = open_volume(str(LUCCHI), voxel_size=(5, 5, 5)).read((slice(40, 56), slice(300, 396), slice(500, 596)))
    p = PreprocessParams(method="clahe", kernel=32, clip_limit=0.02)
    ref = equalize_adapthist(x, kernel_size=32, clip_limit=0.02)
    assert np.array_equal(normalize_array(x, p, block=(7, 40, 33)), ref)
