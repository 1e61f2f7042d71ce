"""Experiment grids: cells from axes and overrides, training + checkpoint-averaged scores,
one table/CSV/plot, finished cells skipped on a rerun, settings changes refused."""

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from organet.cli import app
from organet.demo.phantom import make_phantom
from organet.errors import ConfigError
from organet.experiment import load_grid, run_grid, write_results
from organet.model.checkpoint import load_checkpoint
from organet.volumes import write_ome_zarr


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("griddata")
    ph = make_phantom((40, 64, 64), seed=5)
    for name, arr in (("raw", ph.raw), ("labels", ph.labels), ("raw_dark", (ph.raw // 2).astype(np.uint8))):
        with write_ome_zarr(d / f"{name}.zarr") as w:
            w.create_image(None, arr.shape, arr.dtype, ph.voxel_size, chunks=(20, 32, 32)).write(
                (slice(None),) * 3, arr
            )
    base = {
        "organelle": "mito",
        "model": {"num_fmaps": 2, "downsample_factors": [[2, 2, 2], [2, 2, 2]], "input_shape": [52, 52, 52]},
        "data": {"train": [{"raw": "raw.zarr", "labels": "labels.zarr", "roi_vox": "0:28,:,:"}]},
        "optimizer": {"lr": 1e-3},
        "training": {"iterations": 4, "checkpoint_every": 1, "log_every": 1},
        "validation": {"tile_input_shape": [56, 56, 56]},
    }
    (d / "base.yaml").write_text(yaml.safe_dump(base))
    return d


def _grid(d, **extra):
    g = {
        "name": "tiny grid",
        "base": "base.yaml",
        "output_dir": "out",
        "axes": {
            "contrast": {
                "plain": {},
                "dark": {"data.train.0.raw": "raw_dark.zarr", "evaluation.input": "raw_dark.zarr"},
            },
            "seed": [0, 1],
        },
        "evaluation": {"input": "raw.zarr", "truth": "labels.zarr", "roi_vox": "28:40,:,:", "last": 3},
        **extra,
    }
    p = d / "grid.yaml"
    p.write_text(yaml.safe_dump(g, sort_keys=False))
    return p


def test_cells_from_axes_and_overrides(data):
    spec, cells = load_grid(_grid(data, overrides={"training.iterations": 3}))
    assert [c.name for c in cells] == [
        "contrast-plain_seed-0",
        "contrast-plain_seed-1",
        "contrast-dark_seed-0",
        "contrast-dark_seed-1",
    ]
    dark = cells[2]
    assert dark.coords == {"contrast": "dark", "seed": "0"}
    assert dark.config.data.train[0].raw == str(data / "raw_dark.zarr")
    assert dark.evaluation.input == str(data / "raw_dark.zarr")
    assert cells[0].evaluation.input == str(data / "raw.zarr")
    assert cells[1].config.seed == 1 and cells[0].config.seed == 0
    assert all(c.config.training.iterations == 3 for c in cells)
    assert dark.config.output_dir == str(data / "out" / "cells" / "contrast-dark_seed-0" / "run")
    assert len({c.fingerprint() for c in cells}) == 4


def test_bad_grids_name_the_cell_and_key(data):
    with pytest.raises(ConfigError, match=r"cell contrast-plain_seed-0: .*training\.iterations"):
        load_grid(_grid(data, overrides={"training.iterations": -1}))
    with pytest.raises(ConfigError, match=r"data\.train\.0.*no item '3'|has no item '3'"):
        load_grid(_grid(data, overrides={"data.train.3.raw": "x.zarr"}))
    with pytest.raises(ConfigError, match="axes"):
        load_grid(_grid(data, axes={}))


def test_grid_runs_scores_skips_and_refuses_changes(data, monkeypatch):
    path = _grid(data)
    _, cells = load_grid(path)
    results = run_grid(cells, log=lambda s: None)
    assert [r.iterations for r in results] == [[2, 3, 4]] * 4
    for r in results:
        f1s = np.array([row["f1"] for row in r.per_checkpoint])
        assert r.mean["f1"] == pytest.approx(f1s.mean())
        assert r.sd["f1"] == pytest.approx(f1s.std(ddof=1))
    # the seed axis reaches the training: other seed, other weights
    w0, w1 = (load_checkpoint(c.run_dir / "checkpoints" / "iter_0000004.pt").state_dict for c in cells[:2])
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    out = data / "out"
    write_results(results, out, "tiny grid")
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["contrast"], r["seed"]) for r in rows] == [("plain", "0"), ("plain", "1"), ("dark", "0"), ("dark", "1")]
    assert float(rows[2]["f1_mean"]) == pytest.approx(results[2].mean["f1"], abs=1e-6)
    md = (out / "results.md").read_text()
    assert "Across seeds" in md and "| dark | 2 |" in md
    assert (out / "results.png").stat().st_size > 5_000

    # rerun: nothing is trained or scored again
    import organet.train.loop as loop

    monkeypatch.setattr(loop, "train", lambda *a, **k: pytest.fail("a finished cell was trained again"))
    again = run_grid(load_grid(path)[1], log=lambda s: None)
    assert json.dumps([r.to_dict() for r in again]) == json.dumps([r.to_dict() for r in results])

    # a changed grid writing into the same folder is refused, naming the cell
    _, changed = load_grid(_grid(data, overrides={"training.iterations": 5}))
    with pytest.raises(ConfigError, match="contrast-plain_seed-0 .* other settings"):
        run_grid(changed, log=lambda s: None)


def test_cli_dry_run_lists_cells(data):
    res = CliRunner().invoke(app, ["experiment", str(_grid(data)), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "4 cells" in res.output and "dark" in res.output


def test_interrupted_cell_resumes_training(data, tmp_path):
    g = _grid(data, output_dir=str(tmp_path / "o"), axes={"seed": [3]})
    _, (cell,) = load_grid(g)
    from organet.train.loop import train

    cfg = cell.config.model_copy(deep=True)
    cfg.training.iterations = 2
    train(cfg, log=lambda s: None)  # a cell killed after 2 of 4 iterations
    (r,) = run_grid([cell], log=lambda s: None)
    assert r.iterations == [2, 3, 4]
    rows = [json.loads(line) for line in (cell.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in rows if x["kind"] == "train"] == [1, 2, 3, 4]
