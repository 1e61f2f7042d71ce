"""The one discipline for outputs written by blockwise passes: resumable and atomic.

A :class:`ResumableOutput` keeps its data in ``DST.partial`` and its finished blocks in
the ledger ``DST.progress`` (:class:`~organet.blockwise.ledger.Ledger`, holding the run's
settings) and the lock file ``DST.lock`` (:mod:`~organet.blockwise.lock`: one writer at
a time). A killed run rerun with the same settings resumes and gives the same bytes;
``DST`` appears (by rename) only when complete, carrying the run record with
``"complete": true``, so nothing half-written ever looks complete and rerunning a
finished command is a no-op. Prediction, preprocessing, masks, conversion and instances
all write through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from organet.errors import InputError
from organet.volumes.atomic import atomic_write_text, fsync_chunks, remove_path, replace_path, temp_sibling
from organet.volumes.remote import check_local_output

from .ledger import Ledger
from .lock import OutputLock, lock_path_for

RUN_KEY = "organet_run"
"""Root attribute of a zarr output (or file ``organet_run.json`` in a folder output) with the run record."""
PARTIAL_SUFFIX = ".partial"
PROGRESS_SUFFIX = ".progress"


def read_run(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run record of an output (zarr root attribute or ``organet_run.json``); None if absent."""
    p = Path(path)
    if (p / "zarr.json").is_file():
        try:
            run = zarr.open_group(str(p), mode="r").attrs.get(RUN_KEY)
        except Exception:  # noqa: BLE001 - not ours / unreadable
            return None
    else:
        try:
            run = json.loads((p / f"{RUN_KEY}.json").read_text())
        except (OSError, ValueError):
            return None
    return dict(run) if isinstance(run, dict) else None


def write_run(path: str | os.PathLike[str], run: dict[str, Any]) -> None:
    """Store the run record in an output (zarr root attribute, else ``organet_run.json``)."""
    p = Path(path)
    if (p / "zarr.json").is_file():
        zarr.open_group(str(p), mode="r+").attrs[RUN_KEY] = run
    else:
        atomic_write_text(p / f"{RUN_KEY}.json", json.dumps(run, indent=1))


def volume_identity(volume: Any) -> Any:
    """What identifies a volume in a run record: its path, else a digest of an in-memory
    array (so a resumed run never mixes two volumes), else None."""
    if volume is None:
        return None
    path = getattr(volume, "path", "")
    if isinstance(path, (str, os.PathLike)) and str(path):
        return str(path)
    data = getattr(volume, "data", volume)
    if isinstance(data, np.ndarray):
        return "sha256:" + hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
    return None


def write_block(array_path: str | os.PathLike[str], region: Sequence[slice], data: np.ndarray) -> None:
    """Write ``data`` at ``region`` of the zarr array at ``array_path`` and make its chunks
    durable (call from a block function, before its ledger entry is written)."""
    arr = zarr.open_array(str(array_path), mode="r+")
    sl = tuple(region)
    arr[sl] = data
    fsync_chunks(array_path, sl, arr.chunks)


def single_image(
    shape: Sequence[int],
    dtype: Any,
    voxel_size: Sequence[float],
    offset: Sequence[float],
    chunks: Sequence[int],
    attrs: dict[str, Any],
    *,
    name: str,
    fill_value: Any = 0,
) -> Callable[[Path], None]:
    """A :meth:`ResumableOutput.start` builder: one empty OME-Zarr image (array ``s0``) at the root."""
    from organet.volumes.ome_zarr import create_ome_image

    def build(folder: Path) -> None:
        root = zarr.open_group(str(folder), mode="w", zarr_format=3)
        create_ome_image(root, shape, dtype, voxel_size, offset, chunks, attrs, name=name, fill_value=fill_value)

    return build


class ResumableOutput:
    """``dst`` written by blockwise passes (see the module docstring).

    Opening it decides what happens:

    * ``dst`` holds a complete output of this very run: :attr:`complete` is True (nothing
      to do; a ledger and lock left by a run that ended right after its rename are removed);
    * ``dst`` exists otherwise: :class:`~organet.errors.InputError` unless ``overwrite``;
    * an unfinished run of other settings: :class:`~organet.errors.IncompatibleError`
      unless ``overwrite`` (then it starts over).

    Then: :meth:`start` (creates ``DST.partial`` or keeps the one to resume), run the passes
    with ``ledger=out.ledger`` writing into :attr:`partial`, and :meth:`commit`.
    """

    def __init__(self, dst: str | os.PathLike[str], run: dict[str, Any], overwrite: bool = False) -> None:
        check_local_output(dst)
        self.path = Path(dst).expanduser()
        self.partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self.ledger_path = self.path.with_name(self.path.name + PROGRESS_SUFFIX)
        self.run: dict[str, Any] = json.loads(json.dumps(run))
        self.overwrite = overwrite
        self.complete = False
        self.resumed = 0
        self._ledger: Ledger | None = None
        if self.path.exists() or self.path.is_symlink():
            if not overwrite and read_run(self.path) == {**self.run, "complete": True}:
                remove_path(self.ledger_path)
                with contextlib.suppress(InputError):  # the lock of a run killed right after its rename
                    OutputLock.acquire(lock_path_for(self.ledger_path), str(self.path)).release()
                self.complete = True
                return
            if not overwrite:
                raise InputError(f"output already exists: {self.path} (pass --overwrite to replace it)")
        self._ledger = Ledger.open(self.ledger_path, self.run, overwrite=overwrite)

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            raise ValueError(f"{self.path} is already complete")  # a defect in the caller
        return self._ledger

    def start(self, build: Callable[[Path], None] | None = None) -> None:
        """Make ``DST.partial`` ready: keep the one of this run (resume), else build a fresh
        one with ``build(folder)`` (a zarr group is made when ``build`` is None) aside and
        rename it into place. Sets :attr:`resumed` (finished blocks found in the ledger)."""
        ledger = self.ledger
        if not ledger.created and self.partial.is_dir() and read_run(self.partial) == self.run:
            self.resumed = ledger.count()
            return
        if not ledger.created:  # a ledger without its data (or data of another run): start over
            ledger.clear(self.run)
        remove_path(self.partial)
        tmp = temp_sibling(self.partial)
        try:
            if build is None:
                zarr.open_group(str(tmp), mode="w-", zarr_format=3)
            else:
                tmp.mkdir(parents=True)
                build(tmp)
            write_run(tmp, self.run)
            replace_path(tmp, self.partial)
        except BaseException:
            remove_path(tmp)
            raise
        self.resumed = 0

    def commit(self) -> Path:
        """Mark the run complete, rename ``DST.partial`` to ``dst`` and drop the ledger."""
        ledger = self.ledger
        for left in self.partial.rglob(".*.tmp-*"):  # temporaries of a killed run
            remove_path(left)
        write_run(self.partial, {**self.run, "complete": True})
        if (self.path.exists() or self.path.is_symlink()) and not self.overwrite:
            raise InputError(f"output appeared while writing: {self.path} (pass --overwrite to replace it)")
        replace_path(self.partial, self.path)
        ledger.remove()
        self.complete = True
        return self.path


__all__ = [
    "PARTIAL_SUFFIX",
    "PROGRESS_SUFFIX",
    "RUN_KEY",
    "ResumableOutput",
    "read_run",
    "single_image",
    "volume_identity",
    "write_block",
    "write_run",
]
