"""The command line end to end on tiny data, and its error messages."""

import json

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from organet.cli import app
from organet.demo.phantom import make_phantom
from organet.model.checkpoint import Checkpoint, save_checkpoint
from organet.model.unet import UNet, UNetConfig
from organet.preprocess import Normalization
from organet.volumes import open_volume

runner = CliRunner()
CFG = UNetConfig(num_fmaps=2, downsample_factors=((2, 2, 2), (2, 2, 2)))


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    ph = make_phantom((24, 40, 44), seed=5)
    tifffile.imwrite(d / "raw.tif", ph.raw)
    tifffile.imwrite(d / "labels.tif", ph.labels)
    torch.manual_seed(0)
    ckpt = Checkpoint(CFG, (52, 52, 52), (5.0, 5.0, 5.0), Normalization(), "mito", UNet(CFG).state_dict())
    save_checkpoint(ckpt, d / "model.pt")
    return d, ph


def test_convert_predict_evaluate_pipeline(files, tmp_path):
    d, ph = files
    r = invoke("convert", d / "raw.tif", tmp_path / "raw.zarr", "--voxel-size", 5, 5, 5, "--chunks", 8, 16, 16)
    assert r.exit_code == 0, r.output
    v = open_volume(tmp_path / "raw.zarr")
    assert v.voxel_size == (5.0, 5.0, 5.0) and np.array_equal(v.read(), ph.raw)

    r = invoke("predict", "--model", d / "model.pt", "--input", tmp_path / "raw.zarr", "--output",
               tmp_path / "pred.zarr", "--roi-vox", "4:20,:,8:40")
    assert r.exit_code == 0, r.output
    prob = open_volume(tmp_path / "pred.zarr/probability")
    mask = open_volume(tmp_path / "pred.zarr/mask")
    assert prob.shape == (16, 40, 32) and prob.dtype == np.uint8
    assert prob.offset == (20.0, 0.0, 40.0) and prob.voxel_size == (5.0, 5.0, 5.0)
    assert prob.attrs["kind"] == "probability"
    np.testing.assert_array_equal(mask.read(), (prob.read() >= 128).astype(np.uint8))

    # the prediction covers an ROI; evaluation aligns it with the whole truth by its offset
    r = invoke("evaluate", "--pred", tmp_path / "pred.zarr/probability", "--truth", d / "labels.tif",
               "--voxel-size", 5, 5, 5, "--json", tmp_path / "ev.json")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "ev.json").read_text())
    p = prob.read() >= 128
    t = ph.labels[4:20, :, 8:40] > 0
    c = res["per_threshold"][0]
    assert c["threshold"] == 0.5 and c["tp"] == (p & t).sum() and c["fp"] == (p & ~t).sum()
    assert c["fn"] == (~p & t).sum() and c["tn"] == (~p & ~t).sum()
    # without the truth's voxel size the grids cannot be aligned
    r = invoke("evaluate", "--pred", tmp_path / "pred.zarr/probability", "--truth", d / "labels.tif")
    assert r.exit_code == 2 and "voxel size" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "nope.tif"], "no such file"),
        (["predict", "--model", "nope.pt", "--input", "{d}/raw.tif", "--output", "{t}/o.zarr"], "not found"),
        (["predict", "--model", "{d}/model.pt", "--input", "{d}/raw.tif", "--output", "{t}/o.zarr",
          "--roi-vox", "0:30,:,:"], "outside"),
        (["evaluate", "--pred", "{d}/raw.tif", "--truth", "{t}/small.tif"], "shape"),
        (["train", "{t}/typo.yaml"], "trainig: unknown key"),
        (["convert", "{t}/gap", "{t}/g.zarr"], "missing"),
    ],
)
def test_bad_input_gives_one_clear_error_and_nonzero_exit(files, tmp_path, args, message):
    d, _ = files
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((3, 4, 5), np.uint8))
    (tmp_path / "typo.yaml").write_text("trainig: {}\ndata: {train: [{raw: a.tif, labels: b.tif}]}\n")
    (tmp_path / "gap").mkdir()
    for i in (1, 2, 4):
        tifffile.imwrite(tmp_path / "gap" / f"s_{i}.tif", np.zeros((4, 5), np.uint8))
    r = invoke(*(a.format(d=d, t=tmp_path) for a in args))
    assert r.exit_code == 2, r.output
    assert "error:" in r.output and message in r.output, r.output
    assert "Traceback" not in r.output


def test_checkpoint_from_another_architecture_is_rejected_for_fine_tuning(files, tmp_path):
    d, _ = files
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data: {{train: [{{raw: {d}/raw.tif, labels: {d}/labels.tif, voxel_size: [5, 5, 5]}}]}}\n"
        "model: {num_fmaps: 4, downsample_factors: [[2, 2, 2], [2, 2, 2]], input_shape: [52, 52, 52]}\n"
        f"output_dir: {tmp_path}/run\n"
    )
    r = invoke("train", cfg, "--init-from", d / "model.pt", "--iterations", 1)
    assert r.exit_code == 2 and "another architecture" in r.output, r.output


def test_valid_sizes_and_info(files):
    d, _ = files
    r = invoke("valid-sizes", "--max-size", 210)
    assert r.exit_code == 0 and " 204 ->  110" in r.output
    r = invoke("info", d / "model.pt")
    assert r.exit_code == 0 and '"organelle": "mito"' in r.output


def test_error_messages_keep_square_brackets(tmp_path):
    """rich markup must not eat ``[...]`` in paths or hints."""
    res = CliRunner().invoke(app, ["train", str(tmp_path / "conf[v2].yaml")])
    assert res.exit_code == 2
    assert "conf[v2].yaml" in res.output
