"""Result tables fit an 80-column terminal and never cut a number (no ellipsis)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from rich.console import Console

from organet.cli.tables import count, demo_table, evaluation_tables, score
from organet.demo.run import DemoResult
from organet.evaluate import Counts, EvaluationResult

# Lucchi++ scale and a whole-cell scale (6 billion voxels)
SMALL = Counts(tp=4_567_891, fp=398_765, fn=233_456, tn=125_161_168)
HUGE = Counts(tp=1_234_567_890, fp=98_765_432, fn=187_654_321, tn=6_167_588_123)


def render(*tables, width: int = 80) -> str:
    con = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    for t in tables:
        con.print(t)
    text = con.export_text()
    assert "…" not in text and "..." not in text, text
    assert max(len(line) for line in text.splitlines()) <= width, text
    return text


def result(per: dict[float, Counts] | None = None, binary: Counts | None = None, exclusion=(4, 4)) -> EvaluationResult:
    per = per or {}
    return EvaluationResult(
        per_threshold=per,
        binary=binary,
        pred_kind="binary" if binary is not None else "probability",
        pred_dtype="uint8",
        thresholds=tuple(per),
        exclusion=exclusion,
        exclusion_metric="taxicab",
        shape=(165, 768, 1024),
        block_shape=(64, 256, 256),
        masked=False,
    )


def assert_counts_whole(text: str, c: Counts) -> None:
    for n in (c.tp, c.fp, c.fn, c.tn):
        assert f"{n:,}" in text, (n, text)


@pytest.mark.parametrize("c", [SMALL, HUGE])
def test_single_threshold_evaluation_table(c):
    text = render(*evaluation_tables(result({0.5: c})))
    assert score(c.f1) in text and score(c.precision) in text and score(c.recall) in text and score(c.iou) in text
    assert_counts_whole(text, c)
    assert "exclusion 4 in / 4 out vox" in " ".join(text.split())


def test_sweep_table_has_every_threshold_and_count():
    per = {}
    for i in range(1, 20):
        t = round(0.05 * i, 2)
        k = i * 10_000_019
        per[t] = Counts(HUGE.tp - k, HUGE.fp + k // 3, HUGE.fn + k, HUGE.tn - k // 3)
    res = result(per)
    text = render(*evaluation_tables(res))
    for c in per.values():
        assert score(c.f1) in text
        assert_counts_whole(text, c)
    assert res.best_threshold == 0.05


def test_binary_prediction_and_undefined_scores():
    text = render(*evaluation_tables(result(binary=SMALL, exclusion=None)))
    assert score(SMALL.f1) in text and "exclusion none" in " ".join(text.split())
    assert_counts_whole(text, SMALL)
    empty = Counts(tp=0, fp=0, fn=0, tn=1_000)
    text = render(*evaluation_tables(result({0.5: empty})))
    assert "nan" in text and math.isnan(empty.f1)


def test_demo_table():
    res = DemoResult(
        out=Path("/tmp/organet-demo"),
        iterations=312,
        metrics={
            "4 in / 4 out": {"f1": 0.6512, "precision": 0.7011, "recall": 0.6079, "iou": 0.4827},
            "none": {"f1": 0.7034, "precision": 0.7515, "recall": 0.6611, "iou": 0.5425},
        },
        curves=Path("/tmp/organet-demo/run/curves.png"),
        prediction=Path("/tmp/organet-demo/prediction.zarr"),
    )
    text = render(demo_table(res))
    for m in res.metrics.values():
        for k in ("f1", "precision", "recall", "iou"):
            assert f"{m[k]:.4f}" in text
    assert "after 312 iterations" in text and "4 in / 4 out" in text


def test_formatting_helpers():
    assert count(6_167_588_123) == "6,167,588,123" and score(0.93456) == "0.935" and score(float("nan")) == "nan"
