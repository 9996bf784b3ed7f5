"""The discriminator D (SPEC section 2): strided convs, BN (not the first),
LeakyReLU(0.2), global average pooling, one logit. P(input is HR) = sigmoid(logit)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from napari_srgan_sqe.config import DiscriminatorConfig
from napari_srgan_sqe.models.blocks import conv

__all__ = ["Discriminator", "build_discriminator"]


class _ResidualSkip(nn.Module):
    """conv-BN-LeakyReLU-conv-BN + identity, at one resolution of the discriminator."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv(c, c, bias=False),
            nn.BatchNorm2d(c),
            nn.LeakyReLU(0.2, inplace=True),
            conv(c, c, bias=False),
            nn.BatchNorm2d(c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.leaky_relu(x + self.body(x), 0.2)


class Discriminator(nn.Module):
    """(N, 3, H, W) in [0, 1] -> logits (N,); every strided conv halves the size.

    With `residual`, each strided conv is followed by a residual block (medical SRGAN)."""

    def __init__(
        self, channels: Sequence[int] = (32, 64, 128, 256), *, residual: bool = False
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_prev = 3
        for i, c in enumerate(channels):
            layers.append(conv(c_prev, c, 3, stride=2, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            if residual:
                layers.append(_ResidualSkip(c))
            c_prev = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_prev, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1)).squeeze(1)


def build_discriminator(cfg: DiscriminatorConfig) -> Discriminator:
    """The discriminator described by `cfg` (random init)."""
    return Discriminator(cfg.channels, residual=cfg.residual)
