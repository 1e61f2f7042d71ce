"""Shared test helpers."""

from __future__ import annotations

import torch

from organet.model.unet import UNet


def spread_unet(cfg) -> UNet:
    """A UNet of ``cfg`` with its (seeded by the caller) random weights scaled by 3, so that its
    foreground probabilities span [0, 1] instead of sitting near 0.5."""
    net = UNet(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p *= 3.0
    return net
