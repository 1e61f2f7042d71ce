"""Importing incasem (ASEM) checkpoints: funlib.learn.torch U-Net weights in gunpowder's file
layout become organet checkpoints that compute what funlib computes.

The reference forward passes below use only torch.nn.functional and the funlib key names:
they follow funlib.learn.torch's ``UNet.rec_forward`` / ``Upsample.forward`` (valid convs +
ReLU, max-pool, nearest upsampling, ``crop_to_factor``, centre-cropped skip first in the
concatenation) plus incasem's ``final_conv_pass``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from organet.cli import app
from organet.errors import CheckpointError, InputError
from organet.model.checkpoint import load_checkpoint
from organet.model.incasem import (
    convert_funlib_state_dict,
    funlib_key_map,
    import_incasem,
    infer_architecture,
    read_incasem_checkpoint,
)
from organet.model.unet import ASEM_UNET, UNet, UNetConfig, count_parameters, output_shape, valid_sizes
from organet.predict import Predictor, predict_volume
from organet.preprocess.normalize import canonical_preprocess
from organet.volumes import Roi, open_volume, write_ome_zarr

SMALL = UNetConfig(num_fmaps=4, downsample_factors=((2, 2, 2), (2, 2, 2)))
runner = CliRunner()


# --------------------------------------------------------------------------- funlib layout


def funlib_state_dict(
    num_fmaps: int, inc: int, levels: int, seed: int = 0, convs: int = 2, final_gain: float = 1.0
) -> dict[str, torch.Tensor]:
    """Random weights under funlib/incasem's names and shapes (He-normal std, small biases)."""
    g = torch.Generator().manual_seed(seed)
    fm = [num_fmaps * inc**lvl for lvl in range(levels)]
    sd: dict[str, torch.Tensor] = {}

    def conv(name: str, cin: int, cout: int, gain: float = 2.0) -> None:
        sd[f"{name}.weight"] = torch.randn(cout, cin, 3, 3, 3, generator=g) * math.sqrt(gain / (cin * 27))
        sd[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.1

    for lvl in range(levels):
        for j in range(convs):
            conv(
                f"unet.l_conv.{lvl}.conv_pass.{2 * j}", (1 if lvl == 0 else fm[lvl - 1]) if j == 0 else fm[lvl], fm[lvl]
            )
    for lvl in range(levels - 1):
        for j in range(convs):
            conv(f"unet.r_conv.0.{lvl}.conv_pass.{2 * j}", fm[lvl] + fm[lvl + 1] if j == 0 else fm[lvl], fm[lvl])
    conv("final_conv_pass.conv_pass.0", fm[0], 2, gain=final_gain)
    return sd


def save_gunpowder(sd: dict[str, torch.Tensor], path, **extra) -> None:
    """gunpowder's Train node layout: model and optimizer state dicts."""
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=3e-5)
    torch.save({"model_state_dict": sd, "optimizer_state_dict": opt.state_dict(), **extra}, path)


def funlib_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, factors, crop: str = "every") -> torch.Tensor:
    """funlib UNet + incasem final conv in eval mode, from the raw tensors.

    ``crop="every"``: funkelab/funlib.learn.torch master (what incasem installs):
    ``crop_to_factor`` after every upsampling with the product of the factors at and below
    that level. ``crop="deepest"``: the variant of an unmerged funlib pull request (head
    106ad87): only after the deepest upsampling, with the product of all factors.
    """
    n_levels = len(factors) + 1

    def conv_pass(prefix: str, t: torch.Tensor) -> torch.Tensor:
        j = 0
        while f"{prefix}.conv_pass.{2 * j}.weight" in sd:
            t = F.relu(F.conv3d(t, sd[f"{prefix}.conv_pass.{2 * j}.weight"], sd[f"{prefix}.conv_pass.{2 * j}.bias"]))
            j += 1
        return t

    def centre_crop(t: torch.Tensor, shape) -> torch.Tensor:
        off = [(a - b) // 2 for a, b in zip(t.shape[2:], shape)]
        return t[(..., *(slice(o, o + s) for o, s in zip(off, shape)))]

    def crop_to_factor(t: torch.Tensor, factor, conv_crop: int = 4) -> torch.Tensor:
        target = [((s - conv_crop) // f) * f + conv_crop for s, f in zip(t.shape[2:], factor)]
        if list(t.shape[2:]) == target:
            return t
        assert all(s > conv_crop for s in target), "feature map too small for translation equivariance"
        return centre_crop(t, target)

    def rec(level: int, f_in: torch.Tensor) -> torch.Tensor:
        i = n_levels - level - 1
        f_left = conv_pass(f"unet.l_conv.{i}", f_in)
        if level == 0:
            return f_left
        g_out = rec(level - 1, F.max_pool3d(f_left, factors[i], stride=factors[i]))
        g_up = F.interpolate(g_out, scale_factor=tuple(float(v) for v in factors[i]), mode="nearest")
        below = factors[i:] if crop == "every" else (factors if i == n_levels - 2 else None)
        if below is not None:
            g_up = crop_to_factor(g_up, [math.prod(f[a] for f in below) for a in range(3)])
        return conv_pass(f"unet.r_conv.0.{i}", torch.cat([centre_crop(f_left, g_up.shape[2:]), g_up], dim=1))

    y = rec(n_levels - 1, x)
    return F.conv3d(y, sd["final_conv_pass.conv_pass.0.weight"], sd["final_conv_pass.conv_pass.0.bias"])


def funlib_out_size(size: int, levels: int, crop: str) -> int:
    """Output size per axis of the reference for factors 2 and two 3x3x3 convs per level."""
    skips = []
    for _ in range(levels - 1):
        size -= 4
        skips.append(size)
        size //= 2
    size -= 4
    for i in reversed(range(levels - 1)):
        size *= 2
        factor = 2 ** (levels - 1 - i) if crop == "every" else (2 ** (levels - 1) if i == levels - 2 else 1)
        size = ((size - 4) // factor) * factor + 4
        size -= 4
    return size - 2


# --------------------------------------------------------------------------- a. the ASEM network


@pytest.fixture(scope="module")
def asem(tmp_path_factory):
    d = tmp_path_factory.mktemp("incasem")
    sd = funlib_state_dict(32, 2, 4, seed=1)
    src = d / "model_checkpoint_1847_mito_CF.pt"
    save_gunpowder(sd, src)
    ckpt = import_incasem(src, d / "mito.pt", "mitochondria", (5, 5, 5))
    return d, sd, ckpt


def test_key_map_covers_organet_unet_exactly():
    for cfg in (ASEM_UNET, SMALL, UNetConfig(num_fmaps=3, fmap_inc_factor=3, convs_per_level=3)):
        km = funlib_key_map(cfg)
        assert list(km.values()) == list(UNet(cfg).state_dict()), cfg
        assert len(set(km)) == len(km)
    km = funlib_key_map(ASEM_UNET)
    assert km["unet.l_conv.3.conv_pass.2.weight"] == "down.3.2.weight"
    assert km["unet.r_conv.0.0.conv_pass.0.bias"] == "up.0.0.bias"
    assert km["final_conv_pass.conv_pass.0.weight"] == "final.weight" and len(km) == 30


def test_asem_import_infers_the_architecture_and_records_provenance(asem):
    d, sd, ckpt = asem
    assert ckpt.architecture == ASEM_UNET and count_parameters(ckpt.build_model()) == 5_837_730
    back = load_checkpoint(d / "mito.pt", expect_architecture=ASEM_UNET)
    assert back.organelle == "mito" and back.voxel_size == (5.0, 5.0, 5.0) and back.input_shape == (204, 204, 204)
    assert back.output_shape == (110, 110, 110)
    assert back.normalization.method == "dtype_range"
    assert back.normalization.preprocess == canonical_preprocess("clahe-incasem")
    rec = back.training_config["imported"]
    assert rec["run_id"] == 1847 and rec["tag"] == "mito_CF" and rec["iteration"] is None
    assert rec["source"] == "imported from incasem (funlib.learn.torch UNet)" and rec["layout"] == "gunpowder"
    import hashlib

    assert rec["sha256"] == hashlib.sha256((d / "model_checkpoint_1847_mito_CF.pt").read_bytes()).hexdigest()
    assert rec["ignored_entries"] == ["optimizer_state_dict"] and rec["date"][:2] == "20"
    assert torch.equal(back.state_dict["up.2.0.weight"], sd["unet.r_conv.0.2.conv_pass.0.weight"])


def test_asem_forward_equals_funlib_forward(asem):
    """incasem's tile: 204^3 -> 110^3 both ways (funlib master crops after every upsampling, as
    organet does); the smallest tile valid for both crop variants is computed on CPU."""
    _, sd, ckpt = asem
    assert output_shape(ASEM_UNET, (204,) * 3) == (110,) * 3 == (funlib_out_size(204, 4, "every"),) * 3
    assert funlib_out_size(204, 4, "deepest") == 114
    size = next(s for s, _ in valid_sizes(ASEM_UNET, 200) if funlib_out_size(s, 4, "deepest") > 4)
    assert size == 108 and output_shape(ASEM_UNET, (size,) * 3) == (14,) * 3
    x = torch.rand(1, 1, size, size, size, generator=torch.Generator().manual_seed(2)) * 2 - 1
    factors = ASEM_UNET.downsample_factors
    with torch.no_grad():
        ours = ckpt.build_model()(x)
        every = funlib_forward(sd, x, factors, "every")
        deepest = funlib_forward(sd, x, factors, "deepest")
    assert ours.shape == every.shape == (1, 2, 14, 14, 14)
    assert deepest.shape == (1, 2, 18, 18, 18) and funlib_out_size(size, 4, "deepest") == 18
    assert ours.std() > 0.1 and (ours[:, 1] - ours[:, 0]).abs().mean() > 0.1  # not a dead network
    torch.testing.assert_close(ours, every, atol=1e-5, rtol=1e-5)
    # the pull-request variant crops less, so organet's output is its centre (2 voxels in)
    torch.testing.assert_close(ours, deepest[..., 2:16, 2:16, 2:16], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- b. prediction end to end


def test_prediction_equals_funlib_softmax(tmp_path):
    sd = funlib_state_dict(4, 2, 3, seed=3, final_gain=6.0)
    src = tmp_path / "model_checkpoint_7_er_test.pt"
    torch.save({f"module.{k}": v for k, v in sd.items()}, src)  # bare DataParallel state dict
    r = runner.invoke(
        app,
        ["import", "incasem", str(src), str(tmp_path / "er.pt"), "--organelle", "er", "--voxel-size", "5", "5", "5"]
        + ["--normalization", "none"],
    )
    assert r.exit_code == 0, r.output
    assert "incasem run 7" in r.output and "parameters    " in r.output and "(5.0, 5.0, 5.0) nm" in r.output
    ckpt = load_checkpoint(tmp_path / "er.pt")
    assert ckpt.architecture == SMALL and ckpt.normalization.preprocess is None and ckpt.organelle == "er"

    rng = np.random.default_rng(4)
    raw = rng.integers(0, 256, (60, 72, 84), dtype=np.uint8)
    with write_ome_zarr(tmp_path / "raw.zarr") as w:
        w.create_image(None, raw.shape, np.uint8, (5, 5, 5), (0, 0, 0), (16, 16, 16)).write(..., raw)
    tile = (56, 56, 56)
    # an ROI reaching the far x edge: its tile grid starts at the ROI, the last x tiles read
    # mirrored data beyond the volume, the others only real data
    roi = Roi((21, 21, 21), (12, 24, 63))
    pred = Predictor.from_checkpoint(tmp_path / "er.pt", tile=tile, device="cpu")
    predict_volume(pred, tmp_path / "raw.zarr", tmp_path / "out.zarr", roi=roi)
    written = np.zeros(raw.shape, np.uint8)
    written[roi.slices()] = open_volume(tmp_path / "out.zarr/probability").read()

    grid = pred.for_region(open_volume(tmp_path / "raw.zarr"), roi).grid()
    ctx, step = grid.context, grid.step
    assert grid.tile_out == (14, 14, 14) and step == (12, 12, 12) and ctx == (21, 21, 21)
    _, _, starts = grid.covering(roi.offset, roi.end, roi.offset)
    inside = [s for s in starts if all(a - c >= 0 and a - c + t <= n for a, c, t, n in zip(s, ctx, tile, raw.shape))]
    assert len(starts) == 12 and len(inside) == 6  # z: 1 tile, y: 2, x: 3 of 6 read only real data
    compared = []
    for s in inside:
        window = raw[tuple(slice(a - c, a - c + t) for a, c, t in zip(s, ctx, tile))]
        x = torch.from_numpy(window.astype(np.float32) / 255 * 2 - 1)[None, None]  # incasem: /255, *2 - 1
        with torch.no_grad():
            p = torch.softmax(funlib_forward(sd, x, SMALL.downsample_factors), dim=1)[0, 1].numpy()
        want = np.round(255 * p[: step[0], : step[1], : step[2]]).astype(int)
        got = written[tuple(slice(a, a + n) for a, n in zip(s, step))].astype(int)
        assert np.abs(got - want).max() <= 1, s
        compared.append(want)
    ref = np.concatenate([c.ravel() for c in compared])
    assert ref.size == 6 * 12**3 and 20 < ref.mean() < 235 and ((ref > 5) & (ref < 250)).mean() > 0.3


# --------------------------------------------------------------------------- c. refusals


@pytest.fixture(scope="module")
def small_sd():
    return funlib_state_dict(4, 2, 3, seed=5)


def _import(tmp_path, sd_or_bytes, name="model_checkpoint_3_mito_x.pt", **kw):
    src = tmp_path / name
    if isinstance(sd_or_bytes, bytes):
        src.write_bytes(sd_or_bytes)
    else:
        save_gunpowder(sd_or_bytes, src)
    return import_incasem(src, tmp_path / "out.pt", kw.pop("organelle", "mito"), (5, 5, 5), **kw)


def test_missing_extra_and_misshapen_keys_are_named(tmp_path, small_sd):
    sd = dict(small_sd)
    del sd["unet.r_conv.0.1.conv_pass.2.bias"]
    with pytest.raises(CheckpointError, match=r"missing key 'unet\.r_conv\.0\.1\.conv_pass\.2\.bias' .*\(8,\)"):
        _import(tmp_path, sd)
    sd = {**small_sd, "unet.extra.weight": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"unexpected key 'unet\.extra\.weight' \(\(3,\)\)"):
        _import(tmp_path, sd)
    sd = dict(small_sd)  # two wrong shapes: the first in layer order is named
    sd["unet.r_conv.0.0.conv_pass.0.weight"] = torch.zeros(4, 11, 3, 3, 3)
    sd["unet.l_conv.2.conv_pass.2.weight"] = torch.zeros(16, 16, 1, 1, 1)
    with pytest.raises(CheckpointError) as e:
        _import(tmp_path, sd)
    assert "'unet.l_conv.2.conv_pass.2.weight' has shape (16, 16, 1, 1, 1), expected (16, 16, 3, 3, 3)" in str(e.value)
    assert "r_conv" not in str(e.value) and "model_checkpoint_3_mito_x.pt" in str(e.value)
    with pytest.raises(CheckpointError, match=r"'unet\.l_conv\.0\.conv_pass\.0\.weight' has shape \(4, 1, 3, 3, 3\)"):
        convert_funlib_state_dict(small_sd, ASEM_UNET)  # explicit architecture that does not fit
    assert not (tmp_path / "out.pt").exists()


def test_foreign_files_are_refused_in_one_line(tmp_path, small_sd):
    rng = np.random.default_rng(0)
    with pytest.raises(CheckpointError, match="cannot read .* as a PyTorch checkpoint") as e:
        _import(tmp_path, rng.integers(0, 256, 4000, dtype=np.uint8).tobytes(), "random.pt")
    assert "\n" not in str(e.value)
    save_gunpowder(small_sd, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    with pytest.raises(CheckpointError, match="cannot read .*truncated.pt as a PyTorch checkpoint") as e:
        _import(tmp_path, data[: len(data) // 2], "truncated.pt")
    assert "\n" not in str(e.value)
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list, expected a state dict"):
        read_incasem_checkpoint(tmp_path / "list.pt")
    torch.save({"model": {"a": torch.zeros(1)}}, tmp_path / "nested.pt")
    with pytest.raises(CheckpointError, match="neither gunpowder's dict"):
        read_incasem_checkpoint(tmp_path / "nested.pt")
    with pytest.raises(CheckpointError, match="not found"):
        read_incasem_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match="not a funlib.learn.torch U-Net"):
        infer_architecture(UNet(SMALL).state_dict())
    _import(tmp_path, small_sd)  # an organet checkpoint is not an incasem one
    with pytest.raises(CheckpointError, match="already an organet checkpoint"):
        read_incasem_checkpoint(tmp_path / "out.pt")


def test_unsupported_networks_and_bad_settings(tmp_path, small_sd):
    sd = {**small_sd, "unet.r_up.0.1.up.weight": torch.zeros(16, 16, 2, 2, 2)}
    with pytest.raises(CheckpointError, match="transposed-convolution upsampling .*'unet.r_up.0.1.up.weight'"):
        _import(tmp_path, sd)
    sd = {**small_sd, "unet.r_conv.1.0.conv_pass.0.weight": torch.zeros(4, 12, 3, 3, 3)}
    with pytest.raises(CheckpointError, match="second decoder head"):
        _import(tmp_path, sd)
    sd = {**small_sd, "final_conv_pass.conv_pass.0.weight": torch.zeros(3, 4, 3, 3, 3)}
    with pytest.raises(CheckpointError, match="3 output channels; organet models are binary"):
        _import(tmp_path, sd)
    sd = {**small_sd, "unet.l_conv.0.conv_pass.0.weight": torch.zeros(4, 2, 3, 3, 3)}
    with pytest.raises(CheckpointError, match="takes 2 input channels; organet models take one raw channel"):
        _import(tmp_path, sd)
    with pytest.raises(InputError, match="unknown organelle 'mitochondrium'.*did you mean 'mito'"):
        _import(tmp_path, small_sd, organelle="mitochondrium")
    with pytest.raises(InputError, match="unknown normalization 'clahe'"):
        _import(tmp_path, small_sd, normalization="clahe")
    for bad in ((5, 5), (5, 0, 5), (5, float("nan"), 5)):
        with pytest.raises(InputError, match="voxel size"):
            import_incasem(tmp_path / "x.pt", tmp_path / "out.pt", "mito", bad)
    with pytest.raises(InputError, match=r"input shape \(101, 101, 101\) is not valid .* near it: \["):
        _import(tmp_path, small_sd, input_shape=(101, 101, 101))
    assert not (tmp_path / "out.pt").exists()
    _import(tmp_path, small_sd)
    with pytest.raises(InputError, match="exists; use --overwrite"):
        _import(tmp_path, small_sd)
    assert _import(tmp_path, small_sd, overwrite=True).iteration == 0


def test_gunpowder_iteration_from_name_or_entry(tmp_path, small_sd):
    save_gunpowder(small_sd, tmp_path / "model_checkpoint_90000")
    ck = import_incasem(tmp_path / "model_checkpoint_90000", tmp_path / "a.pt", "golgi", (5, 5, 5))
    assert ck.iteration == 90000 and ck.training_config["imported"]["run_id"] is None
    save_gunpowder(small_sd, tmp_path / "model_checkpoint_1837_golgi_CF.pt", iteration=1234)
    ck = import_incasem(tmp_path / "model_checkpoint_1837_golgi_CF.pt", tmp_path / "b.pt", "golgi", (5, 5, 5))
    assert ck.iteration == 1234 and ck.training_config["imported"]["run_id"] == 1837


def test_cli_errors_exit_2_with_one_line(tmp_path, small_sd):
    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 8)
    args = ["--organelle", "mito", "--voxel-size", "5", "5", "5"]
    r = runner.invoke(app, ["import", "incasem", str(tmp_path / "random.pt"), str(tmp_path / "o.pt"), *args])
    assert r.exit_code == 2 and r.output.strip().startswith("error:") and len(r.output.strip().splitlines()) == 1
    assert "cannot read" in r.output and "Traceback" not in r.output
    save_gunpowder(small_sd, tmp_path / "m.pt")
    r = runner.invoke(app, ["import", "incasem", str(tmp_path / "m.pt"), str(tmp_path / "o.pt"), *args])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["import", "incasem", str(tmp_path / "m.pt"), str(tmp_path / "o.pt"), *args])
    assert r.exit_code == 2 and "--overwrite" in r.output and len(r.output.strip().splitlines()) == 1
    r = runner.invoke(app, ["import", "incasem", str(tmp_path / "m.pt"), str(tmp_path / "o2.pt"), *args[2:]])
    assert r.exit_code == 2 and "--organelle" in r.output  # required option (typer's usage error)
