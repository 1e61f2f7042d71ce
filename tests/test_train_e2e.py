"""End-to-end training on a tiny phantom: checkpoints, metrics, resume, fine-tuning."""

import json

import numpy as np
import pytest
import torch

from organet.config import ConfigError, parse_config
from organet.demo.phantom import make_phantom
from organet.model.checkpoint import load_checkpoint
from organet.train.loop import Trainer, train
from organet.volumes import write_ome_zarr


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    ph = make_phantom((40, 64, 64), seed=3)
    paths = {}
    for name, arr in (("raw", ph.raw), ("labels", ph.labels)):
        with write_ome_zarr(d / f"{name}.zarr") as w:
            w.create_image(None, arr.shape, arr.dtype, ph.voxel_size, chunks=(20, 32, 32)).write(
                (slice(None),) * 3, arr
            )
        paths[name] = str(d / f"{name}.zarr")
    return paths


def _cfg(data, out, iterations=6, **training):
    spec = {"raw": data["raw"], "labels": data["labels"]}
    return parse_config(
        {
            "output_dir": str(out),
            "seed": 1,
            "model": {"num_fmaps": 2, "downsample_factors": [[2, 2, 2], [2, 2, 2]], "input_shape": [52, 52, 52]},
            "data": {
                "train": [{**spec, "roi_vox": "0:28,:,:"}],
                "validation": [{**spec, "name": "val", "roi_vox": "28:40,:,:"}],
            },
            "optimizer": {"lr": 1e-3},
            "training": {"iterations": iterations, "checkpoint_every": 3, "log_every": 1, **training},
            "validation": {"tile_input_shape": [56, 56, 56]},
        }
    )


def _weights(path):
    return load_checkpoint(path).state_dict


def test_training_writes_checkpoints_metrics_and_plot(data, tmp_path):
    res = train(_cfg(data, tmp_path / "run"), log=lambda s: None)
    assert res.iteration == 6
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("iter_*.pt"))
    assert [c.name for c in ckpts] == ["iter_0000003.pt", "iter_0000006.pt"]
    c = load_checkpoint(ckpts[-1])
    assert c.iteration == 6 and c.voxel_size == (5.0, 5.0, 5.0) and c.organelle == "mito"
    assert c.training_config["model"]["num_fmaps"] == 2 and "val" in c.metrics
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    val = [r for r in rows if r["kind"] == "validation"]
    assert [r["iteration"] for r in val] == [3, 6]
    assert all(0 <= r["f1"] <= 1 and r["loss"] > 0 and r["exclusion_zone"] == [4, 4] for r in val)
    assert (tmp_path / "run" / "curves.png").stat().st_size > 10_000
    assert list((tmp_path / "run" / "tensorboard").iterdir())
    # a second fresh run into the same folder is refused
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(_cfg(data, tmp_path / "run"), log=lambda s: None)


def test_resume_continues_iterations_and_equals_uninterrupted_run(data, tmp_path):
    train(_cfg(data, tmp_path / "straight"), log=lambda s: None)
    train(_cfg(data, tmp_path / "split", iterations=3), log=lambda s: None)
    # simulate a crash after iteration 4: its metrics row exists but no checkpoint
    with open(tmp_path / "split" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "iteration": 4, "loss": 9.9}) + "\n")
    res = train(_cfg(data, tmp_path / "split", iterations=6), resume=True, log=lambda s: None)
    assert res.iteration == 6
    a = _weights(tmp_path / "straight" / "checkpoints" / "iter_0000006.pt")
    b = _weights(tmp_path / "split" / "checkpoints" / "iter_0000006.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(l) for l in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    train_its = [r["iteration"] for r in rows if r["kind"] == "train"]
    assert train_its == [1, 2, 3, 4, 5, 6] and 9.9 not in [r["loss"] for r in rows]
    straight = [json.loads(l) for l in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if r["kind"] == "train"] == pytest.approx(
        [r["loss"] for r in straight if r["kind"] == "train"], rel=1e-6
    )


def test_same_seed_same_weights(data, tmp_path):
    train(_cfg(data, tmp_path / "a", iterations=3), log=lambda s: None)
    train(_cfg(data, tmp_path / "b", iterations=3), log=lambda s: None)
    a, b = (_weights(tmp_path / x / "checkpoints" / "iter_0000003.pt") for x in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fine_tune_starts_from_checkpoint_and_checks_architecture(data, tmp_path):
    train(_cfg(data, tmp_path / "base", iterations=3), log=lambda s: None)
    base = tmp_path / "base" / "checkpoints" / "iter_0000003.pt"
    t = Trainer(_cfg(data, tmp_path / "ft", iterations=3), init_from=base, log=lambda s: None)
    w = _weights(base)
    assert all(torch.equal(t.model.state_dict()[k], w[k]) for k in w) and t.iteration == 0
    t.run()
    assert load_checkpoint(tmp_path / "ft" / "checkpoints" / "iter_0000003.pt").training_config["init_from"] == str(
        base
    )
    other = _cfg(data, tmp_path / "ft2").model_dump()
    other["model"]["num_fmaps"] = 3
    from organet.model.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="another architecture"):
        Trainer(parse_config(other), init_from=base, log=lambda s: None)


def test_non_binary_labels_and_shape_mismatch_are_clear_errors(data, tmp_path):
    bad = tmp_path / "bad.zarr"
    with write_ome_zarr(bad) as w:
        w.create_image(None, (40, 64, 64), np.uint8, (5, 5, 5)).write(
            (slice(None),) * 3, np.full((40, 64, 64), 2, np.uint8)
        )
    cfg = _cfg(data, tmp_path / "x").model_dump()
    cfg["data"]["train"][0]["labels"] = str(bad)
    with pytest.raises(ConfigError, match="not binary"):
        Trainer(parse_config(cfg), log=lambda s: None)
    empty = tmp_path / "empty.zarr"
    with write_ome_zarr(empty) as w:
        w.create_image(None, (40, 64, 64), np.uint8, (5, 5, 5)).write(
            (slice(None),) * 3, np.zeros((40, 64, 64), np.uint8)
        )
    cfg["data"]["train"][0]["labels"] = str(empty)
    with pytest.raises(ConfigError, match=r"training labels \(train0\) contain no foreground"):
        Trainer(parse_config(cfg), log=lambda s: None)
    small = tmp_path / "small.zarr"
    with write_ome_zarr(small) as w:
        w.create_image(None, (40, 64, 60), np.uint8, (5, 5, 5))
    cfg["data"]["train"][0]["labels"] = str(small)
    with pytest.raises(ConfigError, match="shape"):
        Trainer(parse_config(cfg), log=lambda s: None)


def test_progress_reports_iterations_or_the_time_budget(data, tmp_path):
    from organet.train.loop import budget_stage

    calls: list[tuple[str, int, int]] = []
    lines: list[str] = []
    train(_cfg(data, tmp_path / "it", iterations=4), progress=lambda *c: calls.append(c), log=lines.append)
    assert calls[0] == ("train", 0, 4) and {c[0] for c in calls} == {"train"}
    assert sum(c[1] for c in calls) == 4 and all(c[2] == 4 for c in calls)
    # a time budget: the stage counts seconds of the budget, not iterations of a huge limit
    calls.clear()
    res = train(
        _cfg(data, tmp_path / "budget", iterations=1_000_000, max_minutes=0.04, checkpoint_every=1000),
        progress=lambda *c: calls.append(c),
        log=lines.append,
    )
    stage = budget_stage(0.04)
    assert stage == "train (seconds of the 0.04 min budget)" and calls[0] == (stage, 0, 3)
    assert {c[0] for c in calls} == {stage} and sum(c[1] for c in calls) == 3
    assert 0 < res.iteration < 1_000_000 and any("stopping after 0.04 min" in ln for ln in lines)
