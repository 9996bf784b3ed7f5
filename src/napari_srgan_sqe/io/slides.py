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

import logging
import struct
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from napari_srgan_sqe.io import _formats
from napari_srgan_sqe.io._formats import (
    PLAIN_EXTENSIONS,
    SUPPORTED_EXTENSIONS,
    TIFF_EXTENSIONS,
    VENDOR_EXTENSIONS,
    extension,
)
from napari_srgan_sqe.io.codecs import SlideCoding, jpeg_quality

__all__ = [
    "DEFAULT_CHUNK",
    "SUPPORTED_EXTENSIONS",
    "Slide",
    "SlideCoding",
    "SlideError",
    "as_rgb8",
    "open_slide",
]


log = logging.getLogger(__name__)

DEFAULT_CHUNK = 512
"""Target chunk edge in pixels; rounded to a multiple of the file's tile size."""


class SlideError(Exception):
    """A slide or image that cannot be read; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(str(path), reason)  # args stay picklable (dask.distributed)
        self.path = Path(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot read {self.path}: {self.reason}"


@dataclass
class Slide:
    """A lazily read image pyramid.

    `levels` are dask arrays (y, x, 3) uint8, finest first; `downsamples[i]` is the
    size of level 0 over level i (1.0 for level 0); `mpp` is micrometres per pixel at
    level 0, or None when the file does not record it. `coding` is how level 0's
    pixels are stored (JPEG / JPEG 2000 and their quality, lossless, or unknown),
    read from the file's metadata and at most one tile's raw bytes.
    """

    levels: list[Any]
    mpp: float | None
    downsamples: list[float]
    path: Path
    format: str
    metadata: dict[str, Any] = field(default_factory=dict)
    coding: SlideCoding = field(default_factory=SlideCoding)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape (y, x, 3) of level 0."""
        return tuple(self.levels[0].shape)  # type: ignore[return-value]

    @property
    def codec(self) -> str:
        """'jpeg', 'jpeg2000', 'none' (lossless) or 'unknown'."""
        return self.coding.codec

    @property
    def quality(self) -> int | None:
        """JPEG's IJG quality or the scanner's stated JPEG 2000 quality; None if unknown."""
        return self.coding.quality


def open_slide(path: str | Path, *, chunk: int = DEFAULT_CHUNK) -> Slide:
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
            if _formats.dicom_files(p):
                from napari_srgan_sqe.io import _openslide_reader

                return _openslide_reader.open_dicom_folder(p, chunk=chunk)
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


# --- helpers shared by the readers -------------------------------------------------

HEAD_BYTES = 1 << 16
"""Bytes read from the start of a tile or JPEG file to find its quantisation tables."""


def coding_or_unknown(read: Callable[..., SlideCoding], *args: Any) -> SlideCoding:
    """`read(*args)`, or `SlideCoding()` (unknown) if it fails in any way: knowing the
    coding is a help, never a reason to refuse a slide."""
    try:
        coding = read(*args)
    except Exception:  # noqa: BLE001 - a file we can read pixels of still opens
        log.debug("could not tell the coding of %s", args, exc_info=True)
        return SlideCoding()
    return coding if isinstance(coding, SlideCoding) else SlideCoding()


def read_bytes(path: Path, offset: int, size: int) -> bytes:
    """At most `size` bytes of `path` from `offset` (its own handle: no shared state)."""
    with open(path, "rb") as f:
        f.seek(int(offset))
        return f.read(max(0, int(size)))


def plain_coding(path: Path, fmt: str) -> SlideCoding:
    """PNG: lossless; JPEG: its IJG quality from the quantisation tables in its header."""
    if fmt == "png":
        return SlideCoding("none", None, "PNG")
    if fmt in ("jpeg", "jpg", "mpo"):
        q = jpeg_quality(read_bytes(path, 0, 4 * HEAD_BYTES))
        return SlideCoding("jpeg", q, "quantisation tables" if q is not None else "")
    return SlideCoding()


def aligned_chunk(tile: int | None, target: int) -> int:
    """A multiple of `tile` close to `target` (the target itself for unknown tiles)."""
    if not tile or tile <= 0:
        return target
    return tile * max(1, round(target / tile))


def downsamples_of(shapes: list[tuple[int, ...]]) -> list[float]:
    """Level-0 size over level size, averaged over y and x (as OpenSlide does)."""
    h0, w0 = shapes[0][:2]
    return [((h0 / s[0]) + (w0 / s[1])) / 2.0 for s in shapes]


_HANDLES: weakref.WeakValueDictionary[tuple[Any, ...], Any] = weakref.WeakValueDictionary()
_HANDLES_LOCK = threading.Lock()


def shared_handle(kind: str, path: Path, opener: Callable[[Path], Any]) -> Any:
    """One open handle per file and process, shared by every chunk reader.

    Keyed by path, size and modification time, so a changed file is reopened; held
    weakly, so it closes when no dask graph refers to it any more.
    """
    st = path.stat()
    key = (kind, str(path), st.st_size, st.st_mtime_ns)
    with _HANDLES_LOCK:
        handle = _HANDLES.get(key)
        if handle is None:
            handle = opener(path)
            _HANDLES[key] = handle
    return handle


class LevelSource(ABC):
    """Array-like (shape, dtype, ndim, __getitem__) over one level, for `da.from_array`.

    Picklable: the handle is dropped and reopened by path in another process, so the
    dask graphs work with dask.distributed. Read errors become `SlideError`.
    """

    kind = "source"

    def __init__(self, path: Path, level: int, shape: tuple[int, ...], dtype: Any) -> None:
        self.path = path
        self.level = level
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self._handle: Any = None
        st = path.stat()
        self._stamp = (st.st_size, st.st_mtime_ns)

    @abstractmethod
    def _open(self, path: Path) -> Any:
        """Open the file; the handle is shared by every read of this process."""

    @abstractmethod
    def _read(self, handle: Any, key: tuple[slice, ...]) -> np.ndarray:
        """Read the pixels of `key` (a (y, x[, c]) tuple of slices) from the open handle."""

    @property
    def handle(self) -> Any:
        if self._handle is None:
            self._handle = shared_handle(self.kind, self.path, self._open)
        return self._handle

    def __getitem__(self, key: Any) -> np.ndarray:
        key = _normalise_key(key, self.shape)
        if any(s.stop <= s.start for s in key):
            return np.empty([max(0, s.stop - s.start) for s in key], self.dtype)
        try:
            return self._read(self.handle, key)
        except SlideError:
            raise
        except Exception as exc:
            where = ", ".join(f"{s.start}:{s.stop}" for s in key)
            raise SlideError(
                self.path, f"reading level {self.level} region [{where}] failed: {exc}"
            ) from exc

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"] = None
        return state

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (type(self).__name__, str(self.path), self._stamp, self.level, self.shape)

    def to_dask(self, chunks: tuple[Any, ...]) -> Any:
        """The level as a dask array with the given chunks (nothing read)."""
        from dask.base import tokenize

        name = f"{self.kind}-L{self.level}-{tokenize(self)}"
        return da.from_array(
            self,
            chunks=chunks,
            name=name,
            lock=False,
            fancy=False,
            asarray=False,
            meta=np.empty((0,) * self.ndim, self.dtype),
        )


def _normalise_key(key: Any, shape: tuple[int, ...]) -> tuple[slice, ...]:
    if not isinstance(key, tuple):
        key = (key,)
    key = key + (slice(None),) * (len(shape) - len(key))
    out = []
    for k, n in zip(key, shape):
        if not isinstance(k, slice) or k.step not in (None, 1):
            raise TypeError(f"only contiguous slices are supported, got {k!r}")
        start, stop, _ = k.indices(n)
        out.append(slice(start, max(start, stop)))
    return tuple(out)


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


# --- conversion rules ---------------------------------------------------------------


def check_convertible(path: Path, dtype: Any, channels: int) -> None:
    """Refuse, at open time, data that no conversion rule covers."""
    dtype = np.dtype(dtype)
    if not (dtype in (np.uint8, np.uint16, np.bool_) or dtype.kind == "f"):
        raise SlideError(
            path, f"pixel type {dtype} is not supported (uint8, uint16, bool or float in [0, 1])"
        )
    if channels not in (1, 3, 4):
        raise SlideError(
            path,
            f"{channels} channels per pixel: only RGB, RGBA and grayscale are supported",
        )


def to_rgb8(
    block: np.ndarray,
    *,
    path: Path | str = "<array>",
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Convert one (y, x, c) chunk to (y, x, 3) uint8 by the module's rules."""
    path = Path(path)
    if block.ndim == 2:
        block = block[..., None]
    if block.dtype == np.uint8:
        out = block
    elif block.dtype == np.uint16:
        out = ((2 * block.astype(np.uint32) + 257) // 514).astype(np.uint8)
    elif block.dtype == np.bool_:
        out = block.astype(np.uint8) * np.uint8(255)
    elif block.dtype.kind == "f":
        finite = np.isfinite(block).all()
        if not finite or (block.size and (block.min() < 0.0 or block.max() > 1.0)):
            lo, hi = (float(np.nanmin(block)), float(np.nanmax(block))) if block.size else (0, 0)
            raise SlideError(
                path,
                f"floating-point pixels must lie in [0, 1]; found values in [{lo:g}, {hi:g}]"
                + ("" if finite else " and NaN / infinity"),
            )
        out = np.rint(block * 255.0).astype(np.uint8)
    else:
        raise SlideError(path, f"pixel type {block.dtype} is not supported")
    c = out.shape[2]
    if c == 3:
        return out
    if c == 1:
        return np.repeat(out, 3, axis=2)
    if c == 4:
        return composite(out, background)
    raise SlideError(path, f"{c} channels per pixel cannot be shown as RGB")


def composite(rgba: np.ndarray, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Composite non-premultiplied RGBA uint8 over an opaque background, rounded."""
    alpha = rgba[..., 3:4].astype(np.uint32)
    if alpha.size and alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    bg = np.asarray(background, np.uint32)
    mixed = rgba[..., :3].astype(np.uint32) * alpha + bg * (255 - alpha)
    return ((mixed + 127) // 255).astype(np.uint8)


def as_rgb8(data: Any, *, path: Path | str = "<array>") -> Any:
    """A (y, x) or (y, x, c) numpy / dask array as a lazy (y, x, 3) uint8 dask array."""
    arr = (
        data
        if isinstance(data, da.Array)
        else da.from_array(data, chunks=(DEFAULT_CHUNK,) * 2 + (-1,) * (np.ndim(data) - 2))
    )
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise SlideError(path, f"expected a 2-D image (y, x) or (y, x, c), got shape {arr.shape}")
    check_convertible(Path(path), arr.dtype, arr.shape[2])
    if arr.dtype == np.uint8 and arr.shape[2] == 3:
        return arr
    arr = arr.rechunk({2: -1})
    return arr.map_blocks(
        to_rgb8,
        path=str(path),
        dtype=np.uint8,
        chunks=arr.chunks[:2] + ((3,),),
        meta=np.empty((0, 0, 0), np.uint8),
    )


def to_yxc(arr: Any, axes: str, *, path: Path) -> Any:
    """Squeeze size-1 axes and order the rest as (y, x, c); `axes` uses Y, X, C / S."""
    axes = axes.upper()
    if len(axes) != arr.ndim or "Y" not in axes or "X" not in axes:
        raise SlideError(path, f"cannot find the image plane in axes {axes!r} of shape {arr.shape}")
    index: list[Any] = []
    kept: list[str] = []
    for ax, n in zip(axes, arr.shape):
        if ax in "YX" or (ax in "CS" and n > 1):
            index.append(slice(None))
            kept.append(ax)
        elif n == 1:
            index.append(0)
        else:
            raise SlideError(
                path,
                f"{n} planes along axis {ax!r} (shape {arr.shape}, axes {axes!r}): "
                "only single 2-D images are supported",
            )
    if sum(ax in "CS" for ax in kept) > 1:
        raise SlideError(path, f"more than one channel axis in {axes!r} (shape {arr.shape})")
    arr = arr[tuple(index)]
    order = [kept.index("Y"), kept.index("X")] + [i for i, ax in enumerate(kept) if ax in "CS"]
    arr = arr.transpose(order)
    return arr if arr.ndim == 3 else arr[..., None]


# --- plain images (PNG, JPEG) -------------------------------------------------------


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
            im = im.convert("RGB")  # L, P, 1, CMYK, YCbCr
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


def tiff_header_problem(path: Path) -> str | None:
    """Why a TIFF-based file looks truncated (first directory past the end), or None."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        order = "<" if head[:2] == b"II" else ">"
        offset = struct.unpack(order + "I", head[4:8])[0] if len(head) >= 8 else size
    elif head[:4] in (b"II+\x00", b"MM\x00+"):
        order = "<" if head[:2] == b"II" else ">"
        offset = struct.unpack(order + "Q", head[8:16])[0] if len(head) >= 16 else size
    else:
        return None
    if offset >= size:
        return (
            f"the file is truncated or corrupt: its TIFF header points to byte {offset}, "
            f"but the file has only {size} bytes"
        )
    return None
