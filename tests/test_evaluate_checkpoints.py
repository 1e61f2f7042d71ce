"""Checkpoint-averaged evaluation (``organet evaluate --checkpoints``) and organelles as settings:
per-checkpoint scores equal ``organet evaluate`` of each checkpoint's prediction, mean and
sample SD, selection, resume without recomputation, refusals, the CLI outputs, and the
organelle's default exclusion zone in configs, checkpoints and commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tests.helpers import spread_unet
from typer.testing import CliRunner

import organet.evaluate.checkpoints as ck_module
import organet.predict
from organet.cli import app
from organet.config import parse_config
from organet.demo.phantom import make_phantom
from organet.errors import CheckpointError, ConfigError, IncompatibleError, InputError
from organet.evaluate import (
    EXCLUSION_ZONE_WIDTHS,
    evaluate_checkpoints,
    normalize_exclusion,
    resolve_exclusion,
    select_checkpoints,
)
from organet.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from organet.model.unet import UNetConfig
from organet.predict import predict_volume
from organet.preprocess import Normalization
from organet.volumes import Roi, write_ome_zarr

CFG = UNetConfig(num_fmaps=2, downsample_factors=((2, 2, 2),))
TILE = (34, 34, 34)
ITERATIONS = (100, 200, 300)
ROI = Roi((2, 4, 0), (16, 28, 32))
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def lively(seed: int) -> dict[str, torch.Tensor]:
    """Weights of a random network scaled up, so its probabilities span [0, 1]."""
    torch.manual_seed(seed)
    net = spread_unet(CFG)
    return net.state_dict()


def make_run(run_dir, organelle="mito", iterations=ITERATIONS, voxel_size=5.0):
    (run_dir / "checkpoints").mkdir(parents=True)
    for i, it in enumerate(iterations):
        vs = (voxel_size,) * 3
        ck = Checkpoint(CFG, TILE, vs, Normalization(), organelle, lively(i), iteration=it)
        save_checkpoint(ck, run_dir / "checkpoints" / f"iter_{it:07d}.pt")
    return run_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    ph = make_phantom((20, 32, 32), seed=3)
    for name, a in (("raw", ph.raw), ("truth", ph.labels.astype(np.uint8))):
        with write_ome_zarr(d / f"{name}.zarr") as w:
            w.create_image(None, a.shape, a.dtype, (5, 5, 5), (0, 0, 0), (16, 16, 16)).write(..., a)
    make_run(d / "run")
    return d


@pytest.fixture(scope="module")
def evaluated(data):
    paths = select_checkpoints(data / "run")
    res = evaluate_checkpoints(paths, data / "raw.zarr", data / "truth.zarr", roi=ROI, output_dir=data / "eval")
    return paths, res


# --------------------------------------------------------------------------- selection


def test_select_checkpoints(data, tmp_path):
    run = data / "run"
    its = lambda paths: [int(p.stem.split("_")[1]) for p in paths]  # noqa: E731
    assert its(select_checkpoints(run)) == [100, 200, 300]
    assert its(select_checkpoints(run, last=2)) == [200, 300]
    assert its(select_checkpoints(run, every=200)) == [200]
    assert its(select_checkpoints(run, every=100, last=2)) == [200, 300]
    assert its(select_checkpoints(run, iterations=[300, 100])) == [100, 300]
    with pytest.raises(InputError, match=r"last 5 checkpoints, but there are only 100, 200, 300 \(3 checkpoints\)"):
        select_checkpoints(run, last=5)
    with pytest.raises(InputError, match="no checkpoint at iteration 150; it has 100, 200, 300"):
        select_checkpoints(run, iterations=[100, 150])
    with pytest.raises(InputError, match="multiple of 7 iterations"):
        select_checkpoints(run, every=7)
    with pytest.raises(InputError, match="not both"):
        select_checkpoints(run, last=1, iterations=[100])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"has no checkpoints \(expected .*checkpoints/iter_\*\.pt"):
        select_checkpoints(tmp_path / "empty")
    with pytest.raises(InputError, match="does not exist"):
        select_checkpoints(tmp_path / "nope")


# --------------------------------------------------------------------------- scores


def test_each_checkpoint_scores_as_organet_evaluate_of_its_prediction(data, evaluated, tmp_path):
    paths, res = evaluated
    assert [r.iteration for r in res.rows] == list(ITERATIONS)
    assert res.organelle == "mito" and res.exclusion == (4, 4) and res.computed == 3
    for path, row in zip(paths, res.rows):
        out = tmp_path / f"{path.stem}.zarr"
        predict_volume(path, data / "raw.zarr", out, roi=ROI)
        r = invoke("evaluate", "--pred", out / "probability", "--truth", data / "truth.zarr", "--organelle", "mito",
                   "--json", tmp_path / f"{path.stem}.json")  # fmt: skip
        assert r.exit_code == 0, r.output
        ref = json.loads((tmp_path / f"{path.stem}.json").read_text())["counts"]
        assert (row.counts.tp, row.counts.fp, row.counts.fn, row.counts.tn) == (
            ref["tp"], ref["fp"], ref["fn"], ref["tn"]
        )  # fmt: skip
        assert row.metric("f1") == ref["f1"] and row.metric("precision") == ref["precision"]
        assert row.metric("recall") == ref["recall"] and row.metric("iou") == ref["iou"]
    f1 = np.array([r.metric("f1") for r in res.rows])
    assert len(set(f1.tolist())) == 3  # different weights, different scores: the SD is not trivially 0
    assert res.mean["f1"] == np.mean(f1) and res.sd["f1"] == np.std(f1, ddof=1)
    rec = np.array([r.metric("recall") for r in res.rows])
    assert res.mean["recall"] == np.mean(rec) and res.sd["recall"] == np.std(rec, ddof=1)

    out = data / "eval"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mean"]["f1"] == res.mean["f1"] and summary["sd"]["f1"] == res.sd["f1"]
    assert "ddof = 1" in summary["sd_definition"] and summary["exclusion"] == {"inner": 4, "outer": 4}
    assert [c["iteration"] for c in summary["checkpoints"]] == list(ITERATIONS)
    md = (out / "summary.md").read_text()
    assert "| 200 |" in md and "mean ± SD" in md and "ddof = 1" in md
    assert (out / "f1_vs_iteration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for it in ITERATIONS:
        assert (out / "pred" / f"iter_{it:07d}.zarr" / "probability").is_dir()
        assert json.loads((out / "results" / f"iter_{it:07d}.json").read_text())["iteration"] == it


def test_a_rerun_computes_nothing_and_other_exclusion_rescores_without_predicting(data, evaluated, monkeypatch):
    paths, first = evaluated
    calls = {"predict": [], "evaluate": 0}
    real_predict, real_evaluate = organet.predict.predict_volume, ck_module.evaluate_volumes

    def count_predict(*a, **kw):
        res = real_predict(*a, **kw)
        calls["predict"].append(res.already_complete)
        return res

    def count_evaluate(*a, **kw):
        calls["evaluate"] += 1
        return real_evaluate(*a, **kw)

    monkeypatch.setattr(organet.predict, "predict_volume", count_predict)
    monkeypatch.setattr(ck_module, "evaluate_volumes", count_evaluate)
    args = (paths, data / "raw.zarr", data / "truth.zarr")
    again = evaluate_checkpoints(*args, roi=ROI, output_dir=data / "eval")
    assert calls == {"predict": [], "evaluate": 0} and again.computed == 0
    assert again.rows == first.rows and again.mean == first.mean
    # another exclusion zone rescores the stored predictions: no tile is predicted again
    none = evaluate_checkpoints(*args, roi=ROI, exclusion=(0, 0), output_dir=data / "eval")
    assert calls == {"predict": [True, True, True], "evaluate": 3} and none.exclusion is None
    assert [r.counts for r in none.rows] != [r.counts for r in first.rows]
    evaluate_checkpoints(*args, roi=ROI, output_dir=data / "eval")  # and back: rescored again
    assert calls["evaluate"] == 6


def test_on_dask_with_the_roi_the_truth_covers_the_scores_are_the_same(data, evaluated, tmp_path):
    from distributed import Client, LocalCluster

    paths, first = evaluated
    part = make_phantom((20, 32, 32), seed=3).labels.astype(np.uint8)[ROI.slices()]
    with write_ome_zarr(tmp_path / "truth_roi.zarr") as w:  # a truth of the ROI only, placed by its offset (nm)
        w.create_image(None, part.shape, part.dtype, (5, 5, 5), (10, 20, 0), (16, 16, 16)).write(..., part)
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        res = evaluate_checkpoints(paths, data / "raw.zarr", tmp_path / "truth_roi.zarr", output_dir=tmp_path / "e",
                                   client=client)  # fmt: skip
    assert res.roi == ROI and res.computed == 3
    assert [r.counts for r in res.rows] == [r.counts for r in first.rows]


def test_checkpoints_must_agree(data, tmp_path):
    mito = data / "run" / "checkpoints" / "iter_0000100.pt"
    er = make_run(tmp_path / "er", organelle="er", iterations=(400,))
    with pytest.raises(IncompatibleError, match="organelle 'er' but .* is for 'mito'"):
        evaluate_checkpoints([mito, er / "checkpoints" / "iter_0000400.pt"], data / "raw.zarr", data / "truth.zarr",
                             output_dir=tmp_path / "o")  # fmt: skip
    coarse = make_run(tmp_path / "coarse", iterations=(500,), voxel_size=10.0)
    with pytest.raises(IncompatibleError, match=r"trained at \(10, 10, 10\) nm but .* at \(5, 5, 5\) nm"):
        evaluate_checkpoints([mito, coarse / "checkpoints" / "iter_0000500.pt"], data / "raw.zarr",
                             data / "truth.zarr", output_dir=tmp_path / "o")  # fmt: skip
    with pytest.raises(InputError, match="both of iteration 100"):
        evaluate_checkpoints([mito, mito], data / "raw.zarr", data / "truth.zarr", output_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()  # refused before anything was written


# --------------------------------------------------------------------------- command line


def test_cli_writes_table_json_png_with_the_organelles_exclusion(data, tmp_path):
    run = make_run(tmp_path / "run_np", organelle="nuclear_pore", iterations=(10, 20))
    assert load_checkpoint(run / "checkpoints" / "iter_0000010.pt").organelle == "np"
    r = invoke("evaluate", "--checkpoints", run, "--input", data / "raw.zarr", "--truth", data / "truth.zarr",
               "--roi-vox", "2:18,4:32,:", "--last", 2)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "SD" in r.output and "mean" in r.output and "ddof = 1" in r.output and "1 in / 1 out" in r.output
    (out,) = run.glob("eval_*")  # the default output folder
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exclusion"] == {"inner": 1, "outer": 1} and summary["organelle"] == "np"
    assert summary["roi_vox"] == {"offset": list(ROI.offset), "shape": list(ROI.shape)}
    assert [c["iteration"] for c in summary["checkpoints"]] == [10, 20]
    assert (out / "f1_vs_iteration.png").stat().st_size > 1000 and (out / "summary.md").is_file()
    r = invoke("evaluate", "--checkpoints", run, "--input", data / "raw.zarr", "--truth", data / "truth.zarr",
               "--roi-vox", "2:18,4:32,:", "--exclusion-zone", 2, 3, "--output", tmp_path / "ez")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ez" / "summary.json").read_text())["exclusion"] == {"inner": 2, "outer": 3}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pred", "{d}/truth.zarr", "--checkpoints", "{d}/run", "--input", "{d}/raw.zarr"], "not both"),
        (["--checkpoints", "{d}/run"], "needs --input"),
        ([], "give --pred PRED"),
        (["--pred", "{d}/truth.zarr", "--input", "{d}/raw.zarr"], "--input applies to --checkpoints"),
        (["--pred", "{d}/truth.zarr", "--last", "2"], "--last applies to --checkpoints"),
        (["--checkpoints", "{d}/run", "--input", "{d}/raw.zarr", "--sweep"], "--sweep applies to --pred"),
        (["--checkpoints", "{d}/run", "--input", "{d}/raw.zarr", "--iterations", "1x"], "whole numbers"),
        (["--checkpoints", "{d}/run", "--input", "{d}/raw.zarr", "--last", "4"], "only 100, 200, 300"),
        (["--pred", "{d}/truth.zarr", "--organelle", "mitochondira"], "did you mean 'mito'"),
    ],
)
def test_cli_modes_are_exclusive_with_clear_errors(data, args, message):
    r = invoke("evaluate", "--truth", data / "truth.zarr", *(a.format(d=data) for a in args))
    assert r.exit_code == 2 and "error:" in r.output and message in r.output, r.output
    assert "Traceback" not in r.output


# --------------------------------------------------------------------------- organelles as settings

BASE = {"data": {"train": [{"raw": "r.zarr", "labels": "l.zarr"}]}}


def test_unknown_organelle_in_a_config_names_key_value_valid_names_and_nearest():
    with pytest.raises(ConfigError) as e:
        parse_config({**BASE, "organelle": "banana"}, "exp.yaml")
    msg = str(e.value)
    assert msg.startswith("exp.yaml: organelle:") and "'banana'" in msg and "mito, golgi, er, np, ccp" in msg
    with pytest.raises(ConfigError, match="did you mean 'golgi'"):
        parse_config({**BASE, "organelle": "golgy"}, "exp.yaml")
    assert parse_config({**BASE, "organelle": "Mitochondria"}).organelle == "mito"


def test_validation_exclusion_defaults_to_the_organelle():
    assert resolve_exclusion(None, "np") == (1, 1) and resolve_exclusion(None, "er") == (2, 2)
    assert resolve_exclusion((3, 1), "np") == (3, 1) and resolve_exclusion((0, 0), "mito") is None
    assert resolve_exclusion(None, None) is None
    with pytest.raises(InputError, match="did you mean 'mito'"):
        resolve_exclusion(None, "mitochondira")
    cfg = parse_config({**BASE, "organelle": "nuclear_pores"})
    assert cfg.organelle == "np" and cfg.validation.exclusion_zone is None
    assert cfg.validation_exclusion_zone() == (1, 1)
    assert cfg.record()["validation"]["exclusion_zone"] == [1, 1]  # the run records what was used
    explicit = parse_config({**BASE, "organelle": "np", "validation": {"exclusion_zone": [2, 2]}})
    assert explicit.validation_exclusion_zone() == (2, 2)
    off = parse_config({**BASE, "validation": {"exclusion_zone": [0, 0]}})
    assert off.validation_exclusion_zone() is None and off.record()["validation"]["exclusion_zone"] == [0, 0]
    assert parse_config(off.record()).validation_exclusion_zone() is None  # a recorded config means the same
    with pytest.raises(ConfigError, match="validation.exclusion_zone: Value error, widths must be >= 0"):
        parse_config({**BASE, "validation": {"exclusion_zone": [-1, 2]}})


def test_exclusion_widths_come_from_the_organelles_and_aliases_still_work():
    assert dict(EXCLUSION_ZONE_WIDTHS) == {"mito": 4, "golgi": 2, "er": 2, "np": 1, "ccp": 2}
    assert normalize_exclusion("nuclear_pore") == (1, 1) and normalize_exclusion("coated_pit") == (2, 2)
    with pytest.raises(InputError, match="unknown organelle 'nucleolus'"):
        normalize_exclusion("nucleolus")


def test_checkpoints_store_the_canonical_organelle_and_old_long_forms_load(tmp_path):
    ck = Checkpoint(CFG, TILE, (5.0,) * 3, Normalization(), "mitochondria", lively(0))
    assert ck.organelle == "mito"
    d = ck.to_dict()
    for name, expected in (("nuclear_pore", "np"), ("coated_pits", "ccp")):
        torch.save({**d, "organelle": name}, tmp_path / f"{name}.pt")  # as an older organet wrote it
        assert load_checkpoint(tmp_path / f"{name}.pt").organelle == expected
    torch.save({**d, "organelle": "nucleus"}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt: organelle: unknown organelle 'nucleus'"):
        load_checkpoint(tmp_path / "bad.pt")
