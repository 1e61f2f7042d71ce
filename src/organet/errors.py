"""organet's own exception classes.

Everything a user can get wrong (a missing file, a bad option value, a config typo,
a model that does not fit the data) raises a subclass of :class:`OrganetError`; the
command line prints it as one ``error:`` line and exits with code 2. Any other
exception is a defect in organet and is shown with its traceback.

The classes also derive from :class:`ValueError`, so library callers that catch
``ValueError`` keep working.
"""

from __future__ import annotations


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


__all__ = ["CheckpointError", "ConfigError", "IncompatibleError", "InputError", "OrganetError", "VolumeError"]
