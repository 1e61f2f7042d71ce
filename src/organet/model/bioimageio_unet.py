"""The organet 3D U-Net as shipped inside a bioimage.io model package (torch only).

This file is copied into the packages written by ``organet export --bioimageio`` and
named there as the ``architecture`` of the ``pytorch_state_dict`` weights, so the
package loads without organet installed. It must import nothing but ``torch`` and
stay TorchScript-compatible (the package's ``torchscript`` weights are this module,
scripted).

The network is :class:`organet.model.unet.UNet` (valid 3x3x3 convolutions with ReLU,
max-pooling, nearest-neighbour upsampling, funlib's ``crop_to_factor``, centre-crop
skips; its state dict keys are the same), followed by what organet's Predictor does
with the logits: a softmax over the classes, keeping the probability of class 1
(foreground). The valid output (input minus ``halo`` voxels on each side) is padded
back to the input size with zeros, so the declared output halo is what a consumer
crops. Tensors are ``(batch, channel, z, y, x)``.
"""

import torch
import torch.nn.functional as F
from torch import nn


def _conv_pass(in_ch: int, out_ch: int, kernel_size: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv3d(in_ch if i == 0 else out_ch, out_ch, kernel_size), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _center_crop(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    b0 = (x.shape[2] - shape[0]) // 2
    b1 = (x.shape[3] - shape[1]) // 2
    b2 = (x.shape[4] - shape[2]) // 2
    return x[:, :, b0 : b0 + shape[0], b1 : b1 + shape[1], b2 : b2 + shape[2]]


class OrganetUNet(nn.Module):
    """3D U-Net: raw ``(N, in_channels, z, y, x)`` (normalized to [-1, 1]) to the foreground
    probability ``(N, 1, z, y, x)``, zero within ``halo`` voxels of each face.

    Parameters
    ----------
    in_channels, num_fmaps, fmap_inc_factor, kernel_size, convs_per_level, out_channels,
    final_kernel_size : int
        As :class:`organet.model.unet.UNetConfig`.
    downsample_factors : list of [int, int, int]
        Max-pooling factors per level, (z, y, x).
    halo : [int, int, int]
        Voxels (z, y, x) the valid convolutions remove on each side (the network's context).
    foreground : int
        The class whose softmax probability is returned (organet: 1).
    """

    factors: list[list[int]]
    crop_factors: list[list[int]]
    conv_crop: int
    halo: list[int]
    foreground: int

    def __init__(
        self,
        in_channels: int = 1,
        num_fmaps: int = 32,
        fmap_inc_factor: int = 2,
        downsample_factors: list[list[int]] = [[2, 2, 2], [2, 2, 2], [2, 2, 2]],  # noqa: B006 - never mutated
        kernel_size: int = 3,
        convs_per_level: int = 2,
        out_channels: int = 2,
        final_kernel_size: int = 3,
        halo: list[int] = [47, 47, 47],  # noqa: B006 - never mutated
        foreground: int = 1,
    ) -> None:
        super().__init__()
        levels = len(downsample_factors) + 1
        fm = [num_fmaps * fmap_inc_factor**lvl for lvl in range(levels)]
        self.down = nn.ModuleList(
            _conv_pass(in_channels if lvl == 0 else fm[lvl - 1], fm[lvl], kernel_size, convs_per_level)
            for lvl in range(levels)
        )
        # the decoder runs from the deepest level up: a ModuleDict in that order keeps the
        # state dict keys of organet's ModuleList (up.0, up.1, ...) and is iterable in TorchScript
        self.up = nn.ModuleDict(
            {
                str(lvl): _conv_pass(fm[lvl] + fm[lvl + 1], fm[lvl], kernel_size, convs_per_level)
                for lvl in reversed(range(levels - 1))
            }
        )
        self.final = nn.Conv3d(fm[0], out_channels, final_kernel_size)
        self.factors = [[int(v) for v in f] for f in downsample_factors]
        crop = []
        for lvl in range(levels - 1):
            t = [1, 1, 1]
            for f in downsample_factors[lvl:]:
                t = [a * int(b) for a, b in zip(t, f)]
            crop.append(t)
        self.crop_factors = crop
        self.conv_crop = convs_per_level * (kernel_size - 1)
        self.halo = [int(h) for h in halo]
        self.foreground = int(foreground)

    def _crop_to_factor(self, x: torch.Tensor, factor: list[int]) -> torch.Tensor:
        c = self.conv_crop
        shape = [((x.shape[2 + i] - c) // factor[i]) * factor[i] + c for i in range(3)]
        for s in shape:
            if s <= c:
                raise ValueError("input too small for this network; use a valid size (min + n * step per axis)")
        return _center_crop(x, shape)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The class logits ``(N, out_channels, *valid)`` of organet's UNet."""
        skips: list[torch.Tensor] = []
        n_pool = len(self.factors)
        for lvl, down in enumerate(self.down):
            x = down(x)
            if lvl < n_pool:
                skips.append(x)
                f = self.factors[lvl]
                x = F.max_pool3d(x, kernel_size=f, stride=f)
        i = n_pool - 1
        for up in self.up.values():
            f = self.factors[i]
            x = x.repeat_interleave(f[0], dim=2).repeat_interleave(f[1], dim=3).repeat_interleave(f[2], dim=4)
            x = self._crop_to_factor(x, self.crop_factors[i])
            x = torch.cat([_center_crop(skips[i], [x.shape[2], x.shape[3], x.shape[4]]), x], dim=1)
            x = up(x)
            i -= 1
        return self.final(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(self.logits(x).float(), dim=1)[:, self.foreground : self.foreground + 1]
        h = self.halo
        return F.pad(p, [h[2], h[2], h[1], h[1], h[0], h[0]])
