"""`organet predict --workers/--block ...` and `organet instances` from the command line,
including a kill -9 of the client mid-run and a resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from organet.blockwise.faults import ENV
from organet.cli import app
from organet.model.checkpoint import Checkpoint, save_checkpoint
from organet.model.unet import UNet, UNetConfig
from organet.predict.run import IMAGES
from organet.preprocess import Normalization
from organet.volumes import open_volume, write_ome_zarr

runner = CliRunner()
CFG = UNetConfig(num_fmaps=2, downsample_factors=((2, 2, 2),))
TILE = ["--tile", "34", "34", "34"]


class Out:
    """A CLI result with its output on one line (rich wraps long lines)."""

    def __init__(self, r) -> None:
        self.exit_code, self.output = r.exit_code, " ".join(r.output.split())


def invoke(*args) -> Out:
    return Out(runner.invoke(app, [str(a) for a in args]))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_bw")
    torch.manual_seed(1)
    save_checkpoint(
        Checkpoint(CFG, (34, 34, 34), (5.0, 5.0, 5.0), Normalization(), "mito", UNet(CFG).state_dict()), d / "model.pt"
    )
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 255, (32, 64, 64), dtype=np.uint8)
    with write_ome_zarr(d / "raw.zarr") as w:
        w.create_image(None, raw.shape, np.uint8, (5, 5, 5), (0, 0, 0), (32, 32, 32)).write(..., raw)
    r = invoke(
        "predict",
        "--model",
        d / "model.pt",
        "--input",
        d / "raw.zarr",
        "--output",
        d / "ref.zarr",
        *TILE,
        "--device",
        "cpu",
    )
    assert r.exit_code == 0, r.output
    return d


def same(a: Path, b: Path) -> None:
    for n in IMAGES:
        np.testing.assert_array_equal(open_volume(a / n).read(), open_volume(b / n).read())


def test_predict_workers_equals_single_process_and_instances(files, tmp_path):
    out = tmp_path / "bw.zarr"
    args = [
        "predict",
        "--model",
        files / "model.pt",
        "--input",
        files / "raw.zarr",
        "--output",
        out,
        *TILE,
        "--device",
        "cpu",
        "--workers",
        "2",
        "--chunks",
        "16",
        "32",
        "32",
        "--block",
        "16",
        "64",
        "64",
    ]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert "2 blocks" in r.output
    same(out, files / "ref.zarr")
    r = invoke(*args)
    assert r.exit_code == 0 and "already complete" in r.output


def test_instances_cli(files, tmp_path):
    from scipy import ndimage

    rng = np.random.default_rng(0)
    blobs = ndimage.gaussian_filter(rng.random((32, 64, 64)), 1.5) > 0.52
    with write_ome_zarr(tmp_path / "m.zarr") as w:
        w.create_image(None, blobs.shape, np.uint8, (5, 5, 5), (0, 0, 0), (16, 32, 32)).write(..., blobs)
    ref, n = ndimage.label(blobs)
    big = np.flatnonzero(np.bincount(ref.ravel())[1:] * 125 >= 1000)
    r = invoke(
        "instances",
        tmp_path / "m.zarr",
        "--output",
        tmp_path / "inst",
        "--min-size",
        1000,
        "--raw",
        files / "raw.zarr",
        "--block",
        16,
        32,
        32,
    )
    assert r.exit_code == 0, r.output
    assert f"{len(big)} objects" in r.output
    t = pd.read_csv(tmp_path / "inst" / "objects.csv")
    assert len(t) == len(big) > 3 and (t["volume_nm3"] >= 1000).all() and t["mean_intensity"].notna().all()
    r = invoke("instances", tmp_path / "missing.zarr", "--output", tmp_path / "i")
    assert r.exit_code == 2 and "error:" in r.output
    r = invoke("instances", tmp_path / "m.zarr", "--output", tmp_path / "i", "--connectivity", 5)
    assert r.exit_code == 2 and "connectivity" in r.output


def test_predict_cli_errors(files, tmp_path, monkeypatch):
    base = [
        "predict",
        "--model",
        files / "model.pt",
        "--input",
        files / "raw.zarr",
        "--output",
        tmp_path / "e.zarr",
        *TILE,
        "--device",
        "cpu",
    ]
    for extra, msg in (
        (["--cluster", "k8s"], "unknown cluster"),
        (["--queue", "gpu"], "applies to --cluster"),
        (["--mask-rule", "big"], "mask rule"),
        (["--threshold", "1.5"], "threshold"),
        (["--tta", "spin"], "test-time augmentation"),
    ):
        r = invoke(*base, *extra)
        assert r.exit_code == 2 and "error:" in r.output and msg in r.output, (extra, r.output)
    # a block shape that is not whole chunks is rounded, and the rounding reported
    r = invoke(*base[:6], tmp_path / "r.zarr", *TILE, "--device", "cpu", "--chunks", 16, 16, 16, "--block", 30, 64, 64)
    assert r.exit_code == 0 and "note: block shape (30, 64, 64) rounded to (32, 64, 64)" in r.output, r.output
    same(tmp_path / "r.zarr", files / "ref.zarr")
    # a block that keeps failing: exit 1, named; the finished blocks stay for a rerun
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps([{"stage": "predict", "blocks": [[0, 1, 0]], "counter_dir": str(tmp_path / "c")}]))
    monkeypatch.setenv(ENV, str(faults))
    r = invoke(*base, "--chunks", 32, 32, 32, "--block", "32", "32", "64", "--retries", "1")
    assert r.exit_code == 1 and "block 0_1_0" in r.output and "injected failure" in r.output, r.output
    assert not (tmp_path / "e.zarr").exists() and (tmp_path / "e.zarr.partial").exists()
    monkeypatch.delenv(ENV)
    r = invoke(*base, "--chunks", 32, 32, 32, "--block", "32", "32", "64")
    assert r.exit_code == 0 and "1 done before" in r.output, r.output
    same(tmp_path / "e.zarr", files / "ref.zarr")
    # a sample rule nothing passes: every block skipped, the output reads 0
    r = invoke(*base[:6], tmp_path / "empty.zarr", *TILE, "--device", "cpu", "--mask-rule", ">255")
    assert r.exit_code == 0 and "1 without sample" in r.output, r.output
    assert not open_volume(tmp_path / "empty.zarr/probability").read().any()


def test_kill_9_of_the_client_then_resume(files, tmp_path):
    out = tmp_path / "k.zarr"
    cmd = [
        sys.executable,
        "-m",
        "organet.cli",
        "predict",
        "--model",
        str(files / "model.pt"),
        "--input",
        str(files / "raw.zarr"),
        "--output",
        str(out),
        *TILE,
        "--device",
        "cpu",
        "--chunks",
        "16",
        "16",
        "16",
        "--block",
        "16",
        "16",
        "16",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    done = tmp_path / "k.zarr.progress" / "predict"
    try:
        t0 = time.time()
        while not (done.is_dir() and len(list(done.glob("*.json"))) >= 3) and time.time() - t0 < 60:
            assert p.poll() is None, "finished before it could be killed"
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait()
    n_done = len(list(done.glob("*.json")))
    assert 3 <= n_done < 32 and not out.exists()
    r = invoke(*cmd[3:])
    assert r.exit_code == 0, r.output
    assert f"{n_done} done before" in r.output
    same(out, files / "ref.zarr")
