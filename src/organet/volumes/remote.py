"""Remote volumes: ``http(s)://`` and ``s3://`` URLs read through tensorstore key-value stores.

Only keys are fetched, never listed: a volume's metadata files (``zarr.json``, ``.zarray``,
``.zattrs``, ``.zgroup``, ``attributes.json``) when it is opened, then exactly the chunks a
read covers. Remote volumes are read-only; outputs stay local.

s3 credentials: when the environment names any (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``,
``AWS_WEB_IDENTITY_TOKEN_FILE``, container credentials, or a ``~/.aws/credentials`` /
``~/.aws/config`` file), the usual AWS chain is used; otherwise requests are anonymous (public
buckets such as OpenOrganelle's). ``ORGANET_S3_ANONYMOUS=1`` forces anonymous requests;
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` point at another S3-compatible server.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

from organet.errors import VolumeError

from .volume import LazyArray

SUPPORTED_SCHEMES = ("http", "https", "s3")
_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_RETRIES = {"max_retries": 2, "initial_delay": "100ms", "max_delay": "1s"}
CACHE_BYTES = 128 * 2**20
"""Decoded chunks a remote volume keeps in memory, so overlapping reads (tile context) fetch once."""


def is_url(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` is a URL (``scheme://...``), which is never a local path."""
    return isinstance(spec, str) and _URL_RE.match(spec) is not None


def check_local_output(dst: str | os.PathLike[str], what: str = "output") -> None:
    """Raise VolumeError when ``dst`` is a URL: outputs are written to local paths only."""
    text = os.fspath(dst)
    # A URL that went through pathlib has lost one slash of "://": catch it too.
    if is_url(text) or re.match(r"^(https?|s3):/[^/]", text, re.IGNORECASE):
        raise VolumeError(
            f"cannot write {what} {dst}: remote locations are read-only in organet; "
            "expected a local path (copy the result up afterwards)"
        )


def _s3_anonymous() -> bool:
    """Anonymous unless the environment names credentials (see the module docstring)."""
    forced = os.environ.get("ORGANET_S3_ANONYMOUS", "").strip().lower()
    if forced in ("1", "true", "yes"):
        return True
    env = (
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    )
    if any(os.environ.get(k) for k in env):
        return False
    files = [
        os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
        os.environ.get("AWS_CONFIG_FILE", "~/.aws/config"),
    ]
    return not any(Path(f).expanduser().is_file() for f in files)


def kvstore_spec(url: str) -> dict[str, Any]:
    """The tensorstore kvstore JSON spec for a URL prefix (``path`` ends with "/").

    ``http(s)://host[:port]/path`` -> the ``http`` driver; ``s3://bucket/path`` -> the
    ``s3`` driver with anonymous or default credentials (module docstring).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SUPPORTED_SCHEMES:
        raise VolumeError(
            f"cannot open {url}: URL scheme {parts.scheme!r} is not supported; expected http://, https:// or s3://"
        )
    if parts.query or parts.fragment:
        raise VolumeError(f"cannot open {url}: URLs with '?' or '#' parts are not supported; expected a plain URL")
    if not parts.netloc:
        raise VolumeError(f"cannot open {url}: no {'bucket' if scheme == 's3' else 'host'} in the URL")
    path = unquote(parts.path).strip("/")
    if scheme == "s3":
        spec: dict[str, Any] = {
            "driver": "s3",
            "bucket": parts.netloc,
            "path": f"{path}/" if path else "",
            "aws_credentials": {"type": "anonymous" if _s3_anonymous() else "default"},
            "context": {"s3_request_retries": _RETRIES},
        }
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            spec["endpoint"] = endpoint
        return spec
    return {
        "driver": "http",
        "base_url": f"{scheme}://{parts.netloc}",
        "path": f"/{path}/" if path else "/",
        "context": {"http_request_retries": _RETRIES},
    }


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class RemoteStore:
    """Read-only access to the keys under one URL prefix (a zarr or N5 container)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.spec = kvstore_spec(self.url)
        self._kv: Any = None

    def sub(self, inner: str) -> dict[str, Any]:
        """kvstore spec of ``inner`` (a path below the prefix, "" for the prefix itself)."""
        inner = inner.strip("/")
        spec = dict(self.spec)
        spec["path"] = spec["path"] + (f"{inner}/" if inner else "")
        return spec

    def where(self, inner: str) -> str:
        """The URL of ``inner`` below the prefix, for messages."""
        inner = inner.strip("/")
        return f"{self.url}/{inner}" if inner else self.url

    def read(self, key: str) -> bytes | None:
        """The bytes of ``key`` (relative to the prefix), None when it does not exist."""
        import tensorstore as ts

        try:
            if self._kv is None:
                self._kv = ts.KvStore.open(self.spec).result()
            res = self._kv.read(key).result()
        except Exception as e:  # noqa: BLE001 - tensorstore reports transport errors as ValueError etc.
            raise VolumeError(
                f"cannot read {self.where(key)}: {_one_line(e)}; expected a reachable http(s):// or s3:// location"
            ) from None
        return bytes(res.value) if res.state == "value" else None

    def read_json(self, key: str) -> dict[str, Any] | None:
        """``key`` parsed as a JSON object, None when it does not exist."""
        raw = self.read(key)
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError as e:
            raise VolumeError(f"cannot read {self.where(key)}: not JSON ({e}); expected zarr/N5 metadata") from None
        if not isinstance(value, dict):
            raise VolumeError(f"{self.where(key)} holds {type(value).__name__}; expected a JSON object")
        return value

    def open_array(self, driver: str, inner: str) -> RemoteArray:
        """Open the array at ``inner`` with a tensorstore driver (``zarr``, ``zarr3``, ``n5``), read-only."""
        import tensorstore as ts

        spec = {
            "driver": driver,
            "kvstore": self.sub(inner),
            "recheck_cached_data": "open",
            "context": {"cache_pool": {"total_bytes_limit": CACHE_BYTES}},
        }
        try:
            store = ts.open(spec, read=True, write=False).result()
        except Exception as e:  # noqa: BLE001 - unsupported codec, bad metadata, transport
            raise VolumeError(f"cannot open {driver} array {self.where(inner)}: {_one_line(e)}") from None
        return RemoteArray(store, self.where(inner))


class RemoteArray(LazyArray):
    """NumPy-style slicing over a read-only remote tensorstore array with a zero-origin domain.

    A failed fetch raises ``ConnectionError`` (an OSError, so blockwise runs retry the block).
    """

    def __init__(self, store: Any, url: str) -> None:
        self.store, self.url = store, url
        self.shape = tuple(int(n) for n in store.domain.shape)
        self.dtype = np.dtype(store.dtype.numpy_dtype)
        chunk = store.chunk_layout.read_chunk.shape
        self.chunks = tuple(int(c) if c else n for c, n in zip(chunk or self.shape, self.shape))

    @property
    def T(self) -> RemoteArray:  # noqa: N802 - NumPy's name
        """The array with its axes reversed (N5 stores x, y, z)."""
        return RemoteArray(self.store.T, self.url)

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        try:
            return np.asarray(self.store[slices].read().result())
        except Exception as e:  # noqa: BLE001 - transport errors: let the block be retried
            box = ", ".join(f"{s.start}:{s.stop}" for s in slices)
            raise ConnectionError(f"cannot read voxels {box} of {self.url}: {_one_line(e)}") from None


__all__ = ["RemoteArray", "RemoteStore", "check_local_output", "is_url", "kvstore_spec"]
