"""One writer per output: a lock file beside the output's ledger, naming host and pid.

:class:`OutputLock` is taken by :meth:`organet.blockwise.ledger.Ledger.open` (so every
resumable output and every ledger-backed pass has one) and released when the ledger is
removed (the run is complete), when the ledger object is collected, or when the process
exits. The file ``OUT.lock`` (JSON) says who writes::

    {"host": "node12", "pid": 4711, "started": "2026-12-03T10:00:00", "command": "organet predict ...",
     "token": "<random>"}

A second process that wants the same output is refused with that information. A lock
left by a process that no longer runs on this host (killed, crashed) is stale and taken
over with a warning; one from another host cannot be checked and is refused (delete the
file when that run is gone). A lock of this very process (a call that failed earlier) is
taken over silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import time
import warnings
import weakref
from pathlib import Path
from typing import Any

from organet.errors import InputError

LOCK_SUFFIX = ".lock"
_UNREADABLE_GRACE_S = 5.0  # a lock file being written right now is briefly empty


def lock_path_for(ledger_path: str | os.PathLike[str]) -> Path:
    """The lock file of a ledger: ``OUT.progress`` -> ``OUT.lock`` (else ``LEDGER.lock``)."""
    p = Path(ledger_path)
    stem = p.name.removesuffix(".progress") if p.name.endswith(".progress") else p.name
    return p.with_name(stem + LOCK_SUFFIX)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def read_lock(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The holder recorded in a lock file; None when absent or unreadable."""
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _release(path: Path, token: str) -> None:
    info = read_lock(path)
    if info is not None and info.get("token") == token:
        with contextlib.suppress(OSError):
            path.unlink()


class OutputLock:
    """A held lock file (see the module docstring). Use :meth:`acquire`."""

    def __init__(self, path: Path, token: str) -> None:
        self.path, self.token = path, token
        self._finalizer = weakref.finalize(self, _release, path, token)

    @classmethod
    def acquire(cls, path: str | os.PathLike[str], what: str) -> OutputLock:
        """Take the lock file ``path`` for writing ``what`` (named in messages).

        Raises :class:`~organet.errors.InputError` while another live process holds it.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(8)
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv else "",
            "token": token,
        }
        for _ in range(100):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                stale, seen = cls._stale(path, what)
                if stale:
                    cls._take_over(path, seen)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
                f.flush()
                os.fsync(f.fileno())
            return cls(path, token)
        raise InputError(f"cannot take the lock {path} for {what}: other processes keep taking it")

    @staticmethod
    def _stale(path: Path, what: str) -> tuple[bool, dict[str, Any] | None]:
        """(may the lock at ``path`` be taken over, what it held); raises while its holder runs."""
        info = read_lock(path)
        if info is None:
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                return False, None  # released meanwhile: try again
            if age < _UNREADABLE_GRACE_S:  # its writer is filling it in
                time.sleep(0.05)
                return False, None
            warnings.warn(f"taking over the unreadable lock file {path} (written {age:.0f} s ago)", stacklevel=4)
            return True, None
        host, pid = str(info.get("host", "?")), info.get("pid")
        since = f" since {info['started']}" if info.get("started") else ""
        holder = f"process {pid} on host {host}{since}" + (f" ({info['command']})" if info.get("command") else "")
        if host != socket.gethostname():
            raise InputError(
                f"{what} is being written by {holder}: lock file {path}; wait for that run to end, or delete the "
                "lock file if it is gone (it runs on another host, so organet cannot check)"
            )
        if not isinstance(pid, int) or pid == os.getpid():
            return True, info  # this process (an earlier call that failed) or a file of no process
        if _pid_alive(pid):
            raise InputError(
                f"{what} is being written by {holder}: lock file {path}; wait for it to finish or stop it first "
                "(two runs writing one output would mix their blocks)"
            )
        warnings.warn(
            f"taking over the lock {path} of {holder}, which no longer runs (killed or crashed); resuming its output",
            stacklevel=4,
        )
        return True, info

    @staticmethod
    def _take_over(path: Path, seen: dict[str, Any] | None) -> None:
        """Move the stale lock ``seen`` aside by a rename; should another process have
        replaced it meanwhile (it took the lock over first), put that one back."""
        aside = path.with_name(f".{path.name}.stale-{secrets.token_hex(4)}")
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            return
        if read_lock(aside) != seen:
            with contextlib.suppress(OSError):
                os.link(aside, path)  # fails if a third process holds it by now: then it wins
        aside.unlink(missing_ok=True)

    @property
    def held(self) -> bool:
        """True while the lock file is still this lock's."""
        info = read_lock(self.path)
        return info is not None and info.get("token") == self.token

    def release(self) -> None:
        """Remove the lock file if it is still this lock's."""
        self._finalizer()


__all__ = ["LOCK_SUFFIX", "OutputLock", "lock_path_for", "read_lock"]
