"""Nuclear-pore membrane diameters (issue 5) on the seeded envelope phantom."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import typer
from scipy.spatial import cKDTree

from organet.analyze.pores import (
    AXIS_COLUMNS,
    RawSampler,
    analyze_pores,
    build_surface,
    local_frame,
    pore_normals,
    write_outputs,
)
from organet.analyze.pores_phantom import make_pore_phantom
from organet.cli.analyze import pores as pores_command
from organet.volumes import Volume, write_ome_zarr

EXTENT = (400.0, 720.0, 720.0)


def _match(ph, table):
    c = table[["centroid_z_nm", "centroid_y_nm", "centroid_x_nm"]].to_numpy()
    dist, idx = cKDTree(ph.centres_nm).query(c)
    return dist, idx


def _angles(ph, table, idx):
    n = table[["normal_z", "normal_y", "normal_x"]].to_numpy()
    return np.degrees(np.arccos(np.clip(np.einsum("ij,ij->i", n, ph.normals[idx]), -1, 1)))


@pytest.fixture(scope="module")
def iso():
    ph = make_pore_phantom(voxel_size=5.0, extent_nm=EXTENT, seed=0)
    res = analyze_pores(Volume(ph.pred, ph.voxel_size), Volume(ph.raw, ph.voxel_size), keep_views=True)
    return ph, res


@pytest.fixture(scope="module")
def aniso():
    ph = make_pore_phantom(voxel_size=(5.2, 4.0, 4.0), extent_nm=EXTENT, seed=0)
    res = analyze_pores(Volume(ph.pred, ph.voxel_size), Volume(ph.raw, ph.voxel_size), keep_views=False)
    return ph, res


def test_phantom_is_seeded_and_sane(iso):
    ph, _ = iso
    again = make_pore_phantom(voxel_size=5.0, extent_nm=EXTENT, seed=0)
    np.testing.assert_array_equal(again.raw, ph.raw)
    assert ph.raw.dtype == np.uint8 and ph.raw.shape == (80, 144, 144)
    assert len(ph.diameters_nm) >= 6
    assert ph.diameters_nm.min() >= 50 and ph.diameters_nm.max() <= 120
    np.testing.assert_allclose(np.linalg.norm(ph.normals, axis=1), 1)
    # outward: away from the ellipsoid centre
    assert np.all(np.einsum("ij,ij->i", ph.centres_nm - ph.nucleus_centre_nm, ph.normals) > 0)


@pytest.mark.parametrize("which", ["iso", "aniso"])
def test_every_pore_found_diameters_and_normals(which, request):
    ph, res = request.getfixturevalue(which)
    t = res.table
    voxel = max(ph.voxel_size)
    assert len(t) == len(ph.diameters_nm)
    dist, idx = _match(ph, t)
    assert len(set(idx)) == len(idx) and dist.max() < 5.0  # one detection per pore, at its centre
    err = np.abs(t["diameter_mean_nm"].to_numpy() - ph.diameters_nm[idx])
    assert np.median(err) <= voxel and err.max() <= 2 * voxel, err
    assert (t["n_valid_axes"] == 10).all()
    assert (t["diameter_sd_nm"] < 3).all()
    ang = _angles(ph, t, idx)
    assert ang.max() < 10.0, ang  # also oriented: away from the nucleus centre
    assert t[AXIS_COLUMNS].shape[1] == 10


def test_given_nucleus_centre_orients_normals_outward():
    ph = make_pore_phantom(voxel_size=5.0, extent_nm=EXTENT, seed=1)  # nearly flat patch
    vol_p, vol_r = Volume(ph.pred, ph.voxel_size), Volume(ph.raw, ph.voxel_size)
    res = analyze_pores(vol_p, vol_r, keep_views=False, nucleus_centre_nm=ph.nucleus_centre_nm)
    _, idx = _match(ph, res.table)
    assert _angles(ph, res.table, idx).max() < 10
    # a centre on the other side flips every normal, consistently
    res = analyze_pores(vol_p, vol_r, keep_views=False, nucleus_centre_nm=ph.centres_nm.mean(0) + 1e4 * ph.normals[0])
    assert _angles(ph, res.table, idx).min() > 170


def test_anisotropic_voxels_give_same_nm_diameters(iso, aniso):
    (ph1, r1), (ph2, r2) = iso, aniso
    _, i1 = _match(ph1, r1.table)
    _, i2 = _match(ph2, r2.table)
    d1 = pd.Series(r1.table["diameter_mean_nm"].to_numpy(), index=i1).sort_index()
    d2 = pd.Series(r2.table["diameter_mean_nm"].to_numpy(), index=i2).sort_index()
    np.testing.assert_allclose(ph1.diameters_nm, ph2.diameters_nm)  # same objects in nm
    assert np.abs(d1.to_numpy() - d2.to_numpy()).max() < 3.0


def test_fewer_than_four_pores_is_flagged_not_crashed(iso):
    ph, _ = iso
    keep = np.zeros_like(ph.pred)
    from scipy import ndimage

    lab, n = ndimage.label(ph.pred, np.ones((3, 3, 3)))
    keep[np.isin(lab, [1, 2, 3])] = 1
    res = analyze_pores(Volume(keep, ph.voxel_size), Volume(ph.raw, ph.voxel_size))
    assert len(res.table) == 3 and res.surface is None
    assert all("no_surface" in f for f in res.table["flags"])
    assert res.table["diameter_mean_nm"].isna().all() and res.table["normal_z"].isna().all()
    assert any("at least 4" in m for m in res.messages)


def test_collinear_and_coplanar_centroids():
    line = np.c_[np.zeros(6), np.zeros(6), np.arange(6) * 100.0]
    surf, problem = build_surface(line)
    assert surf is None and "collinear" in problem
    # coplanar grid on a tilted plane: a valid surface whose normals are the plane normal
    rng = np.random.default_rng(1)
    n_true = np.array([0.8, 0.36, 0.48])
    e1 = np.cross(n_true, [1.0, 0, 0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(n_true, e1)
    uv = np.stack(np.meshgrid(np.arange(4), np.arange(4)), -1).reshape(-1, 2) * 250.0
    uv = uv + rng.uniform(-40, 40, uv.shape)
    pts = 1000 + uv[:, :1] * e1 + uv[:, 1:] * e2
    surf, problem = build_surface(pts)
    assert problem is None
    normals, nearest = pore_normals(surf)
    assert np.all(np.abs(normals @ n_true) > np.cos(np.radians(1)))
    assert len(set(np.sign(normals @ n_true))) == 1  # consistently oriented
    # collinear pores end-to-end: no surface, flagged
    pred = np.zeros((20, 20, 120), np.uint8)
    for k in range(5):
        pred[8:12, 8:12, 10 + 22 * k : 14 + 22 * k] = 1
    res = analyze_pores(
        Volume(pred, (5, 5, 5)), Volume(np.full(pred.shape, 128, np.uint8), (5, 5, 5)), min_size_nm3=1000
    )
    assert len(res.table) == 5 and res.table["flags"].str.contains("no_surface").all()
    assert any("collinear" in m for m in res.messages)


def test_pore_cut_by_the_border_is_flagged(iso):
    ph, full = iso
    vs = np.asarray(ph.voxel_size)
    k = int(round(ph.centres_nm[0][2] / vs[2]))  # crop x so that pore 0 is cut through its centre
    off = (0.0, 0.0, k * vs[2])
    res = analyze_pores(Volume(ph.pred[:, :, k:], ph.voxel_size, off), Volume(ph.raw[:, :, k:], ph.voxel_size, off))
    t = res.table
    assert t["border"].sum() >= 1 and t.loc[t["border"], "flags"].str.contains("border").all()
    assert any("border" in m for m in res.messages)
    # pores well inside the crop are measured as before (world nm coordinates via the offset)
    inside = ~t["border"] & ~t["flags"].str.contains("outside")
    dist, idx = _match(ph, t[inside])
    assert inside.sum() >= 2 and dist.max() < 5
    err = np.abs(t.loc[inside, "diameter_mean_nm"].to_numpy() - ph.diameters_nm[idx])
    assert err.max() <= 10


def test_empty_prediction_and_missing_membranes():
    raw = Volume(np.full((10, 10, 10), 100, np.uint8), (5, 5, 5))
    with pytest.raises(ValueError, match="empty"):
        analyze_pores(Volume(np.zeros((10, 10, 10), np.uint8), (5, 5, 5)), raw)
    pred = np.zeros((10, 10, 10), np.uint8)
    pred[4:6, 4:6, 4:6] = 1
    with pytest.raises(ValueError, match="min-size"):
        analyze_pores(Volume(pred, (5, 5, 5)), raw, min_size_nm3=1e6)


def test_no_membrane_means_flags_not_invented_diameters(iso):
    ph, _ = iso
    rng = np.random.default_rng(0)
    flat = np.clip(rng.normal(150, 8, ph.raw.shape), 0, 255).astype(np.uint8)
    res = analyze_pores(Volume(ph.pred, ph.voxel_size), Volume(flat, ph.voxel_size), keep_views=False)
    t = res.table
    assert (t["n_valid_axes"] <= 2).all() and t["flags"].str.contains("few_valid_axes").all()
    assert t["flags"].str.contains("midplane_not_found").all()


def test_local_frame_and_trilinear_sampling_in_nm():
    f = local_frame(np.array([0.3, -0.4, 0.866]))
    np.testing.assert_allclose(f @ f.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(f) > 0
    vs, off = np.array([5.2, 4.0, 3.0]), np.array([100.0, -20.0, 7.0])
    z, y, x = np.meshgrid(*(off[i] + np.arange(n) * vs[i] for i, n in enumerate((12, 15, 17))), indexing="ij")
    vol = Volume((0.5 * z - 2 * y + 3 * x).astype(np.float32), vs, off)  # linear in nm: trilinear is exact
    pts = off + np.random.default_rng(0).uniform(2, 30, (50, 3))
    vals, outside = RawSampler(vol)(pts)
    np.testing.assert_allclose(vals, 0.5 * pts[:, 0] - 2 * pts[:, 1] + 3 * pts[:, 2], rtol=1e-5, atol=1e-3)
    assert outside.shape == (50,) and not outside.any()
    _, out2 = RawSampler(vol)(np.array([[0.0, 0.0, 0.0]]))
    assert out2.all()


def _save(path, arr, vs):
    with write_ome_zarr(path) as w:
        w.create_image(None, arr.shape, arr.dtype, vs, (0, 0, 0), (64, 64, 64)).write((slice(None),) * 3, arr)


def test_pores_command_writes_table_and_plots(tmp_path, capsys):
    ph = make_pore_phantom(voxel_size=5.0, extent_nm=EXTENT, seed=0)
    _save(tmp_path / "np.zarr", ph.pred * np.uint8(255), ph.voxel_size)  # uint8 probability
    _save(tmp_path / "raw.zarr", ph.raw, ph.voxel_size)
    out = tmp_path / "out"
    rc = pores_command(pred=str(tmp_path / "np.zarr"), raw=str(tmp_path / "raw.zarr"), output=str(out), gallery=True)
    assert rc == 0
    for name in (
        "pores.csv",
        "pores.parquet",
        "centroids.png",
        "surface_normals.png",
        "diameter_map.png",
        "diameter_histogram.png",
        "gallery.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    csv = pd.read_csv(out / "pores.csv")
    pq = pd.read_parquet(out / "pores.parquet")
    assert len(csv) == len(pq) == len(ph.diameters_nm)
    assert {"id", "centroid_z_nm", "normal_x", "diameter_mean_nm", "diameter_sd_nm", "flags", *AXIS_COLUMNS} <= set(csv)
    assert "membrane diameter median" in capsys.readouterr().out
    assert not list(out.glob(".*tmp*"))
    # bad input: one error line, exit code 2
    _save(tmp_path / "empty.zarr", np.zeros((8, 8, 8), np.uint8), (5, 5, 5))
    with pytest.raises(typer.Exit) as e:
        pores_command(pred=str(tmp_path / "empty.zarr"), raw=str(tmp_path / "raw.zarr"), output=str(out))
    assert e.value.exit_code == 2 and "error:" in capsys.readouterr().err
    with pytest.raises(typer.Exit) as e:
        pores_command(pred=str(tmp_path / "nope.zarr"), raw=str(tmp_path / "raw.zarr"), output=str(out))
    assert e.value.exit_code == 2


def test_write_outputs_without_gallery(iso, tmp_path):
    _, res = iso
    files = write_outputs(res, tmp_path / "o")
    assert "gallery" not in files and set(files) >= {"csv", "centroids", "surface", "diameter_map", "histogram"}
