"""Fault injection for tests and the crash benchmark, outside every public signature.

When the environment variable ``ORGANET_TEST_FAULTS`` names a JSON file, the runner
calls :func:`inject` before each block. The file holds a list of faults::

    [{"stage": "predict", "blocks": [[0, 1, 0]], "times": 1, "action": "raise" | "kill",
      "counter_dir": "/tmp/faults"}]

A listed block fails its first ``times`` attempts (-1: always): ``raise`` raises
RuntimeError, ``kill`` SIGKILLs the process running it (the whole command in-process,
a worker on Dask), ``sleep`` waits ``"seconds"`` (default 60) and then runs the block
(a run that is busy for a while, e.g. to start a second writer meanwhile). Attempts
are counted by files in ``counter_dir``, shared by all processes. The variable is read
at each block, so a test can rewrite the file between runs; Dask workers inherit it
when they start.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

ENV = "ORGANET_TEST_FAULTS"


def _attempt(counter_dir: str, name: str) -> int:
    d = Path(counter_dir)
    d.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        try:
            os.close(os.open(d / f"{name}.{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return n
        except FileExistsError:
            n += 1


def inject(stage: str, index: Sequence[int]) -> None:
    """Fail this block if the fault file says so (no-op without ``ORGANET_TEST_FAULTS``)."""
    path = os.environ.get(ENV)
    if not path or not os.path.exists(path):
        return
    faults = json.loads(Path(path).read_text())
    for f in faults if isinstance(faults, list) else [faults]:
        blocks = [list(map(int, b)) for b in f.get("blocks", [])]
        if f.get("stage", stage) != stage or list(map(int, index)) not in blocks:
            continue
        name = f"{stage.replace(' ', '-')}-{'_'.join(map(str, index))}"
        n = _attempt(f["counter_dir"], name)
        times = int(f.get("times", -1))
        if times < 0 or n < times:
            action = f.get("action", "raise")
            if action == "sleep":
                time.sleep(float(f.get("seconds", 60)))
                continue
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected failure of block {tuple(index)} in {stage} (attempt {n + 1})")
