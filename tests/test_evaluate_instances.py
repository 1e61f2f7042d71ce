"""Instance metrics (`organet evaluate --instances`) on hand-built cases with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error, variation_of_information
from typer.testing import CliRunner

from organet.cli import app
from organet.errors import InputError
from organet.evaluate.instances import evaluate_instances, overlap_table, score_instances
from organet.evaluate.instances_plot import plot_instance_scores
from organet.volumes import Volume, write_ome_zarr

SHAPE = (8, 20, 40)


def world() -> np.ndarray:
    """Three true objects: A (4x10x10 = 400 voxels), B (4x10x5 = 200) touching A, C (2x4x4 = 32) apart."""
    t = np.zeros(SHAPE, np.uint16)
    t[2:6, 5:15, 2:12] = 11  # A
    t[2:6, 5:15, 12:17] = 12  # B, touching A along x
    t[2:4, 2:6, 30:34] = 13  # C
    return t


def ev(pred, truth, **kw):
    return evaluate_instances(Volume(pred), Volume(truth), block_shape=(4, 8, 16), **kw)


def test_perfect_match():
    t = world()
    p = np.select([t == 11, t == 12, t == 13], [3, 1, 2], 0).astype(np.uint32)  # other ids, same objects
    r = ev(p, t)
    assert r.pred_objects == r.true_objects == 3
    assert all(m.tp == 3 and m.fp == 0 and m.fn == 0 and m.f1 == 1.0 for m in r.sweep)
    assert r.mean_f1 == r.mean_ap == 1.0
    assert r.arand == 0.0 and r.vi_split == r.vi_merge == 0.0
    assert not r.merges and not r.splits and not r.merged_pairs


def test_one_merge_with_its_gap_and_skimage_agreement():
    t = world()
    p = np.where(np.isin(t, (11, 12)), 5, np.where(t == 13, 6, 0)).astype(np.uint32)
    r = ev(p, t)
    # the merged object: IoU with A = 400 / 600 = 0.667, with B = 200 / 600
    first = [(m.iou, m.tp, m.fp, m.fn) for m in r.sweep[:4]]
    assert first == [(0.5, 2, 0, 1), (0.55, 2, 0, 1), (0.6, 2, 0, 1), (0.65, 2, 0, 1)]
    assert r.at(0.7).tp == 1  # only C above 0.667
    assert r.at(0.5).f1 == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    assert r.merges == {5: [11, 12]} and not r.splits
    assert [(m.pred, m.a, m.b, m.gap) for m in r.merged_pairs] == [(5, 11, 12, 0)]  # they touch
    # VI: merge part = entropy of the 400 / 200 mix in bits (weighted by the pred's share), split 0
    h = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert r.vi_merge == pytest.approx(h * 600 / 632) and r.vi_split == pytest.approx(0, abs=1e-12)
    are, _, _ = adapted_rand_error(t, p)
    assert r.arand == pytest.approx(are)
    split, merge = variation_of_information(t, p, ignore_labels=(0,))
    assert (r.vi_split, r.vi_merge) == pytest.approx((split, merge))
    assert r.arand_recall == pytest.approx(1.0) and r.arand_precision < 0.7  # a merge lowers precision only


def test_gap_of_a_merged_pair_apart():
    t = world()
    t[t == 12] = 0
    t[2:6, 5:15, 15:20] = 12  # B moved 3 voxels away from A (x 12, 13, 14 are background)
    p = np.where(t == 13, 2, np.where(t > 0, 1, 0)).astype(np.uint32)
    p[2:6, 5:15, 12:15] = 1  # the prediction bridges the gap
    r = ev(p, t)
    assert [(m.a, m.b, m.gap) for m in r.merged_pairs] == [(11, 12, 3)]
    assert r.separated_pairs(2) == 1 and r.separated_pairs(4) == 0


def test_one_split_a_missed_object_and_a_false_one():
    t = world()
    p = np.zeros(SHAPE, np.uint32)
    p[2:6, 5:15, 2:8] = 1  # A cut 60 / 40 at x = 8
    p[2:6, 5:15, 8:12] = 2
    p[2:6, 5:15, 12:17] = 3  # B exact
    p[6:8, 16:20, 20:25] = 4  # a false object on background; C missed
    r = ev(p, t)
    m = r.at(0.5)
    assert (m.tp, m.fp, m.fn) == (2, 2, 1)  # A (IoU 0.6) and B; 2 and 4 false; C missed
    assert m.precision == 0.5 and m.recall == pytest.approx(2 / 3) and m.ap == pytest.approx(2 / 5)
    assert r.at(0.65).tp == 1  # A's larger piece has IoU 0.6
    assert r.splits == {11: [1, 2]} and not r.merges
    are, _, _ = adapted_rand_error(t, p)
    split, merge = variation_of_information(t, p, ignore_labels=(0,))
    assert r.arand == pytest.approx(are) and (r.vi_split, r.vi_merge) == pytest.approx((split, merge))
    assert r.arand_precision == pytest.approx(1.0) and r.arand_recall < 1  # a split lowers recall only
    assert r.vi_merge == pytest.approx(0, abs=1e-12) and r.vi_split > 0
    # the small objects (C: 32 voxels, the false one: 40) ignored with a size filter (voxels of 1 nm³)
    small = ev(p, t, min_size_nm3=41.0).at(0.5)
    assert (small.tp, small.fp, small.fn) == (2, 1, 0)


def test_truth_mask_becomes_components_and_blocks_do_not_matter(tmp_path):
    t = world()
    mask = (t > 0).astype(np.uint8)  # A and B touch: one component; C another
    p = t.astype(np.uint32)
    r = evaluate_instances(Volume(p), Volume(mask), block_shape=(4, 8, 16), scratch=tmp_path)
    assert r.true_objects == 2 and r.extra["truth_components"] and not r.extra["pred_components"]
    assert r.splits and list(r.splits.values()) == [[11, 12]]
    assert not list(tmp_path.iterdir())  # the scratch folder is cleaned up
    a = overlap_table(Volume(p), Volume(t), block_shape=(4, 8, 16))
    b = overlap_table(Volume(p), Volume(t), block_shape=SHAPE)
    for f in ("pred", "true", "count", "true_ids", "true_bbox"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    np.testing.assert_array_equal(a.true_bbox[a.true_ids == 11][0], [2, 5, 2, 6, 15, 12])
    # a mask restricts the voxels: only C's region
    region = np.zeros(SHAPE, np.uint8)
    region[:, :, 25:] = 1
    r = ev(p, t, mask=Volume(region))
    assert r.true_objects == r.pred_objects == 1 and r.at(0.5).f1 == 1.0


def test_errors_and_empty():
    t = world()
    with pytest.raises(InputError, match="probabilities"):
        ev(np.zeros(SHAPE, np.float32), t)
    with pytest.raises(InputError, match="min-overlap"):
        ev(t.astype(np.uint32), t, min_overlap=0)
    empty = ev(np.zeros(SHAPE, np.uint32), t)
    assert empty.at(0.5).tp == 0 and empty.at(0.5).fn == 3 and math.isnan(empty.at(0.5).precision)
    assert empty.arand == pytest.approx(adapted_rand_error(t, np.zeros(SHAPE, np.uint32))[0])
    nothing = score_instances(overlap_table(Volume(np.zeros(SHAPE, np.uint8)), Volume(np.zeros(SHAPE, np.uint8))))
    assert nothing.true_objects == 0 and math.isnan(nothing.arand)
    json.dumps(nothing.to_dict(), allow_nan=False)


def test_cli_json_table_and_plot(tmp_path):
    t = world()
    p = np.where(np.isin(t, (11, 12)), 5, np.where(t == 13, 6, 0)).astype(np.uint32)
    for name, arr in (("pred.zarr", p), ("truth.zarr", (t > 0).astype(np.uint8))):
        with write_ome_zarr(tmp_path / name) as w:
            w.create_image(None, SHAPE, arr.dtype, (5, 5, 5), (0, 0, 0), SHAPE).write(..., arr)
    # the truth as a mask: A+B one component, C another: the prediction matches both
    out = tmp_path / "r.json"
    args = ["evaluate", "--instances", "--pred", str(tmp_path / "pred.zarr"), "--truth", str(tmp_path / "truth.zarr")]
    r = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "ARAND" in r.output and "Instances: 2 predicted, 2 true" in r.output
    d = json.loads(out.read_text())
    assert d["sweep"][0]["f1"] == 1.0 and d["merged_pairs_separated_2"] == 0 and d["arand"] == 0.0
    assert (tmp_path / "r.png").stat().st_size > 1000
    r = CliRunner().invoke(app, [*args, "--threshold", "0.5"])
    assert r.exit_code == 2 and "--threshold does not apply to --instances" in r.output
    r = CliRunner().invoke(app, ["evaluate", "--instances", "--truth", str(tmp_path / "truth.zarr")])
    assert r.exit_code == 2 and "--instances needs --pred" in r.output


def test_plot(tmp_path):
    t = world()
    r = ev(t.astype(np.uint32), t)
    path = plot_instance_scores(r, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
