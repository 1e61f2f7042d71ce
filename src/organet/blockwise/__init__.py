"""The one blockwise runner: a pass = a block function + a ledger + retries + progress.

:func:`run_blocks` runs a picklable ``fn(block)`` over the blocks of a
:class:`~organet.volumes.blocks.BlockPlan`, serially in this process or on a Dask
client (:func:`dask_client`: local, SLURM/LSF/PBS, or an existing scheduler) through
the same code, so both give the same bytes. A :class:`Ledger` records every finished
block durably (with its JSON result), so a killed pass resumes; blocks that still fail
after their retries raise :class:`~organet.errors.BlockFailures` listing them.
"""

from organet.errors import BlockFailures

from .cluster import dask_client
from .ledger import Ledger
from .runner import Skip, run_blocks

__all__ = ["BlockFailures", "Ledger", "Skip", "dask_client", "run_blocks"]
