"""The one write discipline: nothing half-written ever looks complete.

* Files: :func:`atomic_path` hands out a temporary sibling, then fsyncs it and
  renames it over the destination (and fsyncs the folder), so a reader sees the old
  file or the new one, never a part. :func:`atomic_write_bytes` / ``_text`` are the
  common cases.
* Folders and containers: built under a temporary sibling and moved into place with
  :func:`replace_path` (renames only).
* Blocks of a zarr array: :func:`fsync_chunks` makes a block's chunk files durable
  before the block is recorded as finished in a ledger (:mod:`organet.blockwise.ledger`).
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not support fsync on folders
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_sibling(path: str | os.PathLike[str], tag: str = "tmp") -> Path:
    """A fresh hidden name beside ``path`` (same folder, so a rename is atomic)."""
    p = Path(path)
    return p.with_name(f".{p.name}.{tag}-{secrets.token_hex(4)}")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path; on success it is fsynced and renamed to ``path``.

    On an exception the temporary file is removed and ``path`` is untouched. Parent
    folders are created. Use it for writers that want a path
    (``df.to_parquet(tmp)``, ``fig.savefig(tmp)``, ``torch.save(obj, tmp)``).
    """
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(dst)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, dst)
    except BaseException:
        remove_path(tmp)
        raise
    _fsync_dir(dst.parent)


def write_table(table: Any, folder: str | os.PathLike[str], stem: str) -> list[Path]:
    """A pandas table as ``folder/stem.csv`` and ``folder/stem.parquet``, each written atomically."""
    out = []
    for suffix, write in (("csv", table.to_csv), ("parquet", table.to_parquet)):
        dst = Path(folder) / f"{stem}.{suffix}"
        with atomic_path(dst) as tmp:
            write(tmp, index=False)
        out.append(dst)
    return out


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def remove_path(path: str | os.PathLike[str]) -> None:
    """Delete a file, link or folder tree if it exists."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink(missing_ok=True)


def replace_path(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move the finished ``src`` (file or folder) to ``dst``, replacing whatever is there,
    with renames only, so ``dst`` is at no moment half-written."""
    src, dst = Path(src), Path(dst)
    if dst.exists() or dst.is_symlink():
        old = temp_sibling(dst, "old")
        os.replace(dst, old)
        os.replace(src, dst)
        remove_path(old)
    else:
        os.replace(src, dst)
    _fsync_dir(dst.parent)


def fsync_chunks(array_dir: str | os.PathLike[str], region: Sequence[slice], chunks: Sequence[int]) -> None:
    """Flush to disk the chunk files of a zarr v3 array (default ``c/i/j/k`` keys) that
    ``region`` (voxel slices) touches, so a block's data is durable before its ledger entry."""
    ranges = [range(r.start // c, -(-r.stop // c)) for r, c in zip(region, chunks)]
    base = Path(array_dir)
    for idx in itertools.product(*ranges):
        try:
            _fsync_file(base.joinpath("c", *map(str, idx)))
        except FileNotFoundError:  # an all-fill-value chunk is not stored
            continue


__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_chunks",
    "remove_path",
    "replace_path",
    "temp_sibling",
]
