"""CPU inference backends: one forward pass of the same network on the same tile, per backend.

For each tile input size (voxels per axis, a cube), every backend runs the network
(seeded weights, fp32, batch 1) on the same random input; the passes are interleaved
(A B C A B C …, after one warm-up round that is not timed) so that load from other jobs
on the machine hits every backend alike. Reported per backend: best and median seconds
of ``--repeats`` passes, speed-up of the best over torch eager's best, the largest
absolute difference of the foreground probability (softmax channel 1) from torch eager
fp32, the peak resident memory a pass added (sampled every 5 ms from /proc during each
pass, so short spikes may be missed; ONNX Runtime's and OpenVINO's allocators keep their
memory between passes, so their first pass counts) and the setup time (export, compile,
first pass).

Backends (``--backends``; those whose package is missing are skipped with a note):

- ``eager``: torch as :func:`organet.predict.tiled.run_tiles` runs it.
- ``eager-no-onednn``: the same with ``torch.backends.mkldnn`` disabled (shows whether eager
  already runs its 3D convolutions through oneDNN).
- ``channels-last``: model and input in ``torch.channels_last_3d`` memory format.
- ``jit``: ``torch.jit.trace`` + ``torch.jit.freeze`` + ``optimize_for_inference`` (traced per tile size).
- ``compile``: ``torch.compile`` (inductor, needs a C++ compiler; compiled per tile size).
- ``onnxruntime``: ONNX Runtime's CPUExecutionProvider on one ONNX export with dynamic
  batch and spatial axes (``--exporter``: ``dynamo`` needs onnxscript; ``torchscript`` is
  torch's older exporter).
- ``openvino``: OpenVINO's CPU device as ``organet predict --backend openvino`` runs it
  (:func:`organet.predict.tiled.openvino_model`: OpenVINO's torch frontend, dynamic batch and
  spatial axes; :class:`~organet.predict.tiled.OpenVinoNetwork`: ``INFERENCE_PRECISION_HINT=f32``,
  as OpenVINO would otherwise use bf16 on CPUs that have it).
- ``openvino-onnx``: OpenVINO's CPU device on the ONNX file, reshaped to the tile (static shapes), fp32.

    nice -n 10 python benchmarks/backends.py --net reduced --sizes 100 140 --repeats 2
    python benchmarks/backends.py --net asem --sizes 204 300 --repeats 5
    python benchmarks/backends.py --net asem --sizes 204 --backends eager onnxruntime openvino
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiles import NETS  # noqa: E402

BACKENDS = ("eager", "eager-no-onednn", "channels-last", "jit", "compile", "onnxruntime", "openvino", "openvino-onnx")
DEFAULT = [b for b in BACKENDS if b != "eager-no-onednn"]  # oneDNN off: 5x slower than eager, checked once

Runner = Callable[[np.ndarray], np.ndarray]
"""One forward pass: input (N, 1, z, y, x) float32 -> foreground probability (N, z, y, x) float32."""


class Skip(Exception):
    """A backend that cannot run here (package missing, export failed)."""


def _probability(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.float(), dim=1)[:, 1].contiguous().numpy()


def _probability_np(logits: np.ndarray) -> np.ndarray:
    return _probability(torch.from_numpy(np.asarray(logits)))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakRss:
    """Peak resident set size (bytes) above the level at entry, sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.added = 0
        self._stop = threading.Event()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.added = max(self.added, _rss() - self.before)

    def __enter__(self) -> PeakRss:
        self.before = _rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.added = max(self.added, _rss() - self.before)


def export_onnx(model: torch.nn.Module, path: Path, size: int, exporter: str) -> None:
    """Export ``model`` to ONNX at ``path`` with dynamic batch and spatial axes (example input ``size``³)."""
    x = torch.zeros(1, 1, size, size, size)
    names = {"input_names": ["raw"], "output_names": ["logits"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            from torch.export import Dim

            dims = {0: Dim("batch", min=1, max=1024), 2: Dim.AUTO, 3: Dim.AUTO, 4: Dim.AUTO}
            torch.onnx.export(model, (x,), str(path), dynamo=True, dynamic_shapes=(dims,), verbose=False, **names)
        else:
            axes = {"raw": {0: "batch", 2: "z", 3: "y", 4: "x"}, "logits": {0: "batch", 2: "oz", 3: "oy", 4: "ox"}}
            torch.onnx.export(model, (x,), str(path), dynamo=False, dynamic_axes=axes, opset_version=17, **names)


@dataclass
class Setup:
    """What every backend builder gets."""

    model: torch.nn.Module
    size: int
    threads: int
    onnx: Callable[[], Path]


def build_eager(s: Setup) -> Runner:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return _probability(s.model(torch.from_numpy(x)))

    return run


def build_no_onednn(s: Setup) -> Runner:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
            return _probability(s.model(torch.from_numpy(x)))

    return run


def build_channels_last(s: Setup) -> Runner:
    fmt = torch.channels_last_3d
    model = copy.deepcopy(s.model).to(memory_format=fmt)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return _probability(model(torch.from_numpy(x).contiguous(memory_format=fmt)))

    return run


def build_jit(s: Setup) -> Runner:
    x0 = torch.zeros(1, 1, s.size, s.size, s.size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(s.model, x0)))

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return _probability(traced(torch.from_numpy(x)))

    return run


def build_compile(s: Setup) -> Runner:
    compiled = torch.compile(s.model, dynamic=False)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return _probability(compiled(torch.from_numpy(x)))

    return run


def build_onnxruntime(s: Setup) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise Skip("onnxruntime is not installed") from e
    so = ort.SessionOptions()
    so.intra_op_num_threads = s.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(s.onnx()), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return _probability_np(sess.run(None, {name: x})[0])

    return run


def build_openvino(s: Setup) -> Runner:
    try:
        import openvino  # noqa: F401
    except ImportError as e:
        raise Skip("openvino is not installed") from e
    from organet.predict.tiled import OpenVinoNetwork, openvino_model

    net = OpenVinoNetwork(openvino_model(s.model), s.threads)

    def run(x: np.ndarray) -> np.ndarray:
        return _probability(net(torch.from_numpy(x)))

    return run


def build_openvino_onnx(s: Setup) -> Runner:
    try:
        import openvino as ov
    except ImportError as e:
        raise Skip("openvino is not installed") from e
    core = ov.Core()
    model = core.read_model(str(s.onnx()))
    model.reshape({model.inputs[0].any_name: [1, 1, s.size, s.size, s.size]})
    config = {
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": s.threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
    }
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        return _probability_np(request.infer({0: x})[0])

    return run


BUILDERS: dict[str, Callable[[Setup], Runner]] = {
    "eager": build_eager,
    "eager-no-onednn": build_no_onednn,
    "channels-last": build_channels_last,
    "jit": build_jit,
    "compile": build_compile,
    "onnxruntime": build_onnxruntime,
    "openvino": build_openvino,
    "openvino-onnx": build_openvino_onnx,
}


@dataclass
class Result:
    backend: str
    times: list[float] = field(default_factory=list)
    setup: float = 0.0
    diff: float = float("nan")
    peak: int = 0
    note: str = ""


def bench_size(
    model: torch.nn.Module, size: int, backends: list[str], repeats: int, threads: int, onnx: Callable[[], Path]
) -> list[Result]:
    """Interleaved passes of every backend on one ``size``³ input (the first round is the warm-up)."""
    x = np.random.default_rng(0).random((1, 1, size, size, size), dtype=np.float32)
    setup = Setup(model, size, threads, onnx)
    runners: dict[str, Runner] = {}
    results = {b: Result(b) for b in backends}
    reference: np.ndarray | None = None
    for rnd in range(repeats + 1):
        for b in backends:
            r = results[b]
            if r.note:
                continue
            t0 = time.perf_counter()
            try:
                with PeakRss() as mem:
                    if b not in runners:
                        runners[b] = BUILDERS[b](setup)
                    p = runners[b](x)
            except Skip as e:
                r.note = f"skipped: {e}"
                continue
            except Exception as e:  # a benchmark reports a backend that fails instead of stopping
                r.note = f"failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:100] if str(e).strip() else ''}"
                continue
            dt = time.perf_counter() - t0
            r.peak = max(r.peak, mem.added)
            if rnd == 0:
                r.setup = dt
                if b == "eager":
                    reference = p
                if reference is not None:
                    r.diff = float(np.abs(p - reference).max())
            else:
                r.times.append(dt)
    return [results[b] for b in backends]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", choices=sorted(NETS), default="reduced")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 140])
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per backend (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of every backend")
    ap.add_argument("--backends", nargs="+", choices=BACKENDS, default=DEFAULT)
    ap.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo", help="torch.onnx exporter")
    args = ap.parse_args(argv)

    import platform

    from organet.model.unet import UNet, UNetConfig, output_shape

    torch.set_num_threads(args.threads)
    cfg = UNetConfig.from_dict(NETS[args.net])
    torch.manual_seed(0)
    model = UNet(cfg).eval()
    backends = ["eager"] + [b for b in args.backends if b != "eager"]  # eager is the reference

    versions = [f"torch {torch.__version__}"]
    for pkg in ("onnx", "onnxscript", "onnxruntime", "openvino"):
        try:
            versions.append(f"{pkg} {__import__(pkg).__version__}")
        except ImportError:
            versions.append(f"{pkg} missing")
    tmp = tempfile.TemporaryDirectory(prefix="organet-backends-")
    onnx_path = Path(tmp.name) / f"{args.net}.onnx"
    export_seconds: list[float] = []

    def onnx() -> Path:
        if not onnx_path.exists():
            try:
                import onnx as _onnx  # noqa: F401
            except ImportError as e:
                raise Skip("onnx is not installed (needed for the export)") from e
            if args.exporter == "dynamo":
                try:
                    import onnxscript  # noqa: F401
                except ImportError as e:
                    raise Skip("onnxscript is not installed (--exporter dynamo needs it)") from e
            t0 = time.perf_counter()
            export_onnx(model, onnx_path, args.sizes[0], args.exporter)
            export_seconds.append(time.perf_counter() - t0)
        return onnx_path

    print(
        f"network {args.net}, fp32, batch 1, {args.threads} threads, {args.repeats} timed passes per backend "
        f"(interleaved), {platform.processor() or platform.machine()}; {', '.join(versions)}",
        flush=True,
    )
    rows = []
    for size in args.sizes:
        out = output_shape(cfg, (size,) * 3)
        if out is None:
            print(f"tile {size}³ is not a valid input of the {args.net} network; skipped")
            continue
        for r in bench_size(model, size, backends, args.repeats, args.threads, onnx):
            rows.append((size, out[0], r))
    eager_best = {s: min(r.times) for s, _, r in rows if r.backend == "eager" and r.times}
    print()
    print("| tile in | tile out | backend | best s | median s | speed-up vs eager | max abs diff p | peak added GiB "
          "| setup s | note |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size, out_size, r in rows:
        if not r.times:
            print(f"| {size}³ | {out_size}³ | {r.backend} | | | | | | | {r.note or 'no timed pass'} |")
            continue
        best, med = min(r.times), statistics.median(r.times)
        speed = eager_best[size] / best if size in eager_best else float("nan")
        print(
            f"| {size}³ | {out_size}³ | {r.backend} | {best:.3f} | {med:.3f} | {speed:.2f}× | {r.diff:.1e} | "
            f"{r.peak / 2**30:.2f} | {r.setup:.1f} | {r.note} |"
        )
    if export_seconds:
        print(f"\nONNX export ({args.exporter} exporter, dynamic batch and spatial axes): {export_seconds[0]:.1f} s, "
              "counted in the setup of the first backend that used it")  # fmt: skip
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
