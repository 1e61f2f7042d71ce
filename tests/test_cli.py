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
from organet.volumes.ome_zarr import mask_path

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

    r = invoke(
        "predict",
        "--model",
        d / "model.pt",
        "--input",
        tmp_path / "raw.zarr",
        "--output",
        tmp_path / "pred.zarr",
        "--roi-vox",
        "4:20,:,8:40",
    )
    assert r.exit_code == 0, r.output
    prob = open_volume(tmp_path / "pred.zarr/probability")
    mask = open_volume(mask_path(tmp_path / "pred.zarr"))
    assert prob.shape == (16, 40, 32) and prob.dtype == np.uint8
    assert prob.offset == (20.0, 0.0, 40.0) and prob.voxel_size == (5.0, 5.0, 5.0)
    assert prob.attrs["kind"] == "probability"
    np.testing.assert_array_equal(mask.read(), (prob.read() >= 128).astype(np.uint8))

    # the prediction covers an ROI; evaluation aligns it with the whole truth by its offset
    r = invoke(
        "evaluate",
        "--pred",
        tmp_path / "pred.zarr/probability",
        "--truth",
        d / "labels.tif",
        "--voxel-size",
        5,
        5,
        5,
        "--json",
        tmp_path / "ev.json",
    )
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
        (
            [
                "predict",
                "--model",
                "{d}/model.pt",
                "--input",
                "{d}/raw.tif",
                "--output",
                "{t}/o.zarr",
                "--roi-vox",
                "0:30,:,:",
            ],
            "outside",
        ),
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


def _commands(group, prefix=()):
    """(name path, callback) of every command registered on a typer app, recursively."""
    for c in group.registered_commands:
        yield (*prefix, c.name or c.callback.__name__), c.callback
    for g in group.registered_groups:
        yield from _commands(g.typer_instance, (*prefix, g.name))


def test_every_command_reports_errors_the_same_way_and_has_help():
    cmds = dict(_commands(app))
    assert {
        ("convert",),
        ("predict",),
        ("evaluate",),
        ("train",),
        ("demo",),
        ("instances",),
        ("preprocess",),
        ("masks", "sample"),
        ("analyze", "pores"),
        ("analyze", "coated-pits"),
        ("annotate", "napari"),
    } <= set(cmds)
    for name, fn in cmds.items():
        assert getattr(fn, "__organet_command__", False), f"{name} is not wrapped by handle_errors"
        r = invoke(*name, "--help")
        assert r.exit_code == 0 and "Usage:" in r.output, (name, r.output)
    assert invoke("--help").exit_code == 0


def test_a_bug_shows_its_traceback_and_how_to_report_it(monkeypatch, tmp_path):
    """Only organet's own errors are user errors; a plain ValueError deep inside is a bug."""
    import traceback

    import organet.volumes
    from organet.cli.errors import BUG_NOTE

    def broken(*a, **k):
        raise ValueError("index arithmetic went wrong")

    monkeypatch.setattr(organet.volumes, "open_volume", broken)
    r = runner.invoke(app, ["info", str(tmp_path / "x.tif")])
    assert r.exit_code == 1 and isinstance(r.exception, ValueError)
    text = "".join(traceback.format_exception(r.exception))
    assert text.rstrip().endswith(BUG_NOTE) and "index arithmetic went wrong" in text
    assert "organet 0." in BUG_NOTE and "report" in BUG_NOTE and "error:" not in r.output


def test_bug_note_follows_the_traceback_in_a_real_process(tmp_path):
    import subprocess
    import sys

    from organet.cli.errors import BUG_NOTE

    code = (
        "import sys, organet.volumes as v\n"
        "def broken(*a, **k): raise KeyError('boom')\n"
        "v.open_volume = broken\n"
        "sys.argv = ['organet', 'info', 'x.tif']\n"
        "from organet.cli import main\nmain()\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 1
    err = p.stderr.strip().splitlines()
    assert err[0].startswith("Traceback") and "KeyError: 'boom'" in p.stderr and err[-1] == BUG_NOTE


def test_user_errors_are_one_line(tmp_path):
    """OrganetError subclasses and pydantic validation errors: one `error:` line, exit 2."""
    r = invoke("valid-sizes", "--levels", 0)
    assert r.exit_code == 2 and r.output.strip().startswith("error:") and len(r.output.strip().splitlines()) == 1
    r = invoke("preprocess", tmp_path / "x.tif", "-o", tmp_path / "o.zarr", "--method", "gamma")
    assert r.exit_code == 2 and "error:" in r.output and "method" in r.output and "Traceback" not in r.output
    r = invoke("train", "--resume", tmp_path)
    assert r.exit_code == 2 and "no config.yaml" in r.output


def test_predict_help_groups_its_options():
    out = invoke("predict", "--help").output
    for panel in ("Input and output", "Prediction", "Dask cluster", "Blocks"):
        assert panel in out, out


def test_progress_bars_show_one_bar_per_stage():
    from rich.console import Console

    from organet.cli.progress import ProgressBars

    con = Console(width=100, record=True, force_terminal=False)
    with ProgressBars(console=con) as progress:
        progress("predict", 0, 10)
        progress("predict", 4, 10)
        progress("pyramid [s1]", 0, 3)
        progress("predict", 6, 10)
        progress("pyramid [s1]", 3, 3)
        progress("train (seconds of the 3 min budget)", 0, 180)
        progress("train (seconds of the 3 min budget)", 47, 180)
        progress("evaluate", 0, 1)
        progress("evaluate", 1, 1)
        progress("evaluate", 0, 1)  # a second pass of the same stage
        progress("evaluate", 1, 1)
    assert progress.completed("evaluate") == 1
    assert progress.completed("predict") == 10 and progress.completed("pyramid [s1]") == 3
    assert progress.completed("train (seconds of the 3 min budget)") == 47 and progress.completed("other") == 0
    assert len(progress.progress.tasks) == 4
    text = con.export_text()
    assert "10/10" in text and "pyramid [s1]" in text and "47/180" in text  # markup in names is escaped


def test_cluster_options_and_roi_options(files):
    from organet.cli.options import ClusterOptions, parse_roi_options
    from organet.errors import InputError

    assert not ClusterOptions().distributed
    with ClusterOptions().client() as client:
        assert client is None
    opts = ClusterOptions(queue="gpu", memory="8GB")
    assert opts.distributed and opts.batch_options == {"queue": "gpu", "memory": "8GB"}
    with pytest.raises(InputError, match="--queue applies to --cluster slurm"), opts.client():
        pass
    vol = open_volume(files[0] / "raw.tif", voxel_size=(5, 5, 5))
    assert parse_roi_options(vol, None, None) is None
    assert parse_roi_options(vol, "2:4,:,:", None).shape == (2, 40, 44)
    assert parse_roi_options(vol, None, "10:20,:,:").shape == (2, 40, 44)
    with pytest.raises(InputError, match="not both"):
        parse_roi_options(vol, "2:4,:,:", "10:20,:,:")


def test_evaluate_two_tiffs_without_metadata_with_one_voxel_size(tmp_path):
    """Issue 13: --voxel-size applies to every file that lacks it, the prediction included."""
    truth = np.zeros((8, 16, 16), np.uint8)
    truth[2:6, 4:12, 4:12] = 1
    pred = truth.copy()
    pred[2:6, 4:12, 4:6] = 0  # 2 of 8 columns missed: recall 0.75
    tifffile.imwrite(tmp_path / "a.tif", pred)
    tifffile.imwrite(tmp_path / "b.tif", truth)
    r = invoke("evaluate", "--pred", tmp_path / "a.tif", "--truth", tmp_path / "b.tif", "--voxel-size", 5, 5, 5)
    assert r.exit_code == 0, r.output
    assert "0.857" in r.output  # F1 = 2 * 0.75 / 1.75
    # a file that carries its own voxel size keeps it, and a real mismatch is named
    from organet.volumes import write_ome_zarr

    with write_ome_zarr(tmp_path / "p.zarr") as w:
        w.create_image(None, pred.shape, np.uint8, (10, 10, 10)).write(..., pred)
    r = invoke("evaluate", "--pred", tmp_path / "p.zarr", "--truth", tmp_path / "b.tif", "--voxel-size", 5, 5, 5)
    assert r.exit_code == 2 and "has voxel size (5, 5, 5) nm but the prediction" in r.output, r.output
