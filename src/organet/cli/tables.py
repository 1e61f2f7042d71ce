"""Result tables of the commands, rendered with rich.

Every table fits an 80-column terminal without cutting a number: scores and counts
are in separate tables (a sweep has 19 rows of each), columns never shrink below their
widest cell, and a cell that cannot fit wraps instead of ending in an ellipsis.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table

if TYPE_CHECKING:  # pragma: no cover
    from organet.annotate.suggest import SuggestResult
    from organet.demo.run import DemoResult
    from organet.evaluate.blockwise import EvaluationResult
    from organet.evaluate.checkpoints import CheckpointEvaluation
    from organet.evaluate.instances import InstanceEvaluation
    from organet.evaluate.metrics import Counts
    from organet.model.registry import ModelEntry


def score(x: float, digits: int = 3) -> str:
    """A score such as F1 with ``digits`` decimals; ``nan`` when undefined."""
    return "nan" if math.isnan(x) else f"{x:.{digits}f}"


def count(n: int) -> str:
    """A voxel count with thousands separators."""
    return f"{n:,}"


def _table(
    title: str | None,
    columns: Iterable[str],
    rows: Sequence[tuple[Sequence[str], str | None]],
    caption: str | None = None,
    first_left: bool = False,
) -> Table:
    """A table whose columns are at least as wide as their widest cell (``fold``, never ``…``)."""
    cols = list(columns)
    t = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for i, name in enumerate(cols):
        width = max([len(name)] + [len(r[0][i]) for r in rows])
        t.add_column(
            name, justify="left" if first_left and i == 0 else "right", no_wrap=True, overflow="fold", min_width=width
        )
    for cells, style in rows:
        t.add_row(*cells, style=style)
    return t


def _exclusion_text(result: EvaluationResult) -> str:
    if result.exclusion is None:
        return "none"
    inner, outer = result.exclusion
    return f"{inner} in / {outer} out vox ({result.exclusion_metric})"


def evaluation_tables(result: EvaluationResult, title: str | None = None) -> list[Table]:
    """Two tables of an evaluation: scores per threshold (thr, precision, recall, F1, IoU,
    accuracy; the best F1 in bold) and voxel counts per threshold (TP, FP, FN, TN)."""
    per: Mapping[float, Counts] = dict(result.per_threshold)
    best = result.best_threshold
    entries: list[tuple[str, Counts, str | None]] = []
    if result.binary is not None:
        entries.append(("—", result.binary, None))
    entries += [(f"{t:g}", c, "bold" if t == best else None) for t, c in per.items()]
    caption = (
        f"shape {tuple(result.shape)} (z, y, x) · exclusion {_exclusion_text(result)} · "
        f"mask {'yes' if result.masked else 'no'} · pred {result.pred_kind} ({result.pred_dtype})"
    )
    scores = _table(
        title or "Evaluation",
        ("thr", "precision", "recall", "F1", "IoU", "accuracy"),
        [
            ([label, score(c.precision), score(c.recall), score(c.f1), score(c.iou), score(c.accuracy)], style)
            for label, c, style in entries
        ],
        caption=caption,
    )
    counts = _table(
        "Voxel counts",
        ("thr", "TP", "FP", "FN", "TN"),
        [([label, count(c.tp), count(c.fp), count(c.fn), count(c.tn)], style) for label, c, style in entries],
    )
    return [scores, counts]


def checkpoint_table(result: CheckpointEvaluation) -> Table:
    """Scores per checkpoint (iteration, F1, precision, recall, IoU), then their mean and
    sample SD (ddof = 1) in bold."""
    metrics = ("f1", "precision", "recall", "iou")
    rows: list[tuple[Sequence[str], str | None]] = [
        ([str(r.iteration), *(score(r.metric(m), 4) for m in metrics)], None) for r in result.rows
    ]
    rows.append((["mean", *(score(result.mean[m], 4) for m in metrics)], "bold"))
    rows.append((["SD", *(score(result.sd[m], 4) for m in metrics)], "bold"))
    excl = "none" if result.exclusion is None else f"{result.exclusion[0]} in / {result.exclusion[1]} out vox"
    return _table(
        f"{len(result.rows)} checkpoints ({result.organelle})",
        ("iteration", "F1", "precision", "recall", "IoU"),
        rows,
        caption=f"SD: sample standard deviation (ddof = 1) · exclusion {excl} · threshold {result.threshold:g}",
    )


def demo_table(result: DemoResult) -> Table:
    """The demo's held-out scores, one row per exclusion zone."""
    rows = [
        ([name, *(score(m[k], 4) for k in ("f1", "precision", "recall", "iou"))], None)
        for name, m in result.metrics.items()
    ]
    return _table(
        f"organet demo: held-out data after {result.iterations} iterations",
        ("exclusion zone", "F1", "precision", "recall", "IoU"),
        rows,
        caption=f"curves: {result.curves}\nprediction: {result.prediction}",
        first_left=True,
    )


def models_table(entries: Iterable[ModelEntry], cached: Mapping[str, bool], caption: str | None = None) -> Table:
    """The pretrained models, one row each: name, organelle, voxel size (nm; one number when
    isotropic), normalization, kind, licence (both shortened) and whether the file is cached.
    Text columns, left-aligned, with a light frame so seven of them fit 80 columns."""
    rows = [
        (
            [
                e.name,
                e.organelle,
                e.voxel_size_text,
                e.short_normalization,
                e.kind,
                e.short_licence,
                "yes" if cached.get(e.name) else "no",
            ],
            None,
        )
        for e in entries
    ]
    t = _table(
        "Pretrained models",
        ("name", "organelle", "voxel nm", "normalization", "kind", "licence", "cached"),
        rows,
        caption=caption,
    )
    t.box, t.show_edge, t.pad_edge, t.padding = box.SIMPLE_HEAD, False, False, (0, 1, 0, 0)
    for c in t.columns:
        c.justify = "left"
    return t


def print_tables(console: Any, tables: Iterable[Table]) -> None:
    """Print ``tables`` one after the other."""
    for t in tables:
        console.print(t)


def boxes_table(res: SuggestResult) -> Table:
    """The boxes, one row each: rank, mean uncertainty (bit), --roi-vox string, volume (µm³), sample fraction."""
    rows = [
        (
            [
                str(b.rank),
                score(b.score),
                b.roi_vox,
                f"{b.row(res.voxel_size, res.offset)['volume_um3']:.4g}",
                score(b.sample_fraction, 2),
            ],
            None,
        )
        for b in res.boxes
    ]
    return _table(
        f"{len(res.boxes)} of {res.requested} boxes ({res.strategy}, {res.score})",
        ("rank", "bit", "roi_vox (z,y,x)", "µm³", "sample"),
        rows,
        caption=f"box {res.box_vox[0]} x {res.box_vox[1]} x {res.box_vox[2]} voxels · region {res.region}",
    )


__all__ = [
    "boxes_table",
    "checkpoint_table",
    "count",
    "demo_table",
    "evaluation_tables",
    "models_table",
    "print_tables",
    "score",
]


def plan_table(plans: Sequence[Any], chosen: Any, budget: int, region: Sequence[int] | None) -> Table:
    """Tiles (:class:`~organet.predict.plan.TilePlan`) with memory, useful fraction and,
    for a region, tiles and work; the chosen one bold, those over the budget dim."""
    columns = ["tile in", "tile out", "step", "useful", "memory GiB"]
    if region is not None:
        columns += ["tiles", "work (T MAC)"]
    rows = []
    for p in plans:
        cells = [
            "x".join(map(str, p.tile_in)),
            "x".join(map(str, p.tile_out)),
            "x".join(map(str, p.step)),
            f"{100 * p.useful:.1f} %",
            f"{p.memory / 2**30:.2f}",
        ]
        if region is not None:
            cells += [count(p.tiles), f"{p.work / 1e12:.2f}"]
        style = "bold green" if chosen is not None and p.tile_in == chosen.tile_in else None
        rows.append((cells, style if p.memory <= budget else "dim"))
    where = f" for a region of {'x'.join(map(str, region))} voxels" if region is not None else ""
    return _table(
        f"Valid tiles{where}",
        columns,
        rows,
        caption=f"memory budget {budget / 2**30:.2f} GiB per forward pass; dim: over budget; bold: the plan",
    )


def instance_tables(res: InstanceEvaluation) -> list[Table]:
    """Two tables of an :class:`~organet.evaluate.instances.InstanceEvaluation`: the matching
    per IoU threshold, and the segmentation errors (ARAND, VI, merges, splits)."""
    sweep = _table(
        f"Instances: {res.pred_objects} predicted, {res.true_objects} true",
        ("IoU", "TP", "FP", "FN", "precision", "recall", "F1", "AP"),
        [
            (
                [
                    f"{m.iou:.2f}",
                    str(m.tp),
                    str(m.fp),
                    str(m.fn),
                    score(m.precision),
                    score(m.recall),
                    score(m.f1),
                    score(m.ap),
                ],
                "bold" if abs(m.iou - 0.5) < 1e-9 else None,
            )
            for m in res.sweep
        ],
        caption=f"mean over IoU {res.sweep[0].iou:g}-{res.sweep[-1].iou:g}: F1 {score(res.mean_f1)}, "
        f"AP {score(res.mean_ap)}",
    )
    pairs = ", ".join(f"{p.a}+{p.b} (gap {p.gap})" for p in res.merged_pairs) or "none"
    errors = _table(
        "Segmentation errors (inside true objects)",
        ("ARAND", "precision", "recall", "VI split", "VI merge", "merges", "splits"),
        [
            (
                [
                    score(res.arand),
                    score(res.arand_precision),
                    score(res.arand_recall),
                    score(res.vi_split),
                    score(res.vi_merge),
                    str(len(res.merges)),
                    str(len(res.splits)),
                ],
                None,
            )
        ],
        caption=f"VI in bits; merges/splits at overlap {res.min_overlap:g}; merged true pairs: {pairs}",
    )
    return [sweep, errors]
