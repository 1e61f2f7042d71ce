"""Import incasem (ASEM) checkpoints: funlib.learn.torch U-Net weights -> organet checkpoints.

incasem (Gallusser et al., J Cell Biol 2023) trains ``incasem.torch.models.Unet``: a
funlib.learn.torch ``UNet`` (module ``unet``; nearest-neighbour upsampling,
``constant_upsample=True``; valid 3x3x3 convolutions + ReLU) followed by
``final_conv_pass``, one valid 3x3x3 convolution to 2 logits without activation.
gunpowder's ``Train`` node saves ``{"model_state_dict": ..., "optimizer_state_dict": ...}``;
the iteration is only in gunpowder's file name (``model_checkpoint_<iteration>``), and the
published files are renamed ``model_checkpoint_<run id>_<organelle>_<tag>.pt``.

The layers map one to one onto :class:`~organet.model.unet.UNet` (same convolutions,
same channel order of the skip concatenation: skip first, then the upsampled map)::

    unet.l_conv.{lvl}.conv_pass.{2j}.*      -> down.{lvl}.{2j}.*    lvl 0 = full resolution
    unet.r_conv.0.{lvl}.conv_pass.{2j}.*    -> up.{lvl}.{2j}.*      (.0. = decoder head 0)
    final_conv_pass.conv_pass.0.*           -> final.*

where ``j`` counts the convolutions of a level (ReLUs sit at the odd indices). funlib's
``UNet`` as incasem installs it (funkelab/funlib.learn.torch master) centre-crops after
every upsampling so that ``size - 4`` is a multiple of the product of the downsampling
factors at and below that level, exactly as organet's U-Net does, so the imported network
computes the same function (ASEM: 204^3 -> 110^3, incasem's own tile).

Shapes are in voxels and voxel sizes in nm, both in (z, y, x) order.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from organet.errors import CheckpointError, InputError
from organet.model.checkpoint import FORMAT, Checkpoint, save_checkpoint
from organet.model.unet import UNet, UNetConfig, output_shape, valid_sizes
from organet.organelles import canonical_organelle
from organet.preprocess.normalize import Normalization, canonical_preprocess
from organet.volumes.geometry import Shape3, Vec3, as_vec3

SOURCE = "imported from incasem (funlib.learn.torch UNet)"
NORMALIZATIONS = ("clahe-incasem", "none")
"""``normalization`` values of :func:`import_incasem`: incasem's blockwise CLAHE before the
[-1, 1] mapping (what incasem's models were trained on), or the [-1, 1] mapping alone."""

NormalizationName = Literal["clahe-incasem", "none"]

_L_CONV = re.compile(r"^unet\.l_conv\.(\d+)\.conv_pass\.(\d+)\.weight$")
_FILE_NAME = re.compile(r"^model_checkpoint_(\d+)(?:_(.+?))?(?:\.pt|\.pth)?$")


def funlib_key_map(arch: UNetConfig) -> dict[str, str]:
    """funlib/incasem parameter name -> organet parameter name for ``arch``, in layer order.

    Derived from the architecture: ``arch.num_levels`` encoder levels and
    ``arch.num_levels - 1`` decoder levels of ``arch.convs_per_level`` convolutions each
    (a ReLU after each, hence the even Sequential indices), then the final convolution.
    """
    out: dict[str, str] = {}

    def conv_pass(src: str, dst: str) -> None:
        for j in range(arch.convs_per_level):
            for p in ("weight", "bias"):
                out[f"{src}.conv_pass.{2 * j}.{p}"] = f"{dst}.{2 * j}.{p}"

    for lvl in range(arch.num_levels):
        conv_pass(f"unet.l_conv.{lvl}", f"down.{lvl}")
    for lvl in range(arch.num_levels - 1):
        conv_pass(f"unet.r_conv.0.{lvl}", f"up.{lvl}")
    for p in ("weight", "bias"):
        out[f"final_conv_pass.conv_pass.0.{p}"] = f"final.{p}"
    return out


def _expected_shapes(arch: UNetConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = UNet(arch)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _refuse_foreign_layout(sd: Mapping[str, Any], where: str) -> None:
    """Clear refusals for funlib U-Nets that organet's U-Net cannot represent."""
    for k in sd:
        if k.startswith("unet.r_up."):
            raise CheckpointError(
                f"{where}: has transposed-convolution upsampling weights ({k!r}): the network was built with "
                "constant_upsample=False; organet's U-Net upsamples by nearest neighbour (constant_upsample=True, "
                "as incasem's models), so it cannot be imported"
            )
        if re.match(r"^unet\.r_conv\.[1-9]\d*\.", k):
            raise CheckpointError(
                f"{where}: has a second decoder head ({k!r}, num_heads > 1); organet imports single-head U-Nets only"
            )


def convert_funlib_state_dict(
    sd: Mapping[str, Any], arch: UNetConfig, where: str = "state dict"
) -> dict[str, torch.Tensor]:
    """Rename the funlib/incasem parameters of ``sd`` to organet's for architecture ``arch``.

    Every key of :func:`funlib_key_map` must be present with the shape organet's
    :class:`~organet.model.unet.UNet` has for it, and no other key may be present.
    Tensors are returned as float32 copies on the CPU.

    Raises
    ------
    CheckpointError
        Naming the first problem in layer order (``where``, the key, the expected and
        the found shape): a transposed-convolution or multi-head U-Net, a missing key, a
        wrong shape, a non-floating tensor, then the first unexpected key.
    """
    _refuse_foreign_layout(sd, where)
    key_map = funlib_key_map(arch)
    expected = _expected_shapes(arch)
    out: dict[str, torch.Tensor] = {}
    for src, dst in key_map.items():
        want = expected[dst]
        if src not in sd:
            raise CheckpointError(f"{where}: missing key {src!r} (expected shape {want})")
        t = sd[src]
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{where}: {src!r} is a {type(t).__name__}, expected a tensor of shape {want}")
        if tuple(t.shape) != want:
            raise CheckpointError(f"{where}: {src!r} has shape {tuple(t.shape)}, expected {want}")
        if not t.is_floating_point():
            raise CheckpointError(f"{where}: {src!r} has dtype {t.dtype}, expected floating-point weights")
        out[dst] = t.detach().to("cpu", torch.float32).contiguous().clone()
    for k in sd:
        if k not in key_map:
            shape = tuple(sd[k].shape) if isinstance(sd[k], torch.Tensor) else type(sd[k]).__name__
            raise CheckpointError(
                f"{where}: unexpected key {k!r} ({shape}); the architecture {_describe(arch)} has no such parameter"
            )
    if set(out) != set(expected):  # the key map covers organet's U-Net exactly
        raise AssertionError(f"key map misses organet parameters {sorted(set(expected) - set(out))}")
    return out


def infer_architecture(
    sd: Mapping[str, Any],
    downsample_factors: Sequence[Sequence[int]] | None = None,
    where: str = "state dict",
) -> UNetConfig:
    """The :class:`UNetConfig` of a funlib/incasem state dict, from its tensor shapes.

    Levels, convolutions per level, kernel sizes, ``num_fmaps``, ``fmap_inc_factor``,
    input and output channels are read from the weights. Pooling has no weights, so the
    downsampling factors (z, y, x per level) cannot be: they default to (2, 2, 2) per
    level (every incasem model). The result is checked against every tensor
    (:func:`convert_funlib_state_dict`), so an inconsistent file is refused.
    """
    _refuse_foreign_layout(sd, where)
    convs: dict[int, set[int]] = {}
    for k in sd:
        m = _L_CONV.match(k)
        if m:
            convs.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if 0 not in convs or 0 not in convs[0]:
        first = ", ".join(repr(k) for k in list(sd)[:3])
        raise CheckpointError(
            f"{where}: not a funlib.learn.torch U-Net: no key 'unet.l_conv.0.conv_pass.0.weight' (keys start {first})"
        )
    num_levels = max(convs) + 1
    if num_levels < 2:
        raise CheckpointError(f"{where}: a U-Net without downsampling (1 level) cannot be imported")
    w0 = sd["unet.l_conv.0.conv_pass.0.weight"]
    if not isinstance(w0, torch.Tensor) or w0.dim() != 5:
        found = tuple(w0.shape) if isinstance(w0, torch.Tensor) else type(w0).__name__
        raise CheckpointError(
            f"{where}: 'unet.l_conv.0.conv_pass.0.weight' has shape {found}, expected a 3D convolution "
            "(out, in, z, y, x)"
        )
    ks = tuple(w0.shape[2:])
    if len(set(ks)) != 1:
        raise CheckpointError(f"{where}: kernel size {ks} is not cubic; organet's U-Net uses cubic kernels")
    if w0.shape[1] != 1:
        raise CheckpointError(
            f"{where}: the first convolution takes {w0.shape[1]} input channels; organet models take one raw channel"
        )
    num_fmaps = int(w0.shape[0])
    inc = 1
    w1 = sd.get("unet.l_conv.1.conv_pass.0.weight")
    if isinstance(w1, torch.Tensor) and w1.dim() == 5:
        if w1.shape[0] % num_fmaps:
            raise CheckpointError(
                f"{where}: level 1 has {w1.shape[0]} feature maps, not a multiple of level 0's {num_fmaps}"
            )
        inc = int(w1.shape[0]) // num_fmaps
    wf = sd.get("final_conv_pass.conv_pass.0.weight")
    if not isinstance(wf, torch.Tensor) or wf.dim() != 5:
        raise CheckpointError(
            f"{where}: missing key 'final_conv_pass.conv_pass.0.weight' (incasem's final 3x3x3 convolution)"
        )
    if wf.shape[0] != 2:
        raise CheckpointError(
            f"{where}: the final convolution has {wf.shape[0]} output channels; organet models are binary "
            "(2 logits: background, foreground)"
        )
    factors = downsample_factors if downsample_factors is not None else [(2, 2, 2)] * (num_levels - 1)
    if len(factors) != num_levels - 1:
        raise InputError(f"{len(factors)} downsample factors given, but the weights have {num_levels} levels")
    arch = UNetConfig(
        in_channels=1,
        num_fmaps=num_fmaps,
        fmap_inc_factor=inc,
        downsample_factors=tuple((int(f[0]), int(f[1]), int(f[2])) for f in factors),
        kernel_size=int(ks[0]),
        convs_per_level=len(convs[0]),
        out_channels=int(wf.shape[0]),
        final_kernel_size=int(wf.shape[2]),
    )
    convert_funlib_state_dict(sd, arch, where)  # consistency of every tensor with the inferred architecture
    return arch


@dataclass
class IncasemFile:
    """What :func:`load_incasem_file` found: the model state dict and where it came from."""

    path: Path
    sha256: str
    state_dict: dict[str, torch.Tensor]
    layout: str
    """``"gunpowder"`` (a dict with ``model_state_dict``) or ``"state_dict"`` (bare)."""
    iteration: int | None = None
    run_id: int | None = None
    tag: str | None = None
    extra_keys: list[str] = field(default_factory=list)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def load_incasem_file(path: str | Path) -> IncasemFile:
    """Read an incasem/gunpowder checkpoint safely (``weights_only``, on the CPU).

    Accepts gunpowder's dict with ``model_state_dict`` (other entries such as
    ``optimizer_state_dict`` are ignored; an integer ``iteration`` is kept) or a bare state
    dict; a ``module.`` prefix (``DataParallel``) is removed. The run id and tag come from a
    file name ``model_checkpoint_<id>_<tag>.pt``; gunpowder's own ``model_checkpoint_<n>``
    names the iteration.

    Raises
    ------
    CheckpointError
        For a missing, unreadable (random bytes, truncated) or foreign file, with one line.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"incasem checkpoint not found: {p}")
    data = p.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    try:
        d = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for foreign, truncated or unsafe files
        raise CheckpointError(f"cannot read {p} as a PyTorch checkpoint: {_first_line(e)}") from None
    if not isinstance(d, dict):
        raise CheckpointError(
            f"{p} holds a {type(d).__name__}, expected a state dict or gunpowder's dict with 'model_state_dict'"
        )
    if d.get("format") == FORMAT:
        raise CheckpointError(f"{p} is already an organet checkpoint; use it directly")
    iteration: int | None = None
    if "model_state_dict" in d:
        layout, sd, extra = "gunpowder", d["model_state_dict"], [str(k) for k in d if k != "model_state_dict"]
        it = d.get("iteration")
        if isinstance(it, int) and not isinstance(it, bool):
            iteration = it
        if not isinstance(sd, dict):
            raise CheckpointError(f"{p}: 'model_state_dict' is a {type(sd).__name__}, expected a state dict")
    else:
        layout, sd, extra = "state_dict", d, []
        bad = next((k for k, v in d.items() if not isinstance(v, torch.Tensor)), None)
        if bad is not None:
            keys = ", ".join(repr(k) for k in list(d)[:5])
            raise CheckpointError(
                f"{p}: neither gunpowder's dict with 'model_state_dict' nor a state dict "
                f"({bad!r} is a {type(d[bad]).__name__}; keys: {keys})"
            )
    sd = {str(k): v for k, v in sd.items()}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    run_id: int | None = None
    tag: str | None = None
    m = _FILE_NAME.match(p.name)
    if m and m.group(2):
        run_id, tag = int(m.group(1)), m.group(2)
    elif m and iteration is None:
        iteration = int(m.group(1))
    return IncasemFile(p, sha, sd, layout, iteration, run_id, tag, extra)


def read_incasem_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict (funlib/incasem names) of an incasem checkpoint file.

    See :func:`load_incasem_file` for what is accepted and refused.
    """
    return load_incasem_file(path).state_dict


def _describe(arch: UNetConfig) -> str:
    return (
        f"{arch.num_levels} levels, {arch.num_fmaps} feature maps x {arch.fmap_inc_factor}/level, "
        f"downsampling {[list(f) for f in arch.downsample_factors]}"
    )


def import_incasem(
    src: str | Path,
    dst: str | Path,
    organelle: str,
    voxel_size: Sequence[float],
    normalization: NormalizationName | str = "clahe-incasem",
    architecture: UNetConfig | None = None,
    input_shape: Sequence[int] = (204, 204, 204),
    overwrite: bool = False,
) -> Checkpoint:
    """Convert the incasem checkpoint ``src`` into the organet checkpoint ``dst``.

    Parameters
    ----------
    src
        An incasem/gunpowder ``.pt`` (e.g. ``model_checkpoint_1847_mito_CF.pt``).
    dst
        The organet checkpoint to write (atomically); refused if it exists unless
        ``overwrite``, and never the same file as ``src``.
    organelle
        What the model segments (``mito``, ``er``, ... or an alias).
    voxel_size
        The voxel size the model was trained at, nm (z, y, x); 5 nm for incasem's models.
    normalization
        ``"clahe-incasem"``: the model expects raw preprocessed by incasem's blockwise CLAHE
        (``organet preprocess --method clahe-incasem``), then uint8 -> [-1, 1] (incasem's
        ``Normalize`` + ``IntensityScaleShift(2, -1)``); ``"none"``: the [-1, 1] mapping only.
    architecture
        The expected architecture; None infers it from the tensor shapes (downsampling
        (2, 2, 2) per level). Either way every tensor is checked against it.
    input_shape
        The network input (voxels) stored as the model's training tile; incasem trained
        ASEM models on 204^3.

    Returns
    -------
    Checkpoint
        The written checkpoint; ``training_config["imported"]`` holds the provenance
        (source path and sha256, incasem run id and tag, iteration when known, date).
    """
    if normalization not in NORMALIZATIONS:
        raise InputError(f"unknown normalization {normalization!r}: expected one of {', '.join(NORMALIZATIONS)}")
    organelle_name = canonical_organelle(organelle)
    vs = _voxel_size(voxel_size)
    src_p, dst_p = Path(src).expanduser(), Path(dst).expanduser()
    if src_p.exists() and dst_p.exists() and src_p.resolve() == dst_p.resolve():
        raise InputError(f"the output {dst_p} is the incasem checkpoint itself; choose another path")
    if dst_p.exists() and not overwrite:
        raise InputError(f"{dst_p} exists; use --overwrite to replace it")
    f = load_incasem_file(src_p)
    where = str(f.path)
    arch = architecture if architecture is not None else infer_architecture(f.state_dict, where=where)
    weights = convert_funlib_state_dict(f.state_dict, arch, where)
    shape = _input_shape(arch, input_shape)
    norm = Normalization(
        method="dtype_range", preprocess=canonical_preprocess("clahe-incasem") if normalization != "none" else None
    )
    provenance: dict[str, Any] = {
        "source": SOURCE,
        "path": str(f.path.resolve()),
        "sha256": f.sha256,
        "layout": f.layout,
        "run_id": f.run_id,
        "tag": f.tag,
        "iteration": f.iteration,
        "ignored_entries": f.extra_keys,
        "normalization": normalization,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    ckpt = Checkpoint(
        architecture=arch,
        input_shape=shape,
        voxel_size=vs,
        normalization=norm,
        organelle=organelle_name,
        state_dict=weights,
        iteration=f.iteration or 0,
        training_config={"imported": provenance},
    )
    ckpt.build_model()  # the weights load into organet's U-Net
    save_checkpoint(ckpt, dst_p)
    return ckpt


def _voxel_size(value: Sequence[float]) -> Vec3:
    try:
        n = len(value)
    except TypeError:
        n = -1
    if n != 3:
        raise InputError(f"voxel size must be 3 numbers in nm (z, y, x), got {value!r}")
    return as_vec3(value, "voxel size (nm)", positive=True)


def _input_shape(arch: UNetConfig, value: Sequence[int]) -> Shape3:
    shape = tuple(int(v) for v in value)
    if len(shape) != 3 or output_shape(arch, shape) is None:
        near = sorted((s for s, _ in valid_sizes(arch, max_size=320)), key=lambda s: abs(s - shape[0]))[:4]
        raise InputError(
            f"input shape {shape} is not valid for {_describe(arch)}; valid sizes per axis near it: {sorted(near)}"
        )
    return (shape[0], shape[1], shape[2])


__all__ = [
    "NORMALIZATIONS",
    "SOURCE",
    "IncasemFile",
    "convert_funlib_state_dict",
    "funlib_key_map",
    "import_incasem",
    "infer_architecture",
    "load_incasem_file",
    "read_incasem_checkpoint",
]
