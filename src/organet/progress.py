"""Progress reporting of the core: a plain callback, no terminal code.

Library functions that run for long take ``progress: ProgressFn | None``. They call
``progress(stage, advance, total)``: ``stage`` names the pass ("predict", "pyramid s1",
"statistics"...), ``advance`` is how many units were finished since the last call
(0 to announce a stage) and ``total`` the number of units of that stage. The command
line turns these calls into progress bars (``organet.cli.progress``); tests and
scripts pass nothing or a list's ``append``.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[str, int, int], None]


def announce(progress: ProgressFn | None, stage: str, total: int) -> None:
    """Tell ``progress`` that ``stage`` starts with ``total`` units (no-op without a callback)."""
    if progress is not None:
        progress(stage, 0, total)


def advance(progress: ProgressFn | None, stage: str, n: int, total: int) -> None:
    """Report ``n`` more finished units of ``stage`` (no-op without a callback)."""
    if progress is not None:
        progress(stage, n, total)


__all__ = ["ProgressFn", "advance", "announce"]
