"""Building blocks shared by the networks, and the receptive-field arithmetic.

`halo_of` computes the exact receptive-field radius (in LR pixels) of a chain of
convolutions and pixel shuffles, so every network's `halo` follows from its layers
instead of being written down by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Bicubic",
    "OnePassInference",
    "ResidualBlock",
    "activation",
    "bicubic_upscale",
    "conv",
    "count_macs",
    "halo_of",
    "plain_convs",
]


def activation(name: str, channels: int) -> nn.Module:
    """'relu' or 'prelu' (one learned slope per channel, as in SRGAN)."""
    if name == "prelu":
        return nn.PReLU(channels)
    if name == "relu":
        return nn.ReLU(inplace=True)
    raise ValueError(f"unknown activation {name!r}; choose relu or prelu")


def conv(
    c_in: int, c_out: int, kernel: int = 3, stride: int = 1, *, bias: bool = True
) -> nn.Conv2d:
    """A 'same' zero-padded convolution (odd kernel)."""
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=bias)


def plain_convs(c_in: int, channels: int, n_layers: int) -> tuple[nn.Sequential, nn.Conv2d]:
    """`n_layers` 3x3 convs with ReLU between, as (body, tail): the body maps `c_in` to
    `channels`, the tail `channels` to 3 and starts at zero, so a residual branch
    tail(body(x)) adds nothing until trained (ZSSR, the unpaired correction net)."""
    layers: list[nn.Module] = [conv(c_in, channels), nn.ReLU(inplace=True)]
    for _ in range(n_layers - 2):
        layers += [conv(channels, channels), nn.ReLU(inplace=True)]
    tail = conv(channels, 3)
    assert tail.bias is not None  # conv() layers have a bias
    with torch.no_grad():
        tail.weight.zero_()
        tail.bias.zero_()
    return nn.Sequential(*layers), tail


class ResidualBlock(nn.Module):
    """conv3x3-[BN]-ReLU-conv3x3-[BN] + identity (SRGAN's block)."""

    def __init__(
        self,
        channels: int,
        *,
        batch_norm: bool = True,
        res_scale: float = 1.0,
        kernel: int = 3,
        act: str = "relu",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv(channels, channels, kernel, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(channels))
        layers += [activation(act, channels), conv(channels, channels, kernel, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(channels))
        self.body = nn.Sequential(*layers)
        if res_scale != 1.0:  # small residuals at init keep deep BN-free trunks stable
            weight = self.body[-1].weight
            assert isinstance(weight, torch.Tensor)
            with torch.no_grad():
                weight.mul_(res_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class OnePassInference:
    """Mixin for networks whose inference is one deterministic forward pass: the
    method interface's `infer_batch` (the seed and the windows' origins are ignored)."""

    @torch.no_grad()
    def infer_batch(
        self, x: torch.Tensor, *, seed: int | None = None, origins: object = None
    ) -> torch.Tensor:
        assert callable(self)  # mixed into an nn.Module
        return cast(torch.Tensor, self(x))


class Bicubic(OnePassInference, nn.Module):
    """Bicubic up-sampling by `scale` (no weights): the 'bicubic' baseline and skip."""

    halo = 2  # 4 taps around a sample point that lies within +-0.5 LR px of its pixel

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        self.scale = int(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"all": [], "last": []}

    def macs_per_pixel(self) -> int:
        return 0


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """The one bicubic up-sampling (uint8 (H, W, 3) in, uint8 out) used everywhere.

    Pads by `Bicubic.halo` LR px with half-sample symmetric padding, runs `Bicubic`
    (torch, `align_corners=False`, D_s's pixel centres), crops and rounds: equal to
    `Predictor(load_model("bicubic-x4")).predict_image(lr)` for scale 4.
    """
    lr = np.asarray(lr)
    if lr.ndim != 3 or lr.shape[-1] != 3 or lr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {lr.dtype} {lr.shape}")
    s, p = int(scale), Bicubic.halo
    padded = np.pad(lr, ((p, p), (p, p), (0, 0)), mode="symmetric")
    x = torch.from_numpy(np.ascontiguousarray(padded)).permute(2, 0, 1)[None].float().div_(255.0)
    h, w = lr.shape[:2]
    with torch.inference_mode():
        y = Bicubic(s)(x)[:, :, p * s : (p + h) * s, p * s : (p + w) * s]
        y = y.float().clamp(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
    return y[0].permute(1, 2, 0).contiguous().numpy()


def halo_of(ops: Sequence[tuple[str, int]], scale: int) -> int:
    """Receptive-field radius, in LR pixels, of a chain of ops applied input -> output.

    `ops` lists ("conv", radius) at the current resolution, ("shuffle", factor), and
    ("bicubic", factor) for a bicubic up-sampling (4 taps, `align_corners=False`).
    For every sub-pixel phase of an output pixel y (LR location y // scale) the input
    interval it depends on is propagated back exactly (with the floor of each pixel
    shuffle); the result is the largest distance from y // scale to either end.
    """
    worst = 0
    for phase in range(scale):
        lo = hi = phase  # output pixel y = phase; its LR location is 0
        for kind, value in reversed(ops):
            if kind == "conv":
                lo, hi = lo - value, hi + value
            elif kind == "shuffle":
                lo, hi = lo // value, hi // value
            elif kind == "bicubic":  # output y samples input (y + 0.5) / f - 0.5
                lo = math.floor((lo + 0.5) / value - 0.5) - 1
                hi = math.floor((hi + 0.5) / value - 0.5) + 2
            else:
                raise ValueError(f"unknown op {kind!r}")
        worst = max(worst, -lo, hi)
    return worst


def count_macs(
    net: nn.Module,
    scale: int,
    size: int = 16,
    *,
    run: Callable[[torch.Tensor], object] | None = None,
) -> int:
    """Multiply-adds per output pixel of `net`'s convolutions and linear layers (one
    forward pass of a `size` x `size` input, counted by hooks; interpolation and
    activations excluded). `run(x)` replaces `net(x)` for a network whose pass to count
    is not its forward (e.g. one denoiser step of a diffusion sampler)."""
    total = 0

    def hook(mod: nn.Module, _inp: object, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            total += out[0].numel() * (mod.in_channels // mod.groups) * k
        else:
            assert isinstance(mod, nn.Linear)
            total += out[0].numel() * mod.in_features

    layers = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    handles = [m.register_forward_hook(hook) for m in layers]
    was_training = net.training
    net.eval()  # BatchNorm statistics stay as they are
    try:
        param = next(net.parameters(), None)
        x = torch.zeros(1, 3, size, size, device=param.device if param is not None else "cpu")
        with torch.no_grad():
            (run or net)(x)
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return round(total / (size * scale) ** 2)
