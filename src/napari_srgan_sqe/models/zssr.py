"""ZSSR's image-specific network (Shocher et al. 2018), arch 'zssr'.

The input is up-sampled bicubically first; `n_layers` 3x3 convs (ReLU between, none
after the last) at the output resolution predict a residual that is added to the
bicubic image. The network is small and trained on the image it will enhance, from
that image's own LR ("zero-shot"; see `training.zero_shot`). At inference the eight
flips and 90-degree rotations of the input are averaged (geometric self-ensemble):
each is exact under halo tiling, so their mean is too.
"""

from __future__ import annotations

import torch
from torch import nn

from napari_srgan_sqe.config import ZSSRConfig
from napari_srgan_sqe.models.blocks import Bicubic, count_macs, halo_of, plain_convs
from napari_srgan_sqe.models.method import check_cancelled, parameter_groups_by_children

__all__ = ["ZSSRNet", "build_zssr", "self_ensemble"]


def self_ensemble(fn: object, x: torch.Tensor) -> torch.Tensor:
    """Mean over the 8 dihedral transforms T of T^-1(fn(T(x))) (NCHW, any H and W)."""
    assert callable(fn)
    acc = None
    for k in range(4):
        for flip in (False, True):
            check_cancelled()  # the process is exiting: stop between passes
            t = torch.rot90(x, k, dims=(2, 3))
            t = torch.flip(t, dims=(3,)) if flip else t
            y = fn(t)
            y = torch.flip(y, dims=(3,)) if flip else y
            y = torch.rot90(y, -k, dims=(2, 3))
            acc = y if acc is None else acc + y
    assert acc is not None
    return acc / 8.0


class ZSSRNet(nn.Module):
    """bicubic(x) + convs(bicubic(x)); self-ensembled at inference when asked."""

    def __init__(
        self, scale: int = 4, n_layers: int = 8, channels: int = 64, ensemble: bool = True
    ) -> None:
        super().__init__()
        self.scale = int(scale)
        self.ensemble = bool(ensemble)
        self.up = Bicubic(self.scale)
        self.body, self.tail = plain_convs(3, channels, n_layers)  # starts as bicubic
        self.halo = halo_of([("bicubic", self.scale)] + [("conv", 1)] * n_layers, self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.up(x)
        return u + self.tail(self.body(u))

    @torch.no_grad()
    def infer_batch(
        self, x: torch.Tensor, *, seed: int | None = None, origins: object = None
    ) -> torch.Tensor:
        return self_ensemble(self, x) if self.ensemble else self(x)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return parameter_groups_by_children(self, ("tail",))

    def macs_per_pixel(self) -> int:
        return count_macs(self, self.scale) * (8 if self.ensemble else 1)


def build_zssr(cfg: ZSSRConfig) -> ZSSRNet:
    """The ZSSR network described by `cfg`: starts as bicubic (zero last layer)."""
    return ZSSRNet(
        scale=cfg.scale, n_layers=cfg.n_layers, channels=cfg.channels, ensemble=cfg.self_ensemble
    )
