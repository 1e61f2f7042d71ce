"""Killed blockwise passes resume from their ledger and give the same result as an
uninterrupted run; blocks that keep failing are reported as BlockFailures.

The kills are real: a subprocess runs the pass with ``ORGANET_TEST_FAULTS`` naming a
fault file whose ``"kill"`` action SIGKILLs the process before one block; the same
call is then rerun without faults.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from organet.analyze.instances import label_instances
from organet.blockwise.faults import ENV
from organet.errors import BlockFailures
from organet.evaluate import evaluate_volumes
from organet.volumes import open_volume, write_ome_zarr

VS = (5.0, 4.0, 4.0)


def _save(path: Path, a: np.ndarray, attrs: dict | None = None) -> None:
    with write_ome_zarr(path) as w:
        w.create_image(None, a.shape, a.dtype, VS, (10.0, 0.0, 0.0), chunks=(8, 8, 8), attrs=attrs).write(..., a)


def _faults(tmp: Path, stage: str, blocks: list[list[int]], action: str, times: int = 1) -> Path:
    path = tmp / f"faults-{stage.replace(' ', '-')}-{action}.json"
    spec = [{"stage": stage, "blocks": blocks, "times": times, "action": action, "counter_dir": str(tmp / "counters")}]
    path.write_text(json.dumps(spec))
    return path


def _run(script: str, folder: Path, faults: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if faults is not None:
        env[ENV] = str(faults)
    return subprocess.run(
        [sys.executable, "-c", script, str(folder)], env=env, capture_output=True, text=True, timeout=120
    )


def _ledger_entries(ledger: Path, stage: str) -> list[str]:
    d = ledger / stage.replace(" ", "-")
    return sorted(p.name for p in d.glob("*.json")) if d.is_dir() else []


# --------------------------------------------------------------------------- evaluation

EVAL_SCRIPT = """
import json, sys
from organet.evaluate import evaluate_volumes
from organet.volumes import open_volume
d = sys.argv[1]
calls = []
p, t, m = (open_volume(f"{d}/{n}.zarr") for n in "ptm")
r = evaluate_volumes(p, t, m, exclusion=(1, 2), thresholds=(0.3, 0.5, 0.7), block_shape=(8, 16, 16),
                     ledger=f"{d}/eval.progress", progress=lambda *a: calls.append(a))
with open(f"{d}/result.json", "w") as f:
    json.dump({"result": r.to_dict(), "calls": calls}, f)
"""


@pytest.fixture
def eval_inputs(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    truth = (ndimage.gaussian_filter(rng.random((16, 32, 32)), 2) > 0.5).astype(np.uint8)
    prob = np.clip(truth * 120 + rng.integers(0, 140, truth.shape), 0, 255).astype(np.uint8)
    mask = np.ones(truth.shape, np.uint8)
    mask[:, :, :6] = 0
    _save(tmp_path / "p.zarr", prob, {"kind": "probability"})
    _save(tmp_path / "t.zarr", truth)
    _save(tmp_path / "m.zarr", mask)
    return tmp_path


def _eval_reference(d: Path) -> dict:
    p, t, m = (open_volume(d / f"{n}.zarr") for n in "ptm")
    ref = evaluate_volumes(p, t, m, exclusion=(1, 2), thresholds=(0.3, 0.5, 0.7), block_shape=(8, 16, 16))
    assert ref.counts.tp > 0 and 0 < ref.counts.f1 < 1
    return ref.to_dict()


def test_evaluate_killed_and_resumed_equals_uninterrupted(eval_inputs: Path) -> None:
    d = eval_inputs
    # grid (2, 2, 2); the kill comes before block (1, 0, 1): 5 blocks are finished by then
    killed = _run(EVAL_SCRIPT, d, _faults(d, "evaluate", [[1, 0, 1]], "kill"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (d / "result.json").exists()
    assert _ledger_entries(d / "eval.progress", "evaluate") == [
        f"{i}.json" for i in ("0_0_0", "0_0_1", "0_1_0", "0_1_1", "1_0_0")
    ]
    resumed = _run(EVAL_SCRIPT, d)
    assert resumed.returncode == 0, resumed.stderr
    out = json.loads((d / "result.json").read_text())
    assert out["result"] == _eval_reference(d)
    assert out["calls"][:2] == [["evaluate", 0, 8], ["evaluate", 5, 8]]  # 5 blocks came from the ledger
    assert not (d / "eval.progress").exists()  # removed once complete


# --------------------------------------------------------------------------- instances

INST_SCRIPT = """
import json, sys
from organet.analyze.instances import label_instances
from organet.volumes import open_volume
d = sys.argv[1]
res = label_instances(open_volume(f"{d}/mask.zarr"), f"{d}/out", raw=open_volume(f"{d}/raw.zarr"),
                      min_size_nm3=4 * 80.0, connectivity=2, block_shape=(8, 8, 8), chunks=(8, 8, 8))
with open(f"{d}/result.json", "w") as f:
    json.dump({"objects": res.objects, "removed": res.removed_small, "resumed": res.resumed}, f)
"""


def _blobs(shape: tuple[int, int, int] = (16, 24, 24), seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 1.2) > 0.53


@pytest.fixture
def inst_inputs(tmp_path: Path) -> Path:
    a = _blobs()
    _save(tmp_path / "mask.zarr", a.astype(np.uint8))
    _save(tmp_path / "raw.zarr", (np.arange(a.size).reshape(a.shape) % 251).astype(np.uint8))
    return tmp_path


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def label_files(folder: Path) -> dict[str, bytes]:
    """:func:`_files` of a ``labels.zarr``, its NGFF ``source`` (a path relative to ``folder``,
    which differs between output locations) resolved to the image it names."""
    files = _files(folder)
    meta = json.loads(files["zarr.json"])
    source = meta["attributes"]["ome"]["image-label"]["source"]
    source["image"] = str((folder / source["image"]).resolve())
    files["zarr.json"] = json.dumps(meta).encode()
    return files


def _inst_reference(d: Path) -> Path:
    ref = d / "ref" / "out"  # same folder name as the killed run: identical metadata too
    res = label_instances(
        open_volume(d / "mask.zarr"),
        ref,
        raw=open_volume(d / "raw.zarr"),
        min_size_nm3=4 * 80.0,
        connectivity=2,
        block_shape=(8, 8, 8),
        chunks=(8, 8, 8),
    )
    assert res.objects > 5 and res.removed_small > 0 and res.resumed == 0
    return ref


@pytest.mark.parametrize("stage", ["label", "relabel", "measure"])
def test_instances_killed_and_resumed_equals_uninterrupted(inst_inputs: Path, stage: str) -> None:
    d = inst_inputs
    out, partial, progress = d / "out", d / "out.partial", d / "out.progress"
    # grid (2, 3, 3) = 18 blocks; the kill comes before block (1, 1, 1), the 14th
    killed = _run(INST_SCRIPT, d, _faults(d, stage, [[1, 1, 1]], "kill"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists() and partial.is_dir() and progress.is_dir()
    assert len(_ledger_entries(progress, stage)) == 13
    resumed = _run(INST_SCRIPT, d)
    assert resumed.returncode == 0, resumed.stderr
    info = json.loads((d / "result.json").read_text())
    assert info["resumed"] >= 13
    assert not partial.exists() and not progress.exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "labels.zarr",
        "objects.csv",
        "objects.parquet",
        "organet_run.json",
    ]

    ref = _inst_reference(d)
    assert label_files(out / "labels.zarr") == label_files(ref / "labels.zarr")  # identical labels and metadata
    assert (out / "objects.csv").read_bytes() == (ref / "objects.csv").read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(out / "objects.parquet"), pd.read_parquet(ref / "objects.parquet"))
    assert info["objects"] == len(pd.read_parquet(ref / "objects.parquet"))
    # and the labels are scipy's (connectivity 2, size filter of 4 voxels)
    lab, n = ndimage.label(_blobs(), ndimage.generate_binary_structure(3, 2))
    keep = np.flatnonzero(np.bincount(lab.ravel())[1:] >= 4) + 1
    expect = np.zeros(n + 1, np.int64)
    expect[keep] = np.arange(1, len(keep) + 1)
    np.testing.assert_array_equal(open_volume(out / "labels.zarr").read(), expect[lab])


# --------------------------------------------------------------------------- failures


def test_failing_blocks_raise_block_failures_and_a_rerun_resumes(
    eval_inputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = eval_inputs
    p, t, m = (open_volume(d / f"{n}.zarr") for n in "ptm")
    kw = dict(exclusion=(1, 2), thresholds=(0.3, 0.5, 0.7), block_shape=(8, 16, 16))
    ledger = d / "eval.progress"
    monkeypatch.setenv(ENV, str(_faults(d, "evaluate", [[0, 0, 1], [1, 1, 0]], "raise", times=-1)))
    with pytest.raises(BlockFailures) as e:
        evaluate_volumes(p, t, m, ledger=ledger, retries=1, **kw)
    err = e.value
    assert err.stage == "evaluate" and err.total == 8 and sorted(err.failures) == [(0, 0, 1), (1, 1, 0)]
    assert "2 of 8 blocks failed (evaluate)" in str(err) and "block 0_0_1" in str(err) and "block 1_1_0" in str(err)
    assert "injected failure" in err.failures[(0, 0, 1)] and err.where == str(ledger)
    assert len(_ledger_entries(ledger, "evaluate")) == 6  # the others are kept
    # a transient failure (once per block) is absorbed by the retries
    monkeypatch.setenv(ENV, str(_faults(d, "evaluate", [[0, 0, 1], [1, 1, 0]], "raise", times=1)))
    (d / "counters").rename(d / "counters-old")
    calls: list[tuple[str, int, int]] = []
    got = evaluate_volumes(p, t, m, ledger=ledger, retries=1, progress=lambda *a: calls.append(a), **kw)
    assert calls[1] == ("evaluate", 6, 8)
    monkeypatch.delenv(ENV)
    assert got.to_dict() == _eval_reference(d) and not ledger.exists()


def test_instances_failing_blocks_are_listed_and_kept(inst_inputs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = inst_inputs
    mask, raw = open_volume(d / "mask.zarr"), open_volume(d / "raw.zarr")
    kw = dict(raw=raw, min_size_nm3=4 * 80.0, connectivity=2, block_shape=(8, 8, 8), chunks=(8, 8, 8))
    monkeypatch.setenv(ENV, str(_faults(d, "merge faces", [[1, 2, 0]], "raise", times=-1)))
    with pytest.raises(BlockFailures) as e:
        label_instances(mask, d / "out", retries=0, **kw)
    assert sorted(e.value.failures) == [(1, 2, 0)] and e.value.stage == "merge faces"
    assert "1 of 18 blocks failed (merge faces)" in str(e.value) and str(d / "out.progress") in str(e.value)
    assert not (d / "out").exists() and len(_ledger_entries(d / "out.progress", "merge faces")) == 17
    monkeypatch.delenv(ENV)
    res = label_instances(mask, d / "out", **kw)
    assert res.resumed == 18 + 17 and "resumed" in res.note
    ref = _inst_reference(d)
    assert label_files(d / "out" / "labels.zarr") == label_files(ref / "labels.zarr")
    pd.testing.assert_frame_equal(res.table, pd.read_parquet(ref / "objects.parquet"))
