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
    assert "working grid: full resolution (auto:" in " ".join(r.output.split())  # a small ROI
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


# -- the working grid: chosen from the ROI size and voxel size unless given


def test_working_grid_is_coarser_for_large_rois_and_explicit_factors_win():
    from organet.annotate.graphcut import AnnotationError, choose_working_grid

    big = choose_working_grid((165, 384, 384), (5.0, 5.0, 5.0))  # the Lucchi++ benchmark ROI
    assert big.auto and big.factors == (2, 2, 2) and big.shape == (83, 192, 192) and big.voxels <= 4_000_000
    assert big.describe().startswith("downsample 2x2x2 (auto: 24.3 M voxels > 4.0 M")
    small = choose_working_grid((32, 80, 80), (5.0, 5.0, 5.0))
    assert small.factors == (1, 1, 1) and small.describe().startswith("full resolution (auto: 0.2 M voxels <= 4.0 M")
    # a larger ROI never gets a finer grid
    sizes = [choose_working_grid((n, 4 * n, 4 * n)).factors[0] for n in (20, 60, 100, 165, 300)]
    assert sizes == sorted(sizes) and sizes[0] == 1 and sizes[-1] > 2
    # anisotropic voxels (40 nm z): the in-plane axes are coarsened first, z at most as much
    aniso = choose_working_grid((100, 2000, 2000), (40.0, 5.0, 5.0))
    assert aniso.factors[1] == aniso.factors[2] > aniso.factors[0] and aniso.voxels <= 4_000_000
    # an axis is not coarsened below min_extent working voxels
    assert choose_working_grid((8, 4000, 4000)).factors[0] == 1
    # explicit factors win, also over the budget
    assert choose_working_grid((165, 384, 384), downsample=1).factors == (1, 1, 1)
    user = choose_working_grid((165, 384, 384), downsample=(1, 2, 2))
    assert user.factors == (1, 2, 2) and not user.auto and "set by the user" in user.describe()
    # a smaller budget: z stops at 16 working planes, y and x go on
    assert choose_working_grid((32, 80, 80), max_voxels=20_000).factors == (2, 3, 3)
    for bad in (0, (1, 2), (1, 0, 1)):
        with pytest.raises(AnnotationError, match="downsample must be"):
            choose_working_grid((32, 80, 80), downsample=bad)


def _rotation(yx: float, zy: float) -> np.ndarray:
    a = np.array([[1, 0, 0], [0, np.cos(yx), -np.sin(yx)], [0, np.sin(yx), np.cos(yx)]])
    b = np.array([[np.cos(zy), -np.sin(zy), 0], [np.sin(zy), np.cos(zy), 0], [0, 0, 1]])
    return a @ b


def varied_phantom(shape=(40, 96, 96), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`phantom`, with objects of different sizes and tilts: a large tilted ellipsoid,
    a small sphere, an ellipsoid cut by the last z plane and the last x column, a thin tilted tube."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), -1)
    truth = np.zeros(shape, bool)
    for centre, radii, yx, zy in [
        ((20, 30, 30), (9, 17, 8), 0.5, 0.35),
        ((10, 72, 70), (6, 6, 6), 0.0, 0.0),
        ((37, 50, 90), (8, 12, 10), 0.3, 0.0),
        ((24, 72, 28), (5, 5, 19), 0.8, 0.2),
    ]:
        d = (grid - np.array(centre, np.float32)) @ _rotation(yx, zy).astype(np.float32)
        truth |= ((d / np.array(radii, np.float32)) ** 2).sum(-1) <= 1
    zz, yy, xx = grid[..., 0], grid[..., 1], grid[..., 2]
    img = 0.6 + 0.025 * rng.normal(size=shape)
    img[truth] -= 0.12
    img += truth * 0.08 * np.sin(xx * 0.9 + yy * 0.4 + zz * 0.3)
    for y0 in (8, 52, 88):
        sheet = np.abs(yy - y0 - 4 * np.sin(xx / 9.0 + zz / 7.0)) < 1.0
        img[sheet & ~truth] = 0.3
    img += 0.01 * rng.normal(size=shape)
    return np.clip(img * 255, 0, 255).astype(np.uint8), truth


def test_auto_working_grid_closely_matches_the_full_resolution_cut():
    raw, truth = varied_phantom()
    assert truth[-1].any() and truth[:, :, -1].any()  # an object touches the border
    scrib = simulate_scribbles(
        truth, [5, 15, 25, 35], strokes_per_object=2, background_strokes=12, length=21, margin=2, object_margin=1
    )
    common = dict(scales=(1.0, 2.0, 4.0), n_trees=16, voxel_size=(5.0, 5.0, 5.0))
    direct = segment_from_scribbles(raw, scrib, GraphCutParams(downsample=1, max_working_voxels=60_000, **common))
    auto = segment_from_scribbles(raw, scrib, GraphCutParams(max_working_voxels=60_000, **common))
    assert direct.working_grid is not None and auto.working_grid is not None
    assert direct.working_grid.factors == (1, 1, 1) and not direct.working_grid.auto  # explicit wins
    assert auto.working_grid.factors == (2, 2, 2) and auto.working_grid.auto
    assert auto.labels.shape == raw.shape and len(auto.stage_probabilities[0].shape) == 3
    a, d = auto.labels.astype(bool), direct.labels.astype(bool)
    # tolerance of the coarse grid on this small phantom (the thin tube is 2.5 working voxels across):
    # >= 99 % of the voxels agree and the object sets overlap with IoU >= 0.8
    assert (a == d).mean() >= 0.99 and iou(a, d) >= 0.8
    assert iou(d, truth) >= 0.9 and iou(a, truth) >= 0.8
    assert a[scrib == 1].all() and not a[scrib == 2].any()  # hard constraints at full resolution
    # the default budget keeps this small ROI at full resolution: the same cut as the explicit one
    default = segment_from_scribbles(raw, scrib, GraphCutParams(**common))
    assert default.working_grid is not None and default.working_grid.factors == (1, 1, 1)
    assert np.array_equal(default.labels, direct.labels)


@pytest.mark.parametrize("shape", [(1, 9, 9), (7, 5, 6), (13, 24, 17)])
def test_features_in_place_and_in_slabs_equal_the_direct_computation(shape):
    from organet.annotate.features import _sym_eigvals, compute_features, n_features

    raw, _ = varied_phantom((max(shape[0], 6), 96, 96), seed=1)
    x = raw[: shape[0], 40 : 40 + shape[1], 60 : 60 + shape[2]].astype(np.float32) / 255
    scales = (1.0, 2.0)
    direct = compute_features(x, scales)
    assert direct.shape == (*shape, n_features(scales)) and direct.dtype == np.float32
    wide = np.full((*shape, n_features(scales) + 3), -7.0, np.float32)  # room for 3 more channels behind
    compute_features(x, scales, out=wide[..., : n_features(scales)])
    assert np.array_equal(wide[..., : n_features(scales)], direct) and (wide[..., -3:] == -7.0).all()
    with pytest.raises(ValueError, match="expected"):
        compute_features(x, scales, out=wide)
    # eigenvalues per slab (here slabs smaller than one plane) = one call on the whole field
    rng = np.random.default_rng(0)
    comps = [rng.normal(size=shape).astype(np.float32) for _ in range(6)]
    zz, zy, zx, yy, yx, xx = comps
    m = np.stack([np.stack([zz, zy, zx], -1), np.stack([zy, yy, yx], -1), np.stack([zx, yx, xx], -1)], -2)
    assert np.array_equal(_sym_eigvals(comps, slab_voxels=3), np.linalg.eigvalsh(m))


def test_per_axis_working_grid_round_trip():
    from organet.annotate.graphcut import _downsample_mean, _downsample_scribbles, _upsample

    rng = np.random.default_rng(0)
    coarse = rng.random((4, 5, 3)).astype(np.float32)
    full = np.repeat(np.repeat(np.repeat(coarse, 1, 0), 2, 1), 3, 2)[:, :9, :8]  # not multiples of (2, 3)
    down = _downsample_mean(full, (1, 2, 3))
    assert down.shape == (4, 5, 3) and np.allclose(down, coarse)  # edge padding keeps the last blocks' means
    ramp = np.broadcast_to(np.arange(30, dtype=np.float32)[None, None, :] * 0.5, (4, 10, 30))
    up = _upsample(_downsample_mean(ramp, (1, 2, 3)), (1, 2, 3), ramp.shape)
    assert up.shape == ramp.shape and np.allclose(up[..., 2:-2], ramp[..., 2:-2], atol=1e-5)  # linear is exact inside
    s = np.zeros((4, 4, 6), np.uint8)
    s[0, 0, 0], s[0, 1, 4], s[0, 0, 5] = 1, 1, 2  # the second block has both labels
    assert _downsample_scribbles(s, (1, 2, 3))[0, 0].tolist() == [1, 0]


def test_cli_graphcut_downsample_option(tmp_path, data):
    raw, truth, scrib = data
    tifffile.imwrite(tmp_path / "raw.tif", raw)
    tifffile.imwrite(tmp_path / "scrib.tif", scrib)
    base = ["annotate", "graphcut", "--raw", str(tmp_path / "raw.tif"), "--scribbles", str(tmp_path / "scrib.tif")]
    base += ["--voxel-size", "5", "5", "5", "--trees", "8", "--autocontext", "0", "--scale", "1", "--scale", "2"]
    r = runner.invoke(app, [*base, "-o", str(tmp_path / "a.zarr"), "--downsample", "1,2,2"])
    assert r.exit_code == 0, r.output
    assert "working grid: downsample 1x2x2 (set by the user" in " ".join(r.output.split())
    r = runner.invoke(app, [*base, "-o", str(tmp_path / "b.zarr"), "--max-working-voxels", "50000"])
    assert r.exit_code == 0, r.output
    assert "working grid: downsample 2x2x2 (auto: 0.2 M voxels > 50.0 k" in " ".join(r.output.split())
    attrs = open_volume(str(tmp_path / "b.zarr/labels")).attrs
    assert attrs["working_grid"]["factors"] == [2, 2, 2] and attrs["graphcut"]["voxel_size"] == [5.0, 5.0, 5.0]
    assert iou(open_volume(str(tmp_path / "b.zarr/labels")).read().astype(bool), truth) >= 0.8
    for bad in ("0", "2,2", "x"):
        r = runner.invoke(app, [*base, "-o", str(tmp_path / "c.zarr"), "--downsample", bad])
        assert r.exit_code == 2 and "--downsample must be" in r.output, r.output
    assert not (tmp_path / "c.zarr").exists()
