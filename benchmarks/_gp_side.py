"""The gunpowder 1.4.4 side of ``gunpowder_baseline.py``; runs in ``benchmarks/.gp-venv``
(gunpowder needs zarr<3), never in the project's venv.

    .gp-venv/bin/python benchmarks/_gp_side.py '{"mode": "predict", ...}'

Modes (one JSON argument; prints one JSON line with seconds and peak RSS in MiB):

* ``predict``: incasem's prediction pipeline, ZarrSource -> Normalize -> Pad (reflect,
  by the network context) -> IntensityScaleShift to [-1, 1] -> Unsqueeze x2 ->
  torch.Predict (the U-Net of ``_gp_unet.py`` with organet's weights; softmax and the
  foreground channel inside the model, as incasem's Softmax + PickChannel) -> Squeeze
  -> ZarrWrite (float32) -> Scan, fp32 on the CPU, one chunk at a time.
* ``augment``: the seed's training augmentation for one batch, ZarrSource (raw, labels,
  mask) -> RandomLocation -> Normalize -> ElasticAugment (control points every 32
  voxels, jitter sigma 2 voxels, rotation in [0, pi/2] about z, subsample 4) ->
  SimpleAugment -> IntensityAugment (scale 0.85-1.15, shift -0.15-0.15) ->
  IntensityScaleShift to [-1, 1]; ``repeats`` timed batches after one warm-up batch.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _predict(a: dict[str, Any]) -> dict[str, Any]:
    import gunpowder as gp
    import torch
    from _gp_unet import ForegroundProbability, UNet

    t0 = time.perf_counter()
    unet = UNet(**a["architecture"])
    unet.load_state_dict(torch.load(a["state_dict"], map_location="cpu", weights_only=True), strict=True)
    model = ForegroundProbability(unet).eval()
    n_params = sum(p.numel() for p in unet.parameters())

    raw, pred = gp.ArrayKey("RAW"), gp.ArrayKey("PREDICTION")
    vs = gp.Coordinate(a["voxel_size"])
    tile_in, tile_out = gp.Coordinate(a["tile_in"]), gp.Coordinate(a["tile_out"])
    context = (tile_in - tile_out) / 2 * vs
    reference = gp.BatchRequest()
    reference[raw] = gp.ArraySpec(roi=gp.Roi(-context, tile_in * vs))
    reference[pred] = gp.ArraySpec(roi=gp.Roi((0, 0, 0), tile_out * vs))
    volume_roi = gp.Roi((0, 0, 0), gp.Coordinate(a["shape"]) * vs)

    pipeline = (
        gp.ZarrSource(a["store"], {raw: a["dataset"]}, {raw: gp.ArraySpec(interpolatable=True)})
        + gp.Normalize(raw)  # uint8 -> [0, 1]
        + gp.Pad(raw, context, mode="reflect")
        + gp.IntensityScaleShift(raw, 2, -1)
        + gp.Unsqueeze([raw])  # channel
        + gp.Unsqueeze([raw])  # batch
        + gp.torch.Predict(
            model,
            inputs={"x": raw},
            outputs={0: pred},
            array_specs={pred: gp.ArraySpec(roi=volume_roi, dtype=np.float32, voxel_size=vs)},
            device="cpu",
        )
        + gp.Squeeze([pred])
        + gp.ZarrWrite({pred: "probability"}, store=a["output"])
        + gp.Scan(reference, progress_callback=gp.nodes.scan.ScanCallback())  # no progress bar
    )
    with gp.build(pipeline):
        pipeline.request_batch(gp.BatchRequest())
    return {"seconds": time.perf_counter() - t0, "peak_mib": _peak_rss_mib(), "parameters": n_params}


def _augment(a: dict[str, Any]) -> dict[str, Any]:
    import gunpowder as gp

    raw, labels, mask = gp.ArrayKey("RAW"), gp.ArrayKey("LABELS"), gp.ArrayKey("MASK")
    vs = gp.Coordinate(a["voxel_size"])
    request = gp.BatchRequest()
    request.add(raw, gp.Coordinate(a["tile_in"]) * vs)
    request.add(labels, gp.Coordinate(a["tile_out"]) * vs)
    request.add(mask, gp.Coordinate(a["tile_out"]) * vs)
    ds = a["datasets"]
    pipeline = (
        gp.ZarrSource(
            a["store"],
            {raw: ds["raw"], labels: ds["labels"], mask: ds["mask"]},
            {
                raw: gp.ArraySpec(interpolatable=True),
                labels: gp.ArraySpec(interpolatable=False),
                mask: gp.ArraySpec(interpolatable=False),
            },
        )
        + gp.RandomLocation()
        + gp.Normalize(raw)
        + gp.ElasticAugment(
            control_point_spacing=(32, 32, 32),
            jitter_sigma=(2, 2, 2),
            rotation_interval=[0, 0.5 * np.pi],
            subsample=4,
        )
        + gp.SimpleAugment()
        + gp.IntensityAugment(raw, scale_min=0.85, scale_max=1.15, shift_min=-0.15, shift_max=0.15)
        + gp.IntensityScaleShift(raw, 2, -1)
    )
    times = []
    with gp.build(pipeline):
        for i in range(a["repeats"] + 1):
            t = time.perf_counter()
            batch = pipeline.request_batch(request)
            if i:  # the first batch is warm-up
                times.append(time.perf_counter() - t)
    shapes = [list(batch[k].data.shape) for k in (raw, labels, mask)]
    return {"seconds": float(np.mean(times)), "all_seconds": times, "peak_mib": _peak_rss_mib(), "shapes": shapes}


def main() -> None:
    a = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.WARNING)
    warnings.simplefilter("ignore", DeprecationWarning)  # ElasticAugment, ZarrSource
    import torch

    torch.set_num_threads(a["threads"])
    res = {"predict": _predict, "augment": _augment}[a["mode"]](a)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
