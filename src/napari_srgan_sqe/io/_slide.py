"""The base that `open_slide` and the format readers share: `Slide`, `SlideError`,
`LevelSource` (a lazily read level), the conversion rules to (y, x, 3) uint8 (listed in
`napari_srgan_sqe.io.slides`) and the small helpers every reader uses.

The readers (`_tiff_reader`, `_openslide_reader`, `_zarr_reader`) import from here and
`slides` imports the readers, so this module must import no reader and not `slides`
(an import-linter contract in pyproject.toml checks it). The public names are
re-exported by `napari_srgan_sqe.io.slides`; import them from there.
"""

from __future__ import annotations

import logging
import os
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

from napari_srgan_sqe.errors import UserFacingError
from napari_srgan_sqe.io.codecs import SlideCoding

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 512
"""Target chunk edge in pixels; rounded to a multiple of the file's tile size."""

MAX_SEGMENT_BYTES = 256 * 2**20
"""Largest decoded size of one stored piece (TIFF tile or strip, zarr chunk) that is
read: 256 MiB, a 9000 x 9000 RGB strip. Reading any pixel of a piece decodes all of
it, so a file with larger ones (a "tile bomb": one 16384 x 16384 zlib tile is 0.8 MB
on disk and 768 MiB decoded) is refused at open, before anything is decoded. With it
a read of a region decodes at most the pieces the region touches, each under this
budget."""


class SlideError(UserFacingError):
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
    read from the file's metadata and at most one tile's raw bytes. `origin` (y, x) is
    where the centre of level-0 pixel (0, 0) lies: in um when `mpp` is known, else in
    level-0 pixels; (0, 0) unless the file places the image (an NGFF translation, an
    OME-TIFF plane position: what this plugin's exports of a region record), so that
    pixel (i, j) lies at `origin + (i, j) * mpp`, as napari's `translate` has it.
    """

    levels: list[Any]
    mpp: float | None
    downsamples: list[float]
    path: Path
    format: str
    metadata: dict[str, Any] = field(default_factory=dict)
    coding: SlideCoding = field(default_factory=SlideCoding)
    origin: tuple[float, float] = (0.0, 0.0)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape (y, x, 3) of level 0."""
        return tuple(self.levels[0].shape)

    def __repr__(self) -> str:  # the vendor metadata (hundreds of keys) stay in .metadata
        h, w = self.shape[:2]
        mpp = f"{self.mpp:.4g} um/px" if self.mpp else "pixel size unknown"
        at = ""
        if any(self.origin):
            unit = "um" if self.mpp else "px"
            at = f", at (y, x) = ({self.origin[0]:.6g}, {self.origin[1]:.6g}) {unit}"
        return (
            f"Slide({self.path.name!r}, {self.format}, {w} x {h} px, {len(self.levels)} "
            f"level(s), {mpp}{at}, {self.coding})"
        )

    def close(self) -> None:
        """Close the file handles this process holds for the slide (TIFF, OpenSlide).

        A later read of any of its levels opens the file again, so arrays handed on (to
        napari layers, a pyramid computed later) keep working; close once the reads in
        flight are done. `with open_slide(p) as s:` closes at the end of the block.
        """
        close_handles(self.path)

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def codec(self) -> str:
        """'jpeg', 'jpeg2000', 'none' (lossless) or 'unknown'."""
        return self.coding.codec

    @property
    def quality(self) -> int | None:
        """JPEG's IJG quality or the scanner's stated JPEG 2000 quality; None if unknown."""
        return self.coding.quality


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
_GENERATION: dict[str, int] = {}
"""How often `close_handles` closed each path's handles: a source whose handle is of an
older generation opens the file again. (Handles themselves need not be hashable: a
plain image's "handle" is its decoded array.)"""
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


_DIGEST_BLOCK = 64 * 1024
_DIGEST_SAMPLES = 32
_DIGEST_FILES = 64
_DIGESTS: dict[tuple[object, ...], str] = {}


def _digest_files(p: Path) -> list[Path]:
    """The file itself, or the first `_DIGEST_FILES` files of a folder walked top-down
    in name order (an OME-Zarr's metadata and its first chunks; a DICOM series' first
    files): bounded however many chunks the folder holds."""
    if not p.is_dir():
        return [p]
    found: list[Path] = []
    for root, dirs, files in os.walk(p):
        dirs.sort()
        found += [Path(root) / f for f in sorted(files)][: _DIGEST_FILES - len(found)]
        if len(found) >= _DIGEST_FILES:
            break
    return found


def content_digest(path: str | Path) -> str:
    """A short hash of what the file (or folder: OME-Zarr, a DICOM series) at `path`
    holds, cheap for any size: per file, its size and `_DIGEST_SAMPLES` blocks of 64
    KiB spread evenly over it, first and last included (2 MiB read at most). Unlike
    size and modification time (which `cp -p` and `rsync -t` copy), another image with
    the same size and time gets another digest; resume records and the disk cache use
    it. Remembered per process by path, size, modification and change time, and inode."""
    import hashlib

    p = Path(path).resolve()
    files = _digest_files(p)
    stats = [f.stat() for f in files]
    memo = tuple(
        (str(f), s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino) for f, s in zip(files, stats)
    )
    digest = _DIGESTS.get(memo)
    if digest is not None:
        return digest
    h = hashlib.sha256()
    for f, st in zip(files, stats):
        h.update(f"{f.relative_to(p) if f != p else ''}:{st.st_size}\n".encode())
        span = max(st.st_size - _DIGEST_BLOCK, 0)
        starts = sorted({span * k // (_DIGEST_SAMPLES - 1) for k in range(_DIGEST_SAMPLES)})
        with f.open("rb") as fh:
            for start in starts:
                fh.seek(start)
                h.update(fh.read(_DIGEST_BLOCK))
    digest = h.hexdigest()[:32]
    _DIGESTS[memo] = digest
    return digest


def close_handles(path: Path) -> int:
    """Close this process's shared handles of `path` (or of files inside it: a DICOM
    folder); returns how many there were. Sources read the file again on demand; a
    read running in another thread at that moment may fail (close a slide once its
    reads are done)."""
    path = Path(path)
    with _HANDLES_LOCK:
        keys = [k for k in _HANDLES if Path(k[1]) == path or path in Path(k[1]).parents]
        handles = [h for h in (_HANDLES.pop(k, None) for k in keys) if h is not None]
        for key in keys:
            _GENERATION[key[1]] = _GENERATION.get(key[1], 0) + 1
    for handle in handles:
        close = getattr(handle, "close", None)  # a decoded image has nothing to close
        if callable(close):
            try:
                close()
            except Exception:  # noqa: BLE001 - one handle must not keep the others open
                log.debug("closing a handle of %s failed", path, exc_info=True)
    return len(handles)


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
        self._generation = -1
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
        generation = _GENERATION.get(str(self.path), 0)
        if self._handle is None or self._generation != generation:
            self._handle = shared_handle(self.kind, self.path, self._open)
            self._generation = generation
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


# --- TIFF-based files ---------------------------------------------------------------


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
