"""Progress bars for the core's :data:`organet.progress.ProgressFn` callbacks.

The core reports ``progress(stage, advance, total)``; :class:`ProgressBars` shows one rich
bar per stage on stderr (description, bar, done/total, elapsed, remaining)::

    with ProgressBars() as progress:
        preprocess_volume(vol, out, params, progress=progress)

A stage's total may change between calls (the bar follows); announcing a stage again
(``advance`` 0) starts its bar over. Stage names are shown literally (markup escaped).
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ProgressBars:
    """A :data:`~organet.progress.ProgressFn` that draws one bar per stage; use it as a
    context manager (the bars are shown between enter and exit)."""

    def __init__(self, console: Console | None = None, disable: bool = False, transient: bool = False) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            disable=disable,
            transient=transient,
        )
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, stage: str, advance: int, total: int) -> None:
        task = self.tasks.get(stage)
        if task is None:
            self.tasks[stage] = self.progress.add_task(escape(stage), total=total, completed=advance)
            return
        if advance == 0:  # the stage is announced again (a second pass): start its bar over
            self.progress.reset(task, total=total)
            return
        if self.progress.tasks[self._index(task)].total != total:
            self.progress.update(task, total=total)
        self.progress.advance(task, advance)

    def _index(self, task: TaskID) -> int:
        return next(i for i, t in enumerate(self.progress.tasks) if t.id == task)

    def completed(self, stage: str) -> float:
        """Units of ``stage`` reported so far (0 for an unknown stage)."""
        task = self.tasks.get(stage)
        return 0.0 if task is None else self.progress.tasks[self._index(task)].completed

    def __enter__(self) -> ProgressBars:
        self.progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.stop()


__all__ = ["ProgressBars"]
