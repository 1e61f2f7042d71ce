"""Concurrent writers, full disks and read-only locations.

* A second process writing the same output is refused (lock file with host and pid);
  the lock of a process that was killed is taken over with a warning, and the output
  it left is resumed to the same bytes.
* A disk that fills up (a zarr store that raises ``OSError(ENOSPC)`` after a few chunks)
  or a read-only location ends with one ``error:`` line (exit 2), the output stays
  ``OUT.partial`` (never renamed, its run record not complete), and a rerun resumes.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import zarr.storage
from typer.testing import CliRunner

from organet.blockwise.faults import ENV
from organet.blockwise.lock import OutputLock, read_lock
from organet.blockwise.output import read_run
from organet.cli import app
from organet.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("crash_resume", ROOT / "benchmarks" / "crash_resume.py")
assert _spec is not None and _spec.loader is not None
cr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cr)

runner = CliRunner()
BLOCK = [16, 16, 16]


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("storage")
    cr._prepare(d, [32, 32, 48])
    r = runner.invoke(app, cr._command(d, d / "ref.zarr", BLOCK, None)[3:])
    assert r.exit_code == 0, r.output
    return d


def _args(d: Path, out: Path) -> list[str]:
    return cr._command(d, out, BLOCK, None)[3:]


def _one_error(output: str) -> str:
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in output, output
    return errors[0]


# --------------------------------------------------------------------------- concurrency


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(d: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.zarr"
    lock = tmp_path / "o.zarr.lock"
    faults = tmp_path / "sleep.json"
    spec = [
        {
            "stage": "predict",
            "blocks": [[0, 1, 1]],
            "action": "sleep",
            "seconds": 120,
            "counter_dir": str(tmp_path / "c"),
        }
    ]
    faults.write_text(json.dumps(spec))
    env = {**{k: v for k, v in os.environ.items() if k != ENV}, ENV: str(faults), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        cr._command(d, out, BLOCK, None),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        t0 = time.time()
        while not (tmp_path / "c").is_dir():  # the first run is inside its predict pass, sleeping
            assert first.poll() is None and time.time() - t0 < 120, "the first run ended early"
            time.sleep(0.05)
        holder = read_lock(lock)
        assert holder is not None and holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        for extra in ([], ["--overwrite"]):  # not even --overwrite takes a live run's output
            r = runner.invoke(app, [*_args(d, out), *extra])
            assert r.exit_code == 2, r.output
            line = _one_error(r.output)
            assert f"process {first.pid} on host {socket.gethostname()}" in line and str(lock) in line, line
        assert read_lock(lock) == holder and (tmp_path / "o.zarr.partial").is_dir()
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # the holder is dead now: its lock is stale, taken over with a warning, and the run resumes
    env.pop(ENV)
    r = subprocess.run(cr._command(d, out, BLOCK, None), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"taking over the lock {lock} of process {first.pid}" in r.stderr and "no longer runs" in r.stderr
    assert "done before" in r.stdout
    assert cr._identical(out, d / "ref.zarr") == "" and not lock.exists()


def test_a_lock_from_another_host_is_refused_with_what_to_do(d: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.zarr"
    lock = tmp_path / "o.zarr.lock"
    lock.write_text(json.dumps({"host": "node-elsewhere", "pid": 4242, "started": "2026-12-01T08:00:00", "token": "x"}))
    r = runner.invoke(app, _args(d, out))
    assert r.exit_code == 2
    line = _one_error(r.output)
    assert "process 4242 on host node-elsewhere since 2026-12-01T08:00:00" in line and "delete the lock file" in line
    assert not out.exists() and not (tmp_path / "o.zarr.partial").exists() and read_lock(lock)["pid"] == 4242


def test_lock_ownership(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    a = OutputLock.acquire(path, "x")
    assert a.held and read_lock(path)["pid"] == os.getpid()
    b = OutputLock.acquire(path, "x")  # the same process again (an earlier call failed): taken silently
    assert b.held and not a.held
    a.release()  # not a's any more: left alone
    assert path.exists() and b.held
    b.release()
    assert not path.exists()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        path.write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid, "token": "t"}))
        with pytest.raises(InputError, match=f"being written by process {sleeper.pid}"):
            OutputLock.acquire(path, "x")
    finally:
        sleeper.kill()
        sleeper.wait()
    with pytest.warns(UserWarning, match=f"taking over the lock {path} of process {sleeper.pid}"):
        c = OutputLock.acquire(path, "x")
    assert c.held
    del c  # collected: released
    assert not path.exists()


# --------------------------------------------------------------------------- full disk, read-only


def _failing_store(monkeypatch: pytest.MonkeyPatch, code: int, after: int) -> list[str]:
    """Chunk writes into an ``*.partial`` output fail with ``OSError(code)`` after ``after`` of them."""
    written: list[str] = []
    original = zarr.storage.LocalStore.set

    async def set_(self, key, value):  # type: ignore[no-untyped-def]
        path = Path(self.root) / key
        if ".partial" in str(path) and "/c/" in f"/{key}":
            if len(written) >= after:
                raise OSError(code, os.strerror(code), str(path))
            written.append(key)
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", set_)
    return written


@pytest.mark.parametrize(
    "code, words", [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")]
)
def test_a_full_disk_or_read_only_store_ends_in_one_line_and_the_output_stays_incomplete(
    d: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, words: str
) -> None:
    out = tmp_path / "o.zarr"
    written = _failing_store(monkeypatch, code, after=6 if code == errno.ENOSPC else 0)
    r = runner.invoke(app, _args(d, out))
    assert r.exit_code == 2, r.output
    line = _one_error(r.output)
    assert words in line and f"errno {code}" in line and "rerun the same command" in line, line
    assert "o.zarr.partial" in line and "o.zarr.progress" in line  # where, and what is kept
    assert len(written) == (6 if code == errno.ENOSPC else 0)
    partial = tmp_path / "o.zarr.partial"
    assert not out.exists() and partial.is_dir() and "complete" not in (read_run(partial) or {})
    assert not (tmp_path / "o.zarr.lock").exists()  # the failed run let go of its output
    monkeypatch.undo()  # space again
    r = runner.invoke(app, _args(d, out))
    assert r.exit_code == 0, r.output
    assert cr._identical(out, d / "ref.zarr") == ""


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_read_only_output_folder_ends_in_one_line(d: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = runner.invoke(app, _args(d, ro / "o.zarr"))
        assert r.exit_code == 2, r.output
        line = _one_error(r.output)
        assert "Permission denied" in line and str(ro) in line, line
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)
