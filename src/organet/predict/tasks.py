"""Run independent block tasks on a Dask client (or in this process), with retries.

Kept free of torch so analysis workers start fast.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable, Sequence


def run_tasks(
    fn: Callable[..., Any],
    items: Sequence[Any],
    client: Any | None = None,
    retries: int = 0,
    label: str = "blocks",
    progress: bool = False,
    key_prefix: str | None = None,
) -> tuple[dict[int, Any], dict[int, str]]:
    """Run ``fn(item)`` for every item on a Dask ``client`` (or in-process when None).

    Each task is retried ``retries`` times after an exception (a lost worker is
    rescheduled by Dask). Returns (results, failures), both keyed by item position;
    failures hold ``"ExceptionType: message"``.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    results: dict[int, Any] = {}
    failures: dict[int, str] = {}
    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task(label, total=len(items))
        if client is None:
            for i, item in enumerate(items):
                for _ in range(retries + 1):
                    try:
                        results[i] = fn(item)
                        failures.pop(i, None)
                        break
                    except Exception as e:  # noqa: BLE001 - reported per block
                        failures[i] = f"{type(e).__name__}: {e}"
                bar.advance(task)
            return results, failures
        from distributed import as_completed

        prefix = key_prefix or f"organet-{label.replace(' ', '-')}-{secrets.token_hex(4)}"
        futures = {client.submit(fn, item, key=f"{prefix}-{i}", retries=retries, pure=False): i
                   for i, item in enumerate(items)}
        for fut in as_completed(list(futures)):
            i = futures[fut]
            if fut.status == "finished":
                results[i] = fut.result()
            else:
                try:
                    exc = fut.exception()
                except BaseException as e:  # noqa: BLE001 - a cancelled future raises here
                    exc = e
                failures[i] = f"{type(exc).__name__}: {exc}"
            bar.advance(task)
        return results, failures
