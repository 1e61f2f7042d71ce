"""How every ``organet`` command reports bad input: one ``error:`` line on stderr.

The message is printed literally (rich markup escaped), so ``[...]`` in paths and
hints survives.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape


def print_error(console: Console, message: object) -> None:
    """Print ``error: <message>`` on ``console`` (a stderr console)."""
    console.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
