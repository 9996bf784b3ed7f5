"""Image quality metrics exactly as SPEC section 4 defines them.

Numpy functions take (H, W, C) or (H, W) arrays, uint8 or float in [0, 1], and
compute SSIM, MS-SSIM and QILV per channel, then average over channels; PSNR and
RRMSE pool all pixels and channels together, the field's convention. They use scipy's
separable Gaussian filters and run on ~1000 x 1000 crops on every camera move.
`ssim_torch` / `psnr_torch` are the differentiable training-loop versions; the
SSIM loss in `losses` uses the same code.

SSIM matches `skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)`: 11 x 11 Gaussian window, population
covariance, and only the valid region (skimage filters then crops (win - 1) / 2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "METRICS",
    "MS_SSIM_MIN_SIZE",
    "MS_SSIM_WEIGHTS",
    "Metric",
    "all_metrics",
    "format_metric",
    "metric_gain",
    "ms_ssim",
    "psnr",
    "psnr_torch",
    "qilv",
    "rrmse",
    "ssim",
    "ssim_torch",
    "ssim_torch_per_channel",
]

K1, K2 = 0.01, 0.03
WINDOW, SIGMA = 11, 1.5
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_MIN_SIZE = 161  # ceil(161 / 2**4) = 11: the coarsest scale still holds one window


# ----------------------------------------------------------------------------- numpy
# Internally images are float32 (C, H, W), so each channel is one contiguous plane:
# filters and per-channel reductions stay fast on ~1000 x 1000 crops.
def _as_float(img: Any, what: str) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / np.float32(255)
    elif np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32, copy=False)
    else:
        raise ValueError(
            f"{what} must be uint8 or float in [0, 1], got dtype {a.dtype}; convert it first"
        )
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"{what} must be an image (H, W) or (H, W, C), got shape {a.shape}")
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def _pair(estimate: Any, reference: Any) -> tuple[np.ndarray, np.ndarray]:
    if np.shape(estimate) != np.shape(reference):
        raise ValueError(
            f"estimate and reference differ in shape: {np.shape(estimate)} vs {np.shape(reference)}"
        )
    return _as_float(estimate, "estimate"), _as_float(reference, "reference")


def _chan_mean(x: np.ndarray) -> np.ndarray:
    """Per-channel mean of (C, H, W): float32 row sums (pairwise), float64 after."""
    return x.sum(axis=2, dtype=np.float32).sum(axis=1, dtype=np.float64) / (x.shape[1] * x.shape[2])


def _filter(x: np.ndarray, window: int, sigma: float) -> np.ndarray:
    """Gaussian filter of each channel, valid region only (border of radius cropped)."""
    from scipy.ndimage import gaussian_filter

    rad = (window - 1) // 2
    out = gaussian_filter(x, sigma=(0.0, sigma, sigma), mode="reflect", truncate=rad / sigma)
    return out[:, rad : x.shape[1] - rad, rad : x.shape[2] - rad]


def _moments(x: np.ndarray, y: np.ndarray, window: int = WINDOW, sigma: float = SIGMA):
    """Local means, variances and covariance (population) over the valid region."""
    if min(x.shape[1:]) < window:
        raise ValueError(f"images must be at least {window} px a side, got {x.shape[1:]}")
    mx, my = _filter(x, window, sigma), _filter(y, window, sigma)
    vx = _filter(x * x, window, sigma) - mx * mx
    vy = _filter(y * y, window, sigma) - my * my
    cxy = _filter(x * y, window, sigma) - mx * my
    return mx, my, vx, vy, cxy


def _ssim_cs(mx, my, vx, vy, cxy) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """Per-channel means of the SSIM map and of its contrast-structure part."""
    c1, c2 = K1**2, K2**2
    cs_map = (2 * cxy + c2) / (vx + vy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    return _chan_mean(lum * cs_map), _chan_mean(cs_map)


def ssim(estimate: Any, reference: Any) -> float:
    """Mean SSIM (11 x 11 Gaussian window, sigma 1.5), per channel, averaged."""
    e, r = _pair(estimate, reference)
    return float(_ssim_cs(*_moments(e, r))[0].mean())


def _pool2(x: np.ndarray) -> np.ndarray:
    """2 x 2 average pooling; an odd last row/column is paired with itself."""
    if x.shape[1] % 2:
        x = np.concatenate([x, x[:, -1:]], axis=1)
    if x.shape[2] % 2:
        x = np.concatenate([x, x[:, :, -1:]], axis=2)
    return 0.25 * (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2])


def _ms_ssim(e: np.ndarray, r: np.ndarray, first: tuple | None = None) -> float:
    if min(e.shape[1:]) < MS_SSIM_MIN_SIZE:
        raise ValueError(
            f"MS-SSIM needs at least {MS_SSIM_MIN_SIZE} px a side (5 scales of an 11 px "
            f"window), got {e.shape[1]} x {e.shape[2]}"
        )
    out = np.ones(e.shape[0])
    for j, w in enumerate(MS_SSIM_WEIGHTS):
        if j > 0:
            e, r = _pool2(e), _pool2(r)
        s, cs = _ssim_cs(*(first if j == 0 and first is not None else _moments(e, r)))
        v = s if j == len(MS_SSIM_WEIGHTS) - 1 else cs
        out *= np.maximum(v, 0.0) ** w
    return float(out.mean())


def ms_ssim(estimate: Any, reference: Any) -> float:
    """Multi-scale SSIM: 5 scales, weights MS_SSIM_WEIGHTS, 2 x 2 average pooling.

    Negative contrast-structure values are clipped to 0 before the fractional powers.
    """
    return _ms_ssim(*_pair(estimate, reference))


def _qilv_from(vx: np.ndarray, vy: np.ndarray) -> float:
    c1, c2 = K1**2, K2**2
    n = vx.shape[1] * vx.shape[2]
    mx, my = _chan_mean(vx), _chan_mean(vy)
    dx = vx - mx.astype(np.float32)[:, None, None]
    dy = vy - my.astype(np.float32)[:, None, None]
    sx = np.sqrt(_chan_mean(dx * dx) * n / (n - 1))
    sy = np.sqrt(_chan_mean(dy * dy) * n / (n - 1))
    sxy = _chan_mean(dx * dy)
    q = (
        (2 * mx * my + c1)
        / (mx**2 + my**2 + c1)
        * (2 * sx * sy + c2)
        / (sx**2 + sy**2 + c2)
        * (sxy + c2 / 2)
        / (sx * sy + c2 / 2)
    )
    return float(q.mean())


def qilv(estimate: Any, reference: Any) -> float:
    """QILV (Aja-Fernandez 2006) on local variances, valid region; per channel, averaged.

    With SPEC's N-1 standard deviations and mean covariance, identical images give
    1 - 1/N. More sensitive to blur than SSIM (which is more sensitive to noise).
    """
    _, _, vx, vy, _ = _moments(*_pair(estimate, reference))
    return _qilv_from(vx, vy)


def psnr(estimate: Any, reference: Any) -> float:
    """10 log10(1 / MSE), the MSE over all pixels and channels together (the field's
    convention, as `skimage.metrics.peak_signal_noise_ratio` on an RGB array); inf when
    the images are identical."""
    return _psnr(*_pair(estimate, reference))


def _psnr(e: np.ndarray, r: np.ndarray) -> float:
    d = e - r
    mse = float(_chan_mean(d * d).mean())  # equal planes: the mean of means is the mean
    with np.errstate(divide="ignore"):
        return float(10.0 * np.log10(1.0 / mse)) if mse > 0 else float("inf")


def rrmse(estimate: Any, reference: Any) -> float:
    """||estimate - reference||_2 / ||reference||_2 over all pixels and channels."""
    return _rrmse(*_pair(estimate, reference))


def _rrmse(e: np.ndarray, r: np.ndarray) -> float:
    d = e - r
    num, den = float(_chan_mean(d * d).sum()), float(_chan_mean(r * r).sum())
    if num == 0:
        return 0.0
    return float(np.sqrt(num / den)) if den > 0 else float("inf")


@dataclass(frozen=True)
class Metric:
    """One image-quality metric as every part of the product shows it: evaluation
    tables and CSV, the trainer's log, the Compare widget's readouts and tips."""

    key: str
    """Its name in results (evaluation.json, CSV columns, readout dicts)."""
    label: str
    """Its row label in tables (with the unit, if any)."""
    higher_is_better: bool
    decimals: int
    """Decimals shown in readouts and tables."""
    tip: str
    """What it measures, in words (the Compare widget's tooltip)."""
    fn: Callable[[Any, Any], float | None]
    """(estimate, reference) -> value, or None where it is undefined (too small)."""


def _ms_ssim_or_none(estimate: Any, reference: Any) -> float | None:
    e, r = _pair(estimate, reference)
    return None if min(e.shape[1:]) < MS_SSIM_MIN_SIZE else _ms_ssim(e, r)


METRICS: tuple[Metric, ...] = (
    Metric("psnr", "PSNR (dB)", True, 2,
           "Peak signal-to-noise ratio, in decibels: higher is closer to the reference "
           "(+1 dB is about 11% less error)", psnr),
    Metric("ssim", "SSIM", True, 4,
           "Structural similarity, 0 to 1: do local brightness, contrast and structure "
           "match? 1 is identical", ssim),
    Metric("ms_ssim", "MS-SSIM", True, 4,
           "Multi-scale SSIM, 0 to 1: SSIM over five scales, from cells to tissue; "
           f"needs a view of at least {MS_SSIM_MIN_SIZE} px a side ('-' below that)",
           _ms_ssim_or_none),
    Metric("qilv", "QILV", True, 4,
           "Quality index based on local variance, 0 to 1: does the texture (local "
           "contrast) match? 1 is identical", qilv),
    Metric("rrmse", "RRMSE", False, 4,
           "Relative root-mean-square error: the size of the error divided by the "
           "reference's; lower is closer, 0 is identical", rrmse),
)  # fmt: skip
"""Every metric the product reports, in the order tables show them. A new metric is
its function above and one entry here: `srgan-sqe evaluate` (tables, JSON, CSV) and
the Compare widget's readouts, gains and tips read this table."""
_BY_KEY = {m.key: m for m in METRICS}


def format_metric(key: str, value: float | None, *, signed: bool = False) -> str:
    """`value` of metric `key` with the metric's decimals ('-' for None; 'inf' / 'nan'
    as such); `signed` shows a '+' on gains."""
    if value is None:
        return "-"
    if not np.isfinite(value):
        return str(value)
    return f"{value:{'+' if signed else ''}.{_BY_KEY[key].decimals}f}"


def metric_gain(key: str, value: float | None, baseline: float | None) -> float | None:
    """How much better `value` is than `baseline` on metric `key`, positive when better
    (for a lower-is-better metric, baseline minus value); None if either is missing or
    not finite."""
    if value is None or baseline is None or not (np.isfinite(value) and np.isfinite(baseline)):
        return None
    return value - baseline if _BY_KEY[key].higher_is_better else baseline - value


def all_metrics(estimate: Any, reference: Any) -> dict[str, float | None]:
    """Every metric of `METRICS` at once, by key (MS-SSIM None below MS_SSIM_MIN_SIZE
    px). SSIM, MS-SSIM and QILV share their filtered moments; a metric added to the
    table without a shared fast path is computed by its own function."""
    e, r = _pair(estimate, reference)
    mom = _moments(e, r)
    small = min(e.shape[1:]) < MS_SSIM_MIN_SIZE
    fast: dict[str, Callable[[], float | None]] = {
        "psnr": lambda: _psnr(e, r),
        "ssim": lambda: float(_ssim_cs(*mom)[0].mean()),
        "ms_ssim": lambda: None if small else _ms_ssim(e, r, first=mom),
        "qilv": lambda: _qilv_from(mom[2], mom[3]),
        "rrmse": lambda: _rrmse(e, r),
    }
    return {m.key: fast[m.key]() if m.key in fast else m.fn(estimate, reference) for m in METRICS}


# ----------------------------------------------------------------------------- torch
def _gauss_torch(window: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    import torch

    x = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype=like.dtype, device=like.device)


def ssim_torch_per_channel(
    pred: torch.Tensor, target: torch.Tensor, *, window: int = WINDOW, sigma: float = SIGMA
) -> torch.Tensor:
    """Differentiable mean SSIM per image and channel, (N, C), valid region, data range 1."""
    import torch.nn.functional as F

    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(
            f"expected two NCHW batches of one shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    n, c, h, w = pred.shape
    if min(h, w) < window:
        raise ValueError(f"SSIM needs at least {window} px a side, got {h} x {w}")
    k = _gauss_torch(window, sigma, pred)
    kv, kh = k.view(1, 1, -1, 1).expand(c, 1, -1, 1), k.view(1, 1, 1, -1).expand(c, 1, 1, -1)

    def f(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, kv, groups=c), kh, groups=c)

    mx, my = f(pred), f(target)
    vx = f(pred * pred) - mx * mx
    vy = f(target * target) - my * my
    cxy = f(pred * target) - mx * my
    c1, c2 = K1**2, K2**2
    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(2, 3))


def ssim_torch(
    pred: torch.Tensor, target: torch.Tensor, *, window: int = WINDOW, sigma: float = SIGMA
) -> torch.Tensor:
    """Mean SSIM over batch and channels (a 0-d tensor), differentiable."""
    return ssim_torch_per_channel(pred, target, window=window, sigma=sigma).mean()


def psnr_torch(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR of each image over all its pixels and channels (data range 1), averaged over
    the batch; a 0-d tensor."""
    import torch

    mse = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    return (10.0 * torch.log10(1.0 / mse)).mean()
