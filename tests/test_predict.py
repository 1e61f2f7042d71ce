"""The one Predictor and the one prediction driver: tiles equal an untiled forward pass,
blocks in any process give the same bytes (also for a model at 2x the input's voxel size),
resume after a crash, retries and honest failure, sample masks, TTA."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr
from tests.helpers import spread_unet

from organet.blockwise.faults import ENV
from organet.errors import BlockFailures, IncompatibleError, InputError
from organet.model.checkpoint import Checkpoint, save_checkpoint
from organet.model.unet import UNet, UNetConfig, context, valid_sizes
from organet.predict import Predictor, SampleMask, predict_volume
from organet.predict.run import IMAGES, default_chunks
from organet.predict.tiled import read_with_context, reflect_indices, tile_grid
from organet.preprocess import Normalization
from organet.volumes import Roi, Volume, open_volume, write_ome_zarr
from organet.volumes.blocks import plan_blocks
from organet.volumes.foreground import probability_to_uint8
from organet.volumes.ome_zarr import PREDICTION_MASK, mask_path

CFG = UNetConfig(num_fmaps=4, downsample_factors=((2, 2, 2),))
CFG2 = UNetConfig(num_fmaps=3, downsample_factors=((2, 2, 2), (2, 2, 2)))
TILE = (34, 34, 34)  # -> 16^3 output, step 16
CHUNKS = (8, 8, 8)
BLOCK = (16, 32, 32)
ROI = Roi((3, 5, 2), (30, 40, 44))  # blocks 2 x 2 x 2, partial at the far edges


def lively(cfg: UNetConfig, seed: int = 0) -> UNet:
    """A random network with weights scaled up, so its probabilities span [0, 1]."""
    torch.manual_seed(seed)
    net = spread_unet(cfg)
    return net.eval()


class ArrayVolume:
    """Minimal in-memory stand-in for a Volume."""

    def __init__(self, a: np.ndarray, voxel_size=(5.0, 5.0, 5.0)) -> None:
        self.a, self.shape, self.dtype, self.voxel_size, self.offset = a, a.shape, a.dtype, voxel_size, (0, 0, 0)

    def read(self, sl):
        return self.a[sl]


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """Fault file read by the runner (set before the Dask cluster starts, so workers inherit it)."""
    path = tmp_path_factory.mktemp("faults") / "faults.json"
    old = os.environ.get(ENV)
    os.environ[ENV] = str(path)
    yield path
    if old is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = old


def set_faults(path, stage, blocks, counter_dir, times=-1, action="raise"):
    path.write_text(
        json.dumps(
            [
                {
                    "stage": stage,
                    "blocks": [list(b) for b in blocks],
                    "times": times,
                    "action": action,
                    "counter_dir": str(counter_dir),
                }
            ]
        )
    )


def attempts(counter_dir, stage, block) -> int:
    return len(list(counter_dir.glob(f"{stage}-{'_'.join(map(str, block))}.*")))


@pytest.fixture(scope="module")
def files(tmp_path_factory, faults):
    d = tmp_path_factory.mktemp("predict")
    for name, vs in (("model.pt", 5.0), ("model10.pt", 10.0)):
        save_checkpoint(
            Checkpoint(CFG, TILE, (vs, vs, vs), Normalization(), "mito", lively(CFG).state_dict()), d / name
        )
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, (36, 50, 50), dtype=np.uint8)
    with write_ome_zarr(d / "raw.zarr") as w:
        w.create_image(None, raw.shape, np.uint8, (5, 5, 5), (100, 0, 50), (16, 16, 16)).write(..., raw)
    run(d, d / "ref.zarr", block_shape=None)  # one block: the reference
    return d


@pytest.fixture(scope="module")
def client(faults):
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as c,
    ):
        yield c


def run(files, out, model="model.pt", tile=TILE, tta=None, **kw):
    kw = {"roi": ROI, "chunks": CHUNKS, "block_shape": BLOCK, **kw}
    pred = Predictor.from_checkpoint(files / model, tile=tile, device="cpu", tta=tta)
    return predict_volume(pred, files / "raw.zarr", out, **kw)


def levels(path) -> dict[str, np.ndarray]:
    out = {}
    for n in IMAGES:
        g = zarr.open_group(str(path / n), mode="r")
        for k in sorted(g.array_keys()):
            out[f"{n}/{k}"] = np.asarray(g[k][...])
    return out


def assert_same(a, b) -> None:
    la, lb = levels(a), levels(b)
    assert sorted(la) == sorted(lb)
    for k in la:
        np.testing.assert_array_equal(la[k], lb[k], err_msg=k)


# --------------------------------------------------------------------------- tiles


def untiled(net, raw: np.ndarray, offset, shape, cfg=CFG2) -> np.ndarray:
    """One forward pass over the ROI plus context (mirror beyond the volume)."""
    out_size = [next(o for _, o in valid_sizes(cfg, 400) if o >= s) for s in shape]
    in_size = [next(i for i, o in valid_sizes(cfg, 400) if o == s) for s in out_size]
    ctx = context(cfg, in_size)
    start = [o - c for o, c in zip(offset, ctx)]
    x = read_with_context(ArrayVolume(raw), start, [a + s for a, s in zip(start, in_size)])
    with torch.no_grad():
        p = torch.softmax(net(torch.from_numpy(Normalization().apply(x))[None, None]), 1)[0, 1].numpy()
    return p[: shape[0], : shape[1], : shape[2]]


def test_reflect_matches_numpy_pad():
    a = np.arange(7)
    for lo, hi in ((-5, 12), (-20, 30), (3, 5)):
        ref = np.pad(a, 30, mode="reflect")[lo + 30 : hi + 30]
        np.testing.assert_array_equal(a[reflect_indices(lo, hi, 7)], ref)


def test_read_with_context_mirrors_only_outside_volume():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (20, 21, 22), dtype=np.uint8)
    np.testing.assert_array_equal(
        read_with_context(ArrayVolume(a), (-3, 5, 10), (10, 15, 30)), np.pad(a, 10, mode="reflect")[7:20, 15:25, 20:40]
    )
    np.testing.assert_array_equal(read_with_context(ArrayVolume(a), (2, 3, 4), (5, 6, 7)), a[2:5, 3:6, 4:7])


@pytest.mark.parametrize("tile", [(56, 56, 56), (52, 60, 56), (68, 48, 76)])
def test_predictor_equals_untiled_forward_pass(tile):
    net = lively(CFG2)
    raw = np.random.default_rng(1).integers(0, 255, (29, 35, 38), dtype=np.uint8)
    pred = Predictor.from_model(net, (5, 5, 5), Normalization(), tile=tile)
    tiled = pred.predict(ArrayVolume(raw), Roi((0, 0, 0), raw.shape))
    whole = untiled(net, raw, (0, 0, 0), raw.shape)
    assert pred.grid().count((0, 0, 0), raw.shape) > 1
    # fp32 convolutions of different spatial sizes round differently in the last bits: a voxel on a
    # rounding boundary of the uint8 scale may move by one step. (Blocks never differ: they share tiles.)
    assert np.abs(tiled - whole).max() < 1e-5
    du = np.abs(probability_to_uint8(tiled).astype(int) - probability_to_uint8(whole))
    assert du.max() <= 1 and (du > 0).mean() < 1e-3


def test_roi_prediction_uses_real_context_and_does_not_depend_on_the_roi():
    net = lively(CFG2)
    raw = np.random.default_rng(2).integers(0, 255, (44, 48, 52), dtype=np.uint8)
    pred = Predictor.from_model(net, (5, 5, 5), Normalization(), tile=(76, 76, 76), anchor=(0, 0, 0))
    full = pred.predict(ArrayVolume(raw), Roi((0, 0, 0), raw.shape))
    roi = Roi((21, 13, 17), (16, 20, 24))
    part = pred.predict(ArrayVolume(raw), roi)
    np.testing.assert_array_equal(part, full[roi.slices()])  # same tiles -> same bits
    alone = pred.predict(ArrayVolume(raw[roi.slices()].copy()), Roi((0, 0, 0), roi.shape))
    assert np.abs(alone - part).max() > 1e-3  # mirror padding of the ROI alone differs from its real context


def test_tile_grid_steps_and_errors():
    grid = tile_grid(UNetConfig(), (204, 204, 204))
    assert grid.tile_out == (110, 110, 110) and grid.step == (104, 104, 104) and grid.context == (47, 47, 47)
    origin, shape, starts = grid.covering((100, 0, 5), (300, 250, 111))
    assert origin == (0, 0, 0) and shape == (312, 312, 208) and len(starts) == 3 * 3 * 2
    origin, shape, starts = grid.covering((100, 0, 5), (300, 250, 111), anchor=(100, 0, 5))
    assert origin == (100, 0, 5) and shape == (208, 312, 208) and len(starts) == 2 * 3 * 2
    with pytest.raises(InputError, match="not a valid network input.*valid sizes"):
        tile_grid(UNetConfig(), (200, 200, 200))
    assert default_chunks((104, 104, 16)) == (52, 52, 64)  # the ASEM step 104 with 64^3 chunks: lcm 1664


def test_block_plan_rounds_a_requested_shape_and_says_so():
    plan = plan_blocks(Roi((0, 0, 0), (100, 200, 300)), (32, 32, 32), (64, 50, 20))
    assert plan.block_shape == (64, 64, 32) and "rounded to (64, 64, 32)" in plan.note
    assert plan_blocks(Roi((0, 0, 0), (100, 200, 300)), (32, 32, 32), (64, 64, 64)).note == ""
    seen = np.zeros((100, 200, 300), np.int8)
    for b in plan:
        seen[b.roi.slices()] += 1
    assert (seen == 1).all()


# --------------------------------------------------------------------------- the driver


def test_blocks_equal_one_region_and_requested_block_shapes_are_rounded(files, tmp_path):
    # the ASEM-style case from issue 13: a block that is not a multiple of the tile step and the chunks
    res = run(files, tmp_path / "b.zarr", block_shape=(12, 20, 20))
    assert "rounded to (16, 24, 24)" in res.note and "computed more than once" in res.note
    assert_same(tmp_path / "b.zarr", files / "ref.zarr")
    p = open_volume(tmp_path / "b.zarr/probability")
    assert p.attrs["kind"] == "probability" and p.attrs["pyramid"]["levels"] == res.pyramid_levels == 4
    assert p.offset == (115.0, 25.0, 60.0) and p.voxel_size == (5.0, 5.0, 5.0)
    assert 0.05 < open_volume(mask_path(tmp_path / "b.zarr")).read().mean() < 0.95
    again = run(files, tmp_path / "b.zarr", block_shape=(12, 20, 20))
    assert again.already_complete and again.computed == 0
    with pytest.raises(InputError, match="already exists"):
        run(files, tmp_path / "b.zarr", block_shape=(12, 20, 20), threshold=0.7)
    with pytest.raises(InputError, match="threshold"):
        run(files, tmp_path / "t.zarr", threshold=1.5)
    assert not (tmp_path / "t.zarr.partial").exists()


def test_dask_equals_in_process_with_a_model_at_twice_the_voxel_size(files, client, tmp_path):
    local = run(files, tmp_path / "local.zarr", model="model10.pt")
    dask = run(files, tmp_path / "dask.zarr", model="model10.pt", client=client)
    assert local.blocks == dask.blocks == 8 and dask.computed == 8
    assert_same(tmp_path / "local.zarr", tmp_path / "dask.zarr")
    assert not (tmp_path / "dask.zarr" / "model_grid").exists()  # the scratch of the model-grid pass is gone
    p = open_volume(tmp_path / "dask.zarr/probability")
    assert p.voxel_size == (5.0, 5.0, 5.0) and p.attrs["resampled"]["to_model"]["scale"] == [2, 2, 2]
    # a different block split (and one region in memory) gives the same bytes too
    run(files, tmp_path / "one.zarr", model="model10.pt", block_shape=None)
    assert_same(tmp_path / "local.zarr", tmp_path / "one.zarr")
    vol = open_volume(files / "raw.zarr")
    mem = Predictor.from_checkpoint(files / "model10.pt", tile=TILE).predict(vol, ROI)
    np.testing.assert_array_equal(probability_to_uint8(mem), levels(tmp_path / "one.zarr")["probability/s0"])
    assert not np.array_equal(
        levels(tmp_path / "one.zarr")["probability/s0"], levels(files / "ref.zarr")["probability/s0"]
    )
    # a worker loads the model once and keeps it (here one model-grid block: one worker needed it)
    n = client.run(lambda: len(__import__("organet.predict.predictor", fromlist=["_MODELS"])._MODELS))
    assert sorted(n.values()) == [0, 1]


def test_failed_run_resumes_to_identical_output(files, client, faults, tmp_path):
    out, partial = tmp_path / "r.zarr", tmp_path / "r.zarr.partial"
    set_faults(faults, "predict", [(0, 1, 0), (1, 1, 1)], tmp_path / "c1")
    with pytest.raises(BlockFailures) as e:
        run(files, out, client=client, retries=0)
    faults.write_text("[]")
    assert "block 0_1_0" in str(e.value) and "block 1_1_1" in str(e.value) and "2 of 8 blocks failed" in str(e.value)
    assert not out.exists() and len(list((tmp_path / "r.zarr.progress/predict").iterdir())) == 6
    # a crash mid-write leaves garbage in a block without a ledger entry: it is redone whole
    zarr.open_array(str(partial), path="probability/s0", mode="r+")[16:30, 32:40, 32:44] = 77
    from organet.blockwise import dask_client

    set_faults(faults, "predict", [(0, 0, 0)], tmp_path / "c-done")  # a finished block must not run again
    with dask_client(scheduler=client.scheduler.address) as other:  # resume from another client (--scheduler)
        res = run(files, out, client=other)
    faults.write_text("[]")
    assert attempts(tmp_path / "c-done", "predict", (0, 0, 0)) == 0
    assert (res.resumed, res.computed) == (6, 2)
    assert_same(out, files / "ref.zarr")
    assert not (tmp_path / "r.zarr.progress").exists() and not partial.exists()
    # other settings do not silently mix with an unfinished run
    set_faults(faults, "predict", [(0, 0, 0)], tmp_path / "c2")
    with pytest.raises(BlockFailures):
        run(files, tmp_path / "s.zarr", retries=0)
    faults.write_text("[]")
    with pytest.raises(IncompatibleError, match="other settings.*threshold"):
        run(files, tmp_path / "s.zarr", threshold=0.3)
    assert run(files, tmp_path / "s.zarr", threshold=0.3, overwrite=True).computed == 8


def test_killed_worker_is_replaced_and_a_failing_block_is_reported(files, client, faults, tmp_path):
    set_faults(faults, "predict", [(1, 0, 1)], tmp_path / "k", times=1, action="kill")
    res = run(files, tmp_path / "k.zarr", client=client)
    # killed once, then rerun elsewhere (a loaded scheduler may start a lost task twice: same bytes)
    assert attempts(tmp_path / "k", "predict", (1, 0, 1)) >= 2 and res.computed == 8
    assert_same(tmp_path / "k.zarr", files / "ref.zarr")
    set_faults(faults, "predict", [(1, 0, 0)], tmp_path / "f")
    with pytest.raises(BlockFailures, match=r"block 1_0_0: RuntimeError: injected failure") as e:
        run(files, tmp_path / "f.zarr", retries=2)
    assert attempts(tmp_path / "f", "predict", (1, 0, 0)) == 3 and list(e.value.failures) == [(1, 0, 0)]
    set_faults(faults, "predict", [(1, 0, 0)], tmp_path / "f", times=4)  # fails once more, then the retry works
    res = run(files, tmp_path / "f.zarr", retries=1)
    faults.write_text("[]")
    assert res.computed == 1 and attempts(tmp_path / "f", "predict", (1, 0, 0)) == 5
    assert_same(tmp_path / "f.zarr", files / "ref.zarr")


def test_killed_process_resumes_to_identical_output(files, tmp_path):
    """SIGKILL of the whole in-process run in the middle, then the same call again."""
    out = tmp_path / "p.zarr"
    code = (
        "import sys; from organet.predict import Predictor, predict_volume; from organet.volumes import Roi\n"
        f"predict_volume(Predictor.from_checkpoint({str(files / 'model10.pt')!r}, tile={TILE}, device='cpu'), "
        f"{str(files / 'raw.zarr')!r}, {str(out)!r}, roi=Roi({ROI.offset}, {ROI.shape}), chunks={CHUNKS}, "
        f"block_shape={BLOCK})\n"
    )
    fault = tmp_path / "kill.json"
    for stage, block in (("predict", (0, 0, 0)), ("resample", (1, 0, 1)), ("pyramid probability s1", (0, 0, 0))):
        set_faults(fault, stage, [block], tmp_path / f"c-{stage.replace(' ', '-')}", times=1, action="kill")
        env = {**os.environ, ENV: str(fault), "OMP_NUM_THREADS": "1"}
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert r.returncode == -9, r.stderr
        assert not out.exists() and (tmp_path / "p.zarr.partial").exists()
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, ENV: ""}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    run(files, tmp_path / "ref10.zarr", model="model10.pt")
    assert_same(out, tmp_path / "ref10.zarr")


def test_an_old_ledger_is_refused_with_a_clear_message(files, tmp_path):
    (tmp_path / "o.zarr.progress").mkdir()
    (tmp_path / "o.zarr.progress" / "0_0_0").write_text("done")  # format 1: bare markers
    with pytest.raises(IncompatibleError, match="older organet.*--overwrite"):
        run(files, tmp_path / "o.zarr")
    assert run(files, tmp_path / "o.zarr", overwrite=True).computed == 8


def test_sample_mask_skips_empty_blocks(files, tmp_path):
    # mask at half resolution (10 nm), aligned by nm: sample only at raw z < 15 (block row z = 0)
    m = np.zeros((18, 25, 25), np.uint8)
    m[:9] = 1
    res = run(files, tmp_path / "m.zarr", sample_mask=SampleMask(Volume(m, (10, 10, 10), (100, 0, 50))))
    assert res.skipped_by_mask == 4 and res.computed == 8
    got, ref = levels(tmp_path / "m.zarr"), levels(files / "ref.zarr")
    np.testing.assert_array_equal(got["probability/s0"][:16], ref["probability/s0"][:16])
    assert not got["probability/s0"][16:].any() and not got[f"{PREDICTION_MASK}/s0"][16:].any()
    res = run(files, tmp_path / "none.zarr", sample_mask=SampleMask(rule=">255"))
    assert res.skipped_by_mask == 8 and not levels(tmp_path / "none.zarr")["probability/s0"].any()
    with pytest.raises(InputError, match="mask rule"):
        SampleMask(rule="bright")


def test_tta_does_not_depend_on_tiles_or_blocks(files, tmp_path):
    run(files, tmp_path / "a.zarr", tile=(42, 42, 42), block_shape=None, tta="mirror")
    run(files, tmp_path / "b.zarr", tta="mirror")
    assert_same(tmp_path / "a.zarr", tmp_path / "b.zarr")
    assert not np.array_equal(
        levels(tmp_path / "a.zarr")["probability/s0"], levels(files / "ref.zarr")["probability/s0"]
    )
    with pytest.raises(InputError, match="equal y and x"):
        run(files, tmp_path / "y.zarr", tta="mirror+transpose", tile=(34, 34, 42))
    with pytest.raises(InputError, match="unknown test-time augmentation"):
        run(files, tmp_path / "x.zarr", tta="rotate")
    assert not (tmp_path / "x.zarr.partial").exists()


def test_a_non_integer_voxel_size_ratio_is_resampled(files, tmp_path):
    """7 nm input under a 10 nm model: once refused, now resampled both ways (ratio 1.43)."""
    with write_ome_zarr(tmp_path / "raw7.zarr") as w:
        w.create_image(None, (30, 30, 30), np.uint8, (7, 7, 7)).write(..., np.zeros((30, 30, 30), np.uint8))
    pred = Predictor.from_checkpoint(files / "model10.pt", tile=TILE)
    predict_volume(pred, tmp_path / "raw7.zarr", tmp_path / "o.zarr")
    prob = open_volume(tmp_path / "o.zarr" / "probability")
    assert prob.shape == (30, 30, 30) and prob.voxel_size == (7, 7, 7)
    assert prob.attrs["resampled"]["to_model"]["scale"] == [round(10 / 7, 6)] * 3
    assert prob.attrs["resampled"]["to_model"]["modes"] == ["area"] * 3


def test_cpu_torch_network_runs_channels_last_with_the_contiguous_result(files):
    """A checkpoint's network on the CPU is kept in oneDNN's channels-last layout (faster, see
    docs/benchmarks.md); its probabilities equal the plain layout's within float rounding."""
    import torch

    from organet.model.checkpoint import load_checkpoint
    from organet.predict.predictor import _cached_model
    from organet.predict.tiled import channels_last

    net = _cached_model(str(files / "model.pt"), "cpu")
    assert channels_last(net)
    plain = load_checkpoint(files / "model.pt").build_model().eval()
    assert not channels_last(plain)
    vol = open_volume(files / "raw.zarr")
    fast = Predictor.from_checkpoint(files / "model.pt", tile=TILE, device="cpu").predict(vol, ROI)
    slow = Predictor.from_model(plain, (5.0, 5.0, 5.0), Normalization(), tile=TILE, device="cpu").predict(vol, ROI)
    assert fast.shape == slow.shape == ROI.shape
    np.testing.assert_allclose(fast, slow, atol=1e-5)
    with torch.no_grad():
        x = torch.rand(1, 1, *TILE)
        np.testing.assert_allclose(net(x.contiguous(memory_format=torch.channels_last_3d)), plain(x), atol=1e-5)
