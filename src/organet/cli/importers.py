"""``organet import incasem``: models trained by other tools, as organet checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from organet.cli.errors import handle_errors
from organet.cli.options import Overwrite
from organet.cli.output import say


@handle_errors
def incasem(
    src: Annotated[Path, typer.Argument(help="incasem checkpoint (.pt), e.g. model_checkpoint_1847_mito_CF.pt")],
    dst: Annotated[Path, typer.Argument(help="organet checkpoint to write (.pt)")],
    organelle: Annotated[str, typer.Option(help="what the model segments: mito, golgi, er, np, ccp")],
    voxel_size: Annotated[
        tuple[float, float, float], typer.Option("--voxel-size", help="nm, (z, y, x), the model's training voxel size")
    ],
    normalization: Annotated[
        str,
        typer.Option(
            help="clahe-incasem: the model expects raw preprocessed by incasem's blockwise CLAHE "
            "(organet preprocess --method clahe-incasem); none: raw uint8 mapped to [-1, 1] only"
        ),
    ] = "clahe-incasem",
    overwrite: Overwrite = False,
) -> None:
    """Import an incasem (ASEM) checkpoint (funlib.learn.torch U-Net) as an organet checkpoint."""
    from organet.model.incasem import import_incasem
    from organet.model.unet import ASEM_UNET, count_parameters

    ckpt = import_incasem(src, dst, organelle, voxel_size, normalization=normalization, overwrite=overwrite)
    arch, rec = ckpt.architecture, ckpt.training_config["imported"]
    asem = " (the ASEM network)" if arch == ASEM_UNET else ""
    run = f", incasem run {rec['run_id']}" if rec["run_id"] is not None else ""
    say(f"wrote {dst}: {ckpt.organelle} model imported from {src}{run}")
    say(
        f"  architecture  {arch.num_levels} levels, {arch.num_fmaps} feature maps x {arch.fmap_inc_factor} per level, "
        f"downsampling {[tuple(f) for f in arch.downsample_factors]}{asem}"
    )
    say(f"  parameters    {count_parameters(ckpt.build_model()):,}")
    say(f"  tile          {ckpt.input_shape} -> {ckpt.output_shape} voxels")
    say(f"  voxel size    {ckpt.voxel_size} nm (z, y, x)")
    say(f"  normalization {ckpt.normalization.describe()}")
    say(f"  sha256        {rec['sha256']}")
