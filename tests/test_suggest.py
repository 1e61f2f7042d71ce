"""organet suggest: uncertainty maps, box selection and the command end to end."""

from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from organet.annotate.suggest import (
    BOX_COLUMNS,
    NAPARI_COLUMNS,
    as_probability,
    binary_entropy,
    box_voxels,
    propose_boxes,
    suggest,
    uncertainty_map,
)
from organet.cli import app
from organet.errors import IncompatibleError, InputError
from organet.predict import SampleMask
from organet.volumes import Roi, Volume, open_volume, write_ome_zarr
from organet.volumes.foreground import probability_to_uint8

runner = CliRunner()
PROB = {"kind": "probability", "scale": 255}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def prob_volume(p: np.ndarray, voxel_size=(10.0, 5.0, 5.0), offset=(0.0, 0.0, 0.0)) -> Volume:
    """A uint8 probability as organet predict writes it, in memory."""
    return Volume(probability_to_uint8(p), voxel_size, offset, attrs=PROB)


def write_prediction(path, p, voxel_size=(10.0, 5.0, 5.0), offset=(0.0, 0.0, 0.0), chunks=(8, 16, 16)):
    """OUT.zarr as organet predict lays it out: probability (uint8) and mask."""
    u = probability_to_uint8(p)
    with write_ome_zarr(path) as w:
        w.create_image("probability", p.shape, np.uint8, voxel_size, offset, chunks, PROB).write(..., u)
        w.create_image("mask", p.shape, np.uint8, voxel_size, offset, chunks, {"kind": "mask"}).write(..., u >= 128)


def overlaps(a: Roi, b: Roi) -> bool:
    return a.intersect(b).size > 0


# --------------------------------------------------------------------------- uncertainty values


def test_entropy_and_disagreement_values():
    np.testing.assert_allclose(binary_entropy(np.array([0.0, 0.5, 1.0, 0.25])), [0.0, 1.0, 0.0, 0.8112781244591328])
    half = np.full((2, 2, 2), 0.5)
    zeros, ones = np.zeros((2, 2, 2)), np.ones((2, 2, 2))
    assert (uncertainty_map([half]) == 1.0).all()
    # two confident inputs that disagree: the mean is 0.5, each alone is certain
    assert (uncertainty_map([zeros, ones], "entropy") == 1.0).all()
    assert (uncertainty_map([zeros, ones], "disagreement") == 1.0).all()
    # two inputs that agree on 0.5: uncertain, but no disagreement
    assert (uncertainty_map([half, half], "disagreement") == 0.0).all()
    np.testing.assert_allclose(uncertainty_map([zeros, half], "disagreement"), binary_entropy(0.25) - 0.5)
    assert as_probability(np.array([255, 0], np.uint8), "probability_uint8").tolist() == [1.0, 0.0]
    with pytest.raises(InputError, match="at least 2"):
        uncertainty_map([half], "disagreement")
    with pytest.raises(InputError, match="not a probability"):
        as_probability(np.array([1], np.uint8), "binary")


def test_blockwise_uncertainty_equals_one_block(tmp_path):
    rng = np.random.default_rng(0)
    shape = (12, 40, 36)
    p1 = ndimage.gaussian_filter(rng.random(shape), 2)
    p1 = (p1 - p1.min()) / (p1.max() - p1.min())
    p2 = np.clip(p1 + rng.normal(0, 0.2, shape), 0, 1).astype(np.float32)  # float input, next to a uint8 one
    vols = [prob_volume(p1, offset=(100.0, 20.0, 30.0)), Volume(p2, (10, 5, 5), (100.0, 20.0, 30.0))]
    ps = [as_probability(vols[0].read(), "probability_uint8"), as_probability(p2, "probability")]
    for score in ("entropy", "disagreement"):
        out = tmp_path / score
        res = suggest(
            vols, out, box_nm=(40, 40, 40), k=2, score=score, chunks=(4, 8, 8), block_shape=(4, 16, 16)
        )  # 3 x 3 x 3 blocks
        u = open_volume(out / "uncertainty.zarr")
        assert u.voxel_size == (10.0, 5.0, 5.0) and u.offset == (100.0, 20.0, 30.0) and u.dtype == np.uint8
        ref = probability_to_uint8(uncertainty_map(ps, score))
        assert u.read().tobytes() == ref.tobytes()
        assert res.pyramid_levels > 1 and (out / "uncertainty.zarr" / "s1").is_dir()
        assert u.attrs["score"] == score and u.attrs["unit"] == "bit"
    # the two maps differ: disagreement is at most the entropy and lower somewhere
    e = open_volume(tmp_path / "entropy" / "uncertainty.zarr").read()
    d = open_volume(tmp_path / "disagreement" / "uncertainty.zarr").read()
    assert (d <= e).all() and (d < e).any()


# --------------------------------------------------------------------------- boxes


PHANTOM_SHAPE = (24, 128, 128)
REGIONS = [  # known uncertain regions, (z, y, x) slices: one touching two borders, then larger ones
    (slice(0, 8), slice(0, 16), slice(50, 66)),
    (slice(10, 20), slice(60, 84), slice(104, 128)),
    (slice(14, 23), slice(100, 118), slice(10, 30)),
]


def phantom(seed=0) -> np.ndarray:
    """Probability: confident (0.02 / 0.98 with noise) except p = 0.5 in :data:`REGIONS`."""
    rng = np.random.default_rng(seed)
    p = np.where(rng.random(PHANTOM_SHAPE) < 0.5, 0.02, 0.98) + rng.normal(0, 0.005, PHANTOM_SHAPE)
    for r in REGIONS:
        p[r] = 0.5
    return np.clip(p, 0, 1)


def test_top_boxes_find_the_uncertain_regions(tmp_path):
    vol = prob_volume(phantom(), voxel_size=(10.0, 5.0, 5.0), offset=(50.0, 0.0, 0.0))
    res = suggest([vol], tmp_path / "s", box_nm=(80, 80, 80), k=3)  # 8 x 16 x 16 voxels
    assert res.box_vox == (8, 16, 16) and len(res.boxes) == 3
    hit = []
    for b in res.boxes:
        regions = [i for i, r in enumerate(REGIONS) if overlaps(b.roi, Roi.from_slices(r))]
        assert len(regions) == 1, (b, regions)
        hit.append(regions[0])
        assert b.score > 0.7
    assert sorted(hit) == [0, 1, 2]
    assert [b.rank for b in res.boxes] == [1, 2, 3]
    assert res.boxes[0].score >= res.boxes[1].score >= res.boxes[2].score
    # exact score = mean of the written map over the box
    u = open_volume(tmp_path / "s" / "uncertainty.zarr").read() / 255.0
    for b in res.boxes:
        assert b.score == pytest.approx(u[b.roi.slices()].mean())
    # the same map in memory gives the same boxes
    again = propose_boxes(open_volume(tmp_path / "s" / "uncertainty.zarr"), (8, 16, 16), 3)
    assert [b.roi for b in again] == [b.roi for b in res.boxes]


def smooth_map(shape=(16, 96, 96), seed=1) -> np.ndarray:
    u = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 3)
    return (u - u.min()) / (u.max() - u.min())


def check_rules(boxes, roi, box, sample=None, spacing=None):
    for b in boxes:
        assert b.roi.shape == box and roi.contains(b.roi)
        if sample is not None:
            frac = sample[b.roi.slices()].mean()
            assert frac >= 0.5 and frac == pytest.approx(b.sample_fraction)
    for a, b in itertools.combinations(boxes, 2):
        assert not overlaps(a.roi, b.roi)
        if spacing is not None:  # apart by at least the spacing on some axis
            gaps = [
                max(a0, b0) - min(a1, b1) for a0, a1, b0, b1 in zip(a.roi.offset, a.roi.end, b.roi.offset, b.roi.end)
            ]
            assert any(g >= s for g, s in zip(gaps, spacing)), (a, b)


def test_boxes_respect_roi_mask_and_spacing():
    u = smooth_map()
    zz, yy, xx = np.indices(u.shape)
    sample = (yy - 50) ** 2 + (xx - 40) ** 2 < 35**2  # a cylinder: the cell
    roi = Roi((2, 4, 0), (14, 88, 80))
    box = (4, 12, 12)
    boxes = propose_boxes(u, box, 12, roi=roi, sample=sample)
    assert len(boxes) >= 6
    check_rules(boxes, roi, box, sample, spacing=(2, 6, 6))
    assert [b.score for b in boxes] == sorted((b.score for b in boxes), reverse=True)
    # without a mask, the best box is the best candidate anywhere in the ROI
    best = propose_boxes(u, box, 1, roi=roi, stride=(1, 1, 1))[0]
    c = np.pad(u[roi.slices()], ((1, 0), (1, 0), (1, 0))).cumsum(0).cumsum(1).cumsum(2)
    (bz, by, bx), (nz, ny, nx) = box, roi.shape
    sums = sum(  # every box position inside the ROI, by inclusion-exclusion on the summed-area table
        (-1) ** (3 - dz - dy - dx)
        * c[dz * bz : nz - bz + 1 + dz * bz, dy * by : ny - by + 1 + dy * by, dx * bx : nx - bx + 1 + dx * bx]
        for dz, dy, dx in itertools.product((0, 1), repeat=3)
    )
    assert best.score == pytest.approx(sums.max() / np.prod(box))
    assert best.roi.offset == tuple(int(i) for i in np.add(np.unravel_index(sums.argmax(), sums.shape), roi.offset))
    # more boxes than fit: what fits, no error
    many = propose_boxes(u, (16, 60, 60), 5, roi=roi)
    assert 1 <= len(many) < 5
    check_rules(many, roi, (14, 60, 60))  # clipped to the ROI in z


def test_random_boxes_reproducible_and_within_rules():
    u = smooth_map()
    sample = np.zeros(u.shape, bool)
    sample[:, 20:90, 10:70] = True
    roi = Roi((0, 10, 0), (16, 86, 96))
    box = (4, 10, 10)
    a = propose_boxes(u, box, 10, roi=roi, sample=sample, strategy="random", rng=7)
    b = propose_boxes(u, box, 10, roi=roi, sample=sample, strategy="random", rng=np.random.default_rng(7))
    c = propose_boxes(u, box, 10, roi=roi, sample=sample, strategy="random", rng=8)
    assert len(a) == 10 and [x.roi for x in a] == [x.roi for x in b]
    assert [x.roi for x in a] != [x.roi for x in c]
    check_rules(a, roi, box, sample)
    check_rules(c, roi, box, sample)


def test_box_voxels_and_sample_voxels_at_another_resolution():
    assert box_voxels((100, 52, 1), (10, 5, 5), (50, 50, 50)) == ((10, 10, 1), "")
    box, note = box_voxels((1000, 52, 5), (10, 5, 5), (20, 50, 50))
    assert box == (20, 10, 1) and "clipped" in note and "in z" in note
    # a mask at twice the voxel size, offset by one fine voxel in x
    m = np.zeros((4, 8, 8), np.uint8)
    m[:, 2:6, 2:6] = 1
    grid = Volume(np.zeros((8, 16, 16), np.uint8), (5, 5, 5))
    got = SampleMask(Volume(m, (10, 10, 10), (0, 0, 5)), ">0").voxels(grid, Roi((0, 0, 0), (8, 16, 16)))
    want = np.zeros((8, 16, 16), bool)
    want[:, 4:12, 5:13] = True
    np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- the command


def test_cli_end_to_end(tmp_path):
    p = phantom(seed=2)
    write_prediction(tmp_path / "a.zarr", p, offset=(50.0, 0.0, 0.0))
    q = p.copy()
    q[REGIONS[1]] = np.where(np.indices(q[REGIONS[1]].shape).sum(0) % 2, 0.01, 0.99)  # confident but disagreeing
    write_prediction(tmp_path / "b.zarr", q, offset=(50.0, 0.0, 0.0))
    mask = np.zeros(PHANTOM_SHAPE, np.uint8)
    mask[:, 40:, :] = 1
    with write_ome_zarr(tmp_path / "m.zarr") as w:
        w.create_image(None, mask.shape, np.uint8, (10, 5, 5), (50.0, 0.0, 0.0), (8, 32, 32)).write(..., mask)
    out = tmp_path / "out"
    args = [
        "suggest",
        tmp_path / "a.zarr",  # OUT.zarr of organet predict = its probability
        tmp_path / "b.zarr/probability",
        "--output",
        out,
        "--box-nm",
        80,
        80,
        80,
        "--boxes",
        3,
        "--score",
        "disagreement",
        "--roi-vox",
        "0:24,16:128,0:128",
        "--mask",
        tmp_path / "m.zarr",
        "--mask-rule",
        ">0",
    ]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    for name in ("uncertainty.zarr", "boxes.csv", "boxes_napari.csv", "overview.png", "summary.json"):
        assert (out / name).exists(), name
    assert not (tmp_path / "out.partial").exists() and not (tmp_path / "out.progress").exists()
    t = pd.read_csv(out / "boxes.csv")
    assert list(t.columns) == BOX_COLUMNS and len(t) >= 1
    # the disagreeing region is the top box; boxes stay in the ROI and the sample (y >= 40)
    top = t.iloc[0]
    assert top["rank"] == 1 and overlaps(
        Roi((top.z0, top.y0, top.x0), (top.z1 - top.z0, top.y1 - top.y0, top.x1 - top.x0)), Roi.from_slices(REGIONS[1])
    )
    assert (t.y0 >= 40 - 8).all() and (t.z1 - t.z0 == 8).all() and (t.y1 - t.y0 == 16).all()
    assert (t.z0_nm == 50 + 10 * t.z0).all() and (t.x1_nm == 5 * t.x1).all()
    assert np.allclose(t.volume_um3, 80 * 80 * 80 / 1e9)
    assert t.roi_vox[0] == f"{top.z0}:{top.z1},{top.y0}:{top.y1},{top.x0}:{top.x1}"
    assert "roi_vox" in r.output and top.roi_vox in r.output
    # napari shapes CSV: 4 vertices per box on its middle plane, world nm
    with open(out / "boxes_napari.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == NAPARI_COLUMNS and len(rows) == 4 * len(t)
    n = pd.read_csv(out / "boxes_napari.csv")
    first = n[n["index"] == 0]
    assert (first["shape-type"] == "rectangle").all() and list(first["vertex-index"]) == [0, 1, 2, 3]
    assert set(first["axis-0"]) == {50 + 10 * ((top.z0 + top.z1 - 1) // 2)}
    assert set(first["axis-1"]) == {5 * (top.y0 - 0.5), 5 * (top.y1 - 0.5)}
    napari_io = pytest.importorskip("napari_builtins.io")
    data, meta, kind = napari_io.csv_to_layer_data(str(out / "boxes_napari.csv"))
    assert kind == "shapes" and len(data) == len(t) and meta["shape_type"][0] == "rectangle"
    s = json.loads((out / "summary.json").read_text())
    assert s["score"] == "disagreement" and s["boxes_found"] == len(t) and len(s["boxes"]) == len(t)
    assert s["total_volume_um3"] == pytest.approx(t.volume_um3.sum())
    assert 0 < s["captured_fraction"] <= 1 and s["region"]["roi_vox"] == "0:24,16:128,0:128"
    assert s["inputs"][0].endswith("a.zarr/probability")
    # the same command again: complete, nothing to do; other settings: refused without --overwrite
    r = invoke(*args)
    assert r.exit_code == 0 and "already complete" in r.output, r.output
    r = invoke(*args[:-4], "--strategy", "random")
    assert r.exit_code == 2 and r.output.strip().startswith("error:") and len(r.output.strip().splitlines()) == 1
    assert "already exists" in r.output
    r = invoke(*args[:-4], "--strategy", "random", "--seed", 3, "--overwrite")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "summary.json").read_text())["strategy"] == "random"


def test_cli_errors(tmp_path):
    p = phantom()[:, :64, :64]
    write_prediction(tmp_path / "a.zarr", p)
    write_prediction(tmp_path / "moved.zarr", p, offset=(0.0, 0.0, 5.0))
    write_prediction(tmp_path / "small.zarr", p[:, :32])
    base = ["--output", tmp_path / "o", "--box-nm", 80, 80, 80]

    def one_line_error(r, *words):
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), r.output
        for w in words:
            assert w in r.output, r.output

    one_line_error(invoke("suggest", tmp_path / "a.zarr", tmp_path / "small.zarr", *base), "small.zarr", "a.zarr")
    one_line_error(invoke("suggest", tmp_path / "a.zarr", tmp_path / "moved.zarr", *base), "moved.zarr", "offset")
    one_line_error(invoke("suggest", tmp_path / "a.zarr", *base, "--score", "disagreement"), "at least 2")
    one_line_error(invoke("suggest", tmp_path / "a.zarr/mask", *base), "not a probability")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    one_line_error(invoke("suggest", tmp_path / "a.zarr", *base), "already exists", "--overwrite")
    assert (tmp_path / "o" / "notes.txt").read_text() == "mine"
    with pytest.raises(IncompatibleError):
        suggest([prob_volume(p), prob_volume(p, voxel_size=(10, 6, 5))], tmp_path / "x", box_nm=(80, 80, 80))


def test_failed_block_resumes_to_the_same_output(tmp_path, monkeypatch):
    from organet.blockwise.faults import ENV
    from organet.errors import BlockFailures

    vol = prob_volume(phantom())
    faults = tmp_path / "faults.json"
    faults.write_text(
        json.dumps([{"stage": "uncertainty", "blocks": [[1, 2, 0]], "times": -1, "counter_dir": str(tmp_path / "c")}])
    )
    monkeypatch.setenv(ENV, str(faults))
    kw = {"box_nm": (80, 80, 80), "k": 3, "chunks": (8, 32, 32), "block_shape": (8, 32, 32)}
    with pytest.raises(BlockFailures, match="uncertainty"):
        suggest([vol], tmp_path / "o", retries=0, **kw)
    assert (tmp_path / "o.partial").is_dir() and not (tmp_path / "o").exists()
    monkeypatch.delenv(ENV)
    res = suggest([vol], tmp_path / "o", retries=0, **kw)
    assert any("resumed" in n for n in res.notes)
    ref = suggest([vol], tmp_path / "ref", **kw)
    assert [b.roi for b in res.boxes] == [b.roi for b in ref.boxes]
    got, want = (open_volume(tmp_path / d / "uncertainty.zarr").read() for d in ("o", "ref"))
    assert got.tobytes() == want.tobytes()
