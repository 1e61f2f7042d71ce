"""``organet demo``: the whole loop on the synthetic default and on real data (lucchi_pp layout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from organet.demo.run import run_demo
from organet.errors import InputError
from organet.volumes import open_volume

LUCCHI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lucchi_pp"


def _check(res, out: Path) -> None:
    assert res.iterations > 0
    assert set(res.metrics) == {"4 in / 4 out", "none"}
    for m in res.metrics.values():
        assert 0.0 <= m["f1"] <= 1.0 or m["f1"] != m["f1"]  # NaN when nothing is predicted
    assert (out / "run" / "curves.png").stat().st_size > 0
    saved = json.loads((out / "result.json").read_text())
    assert saved["iterations"] == res.iterations


# Seed 0, 30 iterations (the time budget is not reached): measured on 2 CPU cores (1 or 2 torch
# threads give the same weights) F1 0.633 with the 4/4 exclusion zone, 0.682 without (2026-12-03, real raw
# context around the training ROI, loss only inside it; grey padding gave 0.693 / 0.755 at 20 iterations);
# baselines on the same held-out data: every voxel foreground 0.25, thresholding raw at the foreground
# fraction 0.52. A few-iteration run at lr 1e-3 is noisy (25 iterations: 0.548 / 0.682), so the floors sit
# above the baselines, not near the measurement; they fail on broken training.
DEMO_ITERATIONS = 30
F1_FLOOR = {"4 in / 4 out": 0.56, "none": 0.62}


def test_synthetic_demo_learns_the_held_out_data(tmp_path):
    out = tmp_path / "demo"
    calls: list[tuple[str, int, int]] = []
    res = run_demo(out, minutes=10, iterations=DEMO_ITERATIONS, log=lambda s: None, progress=lambda *c: calls.append(c))
    _check(res, out)
    assert res.iterations == DEMO_ITERATIONS
    for name, floor in F1_FLOOR.items():
        assert res.metrics[name]["f1"] >= floor, (name, res.metrics)
    prob = open_volume(str(res.prediction / "probability"))
    assert prob.shape == (32, 160, 160) and prob.voxel_size == (5.0, 5.0, 5.0)
    assert ("train (seconds of the 10 min budget)", 0, 600) in calls  # the budget, not 1,000,000 iterations
    with pytest.raises(InputError, match="not empty"):
        run_demo(out, minutes=0.1, log=lambda s: None)


@pytest.mark.skipif(
    not (LUCCHI / "train_image.tif").is_file(), reason=f"real data not found at {LUCCHI} (../shared/data/lucchi_pp)"
)
def test_real_data_demo_trains_at_10nm_and_scores_at_5nm(tmp_path):
    out = tmp_path / "demo"
    res = run_demo(out, minutes=0.05, data=LUCCHI, log=lambda s: None)
    _check(res, out)
    assert open_volume(str(out / "data" / "raw_10nm.zarr")).voxel_size == (10.0, 10.0, 10.0)
    prob = open_volume(str(res.prediction / "probability"))
    assert prob.shape == (40, 768, 1024) and prob.voxel_size == (5.0, 5.0, 5.0)
    assert prob.attrs["resampled"]["to_model"]["scale"] == [2, 2, 2]
