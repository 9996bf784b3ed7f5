"""Open whole-slide and plain images lazily as a pyramid of (y, x, 3) uint8 dask arrays.

`open_slide` reads only metadata; pixels are read chunk by chunk when a level is
sliced and computed. Chunks are aligned with the file's tiles (a multiple of the tile
size near `chunk` pixels), so one chunk never decodes a tile twice.

Conversion rules, applied lazily per chunk (docs/formats.md):
- RGB uint8 is passed through unchanged;
- RGBA (and grey + alpha, palette + transparency in PNG) is composited on white
  (on the slide's background colour for OpenSlide formats, as OpenSlide recommends);
- grayscale (one channel) is replicated to three channels;
- uint16 becomes uint8 by value / 257, rounded (65535 -> 255); bool becomes 0 / 255;
- float is accepted only in [0, 1] and becomes value * 255, rounded; a chunk with
  values outside [0, 1] (or NaN) raises `SlideError` when it is read, because checking
  the whole image at open time would read it all;
- anything else (2 channels, more than 4, other integer types, CMYK, palette TIFF,
  stacks with more than one plane along z / t) is refused with `SlideError` at open.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_srgan_sqe.io import _formats
from napari_srgan_sqe.io._formats import (
    PLAIN_EXTENSIONS,
    SUPPORTED_EXTENSIONS,
    TIFF_EXTENSIONS,
    VENDOR_EXTENSIONS,
    extension,
)

# The shared base lives in `_slide` (which the readers import, so that they never
# import this module and `open_slide` can import them); re-exported here, the public
# module, under the same names as before.
from napari_srgan_sqe.io._slide import (  # noqa: F401
    DEFAULT_CHUNK,
    HEAD_BYTES,
    LevelSource,
    Slide,
    SlideError,
    aligned_chunk,
    as_rgb8,
    check_convertible,
    coding_or_unknown,
    composite,
    content_digest,
    downsamples_of,
    read_bytes,
    shared_handle,
    tiff_header_problem,
    to_rgb8,
    to_yxc,
)
from napari_srgan_sqe.io.codecs import SlideCoding, jpeg_quality

__all__ = [
    "DEFAULT_CHUNK",
    "SUPPORTED_EXTENSIONS",
    "Slide",
    "SlideCoding",
    "SlideError",
    "as_rgb8",
    "content_digest",
    "open_slide",
]


def open_slide(path: str | os.PathLike[str], *, chunk: int = DEFAULT_CHUNK) -> Slide:
    """Open a slide or image without reading pixels; raise `SlideError` if it cannot.

    Vendor formats and DICOM WSI (a `.dcm` file or a folder of them) go through
    OpenSlide, TIFF / OME-TIFF through tifffile's zarr store, OME-Zarr through zarr,
    PNG / JPEG through Pillow (one chunk).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise SlideError(p, "no such file or directory")
    try:
        if p.is_dir():
            if _formats.looks_like_zarr(p):
                from napari_srgan_sqe.io import _zarr_reader

                return _zarr_reader.open_ome_zarr(p, chunk=chunk)
            files = _formats.dicom_files(p)
            if files:
                from napari_srgan_sqe.io import _openslide_reader

                return _openslide_reader.open_dicom_folder(p, chunk=chunk, files=files)
            raise SlideError(
                p,
                "a directory that is not an OME-Zarr image or a DICOM slide (no zarr "
                "metadata, no DICOM files in it)",
            )
        ext = extension(p)
        if ext not in SUPPORTED_EXTENSIONS:
            supported = " ".join(sorted(SUPPORTED_EXTENSIONS))
            raise SlideError(
                p, f"unsupported file type {ext or '(none)'!r}; supported: {supported}"
            )
        if p.stat().st_size == 0:
            raise SlideError(p, "the file is empty (0 bytes)")
        if ext in VENDOR_EXTENSIONS:
            from napari_srgan_sqe.io import _openslide_reader

            return _openslide_reader.open_vendor(p, chunk=chunk)
        if ext in TIFF_EXTENSIONS:
            from napari_srgan_sqe.io import _tiff_reader

            return _tiff_reader.open_tiff(p, chunk=chunk)
        if ext in PLAIN_EXTENSIONS:
            return _open_plain(p)
        if ext in _formats.ZARR_EXTENSIONS:
            raise SlideError(p, "an OME-Zarr must be a directory")
    except SlideError:
        raise
    except Exception as exc:  # a library error becomes one clear message
        raise SlideError(p, f"{type(exc).__name__}: {exc}") from exc
    raise SlideError(p, "unsupported file type")  # pragma: no cover


# --- plain images (PNG, JPEG) -------------------------------------------------------


def plain_coding(path: Path, fmt: str) -> SlideCoding:
    """PNG: lossless; JPEG: its IJG quality from the quantisation tables in its header."""
    if fmt == "png":
        return SlideCoding("none", None, "PNG")
    if fmt in ("jpeg", "jpg", "mpo"):
        q = jpeg_quality(read_bytes(path, 0, 4 * HEAD_BYTES))
        return SlideCoding("jpeg", q, "quantisation tables" if q is not None else "")
    return SlideCoding()


class _ImageFile(LevelSource):
    """A PNG or JPEG file read whole as one chunk (these formats cannot be read by tile)."""

    kind = "image"

    def _open(self, path: Path) -> np.ndarray:
        # PNG / JPEG cannot be decoded by region: decode once per process and share the
        # pixels, so tiles and halos do not decode the whole file again each time.
        return read_plain_image(path)

    def _read(self, handle: Any, key: tuple[slice, ...]) -> np.ndarray:
        return handle[key]


def _png_bit_depth(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(26)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 26:
        return head[24]
    return 8


def read_plain_image(path: Path) -> np.ndarray:
    """Decode a PNG / JPEG to (y, x, 3) uint8 by the conversion rules."""
    from PIL import Image

    if extension(path) == ".png" and _png_bit_depth(path) == 16:
        import imagecodecs  # Pillow reduces 16-bit RGB to 8 bits by truncation

        return to_rgb8(imagecodecs.png_decode(path.read_bytes()), path=path)
    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16L", "I;16B", "I"):
            arr = np.asarray(im)
            if arr.dtype != np.uint16:
                if arr.size and (arr.min() < 0 or arr.max() > 65535):
                    raise SlideError(path, "32-bit integer pixels are not supported")
                arr = arr.astype(np.uint16)
            return to_rgb8(arr, path=path)
        if im.mode == "F":
            return to_rgb8(np.asarray(im), path=path)
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            return composite(np.asarray(im.convert("RGBA")))
        if im.mode != "RGB":
            return np.asarray(im.convert("RGB"))  # L, P, 1, CMYK, YCbCr
        return np.asarray(im)


def _open_plain(path: Path) -> Slide:
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
            fmt = (im.format or extension(path).lstrip(".")).lower()
            icc = im.info.get("icc_profile") or None
    except Image.DecompressionBombError as exc:
        raise SlideError(
            path, f"{exc}; convert it to a tiled TIFF or OME-Zarr to read it in chunks"
        ) from exc
    except OSError as exc:  # Pillow: "cannot identify image file" and friends
        raise SlideError(
            path, f"not a readable {extension(path)[1:].upper()} image ({exc})"
        ) from exc
    src = _ImageFile(path, 0, (height, width, 3), np.uint8)
    level = src.to_dask(((height,), (width,), (3,)))
    coding = coding_or_unknown(plain_coding, path, fmt)
    metadata = {"reader": "pillow", "icc_profile": bytes(icc) if icc else None}
    return Slide([level], None, [1.0], path, fmt, metadata, coding)


# --- display pyramid -----------------------------------------------------------------

DISPLAY_MAX_SIDE = 4096
"""A viewer loads the whole coarsest level of an image when zoomed out: when the
coarsest level of a slide has a side longer than this, `display_levels` adds levels."""

DISPLAY_SMALLEST = 512
"""`display_levels` adds levels until the coarsest has no side longer than this."""


def display_levels(
    levels: list[Any],
    *,
    max_side: int = DISPLAY_MAX_SIDE,
    smallest: int = DISPLAY_SMALLEST,
    chunk: int = DEFAULT_CHUNK,
) -> list[Any]:
    """`levels` (y, x, 3) uint8 dask arrays, finest first, extended for display.

    If the coarsest level has a side longer than `max_side`, lazily computed levels are
    appended, each the block mean (rounded) of the coarsest given level over 2 x 2,
    4 x 4, ... pixels, until the coarsest has no side longer than `smallest`. Each
    chunk of a new level is reduced from whole chunks of the source level one at a
    time, so computing even the smallest level reads the source chunk by chunk, never
    all at once. Nothing is read here. `Slide.levels` stay the file's own levels.
    """
    levels = list(levels)
    base = levels[-1]
    if max(base.shape[:2]) <= max_side:
        return levels
    factor = 2
    while min(base.shape[:2]) // factor >= 1:
        level = block_mean(base, factor, chunk=chunk)
        levels.append(level)
        if max(level.shape[:2]) <= smallest:
            break
        factor *= 2
    return levels


def _mean_block(block: np.ndarray, factor: int) -> np.ndarray:
    h, w = block.shape[0] // factor, block.shape[1] // factor
    view = block.reshape(h, factor, w, factor, block.shape[2])
    n = factor * factor
    total = view.sum(axis=(1, 3), dtype=np.uint32 if n <= 1 << 16 else np.uint64)
    return ((total + n // 2) // n).astype(np.uint8)


def block_mean(arr: Any, factor: int, *, chunk: int = DEFAULT_CHUNK) -> Any:
    """A (y, x, 3) uint8 dask array reduced by the rounded mean of `factor` x `factor`
    blocks (the remainder rows and columns dropped), lazily, in `chunk`-pixel chunks."""
    h, w = (arr.shape[0] // factor) * factor, (arr.shape[1] // factor) * factor
    arr = arr[:h, :w]

    def multiple(chunks: tuple[int, ...]) -> int:
        c = max(chunks)
        return c if c % factor == 0 else factor * max(1, round(c / factor))

    arr = arr.rechunk((multiple(arr.chunks[0]), multiple(arr.chunks[1]), -1))
    out = arr.map_blocks(
        _mean_block,
        factor,
        dtype=np.uint8,
        chunks=tuple(tuple(c // factor for c in cs) for cs in arr.chunks[:2]) + (arr.chunks[2],),
        meta=np.empty((0, 0, 0), np.uint8),
    )
    return out.rechunk((chunk, chunk, -1))
