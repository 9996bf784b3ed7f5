"""The tile grid over one LR level, and halo reads with half-sample symmetric padding.

A tile is a `tile` x `tile` block of LR pixels (smaller on the bottom / right edge).
The network sees it with a `halo`-wide margin on every side: margin pixels inside the
slide are real neighbours, those past the border are the half-sample symmetric
extension (numpy "symmetric", d c b a | a b c d), exactly what the whole-image
reference pads with, so every tile's output equals the whole-image output (the
TENSOR CONTRACT in docs/architecture.md). A read touches only the source chunks
under the tile and its margin.

Also here: the input check shared by the engine (`as_rgb_uint8`) and the bicubic
fill of background tiles (`bicubic_region`), which is seamless for the same reason.

Tile size: 256 LR px on CPU, 512 on a GPU (`default_tile`). Larger tiles waste less
on the halo ((tile + 2 halo)^2 / tile^2: 1.32 at 256 and 1.15 at 512 for the light
model's halo of 19) but take longer before the first one shows; on a CPU a 256-px
tile of the light model is about one second, which keeps panning in napari usable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_srgan_sqe.io.errors import DataError, RegionError, check_unit_range

__all__ = [
    "BlockCache",
    "DataError",
    "TileMask",
    "as_rgb_uint8",
    "bicubic_preview",
    "bicubic_region",
    "check_region",
    "TileGrid",
    "default_tile",
    "halo_overhead",
    "read_region",
    "symmetric_indices",
    "whole_region",
]

CPU_TILE = 256
GPU_TILE = 512


def default_tile(device_name: str) -> int:
    """The default tile side in LR pixels for a device ('cpu', 'cuda:0', 'mps', ...)."""
    return CPU_TILE if str(device_name).startswith("cpu") else GPU_TILE


def halo_overhead(tile: int, halo: int) -> float:
    """Input pixels the network processes per output pixel, (tile + 2 halo)^2 / tile^2."""
    return (tile + 2 * halo) ** 2 / tile**2


TILE_RANGE = (8, 4096)
"""Allowed tile side in LR pixels, wherever tiles are made (the engine, export, bench)
and wherever a user picks one (`enhance --tile`, the Enhance widget): below 8 the halo
is most of each tile's work; a tile of 4096 already needs several GiB for the
network's activations, and beyond it memory runs out before the halo saving matters."""


@dataclass(frozen=True)
class TileGrid:
    """A regular grid of `tile` x `tile` tiles over an image of `height` x `width`."""

    height: int
    width: int
    tile: int

    def __post_init__(self) -> None:
        lo, hi = TILE_RANGE
        if not lo <= self.tile <= hi:
            raise DataError(f"tile must be {lo} to {hi} LR px, got {self.tile}")
        if self.height < 1 or self.width < 1:
            raise DataError(f"empty image ({self.height} x {self.width})")

    @property
    def ny(self) -> int:
        return -(-self.height // self.tile)

    @property
    def nx(self) -> int:
        return -(-self.width // self.tile)

    def __len__(self) -> int:
        return self.ny * self.nx

    def bounds(self, iy: int, ix: int) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of tile (iy, ix) in LR pixels, end exclusive."""
        if not (0 <= iy < self.ny and 0 <= ix < self.nx):
            raise IndexError(f"tile ({iy}, {ix}) outside a {self.ny} x {self.nx} grid")
        t = self.tile
        return iy * t, min((iy + 1) * t, self.height), ix * t, min((ix + 1) * t, self.width)

    def covering(self, y0: int, y1: int, x0: int, x1: int) -> Iterator[tuple[int, int]]:
        """The tiles (iy, ix) that intersect the LR region [y0, y1) x [x0, x1)."""
        y0, x0 = max(y0, 0), max(x0, 0)
        y1, x1 = min(y1, self.height), min(x1, self.width)
        if y1 <= y0 or x1 <= x0:
            return
        t = self.tile
        for iy in range(y0 // t, (y1 - 1) // t + 1):
            for ix in range(x0 // t, (x1 - 1) // t + 1):
                yield iy, ix


class TileMask:
    """`use_model(iy, ix)` from a per-tile boolean table (picklable, for workers)."""

    def __init__(self, table: Any) -> None:
        self.table = np.asarray(table, bool)

    def __call__(self, iy: int, ix: int) -> bool:
        return bool(self.table[iy, ix])


def symmetric_indices(start: int, stop: int, n: int) -> np.ndarray:
    """Source indices of positions start..stop-1 of a length-n axis extended by
    half-sample symmetric reflection (period 2n), as numpy's "symmetric" pad does."""
    idx = np.mod(np.arange(start, stop), 2 * n)
    return np.where(idx >= n, 2 * n - 1 - idx, idx)


class BlockCache:
    """A dask level read through an LRU of its computed chunks.

    Neighbouring tiles share the chunks under their halos; without this every tile
    would decode (or, for an LR simulated by `degrade_lazy`, blur) each of those
    chunks again, up to 9 times. Thread-safe; reads return numpy.
    """

    def __init__(self, level: Any, *, max_mb: float = 64) -> None:
        from napari_srgan_sqe.inference.cache import TileCache

        self.level = level
        self.shape, self.dtype, self.ndim = tuple(level.shape), level.dtype, level.ndim
        self._ys = np.cumsum((0, *level.chunks[0]))
        self._xs = np.cumsum((0, *level.chunks[1]))
        self.cache = TileCache(max_mb)

    def _block(self, i: int, j: int) -> np.ndarray:
        block = self.cache.get((i, j))
        if block is None:
            ys, xs = self._ys, self._xs
            block = self.level[ys[i] : ys[i + 1], xs[j] : xs[j + 1]].compute(scheduler="sync")
            block = np.asarray(block)
            self.cache.put((i, j), block)
        return block

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        (y0, y1, _), (x0, x1, _) = (k.indices(n) for k, n in zip(key, self.shape[:2]))
        i0, i1 = np.searchsorted(self._ys, [y0, y1 - 1], side="right") - 1
        j0, j1 = np.searchsorted(self._xs, [x0, x1 - 1], side="right") - 1
        out = np.empty((y1 - y0, x1 - x0, *self.shape[2:]), self.dtype)
        for i in range(i0, i1 + 1):
            for j in range(j0, j1 + 1):
                b = self._block(i, j)
                by0, bx0 = int(self._ys[i]), int(self._xs[j])
                sy0, sy1 = max(y0, by0), min(y1, by0 + b.shape[0])
                sx0, sx1 = max(x0, bx0), min(x1, bx0 + b.shape[1])
                out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = b[
                    sy0 - by0 : sy1 - by0, sx0 - bx0 : sx1 - bx0
                ]
        return out


def _read_box(level: Any, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """level[y0:y1, x0:x1] as numpy; a dask level is computed in this thread only."""
    box = level[y0:y1, x0:x1]
    if hasattr(box, "compute"):
        # Synchronous: we may already run inside a dask task (threaded or distributed).
        box = box.compute(scheduler="sync")
    return np.asarray(box)


def read_region(level: Any, y0: int, y1: int, x0: int, x1: int, *, halo: int = 0) -> np.ndarray:
    """The LR region [y0, y1) x [x0, x1) with a `halo` margin, (y1-y0+2h, x1-x0+2h, C).

    Pixels past the border come from half-sample symmetric extension; only the
    bounding box of the needed source pixels is read.
    """
    height, width = int(level.shape[0]), int(level.shape[1])
    iy = symmetric_indices(y0 - halo, y1 + halo, height)
    ix = symmetric_indices(x0 - halo, x1 + halo, width)
    ylo, yhi, xlo, xhi = int(iy.min()), int(iy.max()) + 1, int(ix.min()), int(ix.max()) + 1
    box = _read_box(level, ylo, yhi, xlo, xhi)
    iy, ix = iy - ylo, ix - xlo
    if iy[0] == 0 and iy[-1] == len(iy) - 1 and np.all(np.diff(iy) == 1):
        rows = box  # interior: no reflection needed on this axis
    else:
        rows = box[iy]
    if ix[0] == 0 and ix[-1] == len(ix) - 1 and np.all(np.diff(ix) == 1):
        return np.ascontiguousarray(rows)
    return np.ascontiguousarray(rows[:, ix])


def as_rgb_uint8(level: Any, *, what: str = "image") -> Any:
    """Check that `level` is RGB (H, W, 3); float data in [0, 1] becomes uint8, rounded."""
    if not hasattr(level, "shape") or not hasattr(level, "dtype"):
        raise DataError(
            f"{what} must be an RGB array of shape (H, W, 3) (numpy, dask or zarr), a list "
            f"of such levels or a Slide; got {type(level).__name__}"
        )
    shape = tuple(level.shape)
    if len(shape) != 3 or shape[2] != 3:
        if len(shape) == 2:
            kind = "grayscale (H, W)"
        elif len(shape) == 3:
            kind = f"{shape[-1]}-channel"
        else:
            kind = f"{len(shape)}-D"
        raise DataError(
            f"{what} must be RGB with shape (H, W, 3); got {kind} data of shape {shape}"
        )
    dtype = np.dtype(level.dtype)
    if dtype == np.uint8:
        return level
    if np.issubdtype(dtype, np.floating):

        def _to_uint8(x: np.ndarray) -> np.ndarray:
            check_unit_range(x, what)  # per chunk as it is read, for lazy input
            return np.clip(np.rint(np.asarray(x, np.float32) * 255.0), 0, 255).astype(np.uint8)

        if hasattr(level, "map_blocks"):
            return level.map_blocks(_to_uint8, dtype=np.uint8)
        return _to_uint8(level)
    hint = " (convert 16-bit data to 8-bit first)" if dtype.itemsize == 2 else ""
    raise DataError(f"{what} must be uint8 or float in [0, 1]; got {dtype}{hint}")


def whole_region(region: Any) -> tuple[int, int, int, int]:
    """(x, y, w, h) as ints; `RegionError` unless `region` is four whole numbers (10.5
    is refused, not truncated). Bounds are the caller's to check."""
    try:
        values = [] if isinstance(region, str) else [float(v) for v in region]
    except (TypeError, ValueError):
        values = []
    if len(values) != 4 or any(not v.is_integer() for v in values):
        raise RegionError(f"a region is x, y, w, h: four whole numbers of LR px, got {region!r}")
    x, y, w, h = (int(v) for v in values)
    return x, y, w, h


def check_region(region: Any, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(x, y, w, h) in LR level-0 px (`whole_region`), entirely inside an image of
    `shape` (y, x, ...); `RegionError` saying why not."""
    x, y, w, h = whole_region(region)
    height, width = int(shape[0]), int(shape[1])
    if w <= 0 or h <= 0:
        raise RegionError(f"region {x},{y},{w},{h} is empty (width and height must be > 0)")
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise RegionError(
            f"region x={x} y={y} w={w} h={h} is not inside the slide, which is "
            f"{width} x {height} px (width x height) at level 0"
        )
    return x, y, w, h


def bicubic_region(level: Any, y0: int, y1: int, x0: int, x1: int, *, scale: int) -> np.ndarray:
    """Bicubic up-sampling of an LR region (uint8), equal to the whole-image result."""
    from napari_srgan_sqe.models.blocks import Bicubic, bicubic_upscale

    m = Bicubic.halo * scale  # the margin read around the region, in HR px
    up = bicubic_upscale(read_region(level, y0, y1, x0, x1, halo=Bicubic.halo), scale)
    return np.ascontiguousarray(up[m:-m, m:-m])


def bicubic_preview(
    level: Any,
    y0: int,
    y1: int,
    x0: int,
    x1: int,
    *,
    scale: int,
    tint: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """A fast bicubic up-sampling of an LR region (uint8), for placeholders.

    torch's uint8 bicubic kernel (channels-last, about 10x faster than the float one
    `bicubic_region` uses): the same interpolation, rounded differently (on H&E about
    0.2 % of the values differ by more than 1 level), and seamless across regions for
    the same reason. `tint` (r, g, b, k) blends the colour in with weight 1 / 2^k:
    `v - (v >> k) + (c >> k)`, in uint8 without overflow.
    """
    import torch
    import torch.nn.functional as F

    from napari_srgan_sqe.models.blocks import Bicubic

    p, s = Bicubic.halo, int(scale)
    lr = read_region(level, y0, y1, x0, x1, halo=p)
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        y = F.interpolate(x, scale_factor=s, mode="bicubic", align_corners=False)
    # channels-last: (H, W, 3) in memory; crop the margin as a numpy view
    up = y[0].permute(1, 2, 0).numpy()[p * s : (y1 - y0 + p) * s, p * s : (x1 - x0 + p) * s]
    if tint is None:
        return np.ascontiguousarray(up)
    *rgb, k = tint
    out = up >> k
    np.subtract(up, out, out=out)
    out += np.asarray([c >> k for c in rgb], np.uint8)
    return out
