"""``clahe-incasem``: CLAHE exactly as incasem computes it (write blocks equalized on their
own, mean fill outside the volume, dtype-range rescale, truncation to uint8), blockwise
without seams, resumable, and applied on the fly by ``organet predict``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr
from skimage.exposure import equalize_adapthist, rescale_intensity
from skimage.exposure._adapthist import _clahe
from skimage.util import img_as_uint
from tests.helpers import spread_unet
from typer.testing import CliRunner

from organet.blockwise.faults import ENV
from organet.cli import app
from organet.errors import BlockFailures, IncompatibleError
from organet.model.checkpoint import Checkpoint, save_checkpoint
from organet.model.unet import UNetConfig
from organet.predict import Predictor, predict_volume
from organet.predict.run import IMAGES, input_box
from organet.predict.tiled import reflect_indices
from organet.preprocess import Normalization, PreprocessParams, check_preprocess, normalize_array, preprocess_volume
from organet.preprocess import clahe_incasem as ci
from organet.volumes import Roi, Volume, open_volume, write_ome_zarr

GREY = 2**14 - 1


def sample(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """uint8 EM-like data: smooth structure, a step, noise; values span 0..255."""
    rng = np.random.default_rng(seed)
    z = np.arange(shape[0])[:, None, None]
    y = np.arange(shape[1])[None, :, None]
    x = np.arange(shape[2])[None, None, :]
    a = 110 + 60 * np.sin(x / 9.0) + 40 * np.cos(y / 13.0) + 30 * (z > shape[0] // 2) + rng.normal(0, 25, shape)
    a = np.clip(a, 0, 255).astype(np.uint8)
    a[0, 0, 0], a[-1, -1, -1] = 0, 255
    return a


def write_raw(path, a: np.ndarray, chunks=(16, 16, 16)) -> None:
    with write_ome_zarr(path) as w:
        w.create_image(None, a.shape, np.uint8, (5.0, 5.0, 5.0), (0.0, 0.0, 0.0), chunks=chunks).write(..., a)


def incasem_reference(a: np.ndarray, kernel, block, core: str, clip_limit: float = 0.02, nbins: int = 256):
    """incasem's recipe written out: daisy's grid of write blocks from voxel 0 (last block per
    axis shorter), read region = write block grown by kernel // 2, int(mean(write block))
    outside the volume, img_as_uint, dtype range -> [0, 2**14) rounded, the CLAHE core
    (scikit-image's ``_clahe``, or organet's one-region core for speed), then u16 / 16383 * 255
    truncated to uint8."""
    k, b = np.broadcast_to(kernel, 3), np.broadcast_to(block, 3)
    c = k // 2
    out = np.zeros(a.shape, np.uint8)
    for z0 in range(0, a.shape[0], b[0]):
        for y0 in range(0, a.shape[1], b[1]):
            for x0 in range(0, a.shape[2], b[2]):
                w0 = np.array([z0, y0, x0])
                w1 = np.minimum(w0 + b, a.shape)
                write = tuple(slice(p, q) for p, q in zip(w0, w1))
                r0, r1 = w0 - c, w1 + c
                region = np.full(tuple(r1 - r0), int(np.mean(a[write])), np.uint8)
                i0, i1 = np.maximum(r0, 0), np.minimum(r1, a.shape)
                region[tuple(slice(p - r, q - r) for p, q, r in zip(i0, i1, r0))] = a[
                    tuple(slice(p, q) for p, q in zip(i0, i1))
                ]
                grey = np.round(rescale_intensity(img_as_uint(region), in_range="dtype", out_range=(0, GREY))).astype(
                    np.uint16
                )
                if core == "skimage":
                    u = _clahe(grey, [int(v) for v in k], clip_limit, nbins)
                    keep = u[tuple(slice(cc, cc + q - p) for cc, p, q in zip(c, w0, w1))]
                else:  # organet's core of one region (checked against _clahe in test_one_block_equals_scikit_image)
                    keep = ci.clahe_incasem_u16(region, k, clip_limit, nbins, Roi(c, w1 - w0))
                out[write] = ((keep / float(GREY)) * 255).astype(np.uint8)
    return out


# -- a: one block against scikit-image --------------------------------------------------------


def test_one_block_equals_scikit_image():
    """One write block of incasem's size in y and x (kernel and block 128; 16 in z, which keeps
    scikit-image's reference to a few seconds): the volume is that block and its read region
    (16 + 2 * 8) x 256 x 256 holds int(mean) around it. The region spans 0..255, so
    scikit-image's input rescale over the image range equals incasem's over the dtype range,
    and our uint16 CLAHE of the whole region rescaled by its min/max is what
    equalize_adapthist returns (it ends with that rescale; incasem does not)."""
    a = sample((16, 128, 128))
    p = PreprocessParams(method="clahe-incasem", kernel=(16, 128, 128), block=(16, 128, 128))
    grid = ci.incasem_grid(a.shape, p.block, p.kernel)
    assert len(grid) == 1
    blk = grid.block((0, 0, 0))
    assert blk.context == (8, 64, 64) == ci.incasem_context(p.kernel)  # (5 nm * 128 + 1) // 2 nm = 64 voxels
    region = ci.read_region(Volume(a), blk)
    assert region.shape == (32, 256, 256)
    assert (region[:8] == int(np.mean(a))).all() and np.array_equal(region[8:24, 64:192, 64:192], a)
    assert region.min() == 0 and region.max() == 255

    u16 = ci.clahe_incasem_u16(region, p.kernel, p.clip_limit, p.nbins)
    ours = (u16.astype(np.float64) - u16.min()) / (int(u16.max()) - int(u16.min()))
    ref = equalize_adapthist(region, kernel_size=(16, 128, 128), clip_limit=0.02, nbins=256)
    assert np.abs(ours - ref).max() <= 1e-6
    assert u16.max() <= GREY and u16.min() > 0  # incasem keeps the scale: no min/max rescale

    out = ci.clahe_incasem_block(region, p)
    assert out.shape == (16, 128, 128) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.floor(u16[8:24, 64:192, 64:192] / GREY * 255).astype(np.uint8))


# -- b: whole-volume semantics ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "kernel", "block", "core"),
    [
        ((136, 140, 132), 128, 128, "organet"),  # incasem's defaults; not a multiple of 128
        ((50, 70, 60), 32, 32, "skimage"),
        ((45, 70, 52), 16, 24, "skimage"),  # write block != kernel
        ((30, 50, 41), (8, 16, 12), (16, 24, 32), "skimage"),  # anisotropic
    ],
)
def test_blockwise_equals_incasem(tmp_path, shape, kernel, block, core):
    a = sample(shape, seed=1)
    write_raw(tmp_path / "raw.zarr", a)
    p = PreprocessParams(method="clahe-incasem", kernel=kernel, block=block)
    out = preprocess_volume(open_volume(tmp_path / "raw.zarr"), tmp_path / "out.zarr", p)
    np.testing.assert_array_equal(out.read(), incasem_reference(a, kernel, block, core))
    assert out.attrs["preprocess"] == {
        "method": "clahe-incasem",
        "clip_limit": 0.02,
        "kernel": list(np.broadcast_to(kernel, 3)),
        "nbins": 256,
        "block": list(np.broadcast_to(block, 3)),
    }


def test_mean_fill_and_float_input():
    """Outside the volume the region holds int(mean) of the write block (truncated, as
    incasem's ``int(np.mean(...))``), and float input in [0, 1] goes through img_as_uint."""
    a = np.full((10, 12, 14), 4, np.uint8)
    a[:4] = 3  # write block (0, 0, 0) of 8^3: mean 3.5
    grid = ci.incasem_grid(a.shape, (8, 8, 8), (4, 4, 4))
    region = ci.read_region(Volume(a), grid.block((0, 0, 0)))
    assert region.shape == (12, 12, 12) and region[0, 0, 0] == 3 and region[-1, -1, -1] == 4
    assert (region[0] == 3).all() and (region[2:10, 2:10, 2:10] == a[:8, :8, :8]).all()
    last = grid.block((1, 1, 1))  # z 8:10, y 8:12, x 8:14; read region reaches 2 past the volume
    assert last.roi == Roi((8, 8, 8), (2, 4, 6)) and last.read_roi == Roi((6, 6, 6), (6, 8, 10))
    f = sample((20, 24, 22)).astype(np.float32) / 255
    p = PreprocessParams(method="clahe-incasem", kernel=8, block=8)
    np.testing.assert_array_equal(ci.clahe_incasem_box(Volume(f), Volume(f).roi, p), incasem_reference_float(f, 8, 8))


def incasem_reference_float(f: np.ndarray, kernel: int, block: int) -> np.ndarray:
    out = np.zeros(f.shape, np.uint8)
    c = kernel // 2
    for i in np.ndindex(*(int(np.ceil(s / block)) for s in f.shape)):
        w0 = np.array(i) * block
        w1 = np.minimum(w0 + block, f.shape)
        write = tuple(slice(p, q) for p, q in zip(w0, w1))
        region = np.full(tuple(w1 - w0 + 2 * c), int(np.mean(f[write])), np.float32)  # int() of a mean in [0, 1]
        i0, i1 = np.maximum(w0 - c, 0), np.minimum(w1 + c, f.shape)
        region[tuple(slice(p - r, q - r) for p, q, r in zip(i0, i1, w0 - c))] = f[
            tuple(slice(p, q) for p, q in zip(i0, i1))
        ]
        grey = np.round(rescale_intensity(img_as_uint(region), in_range="dtype", out_range=(0, GREY))).astype(np.uint16)
        u = _clahe(grey, [kernel] * 3, 0.02, 256)[tuple(slice(c, c + q - p) for p, q in zip(w0, w1))]
        out[write] = ((u / float(GREY)) * 255).astype(np.uint8)
    return out


def test_params_record_and_refusals():
    rec = PreprocessParams(method="clahe-incasem").record()
    assert rec == {"method": "clahe-incasem", "clip_limit": 0.02, "kernel": [128] * 3, "nbins": 256, "block": [128] * 3}
    assert PreprocessParams(method="clahe", block=64).record() == {  # other methods' records unchanged
        "method": "clahe",
        "clip_limit": 0.02,
        "kernel": [128] * 3,
        "nbins": 256,
    }
    with pytest.raises(ValueError, match="even kernel"):
        PreprocessParams(method="clahe-incasem", kernel=33)
    r = CliRunner().invoke(app, ["preprocess", "x.zarr", "-o", "y.zarr", "--method", "clahe-incasem", "--kernel", "31"])
    assert r.exit_code == 2 and "even kernel" in r.output


# -- c: seam-free and resumable ----------------------------------------------------------------

SMALL = (50, 70, 60)
SMALL_PARAMS = PreprocessParams(method="clahe-incasem", kernel=32, block=32)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("incasem")
    a = sample(SMALL, seed=2)
    write_raw(d / "raw.zarr", a)
    return d, a, incasem_reference(a, 32, 32, "skimage")


class CountBlocks:
    """Counts calls of the one-block function (in this process)."""

    def __init__(self, monkeypatch):
        self.n = 0
        inner = ci.clahe_incasem_block

        def counted(region, params):
            self.n += 1
            return inner(region, params)

        monkeypatch.setattr(ci, "clahe_incasem_block", counted)


@pytest.mark.parametrize(
    ("block", "chunks", "once"),
    [
        ((64, 64, 64), (16, 16, 16), True),
        ((128, 128, 128), (64, 64, 64), True),
        ((256, 256, 256), (32, 32, 32), True),
        ((40, 40, 40), (20, 20, 20), False),  # lcm(32, 20) too large: chunk-aligned blocks split write blocks
    ],
)
def test_any_block_plan_gives_the_same_bytes(tmp_path, small, monkeypatch, block, chunks, once):
    d, a, ref = small
    count = CountBlocks(monkeypatch)
    out = preprocess_volume(open_volume(d / "raw.zarr"), tmp_path / "o.zarr", SMALL_PARAMS, block=block, chunks=chunks)
    assert out.read().tobytes() == ref.tobytes()
    n_write_blocks = len(ci.incasem_grid(SMALL, SMALL_PARAMS.block, SMALL_PARAMS.kernel))
    assert n_write_blocks == 2 * 3 * 2
    assert (count.n == n_write_blocks) is once and count.n >= n_write_blocks


def test_normalize_array_and_boxes(small):
    _, a, ref = small
    np.testing.assert_array_equal(np.round(normalize_array(a, SMALL_PARAMS) * 255).astype(np.uint8), ref)
    for box in (Roi((3, 5, 7), (30, 40, 41)), Roi((31, 63, 0), (2, 2, 60))):
        np.testing.assert_array_equal(ci.clahe_incasem_box(Volume(a), box, SMALL_PARAMS), ref[box.slices()])
    assert ci.snap_to_grid(Roi((3, 33, 40), (30, 5, 1)), (32, 32, 32), SMALL) == Roi((0, 32, 32), (50, 32, 28))


def test_resume_after_fault_gives_the_same_bytes(tmp_path, small, monkeypatch):
    d, _, ref = small
    faults = tmp_path / "faults.json"
    fault = {"stage": "write", "blocks": [[0, 1, 0]], "times": -1, "action": "raise", "counter_dir": str(tmp_path)}
    faults.write_text(json.dumps([fault]))
    monkeypatch.setenv(ENV, str(faults))
    out = tmp_path / "o.zarr"
    kw = {"block": (32, 32, 32), "chunks": (32, 32, 32)}
    with pytest.raises(BlockFailures):
        preprocess_volume(open_volume(d / "raw.zarr"), out, SMALL_PARAMS, retries=0, **kw)
    assert not out.exists() and (tmp_path / "o.zarr.partial").is_dir()
    monkeypatch.delenv(ENV)
    count = CountBlocks(monkeypatch)
    vol = preprocess_volume(open_volume(d / "raw.zarr"), out, SMALL_PARAMS, **kw)
    assert count.n == 1  # only the failed block ran again
    assert vol.read().tobytes() == ref.tobytes()


# -- d: prediction applies it on the fly -----------------------------------------------------

CFG = UNetConfig(num_fmaps=4, downsample_factors=((2, 2, 2),))
TILE = (34, 34, 34)  # 16^3 output, context 9
REC = SMALL_PARAMS.record()
BIG = (40, 160, 70)
ROI = Roi((10, 70, 30), (16, 20, 24))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    net = spread_unet(CFG)
    for name, vs in (("model.pt", 5.0), ("model10.pt", 10.0)):
        save_checkpoint(
            Checkpoint(CFG, TILE, (vs, vs, vs), Normalization(preprocess=REC), "mito", net.state_dict()), d / name
        )
    a = sample(BIG, seed=3)
    write_raw(d / "raw.zarr", a)
    return d


def predict(d, raw, out, **kw):
    pred = Predictor.from_checkpoint(d / kw.pop("model", "model.pt"), tile=TILE, device="cpu")
    return predict_volume(pred, raw, out, roi=ROI, chunks=(8, 8, 8), block_shape=(16, 16, 16), **kw)


def arrays(out) -> dict[str, bytes]:
    return {f"{n}/s0": np.asarray(zarr.open_array(str(out / n / "s0"))[:]).tobytes() for n in IMAGES}


@pytest.fixture(scope="module")
def on_the_fly(models, tmp_path_factory):
    """Prediction on the raw input (normalized on the fly) and on `organet preprocess` output."""
    out = tmp_path_factory.mktemp("pred")
    totals: dict[str, int] = {}
    res = predict(models, models / "raw.zarr", out / "fly.zarr", progress=lambda s, a, t: totals.__setitem__(s, t))
    args = ["preprocess", models / "raw.zarr", "-o", out / "pre.zarr", "--method", "clahe-incasem"]
    r = CliRunner().invoke(app, [str(v) for v in [*args, "--kernel", "32", "--incasem-block", "32"]])
    assert r.exit_code == 0, r.output
    res_pre = predict(models, out / "pre.zarr", out / "pre_pred.zarr")
    return out, res, res_pre, totals


def test_predict_normalizes_raw_on_the_fly(models, on_the_fly):
    out, res, res_pre, totals = on_the_fly
    assert res.preprocess_on_the_fly == REC and res_pre.preprocess_on_the_fly is None
    fly, pre = arrays(out / "fly.zarr"), arrays(out / "pre_pred.zarr")
    assert fly == pre
    assert len(set(np.frombuffer(fly["probability/s0"], np.uint8))) > 10  # the model is not constant
    assert open_volume(out / "fly.zarr" / "probability").attrs["preprocess_on_the_fly"] == REC
    assert "preprocess_on_the_fly" not in open_volume(out / "pre_pred.zarr" / "probability").attrs
    assert not (out / "fly.zarr" / "clahe_incasem").exists()  # the scratch is gone
    # only the write blocks under the region the tiles read were computed
    grid = ci.incasem_grid(BIG, SMALL_PARAMS.block, SMALL_PARAMS.kernel)
    assert 0 < totals["clahe-incasem"] < len(grid)


def test_input_box_is_what_the_tiles_read(models, monkeypatch):
    """``input_box`` is the bounding box of the voxels the tiles read (mirrored into the volume)."""
    import organet.predict.tiled as tiled

    vol = open_volume(models / "raw.zarr")
    for roi in (ROI, Roi((0, 150, 60), (5, 10, 10))):  # inside; at the volume's corner (mirrored reads)
        seen: list[np.ndarray] = []
        real = tiled.read_with_context

        def spy(volume, start, stop, seen=seen, real=real):
            idx = [reflect_indices(a, b, n) for a, b, n in zip(start, stop, BIG)]
            seen.append(np.array([[int(i.min()) for i in idx], [int(i.max()) for i in idx]]))
            return real(volume, start, stop)

        monkeypatch.setattr(tiled, "read_with_context", spy)
        pred = Predictor.from_checkpoint(models / "model.pt", tile=TILE, device="cpu").for_region(vol, roi)
        pred.predict(vol, roi)
        lo, hi = np.min([b[0] for b in seen], 0), np.max([b[1] for b in seen], 0) + 1
        assert input_box(pred, vol, roi) == Roi(lo, hi - lo)


def test_predict_resumes_after_faults(models, on_the_fly, tmp_path, monkeypatch):
    out_dir, *_ = on_the_fly
    ref = arrays(out_dir / "fly.zarr")
    faults = tmp_path / "faults.json"
    monkeypatch.setenv(ENV, str(faults))
    out = tmp_path / "p.zarr"
    # a failed block in each pass; the last after the scratch input is gone
    for stage, block in (("clahe-incasem", [0, 1, 0]), ("predict", [0, 1, 1]), ("pyramid probability s1", [0, 0, 0])):
        fault = {"stage": stage, "blocks": [block], "times": -1, "action": "raise", "counter_dir": str(tmp_path)}
        faults.write_text(json.dumps([fault]))
        with pytest.raises(BlockFailures):
            predict(models, models / "raw.zarr", out, retries=0)
        assert not out.exists()
    faults.write_text("[]")
    res = predict(models, models / "raw.zarr", out)
    assert res.resumed > 0 and arrays(out) == ref


def test_predict_refusals(models, tmp_path):
    with pytest.raises(
        IncompatibleError, match=r"organet preprocess --method clahe-incasem` on data at \(10, 10, 10\)"
    ):
        predict(models, models / "raw.zarr", tmp_path / "r.zarr", model="model10.pt")
    other = Volume(sample((40, 60, 60)), (5.0, 5.0, 5.0), attrs={"preprocess": {"method": "clahe"}})
    with pytest.raises(IncompatibleError, match="expects clahe-incasem"):
        predict(models, other, tmp_path / "o.zarr")
    # training (no on-the-fly) still refuses untouched raw for a clahe-incasem config
    with pytest.raises(IncompatibleError):
        check_preprocess(REC, {}, "raw", "the config")
    assert check_preprocess(REC, {}, "raw", "the model", on_the_fly=True) == REC
    assert check_preprocess(REC, {"preprocess": REC}, "raw", "the model", on_the_fly=True) is None
