"""Blockwise (Dask) prediction: throughput and peak memory on two volume sizes 8x apart.

    python benchmarks/blockwise.py                       # 64x128x128 and 128x256x256, 2 workers, CPU
    python benchmarks/blockwise.py --size 128 256 256 --workers 4 --fmaps 16
    python benchmarks/blockwise.py --device cuda --workers 1 --fmaps 32 --levels 4 --tile 204

Each measurement runs in a fresh subprocess (and, blockwise, a fresh LocalCluster) so
peak memory is that run's own: peak RSS of the client process and the largest peak
RSS of a worker. The baseline is organet's single-process tiled prediction
(``predict_volume``) on the same volume and model; the result is checked to be
identical. "voxels/s" counts predicted output voxels over the wall time of the whole
command (cluster start, model load, pyramid included). A memory-flat driver shows the
same peak memory at both sizes. Prints a markdown table.

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


def _one(args: argparse.Namespace) -> None:
    """Run one measurement in this process and print JSON."""
    d = Path(args.dir)
    tile = (args.tile,) * 3
    t0 = time.perf_counter()
    if args.mode == "single":
        from organet.predict.run import predict_volume

        predict_volume(
            d / "model.pt",
            d / "raw.zarr",
            d / "single.zarr",
            tile_shape=tile,
            device=args.device,
            progress=False,
            overwrite=True,
        )
        worker_peak = 0.0
    else:
        from distributed import Client, LocalCluster

        from organet.predict.blockwise import predict_blockwise

        with (
            LocalCluster(
                n_workers=args.workers, threads_per_worker=args.threads, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            predict_blockwise(
                d / "model.pt",
                d / "raw.zarr",
                d / "blockwise.zarr",
                tile_shape=tile,
                device=args.device,
                client=client,
                progress=False,
                overwrite=True,
                torch_threads=args.threads,
                block_shape=args.block,
            )
            worker_peak = max(client.run(_peak_rss_mib).values())
    dt = time.perf_counter() - t0
    print(json.dumps({"seconds": dt, "client_peak_mib": _peak_rss_mib(), "worker_peak_mib": worker_peak}))


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
    ap.add_argument("--block", type=int, nargs=3, default=[64, 64, 64], help="blockwise block shape (voxels)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-single", action="store_true", help="skip the single-process baseline")
    ap.add_argument("--one", choices=["single", "blockwise"], dest="mode", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        _one(args)
        return
    rows = []
    for scale in (1, 2):
        size = [s * scale for s in args.size]
        with tempfile.TemporaryDirectory() as tmp:
            _prepare(Path(tmp), size, args.fmaps, args.levels, args.tile)
            res = {}
            for mode in ["blockwise"] if args.skip_single else ["single", "blockwise"]:
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    mode,
                    "--dir",
                    tmp,
                    "--workers",
                    str(args.workers),
                    "--threads",
                    str(args.threads),
                    "--tile",
                    str(args.tile),
                    "--device",
                    args.device,
                    "--block",
                    *map(str, args.block),
                ]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                res[mode] = json.loads(out)
            if not args.skip_single:
                from organet.volumes import open_volume

                same = np.array_equal(
                    open_volume(f"{tmp}/single.zarr/probability").read(),
                    open_volume(f"{tmp}/blockwise.zarr/probability").read(),
                )
            else:
                same = None
        n = int(np.prod(size))
        for mode, r in res.items():
            rows.append((size, mode, n / r["seconds"], r["seconds"], r["client_peak_mib"], r["worker_peak_mib"], same))
    print(
        f"\n{platform.processor() or platform.machine()}, device {args.device}, U-Net fmaps {args.fmaps} levels "
        f"{args.levels}, tile {args.tile}^3, blocks {args.block}, {args.workers} workers x {args.threads} threads\n"
    )
    print("| volume (z, y, x) | driver | voxels/s | wall s | client peak RSS MiB | worker peak RSS MiB | identical |")
    print("|---|---|---|---|---|---|---|")
    for size, mode, vps, s, cp, wp, same in rows:
        print(f"| {'x'.join(map(str, size))} | {mode} | {vps:,.0f} | {s:.1f} | {cp:.0f} | {wp:.0f} | {same} |")


if __name__ == "__main__":
    main()
