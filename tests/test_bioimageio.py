"""bioimage.io export: a tiny model exported by ``organet export --bioimageio`` passes
bioimageio.core's model test without organet importable, declares exactly the network's
valid sizes and its context as halo, maps the normalization exactly, and refuses CLAHE."""

import importlib.util
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch
from tests.helpers import spread_unet
from typer.testing import CliRunner

from organet.cli import app
from organet.errors import InputError
from organet.model import bioimageio as bx
from organet.model.checkpoint import Checkpoint, save_checkpoint
from organet.model.unet import UNet, UNetConfig, context
from organet.predict.plan import valid_tile_sizes
from organet.preprocess.normalize import Normalization

HAS_SPEC = (
    importlib.util.find_spec("bioimageio") is not None and importlib.util.find_spec("bioimageio.spec") is not None
)
HAS_CORE = HAS_SPEC and importlib.util.find_spec("bioimageio.core") is not None
needs_spec = pytest.mark.skipif(
    not HAS_SPEC, reason="bioimageio.spec not installed (pip install 'organet[bioimageio]')"
)
needs_core = pytest.mark.skipif(
    not HAS_CORE, reason="bioimageio.core not installed (needed to test exported packages: pip install bioimageio.core)"
)

# anisotropic pooling: z sizes 15 + n, y/x sizes 20 + 2n; context 7 (z) and 9 (y, x) voxels
CFG = UNetConfig(num_fmaps=4, downsample_factors=((1, 2, 2),))
VOXEL = (10.0, 5.0, 5.0)
runner = CliRunner()


def lively(cfg: UNetConfig, seed: int = 0) -> UNet:
    """A random network with weights scaled up, so its probabilities span [0, 1]."""
    torch.manual_seed(seed)
    net = spread_unet(cfg)
    return net.eval()


def write_checkpoint(path, normalization=None):
    net = lively(CFG)
    ck = Checkpoint(CFG, (31, 36, 36), VOXEL, normalization or Normalization(), "mito", net.state_dict(), iteration=7)
    save_checkpoint(ck, path)
    return net


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    if not HAS_SPEC:
        pytest.skip("bioimageio.spec not installed (pip install 'organet[bioimageio]')")
    d = tmp_path_factory.mktemp("bioimageio")
    net = write_checkpoint(d / "tiny.pt")
    out = d / "tiny.zip"
    res = runner.invoke(
        app,
        ["export", str(d / "tiny.pt"), "--bioimageio", str(out), "--license", "CC-BY-4.0", "--author", "A. Tester"],
    )
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.output
    return out, net


@needs_spec
def test_package_holds_weights_architecture_and_test_data(exported):
    out, _ = exported
    names = set(zipfile.ZipFile(out).namelist())
    for name in (
        "rdf.yaml",
        "bioimageio_unet.py",
        "weights.pt",
        "weights_torchscript.pt",
        "test_input.npy",
        "test_output.npy",
        "cover.png",
        "README.md",
    ):
        assert name in names, names
    arch = zipfile.ZipFile(out).read("bioimageio_unet.py").decode()
    imports = [ln for ln in arch.splitlines() if ln.startswith(("import ", "from "))]
    assert all("organet" not in ln for ln in imports), imports


@needs_spec
def test_sizes_halo_preprocessing_and_metadata(exported):
    from bioimageio.spec import load_model_description
    from bioimageio.spec.model import v0_5

    out, net = exported
    md = load_model_description(out, perform_io_checks=False)
    assert isinstance(md, v0_5.ModelDescr)
    (inp,) = md.inputs
    (outp,) = md.outputs
    assert [str(a.id) for a in inp.axes] == ["batch", "channel", "z", "y", "x"]
    valid = valid_tile_sizes(CFG, 80)
    halo = context(CFG, [valid[0][0], valid[1][0], valid[2][0]])
    for i, (ia, oa) in enumerate(zip(inp.axes[2:], outp.axes[2:])):
        assert isinstance(ia.size, v0_5.ParameterizedSize)
        accepted = []
        for s in range(1, 81):
            try:
                ia.size.validate_size(s)
                accepted.append(s)
            except ValueError:
                pass
        assert accepted == valid[i]  # exactly the network's valid sizes
        with pytest.raises(ValueError):
            ia.size.validate_size(valid[i][0] + 1 if valid[i][1] - valid[i][0] > 1 else valid[i][0] - 1)
        assert oa.halo == halo[i]
        assert (ia.unit, ia.scale, oa.unit, oa.scale) == ("nanometer", VOXEL[i], "nanometer", VOXEL[i])
    assert [s.id for s in inp.preprocessing] == ["ensure_dtype", "scale_linear", "ensure_dtype"]
    lin = inp.preprocessing[1].kwargs
    assert (lin.gain, lin.offset) == (pytest.approx(2 / 255), pytest.approx(-1.0))
    assert inp.data.type == "uint8"
    assert outp.axes[1].channel_names == ["mito"]
    assert str(md.license) == "CC-BY-4.0"
    assert [a.name for a in md.authors] == ["A. Tester"]
    assert any(str(c.doi) == bx.ASEM_DOI for c in md.cite)
    assert md.weights.pytorch_state_dict is not None and md.weights.torchscript is not None

    z = zipfile.ZipFile(out)
    with z.open("test_input.npy") as f:
        x = np.load(f)
    with z.open("test_output.npy") as f:
        y = np.load(f)
    assert x.dtype == np.uint8 and x.shape[:2] == (1, 1) and y.shape == x.shape
    assert all(s in v for s, v in zip(x.shape[2:], valid))
    with torch.no_grad():
        ref = torch.softmax(net(torch.from_numpy(x.astype(np.float32) / 127.5 - 1.0)), 1)[0, 1].numpy()
    hz, hy, hx = halo
    np.testing.assert_allclose(y[0, 0, hz:-hz, hy:-hy, hx:-hx], ref, atol=1e-5)
    assert ref.min() < 0.2 and ref.max() > 0.8  # a test output that can tell a wrong network apart
    inner = np.zeros(y.shape[2:], bool)
    inner[hz:-hz, hy:-hy, hx:-hx] = True
    assert (y[0, 0][~inner] == 0).all()


@needs_core
def test_bioimageio_core_test_passes_without_organet(exported):
    """``bioimageio.core.test_model`` on the package, in a process where organet cannot be imported."""
    out, _ = exported
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class BlockOrganet(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "organet" or name.startswith("organet."):
                    raise ModuleNotFoundError(f"{{name}} is hidden for this test")
                return None

        sys.meta_path.insert(0, BlockOrganet())
        try:
            import organet  # noqa: F401
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("organet is still importable")
        from bioimageio.core import test_model

        summary = test_model({str(out)!r}, devices=["cpu"])
        for d in summary.details:
            if d.status != "passed":
                print("FAILED", d.name, [e.msg for e in d.errors])
        assert not [m for m in sys.modules if m.split(".")[0] == "organet"]
        print("STATUS", summary.status)
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "STATUS passed" in res.stdout, res.stdout[-3000:]
    assert "FAILED" not in res.stdout


@needs_spec
def test_clahe_checkpoint_is_refused(tmp_path):
    write_checkpoint(tmp_path / "clahe.pt", Normalization(preprocess="clahe"))
    with pytest.raises(InputError, match="CLAHE"):
        bx.export_bioimageio(tmp_path / "clahe.pt", tmp_path / "clahe.zip", license="MIT")
    res = runner.invoke(
        app, ["export", str(tmp_path / "clahe.pt"), "--bioimageio", str(tmp_path / "c.zip"), "--license", "MIT"]
    )
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines[0].startswith("error:") and "normalization.preprocess" in res.output
    assert not (tmp_path / "clahe.zip").exists() and not (tmp_path / "c.zip").exists()


@needs_spec
def test_licence_is_required_for_a_plain_checkpoint(tmp_path):
    write_checkpoint(tmp_path / "m.pt")
    with pytest.raises(InputError, match="--license"):
        bx.export_bioimageio(tmp_path / "m.pt", tmp_path / "m.zip")
    with pytest.raises(InputError, match="SPDX"):
        bx.export_bioimageio(tmp_path / "m.pt", tmp_path / "m.zip", license="research use")


def test_missing_spec_names_the_extra(monkeypatch):
    monkeypatch.setattr(bx, "_installed_version", lambda dist: None)
    with pytest.raises(InputError, match=r"organet\[bioimageio\]"):
        bx.require_spec()
    monkeypatch.setattr(bx, "_installed_version", lambda dist: "0.5.12.0")
    with pytest.raises(InputError, match=r"0\.5\.14"):
        bx.require_spec()


@pytest.mark.parametrize(
    ("norm", "dtype", "values"),
    [
        (Normalization(), "uint8", [0, 17, 128, 255]),
        (Normalization(), "uint16", [0, 1000, 65535]),
        (Normalization(), "int8", [-128, 0, 127]),
        (Normalization(), "float32", [0.0, 0.25, 1.0]),
        (Normalization(method="linear", low=10, high=200), "float32", [10.0, 55.5, 200.0, 250.0]),
    ],
)
def test_scale_linear_is_organets_normalization(norm, dtype, values):
    raw = np.array(values, dtype=dtype)
    gain, offset = bx.scale_linear(norm, dtype)
    np.testing.assert_allclose(raw.astype(np.float64) * gain + offset, norm.apply(raw), atol=1e-6)


def test_axis_sizes_match_the_planner():
    for cfg in (CFG, UNetConfig(), UNetConfig(downsample_factors=((1, 2, 2), (2, 2, 2), (1, 3, 3)))):
        sizes = bx.axis_sizes(cfg)
        for a, valid in zip(sizes, valid_tile_sizes(cfg, 300)):
            assert valid == list(range(a.min, 301, a.step))
        assert tuple(a.halo for a in sizes) == context(cfg, [a.min + 5 * a.step for a in sizes])
