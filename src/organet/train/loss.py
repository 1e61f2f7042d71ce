"""Masked, class-balanced voxel-wise cross-entropy (gunpowder BalanceLabels style)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_weights(labels: torch.Tensor, mask: torch.Tensor, clip: tuple[float, float] = (0.01, 0.99)) -> torch.Tensor:
    """Per-voxel weights: ``1 / (2 frac_c)`` for class c, frac over the masked
    voxels of the whole batch, clipped to ``clip``; 0 outside the mask."""
    m = mask.float()
    n = m.sum().clamp(min=1.0)
    frac_fg = ((labels.float() * m).sum() / n).clamp(clip[0], clip[1])
    w_fg = 1.0 / (2.0 * frac_fg)
    w_bg = 1.0 / (2.0 * (1.0 - frac_fg))
    return torch.where(labels > 0, w_fg, w_bg) * m


def balanced_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    class_balance: bool = True,
    clip: tuple[float, float] = (0.01, 0.99),
) -> torch.Tensor:
    """Mean weighted cross-entropy over masked voxels.

    logits ``(N, 2, z, y, x)``; labels and mask ``(N, z, y, x)`` with 0/1 values.
    """
    ce = F.cross_entropy(logits.float(), labels.long(), reduction="none")
    w = class_weights(labels, mask, clip) if class_balance else mask.float()
    return (ce * w).sum() / mask.float().sum().clamp(min=1.0)
