"""``organet view``: serve an organet output to neuroglancer in a browser (no napari needed)."""

from __future__ import annotations

import os
import sys
import threading
from typing import Annotated

import typer

from organet.cli.errors import err_console, handle_errors
from organet.cli.output import say


def has_display() -> bool:
    """Whether a browser can open here: macOS and Windows always, elsewhere with X11 or Wayland."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@handle_errors
def view(
    output: Annotated[
        str,
        typer.Argument(
            help="OUT.zarr of organet predict, a folder of organet instances, an OME-Zarr image or any volume"
        ),
    ],
    raw: Annotated[
        str | None,
        typer.Option(help="raw EM shown below (path or URL; default: the input the output's run record names)"),
    ] = None,
    port: Annotated[int, typer.Option(help="port to serve on (0: a free one)")] = 0,
    bind: Annotated[
        str, typer.Option(help="address to listen on: 127.0.0.1 this machine only, 0.0.0.0 the network")
    ] = "127.0.0.1",
    browser: Annotated[
        bool | None,
        typer.Option("--browser/--no-browser", help="open the link in a browser (default: when there is a display)"),
    ] = None,
) -> None:
    """Serve OUTPUT (and --raw) to neuroglancer and print the link; Ctrl-C stops.

    Layers: raw, probability and other images, masks and instances as segmentations, all in nm at their offsets.
    Chunks are read when the browser asks for them, from the stored pyramid level that fits.
    Needs the neuroglancer extra: pip install 'organet\\[neuroglancer]'.
    """
    from organet.report.view import require_neuroglancer, start_viewer, view_layers

    layers = view_layers(output, raw=raw)
    require_neuroglancer()
    session = start_viewer(layers, bind_address=bind, port=port)
    try:  # from here on, Ctrl-C stops the server and ends the command normally
        say(f"serving {output}: {'; '.join(lay.describe() for lay in layers)}")
        say(session.url)
        sys.stdout.flush()
        if browser if browser is not None else has_display():
            import webbrowser

            webbrowser.open(session.url)
        err_console.print("press Ctrl-C to stop", highlight=False)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        session.stop()
    err_console.print("stopped", highlight=False)


__all__ = ["has_display", "view"]
