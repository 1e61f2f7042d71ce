"""Run a block function over a block plan: in this process or on Dask, with the same code."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from organet.errors import BlockFailures, InputError, OrganetError, storage_error
from organet.progress import ProgressFn, advance, announce
from organet.volumes.blocks import Block
from organet.volumes.geometry import Shape3

from .faults import inject
from .ledger import Ledger, decode, encode, write_entry

SKIPPED = "skipped"


@dataclass(frozen=True)
class Skip:
    """Return ``Skip(result)`` from a block function for a block with nothing to do
    (e.g. outside the sample mask); it is recorded as ``"skipped"``."""

    result: Any = None


@dataclass(frozen=True)
class _Call:
    """What a worker runs for one block: the function, then the ledger entry."""

    fn: Callable[[Block], Any]
    stage: str
    stage_dir: str | None

    def __call__(self, block: Block) -> dict[str, Any]:
        inject(self.stage, block.index)
        out = self.fn(block)
        status, result = (SKIPPED, out.result) if isinstance(out, Skip) else ("done", out)
        if self.stage_dir is not None:
            write_entry(self.stage_dir, block.index, status, result)
            result = decode(encode(result))  # the same types a resumed run reads back
        return {"status": status, "result": result}


def _fatal(e: Exception) -> OrganetError | None:
    """The user error a block failure is, if a retry cannot help: bad input (a damaged
    chunk, NaN data) or storage that cannot take the output (full disk, read-only)."""
    return e if isinstance(e, OrganetError) else storage_error(e)


def _user_error(e: OrganetError, stage: str, block: Block, ledger: Ledger | None) -> OrganetError:
    """``e`` (same class) with the block it came from and what is kept for a rerun."""
    keep = f"; finished blocks are kept in {ledger.path}" if ledger is not None else ""
    msg = f"{e} (block {block.name} of {stage}{keep})"
    try:
        return type(e)(msg)
    except TypeError:  # a subclass with another constructor
        return InputError(msg)


def run_blocks(
    fn: Callable[[Block], Any],
    blocks: Iterable[Block],
    *,
    stage: str,
    ledger: Ledger | None = None,
    client: Any | None = None,
    retries: int = 2,
    progress: ProgressFn | None = None,
) -> dict[Shape3, dict[str, Any]]:
    """Run ``fn(block)`` for every block not yet finished in ``ledger``.

    Parameters
    ----------
    fn
        Picklable block function (a module-level function or ``functools.partial`` of one);
        returns a JSON-able result (NumPy arrays allowed) or :class:`Skip`.
    blocks
        The blocks (usually a :class:`~organet.volumes.blocks.BlockPlan`).
    stage
        Name of the pass ("predict", "pyramid s1", ...): the ledger section and progress label.
    ledger
        Where finished blocks are recorded (by the worker, after ``fn`` returns); blocks
        found there are not run again. None: nothing is recorded.
    client
        A ``distributed.Client``: blocks run as Dask tasks; None: serially here.
    retries
        Extra attempts per block after an exception (Dask also reschedules lost workers).

    Returns
    -------
    ``{block index: {"status": "done" | "skipped", "result": ...}}`` for every block,
    in block order.

    Raises
    ------
    OrganetError
        At once, not retried, when a block meets bad input (a damaged chunk, NaN data) or
        storage that cannot take its output (:class:`~organet.errors.StorageError`: full
        disk, read-only, no permission): the same class, its message followed by the
        block; finished blocks stay in the ledger.
    BlockFailures
        Blocks that failed ``retries + 1`` times (the others are kept in the ledger).

    On any exception the ledger's lock is released (the run is over; a rerun resumes).
    """
    if retries < 0:
        raise InputError(f"retries must be >= 0, got {retries}")
    try:
        blocks = list(blocks)
        done = ledger.entries(stage) if ledger is not None else {}
        results: dict[Shape3, dict[str, Any]] = {b.index: done[b.index] for b in blocks if b.index in done}
        todo = [b for b in blocks if b.index not in done]
        total = len(blocks)
        announce(progress, stage, total)
        if results:
            advance(progress, stage, len(results), total)
        call = _Call(fn, stage, str(ledger.stage_dir(stage)) if ledger is not None else None)
        failures: dict[Shape3, str] = {}
        if client is None:
            for b in todo:
                for _ in range(retries + 1):
                    try:
                        results[b.index] = call(b)
                        failures.pop(b.index, None)
                        break
                    except Exception as e:  # noqa: BLE001 - reported per block
                        fatal = _fatal(e)
                        if fatal is not None:
                            raise _user_error(fatal, stage, b, ledger) from None
                        failures[b.index] = f"{type(e).__name__}: {e}"
                advance(progress, stage, 1, total)
        else:
            from distributed import as_completed

            prefix = f"organet-{stage.replace(' ', '-')}-{secrets.token_hex(4)}"
            futures = {client.submit(call, b, key=f"{prefix}-{b.name}", retries=retries, pure=False): b for b in todo}
            for fut in as_completed(list(futures)):
                b = futures[fut]
                if fut.status == "finished":
                    results[b.index] = fut.result()
                else:
                    try:
                        exc = fut.exception()
                    except BaseException as e:  # noqa: BLE001 - a cancelled future raises here
                        exc = e
                    fatal = _fatal(exc) if isinstance(exc, Exception) else None
                    if fatal is not None:
                        client.cancel([f for f in futures if not f.done()])
                        raise _user_error(fatal, stage, b, ledger) from None
                    failures[b.index] = f"{type(exc).__name__}: {exc}"
                advance(progress, stage, 1, total)
        if failures:
            raise BlockFailures(stage, failures, total, str(ledger.path) if ledger is not None else "")
        return {b.index: results[b.index] for b in blocks}
    except BaseException:
        if ledger is not None and ledger.lock is not None:  # the run ends here: let go of its output
            ledger.lock.release()
        raise


__all__ = ["SKIPPED", "Skip", "run_blocks"]
