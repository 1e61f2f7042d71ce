"""Graph-cut annotation on Lucchi++ with a simulated annotator (docs/results-annotation.md).

Scribbles are drawn from the ground truth on every 10th z plane only (see
:func:`organet.annotate.scribbles.simulate_scribbles`), the graph cut runs on a
165 x 384 x 384 ROI, and F1 / IoU are measured against the full ground truth of the ROI.
Every parameter not given on the command line is the library's default (the working grid
is chosen automatically unless ``--downsample`` is given).

    python benchmarks/graphcut_lucchi.py --data ../shared/data/lucchi_pp --out out/graphcut_lucchi
    python benchmarks/graphcut_lucchi.py --synthetic   # a quick self-check without the data

Writes ``result.json`` with wall time, peak RSS, the working grid and the scores (and with
``--save``, the probabilities for ``--recut`` sweeps of the pairwise term without recomputing
the forest). ``--table OUT1 OUT2 ...`` prints the before/after table of
docs/results-annotation.md from the ``result.json`` of earlier runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from organet.annotate.graphcut import (
    GraphCutParams,
    _downsample_mean,
    _downsample_scribbles,
    _upsample,
    clean_labels,
    graph_cut,
    segment_from_scribbles,
)
from organet.annotate.scribbles import merge_scribbles, simulate_corrections, simulate_scribbles


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    tp = float((pred & truth).sum())
    fp = float((pred & ~truth).sum())
    fn = float((~pred & truth).sum())
    return {
        "f1": 2 * tp / (2 * tp + fp + fn),
        "iou": tp / (tp + fp + fn),
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1),
    }


def load(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    if args.synthetic:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from test_annotate_graphcut import phantom  # type: ignore[import-not-found]

        raw, truth = phantom((40, 96, 96))
        return raw, truth
    from organet.volumes import Roi, open_volume

    d = Path(args.data)
    raw = open_volume(str(d / "train_image.tif"), voxel_size=(5, 5, 5))
    lab = open_volume(str(d / "train_mito.tif"), voxel_size=(5, 5, 5))
    roi = Roi((0, args.y0, args.x0), (165, 384, 384))
    return raw.read(roi), lab.read(roi) > 0


def parse_downsample(text: str) -> int | tuple[int, int, int] | None:
    if text == "auto":
        return None
    v = [int(t) for t in text.split(",")]
    return v[0] if len(v) == 1 else (v[0], v[1], v[2])


def table(dirs: list[str]) -> str:
    """Markdown table (one row per run) from the result.json of benchmark runs."""
    rows = [
        "| ROI (z, y, x) | working grid | wall | peak RSS | F1 | IoU | precision | recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    commands = []
    for d in dirs:
        r = json.loads((Path(d) / "result.json").read_text())
        z0, y0, x0, nz, ny, nx = r["roi"]
        grid = r.get("working_grid", {}).get("describe") or f"downsample {r['params']['downsample']} (set by the user)"
        g = r["graphcut"]
        rows.append(
            f"| {z0}:{z0 + nz}, {y0}:{y0 + ny}, {x0}:{x0 + nx} | {grid} | {r['wall_s']:.0f} s "
            f"| {r['peak_rss_gib']:.2f} GiB | {g['f1']:.3f} | {g['iou']:.3f} "
            f"| {g['precision']:.3f} | {g['recall']:.3f} |"
        )
        if "command" in r:
            commands.append(f"{r.get('date', '')} OMP_NUM_THREADS={r.get('omp_num_threads')}: {r['command']}")
    return "\n".join(rows + [""] + commands)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Before/after table (docs/results-annotation.md): run the benchmark once per setting and ROI, e.g. "
        "'--out out/gc_before_a --downsample 1' (the old default) and '--out out/gc_after_a' (automatic grid), then "
        "'python benchmarks/graphcut_lucchi.py --table out/gc_before_a out/gc_after_a'.",
    )
    ap.add_argument("--data", default="../shared/data/lucchi_pp")
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--y0", type=int, default=192)
    ap.add_argument("--x0", type=int, default=320)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--out", default="out/graphcut_lucchi")
    ap.add_argument(
        "--downsample",
        default="auto",
        help="working grid: auto (the library default), one factor or Z,Y,X (the docs' first runs used 2; "
        "the library default before the automatic choice was 1)",
    )
    ap.add_argument("--max-working-voxels", type=int, default=GraphCutParams.max_working_voxels)
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    ap.add_argument("--trees", type=int, default=64)
    ap.add_argument("--autocontext", type=int, default=1)
    ap.add_argument("--smoothness", type=float, default=10.0)
    ap.add_argument("--contrast-sigma", type=float, default=0.05)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--fill-holes", action="store_true")
    ap.add_argument("--supervoxels", type=int, default=0)
    ap.add_argument("--min-size", type=int, default=0)
    ap.add_argument("--corrections", type=int, default=0, help="rounds of simulated corrections on the same planes")
    ap.add_argument("--save", action="store_true")
    ap.add_argument("--recut", action="store_true", help="only sweep the graph-cut terms on saved probabilities")
    ap.add_argument("--recut-grid", default="", help="smoothness:contrast_sigma pairs, comma-separated")
    ap.add_argument("--table", nargs="+", metavar="OUT", help="print the table of earlier runs' result.json and exit")
    args = ap.parse_args()
    if args.table:
        print(table(args.table))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw, truth = load(args)
    planes = list(range(args.every // 2, raw.shape[0], args.every))
    scrib = simulate_scribbles(
        truth,
        planes,
        strokes_per_object=2,
        background_strokes=25,
        length=41,
        width=3,
        margin=5,
        object_margin=2,
        seed=0,
    )
    info = {
        "roi": [0, args.y0, args.x0, *raw.shape],
        "planes": planes,
        "scribbled_object_vox": int((scrib == 1).sum()),
        "scribbled_background_vox": int((scrib == 2).sum()),
        "scribbled_fraction_of_roi": float((scrib > 0).mean()),
        "truth_fraction": float(truth.mean()),
    }
    print(json.dumps(info))
    if args.recut:
        z = np.load(out / "prob.npz")
        prob, xs, ss, scrib = z["prob"], z["xs"], z["ss"], z["scrib"]
        factors = tuple(int(v) for v in z["factors"])
        res = []
        grid = (
            [tuple(map(float, g.split(":"))) for g in args.recut_grid.split(",")]
            if args.recut_grid
            else [(sm, cs) for sm in (0.0, 1.0, 3.0, 10.0, 30.0) for cs in (0.05, 0.1, 0.2)]
        )
        for sm, cs in grid:
            t = time.perf_counter()
            cut = graph_cut(prob, xs, ss, sm, cs)
            for post in ((False, 0), (True, 0), (True, 500)):
                c = clean_labels(cut, ss, *post) if post != (False, 0) else cut
                full = _upsample(c.astype(np.float32), factors, raw.shape) >= 0.5
                full[scrib == 1], full[scrib == 2] = True, False
                r = {
                    "smoothness": sm,
                    "contrast_sigma": cs,
                    "fill_holes": post[0],
                    "min_size": post[1],
                    **scores(full, truth),
                    "s": time.perf_counter() - t,
                }
                print(json.dumps(r))
                res.append(r)
        (out / "recut.json").write_text(json.dumps(res, indent=1))
        return
    p = GraphCutParams(
        downsample=parse_downsample(args.downsample),
        max_working_voxels=args.max_working_voxels,
        voxel_size=None if args.synthetic else (5.0, 5.0, 5.0),
        scales=tuple(args.scales),
        n_trees=args.trees,
        autocontext=args.autocontext,
        smoothness=args.smoothness,
        contrast_sigma=args.contrast_sigma,
        fill_holes=args.fill_holes,
        min_size=args.min_size,
        supervoxels=args.supervoxels,
        n_jobs=args.jobs,
    )
    t0 = time.perf_counter()
    r = segment_from_scribbles(raw, scrib, p, log=print)
    wall = time.perf_counter() - t0
    assert r.working_grid is not None
    factors = r.working_grid.factors
    result = {
        **info,
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.date.today().isoformat(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "working_grid": r.working_grid.record(),
        "params": p.record(),
        "seconds": r.seconds,
        "wall_s": wall,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "graphcut": scores(r.labels.astype(bool), truth),
    }
    for i, sp in enumerate(r.stage_probabilities):
        result[f"forest_stage{i}"] = scores(_upsample(sp, factors, raw.shape) >= 0.5, truth)
    rounds = [result]
    for k in range(args.corrections):
        extra = simulate_corrections(r.labels, truth, planes, seed=k + 1)
        scrib = merge_scribbles(scrib, extra)
        t0 = time.perf_counter()
        r = segment_from_scribbles(raw, scrib, p, log=print)
        rounds.append(
            {
                "round": k + 1,
                "added_vox": int((extra > 0).sum()),
                "seconds": r.seconds,
                "wall_s": time.perf_counter() - t0,
                "scribbled_fraction_of_roi": float((scrib > 0).mean()),
                "graphcut": scores(r.labels.astype(bool), truth),
                **{
                    f"forest_stage{i}": scores(_upsample(sp, factors, raw.shape) >= 0.5, truth)
                    for i, sp in enumerate(r.stage_probabilities)
                },
            }
        )
    result["corrections"] = rounds[1:]
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(result, indent=1))
    (out / "result.json").write_text(json.dumps(result, indent=1))
    if args.save:
        lo, hi = np.percentile(raw, [0.1, 99.9])
        x = np.clip((raw.astype(np.float32) - lo) / max(float(hi - lo), 1e-12), 0, 1)
        np.savez(
            out / "prob.npz",
            prob=r.stage_probabilities[-1],
            xs=_downsample_mean(x, factors),
            ss=_downsample_scribbles(scrib, factors),
            scrib=scrib,
            factors=np.array(factors),
            labels=r.labels,
        )


if __name__ == "__main__":
    main()
