"""Graph-cut annotation from sparse scribbles: recovery of synthetic objects among dark
distractor membranes, input checks, label import and the `organet annotate graphcut` command."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from organet.annotate import (
    GraphCutParams,
    check_scribbles,
    graph_cut,
    scribbles_from_labels,
    segment_from_scribbles,
)
from organet.annotate.scribbles import simulate_scribbles
from organet.cli import app
from organet.volumes import open_volume

runner = CliRunner()
PARAMS = GraphCutParams(scales=(1.0, 2.0, 4.0), n_trees=32, smoothness=3.0, contrast_sigma=0.1, autocontext=0)


def phantom(shape=(32, 80, 80), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Mitochondrion-like ellipsoids (darker, striped 'cristae' interior) among thin dark
    membranes that are darker than the objects: intensity alone cannot separate them."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    truth = np.zeros(shape, bool)
    for c, r in [((12, 22, 22), (9, 16, 14)), ((18, 56, 52), (10, 15, 18)), ((16, 20, 62), (8, 10, 10))]:
        truth |= sum(((g - ci) / ri) ** 2 for g, ci, ri in zip((zz, yy, xx), c, r)) <= 1
    img = 0.6 + 0.025 * rng.normal(size=shape)
    img[truth] -= 0.12
    img += truth * 0.08 * np.sin(xx * 0.9 + yy * 0.4)
    for y0 in (6, 40, 74):
        sheet = np.abs(yy - y0 - 4 * np.sin(xx / 9.0)) < 1.0
        img[sheet & ~truth] = 0.3
    img += 0.01 * rng.normal(size=shape)
    return np.clip(img * 255, 0, 255).astype(np.uint8), truth


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def data():
    raw, truth = phantom()
    scrib = simulate_scribbles(
        truth, [6, 16, 26], strokes_per_object=2, background_strokes=12, length=41, margin=2, object_margin=0
    )
    return raw, truth, scrib


def test_simulated_scribbles_are_sparse_and_correct(data):
    raw, truth, scrib = data
    assert set(np.unique(scrib)) == {0, 1, 2}
    assert set(np.flatnonzero(scrib.any(axis=(1, 2)))) == {6, 16, 26}  # 3 planes only
    assert truth[scrib == 1].all() and not truth[scrib == 2].any()
    assert (scrib[[6, 16, 26]] > 0).mean() < 0.1  # strokes, not whole planes


def test_graph_cut_recovers_objects_from_scribbles_on_three_planes(data):
    raw, truth, scrib = data
    res = segment_from_scribbles(raw, scrib, PARAMS)
    lab = res.labels.astype(bool)
    assert iou(lab, truth) >= 0.95
    # the forest alone is worse at the boundaries; the cut improves it
    assert iou(res.probability >= 0.5, truth) < iou(lab, truth)
    # intensity alone (darker than background) would include the distractor membranes
    dark = raw < np.percentile(raw[scrib == 2], 5)
    assert iou(dark, truth) < 0.8
    assert lab[scrib == 1].all() and not lab[scrib == 2].any()  # hard constraints


def test_graph_cut_on_a_downsampled_grid_with_autocontext(data):
    raw, truth, scrib = data
    p = GraphCutParams(downsample=2, scales=(1.0, 2.0), n_trees=16, smoothness=3.0, contrast_sigma=0.1, autocontext=1)
    res = segment_from_scribbles(raw, scrib, p)
    assert res.labels.shape == raw.shape
    assert iou(res.labels.astype(bool), truth) >= 0.85


def test_graph_cut_smoothness_removes_isolated_voxels():
    rng = np.random.default_rng(0)
    prob = np.where(rng.random((6, 20, 20)) < 0.1, 0.9, 0.1)  # salt noise in a background region
    scr = np.zeros(prob.shape, np.uint8)
    cut0 = graph_cut(prob, np.zeros(prob.shape), scr, 0.0, 0.1)
    cut1 = graph_cut(prob, np.zeros(prob.shape), scr, 2.0, 0.1)
    assert cut0.sum() > 0 and cut1.sum() == 0


def test_bad_scribbles_give_clear_errors(data):
    raw, _, scrib = data
    with pytest.raises(ValueError, match=r"shape \(32, 80, 79\).*\(32, 80, 80\)"):
        check_scribbles(scrib[..., :-1], raw.shape)
    bad = scrib.copy()
    bad[0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"values \[3\].*0 \(unlabeled\), 1 \(object\), 2 \(background\)"):
        segment_from_scribbles(raw, bad)
    with pytest.raises(ValueError, match=r"no background \(2\)"):
        check_scribbles(np.where(scrib == 2, 0, scrib), raw.shape)
    with pytest.raises(ValueError, match="integer"):
        check_scribbles(scrib.astype(np.float32), raw.shape)


def test_label_import_maps_vast_ids():
    lab = np.array([[[0, 5, 7, 9]]], np.uint16)
    assert scribbles_from_labels(lab, object_ids=[5, 9], background_ids=[7]).tolist() == [[[0, 1, 2, 1]]]
    with pytest.raises(ValueError, match="both object and background"):
        scribbles_from_labels(lab, [5], [5])


def test_cli_graphcut_with_tiff_scribbles_roi_and_label_import(tmp_path, data):
    raw, truth, scrib = data
    tifffile.imwrite(tmp_path / "raw.tif", raw)
    tifffile.imwrite(tmp_path / "scrib.tif", scrib)
    common = [
        "--voxel-size",
        "5",
        "5",
        "5",
        "--smoothness",
        "3",
        "--contrast-sigma",
        "0.1",
        "--trees",
        "16",
        "--autocontext",
        "0",
        "--scale",
        "1",
        "--scale",
        "2",
        "--scale",
        "4",
    ]
    r = runner.invoke(
        app,
        [
            "annotate",
            "graphcut",
            "--raw",
            str(tmp_path / "raw.tif"),
            "--scribbles",
            str(tmp_path / "scrib.tif"),
            "-o",
            str(tmp_path / "gt.zarr"),
            "--roi-vox",
            "4:28,:,:",
            *common,
        ],
    )
    assert r.exit_code == 0, r.output
    gt = open_volume(str(tmp_path / "gt.zarr/labels"))
    assert gt.shape == (24, 80, 80) and gt.offset == (20.0, 0.0, 0.0)
    assert iou(gt.read().astype(bool), truth[4:28]) >= 0.9
    assert open_volume(str(tmp_path / "gt.zarr/probability")).dtype == np.uint8
    # an ilastik/VAST-style export: object id 7, background ids 3 and 4
    exported = np.select([scrib == 1, scrib == 2], [7, 3], 0).astype(np.uint16)
    tifffile.imwrite(tmp_path / "vast.tif", exported)
    r = runner.invoke(
        app,
        [
            "annotate",
            "graphcut",
            "--raw",
            str(tmp_path / "raw.tif"),
            "--scribbles",
            str(tmp_path / "vast.tif"),
            "-o",
            str(tmp_path / "gt2.zarr"),
            "--object-ids",
            "7",
            "--background-ids",
            "3",
            "--background-ids",
            "4",
            *common,
        ],
    )
    assert r.exit_code == 0, r.output
    assert iou(open_volume(str(tmp_path / "gt2.zarr/labels")).read().astype(bool), truth) >= 0.9
    # errors: unknown values without an id mapping, mismatching shapes
    r = runner.invoke(
        app,
        [
            "annotate",
            "graphcut",
            "--raw",
            str(tmp_path / "raw.tif"),
            "--scribbles",
            str(tmp_path / "vast.tif"),
            "-o",
            str(tmp_path / "gt3.zarr"),
            *common,
        ],
    )
    assert r.exit_code == 2 and "error:" in r.output and "values [3, 7]" in " ".join(r.output.split())
    tifffile.imwrite(tmp_path / "small.tif", scrib[:, :40])
    r = runner.invoke(
        app,
        [
            "annotate",
            "graphcut",
            "--raw",
            str(tmp_path / "raw.tif"),
            "--scribbles",
            str(tmp_path / "small.tif"),
            "-o",
            str(tmp_path / "gt4.zarr"),
            *common,
        ],
    )
    assert r.exit_code == 2 and "error:" in r.output and "shape" in r.output
    assert not (tmp_path / "gt3.zarr").exists() and not (tmp_path / "gt4.zarr").exists()


def test_simulated_corrections_mark_wrong_regions_with_the_true_label(data):
    from organet.annotate.scribbles import merge_scribbles, simulate_corrections

    raw, truth, scrib = data
    pred = truth.copy()
    pred[10:20, 60:75, 5:20] = True  # a false object
    pred[16, 50:62, 45:60] = False  # a missed piece of the second object on plane 16
    extra = simulate_corrections(pred, truth, [6, 16, 26], min_area=20, margin=1)
    assert (extra == 2).any() and (extra == 1).any()
    assert set(np.flatnonzero(extra.any(axis=(1, 2)))) <= {6, 16, 26}
    wrong = pred != truth
    assert wrong[extra > 0].all()
    assert truth[extra == 1].all() and not truth[extra == 2].any()
    merged = merge_scribbles(scrib, extra)
    assert np.array_equal(merged[extra > 0], extra[extra > 0])
    assert np.array_equal(merged[extra == 0], scrib[extra == 0])
    # a float probability map is read like everywhere else (foreground = p >= 0.5), not as p > 0
    prob = np.where(pred, 0.9, 0.2).astype(np.float32)
    assert np.array_equal(simulate_corrections(prob, truth, [6, 16, 26], min_area=20, margin=1), extra)


def test_clean_labels_fills_holes_and_drops_small_unscribbled_objects():
    from organet.annotate.graphcut import clean_labels

    cut = np.zeros((9, 20, 20), bool)
    cut[1:8, 2:12, 2:12] = True
    cut[4, 6, 6] = False  # enclosed hole
    cut[2, 16, 16] = True  # speck
    cut[6, 16:18, 16:18] = True  # small but scribbled
    scr = np.zeros(cut.shape, np.uint8)
    scr[6, 16, 16] = 1
    out = clean_labels(cut, scr, fill_holes=True, min_size=10)
    assert out[4, 6, 6] and not out[2, 16, 16] and out[6, 17, 17]
    assert out.sum() == 7 * 10 * 10 + 4


def test_graph_cut_with_supervoxels(data):
    raw, truth, scrib = data
    from organet.annotate.graphcut import supervoxels

    sv = supervoxels(raw.astype(np.float32) / 255, 4)
    assert sv.min() == 0 and sv.max() + 1 == (32 // 4) * (80 // 4) ** 2  # one region per grid seed
    # supervoxels average away the per-voxel noise but straddle this phantom's weak edges: the cut
    # (on voxels) has to do more of the work, hence the stronger smoothness
    p = GraphCutParams(
        scales=(1.0, 2.0, 4.0), n_trees=32, smoothness=10.0, contrast_sigma=0.1, autocontext=1, supervoxels=3
    )
    res = segment_from_scribbles(raw, scrib, p)
    assert iou(res.labels.astype(bool), truth) >= 0.9
