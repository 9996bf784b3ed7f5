"""The multi-scale medical SRGAN generator (Ahmad et al. 2022), arch 'medsrgan'.

Shallow features come from three parallel paths whose kernels see 3x3, 5x5 and 7x7
neighbourhoods (a conv and two residual blocks each), concatenated and fused by a
1x1 conv; deep residual blocks at LR resolution carry a long skip; a first x2
up-sampling leads to a small residual net at 2x; a second x2 up-sampling and a 3x3
reconstruction conv give RGB at 4x, added to the bicubic up-sampling of the input.
Float NCHW RGB in [0, 1] in, NCHW at 4x out, unclamped; `halo` follows from the layers.
"""

from __future__ import annotations

import torch
from torch import nn

from napari_srgan_sqe.config import MedicalSRGANConfig
from napari_srgan_sqe.models.blocks import (
    Bicubic,
    OnePassInference,
    ResidualBlock,
    conv,
    count_macs,
    halo_of,
)
from napari_srgan_sqe.models.method import parameter_groups_by_children

__all__ = ["MedicalSRGAN", "build_medsrgan"]

KERNELS = (3, 5, 7)


class _ShallowPath(nn.Sequential):
    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__(
            conv(3, channels, kernel),
            nn.PReLU(channels),
            ResidualBlock(channels, batch_norm=False, res_scale=0.1, kernel=kernel, act="prelu"),
            ResidualBlock(channels, batch_norm=False, res_scale=0.1, kernel=kernel, act="prelu"),
        )


class MedicalSRGAN(OnePassInference, nn.Module):
    """Multi-scale shallow features, deep residual trunk, x2 -> residual net -> x2."""

    def __init__(
        self,
        channels: int = 32,
        n_blocks: int = 6,
        mid_blocks: int = 1,
        mid_channels: int = 16,
        bicubic_skip: bool = True,
    ) -> None:
        super().__init__()
        self.scale = 4
        c, m = channels, mid_channels
        self.paths = nn.ModuleList([_ShallowPath(c, k) for k in KERNELS])
        self.fuse = conv(3 * c, c, 1)
        self.blocks = nn.Sequential(
            *[
                ResidualBlock(c, batch_norm=False, res_scale=0.1, act="prelu")
                for _ in range(n_blocks)
            ]
        )
        self.trunk_tail = conv(c, c)
        self.up1 = nn.Sequential(conv(c, 4 * m), nn.PixelShuffle(2), nn.PReLU(m))
        self.mid = nn.Sequential(
            *[
                ResidualBlock(m, batch_norm=False, res_scale=0.1, act="prelu")
                for _ in range(mid_blocks)
            ]
        )
        self.up2 = nn.Sequential(conv(m, 4 * m), nn.PixelShuffle(2), nn.PReLU(m))
        self.tail = conv(m, 3)
        self.skip = Bicubic(4) if bicubic_skip else None
        with torch.no_grad():  # start near the bicubic image: a small residual
            self.tail.weight.mul_(0.1)
        widest = max(KERNELS) // 2
        ops: list[tuple[str, int]] = [("conv", widest)] * 5 + [("conv", 0)]
        ops += [("conv", 1)] * (2 * n_blocks + 1)
        ops += [("conv", 1), ("shuffle", 2)] + [("conv", 1)] * (2 * mid_blocks)
        ops += [("conv", 1), ("shuffle", 2), ("conv", 1)]
        halo = halo_of(ops, self.scale)
        self.halo = max(halo, Bicubic.halo) if self.skip is not None else halo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shallow = self.fuse(torch.cat([p(x) for p in self.paths], dim=1))
        deep = shallow + self.trunk_tail(self.blocks(shallow))
        h = self.up1(deep)
        h = h + self.mid(h) if len(self.mid) else h
        y = self.tail(self.up2(h))
        return y + self.skip(x) if self.skip is not None else y

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """'all', and 'last': the 2x net and both up-sampling stages with the tail."""
        return parameter_groups_by_children(self, ("up1", "mid", "up2", "tail"))

    def macs_per_pixel(self) -> int:
        return count_macs(self, self.scale)


def build_medsrgan(cfg: MedicalSRGANConfig) -> MedicalSRGAN:
    """The medical SRGAN generator described by `cfg` (random init)."""
    return MedicalSRGAN(
        channels=cfg.channels,
        n_blocks=cfg.n_blocks,
        mid_blocks=cfg.mid_blocks,
        mid_channels=cfg.mid_channels,
        bicubic_skip=cfg.bicubic_skip,
    )
