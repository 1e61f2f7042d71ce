"""Why uncertainty-suggested boxes do not beat random ones on cdeep3m (issue 15), checked
against the labels of the training planes (z 010-029), without training.

Two tables:

1. Every finished fine-tuning run of ``benchmarks/adapt_cdeep3m.py`` (its ``results.json``):
   the true mitochondria fraction and the zero-shot error rate inside its boxes, against the
   run's F1 on the validation planes, and the rank correlations over runs.
2. Every candidate box of the given size on a grid over the training planes (stride half a
   box): label-free scores computed from the zero-shot prediction alone (mean entropy, the
   score ``organet suggest`` ranks by; predicted foreground; confident foreground p > 0.9 and
   p > 0.99) against the truth (mitochondria fraction, zero-shot errors); the rank
   correlation of each score with each, and the truth in the four best non-overlapping boxes
   of each score.

    python benchmarks/suggest_analysis.py --adapt runs/adapt runs/adapt_small

Needs ``../shared/data`` converted by ``adapt_cdeep3m.py`` (``data/cdeep3m_*.zarr``) and the
zero-shot prediction of the training planes (``RUN/zero_shot_train.zarr``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapt", type=Path, nargs="+", required=True, help="output folders of adapt_cdeep3m.py")
    ap.add_argument("--data", type=Path, default=ROOT / "data")
    ap.add_argument("--box-um3", type=float, default=0.5, help="candidate box volume (all 20 planes)")
    args = ap.parse_args(argv)
    lab_path = args.data / "cdeep3m_train_z010-029_mito.zarr"
    pred_path = args.adapt[0] / "zero_shot_train.zarr" / "probability"
    if not lab_path.exists() or not pred_path.exists():
        print(f"skipped: {lab_path} or {pred_path} is missing (run benchmarks/adapt_cdeep3m.py first)")
        return 0

    from scipy.stats import spearmanr

    from organet.annotate.suggest import binary_entropy
    from organet.volumes import open_volume, parse_roi
    from organet.volumes.foreground import as_probability, prediction_kind

    lab = open_volume(lab_path)
    truth = lab.read() > 0
    pvol = open_volume(pred_path)
    p = as_probability(pvol.read(), prediction_kind(pvol)).astype(np.float32)
    wrong = (p > 0.5) != truth
    h = binary_entropy(p).astype(np.float32)

    def inside(rois: list[str], a: np.ndarray) -> float:
        sl = [parse_roi(r, "vox", lab).slices() for r in rois]
        return float(sum(a[s].sum() for s in sl) / sum(a[s].size for s in sl))

    print("## Fine-tuning runs: what their boxes hold, and the F1 they reached\n")
    print("| run | boxes | mitochondria in the boxes | zero-shot errors in the boxes | val F1 |")
    print("|---|---|---|---|---|")
    fg, err, f1 = [], [], []
    for folder in args.adapt:
        rows = json.loads((folder / "results.json").read_text())
        for name, row in sorted(rows.items()):
            if not isinstance(row, dict) or "f1" not in row or "rois" not in row or name.startswith("scratch"):
                continue
            a, b = inside(row["rois"], truth), inside(row["rois"], wrong)
            fg.append(a)
            err.append(b)
            f1.append(row["f1"])
            note = f" (+{row['mix']:g} Lucchi++)" if row.get("mix") else ""
            print(f"| {folder.name}/{name}{note} | {len(row['rois'])} | {a:.3f} | {b:.3f} | {row['f1']:.3f} |")
    if len(f1) > 2:
        print(
            f"\nSpearman over {len(f1)} runs: F1 vs mitochondria in the boxes {spearmanr(fg, f1)[0]:+.2f}; "
            f"F1 vs zero-shot errors in the boxes {spearmanr(err, f1)[0]:+.2f}\n"
        )

    side = round(math.sqrt(args.box_um3 * 1e9 / (lab.shape[0] * lab.voxel_size[0])) / lab.voxel_size[1])
    step = side // 2
    cands = []
    for y in range(0, lab.shape[1] - side + 1, step):
        for x in range(0, lab.shape[2] - side + 1, step):
            s = np.s_[:, y : y + side, x : x + side]
            ps = p[s]
            cands.append(
                {
                    "y": y,
                    "x": x,
                    "fg": truth[s].mean(),
                    "err": wrong[s].mean(),
                    "entropy": h[s].mean(),
                    "p>0.5": (ps > 0.5).mean(),
                    "p>0.9": (ps > 0.9).mean(),
                    "p>0.99": (ps > 0.99).mean(),
                }
            )
    print(f"## {len(cands)} candidate boxes of {side} x {side} pixels x {lab.shape[0]} planes ({args.box_um3:g} µm³)\n")
    print(
        f"Over all candidates: mitochondria {np.mean([c['fg'] for c in cands]):.3f}, "
        f"zero-shot errors {np.mean([c['err'] for c in cands]):.3f}; "
        f"Spearman(errors, mitochondria) {spearmanr([c['err'] for c in cands], [c['fg'] for c in cands])[0]:+.2f}\n"
    )
    print("| score (from the prediction only) | vs mitochondria | vs errors | top 4 boxes: mitochondria | errors |")
    print("|---|---|---|---|---|")
    for key in ("entropy", "p>0.5", "p>0.9", "p>0.99"):
        order = sorted(cands, key=lambda c: -c[key])
        top: list[dict[str, float]] = []
        for c in order:
            if all(abs(c["y"] - t["y"]) >= side or abs(c["x"] - t["x"]) >= side for t in top):
                top.append(c)
            if len(top) == 4:
                break
        r_fg = spearmanr([c[key] for c in cands], [c["fg"] for c in cands])[0]
        r_err = spearmanr([c[key] for c in cands], [c["err"] for c in cands])[0]
        top_fg = ", ".join(f"{t['fg']:.3f}" for t in top)
        top_err = ", ".join(f"{t['err']:.3f}" for t in top)
        print(f"| {key} | {r_fg:+.2f} | {r_err:+.2f} | {top_fg} | {top_err} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
