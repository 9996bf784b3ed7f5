"""The autoencoder whose frozen encoder E defines the manifold loss (SPEC section 2).

Encoder: conv + ReLU and residual blocks per stage; every stage after the first
starts with a stride-2 conv, so 3 stages put the latent at H/4. Decoder: the mirror,
with nearest x2 up-sampling + conv, ending in a sigmoid (output in [0, 1]).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from napari_srgan_sqe.config import AutoencoderConfig
from napari_srgan_sqe.models.blocks import ResidualBlock, conv

__all__ = ["Autoencoder", "build_autoencoder"]


def _blocks(channels: int, n: int) -> list[nn.Module]:
    return [ResidualBlock(channels, batch_norm=False, res_scale=0.1) for _ in range(n)]


class Autoencoder(nn.Module):
    """HR patch -> latent (channels[-1], H / 2**(len-1), W / 2**(len-1)) -> HR patch."""

    def __init__(self, channels: Sequence[int] = (64, 32, 8), blocks_per_stage: int = 1) -> None:
        super().__init__()
        channels = list(channels)
        enc: list[nn.Module] = []
        c_prev = 3
        for i, c in enumerate(channels):
            enc += [conv(c_prev, c, 3, stride=1 if i == 0 else 2), nn.ReLU(inplace=True)]
            enc += _blocks(c, blocks_per_stage)
            c_prev = c
        enc.append(conv(c_prev, c_prev))  # linear latent projection
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [conv(c_prev, c_prev), nn.ReLU(inplace=True)]
        for c in reversed(channels[:-1]):
            dec += _blocks(c_prev, blocks_per_stage)
            dec += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                conv(c_prev, c),
                nn.ReLU(inplace=True),
            ]
            c_prev = c
        dec += _blocks(c_prev, blocks_per_stage)
        dec += [conv(c_prev, 3), nn.Sigmoid()]
        self.decoder = nn.Sequential(*dec)
        self.downsampling = 2 ** (len(channels) - 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latent code E(x); H and W should be multiples of `downsampling`."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def build_autoencoder(cfg: AutoencoderConfig) -> Autoencoder:
    """The autoencoder described by `cfg` (random init)."""
    return Autoencoder(cfg.channels, cfg.blocks_per_stage)
