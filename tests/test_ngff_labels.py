"""NGFF label images: the mask of ``organet predict`` is the label image
``OUT.zarr/probability/labels/mask`` and ``labels.zarr`` of ``organet instances`` is a label
image, both with ``image-label`` metadata that an OME-Zarr 0.5 validator (yaozarrs) accepts;
the napari reader shows them as labels layers; outputs of the earlier layout (``OUT.zarr/mask``)
still open, and an unfinished run of that layout is not resumed into the new one."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaozarrs  # the OME-Zarr validator (test extra)
import zarr
from tests.helpers import spread_unet

from organet.analyze.instances import label_instances
from organet.annotate import napari_reader as nr
from organet.blockwise.output import RUN_KEY, read_run
from organet.errors import IncompatibleError
from organet.model.checkpoint import Checkpoint, save_checkpoint
from organet.model.unet import UNetConfig
from organet.predict import Predictor, predict_volume
from organet.preprocess import Normalization
from organet.report.prediction import prediction_record
from organet.report.slices import read_planes
from organet.volumes import Volume, open_volume, write_ome_zarr
from organet.volumes.ome_zarr import MASK_RGBA, PREDICTION_MASK, find_mask, mask_path

CFG = UNetConfig(num_fmaps=2, downsample_factors=((2, 2, 2),))
TILE = (34, 34, 34)  # -> 16^3 output
VS, OFF = (8.0, 4.0, 4.0), (16.0, 0.0, 8.0)
CHUNKS = (8, 16, 16)


def validate(path: Path) -> None:
    """The OME-Zarr 0.5 validator accepts ``path`` without errors or warnings (a labels image
    without ``image-label`` is only a warning there, so warnings fail too)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yaozarrs.validate_zarr_store(str(path))
    found = [str(w.message) for w in caught if "yaozarrs" in type(w.message).__module__]
    assert not found, found


def ome(group: Path) -> dict:
    return json.loads((group / "zarr.json").read_text())["attributes"]["ome"]


def predict(d: Path, out: Path, **kw):
    pred = Predictor.from_checkpoint(d / "model.pt", tile=TILE, device="cpu")
    return predict_volume(pred, d / "raw.zarr", out, chunks=CHUNKS, **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny random mito model at 8 x 4 x 4 nm, a raw volume of 24 x 48 x 64 voxels (offset
    16, 0, 8 nm) and its ``organet predict`` output ``pred.zarr`` (threshold 0.4, 3 levels)."""
    d = tmp_path_factory.mktemp("ngff")
    torch.manual_seed(0)
    net = spread_unet(CFG)
    save_checkpoint(Checkpoint(CFG, TILE, VS, Normalization(), "mito", net.state_dict()), d / "model.pt")
    raw = np.random.default_rng(0).integers(0, 255, (24, 48, 64), dtype=np.uint8)
    with write_ome_zarr(d / "raw.zarr") as w:
        w.create_image(None, raw.shape, np.uint8, VS, OFF, CHUNKS).write(..., raw)
    predict(d, d / "pred.zarr", threshold=0.4)
    return d


def test_predict_writes_the_mask_as_the_label_image_of_the_probability(world):
    out = world / "pred.zarr"
    image, mask = out / "probability", mask_path(out)
    assert mask == out / PREDICTION_MASK == image / "labels" / "mask" and find_mask(out) == mask
    assert not (out / "mask").exists()
    validate(image)  # the image, its labels group and the label image (source, dtype, level count)

    assert ome(image / "labels") == {"version": "0.5", "labels": ["mask"]}
    label = ome(mask)["image-label"]
    assert label["source"] == {"image": "../../"} and (mask / "../../").resolve() == image.resolve()
    assert {c["label-value"]: c["rgba"] for c in label["colors"]} == {0: [0, 0, 0, 0], 1: list(MASK_RGBA)}
    assert {"label-value": 1, "class": "mito", "threshold": 0.4} in label["properties"]

    prob_levels = [d["path"] for d in ome(image)["multiscales"][0]["datasets"]]
    mask_levels = [d["path"] for d in ome(mask)["multiscales"][0]["datasets"]]
    assert prob_levels == mask_levels == ["s0", "s1", "s2"]  # set_levels kept image-label
    m, p = open_volume(mask), open_volume(image)
    assert m.attrs["kind"] == "mask" and m.attrs["threshold"] == 0.4 and m.attrs["model"]["organelle"] == "mito"
    assert m.voxel_size == VS and m.offset == OFF and m.dtype == np.uint8
    np.testing.assert_array_equal(m.read(), (p.read() >= 102).astype(np.uint8))  # uint8_cut(0.4) = 102
    assert 0 < m.read().mean() < 1
    assert open_volume(mask / "s1").read().max() == 1  # the max pyramid of a 0/1 mask
    assert read_run(out)["mask_path"] == PREDICTION_MASK


def test_instances_labels_are_a_label_image_naming_their_source(world, tmp_path):
    mask = mask_path(world / "pred.zarr")
    res = label_instances(open_volume(mask), tmp_path / "inst")
    labels = tmp_path / "inst" / "labels.zarr"
    validate(labels)  # also resolves the source and checks it is an OME-Zarr image
    label = ome(labels)["image-label"]
    assert "colors" not in label  # one colour per object would not scale; viewers pick them
    assert (labels / label["source"]["image"]).resolve() == mask.resolve()
    assert res.objects >= 1 and open_volume(labels).read().max() == res.objects

    # an input with no OME-Zarr image behind it: a valid label image without a source
    data = open_volume(mask).read()
    label_instances(Volume(data, VS, OFF), tmp_path / "mem")
    validate(tmp_path / "mem" / "labels.zarr")
    assert "source" not in ome(tmp_path / "mem" / "labels.zarr")["image-label"]

    # the s0 array of an image names that image
    label_instances(open_volume(mask / "s0"), tmp_path / "s0")
    got = ome(tmp_path / "s0" / "labels.zarr")["image-label"]["source"]["image"]
    assert (tmp_path / "s0" / "labels.zarr" / got).resolve() == mask.resolve()


def test_napari_reader_shows_the_mask_as_labels_in_nm(world):
    out = world / "pred.zarr"
    layers = nr.read_layers(out)
    assert [(kw["name"], kind) for _, kw, kind in layers] == [
        ("pred.zarr probability", "image"),
        ("pred.zarr mask", "labels"),
    ]
    (prob, pkw, _), (mask, mkw, _) = layers
    assert tuple(mkw["scale"]) == VS and tuple(mkw["translate"]) == OFF and mkw["multiscale"]
    assert mkw["metadata"]["path"] == f"{out}/{PREDICTION_MASK}"
    assert mkw["colormap"][1] == [v / 255 for v in MASK_RGBA] and mkw["colormap"][0][3] == 0.0
    np.testing.assert_array_equal(np.asarray(mask[1]), open_volume(mask_path(out) / "s1").read())

    # the probability image alone brings its labels along
    layers = nr.read_layers(out / "probability")
    assert [(kw["name"], kind) for _, kw, kind in layers] == [("probability", "image"), ("probability mask", "labels")]
    from napari.layers import Labels  # test extra

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. napari's "no default colour" warning
        layer = Labels(mask, **mkw)
    assert layer.multiscale and tuple(layer.scale) == VS
    np.testing.assert_allclose(layer.colormap.map(np.array([1]))[0], np.array(MASK_RGBA) / 255)


def _old_layout(src: Path, dst: Path) -> Path:
    """``dst``: the output ``src`` as organet wrote it before the NGFF labels: ``OUT.zarr/mask``
    beside the probability, no ``labels`` group, no ``image-label``, no layout in the run record."""
    shutil.copytree(src, dst)
    (dst / PREDICTION_MASK).rename(dst / "mask")
    shutil.rmtree(dst / "probability" / "labels")
    g = zarr.open_group(str(dst / "mask"), mode="r+")
    g.attrs["ome"] = {k: v for k, v in dict(g.attrs["ome"]).items() if k != "image-label"}
    root = zarr.open_group(str(dst), mode="r+")
    root.attrs[RUN_KEY] = {k: v for k, v in dict(root.attrs[RUN_KEY]).items() if k != "mask_path"}
    return dst


def test_outputs_of_the_old_layout_still_open(world, tmp_path):
    old = _old_layout(world / "pred.zarr", tmp_path / "old.zarr")
    want = open_volume(mask_path(world / "pred.zarr")).read()
    np.testing.assert_array_equal(open_volume(old / "mask").read(), want)  # by explicit path
    assert find_mask(old) == old / "mask" and prediction_record(old) is not None  # the report's test
    planes = read_planes(old, (12, 24, 32), max_px=64)
    assert planes[0].mask.shape == planes[0].probability.shape and planes[0].mask.any()
    names = [(kw["name"], kind) for _, kw, kind in nr.read_layers(old)]
    assert names == [("old.zarr probability", "image"), ("old.zarr mask", "labels")]
    assert find_mask(tmp_path) is None and prediction_record(tmp_path) is None


def test_an_unfinished_run_of_the_old_layout_is_not_resumed(world, tmp_path):
    out = tmp_path / "p.zarr"

    class Stop(Exception):
        pass

    def stop(stage: str, n: int, total: int) -> None:
        if stage == "predict":
            raise Stop

    with pytest.raises(Stop):
        predict(world, out, threshold=0.4, block_shape=(8, 16, 16), progress=stop)
    ledger = out.with_name("p.zarr.progress") / "ledger.json"
    meta = json.loads(ledger.read_text())
    del meta["run"]["mask_path"]  # as the earlier organet recorded it
    ledger.write_text(json.dumps(meta))
    with pytest.raises(IncompatibleError, match=r"mask_path.*--overwrite"):
        predict(world, out, threshold=0.4, block_shape=(8, 16, 16))
    predict(world, out, threshold=0.4, block_shape=(8, 16, 16), overwrite=True)
    want = open_volume(mask_path(world / "pred.zarr")).read()
    np.testing.assert_array_equal(open_volume(mask_path(out)).read(), want)
