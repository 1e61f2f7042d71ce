"""Adapting the Lucchi++ mitochondria model to a new cell: cdeep3m_mito (SBEM, 5.9 x 5.9 x 40 nm).

The protocol of issue 15 (docs/results.md, "Adapt to a new cell"), resumable cell by cell:

* **zero-shot**: the source model (default the shipped ``mito-lucchi``, 10 nm) predicts the
  target's validation planes (z 050-059) through resampling;
* for each annotation budget (µm³) the target's training planes (z 010-029) are predicted
  and ``organet suggest`` proposes ``budget / box`` boxes of ``--box-um3`` each (800 nm =
  all 20 planes in z, square in y, x) by uncertainty, and by chance (``--strategy random``,
  one draw per seed);
* per budget and seed: **fine-tuned on suggested boxes**, **fine-tuned on random boxes**
  (``organet finetune`` defaults: constant lr 1e-4; a fixed number of iterations so the
  runs are comparable), and **target alone** (the same network from random weights on the
  random boxes, ``--from-scratch``, lr 1e-3);
* suggested boxes may hold no mitochondria at all (the model's most uncertain region can be a
  false-positive texture); ``organet finetune`` refuses such labels and names the remedy, so
  that arm is then fine-tuned with 25 % of blocks from Lucchi++ (recorded as ``note``);
* **forgetting**: F1 on Lucchi++'s held-out planes (z 125-164, 5 nm) before and after
  fine-tuning at one budget, without and with 25 % of blocks from the original data.

Every F1 is voxel F1 at threshold 0.5 on the validation planes without exclusion zone (the
organelle's zone is 4 voxels per axis, which at 40 nm in z would drop 160 nm of a 400 nm
stack); old-domain F1 on Lucchi++ (5 nm isotropic) also with it. Writes ``OUT/results.json``, ``OUT/results.md`` and
``OUT/f1_vs_budget.png``.

    python benchmarks/adapt_cdeep3m.py --out runs/adapt            # the full protocol (hours on 2 CPU cores)
    python benchmarks/adapt_cdeep3m.py --out runs/adapt_smoke --budgets 0.5 --seeds 0 --iterations 2 --no-forgetting

Needs ``../shared/data/cdeep3m_mito`` and, for forgetting, ``data/lucchi_raw*.zarr`` (README).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "cdeep3m_mito"
CDEEP3M_VS = (40.0, 5.9, 5.9)
MIX_NO_FOREGROUND = 0.25
"""Fraction of blocks from Lucchi++ when the suggested boxes hold no mitochondria."""
FILES = {
    "train_raw": "train_z010-029_image",
    "train_lab": "train_z010-029_mito",
    "val_raw": "val_z050-059_image",
    "val_lab": "val_z050-059_mito",
}


CONDITIONS = ("suggested", "random", "scratch")
"""Fine-tuned on suggested boxes, on random boxes, and trained on the random boxes from scratch."""


def _convert(data: Path) -> dict[str, Path]:
    from organet.volumes import convert_volume

    out = {}
    for key, name in FILES.items():
        dst = data / f"cdeep3m_{name}.zarr"
        if not dst.exists():
            convert_volume(SHARED / f"{name}.tif", dst, voxel_size=CDEEP3M_VS)
        out[key] = dst
    return out


def _score(prob: Path, truth: Path, roi_vox: str | None = None, exclusion: bool = False) -> dict[str, float]:
    from organet.evaluate.blockwise import evaluate_volumes
    from organet.volumes import open_volume, parse_roi

    p, t = open_volume(prob), open_volume(truth)
    if roi_vox is not None:
        t = t.crop(parse_roi(roi_vox, "vox", t))
    out = {}
    for name, ez in (("f1", None), ("f1_exclusion", "mito"))[: 2 if exclusion else 1]:
        c = evaluate_volumes(p, t, exclusion=ez).counts
        out[name] = float(c.f1)
        if ez is None:
            out.update(precision=float(c.precision), recall=float(c.recall))
    return out


def _predict(model: Path | str, raw: Path, out: Path, roi_vox: str | None = None) -> Path:
    from organet.predict import Predictor, predict_volume
    from organet.volumes import open_volume, parse_roi

    if not (out / "probability").exists():
        vol = open_volume(raw)
        roi = parse_roi(roi_vox, "vox", vol) if roi_vox else None
        predict_volume(Predictor.from_checkpoint(model, device="cpu"), vol, out, roi=roi, overwrite=True)
    return out / "probability"


class Cells:
    """results.json: one entry per finished cell, so a rerun skips it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key: str, fn: Any) -> Any:
        if key not in self.rows:
            t0 = time.time()
            print(f"[{datetime.datetime.now():%H:%M:%S}] {key} ...", flush=True)
            self.rows[key] = {**fn(), "seconds": round(time.time() - t0, 1)}
            self.path.write_text(json.dumps(self.rows, indent=2) + "\n")
            print(f"    {self.rows[key]}", flush=True)
        return self.rows[key]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="mito-lucchi", help="checkpoint or registry name")
    ap.add_argument("--data", type=Path, default=ROOT / "data", help="converted volumes (made if missing)")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="µm³ annotated")
    ap.add_argument("--box-um3", type=float, default=0.5, help="volume of one box (µm³)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--iterations", type=int, default=300, help="training iterations of every run")
    ap.add_argument("--forgetting-budget", type=float, default=1.0)
    ap.add_argument("--no-forgetting", action="store_true")
    ap.add_argument(
        "--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS), help="which runs (in this order)"
    )
    args = ap.parse_args(argv)
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent (see ../shared/data/README.md)")
        return 0

    from organet.annotate.suggest import suggest
    from organet.config import RoiSpec
    from organet.model.checkpoint import load_checkpoint
    from organet.model.registry import resolve_model
    from organet.train.finetune import DEFAULT_LR, SCRATCH_LR, finetune_config
    from organet.train.loop import train

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    files = _convert(args.data)
    model = resolve_model(args.model)
    ckpt = load_checkpoint(model)
    cells = Cells(out / "results.json")
    cells.rows.setdefault("_meta", {})
    cells.rows["_meta"] = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "date": f"{datetime.date.today()}",
        "model": str(args.model),
        "iterations": args.iterations,
        "box_um3": args.box_um3,
        "seeds": args.seeds,
        "budgets": args.budgets,
    }

    cells.get(
        "zero_shot", lambda: _score(_predict(model, files["val_raw"], out / "zero_shot_val.zarr"), files["val_lab"])
    )
    train_pred = _predict(model, files["train_raw"], out / "zero_shot_train.zarr")
    side_nm = math.sqrt(args.box_um3 * 1e9 / (20 * CDEEP3M_VS[0]))
    box_nm = (20 * CDEEP3M_VS[0], side_nm, side_nm)

    def boxes(budget: float, strategy: str, seed: int) -> list[str]:
        k = max(1, round(budget / args.box_um3))
        d = out / "boxes" / f"{strategy}_b{budget:g}_s{seed}"
        res = suggest([train_pred], d, box_nm=box_nm, k=k, strategy=strategy, seed=seed)  # type: ignore[arg-type]
        return [b.roi_vox for b in res.boxes]

    def run(name: str, rois: list[str], seed: int, scratch: bool = False, mix: float = 0.0) -> dict[str, Any]:
        run_dir = out / "runs" / name
        specs = [RoiSpec(raw=str(files["train_raw"]), labels=str(files["train_lab"]), roi_vox=r) for r in rois]
        old = []
        if mix > 0:
            old = [
                RoiSpec(
                    raw=str(args.data / "lucchi_raw_10nm.zarr"),
                    labels=str(args.data / "lucchi_mito_10nm.zarr"),
                    roi_vox="0:62,:,:",
                )
            ]
        cfg = finetune_config(
            ckpt, specs, run_dir, iterations=args.iterations, minutes=None, seed=seed, mix=mix, old=old,
            lr=SCRATCH_LR if scratch else DEFAULT_LR,
        )  # fmt: skip
        last = run_dir / "checkpoints" / f"iter_{args.iterations:07d}.pt"
        if not last.is_file():
            train(
                cfg, init_from=None if scratch else model, resume=(run_dir / "checkpoints").is_dir(), log=lambda s: None
            )
        row = _score(_predict(last, files["val_raw"], run_dir / "val.zarr"), files["val_lab"])
        return {**row, "rois": rois, "voxels_um3": len(rois) * args.box_um3, "mix": mix}

    def foreground(rois: list[str]) -> float:
        """Fraction of mitochondria voxels in the boxes (what the annotator would find)."""
        from organet.volumes import open_volume, parse_roi

        lab = open_volume(files["train_lab"])
        counts = [(lab.read(parse_roi(r, "vox", lab)) > 0) for r in rois]
        return float(sum(c.sum() for c in counts) / sum(c.size for c in counts))

    def suggested_run(name: str, rois: list[str], seed: int) -> dict[str, Any]:
        fg = foreground(rois)
        if fg > 0:
            return {**run(name, rois, seed), "foreground": fg}
        # organet finetune refuses labels without foreground and names the remedy: mix in source data
        row = run(f"{name}_mix{MIX_NO_FOREGROUND:g}", rois, seed, mix=MIX_NO_FOREGROUND)
        return {**row, "foreground": fg, "note": "no mitochondria in the suggested boxes: mixed with Lucchi++"}

    # forgetting first: it needs one budget only, the sweep over budgets and seeds takes longest
    if not args.no_forgetting:
        lucchi_raw, lucchi_lab = args.data / "lucchi_raw.zarr", args.data / "lucchi_mito.zarr"
        b = args.forgetting_budget
        suggested = cells.get(f"boxes_uncertainty_b{b:g}", lambda: {"rois": boxes(b, "uncertainty", 0)})["rois"]

        def old_domain(ckpt_path: Path | str, name: str) -> dict[str, Any]:
            p = _predict(ckpt_path, lucchi_raw, out / "old_domain" / f"{name}.zarr", "125:165,:,:")
            return _score(p, lucchi_lab, "125:165,:,:", exclusion=True)

        cells.get("old_domain_source", lambda: old_domain(model, "source"))
        for mix in (0.0, 0.25):
            key = f"suggested_b{b:g}_s0" if mix == 0 else f"suggested_b{b:g}_s0_mix{mix:g}"
            cells.get(key, lambda m=mix, k=key: run(k, suggested, 0, mix=m))
            last = out / "runs" / key / "checkpoints" / f"iter_{args.iterations:07d}.pt"
            cells.get(f"old_domain_{key}", lambda p=last, k=key: old_domain(p, k))

    def cell(cond: str, budget: float, seed: int) -> None:
        if cond == "suggested":
            key = f"boxes_uncertainty_b{budget:g}"
            rois = cells.get(key, lambda: {"rois": boxes(budget, "uncertainty", 0)})["rois"]
            name = f"suggested_b{budget:g}_s{seed}"
            cells.get(name, lambda: suggested_run(name, rois, seed))
            return
        rnd = cells.get(f"boxes_random_b{budget:g}_s{seed}", lambda: {"rois": boxes(budget, "random", seed)})["rois"]
        name = f"{cond}_b{budget:g}_s{seed}"
        cells.get(name, lambda: run(name, rnd, seed, scratch=cond == "scratch"))

    for cond in args.conditions:
        for budget in args.budgets:
            for seed in args.seeds:
                cell(cond, budget, seed)

    report(out, cells.rows, args)
    return 0


def report(out: Path, rows: dict[str, Any], args: argparse.Namespace) -> None:
    """results.md (tables) and f1_vs_budget.png from the finished cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zs = rows["zero_shot"]
    lines = [
        f"Model {args.model}; {args.iterations} iterations per run; boxes of {args.box_um3:g} µm³ (all 20 planes); "
        f"seeds {args.seeds}. F1 (no exclusion zone) on cdeep3m val z 050-059.",
        "",
        "| budget (µm³) | condition | F1 mean ± SD | precision | recall | runs |",
        "|---|---|---|---|---|---|",
        f"| 0 | zero-shot | {zs['f1']:.3f} | {zs['precision']:.3f} | {zs['recall']:.3f} | 1 |",
    ]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.axhline(zs["f1"], color="grey", ls="--", label="zero-shot")
    for cond, colour in (("suggested", "C0"), ("random", "C1"), ("scratch", "C2")):
        xs, ms, sds = [], [], []
        for b in args.budgets:
            keys = [k for s in args.seeds if (k := f"{cond}_b{b:g}_s{s}") in rows]
            if not keys:
                continue
            vals = [rows[k]["f1"] for k in keys]
            sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
            prec = np.mean([rows[k]["precision"] for k in keys])
            rec = np.mean([rows[k]["recall"] for k in keys])
            lines.append(f"| {b:g} | {cond} | {np.mean(vals):.3f} ± {sd:.3f} | {prec:.3f} | {rec:.3f} | {len(vals)} |")
            xs.append(b)
            ms.append(np.mean(vals))
            sds.append(0 if math.isnan(sd) else sd)
        if xs:
            label = {"suggested": "fine-tuned, suggested boxes", "random": "fine-tuned, random boxes"}.get(
                cond, "target alone (from scratch)"
            )
            ax.errorbar(xs, ms, yerr=sds, marker="o", color=colour, capsize=3, label=label)
    ax.set_xlabel("annotated volume (µm³)")
    ax.set_ylabel("F1 on cdeep3m validation planes")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "f1_vs_budget.png", dpi=120)
    plt.close(fig)
    old = {k.removeprefix("old_domain_"): v for k, v in rows.items() if k.startswith("old_domain_")}
    if old:
        lines += ["", "| Lucchi++ held-out (old domain) | F1 | F1 excl. |", "|---|---|---|"]
        lines += [f"| {k} | {v['f1']:.3f} | {v['f1_exclusion']:.3f} |" for k, v in old.items()]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
