"""Self-describing checkpoints.

A checkpoint holds everything prediction needs: the architecture, the input
shape the model was trained with, the voxel size (nm, z, y, x), the intensity
normalization, the organelle, the training config, the iteration and the latest
metrics, plus the weights. Optimizer and RNG states are included for resuming.
Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

import glob
import hashlib
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from organet.errors import CheckpointError, InputError
from organet.model.unet import UNet, UNetConfig, output_shape
from organet.organelles import canonical_organelle
from organet.preprocess.normalize import Normalization
from organet.volumes.atomic import atomic_path

FORMAT = "organet-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    architecture: UNetConfig
    input_shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    normalization: Normalization
    organelle: str
    state_dict: dict[str, torch.Tensor]
    iteration: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    training_config: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict[str, Any] | None = None
    rng_state: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.organelle = canonical_organelle(self.organelle, "checkpoint organelle")

    @property
    def output_shape(self) -> tuple[int, int, int]:
        o = output_shape(self.architecture, self.input_shape)
        if o is None:
            raise CheckpointError(f"checkpoint input shape {self.input_shape} is not valid for its architecture")
        return o

    def build_model(self) -> UNet:
        """The network with the stored weights loaded (on CPU, eval mode)."""
        model = UNet(self.architecture)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as e:
            raise CheckpointError(f"weights do not match the stored architecture: {_first_line(e)}") from None
        return model.eval()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "architecture": self.architecture.to_dict(),
            "input_shape": list(self.input_shape),
            "voxel_size": list(self.voxel_size),
            "normalization": self.normalization.model_dump(),
            "organelle": self.organelle,
            "iteration": self.iteration,
            "metrics": _plain(self.metrics),
            "training_config": _plain(self.training_config),
            "state_dict": self.state_dict,
            "optimizer_state": self.optimizer_state,
            "rng_state": self.rng_state,
        }

    def summary(self) -> dict[str, Any]:
        """The metadata without tensors (for printing)."""
        return {
            k: v
            for k, v in self.to_dict().items()
            if k not in ("state_dict", "optimizer_state", "rng_state", "training_config")
        }


def _plain(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays as Python numbers and lists (nested dicts,
    lists, tuples), so a checkpoint holds only what ``torch.load(weights_only=True)`` reads."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return value


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of the file at ``path`` (read in 1 MiB pieces): how runs record and
    the model registry verifies the exact checkpoint or download they used."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _path_names(value: Any) -> Any:
    """``value`` with every absolute path string reduced to its last part (nested dicts/lists)."""
    if isinstance(value, dict):
        return {k: _path_names(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_path_names(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value.split(":/")[0]):
        return os.path.basename(value.rstrip("/"))
    return value


def release_checkpoint(src: str | Path, dst: str | Path, overwrite: bool = False) -> Checkpoint:
    """Write a shareable copy of checkpoint ``src`` to ``dst``: the weights and everything
    prediction needs, without optimizer and RNG state (a third of the size), with absolute
    paths in the training config reduced to file names, and ``training_config["released_from"]``
    = the source's sha256 and iteration. Refuses an existing ``dst`` unless ``overwrite``."""
    if Path(dst).exists() and not overwrite:
        raise CheckpointError(f"{dst} exists; pass overwrite to replace it")
    ck = load_checkpoint(src)
    ck.optimizer_state = None
    ck.rng_state = None
    ck.training_config = {
        **_path_names(ck.training_config),
        "released_from": {"sha256": file_sha256(src), "iteration": ck.iteration},
    }
    save_checkpoint(ck, dst)
    return ck


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> Path:
    """Write ``ckpt`` to ``path`` atomically; returns the path. Temporaries of an earlier
    write of the same file that was killed are removed."""
    path = Path(path)
    for left in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        left.unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        torch.save(ckpt.to_dict(), tmp)
    return path


def _first_line(e: BaseException) -> str:
    """The first informative line of an exception's message (torch's run over many lines)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.endswith(":")] or lines or [type(e).__name__]
    return lines[0][:300]


def read_checkpoint_data(path: str | Path) -> Any:
    """What a ``.pt`` file holds, loaded with ``torch.load(weights_only=True)``: tensors and
    plain data only, so a file that carries pickled code (a callable, a class) is refused
    instead of run. Raises :class:`CheckpointError` naming the file for anything unreadable."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's note on unusual pickle protocols: the error below says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        code = re.search(r"Unsupported (?:global|class)[^\n]*?(?=\. |\.?$)", str(e), re.MULTILINE)
        if code is not None:
            raise CheckpointError(
                f"refusing to load checkpoint {path}: it carries pickled Python objects ({code[0].strip()}), "
                "code that torch.load(weights_only=True) does not run; expected tensors and plain data (a .pt file "
                "written by organet, or a state dict saved with torch.save); load only checkpoints you trust"
            ) from None
        other = re.search(r"Unsupported [^\n]*?(?=\. |\.?$)", str(e), re.MULTILINE)
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a PyTorch checkpoint of tensors and plain data "
            f"({other[0].strip() if other else _first_line(e)}); organet reads .pt files with "
            "torch.load(weights_only=True); expected a file written by organet, or a state dict saved with torch.save"
        ) from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for foreign or truncated files
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is damaged, cut short or not a PyTorch file ({type(e).__name__}: "
            f"{_first_line(e)}); expected a .pt file written by organet (or torch.save)"
        ) from None


def load_checkpoint(path: str | Path, expect_architecture: UNetConfig | None = None) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises :class:`CheckpointError` for a missing file, a file that is not an
    organet checkpoint, or (with ``expect_architecture``) another architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    d = read_checkpoint_data(path)
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an organet checkpoint (no '{FORMAT}' header)")
    if d.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} was written by a newer organet (format version {d['version']} > {VERSION})")
    arch = UNetConfig.from_dict(d["architecture"])
    if expect_architecture is not None and arch != expect_architecture:
        raise CheckpointError(
            f"checkpoint {path} has another architecture: {arch.to_dict()} (expected {expect_architecture.to_dict()})"
        )
    try:
        organelle = canonical_organelle(d["organelle"], f"checkpoint {path}: organelle")
    except InputError as e:
        raise CheckpointError(str(e)) from None
    ckpt = Checkpoint(
        architecture=arch,
        input_shape=tuple(d["input_shape"]),
        voxel_size=tuple(float(v) for v in d["voxel_size"]),  # type: ignore[arg-type]
        normalization=Normalization(**d["normalization"]),
        organelle=organelle,  # canonical (older checkpoints may hold a long form such as "mitochondria")
        state_dict=d["state_dict"],
        iteration=int(d.get("iteration", 0)),
        metrics=d.get("metrics") or {},
        training_config=d.get("training_config") or {},
        optimizer_state=d.get("optimizer_state"),
        rng_state=d.get("rng_state"),
    )
    # validate weights against the architecture now, not at first use
    try:
        ckpt.build_model()
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    return ckpt
