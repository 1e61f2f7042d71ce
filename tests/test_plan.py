"""Tile planning (least work within a memory budget), tile grids that end at the region,
precision, and `organet plan`."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from tests.helpers import spread_unet
from typer.testing import CliRunner

from organet.cli import app
from organet.errors import InputError
from organet.model.checkpoint import Checkpoint, save_checkpoint
from organet.model.unet import ASEM_UNET, UNet, UNetConfig, output_shape
from organet.predict import Predictor, predict_volume
from organet.predict.plan import (
    candidate_tiles,
    forward_macs,
    forward_memory,
    plan_for,
    plan_tiles,
    valid_tile_sizes,
)
from organet.predict.tiled import resolve_precision, tile_grid
from organet.preprocess import Normalization
from organet.volumes import Roi, open_volume, write_ome_zarr

TINY = UNetConfig(num_fmaps=3, downsample_factors=((2, 2, 2), (2, 2, 2)))
ANISO = UNetConfig(num_fmaps=3, downsample_factors=((1, 2, 2), (2, 2, 2)))


def conv_outputs(cfg: UNetConfig, tile) -> list[tuple[int, int, tuple[int, ...]]]:
    """(in channels, out channels, output shape) of every convolution of a real forward pass."""
    net = UNet(cfg).eval()
    seen = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.append((m.in_channels, m.out_channels, tuple(o.shape[2:]))))
        for m in net.modules()
        if isinstance(m, torch.nn.Conv3d)
    ]
    with torch.no_grad():
        net(torch.zeros((1, 1, *tile)))
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize(
    "cfg,tile", [(TINY, (52, 60, 68)), (ANISO, (28, 60, 52)), (UNetConfig(num_fmaps=2), (204,) * 3)]
)
def test_work_is_counted_from_the_real_forward_pass(cfg, tile):
    seen = conv_outputs(cfg, tile)
    assert seen[-1][2] == output_shape(cfg, tile)
    k = cfg.kernel_size**3
    assert forward_macs(cfg, tile) == sum(i * o * k * math.prod(s) for i, o, s in seen)


def test_valid_sizes_per_axis_of_an_anisotropic_network():
    z, y, x = valid_tile_sizes(ANISO, 80)
    assert y == x and z != y
    for s in z[:5]:
        assert output_shape(ANISO, (s, y[0], x[0])) is not None
        assert output_shape(ANISO, (s + 1, y[0], x[0])) is None
    assert (y[1] - y[0]) == 4 and (z[1] - z[0]) == 2  # the total downsampling per axis


def test_memory_grows_with_the_tile_and_halves_in_bf16():
    m = [forward_memory(ASEM_UNET, (s,) * 3) for s in (204, 252, 300)]
    assert m[0] < m[1] < m[2]
    assert 2.2 * 2**30 < m[0] < 3.6 * 2**30  # measured 3.4 GiB peak RSS for the whole process (docs/benchmarks.md)
    assert forward_memory(ASEM_UNET, (300,) * 3, precision="bf16") < 0.6 * m[2]
    assert forward_memory(ASEM_UNET, (204,) * 3, batch=2) > 1.9 * m[0] - 2**28


def test_the_plan_is_the_least_work_that_fits():
    region, budget = (300, 300, 300), 8 * 2**30
    best = plan_tiles(ASEM_UNET, region, budget)
    assert best.memory <= budget
    fits = [plan_for(ASEM_UNET, t, region) for t in candidate_tiles(ASEM_UNET, region)]
    fits = [p for p in fits if p.memory <= budget]
    assert best.work == min(p.work for p in fits)
    assert best.tile_in > (204, 204, 204)  # larger than the incasem tile when memory allows
    # more memory never means more work
    assert plan_tiles(ASEM_UNET, region, 12 * 2**30).work <= best.work


def test_a_region_of_one_tile_output_is_one_tile_and_thin_regions_get_thin_tiles():
    p = plan_tiles(ASEM_UNET, (110, 110, 110), 8 * 2**30)
    assert p.tile_in == (204, 204, 204) and p.tiles == 1  # as incasem: no second tile for the 6 voxels past the step
    thin = plan_tiles(ASEM_UNET, (20, 600, 600), 8 * 2**30)
    assert thin.tile_in[0] < thin.tile_in[1] and thin.tile_out[0] >= 20


def test_a_budget_too_small_for_any_tile_is_refused_with_what_it_needs():
    with pytest.raises(InputError, match=r"no tile fits the memory budget of 0\.01 GiB.*needs .* GiB.*--memory-gib"):
        plan_tiles(ASEM_UNET, (300, 300, 300), 10 * 2**20)


def test_grid_with_extent_writes_each_voxel_of_the_region_once_whatever_the_blocks():
    grid = tile_grid(ASEM_UNET, (204, 204, 204)).with_extent((220, 110, 300))
    anchor = (5, 0, 7)
    assert grid.tiles_per_axis() == (3, 1, 3)
    owner = np.full((220, 110, 300), -1)
    _, _, starts = grid.covering(anchor, [a + e for a, e in zip(anchor, grid.extent)], anchor)
    for i, s in enumerate(starts):
        w = grid.write_shape(s, anchor)
        sl = tuple(slice(a - o, a - o + n) for a, o, n in zip(s, anchor, w))
        assert (owner[sl] == -1).all()
        owner[sl] = i
    assert (owner >= 0).all()
    for block in itertools.product((0, 104, 208), (0,), (0, 150)):
        lo = [a + b for a, b in zip(anchor, block)]
        hi = [min(a + b + 104, a + e) for a, b, e in zip(anchor, block, grid.extent)]
        org, shape, sub = grid.covering(lo, hi, anchor)
        assert set(sub) <= set(starts)
        assert all(o <= a and o + n >= b for o, n, a, b in zip(org, shape, lo, hi))
    with pytest.raises(ValueError, match="outside the tile grid"):
        grid.covering((0, 0, 0), (10, 10, 10), anchor)


def test_the_last_tile_writes_its_whole_output_and_blocks_still_equal_one_region(tmp_path):
    torch.manual_seed(3)
    net = spread_unet(TINY)
    save_checkpoint(
        Checkpoint(TINY, (60, 60, 60), (5.0,) * 3, Normalization(), "mito", net.state_dict()), tmp_path / "m.pt"
    )
    raw = np.random.default_rng(0).integers(0, 255, (40, 44, 46), dtype=np.uint8)
    with write_ome_zarr(tmp_path / "raw.zarr") as w:
        w.create_image(None, raw.shape, np.uint8, (5, 5, 5), (0, 0, 0), (8, 8, 8)).write(..., raw)
    pred = Predictor.from_checkpoint(tmp_path / "m.pt", tile=(60, 60, 60), device="cpu")
    fixed = pred.for_region(open_volume(tmp_path / "raw.zarr"), Roi((0, 0, 0), raw.shape))
    grid = fixed.grid()
    assert grid.step == (16, 16, 16) and grid.tile_out == (18, 18, 18)
    one = predict_volume(pred, tmp_path / "raw.zarr", tmp_path / "one.zarr", chunks=(8, 8, 8), block_shape=(40, 48, 48))
    many = predict_volume(
        pred, tmp_path / "raw.zarr", tmp_path / "many.zarr", chunks=(8, 8, 8), block_shape=(16, 16, 16)
    )
    assert many.blocks > one.blocks == 1
    a = open_volume(tmp_path / "one.zarr" / "probability").read()
    b = open_volume(tmp_path / "many.zarr" / "probability").read()
    np.testing.assert_array_equal(a, b)


def test_precision_is_resolved_per_device_and_bf16_stays_close_to_fp32():
    assert resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(InputError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(InputError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", "cpu")
    torch.manual_seed(0)
    net = UNet(TINY).eval()
    raw = np.random.default_rng(1).integers(0, 255, (30, 30, 30), dtype=np.uint8)

    class Vol:
        shape, dtype, voxel_size, offset = raw.shape, raw.dtype, (5.0, 5.0, 5.0), (0, 0, 0)

        def read(self, sl):
            return raw[sl]

    roi = Roi((0, 0, 0), raw.shape)
    p32 = Predictor.from_model(net, (5, 5, 5), Normalization(), tile=(60, 60, 60), device="cpu").predict(Vol(), roi)
    p16 = Predictor.from_model(
        net, (5, 5, 5), Normalization(), tile=(60, 60, 60), device="cpu", precision="bf16"
    ).predict(Vol(), roi)
    assert 0 < np.abs(p16 - p32).max() < 0.02


def test_a_resumed_or_repeated_run_keeps_its_tile_whatever_memory_is_free(tmp_path):
    save_checkpoint(
        Checkpoint(TINY, (60, 60, 60), (5.0,) * 3, Normalization(), "mito", UNet(TINY).state_dict()), tmp_path / "m.pt"
    )
    raw = np.random.default_rng(0).integers(0, 255, (30, 70, 70), dtype=np.uint8)
    with write_ome_zarr(tmp_path / "raw.zarr") as w:
        w.create_image(None, raw.shape, np.uint8, (5, 5, 5), (0, 0, 0), (8, 8, 8)).write(..., raw)
    big = Predictor.from_checkpoint(tmp_path / "m.pt", device="cpu", memory_gib=1.0)
    first = predict_volume(big, tmp_path / "raw.zarr", tmp_path / "out.zarr")
    small = Predictor.from_checkpoint(tmp_path / "m.pt", device="cpu", memory_gib=0.13)
    assert small.for_region(open_volume(tmp_path / "raw.zarr"), Roi((0, 0, 0), raw.shape)).tile != first.tile
    again = predict_volume(small, tmp_path / "raw.zarr", tmp_path / "out.zarr")
    assert again.already_complete and again.tile == first.tile


def test_plan_command_prints_the_tiles_and_the_choice(tmp_path):
    save_checkpoint(
        Checkpoint(TINY, (60, 60, 60), (5.0,) * 3, Normalization(), "mito", UNet(TINY).state_dict()), tmp_path / "m.pt"
    )
    r = CliRunner().invoke(app, ["plan", "--model", str(tmp_path / "m.pt"), "--memory-gib", "0.15"])
    assert r.exit_code == 0, r.output
    assert "useful" in r.output and "largest tile within memory:" in r.output
    r = CliRunner().invoke(
        app, ["plan", "--model", str(tmp_path / "m.pt"), "--shape", "20", "200", "200", "--memory-gib", "0.15"]
    )
    assert r.exit_code == 0, r.output
    chosen = plan_tiles(TINY, (20, 200, 200), int(0.15 * 2**30))
    assert f"least work within memory: {'x'.join(map(str, chosen.tile_in))}" in r.output
    r = CliRunner().invoke(
        app, ["plan", "--model", str(tmp_path / "m.pt"), "--memory-gib", "0.00001", "--shape", "9", "9", "9"]
    )
    assert r.exit_code == 2 and "no tile fits the memory budget" in r.output
