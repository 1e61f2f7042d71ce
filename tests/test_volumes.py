"""Tests for organet.volumes: readers, ROI handling, OME-Zarr writing and conversion."""

from __future__ import annotations

import json
import pickle
import time
import warnings
from pathlib import Path
from typing import Any, cast

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from organet.errors import InputError
from organet.volumes import (
    Roi,
    Volume,
    VolumeError,
    convert_volume,
    open_volume,
    parse_roi,
    write_ome_zarr,
)

LUCCHI = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "lucchi_pp" / "train_image.tif"


def ramp(shape: tuple[int, ...], dtype: str = "uint16") -> np.ndarray:
    """Array whose every voxel is unique, so axis mix-ups show."""
    return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)


# -- Roi -------------------------------------------------------------------------------
def test_roi_geometry() -> None:
    a = Roi((1, 2, 3), (4, 5, 6))
    assert a.end == (5, 7, 9)
    assert a.size == 120
    assert a.slices() == (slice(1, 5), slice(2, 7), slice(3, 9))
    b = Roi((3, 0, 8), (10, 3, 10))
    assert a.intersect(b) == Roi((3, 2, 8), (2, 1, 1))
    assert Roi((0, 0, 0), (1, 1, 1)).intersect(Roi((5, 5, 5), (1, 1, 1))).empty
    assert a.contains(Roi((2, 3, 4), (1, 1, 1)))
    assert not a.contains(b)
    assert a.grow(1) == Roi((0, 1, 2), (6, 7, 8))
    assert a.grow((0, -1, 2)) == Roi((1, 3, 1), (4, 3, 10))
    assert a.shift((-1, 0, 1)) == Roi((0, 2, 4), (4, 5, 6))
    assert Roi.from_slices((slice(1, 5), slice(2, 7), slice(3, 9))) == a
    assert Roi.from_slices((slice(None), slice(-3, None), slice(2, 100)), shape=(8, 10, 12)) == Roi(
        (0, 7, 2), (8, 3, 10)
    )
    assert str(a) == "[1:5, 2:7, 3:9]"
    with pytest.raises(VolumeError, match="shape"):
        Roi((0, 0, 0), (1, -1, 1))
    half: Any = (0.5, 0, 0)
    with pytest.raises(VolumeError, match="integers"):
        Roi(half, (1, 1, 1))
    with pytest.raises(VolumeError, match="negative"):
        a.grow(-3)
    with pytest.raises(VolumeError, match="needs a shape"):
        Roi.from_slices((slice(0, 1), slice(0, 1), slice(0, None)))


def test_roi_nm_conversion_anisotropic() -> None:
    vs = (5.2, 4.0, 4.0)  # z, y, x: z is the coarse axis
    off = (10.4, -8.0, 100.0)
    # Exact multiples of the voxel size (520 / 5.2 is not exact in floating point).
    roi = Roi.from_nm((10.4 + 520.0, -8.0, 100.0 + 40.0), (10.4 + 1040.0, 32.0, 180.0), vs, off)
    assert roi == Roi((100, 0, 10), (100, 10, 10))
    begin, end = roi.to_nm(vs, off)
    assert begin == pytest.approx((530.4, -8.0, 140.0)) and end == pytest.approx((1050.4, 32.0, 180.0))
    # Non-aligned bounds: begin is floored, end is ceiled.
    assert Roi.from_nm((13.0, -7.0, 101.0), (16.0, -3.0, 103.0), vs, off) == Roi((0, 0, 0), (2, 2, 1))
    # Distinct y and x sizes catch a swapped axis order.
    assert Roi.from_nm((0, 0, 0), (52.0, 40.0, 30.0), (5.2, 4.0, 3.0)) == Roi((0, 0, 0), (10, 10, 10))
    for r in (Roi((3, -2, 7), (4, 5, 6)), Roi((0, 0, 0), (33, 1, 2))):
        assert Roi.from_nm(*r.to_nm((5.2, 4.0, 3.0), off), (5.2, 4.0, 3.0), off) == r
    with pytest.raises(VolumeError, match="before"):
        Roi.from_nm((10, 0, 0), (0, 1, 1), vs)


def test_parse_roi() -> None:
    vol = Volume(ramp((20, 30, 40)), voxel_size=(5.2, 4.0, 3.0), offset=(52.0, 0.0, -30.0), path="mem")
    assert parse_roi("2:5, :, 10:", "vox", vol) == Roi((2, 0, 10), (3, 30, 30))
    assert parse_roi(":,:,:", "vox", vol) == vol.roi
    # nm are world coordinates: the volume offset is subtracted.
    assert parse_roi("62.4:104,8:20,-30:0", "nm", vol) == Roi((2, 2, 0), (8, 3, 10))
    assert parse_roi(":,:,:", "nm", vol) == vol.roi
    with pytest.raises(VolumeError, match=r"outside.*z 0:20, y 0:30, x 0:40 \(voxels\)"):
        parse_roi("0:5,0:5,30:41", "vox", vol)
    with pytest.raises(VolumeError, match=r"outside.*z 52:156, y 0:120, x -30:90 \(nm"):
        parse_roi("0:60,:,:", "nm", vol)
    with pytest.raises(VolumeError, match="z0:z1,y0:y1,x0:x1"):
        parse_roi("0:5,0:5", "vox", vol)
    with pytest.raises(VolumeError, match="not an integer"):
        parse_roi("0:5.5,:,:", "vox", vol)
    with pytest.raises(VolumeError, match="empty on axis y"):
        parse_roi("0:5,5:5,:", "vox", vol)
    with pytest.raises(VolumeError, match="unit"):
        parse_roi(":,:,:", cast(Any, "um"), vol)


# -- Volume ----------------------------------------------------------------------------
def test_volume_indexing_and_write() -> None:
    data = ramp((4, 5, 6))
    vol = Volume(data, path="mem")
    assert vol.read(Roi((1, 2, 3), (2, 2, 2))).tolist() == data[1:3, 2:4, 3:5].tolist()
    assert np.array_equal(vol[-1, ::2, 1], data[-1, ::2, 1])
    assert np.array_equal(vol[..., 2], data[..., 2])
    assert vol[0:0].shape == (0, 5, 6)
    assert vol.extent_nm == (4.0, 5.0, 6.0)
    with pytest.raises(VolumeError, match="outside volume"):
        vol.read(Roi((0, 0, 0), (5, 1, 1)))
    with pytest.raises(VolumeError, match="read-only"):
        vol.write(Roi((0, 0, 0), (1, 1, 1)), 1)
    w = Volume(np.zeros((2, 3, 4), "uint8"), writable=True)
    w.write(Roi((1, 0, 0), (1, 3, 4)), np.full((1, 3, 4), 7, "int64"))
    w[0, 1] = 3
    assert w.read().sum() == 7 * 12 + 3 * 4
    with pytest.raises(VolumeError, match="unsafe cast"):
        w.write(Roi((0, 0, 0), (1, 1, 1)), np.ones((1, 1, 1), "float32"))
    with pytest.raises(VolumeError, match="shape"):
        w.write(Roi((0, 0, 0), (1, 2, 2)), np.ones((3, 3), "uint8"))
    assert Volume(np.zeros((3, 4))).shape == (1, 3, 4)
    with pytest.raises(VolumeError, match="3-D"):
        Volume(np.zeros((1, 2, 3, 4)))


# -- readers ---------------------------------------------------------------------------
def test_multipage_tiff_imagej(tmp_path: Path) -> None:
    data = ramp((6, 10, 12), "uint8")
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / 0.003, 1 / 0.004),  # (x, y) pixels per µm
        metadata={"spacing": 0.0052, "unit": "um", "axes": "ZYX"},
    )
    with open_volume(path) as vol:
        assert vol.shape == (6, 10, 12) and vol.dtype == np.uint8
        assert vol.voxel_size == pytest.approx((5.2, 4.0, 3.0))
        assert not isinstance(vol.data, np.ndarray)  # lazy
        assert np.array_equal(vol.read(), data)
        assert np.array_equal(vol.read(Roi((2, 3, 4), (3, 4, 5))), data[2:5, 3:7, 4:9])
        copy = pickle.loads(pickle.dumps(vol))
        assert np.array_equal(copy[1:3, 2], data[1:3, 2]) and copy.voxel_size == vol.voxel_size
        copy.close()


def test_tiff_without_metadata_warns_and_override(tmp_path: Path) -> None:
    data = ramp((3, 4, 5), "uint16")
    tifffile.imwrite(tmp_path / "plain.tiff", data, photometric="minisblack")
    with pytest.warns(UserWarning, match="no voxel size"):
        vol = open_volume(tmp_path / "plain.tiff")
    assert vol.voxel_size == (1.0, 1.0, 1.0)
    vol.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vol = open_volume(str(tmp_path / "plain.tiff"), voxel_size=(8, 4, 4), offset=(1, 2, 3))
    assert vol.voxel_size == (8.0, 4.0, 4.0) and vol.offset == (1.0, 2.0, 3.0)
    assert np.array_equal(vol.read(), data)
    vol.close()
    tifffile.imwrite(tmp_path / "single.tif", data[0])
    with open_volume(tmp_path / "single.tif", voxel_size=(1, 1, 1)) as single:
        assert single.shape == (1, 4, 5) and np.array_equal(single[0], data[0])


def test_slice_folder_numeric_order_and_gap(tmp_path: Path) -> None:
    folder = tmp_path / "slices"
    folder.mkdir()
    for i in range(1, 13):
        tifffile.imwrite(folder / f"slice_{i}.tif", np.full((4, 6), i, "uint8"))
    (folder / "notes.txt").write_text("ignored")
    vol = open_volume(folder, voxel_size=(5, 5, 5))
    assert vol.shape == (12, 4, 6) and vol.chunks == (1, 4, 6)
    assert vol[:, 0, 0].tolist() == list(range(1, 13))  # slice_2 before slice_10
    assert np.array_equal(
        vol.read(Roi((8, 1, 2), (3, 2, 2))), np.broadcast_to(np.arange(9, 12, dtype="uint8")[:, None, None], (3, 2, 2))
    )
    (folder / "slice_5.tif").unlink()
    with pytest.raises(VolumeError, match="slice number 5 is missing"):
        open_volume(folder)
    tifffile.imwrite(folder / "slice_5.tif", np.zeros((4, 7), "uint8"))
    with pytest.raises(VolumeError, match="slice_5.tif has shape"):
        open_volume(folder)


def test_png_slice_folder(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "png"
    folder.mkdir()
    data = ramp((3, 4, 5), "uint16")
    for i, plane in enumerate(data):
        Image.fromarray(plane).save(folder / f"z{i:03d}.png")
    vol = open_volume(folder, voxel_size=(1, 1, 1))
    assert vol.dtype == np.uint16 and np.array_equal(vol.read(), data)


def test_zarr_v2_array(tmp_path: Path) -> None:
    data = ramp((5, 6, 7))
    arr = zarr.create_array(tmp_path / "v2.zarr", shape=data.shape, dtype=data.dtype, chunks=(2, 3, 4), zarr_format=2)
    arr[:] = data
    arr.attrs.update({"resolution": [8, 4, 2], "offset": [80, 40, 20]})
    vol = open_volume(tmp_path / "v2.zarr")
    assert vol.voxel_size == (8.0, 4.0, 2.0) and vol.offset == (80.0, 40.0, 20.0)
    assert vol.chunks == (2, 3, 4)
    assert np.array_equal(vol.read(Roi((1, 2, 3), (3, 3, 3))), data[1:4, 2:5, 3:6])


def test_zarr_v3_array_in_container(tmp_path: Path) -> None:
    data = ramp((4, 5, 6), "float32")
    root = zarr.open_group(tmp_path / "c.zarr", mode="w", zarr_format=3)
    arr = root.create_group("volumes").create_array("raw", shape=data.shape, dtype=data.dtype, chunks=(2, 2, 2))
    arr[:] = data
    arr.attrs.update({"voxel_size": [5.2, 4, 4], "organet": {"kind": "raw"}})
    vol = open_volume(f"{tmp_path}/c.zarr/volumes/raw")
    assert vol.voxel_size == (5.2, 4.0, 4.0) and vol.attrs == {"kind": "raw"}
    assert np.array_equal(vol[1:3, :, 2:5], data[1:3, :, 2:5])
    with pytest.raises(VolumeError, match="'volumes/nope'"):
        open_volume(tmp_path / "c.zarr" / "volumes" / "nope")
    with pytest.raises(VolumeError, match="zarr group, not an image"):
        open_volume(tmp_path / "c.zarr")
    rw = open_volume(f"{tmp_path}/c.zarr/volumes/raw", mode="r+")
    rw.write(Roi((0, 0, 0), (1, 1, 1)), np.full((1, 1, 1), -1.0, "float32"))
    assert open_volume(f"{tmp_path}/c.zarr/volumes/raw")[0, 0, 0] == -1.0


def test_ome_zarr_04_by_hand(tmp_path: Path) -> None:
    data = ramp((1, 4, 5, 6))  # c, z, y, x
    g = zarr.open_group(tmp_path / "ome04.zarr", mode="w", zarr_format=2)
    g.create_array("0", shape=data.shape, dtype=data.dtype, chunks=(1, 2, 5, 3))[:] = data
    g.create_array("1", shape=(1, 2, 3, 3), dtype=data.dtype)
    g.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": "c", "type": "channel"}]
            + [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [1, 0.0052, 0.004, 0.003]},
                        {"type": "translation", "translation": [0, 0.1, 0.2, 0.3]},
                    ],
                },
                {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.0104, 0.008, 0.006]}]},
            ],
            "coordinateTransformations": [{"type": "scale", "scale": [1, 2, 1, 1]}],  # global, applied last
        }
    ]
    vol = open_volume(tmp_path / "ome04.zarr")
    assert vol.shape == (4, 5, 6)
    assert vol.voxel_size == pytest.approx((10.4, 4.0, 3.0))
    assert vol.offset == pytest.approx((200.0, 200.0, 300.0))
    assert vol.chunks == (2, 5, 3)
    assert np.array_equal(vol.read(), data[0])
    assert open_volume(tmp_path / "ome04.zarr" / "1").voxel_size == pytest.approx((20.8, 8.0, 6.0))


def test_write_ome_zarr_05_round_trip(tmp_path: Path) -> None:
    raw = ramp((5, 6, 7), "uint8")
    prob = np.linspace(0, 1, 5 * 6 * 7, dtype="float32").reshape(5, 6, 7)
    dst = tmp_path / "out.zarr"
    meta = {"model": "unet", "threshold": 0.5, "classes": ["mito"]}
    with write_ome_zarr(dst) as w:
        assert not dst.exists()
        img = w.create_image(None, raw.shape, raw.dtype, (5.2, 4.0, 3.0), (52.0, 8.0, 0.0), chunks=(2, 4, 64))
        img.write(img.roi, raw)
        p = w.create_image("probability", prob.shape, "float32", (5.2, 4.0, 3.0), attrs=meta, fill_value=0.0)
        p.write(Roi((0, 0, 0), (5, 6, 7)), prob)
    # The returned volumes are rebound to the committed container, read-only.
    assert np.array_equal(img.read(), raw) and not img.writable
    attrs = json.loads((dst / "zarr.json").read_text())["attributes"]
    ms = attrs["ome"]["multiscales"][0]
    assert attrs["ome"]["version"] == "0.5"
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [5.2, 4.0, 3.0]},
        {"type": "translation", "translation": [52.0, 8.0, 0.0]},
    ]
    s0 = json.loads((dst / "s0" / "zarr.json").read_text())
    assert s0["codecs"][-1]["name"] == "blosc" and s0["codecs"][-1]["configuration"]["cname"] == "zstd"
    vol = open_volume(dst)
    assert vol.voxel_size == (5.2, 4.0, 3.0) and vol.offset == (52.0, 8.0, 0.0)
    assert vol.chunks == (2, 4, 7) and np.array_equal(vol.read(), raw)
    pv = open_volume(f"{dst}/probability")
    assert pv.attrs == meta and pv.dtype == np.float32 and np.array_equal(pv.read(), prob)
    assert open_volume(f"{dst}/probability/s0").attrs == meta  # array path: parent image metadata
    with pytest.raises(VolumeError, match="already exists"), write_ome_zarr(dst):
        pass
    with write_ome_zarr(dst, overwrite=True) as w:
        w.create_image(None, (1, 2, 2), "uint8", (1, 1, 1))
    assert open_volume(dst).shape == (1, 2, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_write_ome_zarr_atomic_on_error(tmp_path: Path) -> None:
    dst = tmp_path / "fail.zarr"
    with pytest.raises(RuntimeError, match="boom"), write_ome_zarr(dst) as w:
        vol = w.create_image("x", (2, 2, 2), "uint8", (1, 1, 1))
        vol.write(vol.roi, np.ones((2, 2, 2), "uint8"))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(VolumeError, match="aborted"):
        vol.read()
    # An existing output survives a failed overwrite.
    with write_ome_zarr(dst) as w:
        w.create_image(None, (1, 1, 1), "uint8", (1, 1, 1))
    with pytest.raises(RuntimeError), write_ome_zarr(dst, overwrite=True) as w:
        raise RuntimeError("boom")
    assert open_volume(dst).shape == (1, 1, 1)
    assert [p.name for p in tmp_path.iterdir()] == ["fail.zarr"]


def test_n5_via_tensorstore(tmp_path: Path) -> None:
    import tensorstore as ts

    data = ramp((3, 5, 7))  # z, y, x
    path = tmp_path / "data.n5" / "raw"
    # N5 stores dimensions as (x, y, z); tensorstore keeps that order, so write data.T.
    store = ts.open(
        {
            "driver": "n5",
            "kvstore": {"driver": "file", "path": str(path)},
            "metadata": {"compression": {"type": "gzip"}},
        },
        create=True,
        dtype=ts.uint16,
        shape=data.T.shape,
        chunk_layout=ts.ChunkLayout(read_chunk_shape=[4, 2, 2]),
    ).result()
    store[...] = data.T
    attrs = json.loads((path / "attributes.json").read_text())
    assert attrs["dimensions"] == [7, 5, 3]
    attrs.update({"pixelResolution": {"dimensions": [3.0, 4.0, 5.2], "unit": "nm"}, "offset": [30.0, 40.0, 52.0]})
    (path / "attributes.json").write_text(json.dumps(attrs))
    vol = open_volume(tmp_path / "data.n5" / "raw")
    assert vol.shape == (3, 5, 7)
    assert vol.voxel_size == (5.2, 4.0, 3.0) and vol.offset == (52.0, 40.0, 30.0)
    assert vol.chunks == (2, 2, 4)
    assert np.array_equal(vol.read(), data)
    assert np.array_equal(vol.read(Roi((1, 2, 3), (2, 3, 4))), data[1:3, 2:5, 3:7])
    attrs.pop("pixelResolution")
    attrs["resolution"] = [1, 2, 3]
    (path / "attributes.json").write_text(json.dumps(attrs))
    assert open_volume(tmp_path / "data.n5" / "raw").voxel_size == (3.0, 2.0, 1.0)


def test_hdf5(tmp_path: Path) -> None:
    data = ramp((4, 5, 6), "uint8")
    path = tmp_path / "vol.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("volumes/raw", data=data, chunks=(2, 5, 6))
        ds.attrs["element_size_um"] = [0.0052, 0.004, 0.003]
        f.create_dataset("volumes/labels", data=data > 10).attrs["resolution"] = [8, 4, 4]
    for spec in (f"{path}:/volumes/raw", f"{path}/volumes/raw"):
        with open_volume(spec) as vol:
            assert vol.voxel_size == pytest.approx((5.2, 4.0, 3.0)) and vol.chunks == (2, 5, 6)
            assert np.array_equal(vol.read(Roi((1, 1, 1), (2, 3, 4))), data[1:3, 1:4, 1:5])
    with open_volume(f"{path}:volumes/labels") as labels:
        assert labels.voxel_size == (8.0, 4.0, 4.0) and labels.dtype == bool
    with pytest.raises(VolumeError, match=r"no dataset 'volumes/nope'.*/volumes/raw"):
        open_volume(f"{path}:/volumes/nope")
    with pytest.raises(VolumeError, match="is a group"):
        open_volume(f"{path}/volumes")


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="no such file or directory: .*missing.tif"):
        open_volume(tmp_path / "missing.tif")
    with pytest.raises(VolumeError, match="no such file or directory"):
        open_volume(tmp_path / "missing.zarr" / "raw")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(VolumeError, match="unknown format.*TIFF.*zarr.*N5.*HDF5"):
        open_volume(tmp_path / "notes.txt")
    zarr.create_array(tmp_path / "4d.zarr", shape=(2, 2, 2, 2), dtype="uint8")
    with pytest.raises(VolumeError, match="3-D"):
        open_volume(tmp_path / "4d.zarr", voxel_size=(1, 1, 1))
    zarr.create_array(tmp_path / "2d.zarr", shape=(3, 4), dtype="uint8")
    assert open_volume(tmp_path / "2d.zarr", voxel_size=(1, 1, 1)).shape == (1, 3, 4)
    with pytest.raises(VolumeError, match="read-only"):
        tifffile.imwrite(tmp_path / "a.tif", np.zeros((2, 2, 2), "uint8"), photometric="minisblack")
        open_volume(tmp_path / "a.tif", mode="r+")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((4, 5, 3), "uint8"), photometric="rgb")
    with pytest.raises(VolumeError, match="colour/channel"):
        open_volume(tmp_path / "rgb.tif")


# -- conversion ------------------------------------------------------------------------
def test_convert_volume(tmp_path: Path) -> None:
    data = ramp((9, 10, 11), "uint16")
    tifffile.imwrite(
        tmp_path / "src.tif",
        data,
        imagej=True,
        resolution=(1 / 0.003, 1 / 0.004),
        metadata={"spacing": 0.0052, "unit": "um", "axes": "ZYX"},
    )
    calls: list[tuple[str, int, int]] = []
    out = convert_volume(
        tmp_path / "src.tif", tmp_path / "full.zarr", chunks=(4, 4, 4), progress=lambda *a: calls.append(a)
    )
    assert np.array_equal(out.read(), data) and out.voxel_size == pytest.approx((5.2, 4.0, 3.0))
    assert out.chunks == (4, 4, 4) and out.offset == (0.0, 0.0, 0.0)
    # one z slab of chunks per block, reported as stage "convert"; nothing left beside the output
    assert calls[0] == ("convert", 0, 3) and sum(n for _, n, _ in calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.zarr", "src.tif"]
    roi = Roi((2, 3, 1), (5, 6, 7))
    # Tiny block budget forces y/x tiling as well as z slabs.
    sub = convert_volume(
        tmp_path / "src.tif",
        tmp_path / "sub.zarr",
        offset=(100.0, 0.0, -3.0),
        chunks=(2, 2, 2),
        roi=roi,
        max_block_bytes=2 * 2 * 11 * 2,
    )
    assert np.array_equal(sub.read(), data[roi.slices()])
    assert sub.offset == pytest.approx((100.0 + 2 * 5.2, 3 * 4.0, -3.0 + 1 * 3.0))
    assert open_volume(tmp_path / "sub.zarr").voxel_size == pytest.approx((5.2, 4.0, 3.0))
    with pytest.raises(InputError, match="already exists"):
        convert_volume(tmp_path / "src.tif", tmp_path / "sub.zarr")
    with pytest.raises(VolumeError, match="outside"):
        convert_volume(tmp_path / "src.tif", tmp_path / "bad.zarr", roi=Roi((5, 0, 0), (5, 1, 1)))
    assert not (tmp_path / "bad.zarr").exists()


def test_convert_resumes_after_failed_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from organet.blockwise import BlockFailures

    data = ramp((10, 6, 7), "uint16")
    tifffile.imwrite(tmp_path / "src.tif", data)
    faults = tmp_path / "faults.json"
    faults.write_text(
        json.dumps(
            [
                {
                    "stage": "convert",
                    "blocks": [[2, 0, 0]],
                    "times": -1,
                    "action": "raise",
                    "counter_dir": str(tmp_path / "counts"),
                }
            ]
        )
    )
    monkeypatch.setenv("ORGANET_TEST_FAULTS", str(faults))
    dst = tmp_path / "out.zarr"
    with pytest.warns(UserWarning, match="no voxel size"), pytest.raises(BlockFailures, match="block 2_0_0"):
        convert_volume(tmp_path / "src.tif", dst, chunks=(2, 4, 4), retries=0)
    assert not dst.exists() and (tmp_path / "out.zarr.partial").is_dir() and (tmp_path / "out.zarr.progress").is_dir()
    faults.unlink()
    calls: list[tuple[str, int, int]] = []
    with pytest.warns(UserWarning, match="no voxel size"):
        out = convert_volume(tmp_path / "src.tif", dst, chunks=(2, 4, 4), progress=lambda *a: calls.append(a))
    assert calls[:2] == [("convert", 0, 5), ("convert", 4, 5)]  # 4 of 5 slabs resumed, one recomputed
    assert np.array_equal(out.read(), data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counts", "out.zarr", "src.tif"]


@pytest.mark.realdata
@pytest.mark.skipif(not LUCCHI.exists(), reason=f"real data not available: {LUCCHI}")
def test_lucchi_lazy_block() -> None:
    t0 = time.perf_counter()
    with pytest.warns(UserWarning, match="no voxel size"):
        vol = open_volume(LUCCHI)
    with vol:
        block = vol.read(Roi((50, 100, 200), (10, 64, 64)))
        elapsed = time.perf_counter() - t0
        assert vol.shape == (165, 768, 1024) and vol.dtype == np.uint8
        assert block.shape == (10, 64, 64) and block.dtype == np.uint8 and block.std() > 0
        with tifffile.TiffFile(LUCCHI) as tf:
            assert np.array_equal(block[3], tf.pages[53].asarray()[100:164, 200:264])
    assert elapsed < 2.0, f"lazy block read took {elapsed:.2f} s"


def test_crop_is_a_lazy_view_with_moved_offset(tmp_path):
    data = np.arange(6 * 7 * 8, dtype=np.uint16).reshape(6, 7, 8)
    vol = Volume(data, voxel_size=(4.0, 4.0, 5.2), offset=(100.0, 0.0, 10.0))
    c = vol.crop(Roi((1, 2, 3), (4, 5, 5)))
    assert c.shape == (4, 5, 5)
    np.testing.assert_array_equal(c.read(), data[1:5, 2:7, 3:8])
    np.testing.assert_array_equal(c.read(Roi((1, 1, 1), (2, 2, 2))), data[2:4, 3:5, 4:6])
    assert c.offset == pytest.approx((104.0, 8.0, 10.0 + 3 * 5.2))
    with pytest.raises(VolumeError, match="outside"):
        vol.crop(Roi((3, 0, 0), (4, 7, 8)))
