"""Crashes: SIGKILL at random points, again and again, then resume.

Each pass is killed three times in a row (a real SIGKILL of the process, through the
``kill`` fault of ``ORGANET_TEST_FAULTS`` before a block drawn at random with a fixed
seed), and after every kill the ledger must list only blocks whose data is on disk;
the final rerun must give the same bytes (or result) as an uninterrupted run. Training
killed while writing a checkpoint must leave the previous one loadable and ``--resume``
must continue from it. ``benchmarks/crash_resume.py`` does the same with 10 kills.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage
from tests.test_resume import label_files
from typer.testing import CliRunner

from organet.blockwise.faults import ENV
from organet.cli import app
from organet.volumes import open_volume, write_ome_zarr

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("crash_resume", ROOT / "benchmarks" / "crash_resume.py")
assert _spec is not None and _spec.loader is not None
cr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cr)

runner = CliRunner()


def _env(faults: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env["OMP_NUM_THREADS"] = "1"
    if faults is not None:
        env[ENV] = str(faults)
    return env


def _kill_at(tmp: Path, k: int, stage: str, index: tuple[int, ...] | list[int]) -> Path:
    path = tmp / f"kill-{k}.json"
    spec = [{"stage": stage, "blocks": [list(index)], "times": 1, "action": "kill", "counter_dir": str(tmp / f"c{k}")}]
    path.write_text(json.dumps(spec))
    return path


def _points(rng: random.Random, order: list[tuple[str, tuple[int, ...]]], n: int) -> list[tuple[str, tuple]]:
    """``n`` distinct kill points in the order the run meets them (each later kill is still ahead)."""
    return [order[i] for i in sorted(rng.sample(range(1, len(order)), n))]


# --------------------------------------------------------------------------- prediction


def test_predict_killed_three_times_at_random_points_resumes_to_identical_bytes(tmp_path: Path) -> None:
    d = tmp_path
    cr._prepare(d, [32, 32, 48])
    block = [16, 16, 16]
    ref, out = d / "ref.zarr", d / "out.zarr"
    r = runner.invoke(app, cr._command(d, ref, block, None)[3:])
    assert r.exit_code == 0, r.output
    stages = cr._stages(ref)
    order = [(s, tuple(i)) for s, (*_, plan) in stages.items() for i in plan.indices()]
    assert len(stages["predict"][2]) == 12 and len(order) > 12  # the predict pass and its pyramid levels
    ledger = out.with_name(out.name + ".progress")
    held = []
    for k, (stage, index) in enumerate(_points(random.Random(19), order, 3)):
        p = subprocess.run(
            cr._command(d, out, block, None), env=_env(_kill_at(d, k, stage, index)), capture_output=True
        )
        assert p.returncode == -signal.SIGKILL, p.stderr.decode()[-2000:]
        assert not out.exists() and out.with_name(out.name + ".partial").is_dir()
        done, bad = cr._ledger_check(out, ref, stages)
        assert bad == [], f"the ledger lists blocks whose data is not on disk: {bad}"
        held.append(sum(done.values()))
        assert (ledger / stage.replace(" ", "-") / f"{'_'.join(map(str, index))}.json").exists() is False
    assert held == sorted(held) and held[-1] > 0  # every kill kept what the runs before it finished
    r = runner.invoke(app, cr._command(d, out, block, None)[3:])
    assert r.exit_code == 0, r.output
    assert "done before" in r.output or "already complete" in r.output
    assert cr._identical(out, ref) == ""
    assert not ledger.exists() and not out.with_name(out.name + ".partial").exists()
    assert not out.with_name(out.name + ".lock").exists()


# --------------------------------------------------------------------------- evaluation

VS = (5.0, 4.0, 4.0)


def _save(path: Path, a: np.ndarray, attrs: dict | None = None) -> None:
    with write_ome_zarr(path) as w:
        w.create_image(None, a.shape, a.dtype, VS, (0.0, 0.0, 0.0), chunks=(8, 8, 8), attrs=attrs).write(..., a)


EVAL = """
import json, sys
from organet.evaluate import evaluate_volumes
from organet.volumes import open_volume
d = sys.argv[1]
p, t = (open_volume(f"{d}/{n}.zarr") for n in "pt")
r = evaluate_volumes(p, t, exclusion=(1, 2), thresholds=(0.3, 0.5), block_shape=(8, 8, 8), ledger=f"{d}/ev.progress")
open(f"{d}/result.json", "w").write(json.dumps(r.to_dict()))
"""


def test_evaluate_killed_three_times_resumes_to_the_same_result(tmp_path: Path) -> None:
    from organet.evaluate import evaluate_volumes

    d = tmp_path
    rng = np.random.default_rng(0)
    truth = (ndimage.gaussian_filter(rng.random((16, 24, 24)), 2) > 0.5).astype(np.uint8)
    _save(d / "t.zarr", truth)
    _save(
        d / "p.zarr",
        np.clip(truth * 120 + rng.integers(0, 140, truth.shape), 0, 255).astype(np.uint8),
        {"kind": "probability"},
    )
    p, t = open_volume(d / "p.zarr"), open_volume(d / "t.zarr")
    ref = evaluate_volumes(p, t, exclusion=(1, 2), thresholds=(0.3, 0.5), block_shape=(8, 8, 8)).to_dict()
    order = [("evaluate", (z, y, x)) for z in range(2) for y in range(3) for x in range(3)]
    counts = []
    for k, (stage, index) in enumerate(_points(random.Random(7), order, 3)):
        r = subprocess.run(
            [sys.executable, "-c", EVAL, str(d)], env=_env(_kill_at(d, k, stage, index)), capture_output=True
        )
        assert r.returncode == -signal.SIGKILL, r.stderr.decode()[-2000:]
        entries = sorted((d / "ev.progress" / "evaluate").glob("*.json"))
        assert f"{'_'.join(map(str, index))}.json" not in [e.name for e in entries]
        counts.append(len(entries))
    assert counts == sorted(counts) and not (d / "result.json").exists()
    got = evaluate_volumes(
        p, t, exclusion=(1, 2), thresholds=(0.3, 0.5), block_shape=(8, 8, 8), ledger=d / "ev.progress"
    )
    assert got.to_dict() == ref
    assert not (d / "ev.progress").exists() and not (d / "ev.lock").exists()


# --------------------------------------------------------------------------- instances

INST = """
import sys
from organet.analyze.instances import label_instances
from organet.volumes import open_volume
d = sys.argv[1]
label_instances(open_volume(f"{d}/mask.zarr"), f"{d}/{sys.argv[2]}", min_size_nm3=4 * 80.0, connectivity=2,
                block_shape=(8, 8, 8), chunks=(8, 8, 8))
"""


def test_instances_killed_three_times_resumes_to_identical_bytes(tmp_path: Path) -> None:
    from organet.analyze.instances import label_instances

    d = tmp_path
    blobs = ndimage.gaussian_filter(np.random.default_rng(3).random((16, 24, 24)), 1.2) > 0.53
    _save(d / "mask.zarr", blobs.astype(np.uint8))
    kw = dict(min_size_nm3=4 * 80.0, connectivity=2, block_shape=(8, 8, 8), chunks=(8, 8, 8))
    label_instances(open_volume(d / "mask.zarr"), d / "ref" / "out", **kw)
    # the connected-components passes, each over the (2, 3, 3) blocks, in the order they run
    blocks = [(z, y, x) for z in range(2) for y in range(3) for x in range(3)]
    order = [(s, b) for s in ("label", "relabel") for b in blocks]
    for k, (stage, index) in enumerate(_points(random.Random(5), order, 3)):
        r = subprocess.run(
            [sys.executable, "-c", INST, str(d), "out"], env=_env(_kill_at(d, k, stage, index)), capture_output=True
        )
        assert r.returncode == -signal.SIGKILL, r.stderr.decode()[-2000:]
        assert not (d / "out").exists() and (d / "out.partial").is_dir()
    assert label_instances(open_volume(d / "mask.zarr"), d / "out", **kw).resumed > 0
    assert label_files(d / "out" / "labels.zarr") == label_files(d / "ref" / "out" / "labels.zarr")
    assert (d / "out" / "objects.csv").read_bytes() == (d / "ref" / "out" / "objects.csv").read_bytes()
    assert not (d / "out.progress").exists() and not (d / "out.lock").exists()


# --------------------------------------------------------------------------- training

TRAIN = """
import os, signal, sys
import torch
calls = []
save = torch.save
def dying_save(obj, f, *a, **k):
    calls.append(f)
    save(obj, f, *a, **k)
    if len(calls) == 2:  # the second checkpoint: cut it short and die in the middle of writing it
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
from organet.cli import main
sys.argv = ["organet", "train", sys.argv[1]]
main()
"""


def test_training_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(tmp_path: Path) -> None:
    from organet.demo.phantom import make_phantom
    from organet.model.checkpoint import load_checkpoint

    ph = make_phantom((24, 40, 44), seed=5)
    with write_ome_zarr(tmp_path / "raw.zarr") as w:
        w.create_image(None, ph.raw.shape, np.uint8, (5, 5, 5), (0, 0, 0), (24, 40, 44)).write(..., ph.raw)
    with write_ome_zarr(tmp_path / "labels.zarr") as w:
        lab = (ph.labels > 0).astype(np.uint8)
        w.create_image(None, lab.shape, np.uint8, (5, 5, 5), (0, 0, 0), (24, 40, 44)).write(..., lab)
    run = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"output_dir: {run}\n"
        f"data: {{train: [{{raw: {tmp_path}/raw.zarr, labels: {tmp_path}/labels.zarr}}]}}\n"
        "model: {num_fmaps: 2, downsample_factors: [[2, 2, 2]], input_shape: [24, 24, 24]}\n"
        "augment: {enabled: false}\n"
        "training: {iterations: 3, checkpoint_every: 1, device: cpu, log_every: 1}\n"
    )
    r = subprocess.run([sys.executable, "-c", TRAIN, str(cfg)], env=_env(), capture_output=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()[-2000:]
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("iter_*.pt")) == ["iter_0000001.pt"]  # never a half-written one
    assert load_checkpoint(ckpts / "iter_0000001.pt").iteration == 1
    r = runner.invoke(app, ["train", "--resume", str(run)])
    assert r.exit_code == 0, r.output
    assert "at iteration 1" in r.output
    assert sorted(p.name for p in ckpts.glob("iter_*.pt")) == [f"iter_{i:07d}.pt" for i in (1, 2, 3)]
    assert load_checkpoint(ckpts / "iter_0000003.pt").iteration == 3
    assert not list(ckpts.glob(".*tmp*"))  # the killed run's temporary is gone too
