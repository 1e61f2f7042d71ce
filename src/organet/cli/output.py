"""The consoles of the command line: results on stdout, errors and progress on stderr."""

from __future__ import annotations

from rich.console import Console

from organet.cli.errors import err_console

console = Console()


def say(message: object) -> None:
    """Print a result line on stdout literally (no markup, no highlighting)."""
    console.print(str(message), markup=False, highlight=False, soft_wrap=True)


__all__ = ["console", "err_console", "say"]
