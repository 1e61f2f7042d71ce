"""Fine-tuning a trained model on a new cell (``organet finetune``).

A fine-tuning run is an ordinary training run (:mod:`organet.train.loop`) whose config
is derived from the checkpoint: its architecture, network input shape, voxel size (nm),
intensity normalization, organelle, and, where the checkpoint records them, its sampling,
augmentation and loss settings. What changes is the data (the new labels, group ``new``,
resampled to the model's voxel size when the new cell has another one), optionally a
share ``mix`` of training blocks drawn from the original data (group ``old``) to limit
forgetting, and the schedule: a constant, lower learning rate (:data:`DEFAULT_LR`) for a
short time budget or a fixed number of iterations. Validation ROIs on the new domain
(``new``) and, if given, the old one (``old``) are scored at every checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from organet.config import ExperimentConfig, RoiSpec
from organet.errors import ConfigError, InputError
from organet.model.checkpoint import Checkpoint

DEFAULT_LR = 1e-4
"""Fine-tuning learning rate: a tenth of the CPU recipe's peak (configs/lucchi_mito_cpu.yaml), held constant."""
SCRATCH_LR = 1e-3
"""Learning rate of the from-scratch baseline: the CPU recipe's peak."""
DEFAULT_MINUTES = 10.0
MAX_ITERATIONS = 1_000_000  # the cap of a time-budgeted run


def _recorded(ckpt: Checkpoint, key: str) -> dict[str, Any] | None:
    v = ckpt.training_config.get(key) if isinstance(ckpt.training_config, dict) else None
    return v if isinstance(v, dict) else None


def original_training_rois(ckpt: Checkpoint) -> list[RoiSpec]:
    """The checkpoint's own training ROIs, when its record names files that exist here
    (a local run; released checkpoints keep only file names)."""
    data = _recorded(ckpt, "data") or {}
    out = []
    for r in data.get("train", []):
        try:
            spec = RoiSpec.model_validate({k: v for k, v in r.items() if k in RoiSpec.model_fields})
        except ValueError:
            return []
        files = [Path(p.split(":/")[0]) for p in (spec.raw, spec.labels)]
        if not all(f.is_absolute() and f.exists() for f in files):
            return []
        out.append(spec.model_copy(update={"group": "old"}))
    return out


def finetune_config(
    ckpt: Checkpoint,
    new: Sequence[RoiSpec],
    output_dir: str | Path,
    *,
    minutes: float | None = DEFAULT_MINUTES,
    iterations: int | None = None,
    lr: float = DEFAULT_LR,
    mix: float = 0.0,
    old: Sequence[RoiSpec] = (),
    validation: Sequence[RoiSpec] = (),
    checkpoint_every: int | None = None,
    seed: int = 0,
    device: str = "auto",
) -> ExperimentConfig:
    """The training config that fine-tunes ``ckpt`` on ``new``.

    Parameters
    ----------
    new
        Labelled ROIs of the new cell (any voxel size; resampled to the model's).
    minutes, iterations
        Budget: with ``iterations`` the run is defined by it (reproducible; ``minutes`` then
        only caps it); else it trains for ``minutes`` of wall-clock time.
    lr
        Constant learning rate (Adam; its state starts fresh).
    mix
        Share of training blocks (0-1) drawn from ``old`` (default: the checkpoint's own
        training ROIs, if its files exist here).
    validation
        ROIs scored at every checkpoint (name them, e.g. ``new`` and ``old``).
    checkpoint_every
        Iterations between checkpoints (default: only the last one, so validation does
        not eat the budget).
    """
    if not new:
        raise InputError("fine-tuning needs at least one labelled ROI of the new cell")
    if not 0 <= mix < 1:
        raise InputError(f"--mix must be in [0, 1) (share of blocks from the original data), got {mix}")
    if iterations is None and minutes is None:
        raise InputError("give a budget: --minutes or --iterations")
    if old and mix == 0:
        raise InputError("original data given (--mix-raw/--mix-labels) but --mix is 0: give the share of blocks")
    old = list(old) if old else (original_training_rois(ckpt) if mix > 0 else [])
    if mix > 0 and not old:
        raise InputError(
            "--mix needs the original training data: the checkpoint's own files are not here; "
            "give them with --mix-raw/--mix-labels"
        )
    arch = ckpt.architecture
    model: dict[str, Any] = {
        "num_fmaps": arch.num_fmaps,
        "fmap_inc_factor": arch.fmap_inc_factor,
        "downsample_factors": [list(f) for f in arch.downsample_factors],
        "input_shape": list(ckpt.input_shape),
        "voxel_size": list(ckpt.voxel_size),
    }
    train = [s.model_copy(update={"group": "new", "name": s.name or f"new{i}"}) for i, s in enumerate(new)]
    train += [
        s.model_copy(update={"group": "old", "name": s.name or f"old{i}"}) for i, s in enumerate(old if mix > 0 else [])
    ]
    raw: dict[str, Any] = {
        "name": f"finetune_{Path(output_dir).name}",
        "organelle": ckpt.organelle,
        "output_dir": str(output_dir),
        "seed": seed,
        "model": model,
        "normalization": ckpt.normalization.model_dump(),
        "data": {
            "train": [s.model_dump() for s in train],
            "validation": [s.model_dump() for s in validation],
            **({"group_weights": {"new": 1 - mix, "old": mix}} if mix > 0 else {}),
        },
        "optimizer": {"lr": lr, "lr_schedule": "constant"},
        "training": {
            "iterations": iterations if iterations is not None else MAX_ITERATIONS,
            "max_minutes": minutes,
            "checkpoint_every": checkpoint_every or (iterations if iterations is not None else MAX_ITERATIONS),
            "device": device,
        },
    }
    for key in ("sampling", "augment", "loss"):
        if (rec := _recorded(ckpt, key)) is not None:
            raw[key] = rec
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValueError as e:
        raise ConfigError(f"invalid fine-tuning settings: {e}") from None
    if cfg.model.architecture() != arch:
        raise ConfigError(
            f"the checkpoint's network ({arch}) cannot be expressed as a training config; fine-tune it in Python"
        )
    return cfg


__all__ = ["DEFAULT_LR", "DEFAULT_MINUTES", "SCRATCH_LR", "finetune_config", "original_training_rois"]
