"""Export an organet checkpoint as a bioimage.io model package (model spec 0.5).

:func:`export_bioimageio` writes one zip that ilastik, deepImageJ, the bioimage.io
website and ``bioimageio.core`` load without organet:

* ``pytorch_state_dict`` weights (the checkpoint's state dict) with the network shipped as
  source, :mod:`organet.model.bioimageio_unet` (torch only), and ``torchscript`` weights
  (that module, scripted). The network's forward ends with organet's softmax: the one output
  channel is the foreground probability (class 1) the Predictor writes.
* input ``raw`` with axes (batch, channel, z, y, x); each spatial axis sized
  ``min + n * step`` (:class:`ParameterizedSize`), exactly the network's valid input sizes
  (:func:`organet.predict.plan.valid_tile_sizes`), in nm (the checkpoint's voxel size).
* output ``probability`` of the input's size with ``halo`` = the network's context on each
  side (voxels, z y x): the valid output padded with zeros, for consumers to crop.
* preprocessing: the checkpoint's :class:`~organet.preprocess.normalize.Normalization`
  as ``scale_linear`` (``raw * gain + offset``, the same affine map to [-1, 1]). Contrast
  normalizations computed from the whole volume or neighbourhoods (``normalization.preprocess``:
  CLAHE, histogram equalization, percentile rescale) have no bioimage.io equivalent and are
  refused (:class:`~organet.errors.InputError`).
* test tensors computed by organet's own :class:`~organet.predict.predictor.Predictor`,
  a cover image, documentation, the ASEM citation, licence and authors.

``bioimageio.spec`` (``pip install 'organet[bioimageio]'``) is needed to write a package;
``bioimageio.core`` to test one (``bioimageio test PACKAGE.zip``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from organet.errors import IncompatibleError, InputError
from organet.model.checkpoint import Checkpoint, file_sha256, load_checkpoint
from organet.model.registry import ASEM_CITATION
from organet.model.unet import UNetConfig, context
from organet.preprocess.normalize import Normalization, describe_preprocess
from organet.progress import ProgressFn, advance, announce
from organet.volumes.atomic import atomic_path
from organet.volumes.geometry import Shape3, fmt_vec, same_voxel_size

ASEM_CITATION_TEXT = (
    "Gallusser B. et al., Deep neural network automated segmentation of cellular structures in volume electron "
    "microscopy, J Cell Biol 2023"
)
ASEM_DOI = "10.1083/jcb.202208005"
DEFAULT_AUTHOR = "organet contributors"
EXTRA = "pip install 'organet[bioimageio]'"
"""How to install what export needs (named in the error when it is missing)."""

INPUT_ID = "raw"
OUTPUT_ID = "probability"
ARCHITECTURE_FILE = "bioimageio_unet.py"
ARCHITECTURE_CALLABLE = "OrganetUNet"
TEST_OUTPUT_MIN = 16
"""The test input is the smallest valid size whose valid output has at least this many voxels per axis."""

INPUT_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
STAGE = "export bioimage.io"
_STEPS = 5


@dataclass(frozen=True)
class AxisSizes:
    """The valid input sizes of one spatial axis, ``min + n * step`` voxels, and its halo
    (voxels the valid convolutions remove on each side)."""

    min: int
    step: int
    halo: int


MIN_SPEC = (0, 5, 14)
"""Oldest bioimageio.spec that writes packages here (0.5.12 fails to serialize file entries with pydantic 2.14)."""


def _installed_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def require_spec() -> None:
    """Raise :class:`InputError` (one line, naming the extra) when ``bioimageio.spec`` is
    missing or older than :data:`MIN_SPEC`."""
    v = _installed_version("bioimageio.spec")
    if v is None or importlib.util.find_spec("bioimageio.spec") is None:
        raise InputError(f"bioimage.io export needs the bioimageio.spec package, which is not installed: {EXTRA}")
    parts = tuple(int(x) if x.isdigit() else 0 for x in v.split(".")[:3])
    if parts < MIN_SPEC:
        need = ".".join(map(str, MIN_SPEC))
        raise InputError(
            f"bioimage.io export needs bioimageio.spec >= {need}, found {v}: pip install 'bioimageio.spec>={need}'"
        )


def axis_sizes(cfg: UNetConfig) -> tuple[AxisSizes, AxisSizes, AxisSizes]:
    """Valid input sizes (``min + n * step`` voxels) and halo per axis (z, y, x) of ``cfg``.

    The sizes are :func:`organet.predict.plan.valid_tile_sizes`; they form one arithmetic
    progression per axis (checked here up to the planner's largest tile).
    """
    from organet.predict.plan import valid_tile_sizes

    per_axis = valid_tile_sizes(cfg)
    mins: list[int] = []
    steps: list[int] = []
    for axis, sizes in zip("zyx", per_axis):
        if len(sizes) < 2:
            raise IncompatibleError(f"the network has fewer than two valid input sizes on axis {axis}: {sizes}")
        step = sizes[1] - sizes[0]
        if sizes != list(range(sizes[0], sizes[-1] + 1, step)):
            raise IncompatibleError(
                f"the valid input sizes on axis {axis} ({sizes[:6]}...) are not min + n * step; "
                "bioimage.io's ParameterizedSize cannot describe them"
            )
        mins.append(sizes[0])
        steps.append(step)
    halo = context(cfg, mins)
    return (
        AxisSizes(mins[0], steps[0], halo[0]),
        AxisSizes(mins[1], steps[1], halo[1]),
        AxisSizes(mins[2], steps[2], halo[2]),
    )


def scale_linear(normalization: Normalization, dtype: str | np.dtype) -> tuple[float, float]:
    """``(gain, offset)`` with ``raw * gain + offset`` = ``normalization.apply(raw)`` for raw of ``dtype``.

    Raises :class:`InputError` for a normalization whose ``preprocess`` (CLAHE, histogram
    equalization, percentile rescale) has no bioimage.io equivalent.
    """
    if normalization.preprocess is not None:
        method = normalization.preprocess.get("method")
        why = {
            "linear": "its percentiles come from the whole volume, while bioimage.io's scale_range computes them "
            "per input tensor (tile)",
            "histeq": "bioimage.io has no histogram equalization",
        }.get(str(method), "bioimage.io has no CLAHE (contrast-limited adaptive histogram equalization)")
        raise InputError(
            f"cannot export to bioimage.io: the checkpoint's normalization expects input preprocessed with "
            f"{describe_preprocess(normalization.preprocess)} (normalization.preprocess), which has no bioimage.io "
            f"preprocessing equivalent ({why}); export a model trained on raw data (normalization.preprocess: null)"
        )
    lo, hi = normalization.bounds(np.dtype(dtype))
    gain = 2.0 / (hi - lo)
    return gain, -lo * gain - 1.0


def _spdx(licence: str | None) -> str | None:
    """The SPDX id of a registry licence text (``CC BY-SA 4.0 (...)`` -> ``CC-BY-SA-4.0``), or None."""
    from bioimageio.spec.model.v0_5 import LicenseId
    from pydantic import ValidationError

    if not licence:
        return None
    candidate = licence.split(" (", 1)[0].split(";", 1)[0].strip().replace(" ", "-")
    try:
        return str(LicenseId(candidate))
    except (ValidationError, ValueError):
        return None


def _absolute_tolerance(expected: np.ndarray) -> float:
    """The absolute tolerance declared for reproducing the test output: 1e-4, or 1 % of the
    output's maximum where that is smaller (the spec's limit)."""
    return float(min(1e-4, 0.01 * float(expected.max()))) if expected.max() > 0 else 1e-4


def _vs_text(vs: Sequence[float]) -> str:
    """``5`` for isotropic 5 nm voxels, else ``z x y x x`` (``10x5x5``)."""
    parts = [f"{v:g}" for v in vs]
    return parts[0] if len(set(parts)) == 1 else "x".join(parts)


def _synthetic_em(shape: Shape3, dtype: np.dtype, bounds: tuple[float, float], seed: int = 0) -> np.ndarray:
    """An EM-like test volume (z, y, x): bright cytoplasm, round compartments with dark
    membranes and mid-grey interiors, noise; values within ``bounds`` in ``dtype``."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    img = np.full(shape, 0.75, np.float32)
    for _ in range(max(3, int(np.prod(shape)) // 4000)):
        centre = [rng.uniform(0, s) for s in shape]
        radius = rng.uniform(0.15, 0.35) * min(shape)
        dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
        img[dist < radius] = 0.45
        img[np.abs(dist - radius) < 1.2] = 0.15
    img = ndimage.gaussian_filter(img, 0.8) + rng.normal(0, 0.05, shape).astype(np.float32)
    lo, hi = bounds
    out = lo + np.clip(img, 0.0, 1.0) * (hi - lo)
    if dtype.kind in "ui":
        return np.round(out).astype(dtype)
    return out.astype(dtype)


def _test_input(ck: Checkpoint, shape: Shape3, dtype: np.dtype, sample: Any | None) -> tuple[np.ndarray, str]:
    """The test input (z, y, x) of ``shape`` and a line saying where it comes from."""
    if sample is None:
        return _synthetic_em(shape, dtype, ck.normalization.bounds(dtype)), "synthetic (generated by organet)"
    where = getattr(sample, "path", "") or "the sample volume"
    if not same_voxel_size(sample.voxel_size, ck.voxel_size):
        raise IncompatibleError(
            f"{where} has {fmt_vec(sample.voxel_size)} nm voxels but the model was trained at "
            f"{fmt_vec(ck.voxel_size)} nm; give a sample at the model's voxel size"
        )
    if any(s < t for s, t in zip(sample.shape, shape)):
        raise InputError(f"{where} has shape {tuple(sample.shape)}; the test input needs at least {shape} voxels")
    start = [(s - t) // 2 for s, t in zip(sample.shape, shape)]
    data = np.asarray(sample.read(tuple(slice(a, a + t) for a, t in zip(start, shape))))
    return data.astype(dtype), f"{where}, voxels {start} + {list(shape)} (z, y, x)"


def _organet_prediction(ck_path: Path, ck: Checkpoint, raw: np.ndarray, halo: Shape3) -> np.ndarray:
    """Foreground probability (float32, z y x) of the valid centre of ``raw`` by organet's Predictor
    (one tile = the whole test input, fp32 on CPU, no TTA)."""
    from organet.predict.predictor import Predictor
    from organet.volumes.roi import Roi
    from organet.volumes.volume import Volume

    shape: Shape3 = (int(raw.shape[0]), int(raw.shape[1]), int(raw.shape[2]))
    pred = Predictor.from_checkpoint(ck_path, tile=shape, device="cpu", precision="fp32", tta=None)
    volume = Volume(raw, voxel_size=ck.voxel_size, chunks=shape)
    roi = Roi(halo, [s - 2 * h for s, h in zip(shape, halo)])
    return pred.predict(volume, roi)


def _cover(raw: np.ndarray, prob: np.ndarray, halo: Shape3, bounds: tuple[float, float], path: Path) -> None:
    """A 2:1 PNG: the middle z plane of the test input (left) and of the probability (right;
    the halo, which the network does not predict, in mid grey), each 256 x 256 pixels
    (nearest neighbour)."""
    import imageio.v3 as iio

    z = raw.shape[0] // 2
    lo, hi = bounds
    left: np.ndarray = np.clip((raw[z].astype(np.float64) - lo) / (hi - lo), 0, 1)
    right: np.ndarray = np.full(prob.shape[1:], 0.5)
    right[halo[1] : prob.shape[1] - halo[1], halo[2] : prob.shape[2] - halo[2]] = prob[
        z, halo[1] : prob.shape[1] - halo[1], halo[2] : prob.shape[2] - halo[2]
    ]
    panels = []
    for img in (left, right):
        ys = (np.arange(256) * img.shape[-2]) // 256
        xs = (np.arange(256) * img.shape[-1]) // 256
        panels.append(img[np.ix_(ys, xs)])
    grey = np.round(np.concatenate(panels, axis=1) * 255).astype(np.uint8)
    iio.imwrite(path, np.stack([grey] * 3, axis=-1))


def _documentation(
    ck: Checkpoint,
    source: str,
    sizes: Sequence[AxisSizes],
    gain: float,
    offset: float,
    dtype: str,
    test_shape: Shape3,
    test_source: str,
    citation: str | None,
    notes: str,
) -> str:
    vs = " x ".join(f"{v:g}" for v in ck.voxel_size)
    halo = [a.halo for a in sizes]
    metrics = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in ck.metrics.items())
    lines = [
        f"# organet {ck.organelle} segmentation (3D U-Net)",
        "",
        f"Semantic segmentation of **{ck.organelle}** in volume electron microscopy (FIB-SEM) at {vs} nm voxels "
        "(z, y, x), with the 3D U-Net of the ASEM pipeline (Gallusser et al., J Cell Biol 2023) as trained by "
        f"organet. Exported from `{source}` (iteration {ck.iteration}) by `organet export --bioimageio`.",
        "",
        "## Input",
        "",
        f"- `{INPUT_ID}`: one channel of raw EM intensities, axes (batch, channel, z, y, x), {dtype}, "
        f"voxel size {vs} nm. Use data at this voxel size; organet itself resamples other voxel sizes, "
        "bioimage.io consumers do not.",
        "- Valid sizes per axis (voxels): "
        + ", ".join(f"{ax} = {a.min} + n * {a.step}" for ax, a in zip("zyx", sizes))
        + ".",
        f"- Preprocessing: `scale_linear` with gain {gain:.9g} and offset {offset:.9g}, i.e. "
        f"{ck.normalization.describe()} for {dtype} data, exactly organet's normalization.",
        "",
        "## Output",
        "",
        f"- `{OUTPUT_ID}`: the foreground probability of {ck.organelle} (softmax of the network's two classes, "
        "class 1), float32 in [0, 1], same axes and size as the input. The softmax is part of the network; "
        "there is no postprocessing.",
        f"- Halo (z, y, x) = {halo} voxels: the network uses valid convolutions, so only the centre (input size "
        f"minus {2 * halo[0]}, {2 * halo[1]}, {2 * halo[2]} voxels) is predicted; the halo is filled with zeros "
        "and must be cropped. The network is translation-equivariant by the size step: input tiles that overlap "
        "by twice the halo and start a multiple of the step apart give the same values as one larger input.",
        "- `organet predict` writes this probability (rounded to 1/255) and its mask at a threshold (default 0.5).",
        "",
        "## Training",
        "",
        f"- Iteration {ck.iteration}; trained with input tiles of {list(ck.input_shape)} voxels (z, y, x); "
        f"{sum(int(v.numel()) for v in ck.state_dict.values())} parameters.",
        "",
        "## Validation",
        "",
        f"- Metrics recorded in the checkpoint (organet's validation during training): {metrics or 'none'}.",
        f"- Test data: `test_input.npy` ({list(test_shape)} voxels, z y x) from {test_source}; `test_output.npy` "
        "is organet's own prediction of it (Predictor, fp32, CPU) with the zero halo. At export organet checked "
        "that the shipped network reproduces it within 1e-4. `sample_input.tif` / `sample_output.tif` hold the "
        "same data as TIFF.",
    ]
    if notes:
        lines += ["", "## Notes", "", notes]
    lines += [
        "",
        "## Citation",
        "",
        f"- {ASEM_CITATION_TEXT}, doi:{ASEM_DOI}",
    ]
    if citation and citation != ASEM_CITATION:
        lines.append(f"- As listed by organet's model registry: {citation}")
    return "\n".join(lines) + "\n"


def export_bioimageio(
    checkpoint: str | os.PathLike[str],
    out_zip: str | os.PathLike[str],
    *,
    license: str | None = None,
    authors: Sequence[str] = (),
    name: str | None = None,
    input_dtype: str | None = None,
    sample: Any | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> Path:
    """Write checkpoint ``checkpoint`` as a bioimage.io model package (spec 0.5) to ``out_zip``.

    Parameters
    ----------
    checkpoint : path or str
        An organet checkpoint file or a registry name (:func:`organet.model.registry.resolve_model`).
    out_zip : path
        The package to write (a ``.zip``); written atomically.
    license : str, optional
        SPDX licence id of the weights (``CC-BY-4.0``, ``MIT``...). Default: the registry
        entry's licence when it is an SPDX id; otherwise required.
    authors : sequence of str
        Author names; default ``organet contributors``.
    name : str, optional
        The model's name; default ``organet <organelle> <voxel size> nm``.
    input_dtype : str, optional
        Data type of the input the package declares (one of :data:`INPUT_DTYPES`). With
        ``normalization.method == "dtype_range"`` it fixes the intensity range mapped to
        [-1, 1] (uint8: 0-255). Default: the sample's dtype, else uint8 (``dtype_range``)
        or float32 (``linear``).
    sample : Volume, optional
        Raw data at the model's voxel size; the test input is cropped from its centre.
        Default: a synthetic EM-like volume.
    overwrite : bool
        Replace an existing ``out_zip``.
    progress : ProgressFn, optional
        Called with stage ``"export bioimage.io"``.

    Returns
    -------
    Path
        ``out_zip``.

    Raises
    ------
    InputError
        ``bioimageio.spec`` missing, a normalization without bioimage.io equivalent, no
        licence, an existing ``out_zip``, a bad ``input_dtype``.
    """
    require_spec()
    import tifffile
    import torch
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bio

    from organet.model.bioimageio_unet import OrganetUNet
    from organet.model.registry import DEFAULT_REGISTRY, resolve_model

    out = Path(out_zip)
    if out.suffix.lower() != ".zip":
        raise InputError(f"bioimage.io package {out}: expected a file name ending in .zip")
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists; pass overwrite (--overwrite) to replace it")
    entry = None
    if not Path(checkpoint).expanduser().is_file() and str(checkpoint) in DEFAULT_REGISTRY:
        entry = DEFAULT_REGISTRY.get(str(checkpoint))
        if entry.short_normalization in ("clahe", "clahe-incasem", "histeq"):
            raise InputError(
                f"cannot export {entry.name} to bioimage.io: its input must be preprocessed with "
                f"{entry.short_normalization}, which has no bioimage.io preprocessing equivalent; "
                "export a model trained on raw data (normalization.preprocess: null)"
            )
    licence = license or (_spdx(entry.licence) if entry is not None else None)
    if licence is None:
        known = f" (its registry licence is {entry.licence!r})" if entry is not None else ""
        raise InputError(
            f"no licence for the bioimage.io package of {checkpoint}{known}: pass an SPDX id with license "
            "(--license), e.g. CC-BY-4.0 or MIT"
        )
    if _spdx(licence) is None:
        raise InputError(f"licence {licence!r} is not an SPDX id (https://spdx.org/licenses/), e.g. CC-BY-4.0, MIT")

    announce(progress, STAGE, _STEPS)
    ck_path = resolve_model(checkpoint, progress=progress)
    ck = load_checkpoint(ck_path)
    dtype_name = input_dtype or (
        str(np.dtype(sample.dtype))
        if sample is not None
        else ("uint8" if ck.normalization.method == "dtype_range" else "float32")
    )
    if dtype_name not in INPUT_DTYPES:
        raise InputError(f"input dtype {dtype_name!r}: expected one of {', '.join(INPUT_DTYPES)}")
    dtype = np.dtype(dtype_name)
    gain, offset = scale_linear(ck.normalization, dtype)
    sizes = axis_sizes(ck.architecture)
    halo: Shape3 = (sizes[0].halo, sizes[1].halo, sizes[2].halo)
    test_shape = tuple(
        next(a.min + n * a.step for n in range(10_000) if a.min + n * a.step - 2 * a.halo >= TEST_OUTPUT_MIN)
        for a in sizes
    )
    test_shape3: Shape3 = (int(test_shape[0]), int(test_shape[1]), int(test_shape[2]))
    advance(progress, STAGE, 1, _STEPS)

    raw, test_source = _test_input(ck, test_shape3, dtype, sample)
    valid = _organet_prediction(ck_path, ck, raw, halo)
    expected = np.zeros(test_shape3, np.float32)
    expected[tuple(slice(h, h + v) for h, v in zip(halo, valid.shape))] = valid
    advance(progress, STAGE, 1, _STEPS)

    kwargs: dict[str, Any] = {**ck.architecture.to_dict(), "halo": list(halo), "foreground": 1}
    net = OrganetUNet(**kwargs)
    net.load_state_dict(ck.state_dict)
    net.eval()
    with torch.no_grad():
        x = torch.from_numpy(raw.astype(np.float32) * np.float32(gain) + np.float32(offset))[None, None]
        shipped = net(x)[0, 0].numpy()
    if not np.allclose(shipped, expected, atol=1e-4, rtol=0):
        raise AssertionError(  # organet's Predictor and the shipped network must agree: a defect, not user input
            f"the shipped network differs from organet's prediction by {np.abs(shipped - expected).max():.3g}"
        )
    with warnings.catch_warnings():  # TorchScript is deprecated in torch, but it is bioimage.io's torchscript format
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=DeprecationWarning)
        scripted = torch.jit.script(net)
    advance(progress, STAGE, 1, _STEPS)

    with tempfile.TemporaryDirectory(prefix="organet-bioimageio-") as tmp_dir:
        tmp = Path(tmp_dir)
        arch = tmp / ARCHITECTURE_FILE
        shutil.copyfile(Path(__file__).with_name(ARCHITECTURE_FILE), arch)
        weights = tmp / "weights.pt"
        torch.save({k: v.detach().cpu().contiguous() for k, v in ck.state_dict.items()}, weights)
        ts = tmp / "weights_torchscript.pt"
        scripted.save(str(ts))
        np.save(tmp / "test_input.npy", raw[None, None])
        np.save(tmp / "test_output.npy", expected[None, None])
        tifffile.imwrite(tmp / "sample_input.tif", raw)
        tifffile.imwrite(tmp / "sample_output.tif", expected)
        _cover(raw, expected, halo, ck.normalization.bounds(dtype), tmp / "cover.png")
        citation = entry.citation if entry is not None else None
        doc = tmp / "README.md"
        doc.write_text(
            _documentation(
                ck,
                entry.name if entry is not None else ck_path.name,
                sizes,
                gain,
                offset,
                dtype_name,
                test_shape3,
                test_source,
                citation,
                entry.notes if entry is not None else "",
            )
        )
        advance(progress, STAGE, 1, _STEPS)

        vs = ck.voxel_size
        in_axes: list[Any] = [
            bio.BatchAxis(),
            bio.ChannelAxis(channel_names=[bio.Identifier("raw")]),
        ]
        out_axes: list[Any] = [
            bio.BatchAxis(),
            bio.ChannelAxis(channel_names=[bio.Identifier(ck.organelle)]),
        ]
        for ax, a, v in zip("zyx", sizes, vs):
            in_axes.append(
                bio.SpaceInputAxis(
                    id=bio.AxisId(ax),
                    size=bio.ParameterizedSize(min=a.min, step=a.step),
                    unit="nanometer",
                    scale=float(v),
                )
            )
            out_axes.append(
                bio.SpaceOutputAxisWithHalo(
                    id=bio.AxisId(ax),
                    size=bio.SizeReference(tensor_id=bio.TensorId(INPUT_ID), axis_id=bio.AxisId(ax)),
                    halo=a.halo,
                    unit="nanometer",
                    scale=float(v),
                )
            )
        inputs = [
            bio.InputTensorDescr(
                id=bio.TensorId(INPUT_ID),
                description=f"raw EM intensities ({dtype_name}) at {_vs_text(vs)} nm voxels (z, y, x)",
                axes=in_axes,
                test_tensor=bio.FileDescr(source=tmp / "test_input.npy"),
                sample_tensor=bio.FileDescr(source=tmp / "sample_input.tif"),
                data=bio.IntervalOrRatioDataDescr(type=dtype_name),
                preprocessing=[  # explicit float32 on both sides: the spec adds ensure_dtype(data.type) otherwise
                    bio.EnsureDtypeDescr(kwargs=bio.EnsureDtypeKwargs(dtype="float32")),
                    bio.ScaleLinearDescr(kwargs=bio.ScaleLinearKwargs(gain=gain, offset=offset)),
                    bio.EnsureDtypeDescr(kwargs=bio.EnsureDtypeKwargs(dtype="float32")),
                ],
            )
        ]
        outputs = [
            bio.OutputTensorDescr(
                id=bio.TensorId(OUTPUT_ID),
                description=f"foreground probability of {ck.organelle} (softmax class 1); zero in the halo",
                axes=out_axes,
                test_tensor=bio.FileDescr(source=tmp / "test_output.npy"),
                sample_tensor=bio.FileDescr(source=tmp / "sample_output.tif"),
                data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
            )
        ]
        torch_version = bio.Version(torch.__version__.split("+", 1)[0])
        weights_descr = bio.WeightsDescr(
            pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
                source=weights,
                architecture=bio.ArchitectureFromFileDescr(
                    source=arch, callable=bio.Identifier(ARCHITECTURE_CALLABLE), kwargs=kwargs
                ),
                pytorch_version=torch_version,
            ),
            torchscript=bio.TorchscriptWeightsDescr(
                source=ts, pytorch_version=torch_version, parent="pytorch_state_dict"
            ),
        )
        descr = bio.ModelDescr(
            name=name or f"organet {ck.organelle} {_vs_text(vs)} nm",
            description=(
                f"3D U-Net (ASEM pipeline, organet) predicting the foreground probability of {ck.organelle} "
                f"in FIB-SEM volumes at {_vs_text(vs)} nm voxels (z, y, x)"
            )[:1024],
            authors=[bio.Author(name=a) for a in (authors or (DEFAULT_AUTHOR,))],
            cite=[bio.CiteEntry(text=ASEM_CITATION_TEXT, doi=bio.Doi(ASEM_DOI))],
            license=bio.LicenseId(licence),
            documentation=bio.FileDescr(source=doc),
            covers=[bio.FileDescr(source=tmp / "cover.png")],
            tags=["3d", "electron-microscopy", "fib-sem", "semantic-segmentation", "unet", "pytorch", ck.organelle],
            inputs=inputs,
            outputs=outputs,
            weights=weights_descr,
            timestamp=bio.Datetime(datetime.now(timezone.utc)),
            config=bio.Config(
                bioimageio=bio.BioimageioConfig(
                    reproducibility_tolerance=[
                        bio.ReproducibilityTolerance(
                            relative_tolerance=1e-3, absolute_tolerance=_absolute_tolerance(expected)
                        )
                    ]
                ),
                organet={
                    "checkpoint": ck_path.name,
                    "checkpoint_sha256": file_sha256(ck_path),
                    "registry_name": entry.name if entry is not None else None,
                    "iteration": ck.iteration,
                    "organelle": ck.organelle,
                    "voxel_size_nm": list(vs),
                    "trained_input_shape": list(ck.input_shape),
                    "normalization": ck.normalization.model_dump(),
                    "architecture": ck.architecture.to_dict(),
                    "halo_vox": list(halo),
                },
            ),
        )
        built = tmp / "package.zip"
        save_bioimageio_package(descr, output_path=built)
        with atomic_path(out) as dst:
            shutil.copyfile(built, dst)
    advance(progress, STAGE, 1, _STEPS)
    return out


__all__ = [
    "ASEM_DOI",
    "AxisSizes",
    "EXTRA",
    "INPUT_DTYPES",
    "axis_sizes",
    "export_bioimageio",
    "require_spec",
    "scale_linear",
]
