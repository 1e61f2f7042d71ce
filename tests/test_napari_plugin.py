"""The napari plugin: the npe2 manifest validates, the reader opens organet outputs with their
scale and offset (nm), and the predict widget equals Predictor.predict and can be cancelled.
Offscreen Qt (tests/conftest.py); napari comes with the ``test`` extra."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from tests.helpers import spread_unet

from organet.annotate import napari_predict as npp
from organet.annotate import napari_reader as nr
from organet.errors import InputError
from organet.model.checkpoint import Checkpoint, save_checkpoint
from organet.model.unet import UNetConfig
from organet.predict import Predictor, predict_volume
from organet.preprocess import Normalization
from organet.volumes import Roi, Volume, write_ome_zarr
from organet.volumes.ome_zarr import mask_path

CFG = UNetConfig(num_fmaps=4, downsample_factors=((2, 2, 2),))
TILE = 34  # -> 16^3 output, step 16
VS, OFF = (8.0, 4.0, 4.0), (16.0, 0.0, 8.0)


@pytest.fixture
def viewer(qapp):
    """A napari viewer model: layers, dims, camera and plugin readers without a window (this
    machine's offscreen Qt has no OpenGL, which napari's ``make_napari_viewer`` needs)."""
    _need_napari()
    from napari.components import ViewerModel

    return ViewerModel()


def _need_napari() -> None:
    try:
        import magicgui  # noqa: F401
        import napari  # noqa: F401
    except ImportError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"napari is not installed ({e}): pip install -e '.[test]'")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny random checkpoint at 8 x 4 x 4 nm, a raw volume of 24 x 48 x 64 voxels (offset
    16, 0, 8 nm) and its ``organet predict`` output (two pyramid levels)."""
    d = tmp_path_factory.mktemp("plugin")
    torch.manual_seed(0)
    net = spread_unet(CFG)
    save_checkpoint(Checkpoint(CFG, (TILE,) * 3, VS, Normalization(), "mito", net.state_dict()), d / "model.pt")
    raw = np.random.default_rng(0).integers(0, 255, (24, 48, 64), dtype=np.uint8)
    with write_ome_zarr(d / "raw.zarr") as w:
        w.create_image(None, raw.shape, np.uint8, VS, OFF, (8, 16, 16)).write(..., raw)
    pred = Predictor.from_checkpoint(d / "model.pt", tile=(TILE,) * 3, device="cpu")
    predict_volume(pred, d / "raw.zarr", d / "pred.zarr", chunks=(8, 16, 16))
    return d, raw


# --------------------------------------------------------------------------- manifest


def test_npe2_manifest_validates_and_imports():
    _need_napari()
    from npe2 import PluginManifest

    man = PluginManifest.from_distribution("organet")
    man.validate_imports()  # every python_name resolves (npe2 validate --imports)
    cmds = {c.id: c.python_name for c in man.contributions.commands}
    assert cmds["organet.predict_widget"] == "organet.annotate.napari_predict:PredictWidget"
    (reader,) = man.contributions.readers
    assert cmds[reader.command] == "organet.annotate.napari_reader:get_reader" and reader.accepts_directories
    assert {w.command for w in man.contributions.widgets} == {"organet.graphcut_widget", "organet.predict_widget"}


# --------------------------------------------------------------------------- reader


def test_reader_opens_predict_instances_and_uncertainty_outputs(world, tmp_path):
    from organet.analyze.instances import label_instances
    from organet.annotate.suggest import suggest
    from organet.volumes import open_volume

    d, raw = world
    assert nr.get_reader(str(tmp_path)) is None  # an empty folder: not ours
    assert nr.get_reader(str(d / "model.pt")) is None
    read = nr.get_reader(str(d / "pred.zarr"))
    assert read is not None
    layers = read(str(d / "pred.zarr"))
    assert [(kw["name"], kind) for _, kw, kind in layers] == [
        ("pred.zarr probability", "image"),
        ("pred.zarr mask", "labels"),
    ]
    (prob, pkw, _), (mask, mkw, _) = layers
    assert pkw["multiscale"] and mkw["multiscale"] and len(prob) == len(mask) >= 2
    assert [tuple(a.shape) for a in prob[:2]] == [(24, 48, 64), (12, 24, 32)]
    for kw in (pkw, mkw):
        assert tuple(kw["scale"]) == VS and tuple(kw["translate"]) == OFF
    assert type(prob[0]).__module__.startswith("dask")  # lazy: nothing read yet
    p0 = open_volume(d / "pred.zarr" / "probability")
    np.testing.assert_array_equal(np.asarray(prob[0]), p0.read())
    np.testing.assert_array_equal(np.asarray(mask[1]), open_volume(mask_path(d / "pred.zarr") / "s1").read())
    assert pkw["contrast_limits"] == (0.0, 255.0) and pkw["metadata"]["organet"]["kind"] == "probability"

    ((rawdata, rkw, kind),) = nr.read_layers(d / "raw.zarr")  # a plain OME-Zarr image
    assert kind == "image" and not rkw["multiscale"] and tuple(rkw["translate"]) == OFF
    np.testing.assert_array_equal(np.asarray(rawdata), raw)

    label_instances(open_volume(mask_path(d / "pred.zarr")), tmp_path / "inst")
    ((lab, lkw, kind),) = nr.napari_read([str(tmp_path / "inst" / "labels.zarr")])
    assert kind == "labels" and tuple(lkw["scale"]) == VS and tuple(lkw["translate"]) == OFF
    assert np.asarray(lab).max() >= 1 and ((np.asarray(lab) > 0) == (p0.read() >= 128)).all()

    suggest([str(d / "pred.zarr")], tmp_path / "where", box_nm=(64, 64, 64), k=1)
    ((unc, ukw, kind),) = nr.read_layers(tmp_path / "where" / "uncertainty.zarr")
    assert kind == "image" and ukw["metadata"]["organet"]["kind"] == "uncertainty"
    assert tuple(ukw["scale"]) == VS and tuple(ukw["translate"]) == OFF
    assert (unc[0] if ukw["multiscale"] else unc).shape == raw.shape


def test_reader_in_a_viewer(world, viewer):
    from npe2 import PluginManager

    d, _ = world
    pm = PluginManager.instance()
    pm.discover()  # napari leaves discovery to its app; the entry point must find the manifest
    assert "organet" in pm
    viewer.open(str(d / "pred.zarr"), plugin="organet")
    prob, mask = viewer.layers["pred.zarr probability"], viewer.layers["pred.zarr mask"]
    assert type(prob).__name__ == "Image" and type(mask).__name__ == "Labels" and mask.multiscale
    assert tuple(prob.scale) == VS and tuple(mask.translate) == OFF


# --------------------------------------------------------------------------- regions


def test_regions_from_world_boxes_shapes_and_the_view():
    shape, sc, tr = (24, 48, 64), VS, OFF
    # a rectangle on voxel edges (as organet suggest draws boxes) gives exactly its voxels
    y0, y1, x0, x1 = 5, 20, 10, 40
    rect = np.array(
        [[16 + 8 * 12, (y - 0.5) * 4, 8 + (x - 0.5) * 4] for y, x in ((y0, x0), (y0, x1), (y1, x1), (y1, x0))]
    )
    assert npp.shape_roi(rect, shape, sc, tr, planes=8) == Roi((8, 5, 10), (8, 15, 30))
    assert npp.shape_roi(rect, shape, sc, tr, planes=100) == Roi((0, 5, 10), (24, 15, 30))  # clipped
    roi = npp.view_roi(
        center=(0.0, 96.0, 136.0), point=(16 + 8 * 3, 0.0, 0.0), zoom=2.0, canvas_size=(40, 60),
        displayed=(1, 2), shape=shape, scale=sc, translate=tr, planes=4,
    )  # fmt: skip
    # y: 96 +- 10 nm -> voxels 21.5..26.5 -> 22..26; x: 136 +- 15 nm -> (121..151 - 8) / 4 -> 29..35
    assert roi == Roi((1, 22, 29), (4, 5, 7))
    assert npp.view_roi(
        center=(0, 0, 0), point=(0, 0, 0), zoom=1.0, canvas_size=(1, 1), displayed=(0, 1, 2),
        shape=shape, scale=sc, translate=tr,
    ) == Roi((0, 0, 0), shape)  # fmt: skip
    with pytest.raises(InputError, match="outside the image"):
        npp.world_roi((1e6, 0, 0), (2e6, 1, 1), shape, sc, tr)
    assert npp.parse_voxel_size("8, 4 4") == (8.0, 4.0, 4.0) and npp.parse_voxel_size(" ") is None
    with pytest.raises(InputError, match="three numbers"):
        npp.parse_voxel_size("8 x 4")


# --------------------------------------------------------------------------- predict widget


def _widget(viewer, world):
    d, raw = world
    viewer.add_image(raw, name="raw", scale=VS, translate=OFF)
    w = npp.PredictWidget(viewer)
    w.model.value = npp.CHECKPOINT
    w.checkpoint.value = str(d / "model.pt")
    w.tile.value, w.block.value = TILE, 16
    assert w.image.value == "raw"
    return w


def _reference(world, roi):
    d, raw = world
    pred = Predictor.from_checkpoint(d / "model.pt", tile=(TILE,) * 3, device="cpu")
    return pred.predict(Volume(raw, VS, OFF), roi)


def test_predict_widget_equals_predictor_and_places_the_result(world, viewer, qtbot):
    w = _widget(viewer, world)
    assert npp.CHECKPOINT in w.model.choices and set(npp.model_names()) <= set(w.model.choices)
    w.region.value = npp.WHOLE
    seen = []
    worker = w.run()
    assert worker is not None and w.run() is None  # one prediction at a time
    worker.yielded.connect(seen.append)
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    assert w.last is not None and w.last.complete and w.last.blocks == 2 * 3 * 4  # 16-voxel blocks
    assert seen[-1] == (24, 24) and w.progress.value == w.progress.max == 24
    prob, mask = viewer.layers["raw probability"], viewer.layers["raw mask"]
    ref = _reference(world, Roi((0, 0, 0), (24, 48, 64)))
    assert prob.data.dtype == np.float32 and 0.05 < float((ref >= 0.5).mean()) < 0.95
    np.testing.assert_array_equal(prob.data, ref)
    np.testing.assert_array_equal(mask.data, (ref >= 0.5).astype(np.uint8))
    assert type(mask).__name__ == "Labels" and tuple(mask.scale) == VS and tuple(prob.translate) == OFF

    # the box of a rectangle drawn on z plane 10: 6 planes around it; result placed at the box
    shapes = viewer.add_shapes(
        [np.array([[96.0, y, x] for y, x in ((38, 86), (38, 214), (158, 214), (158, 86))])],  # voxel edges
        shape_type="rectangle",
        name="box",
    )
    assert "box" in w.region.choices
    w.region.value, w.planes.value, w.threshold.value = "box", 6, 0.3
    w.run()
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    roi = Roi((7, 10, 20), (6, 30, 32))
    assert w.last is not None and w.last.roi == roi and shapes.ndim == 3
    ref = _reference(world, roi)
    prob, mask = viewer.layers["raw probability"], viewer.layers["raw mask"]
    np.testing.assert_array_equal(prob.data, ref)
    np.testing.assert_array_equal(mask.data, (ref >= 0.3).astype(np.uint8))
    assert tuple(prob.translate) == (16 + 7 * 8.0, 10 * 4.0, 8 + 20 * 4.0) and tuple(mask.scale) == VS
    assert len([lay for lay in viewer.layers if lay.name == "raw probability"]) == 1  # replaced


def test_cancel_stops_between_blocks(world, viewer, qtbot, monkeypatch):
    w = _widget(viewer, world)
    w.region.value = npp.WHOLE
    calls = []
    original = Predictor.predict

    def slow(self, volume, roi):
        calls.append(roi)
        time.sleep(0.15)
        return original(self, volume, roi)

    monkeypatch.setattr(Predictor, "predict", slow)
    worker = w.run()
    assert w.cancel_button.enabled and not w.run_button.enabled

    def cancel_after_first(step):
        if step[0] >= 1:
            w.cancel_button.native.click()

    worker.yielded.connect(cancel_after_first)
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    assert w.last is not None and not w.last.complete and 1 <= w.last.done <= 3 < w.last.blocks == 24
    assert len(calls) == w.last.done and "raw probability" not in viewer.layers
    assert w.status.value == f"cancelled after {w.last.done} of 24 blocks"
    assert w.run_button.enabled and not w.cancel_button.enabled


def test_predict_widget_reports_bad_input_without_raising(world, viewer, qtbot):
    w = npp.PredictWidget(viewer)
    assert w.run() is None and "no image layer" in w.status.value
    w = _widget(viewer, world)
    w.checkpoint.value = ""
    assert w.run() is None and "choose a checkpoint" in w.status.value
    w.checkpoint.value = str(world[0] / "model.pt")
    w.voxel_size.value = "8 x 4"
    assert w.run() is None and "three numbers" in w.status.value
    w.voxel_size.value = ""
    w.region.value, w.planes.value = npp.VIEW, 4  # the visible box (as in test_regions_...)
    viewer.canvas.size, viewer.camera.zoom = (40, 60), 2.0
    viewer.camera.center = (0.0, 96.0, 136.0)
    viewer.dims.set_point(0, 16 + 8 * 3)
    assert w.request().roi == Roi((1, 22, 29), (4, 5, 7))
    w.voxel_size.value = "8000"  # 1000x the model's voxels: refused by the Predictor, in the worker
    w.region.value = npp.WHOLE
    w.run()
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    assert w.status.value.startswith("failed:") and "more than" in w.status.value


def test_widget_modules_import_without_napari(monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "napari", None)  # `import napari` now raises ImportError
    monkeypatch.setattr(npp, "_widget_class", npp.lazy_widget_class(npp._define_widget_class))  # uncached
    with pytest.raises(ImportError, match=r"napari is not installed: pip install 'organet\[napari\]'"):
        _ = npp.PredictWidget
    assert importlib.reload(nr).get_reader  # the reader never imports napari
