"""The ASEM 3D U-Net (funlib.learn.torch ``UNet`` as configured by incasem).

Valid 3x3x3 convolutions with ReLU (two per level on both paths), max-pooling,
nearest-neighbour upsampling, centre-crop-and-concat skips and a final valid
3x3x3 convolution to two logits. No normalization layers. Directly after each
upsampling the map is centre-cropped so that ``(size - 4)`` is a multiple of the
product of the downsampling factors below that level (funlib's
``crop_to_factor``); this keeps the network equivariant to shifts by the total
downsampling factor, so tiled prediction equals one big forward pass.

All shapes are in voxels, axis order (z, y, x).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from organet.errors import InputError
from organet.volumes.geometry import Shape3


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the U-Net; defaults are the ASEM network (204^3 -> 110^3)."""

    in_channels: int = 1
    num_fmaps: int = 32
    fmap_inc_factor: int = 2
    downsample_factors: tuple[Shape3, ...] = ((2, 2, 2), (2, 2, 2), (2, 2, 2))
    kernel_size: int = 3
    convs_per_level: int = 2
    out_channels: int = 2
    final_kernel_size: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "downsample_factors", tuple(tuple(int(v) for v in f) for f in self.downsample_factors))
        if any(len(f) != 3 for f in self.downsample_factors):
            raise InputError(f"downsample_factors must be (z, y, x) triples, got {self.downsample_factors}")
        if self.num_fmaps < 1 or self.fmap_inc_factor < 1 or self.kernel_size < 1:
            raise InputError("num_fmaps, fmap_inc_factor and kernel_size must be >= 1")

    @property
    def num_levels(self) -> int:
        return len(self.downsample_factors) + 1

    @property
    def conv_crop(self) -> int:
        """Voxels lost per axis by the convolutions of one level."""
        return self.convs_per_level * (self.kernel_size - 1)

    @property
    def total_factor(self) -> Shape3:
        """Product of all downsampling factors: the translation-equivariance step."""
        t = [1, 1, 1]
        for f in self.downsample_factors:
            t = [a * b for a, b in zip(t, f)]
        return (t[0], t[1], t[2])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["downsample_factors"] = [list(f) for f in self.downsample_factors]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        d = dict(d)
        d["downsample_factors"] = tuple(tuple(f) for f in d.get("downsample_factors", cls.downsample_factors))
        return cls(**d)


ASEM_UNET = UNetConfig()


def _conv_pass(in_ch: int, out_ch: int, cfg: UNetConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(cfg.convs_per_level):
        layers += [nn.Conv3d(in_ch if i == 0 else out_ch, out_ch, cfg.kernel_size), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _center_crop(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    sl = [slice(None), slice(None)]
    for s, t in zip(x.shape[2:], shape):
        b = (s - t) // 2
        sl.append(slice(b, b + t))
    return x[tuple(sl)]


class UNet(nn.Module):
    """3D U-Net producing 2-class logits ``(N, 2, *out)`` from raw ``(N, 1, *in)``."""

    def __init__(self, cfg: UNetConfig = ASEM_UNET) -> None:
        super().__init__()
        self.cfg = cfg
        fm = [cfg.num_fmaps * cfg.fmap_inc_factor**lvl for lvl in range(cfg.num_levels)]
        self.down = nn.ModuleList(
            _conv_pass(cfg.in_channels if lvl == 0 else fm[lvl - 1], fm[lvl], cfg) for lvl in range(cfg.num_levels)
        )
        self.pool = nn.ModuleList(nn.MaxPool3d(f, stride=f) for f in cfg.downsample_factors)
        self.upsample = nn.ModuleList(nn.Upsample(scale_factor=f, mode="nearest") for f in cfg.downsample_factors)
        # up[lvl] consumes concat(skip of level lvl, upsampled output of level lvl+1)
        self.up = nn.ModuleList(_conv_pass(fm[lvl] + fm[lvl + 1], fm[lvl], cfg) for lvl in range(cfg.num_levels - 1))
        self.final = nn.Conv3d(fm[0], cfg.out_channels, cfg.final_kernel_size)
        # crop factor of up level lvl: product of the downsampling factors below it
        self._crop_factors: list[Shape3] = []
        for lvl in range(cfg.num_levels - 1):
            t = [1, 1, 1]
            for f in cfg.downsample_factors[lvl:]:
                t = [a * b for a, b in zip(t, f)]
            self._crop_factors.append((t[0], t[1], t[2]))

    def _crop_to_factor(self, x: torch.Tensor, factor: Shape3) -> torch.Tensor:
        c = self.cfg.conv_crop
        shape = [((s - c) // f) * f + c for s, f in zip(x.shape[2:], factor)]
        if any(s <= c for s in shape):
            raise ValueError(f"feature map {tuple(x.shape[2:])} too small for crop factor {factor}")
        return _center_crop(x, shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for lvl in range(self.cfg.num_levels - 1):
            x = self.down[lvl](x)
            skips.append(x)
            x = self.pool[lvl](x)
        x = self.down[-1](x)
        for lvl in reversed(range(self.cfg.num_levels - 1)):
            x = self._crop_to_factor(self.upsample[lvl](x), self._crop_factors[lvl])
            x = torch.cat([_center_crop(skips[lvl], x.shape[2:]), x], dim=1)
            x = self.up[lvl](x)
        return self.final(x)


def init_weights(model: UNet, scheme: str = "kaiming") -> None:
    """Re-initialise the convolutions in place.

    ``"pytorch"`` keeps torch's default (funlib/incasem do); ``"kaiming"`` draws
    He-normal weights (fan-in, ReLU gain) and zero biases, which keeps activation
    variance constant through this normalization-free network and trains it
    markedly faster early on. The final 2-logit conv is kept small (std 1e-3)
    so training starts from p = 0.5 everywhere.
    """
    if scheme == "pytorch":
        return
    if scheme != "kaiming":
        raise InputError(f"unknown weight init {scheme!r}: expected 'pytorch' or 'kaiming'")
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            if m is model.final:
                nn.init.normal_(m.weight, std=1e-3)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def output_shape(cfg: UNetConfig, in_shape: Sequence[int]) -> Shape3 | None:
    """Output shape (voxels) for ``in_shape``, or None when the input is not valid.

    Mirrors the forward pass arithmetic exactly (no tensors involved).
    """
    c = cfg.conv_crop
    sizes = list(in_shape)
    skips: list[list[int]] = []
    for f in cfg.downsample_factors:
        sizes = [s - c for s in sizes]
        if any(s < 1 for s in sizes) or any(s % k for s, k in zip(sizes, f)):
            return None
        skips.append(sizes)
        sizes = [s // k for s, k in zip(sizes, f)]
    sizes = [s - c for s in sizes]
    if any(s < 1 for s in sizes):
        return None
    for lvl in reversed(range(len(cfg.downsample_factors))):
        factor = [1, 1, 1]
        for f in cfg.downsample_factors[lvl:]:
            factor = [a * b for a, b in zip(factor, f)]
        sizes = [s * k for s, k in zip(sizes, cfg.downsample_factors[lvl])]
        sizes = [((s - c) // f) * f + c for s, f in zip(sizes, factor)]
        if any(s <= c for s in sizes) or any(s > k for s, k in zip(sizes, skips[lvl])):
            return None
        sizes = [s - c for s in sizes]
    sizes = [s - (cfg.final_kernel_size - 1) for s in sizes]
    if any(s < 1 for s in sizes):
        return None
    return (sizes[0], sizes[1], sizes[2])


def valid_sizes(cfg: UNetConfig, max_size: int = 300, min_size: int = 1) -> list[tuple[int, int]]:
    """Isotropic (input, output) size pairs in voxels for which the network is valid."""
    out = []
    for s in range(min_size, max_size + 1):
        o = output_shape(cfg, (s, s, s))
        if o is not None:
            out.append((s, o[0]))
    return out


def context(cfg: UNetConfig, in_shape: Sequence[int]) -> Shape3:
    """Voxels of context lost on each side, (in - out) / 2 per axis."""
    o = output_shape(cfg, in_shape)
    if o is None:
        raise InputError(
            f"input shape {tuple(in_shape)} is not valid for this network; "
            f"valid isotropic sizes: {[s for s, _ in valid_sizes(cfg, 320)][-8:]} ..."
        )
    return tuple((i - v) // 2 for i, v in zip(in_shape, o))  # type: ignore[return-value]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
