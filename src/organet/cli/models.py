"""``organet models list | info | fetch``: pretrained models by name (the registry in
:mod:`organet.model.registry`); ``organet predict --model NAME`` uses the same names."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from organet.cli.errors import err_console, fail, handle_errors, print_error
from organet.cli.output import console, say
from organet.cli.progress import ProgressBars


@handle_errors
def list_models() -> None:
    """List the pretrained models (voxel size in nm; cached: usable without the network)."""
    from organet.cli.tables import models_table
    from organet.model.registry import DEFAULT_REGISTRY as reg

    cached = {e.name: reg.is_cached(e) for e in reg}
    caption = f"cache: {reg.cache}\nmore: organet models info NAME · use: organet predict --model NAME"
    console.print(models_table(reg, cached, caption=caption))


@handle_errors
def info(name: Annotated[str, typer.Argument(help="model name (organet models list)")]) -> None:
    """Everything about one model: source, hash, licence, citation, notes and cache paths."""
    from organet.model.registry import DEFAULT_REGISTRY as reg

    e = reg.get(name)
    vs = " x ".join(f"{v:g}" for v in e.voxel_size)
    lines = [
        ("name", e.name),
        ("description", e.description),
        ("organelle", e.organelle),
        ("voxel size", f"{vs} nm (z, y, x)"),
        ("normalization", e.normalization),
        ("kind", "organet checkpoint" if e.kind == "organet" else "incasem checkpoint, imported on first use"),
    ]
    if e.package is not None:
        path = reg.download_path(e)
        lines += [
            ("source", f"shipped with organet: {e.package}"),
            ("file", f"{path} ({'present' if path.is_file() else 'missing from this installation'})"),
        ]
    else:
        url = reg.url(e)
        inferred = "" if e.url_confirmed else " (file name inferred from the naming pattern, not published)"
        pinned = reg.pinned_sha256(e)
        if e.sha256 is not None:
            sha = f"{e.sha256} (published)"
        elif pinned is not None:
            sha = f"not published; pinned on first download: {pinned} ({reg.pin_path(e)})"
        else:
            sha = "not published (pinned on first download)"
        dl = reg.download_path(e)
        lines += [
            ("url", f"{url}{inferred}"),
            ("sha256", sha),
            ("download", f"{dl} ({'cached' if dl.is_file() else 'not downloaded yet'})"),
        ]
        if e.kind == "incasem":
            key = e.sha256 or pinned
            imported = reg.imported_path(e, key) if key else reg.model_dir(e) / "organet-<sha256[:16]>.pt"
            present = key is not None and imported.is_file()
            lines.append(("checkpoint", f"{imported} ({'imported' if present else 'imported on first use'})"))
    lines += [("licence", e.licence), ("citation", e.citation), ("notes", e.notes or "—")]
    for k, v in lines:
        say(f"{k:<14}{v}")


@handle_errors
def fetch(
    name: Annotated[str | None, typer.Argument(help="model name (organet models list)")] = None,
    all_: Annotated[bool, typer.Option("--all", help="fetch every model of the registry")] = False,
) -> None:
    """Download (once), verify and import a model; print the path of its organet checkpoint."""
    from organet.cli.errors import user_message
    from organet.model.registry import DEFAULT_REGISTRY as reg

    if (name is None) == (not all_):
        fail("give a model NAME or --all (not both)")
    names = [e.name for e in reg] if all_ else [reg.get(str(name)).name]
    failed: list[str] = []
    paths: dict[str, Path] = {}
    with ProgressBars(console=err_console, transient=True) as progress:
        for n in names:
            try:
                paths[n] = reg.fetch(n, progress=progress)
            except Exception as e:
                msg = user_message(e)
                if msg is None or not all_:
                    raise
                print_error(f"{n}: {msg}")
                failed.append(n)
    for n, path in paths.items():
        say(f"{n}\t{path}" if all_ else str(path))
    if failed:
        fail(f"{len(failed)} of {len(names)} models could not be fetched: {', '.join(failed)}")


__all__ = ["fetch", "info", "list_models"]


@handle_errors
def package(
    src: Annotated[Path, typer.Argument(help="checkpoint of a training run")],
    dst: Annotated[Path, typer.Argument(help="shareable checkpoint to write")],
    overwrite: Annotated[bool, typer.Option(help="replace an existing DST")] = False,
) -> None:
    """Write a shareable copy of a checkpoint: weights and metadata, no optimizer or RNG state, no local paths."""
    from organet.model.checkpoint import file_sha256, release_checkpoint

    ck = release_checkpoint(src, dst, overwrite=overwrite)
    size = dst.stat().st_size / 2**20
    say(f"wrote {dst}: iteration {ck.iteration}, {ck.organelle}, {size:.1f} MiB, sha256 {file_sha256(dst)}")
