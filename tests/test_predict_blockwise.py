"""Blockwise prediction on Dask: equality with the single-process tiled result,
resume after a crash, retries and honest failure, sample-mask skipping, TTA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from organet.model.checkpoint import Checkpoint, save_checkpoint
from organet.model.unet import UNet, UNetConfig
from organet.predict.blockwise import (
    BlockFailures,
    FaultInjection,
    SampleMask,
    block_tiles,
    default_chunks,
    done_blocks,
    plan_blocks,
    predict_blockwise,
)
from organet.predict.run import predict_volume
from organet.predict.tiled import plan_tiles
from organet.preprocess import Normalization
from organet.volumes import Roi, Volume, VolumeError, open_volume, write_ome_zarr

CFG = UNetConfig(num_fmaps=2, downsample_factors=((2, 2, 2),))
TILE = (34, 34, 34)  # -> 16^3 output, step 16
CHUNKS = (8, 8, 8)
BLOCK = (16, 32, 32)
ROI = Roi((3, 5, 2), (30, 40, 44))  # blocks 2 x 2 x 2, partial at the far edges


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bw")
    torch.manual_seed(0)
    save_checkpoint(Checkpoint(CFG, TILE, (5.0, 5.0, 5.0), Normalization(), "mito", UNet(CFG).state_dict()),
                    d / "model.pt")
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, (36, 50, 50), dtype=np.uint8)
    with write_ome_zarr(d / "raw.zarr") as w:
        w.create_image(None, raw.shape, np.uint8, (5, 5, 5), (100, 0, 50), (16, 16, 16)).write(..., raw)
    predict_volume(d / "model.pt", d / "raw.zarr", d / "ref.zarr", roi=ROI, tile_shape=TILE, chunks=CHUNKS,
                   device="cpu", progress=False)
    return d


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


def arrays(path) -> dict[str, np.ndarray]:
    return {n: open_volume(f"{path}/{n}").read() for n in ("probability", "mask")}


def assert_same(a, b) -> None:
    for n in ("probability", "mask"):
        np.testing.assert_array_equal(arrays(a)[n], arrays(b)[n], err_msg=n)


def run(files, out, **kw):
    kw = {"roi": ROI, "tile_shape": TILE, "chunks": CHUNKS, "block_shape": BLOCK, "device": "cpu", "progress": False,
          **kw}
    return predict_blockwise(files / "model.pt", files / "raw.zarr", out, **kw)


def test_blocks_are_whole_tiles_and_chunks():
    tiles = plan_tiles(CFG, TILE, ROI.offset, ROI.shape)
    plan = plan_blocks(tiles, CHUNKS, BLOCK)
    assert plan.grid == (2, 2, 2)
    seen = []
    for b in plan.indices():
        roi = plan.block_roi(b)
        assert all((o - r) % c == 0 for o, r, c in zip(roi.offset, ROI.offset, CHUNKS))
        seen += [t[1] for t in block_tiles(tiles, roi)]
    assert sorted(seen) == sorted(t[1] for t in tiles.tiles())  # each tile in exactly one block
    with pytest.raises(ValueError, match="whole multiple of"):
        plan_blocks(tiles, CHUNKS, (16, 24, 32))
    assert plan_blocks(tiles, (64, 64, 64)).grid == (1, 1, 1)  # chunks as large as the ROI: one block
    big = plan_tiles(CFG, TILE, (0, 0, 0), (600, 300, 100))
    assert plan_blocks(big, (64, 64, 64)).block_shape == (256, 256, 100)
    assert default_chunks((104, 104, 16)) == (52, 52, 64)  # the ASEM step 104 with 64^3 chunks: lcm 1664


def test_blockwise_on_dask_equals_single_process(files, client, tmp_path):
    out = tmp_path / "bw.zarr"
    res = run(files, out, client=client)
    assert res.computed == res.blocks == 8 and not (tmp_path / "bw.zarr.partial").exists()
    assert_same(out, files / "ref.zarr")
    p = open_volume(out / "probability")
    assert p.offset == open_volume(files / "ref.zarr/probability").offset
    assert p.attrs["kind"] == "probability" and p.attrs["pyramid"]["levels"] == res.pyramid_levels == 4
    s1 = zarr.open_array(str(out), path="mask/s1", mode="r")
    assert s1.shape == (15, 20, 22)
    assert (out / "probability/s0/c/1/4/5").is_file()  # the chunk keys the durability fsync expects
    assert not (tmp_path / "bw.zarr.progress").exists()  # the ledger goes when the output is complete
    # each worker loaded the model once and kept it
    n_models = client.run(lambda: len(__import__("organet.predict.blockwise", fromlist=["_MODELS"])._MODELS))
    assert sorted(n_models.values()) == [1, 1]
    # the same command again: nothing to do
    again = run(files, out, client=client)
    assert again.already_complete and again.computed == 0
    with pytest.raises(VolumeError, match="already exists"):
        run(files, out, client=client, threshold=0.7)


def test_killed_run_resumes_to_identical_output(files, client, tmp_path):
    out = tmp_path / "r.zarr"
    partial = tmp_path / "r.zarr.partial"
    fault = FaultInjection(((0, 1, 0), (1, 1, 1)), str(tmp_path / "faults"))
    with pytest.raises(BlockFailures) as e:
        run(files, out, client=client, retries=0, fault=fault)
    assert "(0, 1, 0)" in str(e.value) and "(1, 1, 1)" in str(e.value) and "2 of 8 blocks failed" in str(e.value)
    assert not out.exists() and len(done_blocks(tmp_path / "r.zarr.progress")) == 6
    # a crash mid-write leaves garbage in a block without a marker: it is redone whole
    zarr.open_array(str(partial), path="probability/s0", mode="r+")[16:30, 32:40, 32:44] = 77
    # ... and a crash inside the final step leaves a half-written pyramid and a "complete" record
    g = zarr.open_group(str(partial), mode="r+")
    g.attrs["organet_run"] = {**g.attrs["organet_run"], "complete": True}
    g["probability"].create_array("s1", shape=(3, 3, 3), dtype=np.uint8, fill_value=9)
    from organet.predict.cluster import dask_client

    with dask_client(scheduler=client.scheduler.address) as other:  # resume from another client (--scheduler)
        res = run(files, out, client=other)
    assert (res.resumed, res.computed) == (6, 2)
    assert_same(out, files / "ref.zarr")
    # other settings do not silently mix with an unfinished run
    fault2 = FaultInjection(((0, 0, 0),), str(tmp_path / "f2"))
    with pytest.raises(BlockFailures):
        run(files, tmp_path / "s.zarr", client=client, retries=0, fault=fault2)
    with pytest.raises(VolumeError, match="other settings.*threshold"):
        run(files, tmp_path / "s.zarr", client=client, threshold=0.3)


def test_killed_worker_is_replaced_and_output_identical(files, client, tmp_path):
    fault = FaultInjection(((1, 0, 1),), str(tmp_path / "faults"), times=1, action="kill")
    out = tmp_path / "k.zarr"
    res = run(files, out, client=client, fault=fault)
    assert fault.attempts((1, 0, 1)) == 2 and res.computed == 8
    assert_same(out, files / "ref.zarr")


def test_failing_block_is_retried_then_reported(files, client, tmp_path):
    out = tmp_path / "f.zarr"
    fault = FaultInjection(((1, 0, 0),), str(tmp_path / "faults"), times=-1)
    with pytest.raises(BlockFailures, match=r"block \(1, 0, 0\).*injected failure") as e:
        run(files, out, client=client, retries=2, fault=fault)
    assert fault.attempts((1, 0, 0)) == 3 and list(e.value.failures) == [(1, 0, 0)]
    # a transient failure: fails once more (attempt 4), the retry succeeds
    flaky = FaultInjection(((1, 0, 0),), str(tmp_path / "faults"), times=4)
    res = run(files, out, client=client, retries=1, fault=flaky)
    assert res.computed == 1 and flaky.attempts((1, 0, 0)) == 5
    assert_same(out, files / "ref.zarr")


def test_sample_mask_skips_empty_blocks(files, tmp_path):
    # mask at half resolution (10 nm), aligned by nm: sample only at raw z < 15 (block row z = 0)
    m = np.zeros((18, 25, 25), np.uint8)
    m[:9] = 1
    mask = Volume(m, (10, 10, 10), (100, 0, 50))
    out = tmp_path / "m.zarr"
    res = run(files, out, sample_mask=SampleMask(mask))
    assert res.skipped_by_mask == 4 and res.computed == 8
    got, ref = arrays(out), arrays(files / "ref.zarr")
    np.testing.assert_array_equal(got["probability"][:16], ref["probability"][:16])
    assert not got["probability"][16:].any() and not got["mask"][16:].any()
    # a rule on raw intensities that nothing passes: everything skipped, all zero
    res = run(files, tmp_path / "none.zarr", sample_mask=SampleMask(rule=">255"))
    assert res.skipped_by_mask == 8 and not arrays(tmp_path / "none.zarr")["probability"].any()
    with pytest.raises(ValueError, match="mask rule"):
        SampleMask(rule="bright")


def test_tta_blockwise_equals_single_process(files, tmp_path):
    ref = tmp_path / "tta_ref.zarr"
    predict_volume(files / "model.pt", files / "raw.zarr", ref, roi=ROI, tile_shape=(42, 42, 42), chunks=CHUNKS,
                   device="cpu", progress=False, tta="mirror")
    out = tmp_path / "tta.zarr"
    run(files, out, tta="mirror")  # other tile size, blocks
    assert_same(out, ref)
    assert not np.array_equal(arrays(out)["probability"], arrays(files / "ref.zarr")["probability"])
    # with the y-x transpose as well (16 variants): also independent of tiling
    ref_t = tmp_path / "tta_t_ref.zarr"
    predict_volume(files / "model.pt", files / "raw.zarr", ref_t, roi=ROI, tile_shape=(42, 42, 42), chunks=CHUNKS,
                   device="cpu", progress=False, tta="mirror+transpose")
    run(files, tmp_path / "tta_t.zarr", tta="mirror+transpose")
    assert_same(tmp_path / "tta_t.zarr", ref_t)
    with pytest.raises(ValueError, match="equal y and x"):
        run(files, tmp_path / "y.zarr", tta="mirror+transpose", tile_shape=(34, 34, 42), block_shape=(16, 32, 48))
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        run(files, tmp_path / "x.zarr", tta="rotate")
    assert not (tmp_path / "x.zarr.partial").exists()
