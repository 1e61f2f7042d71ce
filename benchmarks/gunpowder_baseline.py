"""organet against a gunpowder 1.4.4 baseline: tiled prediction of a volume and training
augmentation of one batch, on the CPU; prints a markdown table.

    bash benchmarks/gunpowder_env.sh                 # once: gunpowder in benchmarks/.gp-venv
    python benchmarks/gunpowder_baseline.py          # 300^3 voxels, ASEM net, 204^3 tiles
    python benchmarks/gunpowder_baseline.py --tiny --shape 64 64 64 --threads 1   # smoke test
    python benchmarks/gunpowder_baseline.py --tiny --shape 64 64 64 --organet-only  # without the baseline venv

Everything runs on one synthetic, seeded uint8 volume (5 nm voxels) written as zarr v2,
which both sides read, and one set of random, seeded weights (saved as an organet
checkpoint and as a plain torch ``state_dict``). Each measurement runs in a fresh
subprocess (organet's in this venv, gunpowder's in ``benchmarks/.gp-venv``, through
``_gp_side.py`` and the U-Net copy ``_gp_unet.py``) with ``--threads`` torch/OpenMP
threads; "peak RSS" is that subprocess's own maximum resident set size.

* Prediction: organet's ``predict_volume`` in this process (the driver of ``organet
  predict``, with its default block plan: for the ASEM tile one block of up to 312^3
  voxels, so every tile runs once; tiles on the network's 8-voxel pooling grid, step 104
  voxels for 204^3 -> 110^3, mirror padding at the volume border, uint8 probability +
  mask and their pyramids written as OME-Zarr v3) against incasem's gunpowder pipeline (Scan
  over 204^3 / 110^3 chunks, the last chunk per axis shifted to end at the border, Pad
  with reflection, float32 probability written as zarr v2), fp32, batch 1. Seconds are
  the wall time of the whole run (model load and writing included); voxels/s counts
  predicted voxels. Both probabilities are compared: where a gunpowder chunk starts on
  the 8-voxel grid the two must agree up to organet's uint8 rounding (<= 0.5/255);
  elsewhere gunpowder's chunks sit at another max-pooling phase and legitimately differ.
* Augmentation: one training batch of a 204^3 input (110^3 labels and mask). organet:
  ``BlockSampler.draw`` from the ROI in memory (no rejection), ``Normalization.apply`` and
  ``augment`` with ``AugmentConfig()`` defaults, as the training loop does; gunpowder:
  the seed's chain (see ``_gp_side.py``), which reads each batch from the zarr. Mean over
  ``--repeats`` batches after one warm-up batch. Training volume: cubic, 64 voxels
  larger than organet's upstream block (so gunpowder's rotated request fits).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
GP_PYTHON = HERE / ".gp-venv" / "bin" / "python"
VOXEL_NM = (5, 5, 5)
TINY = {"num_fmaps": 2, "downsample_factors": ((2, 2, 2),)}


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _write_volume(d: Path, shape: Sequence[int] | None, train_shape: Sequence[int] | None) -> None:
    """``d/data.zarr`` (zarr v2): ``raw`` (uint8 noise, ``shape``) and ``train/{raw,labels,mask}``
    (``train_shape``; labels = raw > 230, mask = 1), funlib attributes resolution/offset (nm).
    A shape of None leaves that part out."""
    import zarr
    from numcodecs import Blosc

    rng = np.random.default_rng(0)
    root = zarr.open_group(str(d / "data.zarr"), mode="w", zarr_format=2)

    def create(name: str, shp: Sequence[int]) -> Any:
        arr = root.create_array(
            name, shape=tuple(shp), chunks=(64, 64, 64), dtype=np.uint8, compressors=Blosc(cname="lz4", clevel=5)
        )
        arr.attrs.update({"resolution": list(VOXEL_NM), "offset": [0, 0, 0]})
        return arr

    if shape is not None:
        raw = create("raw", shape)
        for z in range(0, shape[0], 64):
            raw[z : z + 64] = rng.integers(0, 256, (min(64, shape[0] - z), *shape[1:]), dtype=np.uint8)
    if train_shape is not None:
        raw, lab, msk = (create(f"train/{n}", train_shape) for n in ("raw", "labels", "mask"))
        for z in range(0, train_shape[0], 64):
            block = rng.integers(0, 256, (min(64, train_shape[0] - z), *train_shape[1:]), dtype=np.uint8)
            raw[z : z + 64] = block
            lab[z : z + 64] = (block > 230).astype(np.uint8)
            msk[z : z + 64] = 1


def _write_model(d: Path, cfg: Any, tile: Sequence[int]) -> None:
    """``d/model.pt`` (organet checkpoint) and ``d/state_dict.pt`` (the same weights, plain torch).

    He-normal weights on every convolution (the final one included), so the logits
    spread and the probability comparison means something.
    """
    import torch
    from torch import nn

    from organet.model.checkpoint import Checkpoint, save_checkpoint
    from organet.model.unet import UNet
    from organet.preprocess import Normalization

    torch.manual_seed(0)
    net = UNet(cfg)
    for m in net.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    save_checkpoint(
        Checkpoint(cfg, tuple(tile), tuple(map(float, VOXEL_NM)), Normalization(), "mito", net.state_dict()),
        d / "model.pt",
    )
    torch.save(net.state_dict(), d / "state_dict.pt")


# -- organet subprocesses ---------------------------------------------------------------
def _organet_predict(a: dict[str, Any]) -> dict[str, Any]:
    from organet.model.checkpoint import load_checkpoint
    from organet.model.unet import count_parameters
    from organet.predict import Predictor, predict_volume
    from organet.volumes import open_volume

    t0 = time.perf_counter()
    tile = tuple(a["tile_in"]) if a.get("organet_tile") == "fixed" else None  # None: planned by memory
    predictor = Predictor.from_checkpoint(
        a["model"], tile=tile, batch_size=1, device="cpu", backend=a["backend"], memory_gib=a["memory_gib"]
    )
    res = predict_volume(predictor, a["raw"], a["output"], overwrite=True)
    dt = time.perf_counter() - t0
    vol = open_volume(a["raw"])
    tiles = predictor.for_region(vol, res.roi).grid().count(res.roi.offset, res.roi.end, res.roi.offset)
    n = count_parameters(load_checkpoint(a["model"]).build_model())
    return {
        "seconds": dt,
        "peak_mib": _peak_rss_mib(),
        "tiles": tiles,
        "tile": "x".join(map(str, predictor.for_region(vol, res.roi).tile or ())),
        "blocks": res.blocks,
        "note": res.note,
        "parameters": n,
    }


def _organet_augment(a: dict[str, Any]) -> dict[str, Any]:
    from organet.config import SamplingConfig
    from organet.preprocess import Normalization
    from organet.train.augment import AugmentConfig, augment, transpose_axes_from_voxel_size, upstream_shape
    from organet.train.sampling import BlockSampler, RoiData
    from organet.volumes import open_volume

    vols = {k: open_volume(f"{a['store']}/{p}") for k, p in a["datasets"].items()}
    raw = vols["raw"]
    rd = RoiData("train", raw.read(), vols["labels"].read(), vols["mask"].read(), raw.dtype, raw.voxel_size, raw.roi)
    cfg, norm = AugmentConfig(), Normalization()
    axes = transpose_axes_from_voxel_size(raw.voxel_size)
    in_shape, out_shape = tuple(a["tile_in"]), tuple(a["tile_out"])
    sampler = BlockSampler(
        [rd],
        out_shape,
        upstream_shape(in_shape, cfg),
        SamplingConfig(reject_probability=0.0, mask_reject_probability=0.0),
    )

    def batch(rng: np.random.Generator, threads: int = 1) -> tuple[np.ndarray, ...]:
        s = sampler.draw(rng)
        raw = norm.apply(s.raw, rd.raw_dtype)
        return augment(raw, s.labels, s.mask, in_shape, out_shape, cfg, rng, axes, threads=threads)

    def timed(threads: int) -> list[float]:
        rng = np.random.default_rng(0)
        times = []
        for i in range(a["repeats"] + 1):
            t = time.perf_counter()
            batch(rng, threads)
            if i:  # the first batch is warm-up
                times.append(time.perf_counter() - t)
        return times

    times = timed(1)
    split = timed(a["threads"])
    # throughput of the training loop's data workers: `threads` threads making batches at once
    from concurrent.futures import ThreadPoolExecutor

    n = a["repeats"] * a["threads"]
    t = time.perf_counter()
    with ThreadPoolExecutor(a["threads"]) as pool:
        list(pool.map(lambda i: batch(np.random.default_rng([1, i])), range(n)))
    parallel = (time.perf_counter() - t) / n
    x, y, m = batch(np.random.default_rng(0))
    return {
        "parallel_seconds": parallel,
        "split_seconds": float(np.mean(split)),
        "seconds": float(np.mean(times)),
        "all_seconds": times,
        "peak_mib": _peak_rss_mib(),
        "shapes": [list(x.shape), list(y.shape), list(m.shape)],
    }


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    return env


def _run(label: str, cmd: list[str], threads: int) -> dict[str, Any]:
    """Run one measurement subprocess; its last stdout line is JSON. Logs to stderr."""
    print(f"{label} ...", end=" ", file=sys.stderr, flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(threads))
    if p.returncode:
        raise SystemExit(f"\n{label} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"{res['seconds']:.2f} s", file=sys.stderr, flush=True)
    return res


def _organet(args: dict[str, Any]) -> dict[str, Any]:
    return _run(f"organet {args['mode']}", [sys.executable, __file__, "--one", json.dumps(args)], args["threads"])


def _gunpowder(gp_python: Path, args: dict[str, Any]) -> dict[str, Any]:
    return _run(
        f"gunpowder {args['mode']}", [str(gp_python), str(HERE / "_gp_side.py"), json.dumps(args)], args["threads"]
    )


# -- comparison ---------------------------------------------------------------------------
def _aligned_axis(n: int, out: int, factor: int) -> np.ndarray:
    """Per voxel of an axis of ``n``: does the gunpowder chunk that wrote it last (Scan's
    order, the last chunk shifted to end at ``n``) start on the ``factor`` grid?"""
    starts = list(range(0, n - out + 1, out))
    if starts[-1] != n - out:
        starts.append(n - out)
    owner = np.zeros(n, np.int64)
    for s in starts:
        owner[s : s + out] = s
    return owner % factor == 0


def compare(organet: Path, gunpowder: Path, tile_out: Sequence[int], factor: Sequence[int]) -> dict[str, float]:
    """Max |organet - gunpowder| foreground probability; on the grid-aligned region and overall."""
    import zarr

    from organet.volumes import open_volume

    p_org = open_volume(str(organet / "probability")).read().astype(np.float32) / 255.0
    p_gp = np.asarray(zarr.open_array(str(gunpowder), path="probability", mode="r")[...])
    diff = np.abs(p_org - p_gp)
    ax = [_aligned_axis(n, o, f) for n, o, f in zip(diff.shape, tile_out, factor)]
    sel = ax[0][:, None, None] & ax[1][None, :, None] & ax[2][None, None, :]
    return {
        "aligned_voxels": int(sel.sum()),
        "aligned_max": float(diff[sel].max()) if sel.any() else float("nan"),
        "all_max": float(diff.max()),
        "all_frac_over": float((diff > 1.0 / 255).mean()),
        "prob_std": float(p_org.std()),
    }


def _ratios(o: dict[str, Any], g: dict[str, Any] | None) -> tuple[float, str, str]:
    """organet's peak RSS, and its time and RSS over gunpowder's ("–" without the baseline)."""
    if g is None:
        return o["peak_mib"], "–", "–"
    return o["peak_mib"], f"{o['seconds'] / g['seconds']:.2f}", f"{o['peak_mib'] / g['peak_mib']:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[300, 300, 300], help="prediction volume (voxels, z y x)")
    ap.add_argument("--sweep", type=int, nargs="+", help="instead of --shape: cubes of these sides, one after another")
    ap.add_argument(
        "--organet-tile",
        choices=("plan", "fixed"),
        default="plan",
        help="organet's tile: planned within the memory budget (as organet predict does) or the fixed --tile",
    )
    ap.add_argument("--backend", default="torch", help="organet's forward-pass backend (torch, openvino)")
    ap.add_argument("--memory-gib", type=float, default=None, help="organet's memory budget (GiB)")
    ap.add_argument("--repeats", type=int, default=3, help="timed augmentation batches per side (after 1 warm-up)")
    ap.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads, both sides")
    ap.add_argument("--tile", type=int, default=None, help="network input per tile (isotropic; default 204, tiny 40)")
    ap.add_argument("--tiny", action="store_true", help="smoke test: 2 fmaps, 1 downsampling")
    ap.add_argument("--skip-predict", action="store_true")
    ap.add_argument("--skip-augment", action="store_true")
    ap.add_argument("--gp-python", type=Path, default=GP_PYTHON, help="python of the gunpowder venv")
    ap.add_argument("--keep", type=Path, default=None, help="write the data here and keep it (default: temp dir)")
    ap.add_argument("--organet-only", action="store_true", help="run organet's side only (no baseline venv needed)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        a = json.loads(args.one)
        import torch

        torch.set_num_threads(a["threads"])
        print(json.dumps({"predict": _organet_predict, "augment": _organet_augment}[a["mode"]](a)))
        return
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    gp = not args.organet_only
    if gp and not args.gp_python.exists():
        raise SystemExit(f"{args.gp_python} not found: build the baseline venv with bash benchmarks/gunpowder_env.sh")

    import torch

    from organet.model.unet import UNet, UNetConfig, count_parameters, output_shape
    from organet.train.augment import AugmentConfig, upstream_shape

    cfg = UNetConfig(**TINY) if args.tiny else UNetConfig()
    tile = (args.tile or (40 if args.tiny else 204),) * 3
    tile_out = output_shape(cfg, tile)
    if tile_out is None:
        raise SystemExit(f"tile {tile} is not a valid input of this network")
    up = upstream_shape(tile, AugmentConfig())
    train_shape = (max(up) + 64,) * 3
    n_params = count_parameters(UNet(cfg))
    cpu = platform.processor() or platform.machine()
    volumes = " / ".join(f"{n}^3" for n in args.sweep) if args.sweep else "x".join(map(str, args.shape))
    print(
        f"# organet vs gunpowder, {cpu}, {args.threads} threads, torch {torch.__version__}, "
        f"gunpowder {_gp_version(args.gp_python) if gp else '(not run)'}\n"
    )
    print(
        f"U-Net {cfg.num_fmaps} fmaps, {len(cfg.downsample_factors)} downsamplings, {n_params:,} parameters; "
        f"tile {tile[0]}^3 -> {tile_out[0]}^3; prediction volume {volumes}; "
        f"augmentation input {tile[0]}^3 (organet upstream block {'x'.join(map(str, up))}, training volume "
        f"{train_shape[0]}^3); fp32, batch 1\n",
        flush=True,
    )

    rows: list[tuple[str, str, float, str, float, str, str]] = []
    aug_rows: list[tuple[str, str, float, str, float, str, str]] = []
    cmp: dict[str, float] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        d = args.keep or Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        _write_volume(d, None, None if args.skip_augment else train_shape)
        _write_model(d, cfg, tile)
        common = {"threads": args.threads, "tile_in": list(tile), "tile_out": list(tile_out)}
        store = str(d / "data.zarr")
        # augmentation first: it is quick, so a broken baseline venv shows before the long prediction
        if not args.skip_augment:
            a = {
                **common,
                "mode": "augment",
                "repeats": args.repeats,
                "store": store,
                "voxel_size": list(VOXEL_NM),
                "datasets": {"raw": "train/raw", "labels": "train/labels", "mask": "train/mask"},
            }
            o = _organet(a)
            g = _gunpowder(args.gp_python, a) if gp else None
            assert g is None or o["shapes"] == g["shapes"], (o["shapes"], g["shapes"])
            what = f"augment {tile[0]}^3 batch (mean of {args.repeats})"
            aug_rows.append(("organet", what, o["seconds"], f"{1 / o['seconds']:.3f} batch/s", *_ratios(o, g)))
            split = {**o, "seconds": o["split_seconds"]}
            aug_rows.append(
                (
                    "organet",
                    f"the same, one batch's warp split over {args.threads} threads",
                    split["seconds"],
                    f"{1 / split['seconds']:.3f} batch/s",
                    *_ratios(split, g),
                )
            )
            par = {**o, "seconds": o["parallel_seconds"]}
            aug_rows.append(
                (
                    "organet",
                    f"the same, {args.threads} data-worker threads at once (seconds per batch)",
                    par["seconds"],
                    f"{1 / par['seconds']:.3f} batch/s",
                    *_ratios(par, g),
                )
            )
            if g is not None:
                aug_rows.append(
                    ("gunpowder", what, g["seconds"], f"{1 / g['seconds']:.3f} batch/s", g["peak_mib"], "1", "1")
                )

        shapes = [(n, n, n) for n in args.sweep] if args.sweep else [tuple(args.shape)]
        for shape in [] if args.skip_predict else shapes:
            _write_volume(d, shape, None)
            o = _organet(
                {
                    **common,
                    "mode": "predict",
                    "model": str(d / "model.pt"),
                    "raw": f"{store}/raw",
                    "output": str(d / f"organet_{shape[0]}.zarr"),
                    "organet_tile": args.organet_tile,
                    "backend": args.backend,
                    "memory_gib": args.memory_gib,
                }
            )
            g = None
            if gp:
                g = _gunpowder(
                    args.gp_python,
                    {
                        **common,
                        "mode": "predict",
                        "store": store,
                        "dataset": "raw",
                        "state_dict": str(d / "state_dict.pt"),
                        "architecture": cfg.to_dict(),
                        "voxel_size": list(VOXEL_NM),
                        "shape": list(shape),
                        "output": str(d / f"gunpowder_{shape[0]}.zarr"),
                    },
                )
            assert o["parameters"] == n_params and (g is None or g["parameters"] == n_params), (o, g, n_params)
            if o["note"]:
                print(f"organet: note: {o['note']}", file=sys.stderr)
            n = float(np.prod(shape))
            what = f"predict {'x'.join(map(str, shape))}"
            blocks = f"{o['blocks']} block{'s' if o['blocks'] > 1 else ''}"
            how = f"{o['tiles']} tiles of {o['tile']}, {blocks}, {args.backend}"
            rows.append(("organet", f"{what} ({how})", o["seconds"], f"{n / o['seconds']:,.0f} vox/s") + _ratios(o, g))
            if g is not None:
                gtiles = int(np.prod([-(-x // tile_out[0]) for x in shape]))
                rows.append(
                    (
                        "gunpowder",
                        f"{what} (Scan, {gtiles} tiles of {tile[0]}^3)",
                        g["seconds"],
                        f"{n / g['seconds']:,.0f} vox/s",
                        g["peak_mib"],
                        "1",
                        "1",
                    )
                )
                outs = (d / f"organet_{shape[0]}.zarr", d / f"gunpowder_{shape[0]}.zarr")
                cmp = compare(*outs, tile_out, cfg.total_factor)
            side_, what_, sec, thr, mib, rt, rm = rows[-1 if g is None else -2]
            print(f"| {side_} | {what_} | {sec:.2f} | {thr} | {mib:.0f} | {rt} | {rm} |", flush=True)
    print("\n| side | what | seconds | throughput | peak RSS MiB | time organet/gunpowder | RSS organet/gunpowder |")
    print("|---|---|---|---|---|---|---|")
    for side, what, s, thr, mib, rt, rm in rows + aug_rows:
        print(f"| {side} | {what} | {s:.2f} | {thr} | {mib:.0f} | {rt} | {rm} |")
    if cmp is not None:
        print(
            f"\nSame network on both sides ({n_params:,} parameters each). Foreground probability "
            f"(std {cmp['prob_std']:.3f}), max |organet - gunpowder|: {cmp['aligned_max']:.4f} on the "
            f"{cmp['aligned_voxels']:,} voxels whose gunpowder chunk starts on the {cfg.total_factor[0]}-voxel "
            f"pooling grid (organet stores uint8: <= {0.5 / 255:.4f} expected); {cmp['all_max']:.4f} over the "
            f"whole volume, where {100 * cmp['all_frac_over']:.1f}% of voxels differ by more than 1/255 "
            f"(gunpowder chunks off the pooling grid)."
        )


def _gp_version(gp_python: Path) -> str:
    p = subprocess.run(
        [str(gp_python), "-c", "from importlib.metadata import version; print(version('gunpowder'))"],
        capture_output=True,
        text=True,
    )
    return p.stdout.strip() or "?"


if __name__ == "__main__":
    main()
