"""Remote volumes: zarr v2/v3, OME-Zarr 0.4/0.5 and N5 over http:// (a local server that logs every
request) and s3:// (a local moto server when moto is installed). Values, geometry, exactly the chunks
an ROI covers, the CLI (info, predict equal to the local copy), one-line errors, outputs stay local."""

from __future__ import annotations

import functools
import http.server
import itertools
import json
import pickle
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import torch
import zarr
from typer.testing import CliRunner

from organet.cli import app
from organet.config import load_config
from organet.errors import VolumeError
from organet.model.checkpoint import Checkpoint, save_checkpoint
from organet.model.unet import UNet, UNetConfig
from organet.preprocess import Normalization
from organet.volumes import Roi, open_volume, write_ome_zarr
from organet.volumes.remote import kvstore_spec

SHAPE = (20, 24, 28)
CHUNKS = (8, 8, 8)
SHARDS = (16, 16, 16)
VS, OFFSET = (8.0, 4.0, 4.0), (80.0, 40.0, 0.0)
RAW = np.random.default_rng(0).integers(0, 255, SHAPE, dtype=np.uint8)
METADATA = {"zarr.json", ".zarray", ".zattrs", ".zgroup", "attributes.json"}


def _write_volumes(d: Path) -> None:
    """The same data as OME-Zarr 0.5 (zarr v3), OME-Zarr 0.4 (zarr v2), a plain zarr v2 array and N5."""
    with write_ome_zarr(d / "raw.zarr") as w:
        w.create_image(None, SHAPE, np.uint8, VS, OFFSET, CHUNKS).write(..., RAW)
    a = zarr.open_array(str(d / "v2.zarr"), mode="w", shape=SHAPE, chunks=CHUNKS, dtype="u1", zarr_format=2)
    a[...] = RAW
    a.attrs.update(resolution=list(VS), offset=list(OFFSET))
    g = zarr.open_group(str(d / "v04.zarr"), mode="w", zarr_format=2)
    g.create_array("s0", shape=SHAPE, chunks=CHUNKS, dtype="u1")[...] = RAW
    g.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"],
            "datasets": [
                {
                    "path": "s0",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": list(VS)},
                        {"type": "translation", "translation": list(OFFSET)},
                    ],
                }
            ],
        }
    ]
    n5 = ts.open(
        {
            "driver": "n5",
            "kvstore": {"driver": "file", "path": str(d / "data.n5" / "raw") + "/"},
            "metadata": {"dimensions": SHAPE[::-1], "blockSize": CHUNKS[::-1], "dataType": "uint8"},
            "create": True,
        }
    ).result()
    n5.write(RAW.T).result()
    attrs = json.loads((d / "data.n5/raw/attributes.json").read_text())
    attrs.update(resolution=list(VS[::-1]), offset=list(OFFSET[::-1]))
    (d / "data.n5/raw/attributes.json").write_text(json.dumps(attrs))
    (d / "data.n5/attributes.json").write_text(json.dumps({"n5": "2.0.0"}))
    sharded = zarr.create_array(str(d / "sharded.zarr"), shape=SHAPE, chunks=CHUNKS, shards=SHARDS, dtype="u1")
    sharded[...] = RAW
    sharded.attrs.update(voxel_size=list(VS), offset=list(OFFSET))


class _Server:
    """http.server in a thread over a folder, with byte ranges (as S3 and web servers have);
    ``gets`` lists every GET as (path, Range header or None), also 404s."""

    def __init__(self, root: Path) -> None:
        self.gets: list[tuple[str, str | None]] = []
        lock = threading.Lock()
        gets = self.gets

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                with lock:
                    gets.append((self.path, rng))
                file = Path(self.translate_path(self.path))
                if rng is None or not file.is_file():
                    return super().do_GET()
                data = file.read_bytes()
                m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng)
                assert m is not None, rng
                start, end = (
                    (len(data) - int(m[2]), len(data) - 1) if not m[1] else (int(m[1]), int(m[2] or len(data) - 1))
                )
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                self.wfile.write(data[start : end + 1])

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 128  # tensorstore fetches chunks concurrently; the default 5 drops connections

        self.httpd = Server(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def take(self, ranges: bool = False) -> list:
        out = [g if ranges else g[0] for g in self.gets]
        self.gets.clear()
        return out


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tmp_path_factory.mktemp("served")
    _write_volumes(d)
    server = _Server(d)
    yield server, d
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.mark.parametrize(
    "name", ["raw.zarr", "raw.zarr/s0", "v2.zarr", "v04.zarr", "data.n5/raw", "data.n5/raw/", "sharded.zarr"]
)
def test_url_gives_the_values_and_geometry(served, name):
    server, _ = served
    vol = open_volume(f"{server.url}/{name}")
    assert vol.shape == SHAPE and vol.dtype == np.uint8
    assert vol.voxel_size == VS and vol.offset == OFFSET
    assert vol.chunks == CHUNKS
    np.testing.assert_array_equal(vol.read(), RAW)
    np.testing.assert_array_equal(vol[3:9, 5, 2:20], RAW[3:9, 5, 2:20])
    again = pickle.loads(pickle.dumps(vol))  # how Dask workers get it: reopened from the URL
    np.testing.assert_array_equal(again.read(Roi((1, 2, 3), (4, 5, 6))), RAW[1:5, 2:7, 3:9])


def _covered(roi: Roi) -> set[tuple[int, ...]]:
    ranges = [range(o // c, -(-(o + s) // c)) for o, s, c in zip(roi.offset, roi.shape, CHUNKS)]
    return set(itertools.product(*ranges))


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("raw.zarr", lambda i: "/raw.zarr/s0/c/" + "/".join(map(str, i))),
        ("v2.zarr", lambda i: "/v2.zarr/" + ".".join(map(str, i))),
        ("data.n5/raw", lambda i: "/data.n5/raw/" + "/".join(map(str, i[::-1]))),
    ],
)
def test_an_roi_fetches_exactly_the_chunks_it_covers(served, name, key):
    server, _ = served
    server.take()
    vol = open_volume(f"{server.url}/{name}")
    opened = server.take()
    assert opened and all(p.rsplit("/", 1)[-1] in METADATA for p in opened), opened  # metadata only, no listing
    for roi in (Roi((3, 9, 0), (6, 8, 9)), Roi((0, 0, 0), (1, 1, 1)), Roi((7, 7, 7), (2, 2, 2))):
        fresh = open_volume(f"{server.url}/{name}")  # an empty chunk cache
        server.take()
        np.testing.assert_array_equal(fresh.read(roi), RAW[roi.slices()])
        gets = server.take()
        expected = {key(i) for i in _covered(roi)}
        assert len(gets) == len(expected) and set(gets) == expected, (roi, sorted(gets))
    del vol


def test_a_sharded_roi_fetches_shard_indexes_and_byte_ranges_of_the_inner_chunks_it_covers(served):
    server, d = served
    roi = Roi((3, 9, 0), (6, 8, 20))  # inner chunks z 0, y 1-2, x 0-2 in shards z 0, y 0-1, x 0-1
    vol = open_volume(f"{server.url}/sharded.zarr")
    server.take()
    np.testing.assert_array_equal(vol.read(roi), RAW[roi.slices()])
    gets = server.take(ranges=True)
    per_shard = tuple(s // c for s, c in zip(SHARDS, CHUNKS))
    covered: dict[str, list[tuple[int, int]]] = {}  # shard -> (first byte, end) of each covered inner chunk
    for idx in _covered(roi):
        shard = "/sharded.zarr/c/" + "/".join(str(i // n) for i, n in zip(idx, per_shard))
        tail = (d / shard.lstrip("/")).read_bytes()[-(16 * int(np.prod(per_shard)) + 4) : -4]  # index + crc32c
        offset, nbytes = np.frombuffer(tail, "<u8").reshape((*per_shard, 2))[
            tuple(i % n for i, n in zip(idx, per_shard))
        ]
        covered.setdefault(shard, []).append((int(offset), int(offset + nbytes)))
    assert {p for p, _ in gets} == set(covered) and all(r is not None for _, r in gets)  # ranges, never whole shards
    assert sorted(p for p, r in gets if r.startswith("bytes=-")) == sorted(covered)  # one index read per shard
    for shard, chunks in covered.items():
        ranges = [r.removeprefix("bytes=").split("-") for p, r in gets if p == shard and not r.startswith("bytes=-")]
        fetched = {(int(a), int(b) + 1) for a, b in ranges}
        # tensorstore merges nearby ranges of one shard: each fetched range starts and ends on covered chunks ...
        assert all(a in {c[0] for c in chunks} and b in {c[1] for c in chunks} for a, b in fetched), (shard, fetched)
        # ... and every covered chunk is inside one
        assert all(any(a <= c0 and c1 <= b for a, b in fetched) for c0, c1 in chunks), (shard, fetched)


def test_info_prints_shape_and_voxel_size(served):
    server, _ = served
    r = CliRunner().invoke(app, ["info", f"{server.url}/raw.zarr"])
    assert r.exit_code == 0, r.output
    assert "(20, 24, 28)" in r.output and "(8.0, 4.0, 4.0)" in r.output and server.url in r.output


def test_predict_on_a_url_writes_the_same_bytes_as_on_the_local_copy(served, tmp_path):
    server, d = served
    cfg = UNetConfig(num_fmaps=4, downsample_factors=((2, 2, 2),))
    torch.manual_seed(0)
    net = UNet(cfg)
    save_checkpoint(Checkpoint(cfg, (34, 34, 34), VS, Normalization(), "mito", net.state_dict()), tmp_path / "m.pt")
    outs = {}
    for name, src in (("url", f"{server.url}/raw.zarr"), ("local", str(d / "raw.zarr"))):
        outs[name] = tmp_path / f"{name}.zarr"
        args = ["predict", "--model", str(tmp_path / "m.pt"), "--input", src, "--output", str(outs[name])]
        r = CliRunner().invoke(app, [*args, "--roi-vox", "2:18,3:21,4:26", "--tile", "34", "34", "34"])
        assert r.exit_code == 0, r.output
    compared = 0
    for path in sorted(p.parent for p in outs["local"].rglob("zarr.json") if (p.parent / "c").is_dir()):
        rel = path.relative_to(outs["local"])
        a = zarr.open_array(str(outs["local"] / rel), mode="r")[...]
        b = zarr.open_array(str(outs["url"] / rel), mode="r")[...]
        assert a.tobytes() == b.tobytes(), rel
        compared += 1
    assert compared >= 2  # probability and mask at least


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["info", "{u}/missing.zarr"], "no zarr array or group found"),
        (["info", "{u}/raw.zarr/s9"], "no zarr array or group found"),
        (["info", "{u}/"], "no zarr.json, .zarray, .zgroup or N5 attributes.json"),
        (["info", "{u}/data.n5"], "N5 group without an s0 dataset"),
        (["info", "http://127.0.0.1:9/x.zarr"], "expected a reachable"),
        (["info", "ftp://example.org/x.zarr"], "scheme 'ftp' is not supported"),
        (["predict", "--model", "m.pt", "--input", "{u}/missing.zarr", "--output", "o.zarr"], "missing.zarr"),
        (["predict", "--model", "m.pt", "--input", "{u}/raw.zarr", "--output", "{u}/o.zarr"], "expected a local"),
    ],
)
def test_remote_errors_are_one_line_with_exit_2(served, tmp_path, monkeypatch, args, says):
    server, _ = served
    monkeypatch.chdir(tmp_path)
    if "--model" in args:
        cfg = UNetConfig(num_fmaps=2, downsample_factors=((2, 2, 2),))
        save_checkpoint(Checkpoint(cfg, (34, 34, 34), VS, Normalization(), "mito", UNet(cfg).state_dict()), "m.pt")
    r = CliRunner().invoke(app, [a.format(u=server.url) for a in args])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], r.output
    assert "http" in lines[0] or "ftp" in lines[0]  # names the URL
    assert not any(p.name.startswith(("http", "ftp")) for p in tmp_path.iterdir())  # no local path was made


def test_urls_are_read_only_and_never_local_paths(served, tmp_path):
    server, _ = served
    with pytest.raises(VolumeError, match="read-only"):
        open_volume(f"{server.url}/raw.zarr", mode="r+")
    with pytest.raises(VolumeError, match="expected a local path"), write_ome_zarr(f"{server.url}/o.zarr"):
        pass
    with pytest.raises(VolumeError, match="HDF5 cannot be read from a URL"):
        open_volume(f"{server.url}/x.h5/raw")
    (tmp_path / "run.yaml").write_text(
        f"output_dir: out\ndata: {{train: [{{raw: {server.url}/raw.zarr, labels: labels.zarr}}]}}\n"
    )
    cfg = load_config(tmp_path / "run.yaml")
    assert cfg.data.train[0].raw == f"{server.url}/raw.zarr"  # a URL is kept as it is
    assert cfg.data.train[0].labels == str(tmp_path / "labels.zarr")  # a relative path is resolved


def test_kvstore_specs_for_http_and_s3(tmp_path, monkeypatch):
    assert kvstore_spec("https://example.org:8443/a/b.zarr")["base_url"] == "https://example.org:8443"
    assert kvstore_spec("https://example.org:8443/a/b.zarr")["path"] == "/a/b.zarr/"
    for k in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "ORGANET_S3_ANONYMOUS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    spec = kvstore_spec("s3://janelia-cosem-datasets/jrc_hela-2/jrc_hela-2.n5/em/fibsem-uint16")
    assert spec["bucket"] == "janelia-cosem-datasets" and spec["path"] == "jrc_hela-2/jrc_hela-2.n5/em/fibsem-uint16/"
    assert spec["aws_credentials"] == {"type": "anonymous"} and "endpoint" not in spec
    (tmp_path / "credentials").write_text("[default]\naws_access_key_id = x\naws_secret_access_key = y\n")
    assert kvstore_spec("s3://my-bucket/a.zarr")["aws_credentials"] == {"type": "default"}
    monkeypatch.setenv("ORGANET_S3_ANONYMOUS", "1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")
    spec = kvstore_spec("s3://my-bucket/a.zarr")
    assert spec["aws_credentials"] == {"type": "anonymous"} and spec["endpoint"] == "http://127.0.0.1:9000"
    with pytest.raises(VolumeError, match="'\\?' or '#'"):
        kvstore_spec("https://example.org/a.zarr?X-Amz-Signature=1")
    with pytest.raises(VolumeError, match="no bucket"):
        kvstore_spec("s3:///a.zarr")


def test_s3_through_a_local_moto_server(served, monkeypatch):
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (S3 emulator)")
    boto3 = pytest.importorskip("boto3")
    _, d = served
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    try:
        host, port = srv.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
        )
        for bucket in ("public-em", "private-em"):
            s3.create_bucket(Bucket=bucket)
            for f in (d / "raw.zarr").rglob("*"):
                if f.is_file():
                    s3.upload_file(str(f), bucket, f"set/{f.relative_to(d)}")
        policy = {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::public-em/*"}
        s3.put_bucket_policy(Bucket="public-em", Policy=json.dumps({"Version": "2012-10-17", "Statement": [policy]}))
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        monkeypatch.setenv("ORGANET_S3_ANONYMOUS", "1")
        vol = open_volume("s3://public-em/set/raw.zarr")
        assert vol.voxel_size == VS and vol.offset == OFFSET
        np.testing.assert_array_equal(vol.read(Roi((3, 9, 0), (6, 8, 9))), RAW[3:9, 9:17, 0:9])
        with pytest.raises(VolumeError, match=r"s3://private-em/set/raw.zarr/zarr.json.*403"):
            open_volume("s3://private-em/set/raw.zarr")
        monkeypatch.delenv("ORGANET_S3_ANONYMOUS")
        for k, v in (("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s"), ("AWS_REGION", "us-east-1")):
            monkeypatch.setenv(k, v)
        np.testing.assert_array_equal(open_volume("s3://private-em/set/raw.zarr").read(), RAW)
    finally:
        srv.stop()
