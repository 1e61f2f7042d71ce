"""Blockwise, resumable prediction on Dask (or in-process).

The ROI is cut into *blocks* whose shape is a whole multiple of both the tile
step (see :mod:`organet.predict.tiled`) and the output chunk shape, with the block
grid, the tile grid and the chunk grid all starting at the ROI origin. So every
block is a set of whole tiles and whole chunks: no two tasks ever write the same
chunk, and each block's output equals the single-process tiled result
(bit-identical uint8).

Output layout while running (``OUT.zarr.partial``, renamed to ``OUT.zarr`` when
complete, so nothing half-written looks finished)::

    OUT.zarr.partial/probability/s0   uint8 0..255  (z, y, x), ROI voxels
    OUT.zarr.partial/mask/s0          uint8 0/1
    OUT.zarr.partial  root attribute "organet_run": the run's settings (a rerun must match)
    OUT.zarr.progress/Z_Y_X           one marker per finished block, written after the
                                      block's data ("done"/"skipped"); removed at the end

A rerun of the same command skips blocks with a marker; a block without one is
recomputed whole (its chunks are overwritten), so a run killed at any point and
rerun gives the same bytes as an uninterrupted run. When all blocks are done a
multiscale pyramid (s1, s2, ... factor 2: mean for probability, max for mask) and
the OME-Zarr 0.5 metadata are written, then the folder is renamed.

Sizes and offsets are in voxels, (z, y, x), unless named ``_nm``.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import os
import re
import secrets
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np

from organet.predict.run import model_factor
from organet.predict.tasks import run_tasks
from organet.predict.tiled import Shape3, TilePlan, default_tile_shape, plan_tiles, predict_tiles, probability_to_uint8
from organet.volumes import Roi, Volume, VolumeError, open_volume
from organet.volumes.ome_zarr import ORGANET_KEY, OME_VERSION, replace_path

RUN_KEY = "organet_run"
PARTIAL_SUFFIX = ".partial"
PROGRESS_SUFFIX = ".progress"
IMAGES = ("probability", "mask")


class BlockFailures(RuntimeError):
    """Some blocks still failed after their retries; the partial output is kept for a rerun."""

    def __init__(self, failures: dict[Shape3, str], plan: "BlockPlan", partial: Path) -> None:
        self.failures, self.partial = dict(sorted(failures.items())), partial
        lines = [f"block {b} (ROI {plan.block_roi(b)}): {msg}" for b, msg in self.failures.items()]
        super().__init__(
            f"{len(failures)} of {len(plan)} blocks failed; finished blocks are kept in {partial} and a rerun of "
            "the same command resumes:\n  " + "\n  ".join(lines)
        )


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class BlockPlan:
    """Blocks of ``block_shape`` voxels covering ``roi`` (volume voxels), starting at its origin."""

    roi: Roi
    block_shape: Shape3

    @property
    def grid(self) -> Shape3:
        return tuple(math.ceil(r / b) for r, b in zip(self.roi.shape, self.block_shape))  # type: ignore[return-value]

    def __len__(self) -> int:
        return math.prod(self.grid)

    def indices(self) -> Iterator[Shape3]:
        yield from itertools.product(*(range(g) for g in self.grid))  # type: ignore[misc]

    def block_roi(self, index: Sequence[int]) -> Roi:
        """The block's region in volume voxels (clipped to the ROI)."""
        start = [o + i * b for o, i, b in zip(self.roi.offset, index, self.block_shape)]
        stop = [min(s + b, e) for s, b, e in zip(start, self.block_shape, self.roi.end)]
        return Roi(start, [b - a for a, b in zip(start, stop)])


def block_unit(step: Sequence[int], chunks: Sequence[int]) -> Shape3:
    """Smallest block shape that is a whole number of tile steps and of output chunks."""
    return tuple(math.lcm(int(s), int(c)) for s, c in zip(step, chunks))  # type: ignore[return-value]


def default_chunks(step: Sequence[int], preferred: int = 64) -> Shape3:
    """Output chunks that fit the tile step: ``preferred`` where its least common multiple
    with the step is at most 4 steps, else the divisor of the step closest to ``preferred``."""
    out = []
    for s in step:
        s = int(s)
        if math.lcm(s, preferred) <= 4 * max(s, preferred):
            out.append(preferred)
        else:
            out.append(min((d for d in range(1, s + 1) if s % d == 0), key=lambda d: (abs(d - preferred), -d)))
    return tuple(out)  # type: ignore[return-value]


def plan_blocks(tiles: TilePlan, chunks: Sequence[int], block_shape: Sequence[int] | None = None,
                target: int = 256) -> BlockPlan:
    """Block plan over the tile plan's ROI.

    ``chunks`` is the output chunk shape (clipped to the ROI as the writer does).
    ``block_shape`` must be a multiple of :func:`block_unit` per axis (or cover the
    ROI's extent on that axis); by default the smallest such multiple >= ``target``
    voxels per axis (not larger than needed to cover the ROI). Raises ValueError for a
    block shape that would split tiles or chunks.
    """
    roi = Roi(tiles.roi_offset, tiles.roi_shape)
    chunks = tuple(min(int(c), s) for c, s in zip(chunks, roi.shape))
    unit = block_unit(tiles.step, chunks)
    if block_shape is None:
        shape = []
        for u, r in zip(unit, roi.shape):
            b = u * math.ceil(max(target, u) / u)
            shape.append(min(b, r))  # a block covering the axis is simply the axis
        return BlockPlan(roi, tuple(shape))  # type: ignore[arg-type]
    block_shape = tuple(int(b) for b in block_shape)
    if len(block_shape) != 3 or any(b < 1 or (b % u and b < r) for b, u, r in zip(block_shape, unit, roi.shape)):
        raise ValueError(
            f"block shape {block_shape} must be a whole multiple of {unit} voxels per axis (the least common "
            f"multiple of the tile step {tiles.step} and the output chunks {chunks})"
        )
    return BlockPlan(roi, block_shape)  # type: ignore[arg-type]


def block_tiles(tiles: TilePlan, block: Roi) -> list[tuple[Shape3, Shape3, Shape3]]:
    """The tiles of ``tiles`` whose output starts inside ``block`` (same tuples as ``TilePlan.tiles``)."""
    ranges = []
    for o, s, b0, b1 in zip(tiles.roi_offset, tiles.step, block.offset, block.end):
        ranges.append(range((b0 - o) // s, math.ceil((b1 - o) / s)))
    ctx = tiles.context
    out = []
    for k in itertools.product(*ranges):
        start = tuple(o + i * s for o, i, s in zip(tiles.roi_offset, k, tiles.step))
        write = tuple(min(s, o + r - a) for s, o, r, a in zip(tiles.step, tiles.roi_offset, tiles.roi_shape, start))
        out.append((tuple(a - c for a, c in zip(start, ctx)), start, write))
    return out  # type: ignore[return-value]


# --------------------------------------------------------------------------- sample mask

_RULE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*$")
_OPS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    ">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal, "==": np.equal, "!=": np.not_equal,
}


def parse_rule(rule: str) -> tuple[str, float]:
    """``">0"``, ``"<= 250"`` ... -> (operator, value); raises ValueError otherwise."""
    m = _RULE.match(rule)
    if not m:
        raise ValueError(f"mask rule {rule!r} is not understood; write e.g. '>0', '>=20' or '<250'")
    return m.group(1), float(m.group(2))


@dataclass(frozen=True)
class SampleMask:
    """Where the sample is: a mask volume (any resolution, aligned by nm) and/or a rule.

    ``rule`` (e.g. ``">0"``) is applied to the mask volume (default ``"!=0"``) or, without
    a volume, to the raw intensities. A block is predicted when any voxel in its extent
    passes; other blocks are skipped and read as 0. Outside the mask volume = no sample.
    """

    volume: Volume | None = None
    rule: str | None = None

    def __post_init__(self) -> None:
        if self.volume is None and self.rule is None:
            raise ValueError("a sample mask needs a mask volume or a rule")
        if self.rule is not None:
            parse_rule(self.rule)

    def describe(self) -> dict[str, Any]:
        return {"volume": self.volume.path if self.volume is not None else None, "rule": self.rule}

    def has_sample(self, raw: Volume, block: Roi) -> bool:
        """True when the block (raw voxels) contains sample."""
        op, value = parse_rule(self.rule or "!=0")
        if self.volume is None:
            return bool(_OPS[op](raw.read(block), value).any())
        m = self.volume
        begin_nm = [o + b * v for o, b, v in zip(raw.offset, block.offset, raw.voxel_size)]
        end_nm = [o + e * v for o, e, v in zip(raw.offset, block.end, raw.voxel_size)]
        lo = [max(0, math.floor((b - o) / v + 1e-6)) for b, o, v in zip(begin_nm, m.offset, m.voxel_size)]
        hi = [min(n, math.ceil((e - o) / v - 1e-6)) for e, o, v, n in zip(end_nm, m.offset, m.voxel_size, m.shape)]
        if any(h <= l for l, h in zip(lo, hi)):
            return False
        return bool(_OPS[op](m.read(Roi(lo, [h - l for l, h in zip(lo, hi)])), value).any())


# --------------------------------------------------------------------------- fault injection (tests)


@dataclass(frozen=True)
class FaultInjection:
    """Test hook: make chosen blocks fail on their first ``times`` attempts (-1: always).

    ``action`` ``"raise"`` raises RuntimeError; ``"kill"`` SIGKILLs the worker process
    (use only with a Dask cluster). Attempts are counted by files in ``counter_dir``,
    shared by all worker processes.
    """

    blocks: tuple[Shape3, ...]
    counter_dir: str
    times: int = -1
    action: Literal["raise", "kill"] = "raise"

    def attempts(self, index: Shape3) -> int:
        return sum(1 for p in Path(self.counter_dir).glob(f"{_name(index)}.*"))

    def __call__(self, index: Shape3) -> None:
        if tuple(index) not in {tuple(b) for b in self.blocks}:
            return
        d = Path(self.counter_dir)
        d.mkdir(parents=True, exist_ok=True)
        n = 0
        while True:
            try:
                fd = os.open(d / f"{_name(index)}.{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.close(fd)
                break
            except FileExistsError:
                n += 1
        if self.times < 0 or n < self.times:
            if self.action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected failure of block {tuple(index)} (attempt {n + 1})")


# --------------------------------------------------------------------------- per-block task


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs to predict one block (picklable; volumes reopen by path)."""

    checkpoint: str
    raw: Volume
    partial: str
    ledger: str
    tiles: TilePlan
    blocks: BlockPlan
    cut: int
    batch_size: int = 1
    device: str = "auto"
    tta: str | None = None
    sample_mask: SampleMask | None = None
    fault: FaultInjection | None = None
    torch_threads: int | None = None


_MODELS: dict[tuple[str, int, int, str], Any] = {}
_MODELS_LOCK = threading.Lock()


def _worker_device(device: str) -> str:
    """The device of this worker: with GPUs and ``auto``, one GPU per worker (by worker name)."""
    import torch

    if device != "auto":
        return device
    if not torch.cuda.is_available():
        return "cpu"
    n = torch.cuda.device_count()
    try:
        from distributed import get_worker

        name = get_worker().name
        idx = int(name) if str(name).lstrip("-").isdigit() else int(hashlib.md5(str(name).encode()).hexdigest(), 16)
    except (ImportError, ValueError):
        idx = 0
    return f"cuda:{idx % n}"


def cached_model(checkpoint: str, device: str) -> tuple[Any, Any]:
    """(model on ``device``, normalization), loaded once per process and kept.

    Keyed by the checkpoint path, its size and mtime, and the device.
    """
    from organet.model.checkpoint import load_checkpoint

    st = os.stat(checkpoint)
    key = (os.path.abspath(checkpoint), st.st_size, st.st_mtime_ns, device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            ckpt = load_checkpoint(checkpoint)
            _MODELS[key] = (ckpt.build_model().to(device).eval(), ckpt.normalization)
        return _MODELS[key]


def _name(index: Sequence[int]) -> str:
    return "_".join(str(int(i)) for i in index)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _fsync_chunks(array_dir: Path, region: Sequence[slice], chunks: Sequence[int]) -> None:
    """Flush the chunk files of ``region`` to disk (zarr v3 default keys ``c/i/j/k``) so a
    block's data is durable before its marker."""
    ranges = [range(r.start // c, -(-r.stop // c)) for r, c in zip(region, chunks)]
    for idx in itertools.product(*ranges):
        path = array_dir.joinpath("c", *map(str, idx))
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # an all-zero chunk is not stored
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def predict_block(job: BlockJob, index: Shape3) -> str:
    """Predict one block into the partial output and then write its done marker.

    Returns ``"done"`` or ``"skipped"`` (no sample in the block: nothing written, reads 0).
    """
    import torch
    import zarr

    if job.fault is not None:
        job.fault(index)
    block = job.blocks.block_roi(index)
    if job.sample_mask is not None and not job.sample_mask.has_sample(job.raw, block):
        status = "skipped"
    else:
        if job.torch_threads:
            torch.set_num_threads(job.torch_threads)
        device = _worker_device(job.device)
        model, norm = cached_model(job.checkpoint, device)
        origin = job.tiles.roi_offset
        sl = tuple(slice(b - o, e - o) for b, e, o in zip(block.offset, block.end, origin))
        prob = np.zeros(block.shape, np.uint8)

        def write(out_start: Shape3, p: np.ndarray) -> None:
            loc = tuple(slice(a - b, a - b + s) for a, b, s in zip(out_start, block.offset, p.shape))
            prob[loc] = probability_to_uint8(p)

        predict_tiles(model, job.raw, norm, job.tiles, write, job.batch_size, device,
                      tiles=block_tiles(job.tiles, block), tta=job.tta)
        for name, data in (("probability", prob), ("mask", (prob >= job.cut).astype(np.uint8))):
            arr = zarr.open_array(job.partial, path=f"{name}/s0", mode="r+")
            arr[sl] = data
            _fsync_chunks(Path(job.partial) / name / "s0", sl, arr.chunks)
        status = "done"
    _atomic_write_text(Path(job.ledger) / _name(index), status)
    return status


def done_blocks(ledger: str | Path) -> dict[Shape3, str]:
    """The ledger (``OUT.zarr.progress``): finished block index -> ``"done"``/``"skipped"``."""
    d = Path(ledger)
    out: dict[Shape3, str] = {}
    if d.is_dir():
        for p in d.iterdir():
            if re.fullmatch(r"\d+_\d+_\d+", p.name):
                out[tuple(int(v) for v in p.name.split("_"))] = p.read_text().strip() or "done"  # type: ignore[index]
    return out


# --------------------------------------------------------------------------- the driver


@dataclass
class BlockwiseResult:
    output: Path
    roi: Roi
    blocks: int
    computed: int
    skipped_by_mask: int
    resumed: int
    seconds: float
    voxels_per_second: float
    pyramid_levels: int
    already_complete: bool = False


def _checkpoint_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_run(path: Path) -> dict[str, Any] | None:
    """The run record in a container's root attributes (None if absent or unreadable)."""
    import zarr

    try:
        run = zarr.open_group(str(path), mode="r").attrs.get(RUN_KEY)
    except Exception:  # noqa: BLE001 - not ours / not zarr
        return None
    return dict(run) if isinstance(run, dict) else None


def _diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The settings that differ between two run records ("" when the same; ``complete`` ignored)."""
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k != "complete")
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys)


def pyramid_shapes(shape: Sequence[int], chunks: Sequence[int], max_levels: int = 8) -> list[Shape3]:
    """Shapes of s0, s1, ... (factor 2 per axis) until every axis fits in one chunk."""
    shapes = [tuple(int(s) for s in shape)]
    while len(shapes) < max_levels and any(s > c for s, c in zip(shapes[-1], chunks)):
        shapes.append(tuple(max(1, math.ceil(s / 2)) for s in shapes[-1]))
    return shapes  # type: ignore[return-value]


def downsample2(a: np.ndarray, how: Literal["mean", "max"]) -> np.ndarray:
    """Downsample a uint8 block by 2 per axis (odd edges padded by repeating the last voxel)."""
    pad = [(0, s % 2) for s in a.shape]
    if any(p for _, p in pad):
        a = np.pad(a, pad, mode="edge")
    z, y, x = (s // 2 for s in a.shape)
    w = a.reshape(z, 2, y, 2, x, 2)
    if how == "max":
        return w.max(axis=(1, 3, 5))
    return np.floor(w.mean(axis=(1, 3, 5), dtype=np.float64) + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class _PyramidJob:
    partial: str
    image: str
    level: int
    how: Literal["mean", "max"]


def _pyramid_block(job: _PyramidJob, region: tuple[tuple[int, int], ...]) -> None:
    import zarr

    src = zarr.open_array(job.partial, path=f"{job.image}/s{job.level - 1}", mode="r")
    dst = zarr.open_array(job.partial, path=f"{job.image}/s{job.level}", mode="r+")
    a = np.asarray(src[tuple(slice(2 * b, min(2 * e, n)) for (b, e), n in zip(region, src.shape))])
    dst[tuple(slice(b, e) for b, e in region)] = downsample2(a, job.how)


def _multiscale_attrs(name: str, voxel_size: Sequence[float], offset_nm: Sequence[float],
                      levels: int) -> dict[str, Any]:
    datasets = []
    for lvl in range(levels):
        f = 2**lvl
        datasets.append({
            "path": f"s{lvl}",
            "coordinateTransformations": [
                {"type": "scale", "scale": [v * f for v in voxel_size]},
                {"type": "translation", "translation": [o + (f - 1) / 2 * v for o, v in zip(offset_nm, voxel_size)]},
            ],
        })
    return {"ome": {"version": OME_VERSION, "multiscales": [{
        "name": name, "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"], "datasets": datasets,
    }]}}


def _create_partial(partial: Path, run: dict[str, Any], shape: Shape3, chunks: Shape3, voxel_size: Sequence[float],
                    offset_nm: Sequence[float], meta: dict[str, dict[str, Any]]) -> None:
    import zarr
    from zarr.codecs import BloscCodec

    tmp = partial.with_name(f"{partial.name}.tmp-{secrets.token_hex(4)}")
    root = zarr.open_group(str(tmp), mode="w-", zarr_format=3)
    root.attrs[RUN_KEY] = run
    for name in IMAGES:
        g = root.require_group(name)
        g.attrs.update({**_multiscale_attrs(name, voxel_size, offset_nm, 1), ORGANET_KEY: meta[name]})
        g.create_array("s0", shape=shape, dtype=np.uint8, chunks=chunks, fill_value=0,
                       compressors=[BloscCodec(cname="zstd", clevel=3, shuffle="noshuffle")],
                       dimension_names=["z", "y", "x"])
    os.replace(tmp, partial)


def _finalize(partial: Path, output: Path, shape: Shape3, chunks: Shape3, voxel_size: Sequence[float],
              offset_nm: Sequence[float], meta: dict[str, dict[str, Any]], client: Any | None, retries: int,
              overwrite: bool) -> int:
    """Write the pyramid and metadata into ``partial`` and rename it to ``output``. Returns the level count."""
    import zarr
    from zarr.codecs import BloscCodec

    shapes = pyramid_shapes(shape, chunks)
    root = zarr.open_group(str(partial), mode="r+")
    for name in IMAGES:
        how: Literal["mean", "max"] = "mean" if name == "probability" else "max"
        for lvl in range(1, len(shapes)):
            root[name].create_array(f"s{lvl}", shape=shapes[lvl], dtype=np.uint8,
                                    chunks=tuple(min(c, s) for c, s in zip(chunks, shapes[lvl])), fill_value=0,
                                    compressors=[BloscCodec(cname="zstd", clevel=3, shuffle="noshuffle")],
                                    dimension_names=["z", "y", "x"], overwrite=True)
            step = [2 * c for c in chunks]  # whole destination chunks per task
            regions = [tuple((b, min(b + s, n)) for b, s, n in zip(start, step, shapes[lvl]))
                       for start in itertools.product(*(range(0, n, s) for n, s in zip(shapes[lvl], step)))]
            job = _PyramidJob(str(partial), name, lvl, how)
            _, fails = run_tasks(functools.partial(_pyramid_block, job), regions, client, retries, "pyramid")
            if fails:
                raise RuntimeError(f"writing pyramid level s{lvl} of {name} failed: {next(iter(fails.values()))}")
        root[name].attrs.update({**_multiscale_attrs(name, voxel_size, offset_nm, len(shapes)),
                                 ORGANET_KEY: {**meta[name], "pyramid": {"levels": len(shapes),
                                                                         "downsample": how}}})
    root.attrs[RUN_KEY] = {**dict(root.attrs[RUN_KEY]), "complete": True}
    if output.exists() or output.is_symlink():
        if not overwrite:
            raise VolumeError(f"output appeared while predicting: {output} (pass overwrite to replace it)")
    replace_path(partial, output)
    return len(shapes)


def predict_blockwise(
    model: str | Path,
    raw: str | Path | Volume,
    output: str | Path,
    roi: Roi | None = None,
    tile_shape: Sequence[int] | None = None,
    block_shape: Sequence[int] | None = None,
    chunks: Sequence[int] | None = None,
    batch_size: int = 1,
    device: str = "auto",
    threshold: float = 0.5,
    tta: str | None = None,
    sample_mask: SampleMask | None = None,
    retries: int = 2,
    client: Any | None = None,
    overwrite: bool = False,
    progress: bool = True,
    fault: FaultInjection | None = None,
    torch_threads: int | None = None,
    max_blocks: int | None = None,
    check_preprocess: bool = True,
) -> BlockwiseResult:
    """Predict ``roi`` (voxels; default the whole volume) of ``raw`` blockwise into ``output``.

    Runs the blocks on the Dask ``client`` (each worker loads the model once), or
    in this process when ``client`` is None. Blocks already recorded as done in
    the ledger ``OUTPUT.progress`` by an earlier run with the same settings are skipped. Each
    block is retried ``retries`` times; if any still fails, :class:`BlockFailures`
    lists them and the partial output stays for a rerun. The output (probability,
    mask, pyramids) is identical to :func:`organet.predict.run.predict_volume`'s
    at scale 0. ``max_blocks`` stops after that many new blocks (for tests and
    benchmarks; the output is then left partial and a BlockFailures-free
    :class:`BlockwiseResult` reports it as incomplete via ``computed``).
    As there, an input whose recorded contrast normalization differs from the
    model's is refused unless ``check_preprocess=False``.
    """
    from organet.model.checkpoint import load_checkpoint
    from organet.predict.tiled import tta_variants

    t0 = time.time()
    model = Path(model).expanduser().resolve()
    ckpt = load_checkpoint(model)
    vol = raw if isinstance(raw, Volume) else open_volume(raw)
    if check_preprocess:
        from organet.preprocess.normalize import check_preprocess as _check

        _check(getattr(ckpt.normalization, "preprocess", None), vol.attrs, f"input {vol.path}", "the model")
    if model_factor(ckpt.voxel_size, vol.voxel_size) != (1, 1, 1):
        raise ValueError(
            f"the model was trained at {tuple(ckpt.voxel_size)} nm and the input has {tuple(vol.voxel_size)} nm "
            "voxels: blockwise prediction runs at the model's voxel size; convert the input first "
            "(organet convert --downsample) or predict without Dask, which resamples on the fly"
        )
    if client is not None and vol._spec is None and not isinstance(vol.data, np.ndarray):
        raise VolumeError(f"{vol.path or 'the input volume'} cannot be sent to Dask workers: open it from a file")
    roi = roi if roi is not None else vol.roi
    if not vol.roi.contains(roi) or roi.empty:
        raise ValueError(f"ROI {roi} lies outside the volume {vol.roi} or is empty")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold} must lie in [0, 1]")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    tile = tuple(tile_shape) if tile_shape is not None else default_tile_shape(ckpt.architecture, roi.shape)
    tiles = plan_tiles(ckpt.architecture, tile, roi.offset, roi.shape)
    tta_variants(tta, tiles.tile_in)  # validate early
    chunks = tuple(chunks) if chunks is not None else default_chunks(tiles.step)
    chunks = tuple(min(int(c), s) for c, s in zip(chunks, roi.shape))
    if len(chunks) != 3 or any(c < 1 for c in chunks):
        raise ValueError(f"chunks {chunks} must be 3 positive integers")
    blocks = plan_blocks(tiles, chunks, block_shape)
    offset_nm = tuple(o + r * v for o, r, v in zip(vol.offset, roi.offset, vol.voxel_size))
    cut = int(np.ceil(threshold * 255 - 1e-9))
    run = {
        "checkpoint": str(model), "checkpoint_sha256": _checkpoint_digest(model), "input": vol.path,
        "input_shape": list(vol.shape), "voxel_size": list(vol.voxel_size), "roi_offset": list(roi.offset),
        "roi_shape": list(roi.shape), "tile": list(tiles.tile_in), "chunks": list(chunks),
        "block_shape": list(blocks.block_shape), "threshold": threshold, "tta": tta,
        "sample_mask": sample_mask.describe() if sample_mask is not None else None,
    }
    base = {
        "model": {"organelle": ckpt.organelle, "iteration": ckpt.iteration, "path": str(model)},
        "normalization": ckpt.normalization.model_dump(), "source": vol.path,
        "roi_vox": {"offset": list(roi.offset), "shape": list(roi.shape)},
        **({"tta": tta} if tta else {}),
    }
    meta = {"probability": {"kind": "probability", "scale": 255, **base},
            "mask": {"kind": "mask", "threshold": threshold, **base}}
    output = Path(output).expanduser()
    partial = output.with_name(output.name + PARTIAL_SUFFIX)
    ledger = output.with_name(output.name + PROGRESS_SUFFIX)

    if output.exists() or output.is_symlink():
        prev = _read_run(output)
        if prev is not None and prev.get("complete") and _diff(prev, run) == "" and not overwrite:
            shutil.rmtree(ledger, ignore_errors=True)  # left over when a run ended right after its rename
            return BlockwiseResult(output, roi, len(blocks), 0, 0, len(blocks), time.time() - t0, 0.0,
                                   len(pyramid_shapes(roi.shape, chunks)), already_complete=True)
        if not overwrite:
            raise VolumeError(f"output already exists: {output} (pass overwrite to replace it)")
    if partial.exists():
        prev = _read_run(partial)
        if prev is None or _diff(prev, run):
            if not overwrite:
                why = _diff(prev, run) if prev is not None else "no run record"
                raise VolumeError(f"{partial} holds an unfinished run with other settings ({why}); "
                                  "rerun with those settings to resume, or pass overwrite to start over")
            shutil.rmtree(partial)
    if not partial.exists():  # a fresh start: markers of any earlier run are stale
        shutil.rmtree(ledger, ignore_errors=True)
        ledger.mkdir(parents=True)
        _create_partial(partial, run, roi.shape, chunks, vol.voxel_size, offset_nm, meta)
    ledger.mkdir(exist_ok=True)

    done = done_blocks(ledger)
    todo = [b for b in blocks.indices() if b not in done]
    resumed = len(blocks) - len(todo)
    if max_blocks is not None:
        todo = todo[:max_blocks]
    job = BlockJob(str(model), vol, str(partial), str(ledger), tiles, blocks, cut, batch_size, device, tta,
                   sample_mask, fault, torch_threads)
    results, fails = run_tasks(functools.partial(predict_block, job), todo, client, retries,
                               "predict blocks", progress)
    if fails:
        raise BlockFailures({todo[i]: msg for i, msg in fails.items()}, blocks, partial)
    done = done_blocks(ledger)
    skipped = sum(1 for s in done.values() if s == "skipped")
    if len(done) < len(blocks):  # only with max_blocks
        dt = time.time() - t0
        return BlockwiseResult(partial, roi, len(blocks), len(results), skipped, resumed, dt, 0.0, 0)
    levels = _finalize(partial, output, roi.shape, chunks, vol.voxel_size, offset_nm, meta, client, retries,
                       overwrite)
    shutil.rmtree(ledger, ignore_errors=True)
    dt = time.time() - t0
    n_vox = sum(blocks.block_roi(b).size for i, b in enumerate(todo) if results.get(i) == "done")
    return BlockwiseResult(output, roi, len(blocks), len(results), skipped, resumed, dt, n_vox / max(dt, 1e-9), levels)
