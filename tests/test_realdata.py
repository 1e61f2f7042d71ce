"""Checks on the real Lucchi++ FIB-SEM volume (skipped when ../shared/data is absent)."""

from pathlib import Path

import numpy as np
import pytest

from organet.config import RoiSpec, SamplingConfig
from organet.train.sampling import BlockSampler, load_roi

LUCCHI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lucchi_pp"
pytestmark = pytest.mark.skipif(
    not (LUCCHI / "train_image.tif").is_file(), reason=f"real data not found at {LUCCHI} (../shared/data/lucchi_pp)"
)


def test_lucchi_roi_loads_binary_and_sampler_enriches_foreground():
    spec = RoiSpec(
        raw=str(LUCCHI / "train_image.tif"),
        labels=str(LUCCHI / "train_mito.tif"),
        voxel_size=(5, 5, 5),
        roi_vox="0:40,:,:",
    )
    roi = load_roi(spec, cache_max_gib=1.0, index=0)
    assert roi.raw.shape == (40, 768, 1024) and roi.raw.dtype == np.uint8
    assert set(np.unique(roi.labels)) == {0, 1}
    natural = float(roi.labels.mean())
    assert 0.02 < natural < 0.2  # the README states 7 % over the whole volume
    rng = np.random.default_rng(0)
    s = BlockSampler([roi], (30, 30, 30), (30, 30, 30), SamplingConfig())
    draws = [s.draw(rng) for _ in range(300)]
    s0 = BlockSampler([roi], (30, 30, 30), (30, 30, 30), SamplingConfig(reject_probability=0))
    draws0 = [s0.draw(rng) for _ in range(300)]
    empty = np.mean([d.foreground < 0.05 for d in draws])
    empty0 = np.mean([d.foreground < 0.05 for d in draws0])
    # rejecting 90 % of near-empty blocks: their share drops to q*0.1/(q*0.1 + 1 - q)
    expected = empty0 * 0.1 / (empty0 * 0.1 + 1 - empty0)
    assert empty0 > 0.4 and abs(empty - expected) < 0.08, (empty, expected, empty0)
