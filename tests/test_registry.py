"""Pretrained models by name (organet.model.registry, `organet models`, `organet predict --model NAME`),
downloaded from a local HTTP server standing in for the model bucket."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socketserver
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from organet.cli import app
from organet.errors import CheckpointError, InputError
from organet.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from organet.model.incasem import funlib_key_map, import_incasem
from organet.model.registry import (
    BUILTIN_ENTRIES,
    CACHE_ENV,
    DEFAULT_REGISTRY,
    URL_ENV,
    ModelDownloadError,
    ModelEntry,
    ModelHashError,
    Registry,
)
from organet.model.unet import UNet, UNetConfig
from organet.preprocess import Normalization
from organet.volumes import open_volume

CFG = UNetConfig(num_fmaps=2, downsample_factors=((2, 2, 2),))
runner = CliRunner()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Server:
    """http.server on 127.0.0.1 serving ``root`` in a thread; ``requests`` lists the paths asked for."""

    def __init__(self, root: Path) -> None:
        self.root, self.requests = root, []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        class HTTPServer(http.server.ThreadingHTTPServer):
            def server_bind(self) -> None:  # without the reverse DNS lookup of http.server (seconds offline)
                socketserver.TCPServer.server_bind(self)
                self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

        self.httpd = HTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=root))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()
            self.running = False


@pytest.fixture
def server(tmp_path, monkeypatch):
    root = tmp_path / "bucket"
    root.mkdir()
    s = Server(root)
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv(URL_ENV, s.url + "/models")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    (root / "models").mkdir()
    yield s
    s.stop()


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    ckpt = Checkpoint(CFG, (34, 34, 34), (5.0, 5.0, 5.0), Normalization(), "mito", UNet(CFG).state_dict())
    return save_checkpoint(ckpt, path)


def entry(name: str = "tiny-mito", file: str = "tiny.pt", **kw) -> ModelEntry:
    fields = dict(
        name=name,
        description="a tiny test model",
        organelle="mitochondria",
        voxel_size=(5, 5, 5),
        normalization="none (uint8 dtype range)",
        kind="organet",
        licence="test licence",
        citation="nobody",
        url=f"https://example.invalid/models/{file}",
    )
    fields.update(kw)
    return ModelEntry(**fields)


def cache_files(reg: Registry, e: ModelEntry) -> list[str]:
    d = reg.model_dir(e)
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_fetch_once_then_cache_hit_without_network(server, tmp_path):
    src = tiny_checkpoint(server.root / "models" / "tiny.pt")
    e = entry(sha256=sha256(src))
    reg = Registry([e])
    assert e.organelle == "mito" and not reg.is_cached(e)
    calls = []
    path = reg.resolve("tiny-mito", progress=lambda *a: calls.append(a))
    assert path == tmp_path / "cache" / "models" / "tiny-mito" / "tiny.pt"
    assert path.read_bytes() == src.read_bytes() and reg.is_cached(e)
    assert load_checkpoint(path).organelle == "mito"
    assert server.requests == ["/models/tiny.pt"]
    size = src.stat().st_size
    assert calls[0] == ("download", 0, size) and {c[0] for c in calls} == {"download"}
    # pooch restarts the bar after the last chunk (advance 0) and fills it at once
    last_start = max(i for i, c in enumerate(calls) if c[1] == 0)
    assert sum(c[1] for c in calls[last_start:]) == size
    # the published hash is used, nothing is pinned
    assert not reg.pin_path(e).exists()

    server.stop()
    assert reg.resolve("tiny-mito") == path  # a cache hit: no request, the server is gone
    assert len(server.requests) == 1
    # an existing file is returned as it is, whatever its name
    assert reg.resolve(src) == src


def test_hash_mismatch_is_refused_and_nothing_is_cached(server):
    src = tiny_checkpoint(server.root / "models" / "tiny.pt")
    reg = Registry([entry(sha256="ab" * 32)])
    with pytest.raises(ModelHashError) as ei:
        reg.resolve("tiny-mito")
    msg = str(ei.value)
    assert "\n" not in msg and f"has sha256 {sha256(src)}" in msg and f"expected {'ab' * 32}" in msg
    assert "discarded" in msg
    assert cache_files(reg, reg.get("tiny-mito")) == []  # no file, no temporary left behind
    assert not reg.pin_path(reg.get("tiny-mito")).exists()


def test_offline_before_first_download_is_one_clear_line(server, tmp_path):
    tiny_checkpoint(server.root / "models" / "tiny.pt")
    server.stop()
    reg = Registry([entry(), entry("tiny-er", "model_checkpoint_1_er_CF.pt", organelle="er", kind="incasem")])
    with pytest.raises(ModelDownloadError) as ei:
        reg.resolve("tiny-mito")
    msg = str(ei.value)
    assert isinstance(ei.value, InputError) and "\n" not in msg
    assert msg.startswith(f"cannot download model 'tiny-mito' from {server.url}/models/tiny.pt: ")
    assert "Connection refused" in msg and "connect to the internet once" in msg
    with pytest.raises(ModelDownloadError, match=r"organet import incasem model_checkpoint_1_er_CF.pt tiny-er.pt "):
        reg.resolve("tiny-er")

    # a name the registry does not know, that is no file either
    with pytest.raises(InputError, match=r"known models are tiny-mito, tiny-er \(did you mean 'tiny-mito'\?\)"):
        reg.resolve("tiny-mit")
    with pytest.raises(InputError, match=r"checkpoint file not found: .*nothere\.pt"):
        reg.resolve(tmp_path / "nothere.pt")

    # the command line: one error line, exit 2
    DEFAULT_REGISTRY.register(entry())
    try:
        r = runner.invoke(app, ["models", "fetch", "tiny-mito"])
    finally:
        DEFAULT_REGISTRY.unregister("tiny-mito")
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert " ".join(r.output.split()).startswith("error: cannot download model 'tiny-mito'"), r.output
    assert "Traceback" not in r.output and len(" ".join(lines)) < 400


def test_trust_on_first_use_pins_the_hash(server):
    src = tiny_checkpoint(server.root / "models" / "tiny.pt", seed=0)
    first = sha256(src)
    reg = Registry([entry(sha256=None)])
    e = reg.get("tiny-mito")
    assert reg.expected_sha256(e) is None
    path = reg.resolve("tiny-mito")
    assert reg.pinned_sha256(e) == first and reg.pin_path(e).read_text().split()[0] == first

    tiny_checkpoint(src, seed=1)  # the file on the server changes
    assert sha256(src) != first
    assert reg.resolve("tiny-mito") == path and sha256(path) == first  # cache hit, verified against the pin
    assert len(server.requests) == 1

    reg.clear("tiny-mito")  # the download goes, the pin stays
    assert not path.exists() and reg.pinned_sha256(e) == first
    with pytest.raises(ModelHashError, match=rf"has sha256 {sha256(src)}, expected {first} \(pinned on first"):
        reg.resolve("tiny-mito")
    assert cache_files(reg, e) == []

    # a cached file that no longer matches the pin is downloaded again and checked (and refused here)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"corrupted")
    with pytest.raises(ModelHashError):
        reg.resolve("tiny-mito")
    assert not path.exists()

    reg.clear("tiny-mito", forget_pin=True)  # trust the new file
    assert reg.resolve("tiny-mito").read_bytes() == src.read_bytes()
    assert reg.pinned_sha256(e) == sha256(src)


def incasem_file(path: Path, seed: int = 0) -> UNet:
    """An incasem/gunpowder checkpoint (funlib parameter names) of a tiny U-Net."""
    torch.manual_seed(seed)
    net = UNet(CFG)
    organet_to_funlib = {v: k for k, v in funlib_key_map(CFG).items()}
    sd = {organet_to_funlib[k]: v for k, v in net.state_dict().items()}
    torch.save({"model_state_dict": sd, "optimizer_state_dict": {}}, path)
    return net


def test_incasem_entry_is_imported_once(server):
    net = incasem_file(server.root / "models" / "model_checkpoint_7_er_CF.pt")
    imports = []

    def counting_import(*args, **kwargs):
        imports.append((args, kwargs))
        return import_incasem(*args, **kwargs)

    e = entry("tiny-er", "model_checkpoint_7_er_CF.pt", organelle="er", voxel_size=(4, 4, 4), kind="incasem")
    e = ModelEntry(**{**e.__dict__, "normalization": "clahe-incasem"})
    reg = Registry([e], importer=counting_import)
    path = reg.resolve("tiny-er")
    source_sha = reg.pinned_sha256(e)
    assert source_sha is not None and path == reg.imported_path(e, source_sha)
    assert path.name == f"organet-{source_sha[:16]}.pt"
    assert len(imports) == 1 and imports[0][1] == {"normalization": "clahe-incasem"}
    ck = load_checkpoint(path)
    assert ck.organelle == "er" and ck.voxel_size == (4.0, 4.0, 4.0)
    assert ck.normalization.preprocess is not None  # clahe-incasem
    for k, v in net.state_dict().items():
        assert torch.equal(ck.state_dict[k], v), k

    server.stop()
    assert reg.resolve("tiny-er") == path  # no second import, no network
    assert len(imports) == 1 and len(server.requests) == 1
    assert cache_files(reg, e) == sorted(["model_checkpoint_7_er_CF.pt", path.name])


def test_packaged_weights(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "weights").mkdir()
    e = entry("tiny-pkg", url=None, package="weights/tiny-pkg.pt")
    reg = Registry([e], package_dir=tmp_path)
    assert not reg.is_cached(e)
    with pytest.raises(CheckpointError, match=r"the packaged weights file .*tiny-pkg\.pt .* missing from this install"):
        reg.resolve("tiny-pkg")
    tiny_checkpoint(tmp_path / "weights" / "tiny-pkg.pt")
    assert reg.resolve("tiny-pkg") == tmp_path / "weights" / "tiny-pkg.pt" and reg.is_cached(e)
    assert not (tmp_path / "cache").exists()  # nothing downloaded, nothing cached


def test_entries_are_checked():
    with pytest.raises(InputError, match="exactly one source"):
        entry(package="weights/x.pt")
    with pytest.raises(InputError, match="unknown organelle 'mitochondrion-ish'"):
        entry(organelle="mitochondrion-ish")
    with pytest.raises(InputError, match="sha256 must be 64 hex digits"):
        entry(sha256="abc")
    with pytest.raises(InputError, match="already in the registry"):
        Registry([entry(), entry()])


def test_models_list_and_info(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(URL_ENV, raising=False)
    r = runner.invoke(app, ["models", "list"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert len(BUILTIN_ENTRIES) == 8
    for e in BUILTIN_ENTRIES:
        row = next(line for line in lines if line.startswith(e.name + " "))
        cells = row.split()
        voxel = {"mito-lucchi": "10", "asem-mito-hpf": "4", "asem-er-hpf": "4"}.get(e.name, "5")
        assert cells[1:4] == [e.organelle, voxel, e.short_normalization], row
        usable_offline = "yes" if e.package else "no"  # shipped weights need no download
        assert e.short_licence in row and row.rstrip().endswith(usable_offline), row
    assert {e.organelle for e in BUILTIN_ENTRIES} == {"mito", "golgi", "er", "np", "ccp"}
    assert "CC BY-SA 4.0" in r.output and "research use" in r.output

    r = runner.invoke(app, ["models", "info", "asem-golgi-cf"])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "model_checkpoint_1837_golgi_CF.pt (file name inferred" in out
    assert "sha256 not published (pinned on first download)" in out
    assert "doi:10.1083/jcb.202208005" in out and "licence CC BY-SA 4.0" in out
    assert f"download {tmp_path / 'cache'}" in out
    r = runner.invoke(app, ["models", "info", "asem-mito-cf"])
    assert "inferred" not in r.output and "1847_mito_CF.pt" in r.output
    r = runner.invoke(app, ["models", "info", "asem-np-hpf"])
    assert "4 nm" in r.output and "5 x 5 x 5 nm" in r.output  # the README/issue discrepancy is noted
    r = runner.invoke(app, ["models", "info", "asem-golgi"])
    assert r.exit_code == 2 and "did you mean 'asem-golgi-cf'?" in " ".join(r.output.split())

    monkeypatch.setenv(URL_ENV, "http://mirror.example/m/")
    r = runner.invoke(app, ["models", "info", "asem-er-cf"])
    assert "url           http://mirror.example/m/model_checkpoint_1841_er_CF.pt" in r.output


def test_predict_with_a_model_name(server, tmp_path):
    src = tiny_checkpoint(server.root / "models" / "tiny.pt")
    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "raw.tif", rng.integers(0, 255, (16, 32, 32), dtype=np.uint8))
    DEFAULT_REGISTRY.register(entry(sha256=sha256(src)))
    try:
        r = runner.invoke(app, ["models", "fetch", "tiny-mito"])
        assert r.exit_code == 0, r.output
        fetched = Path("".join(r.output.split()))
        assert fetched == tmp_path / "cache" / "models" / "tiny-mito" / "tiny.pt"
        server.stop()  # predict finds the model in the cache
        args = ["predict", "--model", "tiny-mito", "--input", str(tmp_path / "raw.tif")]
        args += ["--voxel-size", "5", "5", "5", "--output", str(tmp_path / "pred.zarr"), "--tile", "34", "34", "34"]
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["models", "list"])
        assert next(line for line in r.output.splitlines() if line.startswith("tiny-mito ")).rstrip().endswith("yes")
    finally:
        DEFAULT_REGISTRY.unregister("tiny-mito")
    assert len(server.requests) == 1
    prob = open_volume(tmp_path / "pred.zarr/probability")
    assert prob.shape == (16, 32, 32) and prob.attrs["kind"] == "probability"
    r = runner.invoke(app, [*args[:5], "--voxel-size", "5", "5", "5", "--output", str(tmp_path / "p2.zarr")])
    assert r.exit_code == 2 and "known models are mito-lucchi" in " ".join(r.output.split())


def test_the_shipped_mito_lucchi_model_predicts(tmp_path, monkeypatch):
    """The weights shipped in the package resolve through the registry without network or cache,
    carry their metadata and predict on a 5 nm volume through resampling (a check of the file; its
    held-out accuracy is measured in docs/results.md)."""
    from organet.model.registry import DEFAULT_REGISTRY
    from organet.predict import Predictor
    from organet.volumes import Volume

    monkeypatch.setenv("ORGANET_CACHE_DIR", str(tmp_path / "cache"))
    path = DEFAULT_REGISTRY.resolve("mito-lucchi")
    ck = load_checkpoint(path)
    assert ck.organelle == "mito" and ck.voxel_size == (10.0, 10.0, 10.0)
    assert ck.optimizer_state is None and ck.normalization.preprocess is None
    assert ck.training_config["released_from"]["iteration"] == ck.iteration > 0
    assert not (tmp_path / "cache").exists()  # packaged: nothing downloaded or cached
    rng = np.random.default_rng(0)
    raw = Volume(rng.integers(100, 180, (48, 96, 96), dtype=np.uint8), voxel_size=(5.0, 5.0, 5.0))
    p = Predictor.from_checkpoint(path, device="cpu").for_region(raw, raw.roi).predict(raw, raw.roi)
    assert p.shape == raw.shape and np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0
