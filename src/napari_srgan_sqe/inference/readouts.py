"""Quality readouts of a region of a super-resolved image: the Compare widget's numbers.

A readout compares a crop of SR level 0 (the HR pixel grid; `CropBox`, corners
multiples of the scale) with HR, and plain bicubic enlargement of the LR with HR as
the baseline (`SR_VS_HR`, `BICUBIC_VS_HR`, and their `gain`); with no HR, SR shrunk
back with the reference degradation D_s against the LR (`CONSISTENCY`).
`compute_readouts` yields one `ReadoutColumn` per comparison from level-0 arrays
(numpy, dask, zarr) and touches no viewer, so it runs in a worker thread, in the CLI
or in a test. The rows are `napari_srgan_sqe.metrics.METRICS`.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_srgan_sqe.metrics import METRICS as METRIC_TABLE
from napari_srgan_sqe.metrics import metric_gain

__all__ = [
    "BICUBIC_VS_HR",
    "CONSISTENCY",
    "CONSISTENCY_METRICS",
    "METRICS",
    "METRIC_TIPS",
    "SR_VS_HR",
    "CropBox",
    "Readout",
    "ReadoutColumn",
    "compute_readouts",
    "crop_margins",
    "gain",
    "read_crop",
]

METRICS = tuple((m.key, m.label) for m in METRIC_TABLE)
"""(key, row label) of a readout's rows: `napari_srgan_sqe.metrics.METRICS`."""
METRIC_TIPS = {m.key: m.tip for m in METRIC_TABLE}
SR_VS_HR, BICUBIC_VS_HR, CONSISTENCY = "SR vs HR", "bicubic vs HR", "D_s(SR) vs LR"
"""Readout column names (`Readout.columns` keys)."""
CONSISTENCY_METRICS = ("psnr", "ssim")
"""The metrics of the consistency column (the others are None there)."""


@dataclass(frozen=True)
class CropBox:
    """A crop [y0, y1) x [x0, x1) of the SR level-0 (HR) grid, corners multiples of `scale`.

    `capped` says the view was larger than the crop (the crop is its centre).
    """

    y0: int
    y1: int
    x0: int
    x1: int
    scale: int
    capped: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def lr(self) -> tuple[int, int, int, int]:
        """The same region on the LR level-0 grid: (y0, y1, x0, x1)."""
        s = self.scale
        return self.y0 // s, self.y1 // s, self.x0 // s, self.x1 // s


def read_crop(
    level: Any, y0: int, y1: int, x0: int, x1: int, *, margin: int = 0
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """`level[y0:y1, x0:x1]` as numpy, with up to `margin` px more on each side.

    Returns the array and the margins actually read (top, bottom, left, right), which
    are smaller at the image border. Any array-like (numpy, dask, zarr) works.
    """
    h, w = level.shape[:2]
    ty, by = min(margin, y0), min(margin, h - y1)
    lx, rx = min(margin, x0), min(margin, w - x1)
    region = level[y0 - ty : y1 + by, x0 - lx : x1 + rx]
    region = region.compute() if hasattr(region, "compute") else region
    return np.asarray(region), (ty, by, lx, rx)


def crop_margins(img: np.ndarray, margins: Sequence[int], factor: int = 1) -> np.ndarray:
    """Remove `margins` (top, bottom, left, right) x `factor` px from `img`."""
    t, b, left, r = (int(m) * factor for m in margins)
    return img[t : img.shape[0] - b, left : img.shape[1] - r]


@dataclass(frozen=True)
class ReadoutColumn:
    """One comparison's metrics (None where a metric does not apply)."""

    generation: int
    name: str
    values: dict[str, float | None]


@dataclass
class Readout:
    """The latest complete readout: where (the crop box) and every column."""

    generation: int
    box: CropBox
    columns: dict[str, dict[str, float | None]] = field(default_factory=dict)


def compute_readouts(
    generation: int, box: CropBox, sr0: Any, lr0: Any = None, hr0: Any = None
) -> Generator[ReadoutColumn, None, None]:
    """Metrics of the crop `box` of SR level 0 against HR (and bicubic as the baseline).

    With no HR, yields the consistency of D_s(SR) with LR (PSNR, SSIM). Arrays are
    level-0 numpy / dask arrays; nothing here touches the viewer (worker thread).
    """
    from napari_srgan_sqe.degradation import degrade
    from napari_srgan_sqe.metrics import all_metrics, psnr, ssim

    s, (y0, y1, x0, x1) = box.scale, (box.y0, box.y1, box.x0, box.x1)
    if hr0 is not None:
        hr, _ = read_crop(hr0, y0, y1, x0, x1)
        sr, _ = read_crop(sr0, y0, y1, x0, x1)
        yield ReadoutColumn(generation, SR_VS_HR, all_metrics(sr, hr))
        if lr0 is not None:
            from napari_srgan_sqe.models.blocks import bicubic_upscale

            lr, margins = read_crop(lr0, *box.lr, margin=2)  # bicubic support
            bicubic = crop_margins(bicubic_upscale(lr, s), margins, s)
            yield ReadoutColumn(generation, BICUBIC_VS_HR, all_metrics(bicubic, hr))
    elif lr0 is not None:
        # margin of 2 LR px covers the blur of D_s (radius 2s - 2 HR px), so the crop's
        # D_s equals that of the whole SR image (symmetric padding at the image border)
        sr, margins = read_crop(sr0, y0, y1, x0, x1, margin=2 * s)
        down = crop_margins(degrade(sr, s), [m // s for m in margins])
        lr, _ = read_crop(lr0, *box.lr)
        values = dict.fromkeys(k for k, _ in METRICS)
        values.update(psnr=psnr(down, lr), ssim=ssim(down, lr))
        yield ReadoutColumn(generation, CONSISTENCY, values)


def gain(sr: dict | None, base: dict | None) -> dict[str, float | None] | None:
    """SR minus baseline, signed so that positive is better (RRMSE: baseline minus SR)."""
    if sr is None or base is None:
        return None
    return {key: metric_gain(key, sr.get(key), base.get(key)) for key, _ in METRICS}
