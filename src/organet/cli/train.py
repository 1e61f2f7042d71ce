"""``organet train``: train, continue a run (``--resume``) or fine-tune (``--init-from``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from organet.cli.errors import handle_errors
from organet.cli.output import say
from organet.cli.progress import ProgressBars
from organet.errors import ConfigError, InputError


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
