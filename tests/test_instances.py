"""Blockwise connected components (equal to scipy.ndimage.label) and the object table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from organet.analyze.instances import COLUMNS, label_instances
from organet.errors import IncompatibleError, InputError
from organet.volumes import Volume, open_volume


def blobs(shape=(20, 22, 26), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.random(shape), 1.2) > 0.53
    # objects that touch only across a block corner (8, 8, 8) / an edge
    a[6:10, 6:10, 6:10] = True
    a[15, 7, 7] = a[16, 8, 8] = True  # corner neighbours: one object with connectivity 3
    return a


@pytest.mark.parametrize("connectivity", [1, 3])
def test_blockwise_labels_equal_scipy(tmp_path, connectivity):
    a = blobs()
    ref, n = ndimage.label(a, ndimage.generate_binary_structure(3, connectivity))
    res = label_instances(
        Volume(a.astype(np.uint8), (4, 4, 4)),
        tmp_path / "out",
        connectivity=connectivity,
        block_shape=(8, 8, 8),
        chunks=(4, 8, 8),
    )
    got = open_volume(tmp_path / "out" / "labels.zarr").read()
    assert res.objects == n > 10
    np.testing.assert_array_equal(got, ref)  # identical numbering: raster order of first voxel
    t = pd.read_parquet(tmp_path / "out" / "objects.parquet")
    assert list(t.columns) == COLUMNS and len(t) == n
    np.testing.assert_array_equal(t["voxels"], np.bincount(ref.ravel())[1:])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out" / "objects.csv"), t, check_dtype=False)


def test_on_dask_cluster_with_size_filter_and_intensity(tmp_path):
    from distributed import Client, LocalCluster

    a = blobs(seed=1)
    raw = (np.arange(a.size).reshape(a.shape) % 251).astype(np.uint8)
    ref, n = ndimage.label(a)
    sizes = np.bincount(ref.ravel())[1:]
    vs = (5.0, 4.0, 4.0)
    min_nm3 = 10 * 80.0  # 10 voxels of 80 nm³
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c, Client(c) as cl:
        res = label_instances(
            Volume(a.astype(np.uint8), vs, (100, 0, 0)),
            tmp_path / "o",
            raw=Volume(raw, vs, (100, 0, 0)),
            min_size_nm3=min_nm3,
            block_shape=(8, 8, 8),
            chunks=(8, 8, 8),
            client=cl,
        )
    keep = np.flatnonzero(sizes >= 10) + 1
    expect = np.zeros(n + 1, np.int64)
    expect[keep] = np.arange(1, len(keep) + 1)
    got = open_volume(tmp_path / "o" / "labels.zarr")
    np.testing.assert_array_equal(got.read(), expect[ref])
    assert got.offset == (100, 0, 0) and res.removed_small == n - len(keep) > 0
    t = res.table
    np.testing.assert_allclose(t["volume_nm3"], sizes[keep - 1] * 80.0)
    means = ndimage.mean(raw.astype(float), ref, keep)
    np.testing.assert_allclose(t["mean_intensity"], means)
    zc = np.array(ndimage.center_of_mass(a, ref, keep))[:, 0]
    np.testing.assert_allclose(t["centroid_z_nm"], 100 + zc * 5.0)


def test_table_of_spheres_and_rods(tmp_path):
    vs = np.array([8.0, 4.0, 4.0])  # anisotropic (z, y, x) nm
    shape = (24, 60, 80)
    zz, yy, xx = np.indices(shape).astype(float) * vs[:, None, None, None]
    centre, r = np.array([90.0, 110.0, 70.0]), 40.0  # sphere, nm
    sphere = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= r**2
    rod_axis, rr, x0, x1 = (100.0, 190.0), 14.0, 100.0, 300.0  # along x, through several blocks
    rod = ((zz - rod_axis[0]) ** 2 + (yy - rod_axis[1]) ** 2 <= rr**2) & (xx >= x0) & (xx < x1)
    a = (sphere | rod).astype(np.uint8)
    res = label_instances(
        Volume(a, tuple(vs), (0, 0, 0)), tmp_path / "shapes", block_shape=(8, 16, 16), chunks=(8, 16, 16)
    )
    t = res.table.set_index("id")
    assert len(t) == 2
    s, c = t.loc[1], t.loc[2]  # the sphere's first voxel comes first in raster order
    # volumes: the drawn voxels exactly, and the analytic shapes within a few %
    assert s.voxels == sphere.sum() and c.voxels == rod.sum()
    assert abs(s.volume_nm3 / (4 / 3 * np.pi * r**3) - 1) < 0.05
    assert abs(c.volume_nm3 / (np.pi * rr**2 * (x1 - x0)) - 1) < 0.1
    # centroids within a voxel of the true centres
    assert np.all(np.abs(s[["centroid_z_nm", "centroid_y_nm", "centroid_x_nm"]].to_numpy(float) - centre) < vs)
    rod_c = np.array([rod_axis[0], rod_axis[1], (x0 + x1 - vs[2]) / 2])
    assert np.all(np.abs(c[["centroid_z_nm", "centroid_y_nm", "centroid_x_nm"]].to_numpy(float) - rod_c) < vs)
    # surface areas: near the analytic ones, and the blockwise sum equals one marching cubes of the object
    assert abs(s.surface_area_nm2 / (4 * np.pi * r**2) - 1) < 0.15  # staircase of a 5-voxel-radius z
    from skimage.measure import marching_cubes, mesh_surface_area

    for obj, row in ((sphere, s), (rod, c)):
        v, f, _, _ = marching_cubes(np.pad(obj, 1).astype(np.float32), 0.5, spacing=tuple(vs), method="lorensen")
        assert row.surface_area_nm2 == pytest.approx(mesh_surface_area(v, f), rel=1e-9)
    assert [int(s.bbox_z0_vox), int(s.bbox_z1_vox)] == (np.flatnonzero(sphere.any((1, 2)))[[0, -1]] + [0, 1]).tolist()
    assert np.isnan(s.mean_intensity)


def test_errors(tmp_path):
    v = Volume(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(InputError, match="connectivity"):
        label_instances(v, tmp_path / "a", connectivity=4)
    with pytest.raises(InputError, match="min-size"):
        label_instances(v, tmp_path / "a", min_size_nm3=-1)
    with pytest.raises(InputError, match="threshold"):
        label_instances(v, tmp_path / "a", threshold=1.5)
    with pytest.raises(IncompatibleError, match="raw shape"):
        label_instances(v, tmp_path / "a", raw=Volume(np.zeros((4, 4, 5))))
    with pytest.raises(IncompatibleError, match="voxel size"):
        label_instances(v, tmp_path / "a", raw=Volume(np.zeros((4, 4, 4)), (2, 1, 1)))
    with pytest.raises(InputError, match="block shape"):
        label_instances(v, tmp_path / "a", block_shape=(0, 4, 4))
    assert not list(tmp_path.iterdir())  # nothing started
    res = label_instances(v, tmp_path / "a")
    assert res.objects == 0 and len(res.table) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no .partial / .progress left
    again = label_instances(v, tmp_path / "a")  # the same run: complete, nothing to do
    assert again.objects == 0 and "already complete" in again.note
    with pytest.raises(InputError, match="already exists"):
        label_instances(v, tmp_path / "a", connectivity=3)
    res = label_instances(Volume(np.ones((4, 4, 4), np.uint8)), tmp_path / "a", overwrite=True)
    assert res.objects == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_probability_foreground_rounded_block_and_progress(tmp_path):
    a = blobs()
    p = np.where(a, 0.8, 0.2).astype(np.float32)
    p[0, 0, 0] = np.nan  # background
    ref, n = ndimage.label(np.nan_to_num(p) >= 0.7)
    calls = []
    res = label_instances(
        Volume(p, (4, 4, 4)),
        tmp_path / "p",
        threshold=0.7,
        block_shape=(7, 9, 8),
        chunks=(4, 4, 4),
        progress=lambda *c: calls.append(c),
    )
    assert "rounded to (8, 8, 8)" in res.note and res.objects == n
    np.testing.assert_array_equal(open_volume(tmp_path / "p" / "labels.zarr").read(), ref)
    # a uint8 probability written by organet predict: value/255 >= threshold
    u8 = Volume(np.where(a, 200, 100).astype(np.uint8), (4, 4, 4), attrs={"kind": "probability"})
    assert label_instances(u8, tmp_path / "u", threshold=0.5).objects == ndimage.label(a)[1]
    assert label_instances(u8, tmp_path / "v", threshold=0.8).objects == 0
    # progress: every pass announced with the plan's 3 x 3 x 4 blocks, each block once
    assert list(dict.fromkeys(c[0] for c in calls)) == ["label", "merge faces", "relabel", "measure"]
    assert all(c[2] == 36 for c in calls)
    for stage in ("label", "merge faces", "relabel", "measure"):
        assert sum(c[1] for c in calls if c[0] == stage) == 36
