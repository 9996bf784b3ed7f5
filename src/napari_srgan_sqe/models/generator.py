"""Super-resolution generators G of the SRGAN family: 'srresnet' and 'lrnet'.

Both take float NCHW RGB in [0, 1] and return NCHW at `scale` x the size, unclamped.
`halo` is the receptive-field radius in LR pixels, derived from the layers.
"""

from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from napari_srgan_sqe.config import GeneratorConfig
from napari_srgan_sqe.models.blocks import (
    Bicubic,
    OnePassInference,
    ResidualBlock,
    activation,
    conv,
    count_macs,
    halo_of,
)
from napari_srgan_sqe.models.coding import CODING_FEATURES
from napari_srgan_sqe.models.method import parameter_groups_by_children

__all__ = ["LRNet", "SRResNet", "build_generator"]


class _Generator(OnePassInference, nn.Module, metaclass=ABCMeta):
    """Shared trunk: head conv + ReLU, residual blocks, conv(-BN) + long skip."""

    scale: int
    halo: int

    def __init__(
        self,
        scale: int,
        n_blocks: int,
        channels: int,
        head_kernel: int,
        batch_norm: bool,
        bicubic_skip: bool,
        act: str = "relu",
    ) -> None:
        super().__init__()
        self.scale = int(scale)
        self.head = nn.Sequential(conv(3, channels, head_kernel), activation(act, channels))
        res_scale = 1.0 if batch_norm else 0.1
        self.blocks = nn.Sequential(
            *[
                ResidualBlock(channels, batch_norm=batch_norm, res_scale=res_scale, act=act)
                for _ in range(n_blocks)
            ]
        )
        trunk: list[nn.Module] = [conv(channels, channels, bias=not batch_norm)]
        if batch_norm:
            trunk.append(nn.BatchNorm2d(channels))
        self.trunk_tail = nn.Sequential(*trunk)
        self.skip = Bicubic(scale) if bicubic_skip else None
        self._lr_ops: list[tuple[str, int]] = [("conv", head_kernel // 2)]
        self._lr_ops += [("conv", 1)] * (2 * n_blocks) + [("conv", 1)]

    def features(self, x: torch.Tensor, film: torch.Tensor | None = None) -> torch.Tensor:
        """Trunk features; `film` (N, blocks, 2, C, 1, 1): a scale (+1) and a shift of
        each residual block's output (LRNet's coding conditioning), None for none."""
        h = self.head(x)
        if film is None:
            return h + self.trunk_tail(self.blocks(h))
        f = h
        for i, block in enumerate(self.blocks):
            f = block(f) * (1.0 + film[:, i, 0]) + film[:, i, 1]
        return h + self.trunk_tail(f)

    @abstractmethod
    def upsample(self, f: torch.Tensor) -> torch.Tensor:
        """Trunk features at LR resolution -> RGB at `scale` x the size (before the skip)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, None)

    def _forward(self, x: torch.Tensor, film: torch.Tensor | None) -> torch.Tensor:
        y = self.upsample(self.features(x, film))
        if self.skip is not None:
            y = y + self.skip(x)
        return y

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """'all', and 'last': the layers after the residual trunk (up-sampling, tail)."""
        return parameter_groups_by_children(self, ("up", "tail"))

    def macs_per_pixel(self) -> int:
        return count_macs(self, self.scale)

    def _set_halo(self, ops: list[tuple[str, int]]) -> None:
        halo = halo_of(ops, self.scale)
        self.halo = max(halo, Bicubic.halo) if self.skip is not None else halo


class SRResNet(_Generator):
    """The SRGAN generator: log2(s) x2 up-sampling stages and a final conv at HR."""

    def __init__(
        self,
        scale: int = 4,
        n_blocks: int = 16,
        channels: int = 64,
        head_kernel: int = 9,
        tail_kernel: int = 9,
        batch_norm: bool = True,
        bicubic_skip: bool = True,
        act: str = "relu",
    ) -> None:
        if scale < 2 or scale & (scale - 1):
            raise ValueError(f"SRResNet needs a power-of-two scale, got {scale}")
        super().__init__(scale, n_blocks, channels, head_kernel, batch_norm, bicubic_skip, act)
        stages: list[nn.Module] = []
        ops = list(self._lr_ops)
        for _ in range(int(math.log2(scale))):
            stages += [conv(channels, 4 * channels), nn.PixelShuffle(2), activation(act, channels)]
            ops += [("conv", 1), ("shuffle", 2)]
        self.up = nn.Sequential(*stages)
        self.tail = conv(channels, 3, tail_kernel)
        ops.append(("conv", tail_kernel // 2))
        self._set_halo(ops)

    def upsample(self, f: torch.Tensor) -> torch.Tensor:
        return self.tail(self.up(f))


class LRNet(_Generator):
    """All work at LR resolution; a conv to 3*s*s channels and PixelShuffle(s) at the end.

    `coding=True` conditions the network on how its LR was stored (`models.coding`): a
    small MLP maps the coding vector to a scale and a shift per channel for the output
    of every residual block (feature-wise modulation). Its last layer starts at zero, so
    a conditioned network made from an unconditioned one computes the same function
    until it is trained. `forward(x, coding)` takes one vector per image (N, F), or
    None for the vector set by `set_coding` (default: everything unknown)."""

    def __init__(
        self,
        scale: int = 4,
        n_blocks: int = 8,
        channels: int = 48,
        head_kernel: int = 3,
        tail_kernel: int = 3,
        batch_norm: bool = False,
        bicubic_skip: bool = True,
        coding: bool = False,
    ) -> None:
        super().__init__(scale, n_blocks, channels, head_kernel, batch_norm, bicubic_skip)
        self.channels = int(channels)
        self.coding_net: nn.Sequential | None = None
        if coding:
            self.coding_net = nn.Sequential(
                nn.Linear(CODING_FEATURES, 64), nn.ReLU(), nn.Linear(64, 2 * channels * n_blocks)
            )
            with torch.no_grad():
                last = cast(nn.Linear, self.coding_net[2])
                last.weight.zero_()
                last.bias.zero_()
            self.register_buffer("coding", torch.zeros(1, CODING_FEATURES), persistent=False)
        self.tail = conv(channels, 3 * scale * scale, tail_kernel)
        if bicubic_skip:  # start close to bicubic: the net learns a small residual
            with torch.no_grad():
                self.tail.weight.mul_(0.1)
        self.shuffle = nn.PixelShuffle(scale)
        self._set_halo(self._lr_ops + [("conv", tail_kernel // 2), ("shuffle", scale)])

    def upsample(self, f: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.tail(f))

    def set_coding(self, coding: Sequence[float] | torch.Tensor) -> None:
        """The coding vector used when `forward` is given none (a conditioned net)."""
        if self.coding_net is None:
            return
        buf = cast(torch.Tensor, self.coding)
        v = torch.as_tensor(coding, dtype=torch.float32).reshape(1, CODING_FEATURES)
        buf.copy_(v.to(buf.device))

    def forward(self, x: torch.Tensor, coding: torch.Tensor | None = None) -> torch.Tensor:
        if self.coding_net is None:
            return self._forward(x, None)
        if coding is None:
            coding = cast(torch.Tensor, self.coding).expand(x.shape[0], CODING_FEATURES)
        film = self.coding_net(coding.to(device=x.device, dtype=torch.float32))
        return self._forward(x, film.view(x.shape[0], len(self.blocks), 2, self.channels, 1, 1))


def build_generator(cfg: GeneratorConfig) -> SRResNet | LRNet:
    """The generator described by `cfg` (random init; seed torch before calling)."""
    common: dict[str, Any] = dict(
        scale=cfg.scale,
        n_blocks=cfg.n_blocks,
        channels=cfg.channels,
        head_kernel=cfg.head_kernel,
        tail_kernel=cfg.tail_kernel,
        batch_norm=cfg.batch_norm,
        bicubic_skip=cfg.bicubic_skip,
    )
    if cfg.arch == "srresnet":
        if cfg.coding:
            raise ValueError("coding conditioning is built for arch 'lrnet', not 'srresnet'")
        return SRResNet(**common, act=cfg.activation)
    if cfg.activation != "relu":
        raise ValueError("arch 'lrnet' uses ReLU; activation 'prelu' is for 'srresnet'")
    return LRNet(**common, coding=cfg.coding)
