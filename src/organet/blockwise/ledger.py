"""A durable record of finished blocks, so any blockwise pass can resume.

Layout (a folder, usually ``OUT.progress`` beside the output)::

    ledger.json            {"format": "organet-ledger", "version": 2, "run": {...settings...}}
    <stage>/<z_y_x>.json   {"status": "done" | "skipped", "result": <JSON>}

An entry is written atomically after the block's output is durable, so a block with an
entry is finished and a block without one is recomputed whole. ``run`` holds the
settings of the run; reopening with other settings is refused (or, with
``overwrite``, starts over), so a resumed run never mixes two runs' blocks. Results
are JSON with NumPy arrays encoded losslessly (:func:`encode` / :func:`decode`).
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from organet.errors import IncompatibleError
from organet.volumes.atomic import atomic_write_text, remove_path
from organet.volumes.geometry import Shape3

from .lock import OutputLock, lock_path_for

FORMAT = "organet-ledger"
VERSION = 2
_ENTRY = re.compile(r"^(\d+)_(\d+)_(\d+)\.json$")


def _default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        a = np.ascontiguousarray(o)
        return {
            "__ndarray__": base64.b64encode(a.tobytes()).decode("ascii"),
            "dtype": a.dtype.str,
            "shape": list(a.shape),
        }
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"cannot store {type(o).__name__} in a ledger entry")


def _hook(d: dict[str, Any]) -> Any:
    if "__ndarray__" in d:
        return np.frombuffer(base64.b64decode(d["__ndarray__"]), dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()
    return d


def encode(value: Any) -> str:
    """JSON text of a block result (dicts, lists, numbers, strings, NumPy arrays and scalars)."""
    return json.dumps(value, default=_default, allow_nan=True)


def decode(text: str) -> Any:
    """Inverse of :func:`encode`."""
    return json.loads(text, object_hook=_hook)


def _diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys)


class Ledger:
    """The finished blocks of one run, in a folder (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.created = False  # True when open() started it empty
        self.lock: OutputLock | None = None  # held from open() until remove()

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def open(cls, path: str | os.PathLike[str], run: dict[str, Any], overwrite: bool = False) -> Ledger:
        """Open (or create) the ledger at ``path`` for a run with settings ``run`` (JSON).

        An existing ledger of the same run is kept (its blocks are skipped); one of a
        run with other settings, or of an older format, raises
        :class:`~organet.errors.IncompatibleError` unless ``overwrite``, which empties it.
        First the lock file beside it is taken (:class:`~organet.blockwise.lock.OutputLock`):
        while another live process writes this output, :class:`~organet.errors.InputError`
        (even with ``overwrite``).
        """
        led = cls(path)
        run = json.loads(json.dumps(run))
        target = led.path.name.removesuffix(".progress")
        led.lock = OutputLock.acquire(lock_path_for(led.path), f"{led.path.with_name(target)}")
        try:
            led._open(run, overwrite)
        except BaseException:
            led.lock.release()
            raise
        return led

    def _open(self, run: dict[str, Any], overwrite: bool) -> None:
        if self.path.exists():
            why = self._mismatch(run)
            if why:
                if not overwrite:
                    raise IncompatibleError(
                        f"{self.path} records an unfinished run {why}; rerun with the same settings to resume, or "
                        "pass --overwrite to start over"
                    )
                remove_path(self.path)
        if not self.path.exists():
            self.created = True
            self.path.mkdir(parents=True)
            atomic_write_text(
                self.path / "ledger.json", json.dumps({"format": FORMAT, "version": VERSION, "run": run}, indent=1)
            )

    def clear(self, run: dict[str, Any]) -> None:
        """Empty the ledger and start it anew for ``run``, keeping the lock."""
        remove_path(self.path)
        self._open(json.loads(json.dumps(run)), overwrite=True)

    def _mismatch(self, run: dict[str, Any]) -> str:
        meta_path = self.path / "ledger.json"
        if not self.path.is_dir():
            return "(it is not a folder)"
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            return "written by an older organet (ledger format 1), whose blocks cannot be reused"
        except (OSError, ValueError):
            return "with an unreadable ledger.json"
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            return f"in ledger format {meta.get('version')!r} (this organet writes {VERSION})"
        d = _diff(meta.get("run") or {}, run)
        return f"with other settings ({d})" if d else ""

    @property
    def run(self) -> dict[str, Any]:
        """The settings recorded when the ledger was created."""
        return dict(json.loads((self.path / "ledger.json").read_text())["run"])

    def remove(self) -> None:
        """Delete the ledger (the run is complete) and release its lock."""
        remove_path(self.path)
        if self.lock is not None:
            self.lock.release()

    # ------------------------------------------------------------------ entries
    def stage_dir(self, stage: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", stage).strip("-") or "blocks"
        return self.path / safe

    def count(self) -> int:
        """Finished blocks over all stages."""
        return sum(1 for d in self.path.iterdir() if d.is_dir() for p in d.iterdir() if _ENTRY.match(p.name))

    def entries(self, stage: str) -> dict[Shape3, dict[str, Any]]:
        """Finished blocks of ``stage``: index -> ``{"status": ..., "result": ...}``."""
        d = self.stage_dir(stage)
        out: dict[Shape3, dict[str, Any]] = {}
        if d.is_dir():
            for p in d.iterdir():
                m = _ENTRY.match(p.name)
                if m:
                    out[(int(m[1]), int(m[2]), int(m[3]))] = decode(p.read_text())
        return out


def write_entry(stage_dir: str | os.PathLike[str], index: Shape3, status: str, result: Any) -> None:
    """Record block ``index`` as finished (atomic; call after its output is durable)."""
    d = Path(stage_dir)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / f"{index[0]}_{index[1]}_{index[2]}.json", encode({"status": status, "result": result}))


__all__ = ["Ledger", "decode", "encode", "write_entry"]
