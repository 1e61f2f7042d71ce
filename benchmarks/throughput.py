"""Forward-pass throughput and training iterations/s of the full ASEM U-Net and the
reduced CPU network; prints a markdown table.

    python benchmarks/throughput.py                 # both nets, this machine's device
    python benchmarks/throughput.py --skip-full     # reduced net only (fast)
    python benchmarks/throughput.py --device cuda   # on a GPU (bf16 autocast, as training uses)

"voxels/s" counts output voxels (the voxels a tile predicts). Training iterations
include sampling and augmentation of a synthetic block, as in a real run.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date

import numpy as np
import torch

from organet.model.unet import ASEM_UNET, UNet, UNetConfig, count_parameters, output_shape
from organet.train.augment import AugmentConfig, augment, upstream_shape
from organet.train.loss import balanced_cross_entropy

REDUCED = UNetConfig(num_fmaps=16, downsample_factors=((2, 2, 2), (2, 2, 2)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_rate(cfg: UNetConfig, size: int, device: torch.device, repeats: int, batch: int = 1) -> tuple[float, float]:
    """(seconds per forward pass, output voxels per second)."""
    net = UNet(cfg).to(device).eval()
    x = torch.randn(batch, 1, size, size, size, device=device)
    out = output_shape(cfg, (size,) * 3)
    autocast = device.type == "cuda"
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            _sync(device)
            t = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                net(x)
            _sync(device)
            if i:  # first pass is warm-up
                times.append(time.perf_counter() - t)
    s = float(np.median(times))
    return s, batch * np.prod(out) / s


def train_rate(cfg: UNetConfig, size: int, device: torch.device, repeats: int) -> float:
    """Seconds per training iteration (augment + forward + backward + Adam step), batch 1."""
    net = UNet(cfg).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-5, weight_decay=3e-5)
    in_shape = (size,) * 3
    out = output_shape(cfg, in_shape)
    aug = AugmentConfig()
    up = upstream_shape(in_shape, aug)
    rng = np.random.default_rng(0)
    raw = rng.uniform(-1, 1, up).astype(np.float32)
    lab = (rng.random(up) < 0.1).astype(np.uint8)
    mask = np.ones(up, np.uint8)
    autocast = device.type == "cuda"
    times = []
    for i in range(repeats + 1):
        _sync(device)
        t = time.perf_counter()
        x, y, m = augment(raw, lab, mask, in_shape, out, aug, rng)
        xt = torch.from_numpy(x)[None, None].to(device)
        yt, mt = torch.from_numpy(y)[None].to(device), torch.from_numpy(m)[None].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = net(xt)
        loss = balanced_cross_entropy(logits, yt, mt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        _sync(device)
        if i:
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-full", action="store_true", help="skip the full ASEM network (slow on a CPU)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 2 on CPU, 10 on GPU)")
    args = ap.parse_args()
    device = torch.device(args.device)
    reps = args.repeats or (10 if device.type == "cuda" else 2)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    )
    print(
        f"# organet throughput, {date.today()}, device: {name}, torch {torch.__version__}, "
        f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}\n"
    )
    print(
        "| network | params | input → output | forward s/tile | forward output voxels/s "
        "| train s/iteration | train iterations/s |"
    )
    print("|---|---|---|---|---|---|---|")
    nets = [("reduced (16 fmaps, 3 levels)", REDUCED, [100, 156])]
    if not args.skip_full:
        nets.insert(0, ("ASEM full (32 fmaps, 4 levels)", ASEM_UNET, [204]))
    for label, cfg, sizes in nets:
        for size in sizes:
            out = output_shape(cfg, (size,) * 3)[0]
            s, vps = forward_rate(cfg, size, device, reps)
            t = train_rate(cfg, size, device, reps) if size == sizes[0] else float("nan")
            tr = "—" if np.isnan(t) else f"{t:.2f}"
            ti = "—" if np.isnan(t) else f"{1 / t:.3f}"
            print(
                f"| {label} | {count_parameters(UNet(cfg)):,} | {size}³ → {out}³ | {s:.2f} | {vps:,.0f} | {tr} | {ti} |"
            )


if __name__ == "__main__":
    main()
