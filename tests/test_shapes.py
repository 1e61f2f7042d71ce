"""Shape measurements on analytic objects (issue 18): volume, area, axes, skeleton, neighbours, masks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from organet.analyze.shapes import measure_shapes, write_outputs
from organet.cli.analyze import shapes as shapes_command
from organet.volumes import Volume, write_ome_zarr

ISO = (5.0, 5.0, 5.0)
ANISO = (10.0, 5.0, 5.0)


def _grid(shape_nm: tuple[float, float, float], vs) -> tuple[np.ndarray, ...]:
    """Voxel-centre coordinates (nm) of a volume of the given extent."""
    n = [int(round(e / v)) for e, v in zip(shape_nm, vs)]
    return np.meshgrid(*[(np.arange(k) + 0.5) * v for k, v in zip(n, vs)], indexing="ij")


def _capsule(P, p, q, r):
    p, q = np.asarray(p, float), np.asarray(q, float)
    d = q - p
    t = np.clip(((P - p) @ d) / (d @ d), 0, 1)
    return np.linalg.norm(P - (p + t[..., None] * d), axis=-1) <= r


def _ellipsoid_area(a: float, b: float, c: float) -> float:
    """Knud Thomsen's approximation (relative error ≤ 1.06 %) of an ellipsoid's area (semi-axes)."""
    p = 1.6075
    return 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)


def _one(mask: np.ndarray, vs) -> pd.Series:
    res = measure_shapes(Volume(mask.astype(np.uint16), voxel_size=vs))
    assert len(res.table) == 1
    return res.table.iloc[0]


@pytest.mark.parametrize("vs", [ISO, ANISO], ids=["5nm", "10x5x5nm"])
def test_ball(vs):
    Z, Y, X = _grid((260, 260, 260), vs)
    R = 100.0
    row = _one((Z - 131) ** 2 + (Y - 128) ** 2 + (X - 129) ** 2 <= R**2, vs)
    assert row["volume_nm3"] == pytest.approx(4 / 3 * math.pi * R**3, rel=0.01)
    assert row["surface_area_nm2"] == pytest.approx(4 * math.pi * R**2, rel=0.03)
    assert 0.97 <= row["sphericity"] <= 1.0
    for c in ("axis_major_nm", "axis_mid_nm", "axis_minor_nm"):
        assert row[c] == pytest.approx(2 * R, rel=0.015)
    assert row["elongation"] == pytest.approx(1.0, abs=0.05)
    assert row["branch_points"] == 0 and not row["cut_by_border"]


@pytest.mark.parametrize("vs", [ISO, ANISO], ids=["5nm", "10x5x5nm"])
def test_tilted_ellipsoid_axes(vs):
    Z, Y, X = _grid((300, 300, 300), vs)
    P = np.stack([Z, Y, X], -1) - 150.0
    th = math.radians(35)
    rot = np.array([[1, 0, 0], [0, math.cos(th), -math.sin(th)], [0, math.sin(th), math.cos(th)]])
    rot = rot @ np.array([[math.cos(0.5), 0, math.sin(0.5)], [0, 1, 0], [-math.sin(0.5), 0, math.cos(0.5)]])
    Q = P @ rot  # coordinates in the ellipsoid's frame
    a, b, c = 120.0, 70.0, 45.0
    row = _one((Q[..., 0] / c) ** 2 + (Q[..., 1] / b) ** 2 + (Q[..., 2] / a) ** 2 <= 1, vs)
    assert row["volume_nm3"] == pytest.approx(4 / 3 * math.pi * a * b * c, rel=0.01)
    assert row["surface_area_nm2"] == pytest.approx(_ellipsoid_area(a, b, c), rel=0.03)
    assert row["axis_major_nm"] == pytest.approx(2 * a, rel=0.015)
    assert row["axis_mid_nm"] == pytest.approx(2 * b, rel=0.015)
    assert row["axis_minor_nm"] == pytest.approx(2 * c, rel=0.015)
    assert row["elongation"] == pytest.approx(a / b, rel=0.05)


@pytest.mark.parametrize("vs", [ISO, ANISO], ids=["5nm", "10x5x5nm"])
def test_tilted_tube_length(vs):
    """A capsule (tube with round ends) of tip-to-tip length |q - p| + 2 r, tilted against every axis."""
    Z, Y, X = _grid((160, 300, 500), vs)
    p, q, r = (40.0, 60.0, 60.0), (110.0, 240.0, 440.0), 20.0
    row = _one(_capsule(np.stack([Z, Y, X], -1), p, q, r), vs)
    length = float(np.linalg.norm(np.subtract(q, p))) + 2 * r
    assert row["skeleton_length_nm"] == pytest.approx(length, rel=0.02)
    assert (row["branch_points"], row["end_points"]) == (0, 2)
    assert row["axis_minor_nm"] < row["axis_mid_nm"] < 0.25 * row["axis_major_nm"]
    assert row["elongation"] > 4


@pytest.mark.parametrize("vs", [ISO, ANISO], ids=["5nm", "10x5x5nm"])
def test_branching_tube(vs):
    """A Y of three tubes (radius 15 nm) meeting in one point: 1 branch point, 3 end points."""
    Z, Y, X = _grid((150, 300, 500), vs)
    P = np.stack([Z, Y, X], -1)
    j, r = (75.0, 150.0, 250.0), 15.0
    ends = [(75.0, 150.0, 50.0), (75.0, 60.0, 440.0), (75.0, 240.0, 440.0)]
    mask = np.zeros(Z.shape, bool)
    for e in ends:
        mask |= _capsule(P, j, e, r)
    row = _one(mask, vs)
    assert (row["branch_points"], row["end_points"]) == (1, 3)
    length = sum(float(np.linalg.norm(np.subtract(e, j))) for e in ends) + 3 * r
    assert row["skeleton_length_nm"] == pytest.approx(length, rel=0.04)


def test_nearest_neighbour_gap_cut_objects_and_cells(tmp_path):
    """Two balls with a 40 nm surface gap; a third cut by the volume border; a cell mask (half-space)."""
    vs = ANISO
    Z, Y, X = _grid((200, 200, 400), vs)
    lab = np.zeros(Z.shape, np.uint32)
    R = 50.0
    lab[(Z - 100) ** 2 + (Y - 100) ** 2 + (X - 100) ** 2 <= R**2] = 1
    lab[(Z - 100) ** 2 + (Y - 100) ** 2 + (X - (100 + 2 * R + 40)) ** 2 <= R**2] = 2
    lab[(Z - 100) ** 2 + (Y - 100) ** 2 + (X - 400) ** 2 <= 40**2] = 7  # cut by x = 400 nm
    cell = (X < 300).astype(np.uint8) * 3  # one cell, label 3; boundary between x 295 and 305 nm
    raw = (np.where(lab > 0, 50.0 + lab, 200.0)).astype(np.float32)
    res = measure_shapes(
        Volume(lab, voxel_size=vs), raw=Volume(raw, voxel_size=vs), cell_mask=Volume(cell, voxel_size=vs)
    )
    t = res.table.set_index("id")
    assert list(t.index) == [1, 2, 7]
    assert t.loc[1, "nn_distance_nm"] == pytest.approx(40.0, abs=5.0)  # within one voxel
    assert (t.loc[1, "nn_id"], t.loc[2, "nn_id"]) == (2, 1)
    assert t.loc[7, "cut_by_border"] and not t.loc[1, "cut_by_border"] and not t.loc[2, "cut_by_border"]
    assert any("cut_by_border" in n for n in res.notes)
    assert t.loc[1, "mean_intensity"] == pytest.approx(51.0) and t.loc[2, "std_intensity"] == pytest.approx(0.0)
    assert (t.loc[1, "cell_id"], t.loc[2, "cell_id"], t.loc[7, "cell_id"]) == (3, 3, 0)
    assert t.loc[1, "mask_fraction"] == 1.0 and t.loc[7, "mask_fraction"] == 0.0
    # ball 2 reaches x = 290 nm: its last voxel centre is at 287.5, the first outside one at 302.5
    assert t.loc[2, "dist_to_mask_boundary_nm"] == pytest.approx(15.0)
    # ball 1's nearest voxel centre to the boundary is at x = 147.5 (the outside starts at 302.5)
    assert t.loc[1, "dist_to_mask_boundary_nm"] == pytest.approx(155.0)
    cells = res.cells.set_index("cell_id")
    assert (cells.loc[3, "objects"], cells.loc[3, "complete"], cells.loc[0, "cut_by_border"]) == (2, 2, 1)
    assert cells.loc[3, "total_volume_nm3"] == pytest.approx(t.loc[[1, 2], "volume_nm3"].sum())
    assert cells.loc[3, "fraction_branched"] == 0.0 and cells.loc[3, "branch_points_per_object"] == 0.0
    files = write_outputs(res, tmp_path / "out")
    names = {f.name for f in files}
    assert {"shapes.csv", "shapes.parquet", "cells.csv", "summary.json", "shapes_histograms.png"} <= names
    back = pd.read_csv(tmp_path / "out" / "shapes.csv")
    assert len(back) == 3 and back["cut_by_border"].tolist() == [False, False, True]


def test_errors():
    with pytest.raises(ValueError, match="no object"):
        measure_shapes(Volume(np.zeros((4, 4, 4), np.uint16)))
    with pytest.raises(ValueError, match="dtype float32"):
        measure_shapes(Volume(np.zeros((4, 4, 4), np.float32)))
    lab = np.zeros((6, 6, 6), np.uint16)
    lab[2:4, 2:4, 2:4] = 1
    with pytest.raises(ValueError, match="voxel size"):
        measure_shapes(Volume(lab, voxel_size=ISO), raw=Volume(lab, voxel_size=ANISO))


def _save(path, array, vs):
    with write_ome_zarr(path) as w:
        w.create_image(None, array.shape, array.dtype, vs, (0, 0, 0), (32, 32, 32)).write((slice(None),) * 3, array)


def test_command(tmp_path):
    vs = ISO
    Z, Y, X = _grid((100, 100, 200), vs)
    lab = np.zeros(Z.shape, np.uint16)
    lab[(Z - 50) ** 2 + (Y - 50) ** 2 + (X - 50) ** 2 <= 30**2] = 1
    lab[(Z - 50) ** 2 + (Y - 50) ** 2 + (X - 150) ** 2 <= 30**2] = 2
    _save(tmp_path / "labels.zarr", lab, vs)
    _save(tmp_path / "raw.zarr", (lab * 40 + 10).astype(np.uint8), vs)
    app = typer.Typer()
    app.command()(shapes_command)
    runner = CliRunner()
    res = runner.invoke(
        app, [str(tmp_path / "labels.zarr"), "--output", str(tmp_path / "o"), "--raw", str(tmp_path / "raw.zarr")]
    )
    assert res.exit_code == 0, res.output
    assert "2 objects" in res.output and "volume" in res.output
    t = pd.read_csv(tmp_path / "o" / "shapes.csv")
    assert t["mean_intensity"].tolist() == [50.0, 90.0]
    assert len(list((tmp_path / "o").glob("*.png"))) == 2
    res = runner.invoke(app, [str(tmp_path / "nope.zarr"), "--output", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "error:" in res.output
