"""Tile sizes: measured peak memory and speed of one forward pass against the planner's estimate.

For each tile input size, a fresh subprocess builds the network (seeded weights), runs one
warm-up and ``--repeats`` timed forward passes, and reports the peak resident memory it
added (``ru_maxrss`` after the passes minus the resident size before the input existed)
next to :func:`organet.predict.plan.forward_memory`, plus output voxels per second. The
ratio measured / estimated calibrates ``WORKSPACE_FACTOR`` in ``organet/predict/plan.py``.

    python benchmarks/tiles.py --net reduced --sizes 100 140 180 220      # the Lucchi CPU network
    python benchmarks/tiles.py --net asem --sizes 204 252 300 --repeats 1  # the full ASEM network
    python benchmarks/tiles.py --net asem --sizes 204 300 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

NETS = {
    "asem": {},
    "reduced": {"num_fmaps": 16, "downsample_factors": [[2, 2, 2], [2, 2, 2]]},
}

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from organet.model.unet import UNet, UNetConfig, output_shape
from organet.predict.tiled import _AUTOCAST
cfg = UNetConfig.from_dict(json.loads(sys.argv[1]))
size, repeats, device, precision = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
torch.manual_seed(0)
model = UNet(cfg).to(device).eval()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
before = rss()
x = torch.from_numpy(np.random.default_rng(0).random((1, 1, size, size, size), dtype=np.float32)).to(device)
times = []
with torch.no_grad():
    for i in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        dt = _AUTOCAST.get(precision, torch.bfloat16)
        with torch.autocast(torch.device(device).type, dtype=dt, enabled=precision != "fp32"):
            y = torch.softmax(model(x).float(), 1)[:, 1].cpu()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
if device.startswith("cuda"):
    peak = torch.cuda.max_memory_allocated()
out = output_shape(cfg, (size,) * 3)
print(json.dumps({"peak": peak, "seconds": min(times[1:]) if repeats else times[0], "out": out[0]}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", choices=sorted(NETS), default="reduced")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 140, 180])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = ap.parse_args(argv)

    from organet.model.unet import UNetConfig
    from organet.predict.plan import forward_macs, forward_memory

    cfg = UNetConfig.from_dict(NETS[args.net])
    print(f"network {args.net}, device {args.device}, {args.precision}")
    print(
        "| tile in | tile out | estimated GiB | measured GiB | measured / estimated | s/tile | output Mvoxels/s "
        "| GMAC/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        res = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(cfg.to_dict()), str(size), str(args.repeats), args.device,
             args.precision],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            why = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode
            print(f"| {size} | failed: {why} |")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        est = forward_memory(cfg, (size,) * 3, 1, args.precision)
        macs = forward_macs(cfg, (size,) * 3)
        print(
            f"| {size}³ | {r['out']}³ | {est / 2**30:.2f} | {r['peak'] / 2**30:.2f} | {r['peak'] / est:.2f} | "
            f"{r['seconds']:.2f} | {r['out'] ** 3 / r['seconds'] / 1e6:.3f} | {macs / r['seconds'] / 1e9:.1f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
