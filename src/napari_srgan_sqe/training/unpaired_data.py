"""Real LR for the 'unpaired' recipe: patches drawn from slides or images, by (seed, step).

The 'unpaired' recipe (Maeda 2020) needs patches of the LR it adapts to: a slide as
the scanner stored it, with no HR. `RealLRSampler` draws them from level 0 of slides
(`io.slides.open_slide`, read lazily) or from images (`training.data.load_rgb`),
inside optional rectangles (x, y, w, h), with `np.random.default_rng([seed, step,
REAL_STREAM])`: a batch is a pure function of (seed, step), so a resumed run sees
exactly the patches an uninterrupted one would. Patches that are mostly background
(near-white glass) are drawn again, a fixed number of times.

Small sources (up to `CACHE_MPX` megapixels in all) are read into memory once; larger
ones are read window by window. Adapting a model to a slide with them is
`training.adapt`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_srgan_sqe.config import RealLRSource
from napari_srgan_sqe.io.errors import DataError

__all__ = [
    "CACHE_MPX",
    "REAL_STREAM",
    "RealLRImage",
    "RealLRSampler",
    "background_fraction",
    "open_real_lr",
    "real_lr_image",
]

REAL_STREAM = 0x5EA1
"""Third seed word of the real-LR stream, so its draws differ from the HR sampler's."""
CACHE_MPX = 48.0
"""Regions up to this many megapixels (all sources together) are held in memory."""
WHITE_LEVEL = 215
"""A pixel whose three channels are all at least this bright is background (glass)."""
BACKGROUND_TRIES = 10
"""Draws of a patch before a mostly-background one is taken anyway."""
PLAIN_IMAGES = {".png", ".jpg", ".jpeg"}

Rect = tuple[int, int, int, int]


@dataclass
class RealLRImage:
    """One real-LR source: level 0 (numpy or a lazy dask array, (y, x, 3) uint8) and the
    rectangles (x, y, w, h) patches are drawn from (clipped to the image)."""

    level: Any
    regions: list[Rect]
    name: str


def background_fraction(patch: np.ndarray) -> float:
    """Fraction of near-white pixels of a (h, w, 3) uint8 patch."""
    return float((patch.min(axis=-1) >= WHITE_LEVEL).mean())


def _clip(rect: Sequence[int], shape: Sequence[int], name: str) -> Rect:
    x, y, w, h = (int(v) for v in rect)
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(int(shape[1]), x + w), min(int(shape[0]), y + h)
    if x1 <= x0 or y1 <= y0:
        raise DataError(
            f"{name}: region {(x, y, w, h)} lies outside the image ({shape[1]} x {shape[0]} px)"
        )
    return x0, y0, x1 - x0, y1 - y0


def real_lr_image(level: Any, regions: Sequence[Sequence[int]], name: str) -> RealLRImage:
    """A source from an array-like level 0 and rectangles (none: the whole image)."""
    shape = tuple(int(v) for v in level.shape)
    if len(shape) != 3 or shape[2] != 3:
        raise DataError(f"{name}: real LR must be RGB (y, x, 3), got shape {shape}")
    rects = [_clip(r, shape, name) for r in regions] or [(0, 0, shape[1], shape[0])]
    return RealLRImage(level, rects, name)


def open_real_lr(sources: Sequence[RealLRSource], base: Path | None = None) -> list[RealLRImage]:
    """Open the real-LR sources of a config: plain images (PNG, JPEG) with `load_rgb`, a
    folder as the PNG / JPEG images in it, everything else as a slide
    (`open_slide(path).levels[0]`, lazy). Relative paths are resolved against `base`
    (the config file's folder)."""
    from napari_srgan_sqe.io import _formats
    from napari_srgan_sqe.io.slides import SlideError, open_slide
    from napari_srgan_sqe.training.data import find_images, load_rgb, resolve_path

    out = []
    for src in sources:
        p = resolve_path(base, src.path)
        if not p.exists():
            raise DataError(f"real LR {p}: no such file or folder")
        if p.is_dir() and not _formats.looks_like_zarr(p) and not _formats.dicom_files(p):
            if src.regions:
                raise DataError(f"real LR {p}: regions apply to one image, not to a folder")
            files = [f for f in find_images([p]) if f.suffix.lower() in PLAIN_IMAGES]
            if not files:
                raise DataError(f"real LR {p}: the folder holds no PNG or JPEG images")
            out += [real_lr_image(load_rgb(f), [], f.name) for f in files]
            continue
        if p.suffix.lower() in PLAIN_IMAGES:
            level: Any = load_rgb(p)
        else:
            try:
                level = open_slide(p).levels[0]
            except SlideError as exc:
                raise DataError(f"real LR: {exc}") from None
        out.append(real_lr_image(level, src.regions, p.name))
    return out


class RealLRSampler:
    """Seeded batches of real-LR patches, float32 NCHW in [0, 1], random flips and
    90-degree rotations; every region is drawn in proportion to its area."""

    def __init__(
        self,
        images: Sequence[RealLRImage],
        *,
        patch_size: int,
        batch_size: int,
        seed: int = 0,
        augment: bool = True,
        max_background: float = 0.5,
    ) -> None:
        if not images:
            raise DataError("no real LR: give at least one slide or image to adapt to")
        self.patch_size, self.batch_size = int(patch_size), int(batch_size)
        self.seed, self.augment, self.max_background = int(seed), augment, max_background
        p = self.patch_size
        self._regions: list[tuple[int, Rect]] = []
        for i, im in enumerate(images):
            for r in im.regions:
                if r[2] < p or r[3] < p:
                    raise DataError(
                        f"{im.name}: region {r} is smaller than a real-LR patch ({p} x {p} px); "
                        "draw a larger one or choose a smaller real_patch_size"
                    )
                self._regions.append((i, r))
        self.images = list(images)
        areas = np.array([r[2] * r[3] for _, r in self._regions], np.float64)
        self._weights = areas / areas.sum()
        self._cache: dict[int, np.ndarray] = {}
        if areas.sum() <= CACHE_MPX * 1e6:
            for k, (i, (x, y, w, h)) in enumerate(self._regions):
                self._cache[k] = np.ascontiguousarray(
                    np.asarray(self.images[i].level[y : y + h, x : x + w]), np.uint8
                )

    @property
    def n_regions(self) -> int:
        return len(self._regions)

    def _window(self, k: int, y: int, x: int) -> np.ndarray:
        """The p x p window at (y, x) of region k (region coordinates)."""
        p = self.patch_size
        if k in self._cache:
            return self._cache[k][y : y + p, x : x + p]
        i, (rx, ry, _, _) = self._regions[k]
        win = self.images[i].level[ry + y : ry + y + p, rx + x : rx + x + p]
        return np.asarray(win, np.uint8)

    def _draw(self, step: int) -> list[tuple[tuple[int, int, int, int, int], np.ndarray]]:
        rng = np.random.default_rng([self.seed, step, REAL_STREAM])
        p, out = self.patch_size, []
        for _ in range(self.batch_size):
            for _attempt in range(BACKGROUND_TRIES):
                k = int(rng.choice(len(self._regions), p=self._weights))
                _, (_, _, w, h) = self._regions[k]
                y, x = int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))
                window = self._window(k, y, x)
                if background_fraction(window) <= self.max_background:
                    break
            rot = int(rng.integers(4)) if self.augment else 0
            flip = int(rng.random() < 0.5) if self.augment else 0
            out.append(((k, y, x, rot, flip), window))
        return out

    def origins(self, step: int) -> list[tuple[int, int, int, int, int]]:
        """(region index, y, x, rotation, flip) of each patch of the batch of `step`."""
        return [origin for origin, _ in self._draw(step)]

    def batch(self, step: int) -> np.ndarray:
        """The real-LR batch of global step `step` (deterministic), (N, 3, p, p) float32."""
        p = self.patch_size
        out = np.empty((self.batch_size, p, p, 3), np.float32)
        for n, ((_, _, _, rot, flip), window) in enumerate(self._draw(step)):
            patch = np.rot90(window, k=rot)
            out[n] = (patch[:, ::-1] if flip else patch).astype(np.float32) / 255.0
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))
