"""The training loop: sampling, augmentation, balanced loss, Adam, periodic
checkpoints and whole-ROI validation, metrics (JSONL + TensorBoard + PNG),
resume and fine-tuning.

Run folder layout::

    RUN/config.yaml            the validated config (absolute paths)
    RUN/data.json              the model voxel size and every ROI on its grid (resampling, if any)
    RUN/checkpoints/iter_0001000.pt
    RUN/metrics.jsonl          one JSON object per line: kind=train|validation
    RUN/curves.png             training / validation loss and F1 (seed Fig S4)
    RUN/tensorboard/
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from organet.config import ExperimentConfig, RoiSpec
from organet.errors import ConfigError
from organet.evaluate import evaluate_arrays
from organet.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from organet.model.unet import UNet, init_weights, output_shape
from organet.predict import Predictor
from organet.predict.tiled import _AUTOCAST, resolve_device, resolve_precision
from organet.progress import ProgressFn, advance, announce
from organet.train.augment import augment, upstream_shape
from organet.train.loss import balanced_cross_entropy
from organet.train.plots import plot_curves
from organet.train.sampling import BlockSampler, check_binary, load_roi, open_roi_volumes
from organet.volumes.atomic import atomic_write_text
from organet.volumes.foreground import foreground, prediction_kind
from organet.volumes.geometry import fmt_vec


@dataclass
class ValidationRoi:
    name: str
    naive: bool
    raw: Any  # Volume
    roi: Any  # Roi
    labels: np.ndarray
    mask: np.ndarray | None


@dataclass
class TrainResult:
    run_dir: Path
    iteration: int
    last_checkpoint: Path | None
    validation: list[dict[str, Any]] = field(default_factory=list)
    data_wait_s: float = 0.0
    """Seconds the steps of this session waited for their batch."""
    compute_s: float = 0.0
    """Seconds the steps of this session computed (forward, backward, optimizer)."""

    @property
    def data_wait_fraction(self) -> float:
        """Share of the step time spent waiting for data (NaN before any step)."""
        total = self.data_wait_s + self.compute_s
        return self.data_wait_s / total if total > 0 else float("nan")


class BatchPrefetcher:
    """Makes the batches of iterations ``first``, ``first + 1``, ... in ``workers`` background
    threads, ``depth`` ahead of the step that needs them (default: one more than the
    workers). Sampling and augmentation are numpy, scipy and numba work that releases the
    GIL, so the threads run beside torch and beside each other.

    ``make(iteration)`` must depend on the iteration alone (then any number of workers gives
    the same batches); :meth:`get` must be called with consecutive iterations. An error in
    ``make`` is raised by the :meth:`get` of its iteration.
    """

    def __init__(self, make: Callable[[int], Any], first: int, depth: int | None = None, workers: int = 1) -> None:
        from concurrent.futures import Future, ThreadPoolExecutor

        workers = max(1, int(workers))
        self._make = make
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="organet-batches")
        self._futures: dict[int, Future[Any]] = {}
        self._next = first
        self._depth = max(1, int(depth if depth is not None else workers + 1))
        self._fill(first)

    def _fill(self, iteration: int) -> None:
        while self._next < iteration + self._depth:
            self._futures[self._next] = self._pool.submit(self._make, self._next)
            self._next += 1

    def get(self, iteration: int) -> Any:
        """The batch of ``iteration`` (waits for it); schedules the ones after it."""
        if iteration not in self._futures:  # a defect in the caller: iterations come in order
            raise ValueError(f"iteration {iteration} was not prefetched (next {self._next})")
        fut = self._futures.pop(iteration)
        self._fill(iteration + 1)
        return fut.result()

    def close(self) -> None:
        for f in self._futures.values():
            f.cancel()
        self._pool.shutdown(wait=True)


def _metrics_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_metrics(path: Path, iteration: int) -> None:
    """Drop rows logged after ``iteration`` (work lost since the last checkpoint)."""
    rows = [r for r in _metrics_rows(path) if r["iteration"] <= iteration]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted((run_dir / "checkpoints").glob("iter_*.pt"))
    return ckpts[-1] if ckpts else None


class Trainer:
    """Trains one model from an :class:`ExperimentConfig` (paths already resolved)."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        resume: bool = False,
        init_from: str | Path | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.cfg = cfg
        self.log = log
        self.run_dir = Path(cfg.output_dir)
        self.arch = cfg.model.architecture()
        self.in_shape = cfg.model.input_shape
        out_shape = output_shape(self.arch, self.in_shape)
        if out_shape is None:  # pragma: no cover - ModelConfig validates the input shape
            raise ConfigError(f"model.input_shape {list(self.in_shape)} is not valid for this network")
        self.out_shape = out_shape
        self.device = resolve_device(cfg.training.device)
        self.metrics_path = self.run_dir / "metrics.jsonl"

        existing = latest_checkpoint(self.run_dir)
        if existing is not None and not resume:
            raise ConfigError(
                f"run folder {self.run_dir} already has checkpoints; use --resume {self.run_dir} "
                "to continue it, or set output_dir to a new folder"
            )
        if resume and existing is None:
            raise ConfigError(f"nothing to resume in {self.run_dir}: no checkpoints/iter_*.pt")

        self._check_preprocess()
        self.voxel_size = self._train_voxel_size()
        self.aug = cfg.augment.for_voxel_size(self.voxel_size)
        self.transpose_axes = self.aug.transpose_axes(self.voxel_size)
        self.upstream = upstream_shape(self.in_shape, self.aug)
        # sampling.context 'volume': raw is read with the context the upstream blocks reach
        ctx = cfg.sampling.context == "volume"
        self.train_rois = [
            load_roi(
                s,
                cfg.data.cache_max_gib,
                i,
                self.out_shape if ctx else None,
                self.upstream if ctx else None,
                self.voxel_size,
                cfg.data.resample_raw,
                cfg.data.resample_labels,
            )
            for i, s in enumerate(cfg.data.train)
        ]
        for r in self.train_rois:
            if r.resampling is not None:
                m = r.resampling
                self.log(
                    f"{r.name}: {fmt_vec(m['source_voxel_size'])} nm resampled to {fmt_vec(m['voxel_size'])} nm "
                    f"(raw {'/'.join(m['modes'])}, labels {m['labels']}); ROI {m['roi_vox']} on the model grid"
                )
        if not any(r.labels.any() for r in self.train_rois):
            names = ", ".join(r.name for r in self.train_rois)
            files = ", ".join(str(s.labels) for s in cfg.data.train)
            raise ConfigError(
                f"the training labels ({names}) contain no foreground (labels: {files}): the network would learn "
                "to predict background everywhere; annotate at least one region with the organelle, or mix in labelled "
                "data from the source domain (organet finetune --mix F --mix-raw R --mix-labels L)"
            )
        self.val_rois = [self._load_validation(s, i) for i, s in enumerate(cfg.data.validation)]
        self.sampler = BlockSampler(
            self.train_rois, self.out_shape, self.upstream, cfg.sampling, group_weights=cfg.data.group_weights
        )

        torch.manual_seed(cfg.seed)
        self.precision = resolve_precision(cfg.training.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.model = UNet(self.arch)
        init_weights(self.model, cfg.model.weight_init)
        self.model.to(self.device)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay
        )
        self.iteration = 0
        self._prefetch: BatchPrefetcher | None = None
        self._last_validation: list[dict[str, Any]] = []
        self.data_wait_s = 0.0
        self.compute_s = 0.0
        self.init_from = str(init_from) if init_from else None
        if resume and existing is not None:
            self._restore(existing)
        elif init_from is not None:
            self._init_from(Path(init_from))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.record(), sort_keys=False))
        atomic_write_text(self.run_dir / "data.json", json.dumps(self.data_record(), indent=2) + "\n")

    # -- setup -------------------------------------------------------------

    def _check_preprocess(self) -> None:
        """Every raw volume must carry the contrast normalization the config names."""
        from organet.preprocess.normalize import check_preprocess
        from organet.volumes import open_volume

        for spec in [*self.cfg.data.train, *self.cfg.data.validation]:
            raw = open_volume(spec.raw, voxel_size=spec.voxel_size)
            try:
                check_preprocess(
                    self.cfg.normalization.preprocess,
                    raw.attrs,
                    f"raw {spec.raw}",
                    "the config (normalization.preprocess)",
                )
            except ValueError as e:
                raise ConfigError(str(e)) from None

    def _train_voxel_size(self) -> tuple[float, float, float]:
        """The model's voxel size (nm, z, y, x): ``model.voxel_size``, else the first training
        source's. Training sources of other voxel sizes are resampled to it."""
        from organet.volumes import open_volume

        if self.cfg.model.voxel_size is not None:
            v = self.cfg.model.voxel_size
            return float(v[0]), float(v[1]), float(v[2])
        first = self.cfg.data.train[0]
        return open_volume(first.raw, voxel_size=first.voxel_size).voxel_size

    def data_record(self) -> dict[str, Any]:
        """What the run trained on: the model's voxel size and each ROI's grid and resampling."""
        return {
            "voxel_size": list(self.voxel_size),
            "group_weights": self.cfg.data.group_weights,
            "train": [
                {
                    "name": r.name,
                    "group": r.group,
                    "voxel_size": list(r.voxel_size),
                    "roi_vox": str(r.roi),
                    "voxels": r.size,
                    "foreground": float(r.labels.mean()),
                    "resampled": r.resampling,
                }
                for r in self.train_rois
            ],
            "validation": [
                {"name": v.name, "voxel_size": list(v.raw.voxel_size), "roi_vox": str(v.roi)} for v in self.val_rois
            ],
        }

    def _load_validation(self, spec: RoiSpec, index: int) -> ValidationRoi:
        raw, labels, mask, roi = open_roi_volumes(spec)
        lab = check_binary(labels.read(roi), f"{labels.path} (ROI {roi})")
        m = foreground(mask.read(roi), prediction_kind(mask)).astype(np.uint8) if mask is not None else None
        return ValidationRoi(spec.name or f"val{index}", spec.naive, raw, roi, lab, m)

    def _init_from(self, path: Path) -> None:
        ckpt = load_checkpoint(path, expect_architecture=self.arch)
        if ckpt.normalization != self.cfg.normalization:
            raise ConfigError(
                f"--init-from {path} was trained with normalization {ckpt.normalization.model_dump()} but the "
                f"config says {self.cfg.normalization.model_dump()}; use the same normalization to fine-tune"
            )
        self.model.load_state_dict(ckpt.state_dict)
        self.log(f"initialised from {path} (iteration {ckpt.iteration} of its run)")

    def _restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path, expect_architecture=self.arch)
        self.model.load_state_dict(ckpt.state_dict)
        if ckpt.optimizer_state is not None:
            self.optimizer.load_state_dict(ckpt.optimizer_state)
        if ckpt.rng_state is not None:  # batches depend on (seed, iteration) alone; torch's state for the rest
            torch.set_rng_state(ckpt.rng_state["torch"])
        sampling = ckpt.training_config.get("sampling")
        if isinstance(sampling, dict):
            trained = sampling.get("context", "pad")  # runs before sampling.context padded
            if trained != self.cfg.sampling.context:
                raise ConfigError(
                    f"{path} was trained with sampling.context={trained!r} but {self.run_dir / 'config.yaml'} "
                    f"says {self.cfg.sampling.context!r}; set sampling.context: {trained} there to resume this run"
                )
        self.iteration = ckpt.iteration
        self.init_from = ckpt.training_config.get("init_from")
        _truncate_metrics(self.metrics_path, self.iteration)
        self.log(f"resuming {self.run_dir} at iteration {self.iteration}")

    # -- steps ---------------------------------------------------------------

    def batch_arrays(self, iteration: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """The augmented batch of ``iteration`` (raw ``(N, 1, *in)``, labels and loss mask
        ``(N, *out)``, mean foreground fraction): a function of the seed and the iteration
        alone, so prefetching, resuming and rerunning give the same batches."""
        rng = np.random.default_rng([self.cfg.seed, iteration])
        raws, labs, masks, fgs = [], [], [], []
        for _ in range(self.cfg.training.batch_size):
            s = self.sampler.draw(rng)
            r = self.sampler.rois[s.roi_index]
            raw = self.cfg.normalization.apply(s.raw, r.raw_dtype, where=f"training raw {r.name}")
            x, y, m = augment(raw, s.labels, s.mask, self.in_shape, self.out_shape, self.aug, rng, self.transpose_axes)
            raws.append(x)
            labs.append(y)
            masks.append(m)
            fgs.append(s.foreground)
        return np.stack(raws)[:, None], np.stack(labs), np.stack(masks), float(np.mean(fgs))

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        if self._prefetch is not None:
            arrays = self._prefetch.get(self.iteration)
        else:
            arrays = self.batch_arrays(self.iteration)
        pin = self.device.type == "cuda"

        def t(a: np.ndarray) -> torch.Tensor:
            x = torch.from_numpy(a)
            return (x.pin_memory() if pin else x).to(self.device, non_blocking=pin)

        return t(arrays[0]), t(arrays[1]), t(arrays[2]), arrays[3]

    def step(self) -> dict[str, float]:
        """One iteration; returns its loss, foreground fraction, learning rate and the
        seconds spent waiting for the batch (``data_s``) and computing (``compute_s``)."""
        self.model.train()
        t0 = time.perf_counter()
        x, y, m, fg = self._next_batch()
        t1 = time.perf_counter()
        with torch.autocast(
            self.device.type, dtype=_AUTOCAST.get(self.precision, torch.bfloat16), enabled=self.precision != "fp32"
        ):
            logits = self.model(x)
        loss = balanced_cross_entropy(logits.float(), y, m, self.cfg.loss.class_balance, self.cfg.loss.frac_clip)
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.cfg.optimizer.lr_at(self.iteration, self.cfg.training.iterations)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        value = float(loss.detach())  # waits for the device
        self.iteration += 1
        return {"loss": value, "foreground": fg, "lr": lr, "data_s": t1 - t0, "compute_s": time.perf_counter() - t1}

    def validate(self) -> list[dict[str, Any]]:
        """Predict each validation ROI whole (tiled) and score it."""
        rows = []
        vc = self.cfg.validation
        ez = self.cfg.validation_exclusion_zone()
        for v in self.val_rois:
            t0 = time.time()
            predictor = Predictor.from_model(
                self.model,
                self.voxel_size,
                self.cfg.normalization,
                tile=vc.tile_input_shape,
                batch_size=vc.batch_size,
                device=str(self.device),
            )
            prob = predictor.predict(v.raw, v.roi)
            valid = v.mask.astype(bool) if v.mask is not None else np.ones(prob.shape, bool)
            p_true = np.where(v.labels > 0, prob, 1.0 - prob)[valid]
            ce = -np.log(np.clip(p_true, 1e-7, 1.0))
            frac = float(np.clip(v.labels[valid].mean() if valid.any() else 0.5, *self.cfg.loss.frac_clip))
            w = np.where(v.labels[valid] > 0, 1 / (2 * frac), 1 / (2 * (1 - frac)))
            loss = float((ce * w).mean()) if ce.size else float("nan")
            with_ez = evaluate_arrays(prob, v.labels, v.mask, ez, (vc.threshold,))[vc.threshold]
            no_ez = evaluate_arrays(prob, v.labels, v.mask, None, (vc.threshold,))[vc.threshold]
            rows.append(
                {
                    "kind": "validation",
                    "iteration": self.iteration,
                    "roi": v.name,
                    "naive": v.naive,
                    "loss": loss,
                    "f1": with_ez.f1,
                    "precision": with_ez.precision,
                    "recall": with_ez.recall,
                    "iou": with_ez.iou,
                    "f1_no_exclusion": no_ez.f1,
                    "exclusion_zone": list(ez) if ez is not None else None,
                    "seconds": round(time.time() - t0, 2),
                }
            )
        return rows

    def checkpoint(self, metrics: dict[str, Any]) -> Path:
        ckpt = Checkpoint(
            architecture=self.arch,
            input_shape=self.in_shape,
            voxel_size=self.voxel_size,
            normalization=self.cfg.normalization,
            organelle=self.cfg.organelle,
            state_dict={k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            iteration=self.iteration,
            metrics=metrics,
            training_config={**self.cfg.record(), "init_from": self.init_from},
            optimizer_state=self.optimizer.state_dict(),
            rng_state={"torch": torch.get_rng_state()},
        )
        return save_checkpoint(ckpt, self.run_dir / "checkpoints" / f"iter_{self.iteration:07d}.pt")

    # -- main loop -------------------------------------------------------------

    def _log_rows(self, rows: list[dict[str, Any]], tb: Any) -> None:
        with open(self.metrics_path, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
                if tb is not None:
                    if r["kind"] == "train":
                        tb.add_scalar("train/loss", r["loss"], r["iteration"])
                    else:
                        for k in ("loss", "f1", "precision", "recall", "f1_no_exclusion"):
                            if r[k] is not None and not (isinstance(r[k], float) and math.isnan(r[k])):
                                tb.add_scalar(f"validation/{r['roi']}/{k}", r[k], r["iteration"])

    def run(self, progress: ProgressFn | None = None) -> TrainResult:
        """Train until ``training.iterations`` or ``training.max_minutes``, whichever comes first.

        ``progress`` is called as ``progress(stage, advance, total)``: stage ``"train"`` in
        iterations, or, with a time budget, stage :func:`budget_stage` in seconds of the budget
        (so a bar shows elapsed and remaining budget, not an iteration estimate). Every
        ``10 * log_every`` iterations ``log`` gets a line with the loss.
        """
        tc = self.cfg.training
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.iteration + 1)
        except ImportError:  # tensorboard is a dependency, but keep training usable without it
            tb = None
        budget_s = tc.max_minutes * 60 if tc.max_minutes else None
        bar = _TrainProgress(progress, tc.iterations, budget_s, self.iteration)
        if tc.data_workers > 0:
            self._prefetch = BatchPrefetcher(self.batch_arrays, self.iteration, workers=tc.data_workers)
        try:
            self._loop(tb, budget_s, bar)
        finally:
            if self._prefetch is not None:
                self._prefetch.close()
                self._prefetch = None
        if tb is not None:
            tb.close()
        return TrainResult(
            self.run_dir,
            self.iteration,
            latest_checkpoint(self.run_dir),
            self._last_validation,
            data_wait_s=self.data_wait_s,
            compute_s=self.compute_s,
        )

    def _loop(self, tb: Any, budget_s: float | None, bar: _TrainProgress) -> None:
        tc = self.cfg.training
        pending: list[dict[str, Any]] = []
        losses: list[float] = []
        waits: list[float] = []
        computes: list[float] = []
        t_start, first = time.time(), self.iteration
        while self.iteration < tc.iterations:
            out = self.step()
            losses.append(out["loss"])
            waits.append(out["data_s"])
            computes.append(out["compute_s"])
            self.data_wait_s += out["data_s"]
            self.compute_s += out["compute_s"]
            elapsed = time.time() - t_start
            if self.iteration % tc.log_every == 0:
                pending.append(
                    {
                        "kind": "train",
                        "iteration": self.iteration,
                        "loss": float(np.mean(losses)),
                        "foreground": out["foreground"],
                        "lr": out["lr"],
                        "elapsed_s": round(elapsed, 1),
                        "data_s": round(float(np.mean(waits)), 4),
                        "compute_s": round(float(np.mean(computes)), 4),
                    }
                )
                if self.iteration % (10 * tc.log_every) == 0:
                    rate = elapsed / max(1, self.iteration - first)
                    where = f"{self.iteration}/{tc.iterations}"
                    if budget_s is not None:
                        where = f"{self.iteration} ({elapsed / 60:.1f} of {tc.max_minutes:g} min)"
                    self.log(
                        f"iteration {where}: loss {np.mean(losses):.4f} ({rate:.2f} s/iteration; a step "
                        f"{np.mean(computes):.2f} s computing, {np.mean(waits):.3f} s waiting for data)"
                    )
                losses, waits, computes = [], [], []
            bar.update(self.iteration, elapsed)
            out_of_time = budget_s is not None and elapsed >= budget_s
            if self.iteration % tc.checkpoint_every == 0 or self.iteration == tc.iterations or out_of_time:
                val_rows = self.validate()
                self._last_validation = val_rows
                self._log_rows(pending + val_rows, tb)
                pending = []
                metrics = {
                    r["roi"]: {k: r[k] for k in ("loss", "f1", "precision", "recall", "exclusion_zone")}
                    for r in val_rows
                }
                self.checkpoint(metrics)
                plot_curves(_metrics_rows(self.metrics_path), self.run_dir / "curves.png")
                for r in val_rows:
                    self.log(
                        f"iteration {r['iteration']}: {r['roi']}: F1 {r['f1']:.4f} (no exclusion "
                        f"{r['f1_no_exclusion']:.4f}) loss {r['loss']:.4f}"
                    )
            if out_of_time:
                bar.update(self.iteration, time.time() - t_start)
                self.log(f"stopping after {tc.max_minutes:g} min at iteration {self.iteration}")
                break


def budget_stage(max_minutes: float) -> str:
    """Name of the progress stage of a time-budgeted run; its units are seconds of the budget."""
    return f"train (seconds of the {max_minutes:g} min budget)"


class _TrainProgress:
    """Reports training progress: iterations, or seconds of a time budget."""

    def __init__(self, progress: ProgressFn | None, iterations: int, budget_s: float | None, start: int) -> None:
        self.progress, self.iterations, self.budget_s = progress, iterations, budget_s
        if budget_s is not None:
            self.stage, self.total, self.done = budget_stage(budget_s / 60), max(1, math.ceil(budget_s)), 0
        else:
            self.stage, self.total, self.done = "train", iterations, start
        announce(progress, self.stage, self.total)
        if self.done:
            advance(progress, self.stage, self.done, self.total)

    def update(self, iteration: int, elapsed_s: float) -> None:
        now = iteration if self.budget_s is None else min(self.total, int(elapsed_s))
        if now > self.done:
            advance(self.progress, self.stage, now - self.done, self.total)
            self.done = now


def train(
    cfg: ExperimentConfig,
    resume: bool = False,
    init_from: str | Path | None = None,
    progress: ProgressFn | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train (or resume / fine-tune) as configured; returns where it ended."""
    return Trainer(cfg, resume=resume, init_from=init_from, log=log).run(progress=progress)
