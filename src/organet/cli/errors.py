"""How every ``organet`` command reports problems.

* A user error (:class:`organet.errors.OrganetError`, a pydantic ``ValidationError``
  from parsing settings, or an ``OSError`` of a full disk, a read-only or forbidden
  location: :func:`organet.errors.storage_error`) prints ONE line ``error: <message>``
  on stderr and exits 2.
* Blocks of a blockwise pass that still fail after their retries (``BlockFailures``)
  print their list and exit 1: the finished blocks are kept and a rerun resumes.
* Anything else is a bug in organet: the traceback shows as usual, followed by a line
  that says so and how to report it.

Every command function is decorated with :func:`handle_errors`; checks in a command
itself call :func:`fail`.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar, cast

import typer
from rich.console import Console
from rich.markup import escape

from organet import __version__
from organet.errors import BlockFailures, OrganetError, storage_error

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2
EXIT_BLOCKS_FAILED = 1

err_console = Console(stderr=True)

BUG_NOTE = (
    f"This is a bug in organet {__version__}, not a problem with your input: please report it "
    "with the command you ran and this traceback."
)


def print_error(message: object, console: Console | None = None) -> None:
    """Print ``error: <message>`` on stderr (or ``console``), literally: rich markup in the
    message is escaped, so ``[...]`` in paths and hints survives."""
    (console or err_console).print(f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def print_warning(message: object, console: Console | None = None) -> None:
    """Print ``warning: <message>`` on stderr (markup escaped)."""
    (console or err_console).print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def fail(message: object, code: int = EXIT_USER_ERROR) -> NoReturn:
    """Print ``error: <message>`` and end the command with exit ``code`` (2: bad input)."""
    print_error(message)
    raise typer.Exit(code)


def user_message(e: BaseException) -> str | None:
    """The one-line message of a user error, or None when ``e`` is not one."""
    e = storage_error(e) or e  # a full disk, a read-only or forbidden location
    if isinstance(e, OrganetError):  # one line, whatever the message holds
        return "; ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        from organet.config import format_validation_error

        return format_validation_error(e, e.title).replace("\n", "; ")
    return None


def add_bug_note(e: BaseException) -> None:
    """Mark ``e`` as a bug: the note is printed after its traceback (on Python < 3.11,
    where exceptions have no notes, it is printed at once, before the traceback)."""
    if BUG_NOTE in getattr(e, "__notes__", ()):
        return
    if sys.version_info >= (3, 11):
        e.add_note(BUG_NOTE)
    else:  # pragma: no cover - Python 3.10
        print(BUG_NOTE, file=sys.stderr)


def handle_errors(fn: F) -> F:
    """Decorate a command: user errors become one ``error:`` line and exit 2; blocks that
    kept failing exit 1 with their list; any other exception is re-raised with
    :data:`BUG_NOTE` attached, so its traceback ends with how to report it."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as e:
            msg = user_message(e)
            if msg is not None:
                fail(msg)
            if isinstance(e, BlockFailures):
                fail(e, EXIT_BLOCKS_FAILED)
            add_bug_note(e)
            raise

    wrapper.__dict__["__organet_command__"] = True  # lets a test check that every command is wrapped
    return cast(F, wrapper)


__all__ = [
    "BUG_NOTE",
    "EXIT_BLOCKS_FAILED",
    "EXIT_USER_ERROR",
    "add_bug_note",
    "err_console",
    "fail",
    "handle_errors",
    "print_error",
    "print_warning",
    "user_message",
]
