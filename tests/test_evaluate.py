"""Tests for organet.evaluate (hand-computed cases, blockwise == whole-volume)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from organet.errors import IncompatibleError, InputError
from organet.evaluate import (
    EXCLUSION_ZONE_WIDTHS,
    Counts,
    EvaluationResult,
    binary_counts,
    evaluate_arrays,
    evaluate_volumes,
    exclusion_zone,
    plot_threshold_sweep,
    prediction_kind,
)


class FakeVolume:
    """Stand-in for organet.volumes.Volume: wraps a numpy array, reads by tuple of slices."""

    def __init__(self, data: np.ndarray, attrs: dict | None = None) -> None:
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.attrs = attrs if attrs is not None else {}
        self.voxel_size = (4.0, 4.0, 4.0)
        self.chunks = data.shape
        self.n_reads = 0

    def read(self, slices: tuple[slice, ...]) -> np.ndarray:
        assert isinstance(slices, tuple) and len(slices) == self._data.ndim
        for s, n in zip(slices, self.shape):
            assert isinstance(s, slice) and 0 <= s.start < s.stop <= n, (s, n)
        self.n_reads += 1
        return self._data[slices].copy()


# 1-D-like volume (1, 1, 10): truth fg at x = 3..6
TRUTH_1D = np.array([0, 0, 0, 1, 1, 1, 1, 0, 0, 0], dtype=np.uint8).reshape(1, 1, 10)
PROB_1D = np.array([0.1, 0.2, 0.9, 0.8, 0.6, 0.4, 0.3, 0.0, 0.2, 0.7]).reshape(1, 1, 10)
# at t = 0.5 predicted fg: x = 2, 3, 4, 9


def blobby(shape: tuple[int, ...], seed: int, sigma: float = 3.0) -> np.ndarray:
    """Smooth random field scaled to [0, 1]."""
    rng = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (f - f.min()) / (f.max() - f.min())


# --------------------------------------------------------------------------- Counts


def test_counts_metrics_and_addition() -> None:
    c = Counts(tp=2, fp=2, fn=2, tn=4)
    assert c.precision == 0.5 and c.recall == 0.5 and c.f1 == 0.5
    assert c.iou == pytest.approx(1 / 3) and c.accuracy == 0.6 and c.total == 10
    assert c + Counts(1, 0, 0, 1) == Counts(3, 2, 2, 5)
    assert sum([c, c, c]) == Counts(6, 6, 6, 12)
    d = c.to_dict()
    assert d["tp"] == 2 and d["f1"] == 0.5 and d["empty"] is False
    assert Counts.from_dict(d) == c


def test_counts_zero_over_zero() -> None:
    empty = Counts(tp=0, fp=0, fn=0, tn=5)  # no true and no predicted foreground
    assert empty.empty
    for name in ("precision", "recall", "f1", "iou"):
        assert math.isnan(getattr(empty, name))
    assert empty.accuracy == 1.0
    d = empty.to_dict()
    assert d["f1"] is None and d["precision"] is None and d["empty"] is True
    json.dumps(d, allow_nan=False)  # JSON-ready
    # nothing predicted but some truth: precision undefined, recall / F1 / IoU are 0
    miss = Counts(tp=0, fp=0, fn=3, tn=1)
    assert math.isnan(miss.precision) and miss.recall == 0 and miss.f1 == 0 and miss.iou == 0
    assert not miss.empty
    assert math.isnan(Counts().accuracy)  # nothing evaluated
    # all-empty prediction vs empty truth through the public API: no crash
    z = np.zeros((2, 3, 4))
    res = evaluate_arrays(z, z.astype(np.uint8), thresholds=(0.5,))
    assert res[0.5] == Counts(0, 0, 0, 24) and math.isnan(res[0.5].f1)
    vres = evaluate_volumes(FakeVolume(z), FakeVolume(z.astype(np.uint8)))
    assert vres.best_threshold is None and vres.counts == Counts(0, 0, 0, 24)
    json.dumps(vres.to_dict(), allow_nan=False)


def test_binary_counts_by_hand() -> None:
    pred = PROB_1D >= 0.5
    truth = TRUTH_1D > 0
    assert binary_counts(pred, truth) == Counts(tp=2, fp=2, fn=2, tn=4)
    valid = np.ones_like(truth)
    valid[..., :3] = False  # ignore x = 0, 1, 2 (x = 2 was a FP)
    assert binary_counts(pred, truth, valid) == Counts(tp=2, fp=1, fn=2, tn=2)


# --------------------------------------------------------------------------- exclusion zone


def test_exclusion_zone_1d_by_hand() -> None:
    zone = exclusion_zone(TRUTH_1D, 1, 1)
    assert np.flatnonzero(zone).tolist() == [2, 3, 6, 7]
    assert np.flatnonzero(exclusion_zone(TRUTH_1D, 2, 0)).tolist() == [3, 4, 5, 6]
    assert np.flatnonzero(exclusion_zone(TRUTH_1D, 0, 2)).tolist() == [1, 2, 7, 8]


def test_exclusion_zone_cube_exact_voxels() -> None:
    truth = np.zeros((9, 9, 9), dtype=np.uint8)
    truth[3:6, 3:6, 3:6] = 1  # 3x3x3 cube, centre (4, 4, 4)
    fg = truth > 0
    zone = exclusion_zone(truth, 1, 1, metric="euclidean")
    # inside: every cube voxel except the centre touches the background
    expected_in = fg.copy()
    expected_in[4, 4, 4] = False
    assert np.array_equal(zone & fg, expected_in)
    # outside, Euclidean <= 1: only the 6 face layers (3x3 each); edge diagonals are sqrt(2) away
    expected_out = np.zeros_like(fg)
    for ax in range(3):
        for pos in (2, 6):
            sl: list[slice | int] = [slice(3, 6)] * 3
            sl[ax] = pos
            expected_out[tuple(sl)] = True
    assert np.array_equal(zone & ~fg, expected_out)
    assert zone.sum() == 26 + 54
    # inner = 2 also removes the centre (distance 2 to background)
    assert np.array_equal(exclusion_zone(truth, 2, 0), fg)
    # outer = 2: Euclidean adds faces at distance 2 (54), edge diagonals sqrt2 (12*3) and
    # corner diagonals sqrt3 (8); taxicab (incasem) keeps the edges (L1 = 2) but not the corners (L1 = 3)
    assert exclusion_zone(truth, 0, 2, metric="euclidean").sum() == 108 + 36 + 8
    assert exclusion_zone(truth, 0, 2, metric="taxicab").sum() == 108 + 36
    assert not (exclusion_zone(truth, 0, 2) & fg).any()


def test_exclusion_zone_no_boundary_and_zero_width() -> None:
    for arr in (np.ones((4, 5, 6), np.uint8), np.zeros((4, 5, 6), np.uint8)):
        assert not exclusion_zone(arr, 3, 3).any()
        assert not exclusion_zone(arr, 3, 3, metric="taxicab").any()
    assert not exclusion_zone(TRUTH_1D, 0, 0).any()
    with pytest.raises(ValueError):
        exclusion_zone(TRUTH_1D, -1, 0)
    assert EXCLUSION_ZONE_WIDTHS == {"mito": 4, "golgi": 2, "er": 2, "np": 1, "ccp": 2}


def test_exclusion_zone_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random((6, 7, 8)) < 0.2
    coords = np.stack(list(np.indices(truth.shape)), -1).reshape(-1, 3).astype(float)
    flat = truth.ravel()
    d = np.sqrt(((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1))
    d_to_bg = np.where(~flat[None, :], d, np.inf).min(1)
    d_to_fg = np.where(flat[None, :], d, np.inf).min(1)
    for inner, outer in [(1, 1), (2, 3), (1, 2)]:
        expected = (flat & (d_to_bg <= inner)) | (~flat & (d_to_fg <= outer))
        assert np.array_equal(exclusion_zone(truth, inner, outer, metric="euclidean").ravel(), expected)


def test_taxicab_matches_incasem_dilation_erosion_away_from_border() -> None:
    """incasem: dilated(iterations=outer) - eroded(iterations=inner), 6-connected."""
    truth = np.zeros((20, 22, 24), bool)
    truth[5:15, 6:16, 7:17] = blobby((10, 10, 10), 1) > 0.45
    for inner, outer in [(4, 4), (2, 2), (1, 3)]:
        incasem = ndimage.binary_dilation(truth, iterations=outer) & ~ndimage.binary_erosion(truth, iterations=inner)
        assert np.array_equal(exclusion_zone(truth, inner, outer, metric="taxicab"), incasem)


# --------------------------------------------------------------------------- evaluate_arrays


def test_evaluate_arrays_by_hand_with_and_without_exclusion_and_mask() -> None:
    r = evaluate_arrays(PROB_1D, TRUTH_1D)
    assert list(r) == [0.5] and r[0.5] == Counts(tp=2, fp=2, fn=2, tn=4)
    # exclusion (1, 1) ignores x = 2, 3, 6, 7; left: x = 0,1,4,5,8,9 with pred fg at 4, 9
    r = evaluate_arrays(PROB_1D, TRUTH_1D, exclusion=(1, 1))
    c = r[0.5]
    assert c == Counts(tp=1, fp=1, fn=1, tn=3)
    assert (c.precision, c.recall, c.f1) == (0.5, 0.5, 0.5)
    assert c.iou == pytest.approx(1 / 3) and c.accuracy == pytest.approx(4 / 6)
    assert evaluate_arrays(PROB_1D, TRUTH_1D, exclusion=1)[0.5] == c
    # mask 0 = ignore: drop x = 8, 9 (TN, FP) on top of the exclusion zone
    mask = np.ones_like(TRUTH_1D)
    mask[..., 8:] = 0
    assert evaluate_arrays(PROB_1D, TRUTH_1D, mask=mask, exclusion=(1, 1))[0.5] == Counts(1, 0, 1, 2)
    assert evaluate_arrays(PROB_1D, TRUTH_1D, mask=mask)[0.5] == Counts(2, 1, 2, 3)


def test_threshold_comparison_is_greater_equal() -> None:
    prob = np.array([0.5, 0.49999, 0.7, 1.0]).reshape(1, 1, 4)
    truth = np.array([1, 1, 0, 1]).reshape(1, 1, 4)
    r = evaluate_arrays(prob, truth, thresholds=(0.5, 0.7, 1.0, 0.0))
    assert list(r) == [0.0, 0.5, 0.7, 1.0]  # ascending
    assert r[0.5] == Counts(tp=2, fp=1, fn=1, tn=0)  # 0.5 >= 0.5 is foreground
    assert r[0.7] == Counts(tp=1, fp=1, fn=2, tn=0)
    assert r[1.0] == Counts(tp=1, fp=0, fn=2, tn=1)
    assert r[0.0] == Counts(tp=3, fp=1, fn=0, tn=0)
    # NaN probability is background
    nanp = np.array([np.nan, 0.9]).reshape(1, 1, 2)
    assert evaluate_arrays(nanp, np.ones((1, 1, 2)))[0.5] == Counts(tp=1, fp=0, fn=1, tn=0)
    with pytest.raises(TypeError):
        evaluate_arrays(np.zeros((1, 1, 2), np.int32), np.zeros((1, 1, 2)))


def test_threshold_sweep_monotone_and_matches_single_thresholds() -> None:
    shape = (12, 14, 16)
    prob = blobby(shape, 2).astype(np.float32)
    truth = blobby(shape, 3) > 0.5
    ts = np.linspace(0, 1, 21)
    r = evaluate_arrays(prob, truth, exclusion=(1, 2), thresholds=ts)
    keys = list(r)
    assert keys == sorted(keys) and len(keys) == 21
    valid = ~exclusion_zone(truth, 1, 2)
    for t in keys:
        assert r[t] == binary_counts(prob.astype(np.float64) >= t, truth, valid)
    for a, b in zip(keys, keys[1:]):
        ca, cb = r[a], r[b]
        assert cb.tp <= ca.tp and cb.tp + cb.fp <= ca.tp + ca.fp and cb.fn >= ca.fn
        assert ca.total == cb.total == int(valid.sum())


# --------------------------------------------------------------------------- evaluate_volumes


def test_uint8_probability_interpretation() -> None:
    v = np.array([0, 127, 128, 255, 64, 200], dtype=np.uint8).reshape(1, 2, 3)
    truth = np.array([0, 1, 1, 1, 0, 0], dtype=np.uint8).reshape(1, 2, 3)
    nested = FakeVolume(v, {"organet": {"kind": "probability"}})
    flat = FakeVolume(v, {"kind": "probability"})
    labels = FakeVolume(v, {})
    assert prediction_kind(nested) == prediction_kind(flat) == "probability_uint8"
    assert prediction_kind(labels) == "binary"
    ts = (0.5, 128 / 255, 0.25, 200 / 255)
    r_nested = evaluate_volumes(nested, FakeVolume(truth), thresholds=ts)
    r_flat = evaluate_volumes(flat, FakeVolume(truth), thresholds=ts)
    # 127/255 < 0.5 <= 128/255: fg = {128, 255, 200}
    assert r_nested.per_threshold[0.5] == Counts(tp=2, fp=1, fn=1, tn=2)
    assert r_nested.per_threshold[128 / 255] == Counts(tp=2, fp=1, fn=1, tn=2)  # >=: 128 counts
    assert r_nested.per_threshold[200 / 255] == Counts(tp=1, fp=1, fn=2, tn=2)
    assert r_nested.per_threshold == r_flat.per_threshold
    # identical to float v / 255 through both code paths
    as_float = evaluate_volumes(FakeVolume(v / 255.0), FakeVolume(truth), thresholds=ts)
    assert as_float.per_threshold == r_nested.per_threshold
    assert evaluate_arrays(v, truth, thresholds=ts) == evaluate_arrays(v / 255.0, truth, thresholds=ts)
    # without the attribute: labels, foreground where > 0, thresholds irrelevant
    r_lab = evaluate_volumes(labels, FakeVolume(truth), thresholds=ts)
    assert r_lab.pred_kind == "binary" and r_lab.per_threshold == {} and r_lab.best_threshold is None
    assert r_lab.counts == Counts(tp=3, fp=2, fn=0, tn=1)


def test_binary_predictions_bool_and_labels() -> None:
    truth = TRUTH_1D
    as_bool = FakeVolume(PROB_1D >= 0.5)
    as_labels = FakeVolume(np.where(PROB_1D >= 0.5, 7, 0).astype(np.uint32))
    for pred in (as_bool, as_labels):
        r = evaluate_volumes(pred, FakeVolume(truth), exclusion=(1, 1), block_shape=(1, 1, 3))
        assert r.pred_kind == "binary" and r.thresholds == ()
        assert r.counts == Counts(tp=1, fp=1, fn=1, tn=3)


def test_shape_mismatch_message() -> None:
    a = FakeVolume(np.zeros((4, 5, 6), np.float32))
    b = FakeVolume(np.zeros((4, 5, 7), np.uint8))
    with pytest.raises(IncompatibleError, match=r"\(4, 5, 6\).*\(4, 5, 7\)"):
        evaluate_volumes(a, b)
    with pytest.raises(IncompatibleError, match=r"mask has shape \(4, 5, 7\)"):
        evaluate_volumes(a, FakeVolume(np.zeros((4, 5, 6), np.uint8)), mask=b)
    with pytest.raises(ValueError, match="shape mismatch"):
        evaluate_arrays(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


def test_user_errors_are_organet_errors() -> None:
    p = FakeVolume(np.zeros((4, 5, 6), np.float32))
    t = FakeVolume(np.zeros((4, 5, 6), np.uint8))
    for bad in ((0, 1, 1), (2, 2), (-1, 4, 4), "abc"):
        with pytest.raises(InputError, match="block_shape"):
            evaluate_volumes(p, t, block_shape=bad)
    for bad_t in ((), (0.5, 1.5), (float("nan"),), -0.1):
        with pytest.raises(InputError, match="threshold"):
            evaluate_volumes(p, t, thresholds=bad_t)
    with pytest.raises(InputError, match="unknown organelle"):
        evaluate_volumes(p, t, exclusion="nucleolus")
    with pytest.raises(InputError, match="exclusion metric"):
        evaluate_volumes(p, t, exclusion=1, exclusion_metric="chebyshev")


@pytest.fixture(scope="module")
def blobby_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shape = (40, 50, 60)
    prob = blobby(shape, 10, sigma=2.0).astype(np.float32)
    truth = (blobby(shape, 11, sigma=2.5) > 0.55).astype(np.uint8)
    mask = (blobby(shape, 12, sigma=6.0) > 0.3).astype(np.uint8)
    return prob, truth, mask


@pytest.mark.parametrize("block_shape", [(40, 50, 60), (64, 256, 256), (16, 16, 16), (7, 13, 11), (40, 3, 60)])
def test_blockwise_equals_whole_volume(blobby_case, block_shape) -> None:
    prob, truth, mask = blobby_case
    ts = np.linspace(0.0, 1.0, 11)
    whole = evaluate_arrays(prob, truth, mask=mask, exclusion=(2, 3), thresholds=ts)
    res = evaluate_volumes(
        FakeVolume(prob),
        FakeVolume(truth),
        mask=FakeVolume(mask),
        exclusion=(2, 3),
        thresholds=ts,
        block_shape=block_shape,
    )
    assert res.per_threshold == whole
    assert res.exclusion == (2, 3) and res.shape == (40, 50, 60) and res.masked
    # sanity: the exclusion zone and the mask both matter for this case
    assert whole[0.5] != evaluate_arrays(prob, truth, exclusion=(2, 3))[0.5]
    assert whole[0.5] != evaluate_arrays(prob, truth, mask=mask)[0.5]


def test_blockwise_taxicab_and_no_mask(blobby_case) -> None:
    prob, truth, _ = blobby_case
    whole = evaluate_arrays(prob, truth, exclusion=(4, 1), thresholds=(0.3, 0.6), exclusion_metric="taxicab")
    res = evaluate_volumes(
        prob,
        truth,
        exclusion=(4, 1),
        thresholds=(0.3, 0.6),
        block_shape=(9, 20, 17),
        exclusion_metric="taxicab",
    )  # plain numpy arrays work too
    assert res.per_threshold == whole


def test_result_dict_table_json_roundtrip(tmp_path: Path, blobby_case) -> None:
    prob, truth, mask = blobby_case
    calls: list[tuple[str, int, int]] = []
    res = evaluate_volumes(
        FakeVolume(prob[:10]),
        FakeVolume(truth[:10]),
        mask=FakeVolume(mask[:10]),
        exclusion="golgi",
        thresholds=(0.3, 0.5, 0.7),
        block_shape=(8, 32, 32),
        progress=lambda *a: calls.append(a),
    )
    assert res.exclusion == (2, 2)
    best = res.best_threshold
    assert best in (0.3, 0.5, 0.7)
    assert res.counts.f1 == max(c.f1 for c in res.per_threshold.values())
    d = res.to_dict()
    assert d["best_threshold"] == best and len(d["per_threshold"]) == 3
    out = tmp_path / "sub" / "eval.json"
    res.write_json(out)
    loaded = json.loads(out.read_text())
    assert loaded == json.loads(json.dumps(d))
    assert EvaluationResult.from_dict(loaded).per_threshold == res.per_threshold
    assert [p.name for p in out.parent.iterdir()] == ["eval.json"]  # no temp file left
    # progress: the stage is announced with its block count (2 x 2 x 2), then every block advances once
    assert calls[0] == ("evaluate", 0, 8) and all(c[0] == "evaluate" and c[2] == 8 for c in calls)
    assert sum(c[1] for c in calls) == 8


def test_plot_threshold_sweep(tmp_path: Path, blobby_case) -> None:
    pytest.importorskip("matplotlib")
    prob, truth, _ = blobby_case
    res = evaluate_volumes(prob[:8], truth[:8], thresholds=np.linspace(0.1, 0.9, 9))
    out = plot_threshold_sweep(res, tmp_path / "sweep.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.png"]
    plot_threshold_sweep(evaluate_arrays(prob[:8], truth[:8], thresholds=(0.4, 0.6)), tmp_path / "b.png")
    with pytest.raises(ValueError):
        plot_threshold_sweep(evaluate_volumes(truth[:2] > 0, truth[:2]), tmp_path / "c.png")
