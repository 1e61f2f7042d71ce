"""``organet view``: the layers of organet outputs in nm, the neuroglancer state built from
them, chunks served from the stored pyramid, and the command's errors and Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zlib

import numpy as np
import pytest
import torch
import zarr
from tests.helpers import spread_unet
from typer.testing import CliRunner

from organet.cli import app
from organet.errors import InputError
from organet.model.checkpoint import Checkpoint, save_checkpoint
from organet.model.unet import UNetConfig
from organet.predict import Predictor, predict_volume
from organet.preprocess import Normalization
from organet.report.view import NEUROGLANCER_MISSING, start_viewer, view_layers, viewer_state
from organet.volumes import open_volume, write_ome_zarr

try:
    import neuroglancer as ng
except ImportError:
    ng = None
needs_ng = pytest.mark.skipif(ng is None, reason="needs the neuroglancer extra: pip install 'organet[neuroglancer]'")

CFG = UNetConfig(num_fmaps=2, downsample_factors=((2, 2, 2),))
TILE = (34, 34, 34)
VS = (5.0, 5.0, 5.0)
OFFSET = (100.0, 0.0, 50.0)  # nm: whole voxels (20, 0, 10)
runner = CliRunner()


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """A tiny organet predict output (pyramid of 4 levels) of a raw volume with an offset."""
    d = tmp_path_factory.mktemp("view")
    torch.manual_seed(0)
    net = spread_unet(CFG)
    save_checkpoint(Checkpoint(CFG, TILE, VS, Normalization(), "mito", net.state_dict()), d / "model.pt")
    raw = np.random.default_rng(0).integers(0, 255, (16, 40, 40), dtype=np.uint8)
    with write_ome_zarr(d / "raw.zarr") as w:
        w.create_image(None, raw.shape, np.uint8, VS, OFFSET, (8, 8, 8)).write(..., raw)
    pred = Predictor.from_checkpoint(d / "model.pt", tile=TILE, device="cpu")
    predict_volume(pred, d / "raw.zarr", d / "out.zarr", chunks=(8, 8, 8))
    return d


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=20) as r:
        assert r.status == 200
        return r.read()


def npz(data: bytes) -> np.ndarray:
    """A chunk of neuroglancer's ``npz`` encoding as an array."""
    return np.load(io.BytesIO(zlib.decompress(data)))


def test_layers_of_a_predict_output(predicted):
    layers = view_layers(predicted / "out.zarr")
    assert [(lay.name, lay.kind, lay.role) for lay in layers] == [
        ("raw", "image", "raw"),  # the input its run record names
        ("probability", "image", "probability"),
        ("mask", "segmentation", "mask"),
    ]
    for lay in layers:
        assert lay.volume.voxel_size == VS and lay.volume.offset == OFFSET
        assert lay.volume.shape == (16, 40, 40)
    prob, mask = layers[1], layers[2]
    assert prob.factors == mask.factors == ((1, 1, 1), (2, 2, 2), (4, 4, 4), (8, 8, 8))
    assert [v.shape for v in prob.levels] == [(16, 40, 40), (8, 20, 20), (4, 10, 10), (2, 5, 5)]
    assert "range=[0, 255]" in prob.shader  # the uint8 scale the probability records
    assert "range=[0, 255]" in layers[0].shader
    assert view_layers(predicted / "out.zarr", recorded_raw=False)[0].name == "probability"
    other = view_layers(predicted / "out.zarr", raw=str(predicted / "out.zarr" / "probability"))[0]
    assert (other.name, other.role, other.kind) == ("raw", "raw", "image")


@needs_ng
def test_state_has_every_layer_in_nm_at_its_offset(predicted):
    layers = view_layers(predicted / "out.zarr")
    state = viewer_state(layers)
    assert list(state.dimensions.names) == ["z", "y", "x"]
    nm = [v * 1e-9 for v in VS]  # neuroglancer keeps scales in metres
    assert list(state.dimensions.units) == ["m"] * 3 and list(state.dimensions.scales) == pytest.approx(nm)
    assert [lay.name for lay in state.layers] == ["raw", "probability", "mask"]
    assert isinstance(state.layers["mask"].layer, ng.SegmentationLayer)
    assert isinstance(state.layers["probability"].layer, ng.ImageLayer)
    for lay in layers:
        source = state.layers[lay.name].source[0]
        vol = source.url
        assert list(vol.dimensions.names) == ["z", "y", "x"] and list(vol.dimensions.units) == ["m"] * 3
        assert list(vol.dimensions.scales) == pytest.approx(nm)
        assert list(vol.voxel_offset) == [20, 0, 10]  # offset / voxel size
        assert source.transform is None
        subsources = source.to_json().get("subsources", {})
        assert subsources == ({"meshes": False} if lay.kind == "segmentation" else {}), subsources
    centre = [(o + n * v / 2) / v for o, n, v in zip(OFFSET, (16, 40, 40), VS)]
    assert list(state.position) == pytest.approx(centre)
    # the mask's colour comes from its NGFF image-label metadata, when it has one
    mask = state.layers["mask"]
    assert dict(mask.segment_colors or {}) == {int(k): v for k, v in layers[2].colours.items()}


@needs_ng
def test_an_offset_off_the_voxel_grid_becomes_a_translation(tmp_path):
    arr = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    with write_ome_zarr(tmp_path / "img.zarr") as w:
        w.create_image(None, (4, 6, 8), np.float32, (10, 4, 4), (5, 0, 2)).write(..., arr)
    (layer,) = view_layers(tmp_path / "img.zarr")
    assert layer.kind == "image" and layer.role == "image"
    lo, hi = np.percentile(arr[2], [0.5, 99.5])  # contrast of the middle plane
    assert f"range=[{lo:g}, {hi:g}]" in layer.shader
    source = viewer_state([layer]).layers["img"].source[0]
    assert list(source.url.voxel_offset) == [0, 0, 0]
    assert np.asarray(source.transform.matrix)[:, 3].tolist() == [0.5, 0.0, 0.5]
    assert list(source.transform.output_dimensions.scales) == pytest.approx([10e-9, 4e-9, 4e-9])


def test_legacy_mask_instances_folder_and_plain_volumes(predicted, tmp_path):
    old = tmp_path / "old.zarr"
    shutil.copytree(predicted / "out.zarr", old)
    labels = old / "probability" / "labels"
    if labels.is_dir():  # the layout before NGFF labels: OUT.zarr/mask
        shutil.move(labels / "mask", old / "mask")
        shutil.rmtree(labels)
    assert [(lay.name, lay.kind) for lay in view_layers(old, recorded_raw=False)] == [
        ("probability", "image"),
        ("mask", "segmentation"),
    ]
    ids = np.arange(4 * 6 * 8, dtype=np.uint32).reshape(4, 6, 8) % 7
    (tmp_path / "inst").mkdir()
    with write_ome_zarr(tmp_path / "inst" / "labels.zarr") as w:
        w.create_image(None, ids.shape, np.uint32, VS, attrs={"kind": "instances"}).write(..., ids)
    (inst,) = view_layers(tmp_path / "inst")
    assert (inst.name, inst.kind, inst.role) == ("instances", "segmentation", "instances")
    zarr.save_array(str(tmp_path / "plain.zarr"), ids.astype(np.uint16), zarr_format=3)  # no metadata
    with pytest.warns(UserWarning, match="no voxel size"):
        (plain,) = view_layers(tmp_path / "plain.zarr")
    assert plain.kind == "segmentation" and plain.volume.voxel_size == (1.0, 1.0, 1.0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty is not an organet output"):
        view_layers(tmp_path / "empty")


@needs_ng
def test_server_serves_the_stored_pyramid_levels(predicted):
    layers = view_layers(predicted / "out.zarr")
    session = start_viewer(layers, bind_address="127.0.0.1", port=0)
    try:
        assert session.url.startswith("http://127.0.0.1:") and "/v/" in session.url
        assert b"<html" in fetch(session.url).lower()  # the neuroglancer client
        server = session.url.split("/v/")[0]
        state = session.viewer.state
        urls = {lay.name: state.layers[lay.name].source[0].url for lay in layers}  # served from here
        assert all(u.startswith("python://volume/") for u in urls.values()), urls
        keys = {n: u.removeprefix("python://volume/") for n, u in urls.items()}
        info = json.loads(fetch(f"{server}/neuroglancer/info/{keys['mask']}"))
        assert info["volumeType"] == "segmentation" and info["dataType"] == "uint8"
        assert info["shape"] == [16, 40, 40] and [int(o) for o in info["voxelOffset"]] == [20, 0, 10]
        assert info["coordinateSpace"]["z"] == [pytest.approx(5e-9), "m"]
        prob = open_volume(predicted / "out.zarr" / "probability")
        got = npz(fetch(f"{server}/neuroglancer/npz/{keys['probability']}/1,1,1/2,4,6/10,20,30"))
        np.testing.assert_array_equal(got, prob[2:10, 4:20, 6:30])
        s1 = zarr.open_array(str(predicted / "out.zarr" / "probability" / "s1"), mode="r")[:]
        got = npz(fetch(f"{server}/neuroglancer/npz/{keys['probability']}/2,2,2/0,0,0/8,20,20"))
        np.testing.assert_array_equal(got, s1)  # the stored level, not a mean computed here
        s1 = layers[2].levels[1][:]  # the mask's s1 (max), then striding of it
        got = npz(fetch(f"{server}/neuroglancer/npz/{keys['mask']}/4,2,2/0,0,0/4,20,20"))
        np.testing.assert_array_equal(got, s1[::2])
        with pytest.raises(urllib.error.HTTPError) as e:  # meshes need the whole volume: not served
            fetch(f"{server}/neuroglancer/mesh/{keys['mask']}/1")
        assert e.value.code == 405
    finally:
        session.stop()


@needs_ng
def test_a_port_in_use_is_a_user_error(predicted):
    import socket

    layers = view_layers(predicted / "out.zarr", recorded_raw=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InputError, match=f"cannot serve on 127.0.0.1:{port}: .*pick another --port"):
            start_viewer(layers, port=port)
    with pytest.raises(InputError, match="--port 70000"):
        start_viewer(layers, port=70000)


def test_command_errors_are_one_line(predicted, tmp_path, monkeypatch):
    res = runner.invoke(app, ["view", str(tmp_path / "missing.zarr"), "--no-browser"])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no such file or directory")
    monkeypatch.setitem(sys.modules, "neuroglancer", None)  # import neuroglancer fails
    res = runner.invoke(app, ["view", str(predicted / "out.zarr"), "--no-browser"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [f"error: {NEUROGLANCER_MISSING}"]


@needs_ng
def test_command_prints_the_link_serves_until_ctrl_c(predicted):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "organet.cli", "view", str(predicted / "out.zarr"), "--no-browser", "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        deadline = time.time() + 60
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if line.startswith("http://"):
                break
        url = lines[-1]
        assert url.startswith("http://127.0.0.1:"), lines
        assert any("probability (image" in ln and "mask (segmentation" in ln for ln in lines), lines
        assert b"<html" in fetch(url).lower()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped" in out + err
