"""Sample/cell masks (thresholds + morphology, sizes in nm³) and exclusion-zone evaluation masks."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from organet.cli import app
from organet.errors import InputError
from organet.evaluate.exclusion import exclusion_zone
from organet.preprocess.masks import exclusion_mask_volume, nm3_to_voxels, sample_mask_array, sample_mask_volume
from organet.volumes import Volume, open_volume, write_ome_zarr

runner = CliRunner()


def cell_phantom() -> tuple[np.ndarray, np.ndarray]:
    """A bright 'cell' (box) with a dark hole inside, plus a small bright speck outside."""
    raw = np.full((10, 40, 40), 20, np.uint8)
    cell = np.zeros(raw.shape, bool)
    cell[1:9, 5:30, 5:30] = True
    raw[cell] = 200
    raw[3:6, 12:18, 12:18] = 30  # dark organelle inside the cell: a hole of the threshold mask
    raw[4:6, 34:36, 34:36] = 220  # speck: 8 voxels
    return raw, cell


def test_sample_mask_fills_holes_and_removes_small_objects_in_nm3():
    raw, cell = cell_phantom()
    vs = (10.0, 5.0, 5.0)  # one voxel = 250 nm³
    assert nm3_to_voxels(2000, vs) == 8
    m = sample_mask_array(raw, vs, low=100, min_object_nm3=2500)  # 10 voxels > speck
    assert m.dtype == np.uint8 and np.array_equal(m.astype(bool), cell)
    kept = sample_mask_array(raw, vs, low=100, min_object_nm3=2000)  # speck is exactly 8 voxels: kept
    assert kept[4, 34, 34] == 1
    # holes larger than max_hole_nm3 stay open: the hole is 3*6*6 = 108 voxels = 27000 nm³
    open_hole = sample_mask_array(raw, vs, low=100, max_hole_nm3=26000, min_object_nm3=2500)
    assert open_hole[4, 14, 14] == 0 and open_hole[1, 6, 6] == 1
    closed = sample_mask_array(raw, vs, low=100, max_hole_nm3=27000, min_object_nm3=2500)
    assert np.array_equal(closed.astype(bool), cell)
    largest = sample_mask_array(raw, vs, low=100, keep_largest=True)
    assert np.array_equal(largest.astype(bool), cell)
    with pytest.raises(ValueError, match="threshold"):
        sample_mask_array(raw, vs)
    with pytest.raises(ValueError, match="must be >= low"):
        sample_mask_array(raw, vs, low=100, high=50)


def test_exclusion_mask_blockwise_equals_whole_volume(tmp_path):
    rng = np.random.default_rng(0)
    from scipy import ndimage

    truth = ndimage.gaussian_filter(rng.random((16, 40, 40)), 2) > 0.5
    vol = Volume(truth.astype(np.uint8), (5.0, 5.0, 5.0))
    calls: list[tuple[str, int, int]] = []
    out = exclusion_mask_volume(
        vol, tmp_path / "ez.zarr", 3, 2, block=(5, 7, 9), chunks=(5, 7, 9), progress=lambda *a: calls.append(a)
    )
    assert calls[0] == ("write", 0, 4 * 6 * 5)  # 120 blocks of (5, 7, 9) voxels, each read with 4 voxels of context
    expected = ~exclusion_zone(truth, 3, 2)
    assert np.array_equal(out.read().astype(bool), expected)
    v = open_volume(str(tmp_path / "ez.zarr"))
    assert v.attrs["exclusion_zone_vox"] == [3, 2] and v.attrs["kind"] == "evaluation_mask"
    assert v.chunks == (5, 7, 9)
    assert [p.name for p in tmp_path.iterdir()] == ["ez.zarr"]  # no partial, no ledger left
    with pytest.raises(InputError, match="already exists"):
        exclusion_mask_volume(vol, tmp_path / "ez.zarr", 3, 2)
    with pytest.raises(InputError, match="must be >= 0"):
        exclusion_mask_volume(vol, tmp_path / "ez2.zarr", -1, 2)


def test_sample_mask_volume_writes_an_atomic_ome_zarr(tmp_path):
    raw, cell = cell_phantom()
    vol = Volume(raw, (10.0, 5.0, 5.0), (0.0, 50.0, 0.0))
    out = sample_mask_volume(vol, tmp_path / "m.zarr", low=100, min_object_nm3=2500, chunks=(4, 16, 16))
    assert np.array_equal(out.read().astype(bool), cell) and out.chunks == (4, 16, 16)
    assert out.offset == (0.0, 50.0, 0.0) and out.attrs["params"]["low"] == 100
    with pytest.raises(InputError, match="already exists"):
        sample_mask_volume(vol, tmp_path / "m.zarr", low=100)
    assert sample_mask_volume(vol, tmp_path / "m.zarr", overwrite=True, high=100).read().sum() > 0
    assert [p.name for p in tmp_path.iterdir()] == ["m.zarr"]


def test_cli_masks(tmp_path):
    raw, cell = cell_phantom()
    path = tmp_path / "raw.zarr"
    with write_ome_zarr(path) as w:
        v = w.create_image(None, raw.shape, raw.dtype, (10.0, 5.0, 5.0))
        v.write(v.roi, raw)
    r = runner.invoke(
        app, ["masks", "sample", str(path), "-o", str(tmp_path / "m.zarr"), "--low", "100", "--min-object-nm3", "2500"]
    )
    assert r.exit_code == 0, r.output
    assert np.array_equal(open_volume(str(tmp_path / "m.zarr")).read().astype(bool), cell)
    r = runner.invoke(
        app,
        [
            "masks",
            "exclusion",
            str(tmp_path / "m.zarr"),
            "-o",
            str(tmp_path / "e.zarr"),
            "--inner",
            "1",
            "--outer",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    assert np.array_equal(open_volume(str(tmp_path / "e.zarr")).read().astype(bool), ~exclusion_zone(cell, 1, 1))
    r = runner.invoke(app, ["masks", "sample", str(path), "-o", str(tmp_path / "m2.zarr")])
    assert r.exit_code == 2 and "error:" in r.output
    r = runner.invoke(app, ["masks", "exclusion", str(path), "-o", str(tmp_path / "e2.zarr"), "--inner", "-1"])
    assert r.exit_code == 2 and "error:" in r.output
