"""The blockwise runner and its ledger: finished blocks are never run again, results come
back the same from a fresh or a resumed run, failures are retried then listed."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from organet.blockwise import Ledger, Skip, run_blocks
from organet.errors import BlockFailures, IncompatibleError
from organet.volumes import Roi
from organet.volumes.blocks import Block, plan_blocks

PLAN = plan_blocks(Roi((0, 0, 0), (8, 8, 16)), (4, 4, 4), (4, 8, 8))  # 2 x 1 x 2 blocks


def work(calls: str, fail: tuple[int, int, int] | None, block: Block) -> object:
    """Records each call in the folder ``calls``; fails on block ``fail``; skips block (1, 0, 1)."""
    with open(Path(calls) / block.name, "a") as f:
        f.write("x")
    if block.index == fail:
        raise OSError(f"disk full at {block.name}")
    if block.index == (1, 0, 1):
        return Skip({"why": "no sample"})
    return {"sum": np.arange(3, dtype=np.int64) + block.index[2], "name": block.name}


def ncalls(calls: Path) -> dict[str, int]:
    return {p.name: len(p.read_text()) for p in calls.iterdir()}


def test_finished_blocks_are_not_run_again_and_results_round_trip(tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    ledger = Ledger.open(tmp_path / "led", {"run": 1})
    with pytest.raises(BlockFailures, match=r"(?s)1 of 4 blocks failed \(pass\).*block 0_0_1: OSError: disk full"):
        run_blocks(functools.partial(work, str(calls), (0, 0, 1)), PLAN, stage="pass", ledger=ledger, retries=1)
    assert ncalls(calls) == {"0_0_0": 1, "0_0_1": 2, "1_0_0": 1, "1_0_1": 1}  # one retry of the failing block
    resumed = run_blocks(
        functools.partial(work, str(calls), None), PLAN, stage="pass", ledger=Ledger.open(tmp_path / "led", {"run": 1})
    )
    assert ncalls(calls) == {"0_0_0": 1, "0_0_1": 3, "1_0_0": 1, "1_0_1": 1}  # only the missing block ran
    assert list(resumed) == [b.index for b in PLAN]
    assert resumed[(1, 0, 1)] == {"status": "skipped", "result": {"why": "no sample"}}
    r = resumed[(0, 0, 1)]["result"]
    assert r["name"] == "0_0_1" and r["sum"].dtype == np.int64 and r["sum"].tolist() == [1, 2, 3]
    assert resumed[(0, 0, 0)]["result"]["sum"].tolist() == [0, 1, 2]  # read back from the ledger


def test_a_ledger_of_other_settings_is_refused_unless_overwrite(tmp_path):
    Ledger.open(tmp_path / "led", {"threshold": 0.5})
    with pytest.raises(IncompatibleError, match=r"other settings \(threshold: 0.5 -> 0.7\)"):
        Ledger.open(tmp_path / "led", {"threshold": 0.7})
    assert Ledger.open(tmp_path / "led", {"threshold": 0.7}, overwrite=True).created
