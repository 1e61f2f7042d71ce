"""`label_instances(..., object_filter=ObjectFilter(...))` / `organet instances --min-radius
--min-mean-probability`: thin sheets and threads and unsure objects are dropped, thick or sure
ones kept; the rule equals a direct distance transform of the whole volume whatever the blocks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from tests.test_instances_split import ellipsoids, tubes
from typer.testing import CliRunner

from organet.analyze.instances import FILTER_STAGE, ObjectFilter, label_instances
from organet.analyze.split import SplitParams
from organet.cli import app
from organet.errors import InputError
from organet.volumes import Volume, open_volume, write_ome_zarr

VS = (8.0, 4.0, 4.0)
SHAPE = (24, 64, 96)


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, dict[str, int]]:
    """A tilted thick ellipsoid, a tilted sheet 2-3 voxels thick, a thin tube and a thick tube
    cut by the far y border; labels and their roles."""
    thick = ellipsoids(SHAPE, VS, [((96, 130, 90), (60, 56, 70), 20, 30)])
    sheet = ellipsoids(SHAPE, VS, [((96, 60, 280), (80, 10, 110), 15, -25)])
    threads = tubes(SHAPE, VS, [[((40, 200, 20), (150, 230, 240))]], radius=6.0)
    fat = tubes(SHAPE, VS, [[((100, 190, 310), (100, 280, 370))]], radius=30.0)
    lab = np.zeros(SHAPE, np.int32)
    lab[thick > 0] = 1
    lab[sheet > 0] = 2
    lab[threads == 1] = 3
    lab[fat > 0] = 4
    return lab, {"thick": 1, "sheet": 2, "thread": 3, "fat": 4}


def _max_depth_nm(fg: np.ndarray, lab: np.ndarray, vs) -> dict[int, float]:
    """Largest distance (nm) to the background per label, voxels beyond the volume not background."""
    d = ndimage.distance_transform_edt(np.pad(fg, 40, constant_values=True), sampling=vs)[(slice(40, -40),) * 3]
    return {int(i): float(d[lab == i].max()) for i in np.unique(lab[lab > 0])}


def test_thin_sheets_and_threads_go_thick_objects_stay(tmp_path, scene):
    lab, role = scene
    fg = lab > 0
    assert ndimage.label(fg)[1] == 4  # four separate objects
    depth = _max_depth_nm(fg, lab, VS)
    assert depth[role["sheet"]] < 20 and depth[role["thread"]] < 20 < 40 < depth[role["thick"]]
    assert depth[role["fat"]] > 25
    calls = []
    res = label_instances(
        Volume(fg.astype(np.uint8), VS),
        tmp_path / "f",
        block_shape=(8, 32, 32),
        chunks=(8, 32, 32),
        object_filter=ObjectFilter(min_radius_nm=20.0),
        progress=lambda stage, adv, total: calls.append(stage),
    )
    got = open_volume(tmp_path / "f" / "labels.zarr").read()
    assert FILTER_STAGE in calls
    assert res.objects == 2 and res.removed_filtered == 2 and res.removed_small == 0
    kept = {int(np.bincount(lab[got == i]).argmax()) for i in (1, 2)}
    assert kept == {role["thick"], role["fat"]}
    np.testing.assert_array_equal(got > 0, np.isin(lab, [role["thick"], role["fat"]]))
    assert np.isnan(res.table["mean_probability"]).all()  # a mask has no probability


def test_the_radius_rule_equals_a_direct_distance_transform_whatever_the_blocks(tmp_path, scene):
    radius = 33.0  # deeper than a block face is from some cores: the context decides
    lab, _ = scene
    fg = lab > 0
    comps, n = ndimage.label(fg)
    depth = _max_depth_nm(fg, comps, VS)
    expect_kept = sorted(i for i in range(1, n + 1) if depth[i] >= radius - 1e-3)
    vol = Volume(fg, VS)
    outs = []
    for k, block in enumerate([(24, 64, 96), (8, 24, 40)]):
        res = label_instances(
            vol, tmp_path / f"b{k}", block_shape=block, chunks=block, object_filter=ObjectFilter(radius)
        )
        assert res.objects == len(expect_kept) and res.removed_filtered == n - len(expect_kept)
        outs.append(open_volume(tmp_path / f"b{k}" / "labels.zarr").read())
    np.testing.assert_array_equal((outs[0] > 0), np.isin(comps, expect_kept))
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_a_block_face_inside_a_thin_slab_does_not_make_it_deep(tmp_path):
    """A slab 48 nm thick (depth 24 nm) cut by a block face 8 nm from one wall: read without
    context, its part beyond the face would look 40 nm deep; a slab cut by the volume border
    (not background) is as deep as it is wide."""
    shape, vs = (16, 32, 80), (8.0, 4.0, 4.0)
    fg = np.zeros(shape, bool)
    fg[:, :, 38:50] = True  # x 152-200 nm; block face at x = 40 voxels
    fg[:, :, 55:] = True  # 100 nm to the far border
    comps, _ = ndimage.label(fg)
    depth = _max_depth_nm(fg, comps, vs)
    assert depth[1] == pytest.approx(24.0) and depth[2] == pytest.approx(100.0)
    res = label_instances(
        Volume(fg, vs), tmp_path / "s", block_shape=(16, 32, 40), chunks=(16, 32, 40), object_filter=ObjectFilter(33.0)
    )
    got = open_volume(tmp_path / "s" / "labels.zarr").read()
    assert res.objects == 1 and res.removed_filtered == 1
    np.testing.assert_array_equal(got > 0, comps == 2)


def test_mean_probability_rule_and_column(tmp_path, scene):
    lab, role = scene
    p = np.zeros(SHAPE, np.float32)
    p[lab == role["thick"]] = 0.95
    p[lab == role["sheet"]] = 0.6
    p[lab == role["thread"]] = 0.9
    p[lab == role["fat"]] = 0.7
    vol = Volume(p, VS)
    res = label_instances(
        vol, tmp_path / "p", block_shape=(12, 32, 48), object_filter=ObjectFilter(min_mean_probability=0.8)
    )
    got = open_volume(tmp_path / "p" / "labels.zarr").read()
    np.testing.assert_array_equal(got > 0, np.isin(lab, [role["thick"], role["thread"]]))
    assert res.removed_filtered == 2
    np.testing.assert_allclose(sorted(res.table["mean_probability"]), [0.9, 0.95], atol=1e-6)
    # both rules: the thread is sure but thin
    both = label_instances(vol, tmp_path / "pr", object_filter=ObjectFilter(20.0, 0.8))
    assert both.objects == 1 and both.removed_filtered == 3


def test_filter_after_split_drops_thin_pieces_and_keeps_split_objects(tmp_path):
    """Two touching ellipsoids (split apart) joined to a thin sheet: the sheet goes with its
    component's seedless part only when it is a separate object."""
    pair = ellipsoids(SHAPE, VS, [((96, 120, 100), (56, 50, 64), 0, 0), ((96, 120, 220), (56, 50, 64), 0, 0)])
    sheet = ellipsoids(SHAPE, VS, [((96, 220, 300), (70, 8, 60), 10, 0)])
    fg = (pair > 0) | (sheet > 0)
    assert ndimage.label(fg)[1] == 2
    params = SplitParams(seed_distance_nm=24.0, context_nm=400.0)
    res = label_instances(
        Volume(fg, VS),
        tmp_path / "s",
        block_shape=(12, 32, 48),
        chunks=(12, 32, 48),
        split=params,
        object_filter=ObjectFilter(min_radius_nm=24.0),
    )
    got = open_volume(tmp_path / "s" / "labels.zarr").read()
    assert res.seeds == 2 and res.objects == 2 and res.removed_filtered == 1
    np.testing.assert_array_equal(got > 0, pair > 0)
    assert len(np.unique(got[pair == 1])) == 1 and len(np.unique(got[pair == 2])) == 1


def test_bad_filter_settings_are_user_errors(tmp_path):
    with pytest.raises(InputError, match="--min-radius"):
        ObjectFilter(min_radius_nm=-1.0)
    with pytest.raises(InputError, match=r"--min-mean-probability must lie in \[0, 1\]"):
        ObjectFilter(min_mean_probability=1.5)
    mask = Volume(np.ones((4, 4, 4), np.uint8), (5.0, 5.0, 5.0))
    with pytest.raises(InputError, match="needs a probability"):
        label_instances(mask, tmp_path / "x", object_filter=ObjectFilter(min_mean_probability=0.5))
    assert not (tmp_path / "x").exists()


def test_cli_min_radius_and_min_mean_probability(tmp_path, scene):
    lab, role = scene
    p = np.where(lab > 0, np.where(lab == role["fat"], 0.7, 0.95), 0.0).astype(np.float32)
    with write_ome_zarr(tmp_path / "p.zarr") as w:
        w.create_image(None, p.shape, np.float32, VS, (0, 0, 0), (12, 32, 48)).write(..., p)
    r = CliRunner().invoke(
        app,
        ["instances", str(tmp_path / "p.zarr"), "--output", str(tmp_path / "o"), "--min-radius", "20",
         "--min-mean-probability", "0.8"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "1 objects" in r.output and "3 too thin or unsure removed" in r.output
    got = open_volume(tmp_path / "o" / "labels.zarr").read()
    np.testing.assert_array_equal(got > 0, lab == role["thick"])
    bad = CliRunner().invoke(
        app,
        ["instances", str(tmp_path / "o" / "labels.zarr"), "--output", str(tmp_path / "o2"),
         "--min-mean-probability", "0.8"],
    )  # fmt: skip
    assert bad.exit_code == 2 and "needs a probability" in bad.output and "Traceback" not in bad.output
