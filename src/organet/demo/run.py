"""``organet demo``: the whole loop on a built-in default.

Without data: a seeded synthetic FIB-SEM-like volume (5 nm voxels) is written
as OME-Zarr, a small U-Net trains for a few minutes on its first two thirds
(z), predicts the held-out last third, and is scored. With ``data=DIR`` (the
``lucchi_pp`` layout: ``train_image.tif`` + ``train_mito.tif``, 5 nm) the recipe of
``configs/lucchi_mito_cpu.yaml`` runs on real data: trained at 10 nm on z 0-123,
scored at 5 nm on the held-out z 125-164.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from organet.config import ExperimentConfig, parse_config
from organet.errors import InputError
from organet.progress import ProgressFn

# A reduced network for CPUs: 3 levels, 12 feature maps (vs. 4 levels and 32).
CPU_MODEL = {"num_fmaps": 12, "fmap_inc_factor": 2, "downsample_factors": [[2, 2, 2]] * 2, "input_shape": [76, 76, 76]}


@dataclass
class DemoResult:
    out: Path
    iterations: int
    metrics: dict[str, Any]
    curves: Path
    prediction: Path
    extra: dict[str, Any] = field(default_factory=dict)


def _synthetic_data(out: Path, seed: int) -> tuple[str, str, str, str]:
    from organet.demo.phantom import make_phantom
    from organet.volumes import write_ome_zarr

    ph = make_phantom((96, 160, 160), voxel_size=5.0, seed=seed)
    paths = []
    for name, arr in (("raw", ph.raw), ("labels", ph.labels)):
        p = out / "data" / f"{name}.zarr"
        if p.exists():
            shutil.rmtree(p)
        with write_ome_zarr(p) as w:
            w.create_image(None, arr.shape, arr.dtype, ph.voxel_size, (0.0, 0.0, 0.0), (32, 64, 64)).write(
                tuple(slice(0, s) for s in arr.shape), arr
            )
        paths.append(str(p))
    return paths[0], paths[1], "0:64,:,:", "64:96,:,:"


def demo_config(
    raw: str,
    labels: str,
    train_roi: str,
    val_roi: str,
    run_dir: Path,
    minutes: float,
    seed: int,
    voxel_size: tuple[float, float, float] | None = None,
    checkpoint_every: int = 100,
    model: dict | None = None,
    exclusion_zone: tuple[int, int] = (4, 4),
) -> ExperimentConfig:
    """Config of the demo run: a reduced CPU network (``CPU_MODEL`` unless given), lr 1e-3
    (He init, the config default), seed recipe otherwise."""
    spec = {"raw": raw, "labels": labels, "voxel_size": voxel_size}
    return parse_config(
        {
            "name": "demo",
            "organelle": "mito",
            "output_dir": str(run_dir),
            "seed": seed,
            "model": model or CPU_MODEL,
            "data": {
                "train": [{**spec, "name": "train", "roi_vox": train_roi}],
                "validation": [{**spec, "name": "held-out", "roi_vox": val_roi}],
            },
            "optimizer": {"lr": 1e-3, "weight_decay": 3e-5},
            "training": {"iterations": 1_000_000, "max_minutes": minutes, "checkpoint_every": checkpoint_every},
            "validation": {"exclusion_zone": list(exclusion_zone)},
        },
        "demo config",
    )


# configs/lucchi_mito_cpu.yaml: trained at 10 nm, scored at 5 nm (docs/results.md)
LUCCHI_MODEL = {
    "num_fmaps": 16,
    "fmap_inc_factor": 2,
    "downsample_factors": [[2, 2, 2]] * 2,
    "input_shape": [100, 100, 100],
}


def _lucchi_config(
    raw: str,
    labels: str,
    out: Path,
    minutes: float,
    seed: int,
    log: Callable[[str], None],
    progress: ProgressFn | None = None,
) -> ExperimentConfig:
    """Real data in the lucchi_pp layout: 10 nm copies (block means; majority labels), the
    network of configs/lucchi_mito_cpu.yaml, train z 0-123, validate z 126-165."""
    from organet.volumes import convert_volume

    log("writing 10 nm copies of the data (2 x 2 x 2 block means) ...")
    r10, l10 = out / "data" / "raw_10nm.zarr", out / "data" / "mito_10nm.zarr"
    convert_volume(raw, r10, voxel_size=(5.0, 5.0, 5.0), downsample=2, progress=progress)
    convert_volume(labels, l10, voxel_size=(5.0, 5.0, 5.0), downsample=2, downsample_mode="majority", progress=progress)
    return demo_config(
        str(r10),
        str(l10),
        "0:62,:,:",
        "63:83,:,:",
        out / "run",
        minutes,
        seed,
        None,
        max(100, int(minutes * 30)),
        model=LUCCHI_MODEL,
        exclusion_zone=(2, 2),
    )


def run_demo(
    out: str | Path = "organet-demo",
    minutes: float = 3.0,
    data: str | Path | None = None,
    seed: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    progress: ProgressFn | None = None,
    iterations: int | None = None,
) -> DemoResult:
    """Run the demo into ``out``: data, training for ``minutes`` (or ``iterations``, if
    given and reached first), prediction of the held-out ROI, scores.

    ``log`` gets one line per step; ``progress(stage, advance, total)`` follows training
    and prediction. Refuses a non-empty ``out`` unless ``overwrite``.
    """
    from organet.evaluate import evaluate_volumes
    from organet.predict.run import predict_volume
    from organet.train.loop import train
    from organet.volumes import open_volume, parse_roi

    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InputError(f"demo output folder {out} is not empty; pass --overwrite or another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        log("synthesizing a 96 x 160 x 160 FIB-SEM-like volume (5 nm voxels) ...")
        raw, labels, train_roi, val_roi = _synthetic_data(out, seed)
        voxel_size = None
        cfg = demo_config(raw, labels, train_roi, val_roi, out / "run", minutes, seed, None, max(50, int(minutes * 40)))
    else:
        data = Path(data)
        raw, labels = str(data / "train_image.tif"), str(data / "train_mito.tif")
        for p in (raw, labels):
            if not Path(p).is_file():
                raise InputError(f"--data {data}: expected the lucchi_pp layout, missing {Path(p).name}")
        voxel_size = (5.0, 5.0, 5.0)
        val_roi = "125:165,:,:"
        cfg = _lucchi_config(raw, labels, out, minutes, seed, log, progress)
    if iterations is not None:
        cfg.training.iterations = iterations
    log(f"training a {cfg.model.num_fmaps}-feature-map U-Net for {minutes} min on {cfg.data.train[0].roi_vox} ...")
    result = train(cfg, log=log, progress=progress)
    if result.last_checkpoint is None:  # pragma: no cover - train always ends with a checkpoint
        raise RuntimeError("training ended without a checkpoint")

    raw_vol = open_volume(raw, voxel_size=voxel_size)
    roi = parse_roi(val_roi, "vox", raw_vol)
    log(f"predicting held-out ROI {roi} ...")
    pred = predict_volume(result.last_checkpoint, raw_vol, out / "prediction.zarr", roi=roi, progress=progress)
    truth = open_volume(labels, voxel_size=voxel_size).crop(roi)
    prob = open_volume(str(out / "prediction.zarr" / "probability"))
    metrics = {}
    for name, ez in (("4 in / 4 out", (4, 4)), ("none", None)):
        r = evaluate_volumes(prob, truth, exclusion=ez, thresholds=(0.5,), progress=progress)
        c = r.per_threshold[0.5]
        metrics[name] = {"f1": c.f1, "precision": c.precision, "recall": c.recall, "iou": c.iou}
    res = DemoResult(
        out,
        result.iteration,
        metrics,
        out / "run" / "curves.png",
        pred.output,
        {"predict_voxels_per_second": pred.voxels_per_second},
    )
    (out / "result.json").write_text(
        json.dumps({"iterations": res.iterations, "metrics": metrics, **res.extra}, indent=2)
    )
    return res
