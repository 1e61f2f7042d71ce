"""Crash and resume: SIGKILL ``organet predict --block ...`` at random points, resume, compare.

    python benchmarks/crash_resume.py                  # 10 kills, in-process
    python benchmarks/crash_resume.py -n 3 --seed 1
    python benchmarks/crash_resume.py --workers 2      # the command on a local Dask cluster
    python benchmarks/crash_resume.py --kind fault     # only kills at a chosen block

On a small synthetic volume (``--shape``, uint8 noise, 5 nm) with a tiny random
checkpoint, one uninterrupted ``organet predict`` run is the reference. Then, ``-n``
times, a fresh run of the same command in a subprocess is killed with SIGKILL, either

* ``time``: after a random delay between the moment the reference run started its
  ledger (start-up done) and the end of its wall time (the whole process group: the
  command and, with ``--workers``, its Dask cluster), or
* ``fault``: through ``ORGANET_TEST_FAULTS`` (``organet.blockwise.faults``) with action
  ``"kill"`` before a random block (any block of any stage, ``predict`` or a pyramid
  level, equally likely).
  In-process that kills the command; on Dask it kills the worker running the block,
  which Dask replaces, so the command itself should finish.

After each kill the ledger (``OUT.zarr.progress/<stage>/<z_y_x>.json``) is checked:
every block it lists must already hold its final bytes in ``OUT.zarr.partial`` (the same
as the reference's). Then the same command is rerun to completion: it must exit 0,
report as many blocks "done before" as the ledger held, take over the killed run's
lock file ``OUT.zarr.lock`` with a warning (when the kill left one) and remove it at the
end, and leave an ``OUT.zarr`` whose files (every array, pyramid levels included, and the
metadata) are byte-identical to the reference's. Prints a markdown table, one row per
kill; exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

TILE = 34  # network input of the tiny U-Net below (output 16, step 16)
CHUNKS = 16


def _prepare(d: Path, shape: list[int]) -> None:
    """``d/model.pt`` (2 feature maps, 1 downsampling, random weights) and ``d/raw.zarr``."""
    import torch

    from organet.model.checkpoint import Checkpoint, save_checkpoint
    from organet.model.unet import UNet, UNetConfig
    from organet.preprocess import Normalization
    from organet.volumes import write_ome_zarr

    cfg = UNetConfig(num_fmaps=2, downsample_factors=((2, 2, 2),))
    torch.manual_seed(0)
    save_checkpoint(
        Checkpoint(cfg, (TILE,) * 3, (5.0,) * 3, Normalization(), "mito", UNet(cfg).state_dict()), d / "model.pt"
    )
    raw = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    with write_ome_zarr(d / "raw.zarr", overwrite=True) as w:
        w.create_image(None, raw.shape, np.uint8, (5, 5, 5), (0, 0, 0), (32, 32, 32)).write(..., raw)


def _command(d: Path, out: Path, block: list[int], workers: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "organet.cli", "predict", "--model", str(d / "model.pt")]
    cmd += ["--input", str(d / "raw.zarr"), "--output", str(out), "--device", "cpu"]
    cmd += ["--tile", *[str(TILE)] * 3, "--chunks", *[str(CHUNKS)] * 3, "--block", *map(str, block)]
    return cmd + (["--workers", str(workers)] if workers else [])


def _env(faults: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ORGANET_TEST_FAULTS"}
    env.update(OMP_NUM_THREADS="1", COLUMNS="200")
    if faults is not None:
        env["ORGANET_TEST_FAULTS"] = str(faults)
    return env


def _stages(ref: Path) -> dict[str, tuple[str, int, Any]]:
    """Every blockwise stage of the run, in order: name -> (image, level, block plan).

    The plans are those of ``organet.predict.run`` and ``organet.volumes.pyramid``,
    rebuilt from the reference output (``predict``: the output's s0 chunks and the block
    shape in its run record; a pyramid level: blocks of two chunks per axis)."""
    import zarr

    from organet.blockwise.output import read_run
    from organet.predict.run import IMAGES
    from organet.volumes import Roi
    from organet.volumes.blocks import BlockPlan, plan_blocks

    run = read_run(ref)
    assert run is not None, f"{ref} has no run record"
    roi = Roi((0, 0, 0), run["roi_shape"])  # blocks in output coordinates
    stages: dict[str, tuple[str, int, Any]] = {
        "predict": ("", 0, BlockPlan(roi, tuple(run["block_shape"]), tuple(run["chunks"])))
    }
    for image in IMAGES:
        g = zarr.open_group(str(ref / image), mode="r")
        chunks = g["s0"].chunks
        for level in range(1, sum(1 for k in g.array_keys() if re.fullmatch(r"s\d+", k))):
            plan = plan_blocks(Roi((0, 0, 0), g[f"s{level}"].shape), chunks, target=2 * max(chunks))
            stages[f"pyramid {Path(image).name} s{level}"] = (image, level, plan)
    return stages


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _identical(a: Path, b: Path) -> str:
    """What differs between the files of two outputs ("" when every file has the same bytes)."""
    fa, fb = _files(a), _files(b)
    if sorted(fa) != sorted(fb):
        return f"files differ: {sorted(set(fa) ^ set(fb))[:5]}"
    diff = [k for k in fa if fa[k] != fb[k]]
    return f"bytes differ: {diff[:5]}" if diff else ""


def _ledger_check(out: Path, ref: Path, stages: dict[str, tuple[str, int, Any]]) -> tuple[dict[str, int], list[str]]:
    """Blocks listed in the ledger per stage, and those whose data is missing or wrong."""
    import zarr

    from organet.predict.run import IMAGES

    ledger = out.with_name(out.name + ".progress")
    partial = out.with_name(out.name + ".partial")
    data = partial if partial.is_dir() else out  # killed between the final rename and the ledger's removal
    done: dict[str, int] = {}
    bad: list[str] = []
    if not ledger.is_dir():
        return done, bad
    known = {s.replace(" ", "-") for s in stages}
    bad += [f"unknown stage {p.name}" for p in sorted(ledger.iterdir()) if p.is_dir() and p.name not in known]
    for stage, (image, level, plan) in stages.items():
        folder = ledger / stage.replace(" ", "-")
        entries = sorted(folder.glob("*_*_*.json")) if folder.is_dir() else []
        done[stage] = len(entries)
        for e in entries:
            index = tuple(int(i) for i in e.stem.split("_"))
            if json.loads(e.read_text())["status"] != "done":
                continue
            sl = plan.block(index).roi.slices()
            for name in [image] if image else list(IMAGES):
                path = f"{name}/s{level}"
                got = np.asarray(zarr.open_array(str(data / path), mode="r")[sl])
                want = np.asarray(zarr.open_array(str(ref / path), mode="r")[sl])
                if not np.array_equal(got, want):
                    bad.append(f"{stage} {e.stem} ({path})")
    return done, bad


def _where(done: dict[str, int], stages: dict[str, tuple[str, int, Any]], out: Path) -> str:
    """The stage a run was in when it died, from its ledger."""
    if out.is_dir():
        return "after the final rename"
    if not out.with_name(out.name + ".partial").is_dir():
        return "start-up (no partial output yet)"
    for stage, (*_, plan) in stages.items():
        if done.get(stage, 0) < len(plan):
            return f"{stage} ({done.get(stage, 0)}/{len(plan)})"
    return "commit"


def _clean(out: Path) -> None:
    for p in (out, out.with_name(out.name + ".partial"), out.with_name(out.name + ".progress")):
        shutil.rmtree(p, ignore_errors=True)
    out.with_name(out.name + ".lock").unlink(missing_ok=True)


def _kill_group(p: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--kills", type=int, default=10, help="number of killed runs")
    ap.add_argument("--kind", choices=["both", "time", "fault"], default="both", help="how to kill")
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 128, 128], help="volume (voxels, z y x)")
    ap.add_argument("--block", type=int, nargs=3, default=[32, 32, 32], help="--block of organet predict")
    ap.add_argument("--workers", type=int, default=None, help="run the command on a local Dask cluster")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="work here and keep the files (default: temp dir)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        d = args.keep or Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        _prepare(d, args.shape)
        ref = d / "ref.zarr"
        _clean(ref)
        log = d / "ref.log"
        t0 = time.perf_counter()
        t_work = None
        with log.open("w") as f:
            p = subprocess.Popen(_command(d, ref, args.block, args.workers), env=_env(), stdout=f, stderr=f)
            while p.poll() is None:
                if t_work is None and ref.with_name(ref.name + ".progress").exists():
                    t_work = time.perf_counter() - t0
                time.sleep(0.01)
        t_ref = time.perf_counter() - t0
        if p.returncode:
            raise SystemExit(f"the reference run failed ({p.returncode}):\n{log.read_text()}")
        t_work = t_work or 0.0
        stages = _stages(ref)
        n_blocks = {s: len(plan) for s, (*_, plan) in stages.items()}
        print(
            f"volume {'x'.join(map(str, args.shape))}, chunks {CHUNKS}^3, blocks {'x'.join(map(str, args.block))}, "
            f"{'--workers ' + str(args.workers) if args.workers else 'in-process'}; reference run {t_ref:.1f} s "
            f"(start-up {t_work:.1f} s); "
            f"{len(stages)} stages, {sum(n_blocks.values())} blocks: "
            + ", ".join(f"{s} {n}" for s, n in n_blocks.items()),
            flush=True,
        )
        out = d / "out.zarr"
        rows = []
        failed = False
        for k in range(1, args.kills + 1):
            _clean(out)
            kind = args.kind if args.kind != "both" else rng.choice(["time", "fault"])
            faults = None
            if kind == "fault":
                stage, index = rng.choice([(s, i) for s, (*_, plan) in stages.items() for i in plan.indices()])
                faults = d / f"faults-{k}.json"
                fault = {"stage": stage, "blocks": [list(index)], "times": 1, "action": "kill"}
                faults.write_text(json.dumps([{**fault, "counter_dir": str(d / f"counters-{k}")}]))
                how = f"fault: {stage} block {'_'.join(map(str, index))}"
            else:
                delay = rng.uniform(t_work, t_ref)
                how = f"time: {delay:.2f} s"
            cmd = _command(d, out, args.block, args.workers)
            t1 = time.perf_counter()
            p = subprocess.Popen(
                cmd, env=_env(faults), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
            )
            if kind == "time":
                try:
                    p.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    _kill_group(p)
            else:
                try:
                    p.wait(timeout=10 * t_ref + 60)
                except subprocess.TimeoutExpired:
                    _kill_group(p)
                if p.returncode != 0:  # in-process, the fault killed the command; make sure nothing is left
                    _kill_group(p)
            died = time.perf_counter() - t1
            rc = p.returncode
            killed = rc == -signal.SIGKILL
            done, bad = _ledger_check(out, ref, stages)
            if killed:
                where = _where(done, stages, out)
            elif rc == 0 and kind == "fault" and any((d / f"counters-{k}").glob("*")):
                where = "a worker, at the block; the run finished"
            else:
                where = f"not killed (exit {rc})"
            predict_done = done.get("predict", 0)
            pyramid_done = sum(v for s, v in done.items() if s != "predict")
            lock = out.with_name(out.name + ".lock")
            stale = lock.exists()  # a killed run leaves its lock; the resume must take it over
            # resume to completion
            r = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
            m = re.search(r"\((\d+) done before", r.stdout)
            complete_before = "already complete" in r.stdout
            checks = []
            if r.returncode != 0:
                checks.append(f"resume exit {r.returncode}: {(r.stderr.strip().splitlines() or [''])[-1]}")
            elif not complete_before and (m is None or int(m[1]) != predict_done):
                checks.append(f"resume reported {m[1] if m else '?'} done before, the ledger held {predict_done}")
            if rc not in (0, -signal.SIGKILL):
                checks.append(f"killed run exit {rc}")
            if bad:
                checks.append(f"ledger lists blocks without their data: {bad[:3]}")
            if stale and r.returncode == 0 and "taking over the lock" not in r.stderr:
                checks.append("the killed run's lock was not taken over with a warning")
            if lock.exists():
                checks.append(f"{lock.name} left after the resumed run")
            diff = _identical(out, ref) if out.is_dir() else "no output"
            if diff:
                checks.append(diff)
            failed |= bool(checks)
            rows.append(
                (
                    k,
                    how,
                    f"{died:.2f}",
                    where,
                    f"{predict_done}/{n_blocks['predict']}",
                    f"{pyramid_done}/{sum(n_blocks.values()) - n_blocks['predict']}",
                    "ok" if not bad else f"{len(bad)} bad",
                    "taken over" if stale else "none left",
                    "yes" if not checks else "NO: " + "; ".join(checks),
                )
            )
            print(f"kill {k}: {how}, ended after {died:.2f} s, {where}: {rows[-1][-1]}", file=sys.stderr, flush=True)
    print(
        "\n| kill # | how | ended after s | killed in | predict blocks done before | pyramid blocks done before "
        "| ledger vs data | lock of the killed run | resumed ok (identical bytes) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
    n_worker = sum(1 for r in rows if r[3].startswith("a worker"))
    n_first = sum(1 for r in rows if r[3].startswith("not killed"))
    print(
        f"\n{len(rows) - n_worker - n_first} of {len(rows)} runs killed, {n_worker} lost a Dask worker and finished, "
        f"{n_first} finished before the kill; {sum(1 for r in rows if r[-1] == 'yes')} of {len(rows)} resumed to "
        "byte-identical output with a consistent ledger."
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
