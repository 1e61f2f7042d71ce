"""``organet train`` (train, continue a run with ``--resume``, start from ``--init-from``) and
``organet finetune`` (a model on a new cell)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from organet.cli.errors import handle_errors
from organet.cli.output import say
from organet.cli.progress import ProgressBars
from organet.errors import ConfigError, InputError

if TYPE_CHECKING:
    from organet.config import RoiSpec


@handle_errors
def train(
    config: Annotated[Path | None, typer.Argument(help="experiment YAML")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue the run in this folder")] = None,
    init_from: Annotated[Path | None, typer.Option(help="fine-tune: start from this checkpoint")] = None,
    iterations: Annotated[int | None, typer.Option(help="override training.iterations")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="override training.max_minutes")] = None,
) -> None:
    """Train a U-Net from a YAML experiment config (or resume a run)."""
    from organet.config import load_config
    from organet.train.loop import train as run_training

    if resume is not None:
        cfg_path = resume / "config.yaml"
        if config is not None and config.resolve() != cfg_path.resolve():
            raise InputError("with --resume the run folder's own config.yaml is used; do not pass another config")
        if not cfg_path.is_file():
            raise InputError(f"--resume {resume}: no config.yaml in that folder")
        config = cfg_path
    if config is None:
        raise InputError("give a config file, or --resume RUN_DIR")
    cfg = load_config(config)
    if iterations is not None:
        cfg.training.iterations = iterations
    if max_minutes is not None:
        cfg.training.max_minutes = max_minutes
    if resume is not None and Path(cfg.output_dir).resolve() != resume.resolve():
        raise ConfigError(f"config.yaml in {resume} points to another output_dir ({cfg.output_dir})")
    with ProgressBars() as progress:
        result = run_training(cfg, resume=resume is not None, init_from=init_from, progress=progress, log=say)
    say(f"trained to iteration {result.iteration}; last checkpoint {result.last_checkpoint}")
    say(_data_wait(result))


RoiOpt = Annotated[
    list[str] | None,
    typer.Option("--roi-vox", help="labelled ROI of the new cell, z0:z1,y0:y1,x0:x1 (voxels of RAW); repeat"),
]


def _specs(
    raw: str, labels: str, rois: list[str] | None, voxel_size: tuple[float, float, float] | None, name: str
) -> list[RoiSpec]:
    from organet.config import RoiSpec

    vs = voxel_size
    if not rois:
        return [RoiSpec(name=name, raw=raw, labels=labels, voxel_size=vs)]
    return [
        RoiSpec(name=f"{name}{i}" if len(rois) > 1 else name, raw=raw, labels=labels, roi_vox=r, voxel_size=vs)
        for i, r in enumerate(rois)
    ]


@handle_errors
def finetune(
    source: Annotated[str, typer.Option("--from", help="checkpoint (.pt) or a model name from `organet models list`")],
    raw: Annotated[str, typer.Option(help="raw volume of the new cell")],
    labels: Annotated[str, typer.Option(help="its labels (0/1), same grid as RAW")],
    output: Annotated[Path, typer.Option(help="run folder (checkpoints/, metrics, curves.png)")],
    roi_vox: RoiOpt = None,
    voxel_size: Annotated[
        tuple[float, float, float] | None, typer.Option(help="nm (z, y, x) of RAW/LABELS if their files lack it")
    ] = None,
    minutes: Annotated[
        float | None, typer.Option(help="training time budget [default: 10, or none with --iterations]")
    ] = None,
    iterations: Annotated[int | None, typer.Option(help="train exactly this many iterations (reproducible)")] = None,
    lr: Annotated[
        float | None, typer.Option(help="constant learning rate [default: 1e-4; 1e-3 with --from-scratch]")
    ] = None,
    mix: Annotated[float, typer.Option(help="share of blocks from the original data (limits forgetting)")] = 0.0,
    mix_raw: Annotated[str | None, typer.Option(help="original raw (default: the checkpoint's own, if here)")] = None,
    mix_labels: Annotated[str | None, typer.Option(help="original labels")] = None,
    mix_roi_vox: Annotated[list[str] | None, typer.Option(help="ROI(s) of the original data; repeat")] = None,
    val_raw: Annotated[str | None, typer.Option(help="validation on the new cell: raw")] = None,
    val_labels: Annotated[str | None, typer.Option(help="validation on the new cell: labels")] = None,
    val_roi_vox: Annotated[str | None, typer.Option(help="validation ROI on the new cell")] = None,
    old_val_raw: Annotated[str | None, typer.Option(help="validation on the original domain: raw")] = None,
    old_val_labels: Annotated[str | None, typer.Option(help="validation on the original domain: labels")] = None,
    old_val_roi_vox: Annotated[str | None, typer.Option(help="validation ROI on the original domain")] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="iterations between checkpoints [default: last only]")
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N]")] = "auto",
    from_scratch: Annotated[
        bool,
        typer.Option(
            "--from-scratch", help="baseline: the model's network and settings, random initial weights (lr 1e-3)"
        ),
    ] = False,
) -> None:
    """Fine-tune a model on labelled ROIs of a new cell (any voxel size): a short run at a lower,
    constant learning rate, optionally mixed with the original data; checkpoints usable by
    `organet predict --model`. --from-scratch trains the same network on the same data from random
    weights instead (the "target alone" baseline)."""
    from organet.config import RoiSpec
    from organet.model.checkpoint import load_checkpoint
    from organet.model.registry import resolve_model
    from organet.train.finetune import DEFAULT_LR, DEFAULT_MINUTES, SCRATCH_LR, finetune_config
    from organet.train.loop import train as run_training

    def pair(r: str | None, lab: str | None, what: str) -> None:
        if (r is None) != (lab is None):
            raise InputError(f"give both --{what}-raw and --{what}-labels, or neither")

    pair(mix_raw, mix_labels, "mix")
    pair(val_raw, val_labels, "val")
    pair(old_val_raw, old_val_labels, "old-val")
    with ProgressBars() as progress:
        ckpt_path = resolve_model(source, progress=progress)
    ckpt = load_checkpoint(ckpt_path)
    validation = []
    if val_raw and val_labels:
        validation.append(
            RoiSpec(name="new", raw=val_raw, labels=val_labels, roi_vox=val_roi_vox, voxel_size=voxel_size)
        )
    if old_val_raw and old_val_labels:
        validation.append(RoiSpec(name="old", raw=old_val_raw, labels=old_val_labels, roi_vox=old_val_roi_vox))
    cfg = finetune_config(
        ckpt,
        _specs(raw, labels, roi_vox, voxel_size, "new"),
        output.resolve(),
        minutes=minutes if minutes is not None or iterations is not None else DEFAULT_MINUTES,
        iterations=iterations,
        lr=lr if lr is not None else (SCRATCH_LR if from_scratch else DEFAULT_LR),
        mix=mix,
        old=_specs(mix_raw, mix_labels, mix_roi_vox, None, "old") if mix_raw and mix_labels else (),
        validation=validation,
        checkpoint_every=checkpoint_every,
        seed=seed,
        device=device,
    )
    what = "training from scratch like" if from_scratch else "fine-tuning"
    say(f"{what} {ckpt_path} ({ckpt.organelle}, {ckpt.voxel_size} nm) into {output}")
    with ProgressBars() as progress:
        result = run_training(cfg, init_from=None if from_scratch else ckpt_path, progress=progress, log=say)
    for r in result.validation:
        say(f"{r['roi']}: F1 {r['f1']:.4f} (no exclusion {r['f1_no_exclusion']:.4f})")
    say(f"fine-tuned to iteration {result.iteration}; checkpoint {result.last_checkpoint}")
    say(_data_wait(result))


def _data_wait(result: Any) -> str:
    """One line: how the steps of this session split between waiting for data and computing."""
    total = result.data_wait_s + result.compute_s
    if total <= 0:
        return "no training steps in this session"
    return (
        f"steps: {result.compute_s:.0f} s computing, {result.data_wait_s:.1f} s waiting for data "
        f"({100 * result.data_wait_fraction:.1f} %)"
    )
