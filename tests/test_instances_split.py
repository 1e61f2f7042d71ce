"""`label_instances(..., split=SplitParams(...))` / `organet instances --split watershed`:
touching ellipsoids and branching tubes with known instances (tilted, of different sizes,
anisotropic voxels, cut by the volume border) are split apart; blockwise = one pass."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import adapted_rand_error
from typer.testing import CliRunner

from organet.analyze.instances import SPLIT_STAGES, label_instances
from organet.analyze.split import SplitParams, distance_nm, flood, seed_cores
from organet.cli import app
from organet.errors import InputError
from organet.volumes import Volume, open_volume, write_ome_zarr


def _rot(ax: float, az: float) -> np.ndarray:
    """Rotation by ``ax`` about the x axis, then ``az`` about the z axis (radians, z y x order)."""
    ca, sa, cz, sz = np.cos(ax), np.sin(ax), np.cos(az), np.sin(az)
    rx = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1.0]])  # mixes z and y
    rz = np.array([[1.0, 0, 0], [0, cz, -sz], [0, sz, cz]])  # mixes y and x
    return rz @ rx


def ellipsoids(shape, vs, specs) -> np.ndarray:
    """Labels 1..n of ellipsoids (centre nm, semi-axes nm, tilt about x, about z in degrees);
    a voxel inside several belongs to the one it lies deepest in (smallest normalized radius)."""
    pts = np.indices(shape).reshape(3, -1).T * np.asarray(vs, float)
    q = np.full(len(pts), np.inf)
    lab = np.zeros(len(pts), np.int32)
    for k, (c, axes, tx, tz) in enumerate(specs, start=1):
        r = (pts - np.asarray(c, float)) @ _rot(np.radians(tx), np.radians(tz))
        qk = ((r / np.asarray(axes, float)) ** 2).sum(1)
        take = (qk <= 1) & (qk < q)
        lab[take], q[take] = k, qk[take]
    return lab.reshape(shape)


def tubes(shape, vs, trees, radius) -> np.ndarray:
    """Labels 1..n of tubes of ``radius`` nm around polylines (a tree: segments (a, b) in nm);
    a voxel inside several tubes belongs to the nearest axis."""
    pts = np.indices(shape).reshape(3, -1).T * np.asarray(vs, float)
    best = np.full(len(pts), np.inf)
    lab = np.zeros(len(pts), np.int32)
    for k, segs in enumerate(trees, start=1):
        d = np.full(len(pts), np.inf)
        for a, b in segs:
            a, b = np.asarray(a, float), np.asarray(b, float)
            t = np.clip((pts - a) @ (b - a) / ((b - a) @ (b - a)), 0, 1)
            d = np.minimum(d, np.linalg.norm(pts - (a + t[:, None] * (b - a)), axis=1))
        take = (d <= radius) & (d < best)
        lab[take], best[take] = k, d[take]
    return lab.reshape(shape)


def arand(truth: np.ndarray, labels: np.ndarray) -> float:
    return float(adapted_rand_error(truth, labels)[0])


VS_ANISO = (8.0, 4.0, 4.0)
# two touching pairs (centre z y x nm, semi-axes nm, tilts in degrees): an equal pair along x,
# and an unequal, tilted pair
PAIRS = [
    ((72, 60, 70), (40, 36, 56), 0, 0),
    ((72, 60, 170), (40, 36, 56), 0, 0),
    ((80, 170, 70), (44, 40, 60), 25, 30),
    ((80, 205, 140), (36, 32, 40), 10, -20),
]


@pytest.fixture(scope="module")
def touching() -> np.ndarray:
    return ellipsoids((20, 64, 64), VS_ANISO, PAIRS)


def test_touching_ellipsoids_are_split_and_cc_merges_them(tmp_path, touching):
    truth = touching
    fg = (truth > 0).astype(np.uint8)
    assert ndimage.label(fg)[1] == 2  # each pair is one connected component
    vol = Volume(fg, VS_ANISO)
    cc = label_instances(vol, tmp_path / "cc", block_shape=(8, 32, 32), chunks=(8, 32, 32))
    params = SplitParams(seed_distance_nm=20.0, context_nm=300.0)
    ws = label_instances(vol, tmp_path / "ws", block_shape=(8, 32, 32), chunks=(8, 32, 32), split=params)
    got_cc = open_volume(tmp_path / "cc" / "labels.zarr").read()
    got = open_volume(tmp_path / "ws" / "labels.zarr").read()
    assert cc.objects == 2 and ws.objects == 4 == ws.seeds and ws.inexact == 0
    assert arand(truth, got_cc) > 0.3
    assert arand(truth, got) < 0.05
    # every foreground voxel keeps a label, background stays 0
    np.testing.assert_array_equal(got > 0, fg > 0)


def test_border_sizes_and_tilts(tmp_path):
    """A pair cut by the x = 0 border (only a cap of one ellipsoid inside), a small one touching a
    large one, and a tilted pair; isotropic 5 nm voxels."""
    vs = (5.0, 5.0, 5.0)
    shape = (26, 48, 96)
    specs = [
        ((65, 120, 30), (50, 55, 60), 0, 0),
        ((65, 120, -60), (50, 55, 45), 0, 0),  # centre outside the volume: a 15 nm... cap-sized piece
        ((65, 100, 200), (55, 60, 70), 20, 15),
        ((65, 110, 310), (40, 35, 45), -15, 0),  # smaller, touching the previous one
        ((65, 180, 420), (45, 40, 50), 0, 40),
    ]
    truth = ellipsoids(shape, vs, specs)
    present = np.unique(truth[truth > 0])
    fg = truth > 0
    params = SplitParams(seed_distance_nm=22.0, min_seed_size_nm3=0.0, context_nm=400.0)
    res = label_instances(Volume(fg, vs), tmp_path / "b", block_shape=(13, 24, 48), chunks=(13, 24, 24), split=params)
    got = open_volume(tmp_path / "b" / "labels.zarr").read()
    assert res.inexact == 0
    # the cap of the cut ellipsoid has no core; it joins its neighbour, the only tolerated error
    cap = truth == 2
    assert cap.sum() < 0.02 * fg.sum()
    assert arand(np.where(cap, 0, truth), got) < 0.05
    assert res.objects == len(present) - (1 if 2 in present else 0)


def test_branching_tubes(tmp_path):
    """Two Y-shaped tubes that touch: each one object (no split along a branch), split from the other."""
    vs = (4.0, 4.0, 4.0)
    shape = (24, 56, 64)
    r = 14.0
    y1 = [((48, 40, 40), (48, 110, 120)), ((48, 110, 120), (48, 180, 60)), ((48, 110, 120), (48, 110, 240))]
    # the second Y crosses over the first one's x branch, its axis 2r - 1 nm above it: a thin contact
    y2 = [((75, 80, 200), (75, 200, 200)), ((75, 200, 200), (75, 210, 250)), ((75, 200, 200), (40, 210, 130))]
    truth = tubes(shape, vs, [y1, y2], r)
    fg = truth > 0
    assert ndimage.label(fg)[1] == 1
    params = SplitParams(seed_distance_nm=10.0, context_nm=300.0)
    res = label_instances(Volume(fg, vs), tmp_path / "t", block_shape=(12, 28, 32), chunks=(12, 28, 32), split=params)
    got = open_volume(tmp_path / "t" / "labels.zarr").read()
    assert res.objects == 2 and res.inexact == 0
    assert arand(truth, got) < 0.05
    cc = label_instances(Volume(fg, vs), tmp_path / "c", block_shape=(12, 28, 32), chunks=(12, 28, 32))
    assert cc.objects == 1 and arand(truth, open_volume(tmp_path / "c" / "labels.zarr").read()) > 0.3


def test_blockwise_equals_single_pass_and_direct_watershed(tmp_path):
    # the pairs twice along x, 512 nm apart: the context (256 nm = 64 voxels in x) covers each
    # component from every block it touches, but not the whole volume
    shifted = [((z, y, x + 512), axes, a, b) for (z, y, x), axes, a, b in PAIRS]
    fg = ellipsoids((20, 64, 192), VS_ANISO, PAIRS + shifted) > 0
    vol = Volume(fg.astype(np.uint8), VS_ANISO)
    params = SplitParams(seed_distance_nm=20.0, context_nm=256.0)
    calls = []
    one = label_instances(vol, tmp_path / "one", block_shape=fg.shape, split=params)
    many = label_instances(
        vol,
        tmp_path / "many",
        block_shape=(10, 32, 32),
        chunks=(10, 16, 16),
        split=params,
        progress=lambda *c: calls.append(c),
    )
    a = open_volume(tmp_path / "one" / "labels.zarr").read()
    b = open_volume(tmp_path / "many" / "labels.zarr").read()
    assert many.inexact == 0 and one.objects == many.objects == 8
    np.testing.assert_array_equal(a, b)  # byte for byte, numbered the same way
    assert list(dict.fromkeys(c[0] for c in calls)) == list(SPLIT_STAGES)
    # the same rule written directly with scipy + skimage on the whole array
    d = np.minimum(ndimage.distance_transform_edt(fg, sampling=VS_ANISO), 20.0)
    markers, _ = ndimage.label(d >= 20.0 - 1e-4)
    from skimage.segmentation import watershed

    ref = watershed(-d, markers, mask=fg)
    assert adapted_rand_error(ref, a)[0] < 1e-3  # the same partition up to ties between seeds


def test_small_context_is_reported_and_stays_consistent(tmp_path, touching):
    fg = touching > 0
    params = SplitParams(seed_distance_nm=20.0, context_nm=16.0)
    res = label_instances(Volume(fg, VS_ANISO), tmp_path / "s", block_shape=(10, 32, 32), split=params)
    got = open_volume(tmp_path / "s" / "labels.zarr").read()
    assert res.inexact == 2 and "larger than a block plus its context" in res.note
    np.testing.assert_array_equal(got > 0, fg)  # every voxel still labelled
    assert res.seeds == 4


def test_seed_filter_components_without_seed_and_size_filter(tmp_path):
    vs = (5.0, 5.0, 5.0)
    fg = np.zeros((16, 40, 60), bool)
    fg[2:14, 5:35, 5:25] = True  # a box: one core
    fg[7:9, 18:21, 25:40] = True  # a thin bridge (no core) to ...
    fg[4:12, 12:28, 40:50] = True  # a smaller box: its own core, small
    fg[1:3, 37:39, 50:58] = True  # a thin rod alone: no seed, stays one object
    rod_vox = 2 * 2 * 8
    big = SplitParams(seed_distance_nm=15.0, min_seed_size_nm3=0.0)
    res = label_instances(Volume(fg, vs), tmp_path / "a", split=big, block_shape=(8, 40, 60))
    assert res.seeds == 2 and res.objects == 3
    # the small box's core (>= 3 voxels from the background): 4 x 12 x 6 voxels (the big one's 8 x 24 x 14);
    # drop it and the small box joins the big one
    small_core_nm3 = 4 * 12 * 6 * 125.0
    drop = SplitParams(seed_distance_nm=15.0, min_seed_size_nm3=small_core_nm3 + 1)
    res = label_instances(Volume(fg, vs), tmp_path / "b", split=drop, block_shape=(8, 40, 60))
    assert res.seeds == 1 and res.objects == 2
    # the size filter applies to split objects: the rod goes
    res = label_instances(
        Volume(fg, vs), tmp_path / "c", split=big, min_size_nm3=(rod_vox + 1) * 125.0, block_shape=(8, 40, 60)
    )
    got = open_volume(tmp_path / "c" / "labels.zarr").read()
    assert res.objects == 2 and res.removed_small == 1 and not got[1:3, 37:39, 50:58].any()


def test_array_rules():
    vs = (10.0, 5.0, 5.0)
    fg = np.zeros((9, 20, 20), bool)
    fg[1:8, 2:18, 2:18] = True
    d = distance_nm(fg, vs, 1e9)
    np.testing.assert_allclose(d, ndimage.distance_transform_edt(fg, sampling=vs), rtol=1e-5)
    assert distance_nm(fg, vs, 20.0).max() == np.float32(20.0)
    assert seed_cores(distance_nm(fg, vs, 30.0), 30.0).sum() == 3 * 6 * 6  # z 3..5, y and x 7..12
    assert not distance_nm(np.zeros((2, 2, 2), bool), vs, 5).any()
    assert (distance_nm(np.ones((2, 2, 2), bool), vs, 5) == 5).all()
    # markers flood in global raster order: the voxel between two seeds goes to the first
    line = np.ones((1, 1, 3), bool)
    markers = np.array([[[7, 0, 3]]])
    out = flood(line, np.zeros(line.shape, np.float32), markers, 1, (0, 0, 0), (1, 1, 3))
    assert out.tolist() == [[[7, 7, 3]]]
    with pytest.raises(InputError, match="seed-distance"):
        SplitParams(seed_distance_nm=0)
    with pytest.raises(InputError, match="min-seed-size"):
        SplitParams(min_seed_size_nm3=-1)
    with pytest.raises(InputError, match="context"):
        SplitParams(context_nm=float("nan"))


def test_cli_split(tmp_path, touching):
    fg = (touching > 0).astype(np.uint8)
    with write_ome_zarr(tmp_path / "m.zarr") as w:
        w.create_image(None, fg.shape, np.uint8, VS_ANISO, (0, 0, 0), (8, 32, 32)).write(..., fg)
    r = CliRunner().invoke(
        app,
        [
            "instances",
            str(tmp_path / "m.zarr"),
            "--output",
            str(tmp_path / "o"),
            "--split",
            "watershed",
            "--seed-distance",
            "20",
            "--context",
            "300",
            "--block",
            "8",
            "32",
            "32",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "4 objects" in r.output and "4 seeds" in r.output
    r = CliRunner().invoke(
        app, ["instances", str(tmp_path / "m.zarr"), "--output", str(tmp_path / "x"), "--split", "wat"]
    )
    assert r.exit_code == 2 and "--split 'wat'" in " ".join(r.output.split())
