"""Regions for fine-tuning: checking and cutting rectangles, the held-out stripes, batches.

A region is a rectangle in LR level-0 pixels. Each is split into a training part (left)
and a validation stripe (right, `FinetuneConfig.val_fraction`) that is never trained
on. Batches are a pure function of (seed, step), so runs repeat exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from napari_srgan_sqe.config import FinetuneConfig
from napari_srgan_sqe.degradation import degrade_with
from napari_srgan_sqe.io.errors import RegionError

__all__ = [
    "Mode",
    "Rect",
    "RegionData",
    "check_regions",
    "cut_regions",
    "input_patch",
    "min_region_size",
    "prepare",
    "sample_batch",
    "train_width",
]

Mode = Literal["paired", "self-supervised"]


class Rect(NamedTuple):
    """A rectangle in LR level-0 pixels: left x, top y, width, height."""

    x: int
    y: int
    w: int
    h: int


# ----------------------------------------------------------------------------- regions
def min_region_size(mode: Mode, cfg: FinetuneConfig, scale: int) -> tuple[int, int]:
    """Smallest (width, height) in LR px a region needs: one patch plus the stripe."""
    p_in, v_min = input_patch(mode, cfg, scale), _min_stripe(mode, scale)
    w = p_in + 1
    while w - _stripe_width(w, cfg.val_fraction, v_min) < p_in:
        w += 1
    return w, max(p_in, v_min)


def check_regions(
    rects: Sequence[Sequence[int]],
    image_shape: Sequence[int],
    *,
    mode: Mode,
    scale: int,
    config: FinetuneConfig | None = None,
) -> list[Rect]:
    """Validate rectangles (x, y, w, h) against an LR image (H, W, ...); RegionError if bad."""
    cfg = config or FinetuneConfig()
    if not rects:
        raise RegionError("no regions: draw at least one rectangle on the image")
    height, width = int(image_shape[0]), int(image_shape[1])
    min_w, min_h = min_region_size(mode, cfg, scale)
    out = []
    for i, r in enumerate(rects, 1):
        x, y, w, h = (int(round(v)) for v in r)
        where = f"region {i} (x={x}, y={y}, w={w}, h={h})"
        if w <= 0 or h <= 0:
            raise RegionError(f"{where} is empty")
        if x < 0 or y < 0 or x + w > width or y + h > height:
            raise RegionError(f"{where} lies (partly) outside the image of {width} x {height} px")
        if w < min_w or h < min_h:
            raise RegionError(
                f"{where} is smaller than a patch: {mode} fine-tuning with patch_size "
                f"{cfg.patch_size} and val_fraction {cfg.val_fraction} needs at least "
                f"{min_w} x {min_h} LR px"
            )
        out.append(Rect(x, y, w, h))
    return out


def cut_regions(
    lr: Any,
    rects: Sequence[Sequence[int]],
    *,
    hr: Any = None,
    scale: int = 4,
    config: FinetuneConfig | None = None,
) -> list[np.ndarray] | list[tuple[np.ndarray, np.ndarray]]:
    """Read the regions from a Slide or an (H, W, 3) array (numpy / dask), after checking.

    Rectangles are in LR level-0 px. With `hr` (a Slide or array whose level 0 is
    `scale` x the LR), returns (lr, hr) pairs for paired mode; else LR regions.
    """
    lr_level = _level0(lr)
    mode: Mode = "paired" if hr is not None else "self-supervised"
    checked = check_regions(rects, lr_level.shape, mode=mode, scale=scale, config=config)
    hr_level = None
    if hr is not None:
        hr_level = _level0(hr)
        if tuple(d // scale for d in hr_level.shape[:2]) != tuple(lr_level.shape[:2]):
            raise RegionError(
                f"the HR image is {hr_level.shape[1]} x {hr_level.shape[0]} px, but {scale} x the "
                f"LR image ({lr_level.shape[1]} x {lr_level.shape[0]}) was expected"
            )
    out: list = []
    for x, y, w, h in checked:
        lr_reg = _rgb8(np.asarray(lr_level[y : y + h, x : x + w]))
        if hr_level is None:
            out.append(lr_reg)
        else:
            s = scale
            out.append(
                (lr_reg, _rgb8(np.asarray(hr_level[s * y : s * (y + h), s * x : s * (x + w)])))
            )
    if hr_level is not None and all(_grey(p[1]) for p in out) and not all(_grey(p[0]) for p in out):
        raise RegionError(
            "the HR image is greyscale but the LR image is in colour: a model trained on "
            "this pair would turn colour into grey; give the HR scan in colour"
        )
    return out


def _grey(a: np.ndarray) -> bool:
    """True when the three channels of an RGB region are equal (a greyscale image)."""
    return bool(np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2]))


def _level0(src: Any) -> Any:
    levels = getattr(src, "levels", None)
    arr = levels[0] if levels is not None else src
    if getattr(arr, "ndim", 0) != 3 or arr.shape[2] != 3:
        raise RegionError(
            f"expected an RGB image (H, W, 3), got shape {getattr(arr, 'shape', None)}"
        )
    return arr


def _rgb8(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise RegionError(f"regions must be uint8 or float in [0, 1], got {a.dtype}")
        a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise RegionError(f"a region must be an RGB image (H, W, 3), got shape {a.shape}")
    return np.ascontiguousarray(a)


def input_patch(mode: Mode, cfg: FinetuneConfig, scale: int) -> int:
    """Side, in LR region px, of one training patch."""
    return cfg.patch_size // scale if mode == "paired" else cfg.patch_size


def _min_stripe(mode: Mode, scale: int) -> int:
    """Narrowest useful validation stripe (LR px): 4 model-input px."""
    return 4 if mode == "paired" else 4 * scale


def _stripe_width(w: int, fraction: float, v_min: int) -> int:
    return max(v_min, int(round(w * fraction)))


def train_width(w: int, mode: Mode, cfg: FinetuneConfig, scale: int) -> int:
    """Width (LR px) of the trained left part of a region `w` wide; the rest validates."""
    return w - _stripe_width(w, cfg.val_fraction, _min_stripe(mode, scale))


# ----------------------------------------------------------------------------- data
@dataclass
class RegionData:
    """Training sources (float32 HWC) and validation (input, target uint8) pairs."""

    inputs: list[np.ndarray]
    targets: list[np.ndarray | None]
    val: list[tuple[np.ndarray, np.ndarray]]
    weights: np.ndarray


def prepare(
    regions: Sequence[Any], hr: Sequence[Any] | None, mode: Mode, cfg: FinetuneConfig, s: int
) -> RegionData:
    """Split every region into a training part and a held-out right stripe."""
    if mode not in ("paired", "self-supervised"):
        raise ValueError(f"mode must be 'paired' or 'self-supervised', got {mode!r}")
    if cfg.patch_size % s:
        raise RegionError(f"patch_size {cfg.patch_size} is not a multiple of the scale {s}")
    regions = list(regions)
    if hr is not None:
        if len(hr) != len(regions):
            raise RegionError(f"{len(regions)} LR regions but {len(hr)} HR regions")
        regions = list(zip(regions, hr, strict=True))
    if not regions:
        raise RegionError("no regions to fine-tune on")
    p_in = input_patch(mode, cfg, s)
    min_w, min_h = min_region_size(mode, cfg, s)
    data = RegionData([], [], [], np.zeros(len(regions)))
    for i, item in enumerate(regions):
        lr_img, hr_img = _split_item(item, mode, s, i, cfg)
        h, w = lr_img.shape[:2]
        if w < min_w or h < min_h:
            raise RegionError(
                f"region {i + 1} is {w} x {h} LR px, smaller than a patch: {mode} fine-tuning "
                f"with patch_size {cfg.patch_size} needs at least {min_w} x {min_h}"
            )
        tw = train_width(w, mode, cfg, s)
        data.inputs.append(lr_img[:, :tw].astype(np.float32) / 255.0)
        if mode == "paired":
            assert hr_img is not None, "a paired region always has its HR"
            data.targets.append(hr_img[:, : s * tw].astype(np.float32) / 255.0)
            data.val.append((lr_img[:, tw:].astype(np.float32) / 255.0, hr_img[:, s * tw :]))
        else:
            data.targets.append(None)
            stripe = lr_img[: h - h % s, tw : w - (w - tw) % s]
            pseudo = degrade_with(stripe, cfg.degradation, s, seed=[cfg.seed, i])
            data.val.append((pseudo.astype(np.float32) / 255.0, stripe))
        data.weights[i] = (h - p_in + 1) * (tw - p_in + 1)
    data.weights /= data.weights.sum()
    return data


def _split_item(
    item: Any, mode: Mode, s: int, i: int, cfg: FinetuneConfig
) -> tuple[np.ndarray, np.ndarray | None]:
    """(LR uint8, HR uint8 or None) of one region; the preset's LR of HR when LR is None."""
    if mode == "self-supervised":
        if isinstance(item, tuple | list):
            raise RegionError("self-supervised mode takes LR regions, not (LR, HR) pairs")
        return _rgb8(np.asarray(item)), None
    if not isinstance(item, tuple | list) or len(item) != 2:
        raise RegionError("paired mode needs (lr, hr) pairs, or LR regions with hr=[...]")
    hr_img = _rgb8(np.asarray(item[1]))
    hr_img = hr_img[
        : hr_img.shape[0] - hr_img.shape[0] % s, : hr_img.shape[1] - hr_img.shape[1] % s
    ]
    if item[0] is None:
        return degrade_with(hr_img, cfg.degradation, s, seed=[cfg.seed, i]), hr_img
    lr_img = _rgb8(np.asarray(item[0]))
    if lr_img.shape[:2] != (hr_img.shape[0] // s, hr_img.shape[1] // s):
        raise RegionError(
            f"region {i + 1}: HR {hr_img.shape[1]} x {hr_img.shape[0]} is not {s} x its LR "
            f"{lr_img.shape[1]} x {lr_img.shape[0]}"
        )
    return lr_img, hr_img


def sample_batch(
    data: RegionData, mode: Mode, cfg: FinetuneConfig, s: int, step: int
) -> tuple[np.ndarray, np.ndarray]:
    """(input, target) float32 NCHW for `step`; pure function of (seed, step)."""
    rng = np.random.default_rng([cfg.seed, step])
    p = input_patch(mode, cfg, s)
    ins, outs = [], []
    for _ in range(cfg.batch_size):
        i = int(rng.choice(len(data.inputs), p=data.weights))
        src = data.inputs[i]
        y, x = int(rng.integers(src.shape[0] - p + 1)), int(rng.integers(src.shape[1] - p + 1))
        k, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
        a = _augment(src[y : y + p, x : x + p], k, flip)
        t = data.targets[i]
        b = a if t is None else _augment(t[s * y : s * (y + p), s * x : s * (x + p)], k, flip)
        ins.append(a)
        outs.append(b)
    return np.stack(ins).transpose(0, 3, 1, 2).copy(), np.stack(outs).transpose(0, 3, 1, 2).copy()


def _augment(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    a = np.rot90(a, k)
    return a[:, ::-1] if flip else a
