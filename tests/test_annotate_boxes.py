"""Annotating the boxes of `organet suggest`: box lookup, the annotation set (one labels volume
on the raw's grid, boxes recorded in its attributes, the overwrite and overlap rules, an
interrupted write), `organet annotate graphcut --box` end to end, and the finetune arguments
loading as training ROIs."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
import tifffile
import zarr
from typer.testing import CliRunner

from organet.annotate import boxes as bx
from organet.annotate.graphcut import GraphCutParams, segment_from_scribbles
from organet.annotate.scribbles import simulate_scribbles
from organet.annotate.suggest import suggest
from organet.cli import app
from organet.config import RoiSpec
from organet.errors import IncompatibleError, InputError
from organet.train.sampling import load_roi
from organet.volumes import Roi, Volume, open_volume, write_ome_zarr
from organet.volumes.foreground import probability_to_uint8

runner = CliRunner()
VS = (10.0, 5.0, 5.0)  # nm (z, y, x)
OFFSET = (100.0, 0.0, 40.0)  # nm
SHAPE = (24, 64, 96)
BOX_NM = (120.0, 160.0, 160.0)  # 12 x 32 x 32 voxels
CENTRES = [((5, 14, 14), 5), ((15, 40, 72), 6), ((18, 12, 60), 4), ((4, 52, 30), 4)]  # voxels (z, y, x), radius
GC = ["--trees", "16", "--scale", "1", "--scale", "2", "--autocontext", "0", "--smoothness", "3"]
PARAMS = GraphCutParams(scales=(1.0, 2.0), n_trees=16, autocontext=0, smoothness=3.0, voxel_size=VS)


def phantom(shape=SHAPE, seed=0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw (uint8) with bright balls, their truth, and a prediction (float probability)
    confident everywhere except two zones: one at the volume's corner (0, 0, 0) around
    ball 0, one around ball 1 (a little less uncertain)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    truth = np.zeros(shape, bool)
    for (cz, cy, cx), r in CENTRES:
        truth |= (zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    raw = np.clip((0.3 + 0.4 * truth + 0.05 * rng.normal(size=shape)) * 255, 0, 255).astype(np.uint8)
    prob = np.where(truth, 0.97, 0.03)
    prob[0:12, 0:32, 0:32] = 0.5
    prob[9:21, 24:56, 56:88] = 0.4
    return raw, truth, prob


def write_raw(path, raw, voxel_size=VS, offset=OFFSET) -> str:
    with write_ome_zarr(path) as w:
        w.create_image(None, raw.shape, raw.dtype, voxel_size, offset, (8, 32, 32)).write(..., raw)
    return str(path)


def write_probability(path, prob, voxel_size=VS, offset=OFFSET) -> str:
    u = probability_to_uint8(prob)
    with write_ome_zarr(path) as w:
        w.create_image(
            "probability", u.shape, np.uint8, voxel_size, offset, (8, 32, 32), {"kind": "probability", "scale": 255}
        ).write(..., u)
    return str(path)


def box_scribbles(truth: np.ndarray, roi: Roi, seed: int = 0) -> np.ndarray:
    """A simulated annotator's scribbles inside ``roi`` (box-shaped), on 3 planes."""
    t = truth[roi.slices()]
    planes = [p for p in (2, t.shape[0] // 2, t.shape[0] - 3) if t[p].any()]
    s = simulate_scribbles(t, planes, strokes_per_object=2, background_strokes=6, length=9, margin=1, seed=seed)
    assert (s == 1).any() and (s == 2).any()
    return s


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("boxes")
    raw, truth, prob = phantom()
    write_raw(d / "raw.zarr", raw)
    write_probability(d / "pred.zarr", prob)
    res = suggest([str(d / "pred.zarr")], d / "where", box_nm=BOX_NM, k=2)
    assert [b.rank for b in res.boxes] == [1, 2]
    full = np.zeros(raw.shape, np.uint8)
    for b in res.boxes[:2]:
        full[b.roi.slices()] = box_scribbles(truth, b.roi, seed=b.rank)
    tifffile.imwrite(d / "scrib.tif", full)
    return d, raw, truth, res.boxes


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(r) -> str:
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    return " ".join(r.output.split())


# --------------------------------------------------------------------------- suggestion folders


def test_boxes_of_a_suggestion_folder(world, tmp_path):
    d, raw, _, boxes = world
    got = bx.suggested_boxes(d / "where")
    assert [(b.rank, b.roi) for b in got] == [(b.rank, b.roi) for b in boxes]
    assert bx.box_roi(d / "where", 1) == boxes[0].roi
    assert boxes[0].roi.offset == (0, 0, 0)  # the corner zone: a box touching the border
    assert boxes[1].roi == Roi((9, 24, 56), (12, 32, 32))
    with pytest.raises(InputError, match="no box of rank 7; its boxes have ranks 1, 2"):
        bx.box_roi(d / "where", 7)
    with pytest.raises(InputError, match="not an `organet suggest` output folder"):
        bx.read_suggestions(d / "pred.zarr")
    with pytest.raises(InputError, match="no such folder"):
        bx.read_suggestions(tmp_path / "nothing")
    assert bx.parse_box("a:b/where:2") == (__import__("pathlib").Path("a:b/where"), 2)
    for bad in ("where", "where:0", "where:x", ":2"):
        with pytest.raises(InputError, match="DIR:RANK"):
            bx.parse_box(bad)
    sug = bx.read_suggestions(d / "where")
    assert sug.shape == SHAPE and sug.voxel_size == VS and sug.offset == OFFSET
    bx.check_grid(open_volume(d / "raw.zarr"), sug)
    with pytest.raises(IncompatibleError, match="shape"):
        bx.check_grid(Volume(raw[:, :32], VS, OFFSET, path="small"), sug)
    with pytest.raises(IncompatibleError, match="voxel size"):
        bx.check_grid(Volume(raw, (10.0, 4.0, 4.0), OFFSET, path="other"), sug)
    with pytest.raises(IncompatibleError, match="offset"):
        bx.check_grid(Volume(raw, VS, (0.0, 0.0, 0.0), path="moved"), sug)


# --------------------------------------------------------------------------- the command


def test_cli_annotates_two_boxes_into_one_labels_volume_that_training_reads(world, tmp_path):
    d, raw, truth, boxes = world
    labels = tmp_path / "labels.zarr"
    base = ["annotate", "graphcut", "--raw", d / "raw.zarr", "--scribbles", d / "scrib.tif", "-o", labels, *GC]
    r1 = invoke(*base, "--box", f"{d / 'where'}:1")
    assert r1.exit_code == 0, r1.output
    # box 2 from scribbles of the box's own shape (a crop), into the same labels volume
    roi2 = boxes[1].roi
    tifffile.imwrite(tmp_path / "scrib2.tif", tifffile.imread(d / "scrib.tif")[roi2.slices()])
    r2 = invoke(*base[:5], tmp_path / "scrib2.tif", *base[6:], "--box", f"{d / 'where'}:2")
    assert r2.exit_code == 0, r2.output
    assert "annotated boxes in" in r2.output and "(2): 0:12,0:32,0:32 9:21,24:56,56:88" in r2.output

    vol = open_volume(labels / "labels")
    assert vol.shape == SHAPE and vol.voxel_size == VS and vol.offset == OFFSET and vol.dtype == np.uint8
    got = vol.read()
    inside = np.zeros(SHAPE, bool)
    scrib = tifffile.imread(d / "scrib.tif")
    for b in boxes:
        inside[b.roi.slices()] = True
        ref = segment_from_scribbles(raw[b.roi.slices()], scrib[b.roi.slices()], PARAMS).labels
        assert (got[b.roi.slices()] == ref).all()  # the graph cut of that box, at its place
        assert (got[b.roi.slices()].astype(bool) == truth[b.roi.slices()]).mean() > 0.97
    assert got[inside].any() and not got[~inside].any() and truth[~inside].any()  # 0 outside, objects there too
    assert (open_volume(labels / "scribbles").read()[inside] == scrib[inside]).all()
    recs = bx.annotated_rois(labels)
    assert [(r["roi_vox"], r["rank"]) for r in recs] == [(boxes[0].roi_vox, 1), (boxes[1].roi_vox, 2)]
    assert recs[0]["source"] == str((d / "where").absolute()) and recs[0]["scribbles"] == str(d / "scrib.tif")
    assert recs[1]["scribbles"] == str(tmp_path / "scrib2.tif") and recs[1]["date"]
    assert recs[0]["graphcut"]["n_trees"] == 16 and "writing" not in vol.attrs

    # the printed arguments are the training ROIs
    line = next(ln.strip() for ln in r2.output.splitlines() if ln.strip().startswith("organet finetune"))
    argv = shlex.split(line)
    assert argv[:6] == ["organet", "finetune", "--from", "MODEL", "--output", "RUN_DIR"]
    opts: dict[str, list[str]] = {}
    for key, value in zip(argv[6::2], argv[7::2]):
        opts.setdefault(key, []).append(value)
    assert opts["--raw"] == [str((d / "raw.zarr").absolute())] and opts["--labels"] == [str(labels / "labels")]
    assert opts["--roi-vox"] == [b.roi_vox for b in boxes] and "--voxel-size" not in opts
    for i, (text, b) in enumerate(zip(opts["--roi-vox"], boxes)):
        data = load_roi(RoiSpec(raw=opts["--raw"][0], labels=opts["--labels"][0], roi_vox=text), 1.0, i)
        assert data.roi == b.roi and (data.labels == got[b.roi.slices()]).all()
    assert [s.roi_vox for s in bx.roi_specs(labels)] == opts["--roi-vox"]
    yml = bx.train_yaml(labels)
    assert "name: box1" in yml and f"roi_vox: {boxes[1].roi_vox}" in yml

    # the same box again needs --overwrite; with it, the box's labels are replaced
    err = one_line_error(invoke(*base, "--box", f"{d / 'where'}:1"))
    assert "already annotated" in err and "--overwrite" in err
    blank = scrib.copy()
    blank[boxes[0].roi.slices()][scrib[boxes[0].roi.slices()] == 1] = 2  # now all background
    blank[boxes[0].roi.slices()][2, 0, 0] = 1
    tifffile.imwrite(tmp_path / "blank.tif", blank)
    r = invoke(*base[:5], tmp_path / "blank.tif", *base[6:], "--box", f"{d / 'where'}:1", "--overwrite")
    assert r.exit_code == 0, r.output
    again = open_volume(labels / "labels").read()
    assert again[boxes[0].roi.slices()].sum() < got[boxes[0].roi.slices()].sum() / 10
    assert (again[boxes[1].roi.slices()] == got[boxes[1].roi.slices()]).all()  # the other box is kept
    assert [r["rank"] for r in bx.annotated_rois(labels)] == [2, 1]


def test_cli_box_errors_are_one_line(world, tmp_path):
    d, raw, _, _ = world
    base = ["annotate", "graphcut", "--raw", d / "raw.zarr", "--scribbles", d / "scrib.tif", *GC]
    err = one_line_error(invoke(*base, "-o", tmp_path / "a.zarr", "--box", f"{d / 'where'}:5"))
    assert "no box of rank 5; its boxes have ranks 1, 2" in err
    err = one_line_error(invoke(*base, "-o", tmp_path / "a.zarr", "--box", f"{d / 'where'}:1", "--roi-vox", "0:4,:,:"))
    assert "either --box DIR:RANK or --roi-vox, not both" in err
    err = one_line_error(invoke(*base, "-o", tmp_path / "a.zarr", "--box", f"{d / 'raw.zarr'}:1"))
    assert "not an `organet suggest` output folder" in err
    # a suggestion folder made for another grid: a raw of another shape, or another voxel size
    write_raw(tmp_path / "crop.zarr", raw[:, :48])
    tifffile.imwrite(tmp_path / "scrib.tif", tifffile.imread(d / "scrib.tif")[:, :48])
    other = ["annotate", "graphcut", "--raw", tmp_path / "crop.zarr", "--scribbles", tmp_path / "scrib.tif", *GC]
    err = one_line_error(invoke(*other, "-o", tmp_path / "b.zarr", "--box", f"{d / 'where'}:1"))
    assert "is for shape (24, 64, 96) voxels" in err and "(24, 48, 96)" in err
    write_raw(tmp_path / "fine.zarr", raw, voxel_size=(10.0, 4.0, 4.0))
    err = one_line_error(
        invoke(*base[:3], tmp_path / "fine.zarr", *base[4:], "-o", tmp_path / "c.zarr", "--box", f"{d / 'where'}:1")
    )
    assert "voxel size" in err and "10, 4, 4" in err
    assert not any((tmp_path / n).exists() for n in ("a.zarr", "b.zarr", "c.zarr"))
    # an output that is not an annotation set
    err = one_line_error(invoke(*base, "-o", d / "raw.zarr", "--box", f"{d / 'where'}:1"))
    assert "is not an annotation set" in err


# --------------------------------------------------------------------------- the annotation set


def small_raw(tmp_path) -> Volume:
    rng = np.random.default_rng(1)
    return open_volume(write_raw(tmp_path / "raw.zarr", rng.integers(0, 255, (8, 16, 16), dtype=np.uint8)))


def test_overlaps_need_overwrite_only_where_labels_differ(tmp_path):
    raw = small_raw(tmp_path)
    path = tmp_path / "set.zarr"
    a, b = Roi((0, 0, 0), (4, 8, 8)), Roi((2, 4, 4), (4, 8, 8))
    la = np.zeros(a.shape, np.uint8)
    la[1:4, 2:8, 2:8] = 1
    w = bx.write_box_labels(path, raw, a, la, rank=1, source=tmp_path / "where")
    assert w.created and w.rois == ["0:4,0:8,0:8"] and w.replaced == []
    lab = open_volume(path / "labels")
    assert lab.shape == raw.shape and lab.chunks == (8, 16, 16)  # CHUNKS clipped to the volume
    # b agrees with a where they overlap: no --overwrite needed, a stays as it was
    lb = np.zeros(b.shape, np.uint8)
    lb[:2, :4, :4] = la[2:4, 4:8, 4:8]
    lb[3, 6, 6] = 1
    w = bx.write_box_labels(path, raw, b, lb)
    assert not w.created and w.rois == ["0:4,0:8,0:8", "2:6,4:12,4:12"] and w.replaced == []
    vol = lab.read()
    assert (vol[a.slices()] == la).all() and (vol[b.slices()] == lb).all()
    # c differs from a and b in their overlaps: refused, nothing changes
    c = Roi((0, 0, 0), (8, 16, 16))
    before = (vol.copy(), json.dumps(open_volume(path / "labels").attrs, sort_keys=True))
    with pytest.raises(
        InputError, match=r"overlaps annotated boxes .* where the new labels differ: 0:4,0:8,0:8 \(rank 1"
    ):
        bx.write_box_labels(path, raw, c, np.zeros(c.shape, np.uint8))
    assert (open_volume(path / "labels").read() == before[0]).all()
    assert json.dumps(open_volume(path / "labels").attrs, sort_keys=True) == before[1]
    w = bx.write_box_labels(path, raw, c, np.zeros(c.shape, np.uint8), replace=True)
    assert w.replaced == ["0:4,0:8,0:8", "2:6,4:12,4:12"] and not open_volume(path / "labels").read().any()
    recs = bx.annotated_rois(path)
    assert [r["roi_vox"] for r in recs] == ["0:4,0:8,0:8", "2:6,4:12,4:12", "0:8,0:16,0:16"]
    assert recs[0]["changed_by"] == ["0:8,0:16,0:16"] and recs[0]["rank"] == 1
    # bad labels
    with pytest.raises(InputError, match="do not fit box"):
        bx.write_box_labels(path, raw, a, la[:2], replace=True)
    with pytest.raises(InputError, match="must be 0/1"):
        bx.write_box_labels(path, raw, a, la * 2, replace=True)
    with pytest.raises(InputError, match="outside the raw volume"):
        bx.write_box_labels(path, raw, Roi((6, 0, 0), (4, 8, 8)), la, replace=True)
    with pytest.raises(InputError, match="needs a path"):
        bx.write_box_labels(tmp_path / "x.zarr", Volume(raw.read(), raw.voxel_size), a, la)
    with pytest.raises(IncompatibleError, match=r"set.zarr/labels is for shape \(8, 16, 16\) voxels"):
        wide = np.zeros((8, 16, 20), np.uint8)
        bx.write_box_labels(path, open_volume(write_raw(tmp_path / "wide.zarr", wide)), a, la, replace=True)
    with pytest.raises(IncompatibleError, match="holds labels of raw"):
        other = open_volume(write_raw(tmp_path / "other.zarr", raw.read()))
        bx.write_box_labels(path, other, a, la, replace=True)


def test_an_interrupted_box_is_never_recorded_and_its_rerun_restores_the_overlapped_boxes(tmp_path, monkeypatch):
    raw = small_raw(tmp_path)
    path = tmp_path / "set.zarr"
    a, b = Roi((0, 0, 0), (4, 8, 8)), Roi((2, 4, 4), (4, 8, 8))
    bx.write_box_labels(path, raw, a, np.ones(a.shape, np.uint8))
    bx.write_box_labels(path, raw, Roi((4, 8, 8), (4, 8, 8)), np.ones((4, 8, 8), np.uint8))
    real = bx.write_block

    def crash(array_path, region, data):  # the data of the box reach the disk, then the process dies
        real(array_path, region, data)
        raise KeyboardInterrupt

    monkeypatch.setattr(bx, "write_block", crash)
    with pytest.raises(KeyboardInterrupt):
        bx.write_box_labels(path, raw, b, np.zeros(b.shape, np.uint8), replace=True)
    monkeypatch.setattr(bx, "write_block", real)
    # neither b nor the boxes whose labels it was changing count as done
    assert [r["roi_vox"] for r in bx.annotated_rois(path)] == []
    assert bx.read_set_attrs(path)["writing"]["roi_vox"] == "2:6,4:12,4:12"
    with pytest.raises(InputError, match="no annotated boxes"):
        bx.finetune_args(path)
    with pytest.raises(InputError, match=r"writing box 2:6,4:12,4:12 .* was interrupted; rerun that annotation first"):
        bx.write_box_labels(path, raw, Roi((0, 12, 12), (2, 4, 4)), np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(InputError, match="pass --overwrite"):
        bx.write_box_labels(path, raw, b, np.zeros(b.shape, np.uint8))
    w = bx.write_box_labels(path, raw, b, np.zeros(b.shape, np.uint8), replace=True)  # the rerun
    assert sorted(w.rois) == ["0:4,0:8,0:8", "2:6,4:12,4:12", "4:8,8:16,8:16"]
    assert "writing" not in bx.read_set_attrs(path) and not open_volume(path / "labels").read()[b.slices()].any()


def test_finetune_arguments_name_the_voxel_size_when_the_raw_file_lacks_it(tmp_path):
    rng = np.random.default_rng(2)
    tifffile.imwrite(tmp_path / "raw.tif", rng.integers(0, 255, (8, 16, 16), dtype=np.uint8))
    raw = open_volume(tmp_path / "raw.tif", voxel_size=VS)
    box = Roi((2, 2, 2), (4, 8, 8))
    lab = np.zeros(box.shape, np.uint8)
    lab[1:3, 2:6, 2:6] = 1
    bx.write_box_labels(tmp_path / "set.zarr", raw, box, lab)
    args = bx.finetune_args(tmp_path / "set.zarr")
    assert args[args.index("--voxel-size") + 1 :][:3] == ["10", "5", "5"]
    assert args[-2:] == ["--roi-vox", "2:6,2:10,2:10"]
    (spec,) = bx.roi_specs(tmp_path / "set.zarr")
    assert spec.voxel_size == VS and spec.name == "roi0"
    data = load_roi(spec, 1.0, 0)
    assert data.roi == box and (data.labels == lab).all()
    assert zarr.open_group(str(tmp_path / "set.zarr/labels"), mode="r").attrs["organet"]["kind"] == "mask"
