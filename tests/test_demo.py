"""``organet demo``: the whole loop on the synthetic default and on real data (lucchi_pp layout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from organet.config import ConfigError
from organet.demo.run import run_demo
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


def test_synthetic_demo_runs_the_whole_loop(tmp_path):
    out = tmp_path / "demo"
    res = run_demo(out, minutes=0.1, log=lambda s: None)
    _check(res, out)
    prob = open_volume(str(res.prediction / "probability"))
    assert prob.shape == (32, 160, 160) and prob.voxel_size == (5.0, 5.0, 5.0)
    with pytest.raises(ConfigError, match="not empty"):
        run_demo(out, minutes=0.1, log=lambda s: None)


@pytest.mark.skipif(not (LUCCHI / "train_image.tif").is_file(),
                    reason=f"real data not found at {LUCCHI} (../shared/data/lucchi_pp)")
def test_real_data_demo_trains_at_10nm_and_scores_at_5nm(tmp_path):
    out = tmp_path / "demo"
    res = run_demo(out, minutes=0.05, data=LUCCHI, log=lambda s: None)
    _check(res, out)
    assert open_volume(str(out / "data" / "raw_10nm.zarr")).voxel_size == (10.0, 10.0, 10.0)
    prob = open_volume(str(res.prediction / "probability"))
    assert prob.shape == (40, 768, 1024) and prob.voxel_size == (5.0, 5.0, 5.0)
    assert prob.attrs["resampled"]["factor"] == [2, 2, 2]
