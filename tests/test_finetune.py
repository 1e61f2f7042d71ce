"""``organet finetune``: a model on a new cell of another voxel size, mixing, validation on both domains."""

import json

import pytest
import torch
from typer.testing import CliRunner

from organet.cli import app
from organet.config import RoiSpec, parse_config
from organet.demo.phantom import make_phantom
from organet.errors import InputError
from organet.model.checkpoint import load_checkpoint, release_checkpoint
from organet.train.finetune import finetune_config, original_training_rois
from organet.train.loop import train
from organet.volumes import open_volume, write_ome_zarr

runner = CliRunner()


def _write(path, arr, vs):
    with write_ome_zarr(path) as w:
        w.create_image(None, arr.shape, arr.dtype, vs, chunks=(8, 32, 32)).write((slice(None),) * 3, arr)
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A source model trained briefly on a 10 nm phantom; a new cell at 5.9 x 5.9 x ~40 nm."""
    d = tmp_path_factory.mktemp("ft")
    a = make_phantom((36, 48, 48), voxel_size=10.0, seed=2)
    iso = make_phantom((63, 80, 80), voxel_size=5.9, seed=11)
    paths = {
        "a_raw": _write(d / "a_raw.zarr", a.raw, (10.0, 10.0, 10.0)),
        "a_lab": _write(d / "a_lab.zarr", a.labels, (10.0, 10.0, 10.0)),
        "b_raw": _write(d / "b_raw.zarr", iso.raw[::7].copy(), (41.3, 5.9, 5.9)),
        "b_lab": _write(d / "b_lab.zarr", iso.labels[::7].copy(), (41.3, 5.9, 5.9)),
    }
    cfg = parse_config(
        {
            "output_dir": str(d / "source"),
            "model": {"num_fmaps": 2, "downsample_factors": [[2, 2, 2]], "input_shape": [24, 24, 24]},
            "data": {"train": [{"raw": paths["a_raw"], "labels": paths["a_lab"], "roi_vox": "0:30,:,:"}]},
            "optimizer": {"lr": 1e-3},
            "augment": {"elastic": False},
            "training": {"iterations": 2, "checkpoint_every": 2},
        }
    )
    paths["source"] = str(train(cfg, log=lambda s: None).last_checkpoint)
    paths["dir"] = d
    return paths


def _weights(path):
    return load_checkpoint(path).state_dict


def test_finetune_cli_on_a_new_voxel_size_with_mixing_and_two_validations(setup, tmp_path):
    out = tmp_path / "ft"
    r = runner.invoke(
        app,
        [
            "finetune", "--from", setup["source"], "--raw", setup["b_raw"], "--labels", setup["b_lab"],
            "--roi-vox", "0:6,:,:", "--roi-vox", "6:9,0:40,:", "--iterations", "3", "--mix", "0.25",
            "--val-raw", setup["b_raw"], "--val-labels", setup["b_lab"], "--val-roi-vox", "6:9,40:80,:",
            "--old-val-raw", setup["a_raw"], "--old-val-labels", setup["a_lab"], "--old-val-roi-vox", "30:36,:,:",
            "--output", str(out),
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "new: F1" in r.output and "old: F1" in r.output
    ck = load_checkpoint(out / "checkpoints" / "iter_0000003.pt")
    src = load_checkpoint(setup["source"])
    assert ck.voxel_size == src.voxel_size == (10.0, 10.0, 10.0) and ck.architecture == src.architecture
    tc = ck.training_config
    assert tc["optimizer"] == {"lr": 1e-4, "weight_decay": 3e-5, "lr_schedule": "constant", "lr_min": 0.0}
    assert tc["init_from"] == setup["source"] and tc["augment"]["elastic"] is False  # the source's settings
    rec = json.loads((out / "data.json").read_text())
    assert rec["group_weights"] == {"new": 0.75, "old": 0.25}
    groups = [(t["name"], t["group"], t["resampled"] is not None) for t in rec["train"]]
    # the new cell is resampled to the model's 10 nm; the original data (the source run's own) is not
    assert groups == [("new0", "new", True), ("new1", "new", True), ("old0", "old", False)]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {row["roi"] for row in rows if row["kind"] == "validation"} == {"new", "old"}
    # the result is a model `organet predict` takes, on the new cell's own grid
    r = runner.invoke(
        app, ["predict", "--model", str(out / "checkpoints" / "iter_0000003.pt"), "--input", setup["b_raw"],
              "--output", str(tmp_path / "p.zarr")],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert open_volume(tmp_path / "p.zarr" / "probability").voxel_size == (41.3, 5.9, 5.9)


def test_finetune_starts_from_the_source_weights(setup, tmp_path):
    cfg = finetune_config(
        load_checkpoint(setup["source"]),
        [RoiSpec(raw=setup["b_raw"], labels=setup["b_lab"])],
        tmp_path / "tiny_lr",
        iterations=2,
        lr=1e-12,
    )
    res = train(cfg, init_from=setup["source"], log=lambda s: None)
    before, after = _weights(setup["source"]), _weights(res.last_checkpoint)
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    cfg = cfg.model_copy(update={"output_dir": str(tmp_path / "real_lr")})
    cfg.optimizer.lr = 1e-2
    res = train(cfg, init_from=setup["source"], log=lambda s: None)
    moved = _weights(res.last_checkpoint)
    assert any(not torch.allclose(before[k], moved[k], atol=1e-4) for k in before)


def test_original_data_of_released_checkpoints_is_not_guessed(setup, tmp_path):
    ck = load_checkpoint(setup["source"])
    assert [s.group for s in original_training_rois(ck)] == ["old"]
    released = tmp_path / "released.pt"
    release_checkpoint(setup["source"], released)
    rel = load_checkpoint(released)
    assert original_training_rois(rel) == []  # file names only
    with pytest.raises(InputError, match="--mix needs the original training data"):
        finetune_config(rel, [RoiSpec(raw=setup["b_raw"], labels=setup["b_lab"])], tmp_path / "x", mix=0.3)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mix", "1.5"], "--mix must be in [0, 1)"),
        (["--mix-raw", "x.zarr"], "give both --mix-raw and --mix-labels"),
        (["--mix-raw", "x.zarr", "--mix-labels", "y.zarr"], "but --mix is 0"),
        (["--iterations", "0"], "training.iterations"),
    ],
)
def test_finetune_bad_input_is_one_line(setup, tmp_path, extra, message):
    r = runner.invoke(
        app,
        ["finetune", "--from", setup["source"], "--raw", setup["b_raw"], "--labels", setup["b_lab"],
         "--output", str(tmp_path / "o"), *extra],
    )  # fmt: skip
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def test_from_scratch_baseline_uses_the_network_but_not_the_weights(setup, tmp_path):
    out = tmp_path / "scratch"
    r = runner.invoke(
        app,
        ["finetune", "--from", setup["source"], "--raw", setup["b_raw"], "--labels", setup["b_lab"],
         "--iterations", "1", "--lr", "1e-12", "--from-scratch", "--output", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(out / "checkpoints" / "iter_0000001.pt")
    assert ck.training_config["init_from"] is None and ck.voxel_size == (10.0, 10.0, 10.0)
    before = _weights(setup["source"])
    assert ck.architecture == load_checkpoint(setup["source"]).architecture
    assert not all(torch.allclose(before[k], ck.state_dict[k], atol=1e-3) for k in before)
