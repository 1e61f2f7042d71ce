"""Self-contained copy of organet's ASEM U-Net (``organet.model.unet.UNet``) for the
gunpowder baseline venv, which has torch but not organet.

Same layers, parameter names and forward pass (valid 3x3x3 convolutions + ReLU, max
pooling, nearest upsampling, funlib's crop-to-factor, centre-crop-and-concat skips,
final valid convolution to 2 logits), so an organet ``state_dict`` loads with
``strict=True``. Shapes in voxels, axis order (z, y, x). Depends on torch only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

Shape3 = tuple[int, int, int]


def _conv_pass(in_ch: int, out_ch: int, kernel: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv3d(in_ch if i == 0 else out_ch, out_ch, kernel), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _center_crop(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    sl = [slice(None), slice(None)]
    for s, t in zip(x.shape[2:], shape):
        b = (s - t) // 2
        sl.append(slice(b, b + t))
    return x[tuple(sl)]


class UNet(nn.Module):
    """3D U-Net: raw ``(N, 1, *in)`` -> 2-class logits ``(N, 2, *out)``; defaults = ASEM (204^3 -> 110^3)."""

    def __init__(
        self,
        in_channels: int = 1,
        num_fmaps: int = 32,
        fmap_inc_factor: int = 2,
        downsample_factors: Sequence[Sequence[int]] = ((2, 2, 2),) * 3,
        kernel_size: int = 3,
        convs_per_level: int = 2,
        out_channels: int = 2,
        final_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        factors = [tuple(int(v) for v in f) for f in downsample_factors]
        levels = len(factors) + 1
        fm = [num_fmaps * fmap_inc_factor**lvl for lvl in range(levels)]
        self.conv_crop = convs_per_level * (kernel_size - 1)
        self.down = nn.ModuleList(
            _conv_pass(in_channels if lvl == 0 else fm[lvl - 1], fm[lvl], kernel_size, convs_per_level)
            for lvl in range(levels)
        )
        self.pool = nn.ModuleList(nn.MaxPool3d(f, stride=f) for f in factors)
        self.upsample = nn.ModuleList(nn.Upsample(scale_factor=f, mode="nearest") for f in factors)
        self.up = nn.ModuleList(
            _conv_pass(fm[lvl] + fm[lvl + 1], fm[lvl], kernel_size, convs_per_level) for lvl in range(levels - 1)
        )
        self.final = nn.Conv3d(fm[0], out_channels, final_kernel_size)
        self.crop_factors: list[Shape3] = []
        for lvl in range(levels - 1):
            t = [1, 1, 1]
            for f in factors[lvl:]:
                t = [a * b for a, b in zip(t, f)]
            self.crop_factors.append((t[0], t[1], t[2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for lvl in range(len(self.pool)):
            x = self.down[lvl](x)
            skips.append(x)
            x = self.pool[lvl](x)
        x = self.down[-1](x)
        c = self.conv_crop
        for lvl in reversed(range(len(self.pool))):
            x = self.upsample[lvl](x)
            x = _center_crop(x, [((s - c) // f) * f + c for s, f in zip(x.shape[2:], self.crop_factors[lvl])])
            x = torch.cat([_center_crop(skips[lvl], x.shape[2:]), x], dim=1)
            x = self.up[lvl](x)
        return self.final(x)


class ForegroundProbability(nn.Module):
    """``softmax(logits)[:, 1]``: (N, 1, *in) -> foreground probability (N, *out), as incasem's
    Softmax + PickChannel nodes (organet's prediction does the same)."""

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.unet(x), dim=1)[:, 1]
