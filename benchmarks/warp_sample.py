"""Sampling one augmented 204³ input through a coordinate map: scipy ``map_coordinates``
(what ``organet.train.augment`` uses, linear, mode ``reflect``) against torch ``grid_sample``
(trilinear, ``reflection`` padding, ``align_corners=False``: the same boundary rule), on the
same rotated and shifted map into a 220 × 306 × 306 upstream block.

    python benchmarks/warp_sample.py --repeats 3 --threads 2

Prints one markdown row per repeat: seconds of each and the largest difference.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=204, help="input cube (voxels)")
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F
    from scipy import ndimage as ndi

    torch.set_num_threads(args.threads)
    n = args.size
    up = (n + 16, n + 102, n + 102)
    rng = np.random.default_rng(0)
    block = rng.uniform(-1, 1, up).astype(np.float32)
    off = np.array([(u - n) // 2 for u in up], np.float32)
    c = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32)] * 3, indexing="ij")) + off[:, None, None, None]
    th, my, mx = 0.3, float(c[1].mean()), float(c[2].mean())
    cy, cx = c[1] - my, c[2] - mx
    c[1], c[2] = np.cos(th) * cy + np.sin(th) * cx + my, -np.sin(th) * cy + np.cos(th) * cx + mx
    c += rng.uniform(-2, 2, (3, 1, 1, 1)).astype(np.float32)
    print(f"torch {torch.__version__}, {args.threads} threads, {n}³ samples from {up}")
    print("| repeat | scipy map_coordinates s | torch grid_sample s | torch / scipy | max difference |")
    print("|---|---|---|---|---|")
    for k in range(args.repeats):
        t = time.perf_counter()
        a = ndi.map_coordinates(block, c, order=1, mode="reflect", prefilter=False)
        t_scipy = time.perf_counter() - t
        t = time.perf_counter()
        size = torch.tensor(up, dtype=torch.float32).view(3, 1, 1, 1)
        grid = ((2 * torch.from_numpy(c) + 1) / size - 1).flip(0).permute(1, 2, 3, 0)[None]
        src = torch.from_numpy(block)[None, None]
        b = F.grid_sample(src, grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0, 0].numpy()
        t_torch = time.perf_counter() - t
        diff = float(np.abs(a - b).max())
        print(f"| {k + 1} | {t_scipy:.2f} | {t_torch:.2f} | {t_torch / t_scipy:.2f} | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
