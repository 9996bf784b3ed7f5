"""The reference degradation D_s, the scanner degradation, and the corruptions of the
robustness study.

D_s (SPEC section 1): Gaussian blur with sigma = (s - 1) / 2 HR pixels, kernel truncated
at 4 sigma, half-sample symmetric padding (d c b a | a b c d), then s x s block mean.
Computed in float; rounded only at the end when uint8 comes in (or is asked for).

One definition serves numpy arrays, torch batches and lazy dask arrays; training,
evaluation, the "simulate LR" option and the metrics readouts all call it.

The scanner degradation (preset `scanner`, `DegradationConfig`) makes LR the way a
slide scanner and its file format do, drawn per patch from a seeded generator: blur of
random sigma around D_s's (optionally anisotropic and rotated), the same s x s block
mean, Gaussian and signal-dependent noise, rounding to 8 bit, then JPEG (quality and
colour mode drawn) or JPEG 2000 (target PSNR drawn) coding, or none.
`draw_scanner` draws one set of parameters; `apply_scanner` applies it; `degrade_with`
takes a preset name or config for numpy arrays, torch batches and dask arrays.

Alignment: LR pixel i covers HR pixels s*i .. s*i + s - 1, so an LR layer drawn over
its HR layer has scale s and translate (s - 1) / 2 in HR pixel units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "CORRUPTION_RANGES",
    "ScannerDraw",
    "apply_scanner",
    "degrade_with",
    "draw_scanner",
    "blur_sigma",
    "corrupt",
    "degrade",
    "degrade_lazy",
    "degrade_torch",
    "gaussian_kernel1d",
    "lr_translate",
]

TRUNCATE = 4.0
CORRUPTION_RANGES: dict[str, tuple[float, float]] = {
    "noise": (0.02, 0.1),
    "blur": (1.0, 3.0),
    "contrast": (0.5, 0.8),
}


def blur_sigma(scale: int) -> float:
    """Standard deviation (HR px) of the anti-aliasing blur of D_s."""
    return (scale - 1) / 2.0


def lr_translate(scale: int) -> float:
    """Offset (HR px) of LR pixel 0's centre relative to HR pixel 0's centre."""
    return (scale - 1) / 2.0


def gaussian_kernel1d(sigma: float, truncate: float = TRUNCATE) -> np.ndarray:
    """Normalised 1-D Gaussian of radius int(truncate * sigma + 0.5), as scipy does."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _check_scale(scale: int) -> int:
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return int(scale)


def _to_float(img: np.ndarray) -> tuple[np.ndarray, bool]:
    """float64 in [0, 1] and whether the input was uint8."""
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0, True
    if np.issubdtype(img.dtype, np.floating):
        return img.astype(np.float64, copy=False), False
    raise TypeError(f"expected uint8 or float data in [0, 1], got dtype {img.dtype}")


def _from_float(img: np.ndarray, as_uint8: bool, dtype: Any) -> np.ndarray:
    if as_uint8:
        return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return img.astype(dtype if dtype is not None else np.float32, copy=False)


def _blur_np(img: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    sig = (sigma, sigma) + (0.0,) * (img.ndim - 2)
    return gaussian_filter(img, sigma=sig, mode="reflect", truncate=TRUNCATE)


def _block_mean(img: np.ndarray, s: int) -> np.ndarray:
    h, w = (img.shape[0] // s) * s, (img.shape[1] // s) * s
    img = img[:h, :w]
    return img.reshape(h // s, s, w // s, s, *img.shape[2:]).mean(axis=(1, 3))


def degrade(hr: Any, scale: int = 4, *, dtype: Any = None) -> Any:
    """The reference degradation D_s of an HR image (H, W[, C]).

    uint8 in -> uint8 out (rounded at the end); float in [0, 1] -> float32 out.
    `dtype=np.uint8` forces rounding. HR sides that are not multiples of `scale` are
    cropped at the bottom/right. Torch tensors go to `degrade_torch`, dask arrays to
    `degrade_lazy`.
    """
    s = _check_scale(scale)
    if type(hr).__module__.startswith("torch"):
        return degrade_torch(hr, s)
    if type(hr).__module__.startswith("dask"):
        return degrade_lazy(hr, s)
    hr = np.asarray(hr)
    if hr.ndim not in (2, 3):
        raise ValueError(f"expected an image (H, W) or (H, W, C), got shape {hr.shape}")
    if hr.shape[0] < s or hr.shape[1] < s:
        raise ValueError(f"image {hr.shape[:2]} is smaller than one {s}x{s} block")
    x, was_uint8 = _to_float(hr)
    if s > 1:
        x = _block_mean(_blur_np(x, blur_sigma(s)), s)
    as_uint8 = was_uint8 if dtype is None else np.dtype(dtype) == np.uint8
    return _from_float(x, as_uint8, None if dtype is None or as_uint8 else dtype)


def _symmetric_index(n: int, pad: int) -> np.ndarray:
    """Indices of a half-sample symmetric extension of length n by pad on both sides."""
    idx = np.arange(-pad, n + pad)
    period = 2 * n
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - 1 - idx, idx)


def degrade_torch(hr: torch.Tensor, scale: int = 4, *, quantize: bool = False) -> torch.Tensor:
    """D_s on a float batch (N, C, H, W) in [0, 1]; differentiable, on any device.

    `quantize` rounds the result to 8-bit levels (k / 255), as `degrade` does when it
    returns uint8: the LR a stored image or slide would hold (not differentiable then).
    """
    import torch
    import torch.nn.functional as F

    s = _check_scale(scale)
    if hr.ndim != 4:
        raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(hr.shape)}")
    if s == 1:
        return hr
    n, c, h, w = hr.shape
    k = torch.as_tensor(gaussian_kernel1d(blur_sigma(s)), dtype=hr.dtype, device=hr.device)
    r = (k.numel() - 1) // 2
    iy = torch.as_tensor(_symmetric_index(h, r), device=hr.device)
    ix = torch.as_tensor(_symmetric_index(w, r), device=hr.device)
    x = hr.index_select(2, iy).index_select(3, ix)
    x = x.reshape(n * c, 1, h + 2 * r, w + 2 * r)
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = x.reshape(n, c, h, w)
    lr = F.avg_pool2d(x[..., : (h // s) * s, : (w // s) * s], s)
    return torch.round(lr.clamp(0.0, 1.0) * 255.0) / 255.0 if quantize else lr


def degrade_lazy(hr: Any, scale: int = 4, *, chunk: int = 1024) -> Any:
    """D_s of a dask array (H, W, C) uint8, lazily, chunk by chunk with halos.

    Equal to `degrade(hr.compute(), scale)`: each chunk is blurred with enough
    neighbouring pixels (symmetric extension at the image border) before block mean.
    """
    s = _check_scale(scale)
    if hr.ndim != 3:
        raise ValueError(f"expected (H, W, C), got shape {hr.shape}")
    if hr.shape[0] < s or hr.shape[1] < s:
        raise ValueError(f"image {hr.shape[:2]} is smaller than one {s}x{s} block")
    if s == 1:
        return hr
    radius = max((len(gaussian_kernel1d(blur_sigma(s))) - 1) // 2, 1)
    was_uint8 = hr.dtype == np.uint8

    def _one(block: np.ndarray, _loc: tuple[int, int]) -> np.ndarray:
        xf, _ = _to_float(block)
        blurred = _blur_np(xf, blur_sigma(s))[radius:-radius, radius:-radius]
        return _from_float(_block_mean(blurred, s), was_uint8, np.float32)

    # Blur sees the whole image (the bottom/right remainder too, as `degrade` does).
    return _map_lr_chunks(hr, s, radius, s, chunk, _one, np.uint8 if was_uint8 else np.float32)


def _map_lr_chunks(
    x: Any,
    s: int,
    radius: int,
    unit: int,
    chunk: int,
    fn: Any,
    dtype: Any,
) -> Any:
    """`fn(block, (iy, ix))` -> LR block, on HR chunks of a multiple of `unit` px (the
    last one may be thinner) carrying a halo of `radius` px (symmetric extension at the
    image border), so block means never straddle chunks and blurs see their
    neighbours. A chunk too thin for the halo is merged into the one before it."""
    import dask.array as da

    step = max((chunk // unit) * unit, -(-radius // unit) * unit)

    def _axis_chunks(n: int) -> tuple[int, ...]:
        sizes = [step] * (n // step) + ([n % step] if n % step else [])
        if len(sizes) > 1 and sizes[-1] < radius:
            sizes[-2:] = [sizes[-2] + sizes[-1]]
        return tuple(sizes)

    x = x.rechunk((_axis_chunks(x.shape[0]), _axis_chunks(x.shape[1]), -1))

    def _one(block: np.ndarray, block_info: Any = None) -> np.ndarray:
        loc = block_info[0]["chunk-location"] if block_info else (0, 0, 0)
        return fn(block, (int(loc[0]), int(loc[1])))

    out_chunks = (
        tuple(c // s for c in x.chunks[0]),
        tuple(c // s for c in x.chunks[1]),
        x.chunks[2],
    )
    return da.map_overlap(
        _one,
        x,
        depth={0: radius, 1: radius, 2: 0},
        boundary={0: "reflect", 1: "reflect", 2: "none"},
        trim=False,
        chunks=out_chunks,
        dtype=dtype,
        meta=np.empty((0, 0, 0), dtype=dtype),
    )


def corrupt(
    hr: np.ndarray,
    kind: str,
    strength: float | None = None,
    *,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Apply one corruption of the robustness study to a float HR image in [0, 1].

    noise: additive Gaussian with sigma `strength`; blur: Gaussian blur of sigma
    `strength` HR px (poor focus); contrast: linear stretch toward the image's mean
    grey by `strength` (poor staining). `strength=None` takes the middle of the range.
    """
    if kind == "none":
        return hr
    if kind not in CORRUPTION_RANGES:
        raise ValueError(f"unknown corruption {kind!r}; choose noise, blur or contrast")
    lo, hi = CORRUPTION_RANGES[kind]
    k = (lo + hi) / 2.0 if strength is None else float(strength)
    x = hr.astype(np.float64, copy=False)
    if kind == "noise":
        rng = rng if rng is not None else np.random.default_rng()
        x = x + rng.normal(0.0, k, size=x.shape)
    elif kind == "blur":
        x = _blur_np(x, k)
    else:
        grey = x.mean()
        x = grey + k * (x - grey)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------ scanner degradation
@dataclass(frozen=True)
class ScannerDraw:
    """One draw of the scanner chain's random parameters."""

    sigma: tuple[float, float]
    """Principal blur sigmas (HR px); equal when the blur is isotropic."""
    theta: float
    """Rotation of the blur's first principal axis (radians)."""
    noise_sigma: float
    noise_shot: float
    codec: str
    """'none', 'jpeg' or 'jpeg2000'."""
    quality: float | None = None
    """JPEG: IJG quality; JPEG 2000: target PSNR (dB)."""
    colour: str = "ycbcr420"


def _resolve_preset(preset: Any) -> Any:
    from napari_srgan_sqe.config import degradation_preset

    return degradation_preset(preset)


def draw_scanner(cfg: Any, scale: int, rng: np.random.Generator) -> ScannerDraw:
    """Draw the scanner chain's parameters from `cfg` (a DegradationConfig or preset)."""
    cfg = _resolve_preset(cfg)
    s0 = blur_sigma(_check_scale(scale))
    if cfg.blur:
        f = float(rng.uniform(*cfg.blur_factor))
        ratio = 1.0 - float(rng.uniform(0.0, cfg.anisotropy))
        sigma = (s0 * f, s0 * f * ratio)
        theta = float(rng.uniform(0.0, np.pi))
    else:
        sigma, theta = (s0, s0), 0.0
    if cfg.noise:
        ns = float(rng.uniform(*cfg.noise_sigma))
        nk = float(rng.uniform(*cfg.noise_shot))
    else:
        ns = nk = 0.0
    u = float(rng.random())
    if u < cfg.jpeg_fraction:
        q = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        colour = str(cfg.jpeg_colours[int(rng.integers(len(cfg.jpeg_colours)))])
        return ScannerDraw(sigma, theta, ns, nk, "jpeg", q, colour)
    if u < cfg.jpeg_fraction + cfg.jpeg2000_fraction:
        db = float(rng.uniform(*cfg.jpeg2000_psnr))
        return ScannerDraw(sigma, theta, ns, nk, "jpeg2000", db)
    return ScannerDraw(sigma, theta, ns, nk, "none")


def _blur_kernel2d(sigma: tuple[float, float], theta: float) -> np.ndarray:
    """Normalised rotated anisotropic Gaussian, radius int(4 * max sigma + 0.5)."""
    radius = int(TRUNCATE * max(sigma) + 0.5)
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(np.float64)
    c, s_ = np.cos(theta), np.sin(theta)
    u, v = c * x + s_ * y, -s_ * x + c * y
    k = np.exp(-0.5 * ((u / sigma[0]) ** 2 + (v / sigma[1]) ** 2))
    return k / k.sum()


def _scanner_blur(x: np.ndarray, draw: ScannerDraw) -> np.ndarray:
    if draw.sigma[0] == draw.sigma[1]:
        return _blur_np(x, draw.sigma[0])  # separable: D_s's own blur at that sigma
    from scipy.signal import fftconvolve

    k = _blur_kernel2d(draw.sigma, draw.theta)
    r = k.shape[0] // 2
    # Half-sample symmetric padding ("symmetric" in numpy, "reflect" in scipy.ndimage).
    xp = np.pad(x, ((r, r), (r, r), (0, 0)), mode="symmetric")
    return fftconvolve(xp, k[..., None], mode="valid", axes=(0, 1))


def _lr_noise_round_code(lr: np.ndarray, draw: ScannerDraw, rng: np.random.Generator) -> np.ndarray:
    """Noise, 8-bit rounding and coding of a float LR image; uint8 out."""
    from napari_srgan_sqe.io.codecs import code_image, decode, encode_jpeg2000_psnr

    if draw.noise_sigma > 0 or draw.noise_shot > 0:
        std = np.sqrt(draw.noise_sigma**2 + draw.noise_shot**2 * np.clip(lr, 0.0, 1.0))
        lr = lr + std * rng.standard_normal(lr.shape)
    lr8 = np.clip(np.rint(lr * 255.0), 0, 255).astype(np.uint8)
    if draw.codec == "none":
        return lr8
    if draw.codec == "jpeg2000":
        assert draw.quality is not None, "a JPEG 2000 draw always has a target PSNR"
        return decode(encode_jpeg2000_psnr(lr8, float(draw.quality)))
    return code_image(lr8, draw.codec, draw.quality, colour=draw.colour)


def apply_scanner(
    hr: np.ndarray, scale: int, draw: ScannerDraw, rng: np.random.Generator | None = None
) -> np.ndarray:
    """The scanner chain with drawn parameters on an RGB image (H, W, 3); uint8 in ->
    uint8 out, float in [0, 1] -> float32 out (on 8-bit levels). `rng` draws the noise."""
    s = _check_scale(scale)
    hr = np.asarray(hr)
    if hr.ndim != 3 or hr.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {hr.shape}")
    if hr.shape[0] < s or hr.shape[1] < s:
        raise ValueError(f"image {hr.shape[:2]} is smaller than one {s}x{s} block")
    x, was_uint8 = _to_float(hr)
    lr = _block_mean(_scanner_blur(x, draw), s) if s > 1 else x
    out = _lr_noise_round_code(lr, draw, rng if rng is not None else np.random.default_rng(0))
    return out if was_uint8 else out.astype(np.float32) / np.float32(255.0)


def degrade_with(
    hr: Any,
    preset: Any = "clean",
    scale: int = 4,
    *,
    seed: int | Sequence[int] = 0,
) -> Any:
    """LR of `hr` by a degradation preset ('clean', 'scanner') or DegradationConfig.

    'clean' is `degrade` (D_s) exactly. 'scanner' draws its parameters from
    `np.random.default_rng(seed)`, so the same seed gives the same LR. numpy arrays
    (H, W, 3), torch batches (N, C, H, W) in [0, 1] (per image seeds [seed, i]; not
    differentiable) and dask arrays (H, W, 3) uint8 (one draw for the image, noise
    seeded per chunk) are accepted.
    """
    cfg = _resolve_preset(preset)
    if cfg.preset == "clean":
        return degrade(hr, scale)
    seeds = list(seed) if isinstance(seed, Sequence) else [int(seed)]
    if type(hr).__module__.startswith("torch"):
        import torch

        if hr.ndim != 4:
            raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(hr.shape)}")
        imgs = hr.detach().permute(0, 2, 3, 1).cpu().numpy()
        outs = []
        for i, img in enumerate(imgs):
            rng = np.random.default_rng([*seeds, i])
            d = draw_scanner(cfg, scale, rng)
            outs.append(apply_scanner(img.astype(np.float64), scale, d, rng))
        lr = torch.from_numpy(np.stack(outs)).permute(0, 3, 1, 2)
        return lr.to(device=hr.device, dtype=hr.dtype).contiguous()
    if type(hr).__module__.startswith("dask"):
        return _scanner_lazy(hr, cfg, scale, seeds)
    rng = np.random.default_rng(seeds)
    return apply_scanner(hr, scale, draw_scanner(cfg, scale, rng), rng)


def _scanner_lazy(hr: Any, cfg: Any, scale: int, seeds: list[int], chunk: int = 1024) -> Any:
    """The scanner chain on a dask array (H, W, 3) uint8, chunk by chunk with halos.

    One parameter draw for the whole image (a slide is scanned and coded with one
    setting); noise is seeded per chunk; coding is per LR chunk, whose size is a
    multiple of 16 LR px so that JPEG's 8 x 8 (and 4:2:0's 16 x 16) grid stays on the
    image's grid, as a scanner codes tile by tile.
    """
    s = _check_scale(scale)
    if hr.ndim != 3 or hr.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3), got shape {hr.shape}")
    if hr.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {hr.dtype}")
    draw = draw_scanner(cfg, s, np.random.default_rng(seeds))
    radius = max(int(TRUNCATE * max(draw.sigma) + 0.5), 1)
    h, w = (hr.shape[0] // s) * s, (hr.shape[1] // s) * s

    def _one(block: np.ndarray, loc: tuple[int, int]) -> np.ndarray:
        xf, _ = _to_float(block)
        blurred = _scanner_blur(xf, draw)[radius:-radius, radius:-radius]
        rng = np.random.default_rng([*seeds, *loc])
        return _lr_noise_round_code(_block_mean(blurred, s), draw, rng)

    return _map_lr_chunks(hr[:h, :w], s, radius, 16 * s, chunk, _one, np.uint8)
