"""The napari scribble widget: its plain functions (box crop with margin, paste-back, layer data
to the graph-cut core, saving) without napari, the optional-import behaviour and the
`organet annotate napari` error, and the widget itself on a napari ViewerModel with offscreen
Qt (napari, magicgui, PyQt6 and pytest-qt come with the ``test`` extra)."""

from __future__ import annotations

import importlib
import importlib.resources
import os
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import tifffile
import yaml
from typer.testing import CliRunner

from organet.annotate import AnnotationError, GraphCutParams, segment_from_scribbles
from organet.annotate import napari_widget as nw
from organet.cli import app
from organet.volumes import open_volume

runner = CliRunner()
PARAMS = GraphCutParams(scales=(1.0, 2.0), n_trees=16, smoothness=10.0, contrast_sigma=0.1, autocontext=1)
PLANES = (8, 12, 16)


def spheres(shape=(24, 48, 64), seed=0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two bright spheres in noise; scribbles on 3 z planes around the first sphere only.
    Returns raw (uint8), truth of sphere 1, truth of sphere 2."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    s1 = (zz - 12) ** 2 + (yy - 16) ** 2 + (xx - 16) ** 2 <= 7**2
    s2 = (zz - 12) ** 2 + (yy - 32) ** 2 + (xx - 52) ** 2 <= 6**2
    img = 0.3 + 0.4 * (s1 | s2) + 0.06 * rng.normal(size=shape)
    return np.clip(img * 255, 0, 255).astype(np.uint8), s1, s2


def sphere_scribbles(shape, truth) -> np.ndarray:
    s = np.zeros(shape, np.uint8)
    for z in PLANES:
        s[z, 14:19, 12:21] = 1  # a stroke inside the sphere
        s[z, 4, 6:28] = 2  # background strokes around it
        s[z, 28, 6:28] = 2
        s[z, 6:26, 4] = 2
    assert truth[s == 1].all() and not truth[s == 2].any()
    return s


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# --------------------------------------------------------------------------- plain functions


def test_scribble_box_grows_by_margin_and_clips_to_the_volume():
    s = np.zeros((10, 20, 30), np.uint8)
    s[4, 5, 6] = 1
    s[6, 9, 20] = 2
    assert nw.scribble_box(s, 0) == (slice(4, 7), slice(5, 10), slice(6, 21))
    assert nw.scribble_box(s, 3) == (slice(1, 10), slice(2, 13), slice(3, 24))
    assert nw.scribble_box(s, 100) == (slice(0, 10), slice(0, 20), slice(0, 30))  # clipped
    assert nw.scribble_box(s, (1, 2, 0)) == (slice(3, 8), slice(3, 12), slice(6, 21))  # per axis (z, y, x)
    with pytest.raises(AnnotationError, match="no scribbles"):
        nw.scribble_box(np.zeros_like(s))
    with pytest.raises(AnnotationError, match="margin"):
        nw.scribble_box(s, -1)
    assert nw.box_str(nw.scribble_box(s, 0)) == "4:7,5:10,6:21"


def test_crop_and_paste_back():
    vol = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    box = (slice(1, 3), slice(0, 5), slice(2, 4))
    block = nw.crop(vol, box)
    assert block.shape == (2, 5, 2) and (block == vol[1:3, :, 2:4]).all()
    out = nw.paste(np.zeros(vol.shape, np.int64), box, block)
    assert (out[box] == block).all() and out.sum() == block.sum()  # zero outside the box
    with pytest.raises(AnnotationError, match="does not fit"):
        nw.paste(out, box, block[:1])


def test_prepare_cut_checks_layer_data_and_snapshots_the_scribbles():
    raw = np.zeros((6, 8, 8), np.uint8)
    s = np.zeros_like(raw)
    s[2, 2, 2], s[3, 5, 5] = 1, 2
    with pytest.raises(AnnotationError, match="shape"):
        nw.prepare_cut(raw, s[:, :4])
    with pytest.raises(AnnotationError, match="3-D"):
        nw.prepare_cut(raw[0], s[0])
    with pytest.raises(AnnotationError, match="no scribbles"):
        nw.prepare_cut(raw, np.zeros_like(s), crop_to_scribbles=False)
    job = nw.prepare_cut(raw, s, margin=1)
    assert job.box == (slice(1, 5), slice(1, 7), slice(1, 7)) and job.n_voxels == 4 * 6 * 6
    s[2, 2, 2] = 2  # painting on after the job was made does not change it
    assert job.scribbles[1, 1, 1] == 1
    assert nw.prepare_cut(raw, s, crop_to_scribbles=False).box == nw.full_box(raw.shape)


def test_layer_data_to_core_call_recovers_a_sphere_inside_the_box():
    raw, s1, s2 = spheres()
    scrib = sphere_scribbles(raw.shape, s1)
    cut = nw.graphcut_layers(raw, scrib, PARAMS, margin=4)
    assert cut.labels.shape == raw.shape and cut.labels.dtype == np.uint8
    assert cut.box == (slice(4, 21), slice(0, 33), slice(0, 32))  # scribbles z 8-16, y 4-28, x 4-27, +4
    lab = cut.labels.astype(bool)
    assert iou(lab, s1) >= 0.9  # the sphere, though only 3 planes were scribbled
    outside = np.ones(raw.shape, bool)
    outside[cut.box] = False
    assert not lab[outside].any()
    assert not lab[s2].any()  # the second sphere lies outside the box: untouched
    assert lab[scrib == 1].all() and not lab[scrib == 2].any()
    # the same core call as `organet annotate graphcut` on that box
    ref = segment_from_scribbles(raw[cut.box], scrib[cut.box], PARAMS)
    assert (ref.labels == cut.labels[cut.box]).all()
    assert cut.params["smoothness"] == 10.0 and cut.result.n_scribbled[0] == int((scrib == 1).sum())


def test_parse_scales_and_voxel_size():
    assert nw.parse_scales("1, 2 4,8") == (1.0, 2.0, 4.0, 8.0)
    for bad in ("", "a, 2", "0, 1"):
        with pytest.raises(AnnotationError):
            nw.parse_scales(bad)
    assert nw.voxel_size_of((1.0, 8.0, 4.0, 4.0)) == (8.0, 4.0, 4.0)  # last three = (z, y, x)
    with pytest.raises(AnnotationError):
        nw.voxel_size_of((0.0, 1.0, 1.0))


def test_save_mask_writes_ome_zarr_with_the_layer_scale(tmp_path):
    lab = np.zeros((4, 6, 8), np.uint8)
    lab[1:3, 2:4, 2:6] = 1
    scrib = np.zeros_like(lab)
    scrib[2, 3, 3], scrib[0, 0, 0] = 1, 2
    out = nw.save_mask(
        tmp_path / "gt.zarr",
        lab,
        scale=(8.0, 4.0, 4.0),
        translate=(80.0, 40.0, 0.0),
        scribbles=scrib,
        attrs={"note": "test"},
    )
    v = open_volume(out)
    assert v.voxel_size == (8.0, 4.0, 4.0) and v.offset == (80.0, 40.0, 0.0)
    assert (v.read() == lab).all() and v.attrs["kind"] == "mask" and v.attrs["note"] == "test"
    sv = open_volume(tmp_path / "gt.zarr" / "scribbles")
    assert (sv.read() == scrib).all() and sv.voxel_size == (8.0, 4.0, 4.0)
    with pytest.raises(Exception, match="exists"):
        nw.save_mask(tmp_path / "gt.zarr", lab, scale=(8.0, 4.0, 4.0))
    nw.save_mask(tmp_path / "gt.zarr", 1 - lab, scale=(8.0, 4.0, 4.0), overwrite=True)
    assert (open_volume(out).read() == 1 - lab).all()


# --------------------------------------------------------------------------- optional napari


def test_manifest_points_at_the_widget():
    text = (importlib.resources.files("organet.annotate") / "napari.yaml").read_text()
    man = yaml.safe_load(text)
    assert man["name"] == "organet"
    cmds = {c["id"]: c["python_name"] for c in man["contributions"]["commands"]}
    widgets = [cmds[w["command"]] for w in man["contributions"]["widgets"]]
    assert f"{nw.__name__}:GraphCutWidget" in widgets  # the other widgets: tests/test_napari_plugin.py
    from pathlib import Path

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '[project.entry-points."napari.manifest"]\norganet = "organet.annotate:napari.yaml"' in pyproject
    assert '\nnapari = ["napari' in pyproject and '"organet.annotate" = ["napari.yaml"]' in pyproject


def test_widget_module_imports_without_napari(monkeypatch):
    monkeypatch.setitem(sys.modules, "napari", None)  # `import napari` now raises ImportError
    monkeypatch.setitem(sys.modules, "magicgui", None)
    monkeypatch.delitem(sys.modules, "organet.annotate.napari_widget")
    monkeypatch.delattr(sys.modules["organet.annotate"], "napari_widget")  # both restored afterwards
    monkeypatch.setattr(nw, "_widget_class", nw.lazy_widget_class(nw._define_widget_class))  # uncached
    mod = importlib.import_module("organet.annotate.napari_widget")
    assert callable(mod.graphcut_layers)
    with pytest.raises(ImportError, match=r"napari is not installed: pip install 'organet\[napari\]'"):
        _ = mod.GraphCutWidget
    with pytest.raises(AttributeError):
        _ = mod.NoSuchThing


def test_cli_napari_missing_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "napari", None)
    monkeypatch.setattr(nw, "_widget_class", nw.lazy_widget_class(nw._define_widget_class))  # uncached
    tifffile.imwrite(tmp_path / "raw.tif", np.zeros((2, 4, 4), np.uint8))
    r = runner.invoke(app, ["annotate", "napari", "--raw", str(tmp_path / "raw.tif")])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert lines == ["error: napari is not installed: pip install 'organet[napari]'"]
    assert "napari" in runner.invoke(app, ["annotate", "--help"]).output


# --------------------------------------------------------------------------- with napari (offscreen Qt)


def _need_napari() -> None:
    """napari and magicgui come with the ``test`` extra; in CI their absence is a failure."""
    try:
        import magicgui  # noqa: F401
        import napari  # noqa: F401
    except ImportError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"napari is not installed ({e}): pip install -e '.[test]'")


@pytest.fixture
def viewer(qapp):
    """A napari viewer model: layers and events without a window or OpenGL (offscreen Qt
    is enough for the magicgui widgets and napari's worker threads)."""
    _need_napari()
    from napari.components import ViewerModel

    return ViewerModel()


def _wait(widget, qapp, timeout=120.0) -> None:
    t0 = time.time()
    while widget.worker is not None and time.time() - t0 < timeout:
        qapp.processEvents()
        time.sleep(0.02)
    qapp.processEvents()
    assert widget.worker is None, "graph cut did not finish"


def test_widget_paint_run_correct_save(viewer, qapp, tmp_path):
    raw, s1, s2 = spheres()
    img = viewer.add_image(raw, name="raw", scale=(8.0, 4.0, 4.0), translate=(16.0, 0.0, 0.0))
    w = nw.GraphCutWidget(viewer)
    assert w.image.value == "raw" and "scribbles" in viewer.layers  # created on the image
    scrib = viewer.layers["scribbles"]
    assert scrib.data.shape == raw.shape and tuple(scrib.scale) == tuple(img.scale)
    assert scrib.mode == "paint" and scrib.selected_label == 1
    scrib.data = sphere_scribbles(raw.shape, s1)
    w.smoothness.value, w.contrast_sigma.value, w.scales.value = 10.0, 0.1, "1, 2"
    w.trees.value, w.autocontext.value, w.margin.value = 16, 1, 4
    assert w.params().smoothness == 10.0 and w.params().scales == (1.0, 2.0)
    assert w.run() is not None
    assert w.run() is None  # one cut at a time
    _wait(w, qapp)
    gc = viewer.layers["graphcut"]
    assert iou(gc.data.astype(bool), s1) >= 0.85 and not gc.data[s2].any()
    assert tuple(gc.scale) == (8.0, 4.0, 4.0)
    assert w.status.value.startswith("done in")
    # correction: scribble the second sphere too and rerun; the layer's data is replaced
    data = scrib.data.copy()
    data[12, 30:35, 48:56] = 1
    data[12, 20, 40:62] = 2
    data[12, 44, 40:62] = 2
    scrib.data = data
    w.run()
    _wait(w, qapp)
    assert viewer.layers["graphcut"] is gc and iou(gc.data.astype(bool), s1 | s2) >= 0.8
    w.output.value = str(tmp_path / "gt.zarr")
    out = w.save()
    v = open_volume(out)
    assert v.voxel_size == (8.0, 4.0, 4.0) and v.offset == (16.0, 0.0, 0.0) and (v.read() == gc.data).all()
    assert (open_volume(tmp_path / "gt.zarr" / "scribbles").read() == data).all()
    assert w.save() is None  # exists, no overwrite: an error message, not an exception


def test_widget_reports_bad_input_without_raising(viewer, qapp):
    w = nw.GraphCutWidget(viewer)  # no image layer yet
    assert w.run() is None and "scribbles" not in viewer.layers
    viewer.add_image(np.zeros((6, 8, 8), np.uint8), name="raw")
    assert w.image.value == "raw"  # the choices follow the layer list
    w.ensure_scribbles()
    assert w.run() is None  # nothing scribbled yet
    w.scales.value = "a, b"
    viewer.layers["scribbles"].data[2, 2, 2] = 1
    assert w.run() is None and w.worker is None
    assert w.save() is None  # nothing to save yet


def test_open_viewer_loads_the_roi_and_scribbles(viewer, tmp_path):
    raw, s1, _ = spheres()
    tifffile.imwrite(tmp_path / "raw.tif", raw)
    tifffile.imwrite(tmp_path / "scrib.tif", sphere_scribbles(raw.shape, s1)[4:20])
    v, w = nw.open_viewer(
        str(tmp_path / "raw.tif"),
        str(tmp_path / "scrib.tif"),
        output="x.zarr",
        voxel_size=(8, 4, 4),
        roi_vox="4:20,0:48,0:64",
        viewer=viewer,
    )
    assert v is viewer
    assert viewer.layers["raw.tif"].data.shape == (16, 48, 64)
    assert tuple(viewer.layers["raw.tif"].translate) == (32.0, 0.0, 0.0)
    assert viewer.layers["scribbles"].data.max() == 2 and str(w.output.value).endswith("x.zarr")
    tifffile.imwrite(tmp_path / "bad.tif", np.full((16, 48, 64), 7, np.uint8))
    with pytest.raises(AnnotationError, match="values"):
        nw.open_viewer(
            str(tmp_path / "raw.tif"),
            str(tmp_path / "bad.tif"),
            voxel_size=(8, 4, 4),
            roi_vox="4:20,0:48,0:64",
            viewer=viewer,
        )


# --------------------------------------------------------------------------- suggested boxes


def suggestion_world(tmp_path):
    """The spheres as an OME-Zarr raw (8 x 4 x 4 nm, offset 16 nm in z), a prediction uncertain
    around each sphere (more around the first), and `organet suggest` boxes of 16 x 24 x 24 voxels."""
    from organet.annotate.suggest import suggest
    from organet.volumes import write_ome_zarr
    from organet.volumes.foreground import probability_to_uint8

    raw, s1, s2 = spheres()
    vs, off = (8.0, 4.0, 4.0), (16.0, 0.0, 0.0)
    prob = np.where(s1 | s2, 0.97, 0.03)
    prob[4:20, 6:30, 0:24] = 0.5
    prob[4:20, 24:48, 40:64] = 0.4  # the second box touches the volume's far y and x faces
    with write_ome_zarr(tmp_path / "raw.zarr") as w:
        w.create_image(None, raw.shape, np.uint8, vs, off, (8, 16, 16)).write(..., raw)
    u = probability_to_uint8(prob)
    with write_ome_zarr(tmp_path / "pred.zarr") as w:
        w.create_image("probability", u.shape, np.uint8, vs, off, (8, 16, 16), {"kind": "probability"}).write(..., u)
    res = suggest([str(tmp_path / "pred.zarr")], tmp_path / "where", box_nm=(128, 96, 96), k=2)
    return raw, s1, s2, res


def last_error() -> str:
    from napari.utils.notifications import notification_manager

    return str(notification_manager.records[-1].message)


def test_widget_annotates_a_suggested_box_into_the_annotation_set(viewer, qapp, tmp_path):
    import pandas as pd

    from organet.annotate.boxes import annotated_rois
    from organet.annotate.scribbles import simulate_scribbles

    raw, s1, s2, res = suggestion_world(tmp_path)
    b1, b2 = res.boxes
    assert b2.roi.offset == (4, 24, 40) and b2.roi.end == (20, 48, 64)
    out = tmp_path / "labels.zarr"
    _, w = nw.open_viewer(
        str(tmp_path / "raw.zarr"), output=str(out), suggestions=str(tmp_path / "where"), viewer=viewer
    )
    unc = viewer.layers["uncertainty"]
    assert tuple(unc.scale) == (8.0, 4.0, 4.0) and tuple(unc.translate) == (16.0, 0.0, 0.0)
    assert unc.blending == "additive" and unc.data.shape == raw.shape and unc.data.max() == 255
    shapes = viewer.layers["boxes"]
    csv = pd.read_csv(tmp_path / "where" / "boxes_napari.csv")  # the same rectangles as the CSV
    for i, verts in enumerate(shapes.data):
        np.testing.assert_allclose(verts, csv[csv["index"] == i][["axis-0", "axis-1", "axis-2"]].to_numpy())
    assert list(shapes.features["rank"]) == [1, 2]
    assert viewer.layers[-1].name == "scribbles" and w.image.value == "raw.zarr"
    assert list(w.box.choices) == [0, 1, 2]

    w.select_box(2)
    assert w.box.current_choice == f"2 (score {b2.score:.3f})"
    zm = (4 + 20 - 1) // 2
    assert viewer.dims.point[0] == pytest.approx(16.0 + zm * 8.0)  # the box's middle plane
    np.testing.assert_allclose(viewer.camera.center, (16.0 + zm * 8.0, (24 + 47) / 2 * 4.0, (40 + 63) / 2 * 4.0))
    # scribbles of a simulated annotator in box 2, and strokes elsewhere that the box cut must ignore
    scrib = np.zeros(raw.shape, np.uint8)
    sl = b2.roi.slices()
    scrib[sl] = simulate_scribbles(s2[sl], [4, 8, 11], strokes_per_object=2, background_strokes=6, length=9, margin=1)
    scrib[12, 14:19, 12:21] = 1
    scrib[12, 4, 6:28] = 2
    viewer.layers["scribbles"].data = scrib
    w.smoothness.value, w.contrast_sigma.value, w.scales.value = 10.0, 0.1, "1, 2"
    w.trees.value, w.autocontext.value = 16, 1
    assert w.run() is not None
    _wait(w, qapp)
    gc = viewer.layers["graphcut"].data
    assert w.last.box == sl and not gc[s1].any()
    ref = segment_from_scribbles(raw[sl], scrib[sl], replace(PARAMS, voxel_size=(8.0, 4.0, 4.0)))
    assert (gc[sl] == ref.labels).all() and gc.sum() == ref.labels.sum()  # that box only
    assert iou(gc.astype(bool), s2) >= 0.85

    assert w.save() == f"{out}/labels"
    lab = open_volume(out / "labels")
    assert lab.shape == raw.shape and lab.voxel_size == (8.0, 4.0, 4.0) and lab.offset == (16.0, 0.0, 0.0)
    assert (lab.read() == gc).all()  # the box's labels at the box, 0 elsewhere
    (rec,) = annotated_rois(out)
    assert rec["roi_vox"] == b2.roi_vox and rec["rank"] == 2 and rec["source"] == str((tmp_path / "where").absolute())
    assert (open_volume(out / "scribbles").read()[sl] == scrib[sl]).all()
    assert w.save() is None and "already annotated" in last_error()  # replacing needs overwrite
    w.overwrite.value = True
    assert w.save() == f"{out}/labels" and len(annotated_rois(out)) == 1
    w.select_box(1)
    assert w.save() is None and "run the graph cut on it first" in last_error()
    w.select_box(0)
    assert w.save() is None and "is an annotation set" in last_error()  # the plain save never replaces one
    # reopened on the annotation set: its scribbles come back
    from napari.components import ViewerModel

    again = ViewerModel()
    nw.open_viewer(str(tmp_path / "raw.zarr"), output=str(out), suggestions=str(tmp_path / "where"), viewer=again)
    assert (again.layers["scribbles"].data[sl] == scrib[sl]).all() and not again.layers["scribbles"].data[s1].any()
    assert len(annotated_rois(out)) == 1 and (open_volume(out / "labels").read() == gc).all()


def test_cli_napari_with_suggestions_refuses_an_roi_and_another_grid(tmp_path):
    _need_napari()
    raw, _, _, _ = suggestion_world(tmp_path)
    where = str(tmp_path / "where")
    r = runner.invoke(
        app, ["annotate", "napari", "--raw", str(tmp_path / "raw.zarr"), "--suggestions", where, "--roi-vox", "0:4,:,:"]
    )
    assert r.exit_code == 2 and "exclude each other" in r.output, r.output
    tifffile.imwrite(tmp_path / "small.tif", raw[:, :40])
    r = runner.invoke(
        app,
        [
            "annotate",
            "napari",
            "--raw",
            str(tmp_path / "small.tif"),
            "--voxel-size",
            "8",
            "4",
            "4",
            "--suggestions",
            where,
        ],
    )
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "is for shape (24, 48, 64) voxels" in r.output, r.output
