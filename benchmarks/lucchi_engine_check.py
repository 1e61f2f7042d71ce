"""One engine check on real data: `organet predict` in-process and with `--workers 2`
give byte-identical probability, mask and pyramid levels, and the held-out F1.

    python benchmarks/lucchi_engine_check.py --model runs/lucchi_mito_cpu/checkpoints/iter_0002561.pt \
        --raw data/lucchi_raw.zarr --truth data/lucchi_mito.zarr --roi-vox 125:165,:,: --out /tmp/engine_check

The model may be trained at a multiple of the input's voxel size (the 10 nm CPU model on
5 nm Lucchi++): both runs resample on the fly. Prints a markdown table (one row per
array: shape, bytes equal) and the F1 of each run (exclusion zone 4/4 voxels and none).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr


def arrays(path: Path) -> dict[str, np.ndarray]:
    from organet.predict.run import IMAGES

    out = {}
    for image in IMAGES:
        g = zarr.open_group(str(path / image), mode="r")
        for key in sorted(g.array_keys()):
            out[f"{image}/{key}"] = np.asarray(g[key][...])
    return out


def organet(*args: str) -> float:
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "organet.cli", *args], check=True)
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--raw", required=True)
    ap.add_argument("--truth", required=True)
    ap.add_argument("--roi-vox", default="125:165,:,:")
    ap.add_argument("--out", default="/tmp/organet_engine_check")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    common = ["predict", "--model", a.model, "--input", a.raw, "--roi-vox", a.roi_vox, "--device", "cpu"]
    t_local = organet(*common, "--output", str(out / "local.zarr"))
    t_dask = organet(*common, "--output", str(out / "dask.zarr"), "--workers", str(a.workers))
    local, dask = arrays(out / "local.zarr"), arrays(out / "dask.zarr")

    from organet.evaluate import evaluate_volumes
    from organet.volumes import open_volume

    print(f"# organet engine check: {a.model} on {a.raw} ROI {a.roi_vox}\n")
    print(f"in-process {t_local:.0f} s, --workers {a.workers} {t_dask:.0f} s\n")
    print("| array | shape (z, y, x) | bytes equal |")
    print("|---|---|---|")
    same = sorted(local) == sorted(dask)
    for key in sorted(local):
        eq = key in dask and local[key].shape == dask[key].shape and np.array_equal(local[key], dask[key])
        same &= eq
        print(f"| {key} | {local[key].shape} | {'yes' if eq else 'NO'} |")
    print("\n| run | F1 (exclusion 4/4) | F1 (none) | precision | recall |")
    print("|---|---|---|---|---|")
    truth = open_volume(a.truth)
    for name in ("local", "dask"):
        p = open_volume(out / f"{name}.zarr" / "probability")
        begin, end = p.bounds_nm
        t = truth.crop_nm(begin, end)
        ex = evaluate_volumes(p, t, exclusion=(4, 4)).counts
        no = evaluate_volumes(p, t, exclusion=None).counts
        print(f"| {name} | {ex.f1:.4f} | {no.f1:.4f} | {ex.precision:.4f} | {ex.recall:.4f} |")
    print(f"\nall arrays byte-identical: {'yes' if same else 'NO'}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
