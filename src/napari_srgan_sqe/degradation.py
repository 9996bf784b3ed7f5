"""The reference degradation D_s and the corruptions of the robustness study.

D_s (SPEC section 1): Gaussian blur with sigma = (s - 1) / 2 HR pixels, kernel truncated
at 4 sigma, half-sample symmetric padding (d c b a | a b c d), then s x s block mean.
Computed in float; rounded only at the end when uint8 comes in (or is asked for).

One definition serves numpy arrays, torch batches and lazy dask arrays; training,
evaluation, the "simulate LR" option and the metrics readouts all call it.

Alignment: LR pixel i covers HR pixels s*i .. s*i + s - 1, so an LR layer drawn over
its HR layer has scale s and translate (s - 1) / 2 in HR pixel units.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "CORRUPTION_RANGES",
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
    import dask.array as da

    s = _check_scale(scale)
    if hr.ndim != 3:
        raise ValueError(f"expected (H, W, C), got shape {hr.shape}")
    if hr.shape[0] < s or hr.shape[1] < s:
        raise ValueError(f"image {hr.shape[:2]} is smaller than one {s}x{s} block")
    if s == 1:
        return hr
    radius = (len(gaussian_kernel1d(blur_sigma(s))) - 1) // 2
    radius = max(radius, 1)
    step = max((chunk // s) * s, -(-radius // s) * s)

    # Blur sees the whole image (the bottom/right remainder too, as `degrade` does);
    # every chunk but the last is a multiple of s, so block means never straddle chunks.
    def _axis_chunks(n: int) -> tuple[int, ...]:
        sizes = [step] * (n // step) + ([n % step] if n % step else [])
        if len(sizes) > 1 and sizes[-1] < radius:  # too thin for the halo: merge it
            sizes[-2:] = [sizes[-2] + sizes[-1]]
        return tuple(sizes)

    x = hr.rechunk((_axis_chunks(hr.shape[0]), _axis_chunks(hr.shape[1]), -1))
    depth = {0: radius, 1: radius, 2: 0}
    was_uint8 = hr.dtype == np.uint8

    def _one(block: np.ndarray) -> np.ndarray:
        xf, _ = _to_float(block)
        blurred = _blur_np(xf, blur_sigma(s))[radius:-radius, radius:-radius]
        return _from_float(_block_mean(blurred, s), was_uint8, np.float32)

    out_chunks = (
        tuple(c // s for c in x.chunks[0]),
        tuple(c // s for c in x.chunks[1]),
        x.chunks[2],
    )
    return da.map_overlap(
        _one,
        x,
        depth=depth,
        boundary={0: "reflect", 1: "reflect", 2: "none"},
        trim=False,
        chunks=out_chunks,
        dtype=np.uint8 if was_uint8 else np.float32,
        meta=np.empty((0, 0, 0), dtype=np.uint8 if was_uint8 else np.float32),
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
