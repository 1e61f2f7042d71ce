"""Prediction in-process and on Dask: throughput and peak memory on two volume sizes 8x apart.

    python benchmarks/blockwise.py                       # 64x128x128 and 128x256x256, 2 workers, CPU
    python benchmarks/blockwise.py --size 128 256 256 --workers 4 --fmaps 16
    python benchmarks/blockwise.py --device cuda --workers 1 --fmaps 32 --levels 4 --tile 204

Both drivers are the one ``organet.predict.predict_volume`` on the same block plan: once
in this process (``client=None``) and once on a Dask ``LocalCluster``
(``organet.blockwise.dask_client``); the outputs (probability, mask and every pyramid
level) are checked to be byte-identical. Each measurement runs in a fresh subprocess
(and, on Dask, a fresh cluster) so peak memory is that run's own: peak RSS of the
driving process and the largest peak RSS of a worker. In-process prediction gets
``workers x threads`` torch threads, the same compute as the cluster. "voxels/s"
counts predicted output voxels over the wall time of the whole call (cluster start,
model load and pyramid included). A memory-flat driver shows the same peak memory at
both sizes. Prints a markdown table.

(The gunpowder ``Scan`` baseline, in a venv of its own, is ``benchmarks/gunpowder_baseline.py``.)
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DRIVERS = {"inprocess": "in-process", "dask": "Dask"}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _prepare(d: Path, size: list[int], fmaps: int, levels: int, tile: int) -> None:
    import torch

    from organet.model.checkpoint import Checkpoint, save_checkpoint
    from organet.model.unet import UNet, UNetConfig
    from organet.preprocess import Normalization
    from organet.volumes import write_ome_zarr

    cfg = UNetConfig(num_fmaps=fmaps, downsample_factors=((2, 2, 2),) * (levels - 1))
    torch.manual_seed(0)
    save_checkpoint(
        Checkpoint(cfg, (tile,) * 3, (5.0,) * 3, Normalization(), "mito", UNet(cfg).state_dict()), d / "model.pt"
    )
    rng = np.random.default_rng(0)
    with write_ome_zarr(d / "raw.zarr") as w:
        v = w.create_image(None, size, np.uint8, (5, 5, 5), chunks=(64, 64, 64))
        for z in range(0, size[0], 64):
            v.write(
                (slice(z, z + 64), slice(None), slice(None)),
                rng.integers(0, 255, (min(64, size[0] - z), size[1], size[2]), dtype=np.uint8),
            )


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a prediction output (``probability/s0``, ``probability/labels/mask/s1``, ...)."""
    import zarr

    from organet.predict.run import IMAGES

    out = {}
    for image in IMAGES:
        g = zarr.open_group(str(path / image), mode="r")
        for key in sorted(g.array_keys()):
            out[f"{image}/{key}"] = np.asarray(g[key][...])
    return out


def _one(args: argparse.Namespace) -> None:
    """Run one measurement in this process and print JSON."""
    from organet.predict import Predictor, predict_volume

    d = Path(args.dir)
    threads = args.threads if args.mode == "dask" else args.threads * args.workers
    predictor = Predictor.from_checkpoint(d / "model.pt", tile=(args.tile,) * 3, device=args.device, threads=threads)
    kw = {"block_shape": args.block, "overwrite": True}
    t0 = time.perf_counter()
    if args.mode == "inprocess":
        res = predict_volume(predictor, d / "raw.zarr", d / f"{args.mode}.zarr", **kw)
        worker_peak = 0.0
    else:
        from organet.blockwise import dask_client

        with dask_client(workers=args.workers, threads_per_worker=args.threads) as client:
            res = predict_volume(predictor, d / "raw.zarr", d / f"{args.mode}.zarr", client=client, **kw)
            worker_peak = max(client.run(_peak_rss_mib).values())
    dt = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "seconds": dt,
                "client_peak_mib": _peak_rss_mib(),
                "worker_peak_mib": worker_peak,
                "blocks": res.blocks,
                "levels": res.pyramid_levels,
                "note": res.note,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--size", type=int, nargs=3, default=[64, 128, 128], help="small volume (z y x); the large one is 2x per axis"
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--fmaps", type=int, default=8)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--tile", type=int, default=108, help="network input per tile (isotropic)")
    ap.add_argument("--block", type=int, nargs=3, default=[64, 64, 64], help="block shape (voxels), both drivers")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-inprocess", action="store_true", help="only the Dask run (no identity check)")
    ap.add_argument("--one", choices=list(DRIVERS), dest="mode", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        _one(args)
        return
    modes = ["dask"] if args.skip_inprocess else ["inprocess", "dask"]
    rows = []
    notes: set[str] = set()
    for scale in (1, 2):
        size = [s * scale for s in args.size]
        with tempfile.TemporaryDirectory() as tmp:
            _prepare(Path(tmp), size, args.fmaps, args.levels, args.tile)
            res = {}
            for mode in modes:
                cmd = [sys.executable, __file__, "--one", mode, "--dir", tmp]
                for opt in ("workers", "threads", "tile", "device"):
                    cmd += [f"--{opt}", str(getattr(args, opt))]
                cmd += ["--block", *map(str, args.block)]
                p = subprocess.run(cmd, capture_output=True, text=True)
                if p.returncode:
                    raise SystemExit(f"{mode} run failed ({p.returncode}):\n{p.stderr[-4000:]}")
                res[mode] = json.loads(p.stdout.strip().splitlines()[-1])
                if res[mode]["note"]:
                    notes.add(f"{'x'.join(map(str, size))}: {res[mode]['note']}")
            same = None
            if len(modes) == 2:
                a, b = _arrays(Path(tmp) / "inprocess.zarr"), _arrays(Path(tmp) / "dask.zarr")
                same = sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
        n = int(np.prod(size))
        for mode, r in res.items():
            rows.append((size, mode, n / r["seconds"], r, same))
    print(
        f"\n{platform.processor() or platform.machine()}, device {args.device}, U-Net fmaps {args.fmaps} levels "
        f"{args.levels}, tile {args.tile}^3, blocks {'x'.join(map(str, args.block))}, Dask {args.workers} workers x "
        f"{args.threads} threads, in-process {args.workers * args.threads} threads"
    )
    for note in sorted(notes):
        print(f"note, {note}")
    print()
    print(
        "| volume (z, y, x) | driver | blocks | voxels/s | wall s | client peak RSS MiB | worker peak RSS MiB "
        "| identical (all levels) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for size, mode, vps, r, same in rows:
        wp = f"{r['worker_peak_mib']:.0f}" if mode == "dask" else "–"
        ident = "–" if same is None else ("yes" if same else "NO")
        print(
            f"| {'x'.join(map(str, size))} | {DRIVERS[mode]} | {r['blocks']} | {vps:,.0f} | {r['seconds']:.1f} "
            f"| {r['client_peak_mib']:.0f} | {wp} | {ident} |"
        )
    if any(same is False for *_, same in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
