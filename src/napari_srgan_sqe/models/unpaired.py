"""Pseudo-supervised unpaired SR (Maeda 2020), arch 'unpaired'.

The network a user runs is SR = U(C(x)):
- C, the correction network (`CorrectionNet`): real LR (a scanner's blur, noise and
  JPEG / JPEG 2000 coding) -> clean LR, the input domain of U. A residual CNN at LR
  resolution (`correction_layers` 3x3 convs, ReLU between) whose output is the input
  plus a residual; the last conv starts at zero, so a fresh C is the identity.
- U, the SR network: an SRGAN-family generator (`generator.build_generator`), trained
  on clean LR D_s(y) (or warm-started from a shipped model).

Both are deterministic and zero-padded, so the method tiles with a halo: an output
pixel depends on C's outputs within U's halo, and each of those on the input within
C's radius, hence halo = C's radius + U's halo.

Training-only parts live here too (`training.recipes.UnpairedRecipe` uses them):
G_yx (`DegradationNet`, clean LR + a noise map -> real-looking LR) and the patch
discriminators of the two LR domains (`PatchDiscriminator`).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from napari_srgan_sqe.config import UnpairedConfig
from napari_srgan_sqe.models.blocks import OnePassInference, conv, count_macs, plain_convs
from napari_srgan_sqe.models.generator import build_generator
from napari_srgan_sqe.models.method import SRNetwork

__all__ = [
    "CorrectionNet",
    "DegradationNet",
    "PatchDiscriminator",
    "UnpairedSR",
    "build_unpaired",
]


class CorrectionNet(nn.Module):
    """x + body(x): `n_layers` 3x3 convs at LR resolution; the identity at initialisation.

    `extra_in` more input channels (a noise map for G_yx) feed the body only."""

    def __init__(self, n_layers: int = 7, channels: int = 48, *, extra_in: int = 0) -> None:
        super().__init__()
        if n_layers < 2:
            raise ValueError(f"a correction net needs at least 2 layers, got {n_layers}")
        self.body, self.tail = plain_convs(3 + extra_in, channels, n_layers)  # the identity
        self.radius = n_layers
        """Receptive-field radius in LR px (one per 3x3 conv)."""

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        h = x if extra is None else torch.cat([x, extra], dim=1)
        return x + self.tail(self.body(h))


class DegradationNet(CorrectionNet):
    """G_yx: clean LR and one channel of Gaussian noise -> real-looking LR (training only).
    The noise lets it draw the random part of a scanner's degradation."""

    def __init__(self, n_layers: int = 7, channels: int = 48) -> None:
        super().__init__(n_layers, channels, extra_in=1)

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        if extra is None:
            raise ValueError("G_yx needs its noise map (N, 1, H, W)")
        return super().forward(x, extra)


class PatchDiscriminator(nn.Module):
    """(N, 3, H, W) -> a map of logits (N, 1, H/4, W/4): 3x3 convs (strides 1, 2, 2, 1),
    LeakyReLU(0.2), no normalisation (small batches). Each logit judges a local patch,
    where blur, noise and block artefacts live."""

    def __init__(self, channels: tuple[int, ...] = (32, 64, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_prev = 3
        for i, c in enumerate(channels):
            layers += [conv(c_prev, c, 3, stride=1 if i == 0 else 2), nn.LeakyReLU(0.2, True)]
            c_prev = c
        layers.append(conv(c_prev, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.net(x))


class UnpairedSR(OnePassInference, nn.Module):
    """SR = U(C(x)): correction at LR resolution, then the SR generator."""

    def __init__(self, correction: CorrectionNet, sr: nn.Module) -> None:
        super().__init__()
        self.correction = correction
        self.sr = sr
        u = cast(SRNetwork, sr)
        self.scale = int(u.scale)
        self.halo = int(correction.radius + u.halo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.sr(self.correction(x)))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """'all'; 'last': U's layers after its trunk; 'correction': C's parameters."""
        u = cast(SRNetwork, self.sr).parameter_groups()
        return {
            "all": list(self.parameters()),
            "last": list(u["last"]),
            "correction": list(self.correction.parameters()),
        }

    def macs_per_pixel(self) -> int:
        return count_macs(self, self.scale)


def build_unpaired(cfg: UnpairedConfig) -> UnpairedSR:
    """C (the identity at first) followed by U (random init; seed torch before calling)."""
    correction = CorrectionNet(cfg.correction_layers, cfg.correction_channels)
    return UnpairedSR(correction, build_generator(cfg.sr))
