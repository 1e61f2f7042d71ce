"""The ``organet`` command line: a thin layer over the Python API.

Layout: one module per command group; every command is a plain function decorated with
:func:`organet.cli.errors.handle_errors` and registered below, in one place.

* :mod:`.volumes` convert, info, valid-sizes       * :mod:`.train` train, finetune
* :mod:`.predict` predict                          * :mod:`.evaluate` evaluate
* :mod:`.demo` demo                                * :mod:`.instances` instances
* :mod:`.analyze` analyze pores / coated-pits      * :mod:`.preprocess` preprocess, masks sample / exclusion
* :mod:`.annotate` annotate graphcut / napari      * :mod:`.experiment` experiment (grids)
* :mod:`.importers` import incasem                  * :mod:`.models` models list / info / fetch / package
* :mod:`.suggest` suggest (where to annotate)      * :mod:`.view` view (neuroglancer in a browser)

Shared option types are in :mod:`.options`, the error contract in :mod:`.errors`
(bad input: one ``error:`` line, exit 2), progress bars in :mod:`.progress`, result
tables in :mod:`.tables`. Heavy libraries are imported inside the commands, so
``organet --help`` stays fast.
"""

from __future__ import annotations

import typer

from organet.cli import (
    analyze,
    annotate,
    demo,
    evaluate,
    experiment,
    export,
    importers,
    instances,
    models,
    plan,
    predict,
    preprocess,
    report,
    suggest,
    train,
    view,
    volumes,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Organelle segmentation in volume EM with 3D U-Nets (ASEM pipeline).",
)
analyze_app = typer.Typer(
    no_args_is_help=True, help="Measure organelles in predictions (nuclear pores, coated pits) and object shapes."
)
annotate_app = typer.Typer(no_args_is_help=True, help="Ground-truth annotation from sparse scribbles (graph cut).")
import_app = typer.Typer(no_args_is_help=True, help="Import models trained by other tools (incasem).")
models_app = typer.Typer(no_args_is_help=True, help="Pretrained models by name: list, show, fetch; package your own.")
masks_app = preprocess.masks_app

app.command("convert")(volumes.convert)
app.command("info")(volumes.info)
app.command("train")(train.train)
app.command("finetune")(train.finetune)
app.command("predict")(predict.predict)
app.command("plan")(plan.plan)
app.command("evaluate")(evaluate.evaluate)
app.command("experiment")(experiment.experiment)
app.command("valid-sizes")(volumes.valid_sizes)
app.command("demo")(demo.demo)
app.command("export")(export.export)
app.command("instances")(instances.instances)
app.command("suggest")(suggest.suggest)
app.command("preprocess")(preprocess.preprocess)
app.command("report")(report.report)
app.command("view")(view.view)
masks_app.command("sample")(preprocess.sample_mask)
masks_app.command("exclusion")(preprocess.exclusion_mask)
analyze_app.command("pores")(analyze.pores)
analyze_app.command("coated-pits")(analyze.coated_pits)
analyze_app.command("shapes")(analyze.shapes)
annotate_app.command("graphcut")(annotate.graphcut)
annotate_app.command("napari")(annotate.napari)
import_app.command("incasem")(importers.incasem)
models_app.command("list")(models.list_models)
models_app.command("info")(models.info)
models_app.command("fetch")(models.fetch)
models_app.command("package")(models.package)
app.add_typer(masks_app, name="masks")
app.add_typer(analyze_app, name="analyze")
app.add_typer(annotate_app, name="annotate")
app.add_typer(import_app, name="import")
app.add_typer(models_app, name="models")


def main() -> None:
    """Entry point of ``python -m organet.cli``."""
    app()


__all__ = ["app", "main"]
