"""SR3, conditional diffusion super-resolution (Saharia et al. 2021), arch 'sr3'.

The model samples an HR image given the LR one. What is diffused is the residual
over bicubic interpolation, scaled to about unit spread:
    x0 = (HR - bicubic(LR)) * residual_scale
and the denoiser sees the noisy residual x_t concatenated with bicubic(LR) (SR3's
conditioning). Both are HR-sized; a pixel unshuffle by the scale turns them into
6 s^2 channels at LR resolution, where a small U-Net (no normalisation layers, so the
network stays local and tiles agree) predicts v = alpha * eps - sigma * x0 under a
cosine noise schedule, conditioned on the noise level through a sinusoidal embedding.

Sampling is DDIM with eta = 0 (deterministic given the starting noise) in `steps`
steps from t = 1 to 0. The starting noise is a function of the seed and of each HR
pixel's position in the slide (`position_noise`): two windows that overlap start from
the same noise where they overlap, so a tile read with an `overlap` margin and cropped
agrees with its neighbours (tiling 'overlap'), and the same seed always gives the
same image while two seeds give two different samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from napari_srgan_sqe.config import SR3Config
from napari_srgan_sqe.models.blocks import Bicubic, conv, count_macs
from napari_srgan_sqe.models.method import check_cancelled

__all__ = [
    "NOISE_BLOCK",
    "SR3Net",
    "build_sr3",
    "cosine_alpha_sigma",
    "position_noise",
]

NOISE_BLOCK = 32
"""Side (HR px) of the blocks the starting noise is drawn in, one generator per block."""
_T_MAX = 0.999  # the cosine schedule's alpha is exactly 0 at t = 1


def cosine_alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) of the cosine schedule at times t in [0, 1]: alpha^2 + sigma^2 = 1."""
    f = torch.cos((t + 0.008) / 1.008 * (math.pi / 2))
    f0 = math.cos(0.008 / 1.008 * (math.pi / 2))
    alpha = (f / f0).clamp(0.0, 1.0)
    return alpha, (1.0 - alpha * alpha).clamp_min(0.0).sqrt()


def _block_seed(seed: int, by: int, bx: int) -> int:
    """A 63-bit generator seed for noise block (by, bx) (any sign) of sample `seed`."""
    h = 0x9E3779B97F4A7C15
    for v in (seed, by, bx):
        h ^= (
            (v & 0xFFFFFFFFFFFFFFFF)
            + 0x9E3779B97F4A7C15
            + ((h << 6) & 0xFFFFFFFFFFFFFFFF)
            + (h >> 2)
        )
        h &= 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def position_noise(seed: int, y0: int, x0: int, h: int, w: int) -> torch.Tensor:
    """Standard normal noise (3, h, w) for the HR window whose top-left pixel is at
    (y0, x0) of the slide (negative inside a mirrored margin): each pixel's value
    depends only on (seed, its position), not on the window."""
    b = NOISE_BLOCK
    by0, bx0 = y0 // b, x0 // b
    by1, bx1 = (y0 + h - 1) // b, (x0 + w - 1) // b
    canvas = torch.empty(3, (by1 - by0 + 1) * b, (bx1 - bx0 + 1) * b)
    gen = torch.Generator()
    for by in range(by0, by1 + 1):
        for bx in range(bx0, bx1 + 1):
            gen.manual_seed(_block_seed(int(seed), by, bx))
            oy, ox = (by - by0) * b, (bx - bx0) * b
            canvas[:, oy : oy + b, ox : ox + b] = torch.randn(3, b, b, generator=gen)
    oy, ox = y0 - by0 * b, x0 - bx0 * b
    return canvas[:, oy : oy + h, ox : ox + w]


def _time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of 1000 t (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class _ResBlock(nn.Module):
    """conv-SiLU-(+ noise-level bias)-conv + skip (1x1 conv when the width changes)."""

    def __init__(self, c_in: int, c_out: int, emb: int) -> None:
        super().__init__()
        self.conv1 = conv(c_in, c_out)
        self.conv2 = conv(c_out, c_out)
        self.emb = nn.Linear(emb, c_out)
        self.skip = conv(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        with torch.no_grad():  # small residual branches at init
            self.conv2.weight.mul_(0.1)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv1(F.silu(x)))
        h = h + self.emb(e)[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(h))


class _UNet(nn.Module):
    """The denoiser at LR resolution: levels of `blocks` residual blocks, stride-2
    down-sampling, nearest up-sampling, skip connections by concatenation."""

    def __init__(self, c_in: int, c_out: int, channels: int, mults: Sequence[int], blocks: int):
        super().__init__()
        emb = channels * 4
        self.emb_dim = channels
        self.emb = nn.Sequential(nn.Linear(channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        widths = [channels * m for m in mults]
        self.head = conv(c_in, widths[0])
        self.down = nn.ModuleList()
        self.pools = nn.ModuleList()
        c = widths[0]
        for i, w in enumerate(widths):
            self.down.append(
                nn.ModuleList([_ResBlock(c if j == 0 else w, w, emb) for j in range(blocks)])
            )
            c = w
            if i < len(widths) - 1:
                self.pools.append(conv(w, w, 3, stride=2))
        self.mid = _ResBlock(c, c, emb)
        self.up = nn.ModuleList()
        self.unpools = nn.ModuleList()
        for i in reversed(range(len(widths))):
            w = widths[i]
            self.up.append(
                nn.ModuleList([_ResBlock((c if j == 0 else w) + w, w, emb) for j in range(blocks)])
            )
            c = w
            if i > 0:
                self.unpools.append(conv(w, widths[i - 1]))
                c = widths[i - 1]
        self.tail = conv(c, c_out)
        with torch.no_grad():
            self.tail.weight.zero_()
            assert self.tail.bias is not None
            self.tail.bias.zero_()
        self.depth = len(widths) - 1

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        e = self.emb(_time_embedding(t, self.emb_dim))
        h = self.head(x)
        skips = []
        for i, level in enumerate(self.down):
            for block in cast(nn.ModuleList, level):
                h = block(h, e)
                skips.append(h)
            if i < self.depth:
                h = self.pools[i](h)
        h = self.mid(h, e)
        for i, level in enumerate(self.up):
            for block in cast(nn.ModuleList, level):
                h = block(torch.cat([h, skips.pop()], dim=1), e)
            if i < self.depth:
                size = skips[-1].shape[-2:]
                h = self.unpools[i](F.interpolate(h, size=size, mode="nearest"))
        return self.tail(F.silu(h))


class SR3Net(nn.Module):
    """Conditional diffusion SR: `denoise` for training, `sample` for inference."""

    def __init__(
        self,
        scale: int = 4,
        channels: int = 48,
        mults: Sequence[int] = (1, 2, 2),
        blocks: int = 2,
        steps: int = 8,
        overlap: int = 16,
        residual_scale: float = 10.0,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.scale = int(scale)
        self.steps = int(steps)
        self.halo = int(overlap)  # the margin read around each tile (not exact)
        self.residual_scale = float(residual_scale)
        self.temperature = float(temperature)
        self.up = Bicubic(self.scale)
        s2 = self.scale * self.scale
        self.unet = _UNet(6 * s2, 3 * s2, channels, mults, blocks)
        # LR sides the U-Net needs (padded inside); windows agree when their origins
        # agree modulo this
        self.alignment = 2 ** (len(mults) - 1)

    # -- training ----------------------------------------------------------------
    def denoise(self, x_t: torch.Tensor, up: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The predicted v for noisy residuals x_t (N, 3, H, W), bicubic(LR) `up` and
        times t (N,); H and W are multiples of the scale."""
        s = self.scale
        inp = F.pixel_unshuffle(torch.cat([x_t, up * 2.0 - 1.0], dim=1), s)
        h, w = inp.shape[-2:]
        m = self.alignment
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:  # replicate to the U-Net's multiple, cropped after
            inp = F.pad(inp, (0, pw, 0, ph), mode="replicate")
        out = self.unet(inp, t)[:, :, :h, :w]
        return F.pixel_shuffle(out, s)

    def training_loss(
        self, lr: torch.Tensor, hr: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Mean squared error of the predicted v at random times (one per patch)."""
        up = self.up(lr)
        x0 = (hr - up) * self.residual_scale
        n = hr.shape[0]
        t = torch.rand(n, generator=generator, device="cpu").to(hr.device)
        eps = torch.randn(x0.shape, generator=generator, device="cpu").to(hr.device)
        alpha, sigma = cosine_alpha_sigma(t)
        a, sg = alpha[:, None, None, None], sigma[:, None, None, None]
        x_t = a * x0 + sg * eps
        v = a * eps - sg * x0
        return F.mse_loss(self.denoise(x_t, up, t), v)

    # -- inference -----------------------------------------------------------------
    def start_noise(
        self, shape: torch.Size, seed: int, origins: Sequence[tuple[int, int]] | None
    ) -> torch.Tensor:
        """The starting noise of each window (N, 3, H, W), keyed to its HR position."""
        n, _, h, w = shape
        s = self.scale
        rows = []
        for i in range(n):
            oy, ox = origins[i] if origins is not None else (0, 0)
            rows.append(position_noise(seed, oy * s, ox * s, h, w))
        return torch.stack(rows)

    @torch.no_grad()
    def sample(
        self,
        lr: torch.Tensor,
        *,
        seed: int = 0,
        origins: Sequence[tuple[int, int]] | None = None,
        steps: int | None = None,
    ) -> torch.Tensor:
        """An HR sample for LR (N, 3, h, w) in [0, 1]: DDIM (eta 0) in `steps` steps."""
        up = self.up(lr.float())
        x = self.start_noise(up.shape, seed, origins).to(up.device, up.dtype) * self.temperature
        n_steps = int(steps or self.steps)
        times = torch.linspace(_T_MAX, 0.0, n_steps + 1, device=up.device)
        x0, k = x, self.residual_scale
        for i in range(n_steps):
            check_cancelled()  # the process is exiting: stop between steps
            t = times[i].expand(up.shape[0])
            alpha, sigma = cosine_alpha_sigma(times[i])
            v = self.denoise(x, up, t).float()
            x0 = alpha * x - sigma * v
            # SR3's clipping of the predicted x0: the image it implies stays in [0, 1]
            x0 = torch.maximum(torch.minimum(x0, (1.0 - up) * k), -up * k)
            eps = sigma * x + alpha * v
            a_next, s_next = cosine_alpha_sigma(times[i + 1])
            x = a_next * x0 + s_next * eps
        return up + x0 / self.residual_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One sample with seed 0 (what `infer_batch` gives without a seed)."""
        return self.sample(x, seed=0)

    def infer_batch(
        self,
        x: torch.Tensor,
        *,
        seed: int | None = None,
        origins: Sequence[tuple[int, int]] | None = None,
    ) -> torch.Tensor:
        return self.sample(x, seed=0 if seed is None else int(seed), origins=origins)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        last = list(self.unet.tail.parameters()) + list(self.unet.up[-1].parameters())
        return {"all": list(self.parameters()), "last": last}

    def macs_per_pixel(self) -> int:
        """Multiply-adds of one denoiser pass per output pixel (x `steps` per sample)."""

        def one_pass(lr: torch.Tensor) -> None:
            hr = self.up(lr)  # zeros at HR size: the noisy residual and its condition
            self.denoise(hr, hr, torch.zeros(1, device=lr.device))

        return count_macs(self, self.scale, run=one_pass)


def build_sr3(cfg: SR3Config) -> SR3Net:
    """The SR3 network described by `cfg` (random init; seed torch before calling)."""
    return SR3Net(
        scale=cfg.scale,
        channels=cfg.channels,
        mults=cfg.mults,
        blocks=cfg.blocks,
        steps=cfg.steps,
        overlap=cfg.overlap,
        residual_scale=cfg.residual_scale,
        temperature=cfg.temperature,
    )
