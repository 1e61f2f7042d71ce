"""The training data path: batches that depend on (seed, iteration) alone, made in a
background thread while a step computes, with the wait for data measured."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from organet.config import parse_config
from organet.demo.phantom import make_phantom
from organet.errors import ConfigError
from organet.model.checkpoint import load_checkpoint
from organet.train.loop import BatchPrefetcher, Trainer, train
from organet.volumes import write_ome_zarr


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    ph = make_phantom((36, 60, 60), seed=5)
    paths = {}
    for name, arr in (("raw", ph.raw), ("labels", ph.labels)):
        with write_ome_zarr(d / f"{name}.zarr") as w:
            w.create_image(None, arr.shape, arr.dtype, ph.voxel_size, chunks=(18, 30, 30)).write(..., arr)
        paths[name] = str(d / f"{name}.zarr")
    return paths


def _cfg(data, out, iterations=4, **training):
    spec = {"raw": data["raw"], "labels": data["labels"]}
    return parse_config(
        {
            "output_dir": str(out),
            "seed": 7,
            "model": {"num_fmaps": 2, "downsample_factors": [[2, 2, 2], [2, 2, 2]], "input_shape": [52, 52, 52]},
            "data": {"train": [{**spec, "roi_vox": "0:36,:,:"}]},
            "optimizer": {"lr": 1e-3},
            "training": {"iterations": iterations, "checkpoint_every": 2, "log_every": 1, **training},
            "validation": {"tile_input_shape": [56, 56, 56]},
        }
    )


def test_batches_depend_on_seed_and_iteration_alone(data, tmp_path):
    a = Trainer(_cfg(data, tmp_path / "a"), log=lambda s: None)
    b = Trainer(_cfg(data, tmp_path / "b"), log=lambda s: None)
    b.batch_arrays(5)  # drawing other batches first changes nothing
    for x, y in zip(a.batch_arrays(2), b.batch_arrays(2)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.batch_arrays(2)[0], a.batch_arrays(3)[0])


def test_prefetching_trains_the_same_weights_and_reports_the_wait(data, tmp_path):
    inline = train(_cfg(data, tmp_path / "inline", data_workers=0), log=lambda s: None)
    ahead = train(_cfg(data, tmp_path / "ahead", data_workers=1), log=lambda s: None)
    three = train(_cfg(data, tmp_path / "three", data_workers=3), log=lambda s: None)
    wa = load_checkpoint(inline.last_checkpoint).state_dict
    for other in (ahead, three):
        wb = load_checkpoint(other.last_checkpoint).state_dict
        for k in wa:
            np.testing.assert_array_equal(wa[k].numpy(), wb[k].numpy(), err_msg=k)
    for res in (inline, ahead, three):
        assert res.compute_s > 0 and res.data_wait_s >= 0
        assert 0 <= res.data_wait_fraction <= 1
    rows = [r for r in (tmp_path / "ahead" / "metrics.jsonl").read_text().splitlines() if '"train"' in r]
    assert rows and all('"data_s"' in r and '"compute_s"' in r for r in rows)


def test_a_resumed_run_sees_the_batches_an_uninterrupted_one_saw(data, tmp_path):
    whole = train(_cfg(data, tmp_path / "whole", iterations=4), log=lambda s: None)
    train(_cfg(data, tmp_path / "cut", iterations=2), log=lambda s: None)
    resumed = train(_cfg(data, tmp_path / "cut", iterations=4), resume=True, log=lambda s: None)
    wa = load_checkpoint(whole.last_checkpoint).state_dict
    wb = load_checkpoint(resumed.last_checkpoint).state_dict
    for k in wa:
        np.testing.assert_allclose(wa[k].numpy(), wb[k].numpy(), rtol=0, atol=1e-6, err_msg=k)


def test_prefetcher_runs_ahead_in_order_and_passes_errors_on():
    made: list[int] = []
    started = threading.Event()

    def make(i: int) -> int:
        started.set()
        if i == 3:
            raise RuntimeError("cannot read block 3")
        made.append(i)
        return i * 10

    p = BatchPrefetcher(make, first=1, depth=2)
    started.wait(5)
    assert p.get(1) == 10
    deadline = time.time() + 5
    while 2 not in made and time.time() < deadline:
        time.sleep(0.01)
    assert 2 in made  # made before it was asked for
    assert p.get(2) == 20
    with pytest.raises(RuntimeError, match="cannot read block 3"):
        p.get(3)
    with pytest.raises(ValueError, match="was not prefetched"):
        p.get(9)
    p.close()


def test_unknown_precision_and_negative_data_workers_are_config_errors(data, tmp_path):
    raw = _cfg(data, tmp_path / "x").model_dump()
    raw["training"]["precision"] = "fp8"
    with pytest.raises(ConfigError, match="precision"):
        parse_config(raw)
    raw["training"]["precision"] = "fp32"
    raw["training"]["data_workers"] = -1
    with pytest.raises(ConfigError, match="data_workers"):
        parse_config(raw)


def test_several_workers_make_batches_at_once_and_in_order():
    """With 3 workers, batches 1-3 are made concurrently; get() still returns them in order."""
    barrier = threading.Barrier(3, timeout=10)

    def make(i: int) -> int:
        if i <= 3:
            barrier.wait()  # times out (BrokenBarrierError) unless three run at once
        return i * 10

    p = BatchPrefetcher(make, first=1, workers=3)
    assert [p.get(i) for i in range(1, 7)] == [10, 20, 30, 40, 50, 60]
    p.close()
