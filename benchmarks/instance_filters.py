"""Which objects of a prediction are false, and which object rule removes them: per predicted
object its best IoU with a true object, mean probability and depth (largest distance to the
background, nm), and the instance F1@0.5 that each setting of ``organet instances
--min-radius`` / ``--min-mean-probability`` would give (objects are only dropped, so the
matches of the others do not change).

    python benchmarks/instance_filters.py train_pred.zarr/probability data/lucchi_mito.zarr --roi-vox 0:125,:,: \\
        --min-size 125000 --csv train_objects.csv

Choose the thresholds on training planes, then check them on held-out planes with
``organet instances`` and ``organet evaluate --instances`` (docs/results.md, "Instances on
Lucchi++"). Objects and true objects are connected components (faces) of the mask at
``--threshold`` and of the truth, both smaller than ``--min-size`` nm³ ignored; a match is
IoU > 0.5.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def object_features(prob: np.ndarray, truth: np.ndarray, voxel_size: tuple[float, float, float], threshold: float,
                    min_voxels: int) -> tuple[list[dict[str, float]], int]:  # fmt: skip
    """Per predicted object (>= ``min_voxels``): voxels, best IoU with a true object, mean
    probability and depth in nm; and the number of true objects of at least that size."""
    import edt
    from scipy import ndimage

    mask = prob >= threshold
    tl, _ = ndimage.label(truth)
    true_sizes = np.bincount(tl.ravel())
    pl, _ = ndimage.label(mask)
    depth = edt.edt(mask, anisotropy=voxel_size, black_border=False)
    rows = []
    for i, sl in enumerate(ndimage.find_objects(pl), 1):
        m = pl[sl] == i
        n = int(m.sum())
        if n < min_voxels:
            continue
        hit = tl[sl][m]
        hit = hit[hit > 0]
        iou = 0.0
        if hit.size:
            best = int(np.bincount(hit).argmax())
            inter = int((hit == best).sum())
            iou = inter / (n + int(true_sizes[best]) - inter)
        rows.append(
            {
                "voxels": n,
                "iou": iou,
                "mean_probability": float(prob[sl][m].mean()),
                "depth_nm": float(depth[sl][m].max()),
            }
        )
    return rows, int((true_sizes[1:] >= min_voxels).sum())


def sweep(rows: list[dict[str, float]], n_true: int, radii: list[float], probs: list[float]) -> list[dict[str, float]]:
    """F1@0.5 (and counts) for every pair of minimum depth (nm) and minimum mean probability."""
    out = []
    for r in radii:
        for p in probs:
            kept = [o for o in rows if o["depth_nm"] >= r and o["mean_probability"] >= p]
            tp = sum(o["iou"] > 0.5 for o in kept)
            fp, fn = len(kept) - tp, n_true - tp
            out.append({"min_radius": r, "min_mean_probability": p, "objects": len(kept), "tp": tp, "fp": fp,
                        "fn": fn, "f1": 2 * tp / max(2 * tp + fp + fn, 1)})  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probability", help="OUT.zarr/probability of organet predict")
    ap.add_argument("truth", help="true mask, aligned by nm")
    ap.add_argument("--roi-vox", default=None, help="region of the truth (voxels) the prediction covers")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--min-size", type=float, default=125000.0, help="nm³")
    ap.add_argument("--radii", type=float, nargs="+", default=[0, 50, 60, 70, 80, 85, 88, 90, 95, 100])
    ap.add_argument("--probs", type=float, nargs="+", default=[0, 0.8, 0.85, 0.86, 0.88, 0.9])
    ap.add_argument("--csv", type=Path, default=None, help="write the per-object table here")
    args = ap.parse_args(argv)

    import pandas as pd

    from organet.volumes import open_volume, parse_roi
    from organet.volumes.foreground import as_probability, prediction_kind

    pv = open_volume(args.probability)
    tv = open_volume(args.truth)
    if args.roi_vox:
        tv = tv.crop(parse_roi(args.roi_vox, "vox", tv))
    tv = tv.crop_nm(*pv.bounds_nm)
    prob = as_probability(pv.read(), prediction_kind(pv), args.probability)
    truth = tv.read() > 0
    if prob.shape != truth.shape:
        raise SystemExit(f"prediction {prob.shape} and truth {truth.shape} do not cover the same voxels")
    vs = (float(pv.voxel_size[0]), float(pv.voxel_size[1]), float(pv.voxel_size[2]))
    rows, n_true = object_features(prob, truth, vs, args.threshold, round(args.min_size / float(np.prod(vs))))
    table = pd.DataFrame(rows).sort_values("iou")
    if args.csv:
        table.to_csv(args.csv, index=False)
    unmatched = table[table.iou == 0]
    matched = table[table.iou > 0.5]
    print(f"{len(table)} objects, {n_true} true objects; {len(unmatched)} overlap none, {len(matched)} matched")
    for name, part in (("overlap none", unmatched), ("matched", matched)):
        if len(part):
            print(f"  {name}: mean probability {part.mean_probability.min():.3f}-{part.mean_probability.max():.3f}, "
                  f"depth {part.depth_nm.min():.1f}-{part.depth_nm.max():.1f} nm")  # fmt: skip
    res = pd.DataFrame(sweep(rows, n_true, args.radii, args.probs))
    res = res.sort_values(["f1", "min_radius", "min_mean_probability"], ascending=[False, True, True])
    print("| min radius nm | min mean probability | objects | TP | FP | FN | F1@0.5 |")
    print("|---|---|---|---|---|---|---|")
    for r in res.itertuples():
        cells = (f"{r.min_radius:g}", f"{r.min_mean_probability:g}", r.objects, r.tp, r.fp, r.fn, f"{r.f1:.3f}")
        print("| " + " | ".join(str(c) for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
