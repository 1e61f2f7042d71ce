"""``organet report`` on a tiny training run and a tiny prediction with truth."""

import json
import re
import shlex

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from organet.analyze.instances import COLUMNS
from organet.cli import app
from organet.config import parse_config
from organet.demo.phantom import make_phantom
from organet.errors import InputError
from organet.evaluate import evaluate_arrays, evaluate_checkpoints, resolve_exclusion, select_checkpoints
from organet.predict import Predictor, predict_volume
from organet.report import build_report, files_dir
from organet.report.slices import choose_level, read_planes
from organet.train.loop import train
from organet.volumes import Roi, open_volume, write_ome_zarr

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"
TILE = (108, 108, 108)  # one tile covers a 12 x 64 x 64 region
ROI = Roi((28, 0, 0), (12, 64, 64))  # the validation region: predicted and scored


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A 6-iteration run (checkpoints 3 and 6, one validation ROI), the checkpoint-averaged
    evaluation of both checkpoints, and a prediction of the whole phantom by the last one."""
    d = tmp_path_factory.mktemp("report")
    ph = make_phantom((40, 64, 64), seed=3)
    paths = {}
    for name, arr in (("raw", ph.raw), ("labels", ph.labels)):
        with write_ome_zarr(d / f"{name}.zarr") as w:
            w.create_image(None, arr.shape, arr.dtype, ph.voxel_size, chunks=(20, 32, 32)).write(
                (slice(None),) * 3, arr
            )
        paths[name] = str(d / f"{name}.zarr")
    spec = {"raw": paths["raw"], "labels": paths["labels"]}
    cfg = parse_config(
        {
            "name": "tiny",
            "output_dir": str(d / "run"),
            "seed": 1,
            "model": {"num_fmaps": 2, "downsample_factors": [[2, 2, 2], [2, 2, 2]], "input_shape": [52, 52, 52]},
            "data": {
                "train": [{**spec, "roi_vox": "0:28,:,:"}],
                "validation": [{**spec, "name": "val", "roi_vox": "28:40,:,:"}],
            },
            "training": {"iterations": 6, "checkpoint_every": 3, "log_every": 1},
            "validation": {"tile_input_shape": list(TILE)},
        }
    )
    train(cfg, log=lambda s: None)
    run = d / "run"
    ckpts = select_checkpoints(run)
    evaluate_checkpoints(ckpts, paths["raw"], paths["labels"], output_dir=run / "eval_test", roi=ROI, tile=TILE)
    pred = Predictor.from_checkpoint(ckpts[-1], tile=TILE)
    predict_volume(pred, paths["raw"], d / "pred.zarr", roi=ROI, chunks=(4, 16, 16), block_shape=ROI.shape)
    return {"dir": d, "run": run, "pred": d / "pred.zarr", "ph": ph, **paths}


def _self_contained(page: str) -> None:
    assert not re.search(r"(src|href)\s*=\s*['\"]?\s*https?://", page, re.I)
    srcs = re.findall(r"src\s*=\s*'([^']*)'", page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in page.lower()
    hrefs = re.findall(r"href\s*=\s*'([^']*)'", page)
    assert all(h.startswith("#") for h in hrefs)


def _commands(page: str) -> list[str]:
    import html

    return [html.unescape(c) for c in re.findall(r"<pre><code>(.*?)</code></pre>", page, re.S)]


def test_training_report_holds_the_metrics_and_commands(work, tmp_path):
    run = work["run"]
    res = build_report(run, tmp_path / "r.html")
    page = res.output.read_text()
    _self_contained(page)
    assert res.kind == "training" and len(re.findall("<img ", page)) == len(res.images) == 2
    for png in res.images:
        assert png.parent == files_dir(tmp_path / "r.html") and png.read_bytes()[:8] == PNG
    assert {p.name for p in res.images} == {"curves.png", "eval_test_f1_vs_iteration.png"}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["kind"] == "validation"]
    assert [r["iteration"] for r in val] == [3, 6]
    for r in val:  # every validation row of the metrics file is in the table
        cells = [f"{r[k]:.4f}" for k in ("f1", "f1_no_exclusion", "precision", "recall", "iou", "loss")]
        assert re.search(
            rf"<td class=num>{r['iteration']}</td><td>val</td>" + "".join(f"<td class=num>{c}</td>" for c in cells),
            page,
        ), r
    summary = json.loads((run / "eval_test" / "summary.json").read_text())
    assert f"{summary['mean']['f1']:.4f} ± {summary['sd']['f1']:.4f}" in page
    cmds = _commands(page)
    assert f"organet train --resume {run}" in cmds and f"organet train {run / 'config.yaml'}" in cmds
    assert "tiny" in page and "data.json" in page and work["raw"] in page  # the data record


def test_the_reported_evaluate_command_reuses_every_stored_result(work, tmp_path):
    page = build_report(work["run"], tmp_path / "r.html").output.read_text()
    cmd = next(c for c in _commands(page) if c.startswith("organet evaluate --checkpoints"))
    r = runner.invoke(app, shlex.split(cmd)[1:])
    assert r.exit_code == 0, r.output
    assert "0 checkpoints computed, 2 reused" in r.output


def test_prediction_report_with_truth_scores_like_evaluate(work, tmp_path):
    res = build_report(work["pred"], tmp_path / "p.html", truth=work["labels"])
    page = res.output.read_text()
    _self_contained(page)
    names = {p.name for p in res.images}
    assert names == {"plane_z.png", "plane_y.png", "plane_x.png", "threshold_sweep.png"}
    assert all(p.read_bytes()[:8] == PNG for p in res.images)
    # the F1 at the mask's threshold, recomputed here on whole arrays
    prob = open_volume(work["pred"] / "probability").read().astype(np.float64) / 255
    ez = resolve_exclusion(None, "mito")
    c = evaluate_arrays(prob, work["ph"].labels[ROI.slices()], None, ez, (0.5,))[0.5]
    assert re.search(rf"F1 at the mask&#x27;s threshold 0.5</th><td>{c.f1:.6g}</td>", page), c.f1
    assert f"<td class=num>{c.tp}</td><td class=num>{c.fp}</td><td class=num>{c.fn}</td>" in page
    for key in ("model voxel size", "tile (network input, voxels)", "108 × 108 × 108", "precision", "fp32"):
        assert key in page
    cmds = _commands(page)
    assert any(c.startswith(f"organet evaluate --pred {work['pred']}/probability") for c in cmds)
    predict = next(c for c in cmds if c.startswith("organet predict"))
    r = runner.invoke(app, shlex.split(predict)[1:])  # the command of this very run: nothing to do
    assert r.exit_code == 0 and "already complete" in r.output, (predict, r.output)


def test_planes_read_the_level_that_fits_and_the_chosen_point(work):
    pred = work["pred"]
    assert choose_level(pred / "probability", 1024) == 0
    level = choose_level(pred / "probability", 40)
    s_l = open_volume(pred / "probability" / f"s{level}")
    assert level > 0 and max(s_l.shape) <= 40
    box = open_volume(pred / "probability").bounds_nm
    raw = open_volume(work["raw"]).crop_nm(*box)
    planes = read_planes(pred, (5, 10, 60), raw=raw, truth=open_volume(work["labels"]).crop_nm(*box), max_px=40)
    z, y, x = planes
    assert z.probability.shape == z.raw.shape == z.truth.shape == (s_l.shape[1], s_l.shape[2])
    assert x.probability.shape == x.mask.shape == (s_l.shape[0], s_l.shape[1])
    f = 2**level
    assert np.array_equal(z.probability * 255, s_l.read()[5 // f].astype(np.float32))
    # raw: the full-resolution plane z = 5, block means of f x f
    assert z.raw[0, 0] == pytest.approx(raw.read()[5, :f, :f].mean())
    assert z.truth[0, 0] == work["ph"].labels[ROI.offset[0] + 5, :f, :f].any()
    with pytest.raises(InputError, match="outside the predicted ROI"):
        build_report(pred, work["dir"] / "x.html", point=(40, 0, 0))


def test_instances_histograms(work, tmp_path):
    rng = np.random.default_rng(0)
    table = pd.DataFrame({c: rng.uniform(1, 1000, 12) for c in COLUMNS})
    table["id"] = np.arange(1, 13)
    folder = tmp_path / "inst"
    folder.mkdir()
    table.to_csv(folder / "objects.csv", index=False)
    res = build_report(work["pred"], tmp_path / "i.html", instances=folder)
    page = res.output.read_text()
    assert "Objects" in res.sections and "objects.csv: 12 objects" in page
    assert (files_dir(tmp_path / "i.html") / "hist_objects.png").read_bytes()[:8] == PNG
    assert f"<td>volume_nm3</td><td class=num>12</td><td class=num>{table.volume_nm3.min():.4f}</td>" in page
    assert "<td>id</td>" not in page and "bbox_z0_vox</td>" not in page


def test_cli_writes_the_report_and_rejects_bad_targets(work, tmp_path):
    out = tmp_path / "cli.html"
    r = invoke("report", work["run"], "--output", out)
    assert r.exit_code == 0, r.output
    assert out.is_file() and "training report" in r.output and "2 PNGs" in r.output
    (tmp_path / "empty").mkdir()
    for bad, words in (
        (tmp_path / "empty", "is not a training run folder"),
        (tmp_path / "missing", "does not exist"),
    ):
        r = invoke("report", bad, "--output", tmp_path / "bad.html")
        assert r.exit_code == 2, r.output
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "error:" in lines[0] and str(bad) in r.output.replace("\n", ""), r.output
        assert words in r.output.replace("\n", " ")
    r = invoke("report", work["run"], "--truth", work["labels"], "--output", tmp_path / "t.html")
    assert r.exit_code == 2 and "--truth" in r.output
