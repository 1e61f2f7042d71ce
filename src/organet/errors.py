"""organet's own exception classes.

Everything a user can get wrong (a missing file, a bad option value, a config typo,
a model that does not fit the data) raises a subclass of :class:`OrganetError`; the
command line prints it as one ``error:`` line and exits with code 2. Any other
exception is a defect in organet and is shown with its traceback.

The classes also derive from :class:`ValueError`, so library callers that catch
``ValueError`` keep working.
"""

from __future__ import annotations

import errno
import os


class OrganetError(ValueError):
    """A problem with the user's input, not with organet: printed as one line (exit 2)."""


class InputError(OrganetError):
    """Bad input: a missing or unreadable file, a bad option value, an ROI outside a volume, ..."""


class VolumeError(InputError):
    """Bad volume input: missing path, unknown format, bad metadata, ROI outside a volume, ..."""


class ConfigError(OrganetError):
    """A config file that cannot be used; the message names the key."""


class CheckpointError(InputError):
    """A checkpoint that cannot be used: unreadable, foreign, or mismatching."""


class IncompatibleError(OrganetError):
    """Inputs that do not fit together: voxel sizes, shapes, a model and its data, an earlier run."""


class StorageError(OrganetError):
    """The place an output goes cannot take it: a full disk or quota, a read-only file
    system, no permission. Not retried; what was finished is kept for a rerun."""


STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENAMETOOLONG}
)
"""``OSError`` numbers that mean the storage, not organet, is the problem (retrying does not help)."""


def storage_error(e: BaseException) -> StorageError | None:
    """``e`` as a one-line :class:`StorageError` when it is an ``OSError`` of
    :data:`STORAGE_ERRNOS` (full disk, read-only, no permission); None otherwise."""
    if isinstance(e, StorageError):
        return e
    if not isinstance(e, OSError) or e.errno not in STORAGE_ERRNOS:
        return None
    where = e.filename if e.filename is not None else "the output"
    why = e.strerror or os.strerror(e.errno or 0)
    hint = {
        errno.ENOSPC: "free some space (or write elsewhere)",
        errno.EDQUOT: "free some of your quota (or write elsewhere)",
        errno.EROFS: "write to a writable location",
    }.get(e.errno or 0, "check the permissions of the location (or write elsewhere)")
    return StorageError(f"cannot write {where}: {why} (errno {e.errno}); {hint}, then rerun the same command")


class BlockFailures(RuntimeError):
    """Some blocks of a blockwise pass still failed after their retries.

    Not a user error: the command exits 1 and lists the blocks. Finished blocks are
    kept (in the ledger ``where``), so rerunning the same command resumes.
    """

    def __init__(self, stage: str, failures: dict[tuple[int, int, int], str], total: int, where: str = "") -> None:
        self.stage, self.failures, self.total, self.where = stage, dict(sorted(failures.items())), total, where
        lines = [f"block {'_'.join(map(str, b))}: {msg}" for b, msg in self.failures.items()]
        keep = f"; finished blocks are kept in {where} and a rerun of the same command resumes" if where else ""
        super().__init__(f"{len(failures)} of {total} blocks failed ({stage}){keep}:\n  " + "\n  ".join(lines))


__all__ = [
    "BlockFailures",
    "CheckpointError",
    "ConfigError",
    "IncompatibleError",
    "InputError",
    "OrganetError",
    "STORAGE_ERRNOS",
    "StorageError",
    "VolumeError",
    "storage_error",
]
