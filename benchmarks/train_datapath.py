"""Training data path: seconds per step split into waiting for data and computing, with the
batches made inline (``data_workers: 0``) and in a background thread (``data_workers: 1``).

    python benchmarks/train_datapath.py --config configs/lucchi_mito_cpu.yaml --iterations 40

Runs each setting for ``--iterations`` steps into a temporary folder (no validation, no
checkpoints until the end) and prints one markdown table row per setting.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=Path("configs/lucchi_mito_cpu.yaml"))
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args(argv)

    import torch

    from organet.config import load_config
    from organet.train.loop import train

    threads = torch.get_num_threads()
    print(f"config {args.config}, {args.iterations} iterations, torch {torch.__version__}, {threads} threads")
    print("| data_workers | s/step | computing s | waiting for data s | waiting % |")
    print("|---|---|---|---|---|")
    for w in args.workers:
        cfg = load_config(args.config)
        with tempfile.TemporaryDirectory() as tmp:
            raw = cfg.model_dump()
            raw["output_dir"] = tmp
            raw["training"].update(
                iterations=args.iterations, checkpoint_every=args.iterations, data_workers=w, max_minutes=None
            )
            raw["data"]["validation"] = []
            cfg = type(cfg).model_validate(raw)
            res = train(cfg, log=lambda s: None)
        n = max(1, res.iteration)
        step = (res.compute_s + res.data_wait_s) / n
        print(
            f"| {w} | {step:.2f} | {res.compute_s / n:.2f} | {res.data_wait_s / n:.3f} | "
            f"{100 * res.data_wait_fraction:.1f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
