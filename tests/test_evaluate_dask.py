"""Blockwise evaluation on a Dask cluster equals the in-process streamed evaluation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from organet.errors import InputError
from organet.evaluate import evaluate_volumes
from organet.volumes import open_volume, write_ome_zarr


def test_evaluation_on_dask_equals_in_process(tmp_path):
    from distributed import Client, LocalCluster

    rng = np.random.default_rng(0)
    truth = ndimage.gaussian_filter(rng.random((20, 40, 40)), 2) > 0.5
    prob = np.clip(truth * 120 + rng.integers(0, 140, truth.shape), 0, 255).astype(np.uint8)
    mask = np.ones(truth.shape, np.uint8)
    mask[:, :10] = 0
    for name, a, attrs in (("p", prob, {"kind": "probability"}), ("t", truth, None), ("m", mask, None)):
        with write_ome_zarr(tmp_path / f"{name}.zarr") as w:
            w.create_image(None, a.shape, a.dtype, (5, 5, 5), chunks=(8, 16, 16), attrs=attrs).write(..., a)
    p, t, m = (open_volume(tmp_path / f"{n}.zarr") for n in "ptm")
    kw = dict(exclusion=(2, 2), thresholds=(0.3, 0.5, 0.7), block_shape=(8, 16, 16))
    ref = evaluate_volumes(p, t, m, **kw)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c, Client(c) as cl:
        got = evaluate_volumes(p, t, m, client=cl, **kw)
    assert got.to_dict() == ref.to_dict()
    assert ref.counts.tp > 0 and 0 < ref.counts.f1 < 1
    with pytest.raises(InputError, match="block_shape"):
        evaluate_volumes(p, t, m, block_shape=(0, 1, 1), client=None)


def test_evaluate_cli_on_dask(tmp_path):
    import json

    from typer.testing import CliRunner

    from organet.cli import app

    truth = np.zeros((8, 16, 16), np.uint8)
    truth[2:6, 4:12, 4:12] = 1
    prob = np.roll(truth, 1, axis=2) * 255
    for name, a, attrs in (("p", prob, {"kind": "probability"}), ("t", truth, None)):
        with write_ome_zarr(tmp_path / f"{name}.zarr") as w:
            w.create_image(None, a.shape, a.dtype, (5, 5, 5), attrs=attrs).write(..., a)
    args = ["evaluate", "--pred", str(tmp_path / "p.zarr"), "--truth", str(tmp_path / "t.zarr")]
    r = CliRunner().invoke(app, [*args, "--workers", "1", "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    c = json.loads((tmp_path / "r.json").read_text())["counts"]
    assert (c["tp"], c["fp"], c["fn"]) == (4 * 8 * 7, 4 * 8, 4 * 8)
    r = CliRunner().invoke(app, [*args, "--cluster", "k8s"])
    assert r.exit_code == 2 and "unknown cluster" in r.output
