"""Caches of computed SR tiles: a bounded in-memory LRU and an optional zarr on disk.

Keys always start with the model's identity (a hash of its config and weights), so
switching or fine-tuning a model opens a new key space and stale tiles are never
served. The memory cache makes panning back instant; the disk cache (one zarr array
per model x slide x tile size, under the user cache directory or
`$NAPARI_SRGAN_SQE_CACHE`) lets a second session skip tiles already computed. Both
are safe to use from several threads; the disk cache also from several processes
(zarr's local store writes each chunk atomically).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
from collections import OrderedDict
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DiskTileCache",
    "LiveStore",
    "TileCache",
    "cache_root",
    "clear_disk_cache",
    "memoized",
    "source_identity",
]

log = logging.getLogger(__name__)

ENV_CACHE = "NAPARI_SRGAN_SQE_CACHE"
_IDENTITY = re.compile(r"[0-9a-f]{8,64}(-seed[0-9]+)?")


class TileCache:
    """A thread-safe LRU of numpy tiles bounded by total size in megabytes."""

    def __init__(self, max_mb: float = 512) -> None:
        self.max_bytes = int(max(0.0, float(max_mb)) * 2**20)
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> np.ndarray | None:
        """The tile under `key` (read-only), or None; a hit makes it most recent."""
        with self._lock:
            tile = self._items.get(key)
            if tile is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return tile

    def put(self, key: Hashable, tile: np.ndarray) -> None:
        """Store `tile`, evicting the least recently used tiles beyond the bound."""
        if tile.nbytes > self.max_bytes:
            return
        tile = np.asarray(tile)
        tile.setflags(write=False)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._items[key] = tile
            self.nbytes += tile.nbytes
            while self.nbytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.nbytes -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items


def memoized(arr: Any, cache: TileCache) -> Any:
    """The dask array `arr`, its chunks kept in `cache` once computed: equal pixels,
    same chunks, but a chunk read again (napari redrawing, SR tiles reading their
    halos, readouts) costs a copy instead of recomputing `arr`'s graph. For derived
    images that are expensive per chunk, e.g. LR simulated from a slide's HR.

    A chunk is computed with dask's synchronous scheduler inside the task that asks
    for it (no nested thread pool); two threads asking at once may both compute it.
    """
    import dask.array as da

    base = arr.name

    def chunk(block_id: tuple[int, ...] | None = None) -> np.ndarray:
        key = (base, block_id)
        found = cache.get(key)
        if found is None:
            found = np.asarray(arr.blocks[block_id].compute(scheduler="synchronous"))
            cache.put(key, found)
        return found

    return da.map_blocks(
        chunk,
        chunks=arr.chunks,
        dtype=arr.dtype,
        meta=np.empty((0,) * arr.ndim, dtype=arr.dtype),
        name=f"memoized-{base}",
    )


class LiveStore:
    """SR pixels computed for display, in cells of `cell` x `cell` LR px, with a mask.

    The viewer's placeholder mode computes the part of the view that is missing as
    one rectangle of any size and position (no whole grid tiles), so what it computed
    is kept per LR pixel: each cell holds its SR pixels (`cell * scale` px a side) and
    which of its LR pixels they cover. Coordinates are LR level-0 pixels of the
    pyramid's grid. Bounded LRU by megabytes; thread-safe.
    """

    def __init__(self, height: int, width: int, scale: int, *, cell: int = 64, max_mb: float = 256):
        self.height, self.width, self.scale, self.cell = int(height), int(width), int(scale), cell
        self.max_bytes = int(max(0.0, float(max_mb)) * 2**20)
        self._cells: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0

    def _cells_of(self, y0: int, y1: int, x0: int, x1: int):
        c = self.cell
        for cy in range(y0 // c, (y1 - 1) // c + 1):
            for cx in range(x0 // c, (x1 - 1) // c + 1):
                # the part of the box in this cell: box coords, then cell coords
                by0, by1 = max(y0, cy * c), min(y1, (cy + 1) * c)
                bx0, bx1 = max(x0, cx * c), min(x1, (cx + 1) * c)
                yield (cy, cx), (by0, by1, bx0, bx1), (by0 - cy * c, bx0 - cx * c)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """(SR pixels (h s, w s, 3), covered mask (h, w)) of the LR box; zeros where missing."""
        s = self.scale
        sr = np.zeros(((y1 - y0) * s, (x1 - x0) * s, 3), np.uint8)
        return sr, self._read(y0, y1, x0, x1, sr)

    def covered(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The covered mask (h, w) of the LR box, without copying SR pixels."""
        return self._read(y0, y1, x0, x1, None)

    def _read(self, y0: int, y1: int, x0: int, x1: int, sr: np.ndarray | None) -> np.ndarray:
        """The covered mask of the box, copying its SR pixels into `sr` when given."""
        s = self.scale
        mask = np.zeros((y1 - y0, x1 - x0), bool)
        if y1 <= y0 or x1 <= x0:
            return mask
        with self._lock:
            for key, (by0, by1, bx0, bx1), (oy, ox) in self._cells_of(y0, y1, x0, x1):
                entry = self._cells.get(key)
                if entry is None:
                    continue
                self._cells.move_to_end(key)
                cell_sr, cell_mask = entry
                h, w = by1 - by0, bx1 - bx0
                mask[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] = cell_mask[oy : oy + h, ox : ox + w]
                if sr is not None:
                    sr[(by0 - y0) * s : (by1 - y0) * s, (bx0 - x0) * s : (bx1 - x0) * s] = cell_sr[
                        oy * s : (oy + h) * s, ox * s : (ox + w) * s
                    ]
        return mask

    def read_complete(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray | None:
        """The SR pixels of the LR box if all of them are present, else None."""
        if not self.covered(y0, y1, x0, x1).all():  # the usual case: no pixels copied
            return None
        sr, mask = self.read(y0, y1, x0, x1)  # again: a cell may have gone meanwhile
        return sr if mask.all() else None

    def write(self, y0: int, y1: int, x0: int, x1: int, sr: np.ndarray) -> None:
        """Store the SR pixels (h s, w s, 3) of the LR box [y0, y1) x [x0, x1)."""
        s, c = self.scale, self.cell
        with self._lock:
            for key, (by0, by1, bx0, bx1), (oy, ox) in self._cells_of(y0, y1, x0, x1):
                entry = self._cells.pop(key, None)
                if entry is None:
                    entry = (np.zeros((c * s, c * s, 3), np.uint8), np.zeros((c, c), bool))
                    self.nbytes += entry[0].nbytes + entry[1].nbytes
                cell_sr, cell_mask = entry
                h, w = by1 - by0, bx1 - bx0
                cell_sr[oy * s : (oy + h) * s, ox * s : (ox + w) * s] = sr[
                    (by0 - y0) * s : (by1 - y0) * s, (bx0 - x0) * s : (bx1 - x0) * s
                ]
                cell_mask[oy : oy + h, ox : ox + w] = True
                self._cells[key] = entry
            while self.nbytes > self.max_bytes and len(self._cells) > 1:
                _, (a, b) = self._cells.popitem(last=False)
                self.nbytes -= a.nbytes + b.nbytes

    def clear(self) -> None:
        with self._lock:
            self._cells.clear()
            self.nbytes = 0


def cache_root() -> Path:
    """The folder of the disk cache: `$NAPARI_SRGAN_SQE_CACHE` or the user cache dir."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-srgan-sqe")) / "tiles"


def source_identity(source: Any, *, extra: Any = None) -> str:
    """A stable short hash naming an image source across sessions.

    A file (a Slide's `.path`, or a path) is named by its absolute path, size,
    modification time and `content_digest`, so an edited or replaced file gets a new
    name; a dask array by its graph
    name (deterministic for the same source); a numpy array by a hash of its bytes.
    `extra` (e.g. a region or the level shape) is mixed in.
    """
    h = hashlib.sha256(repr(extra).encode())
    path = getattr(source, "path", source)
    if isinstance(path, str | os.PathLike) and Path(path).exists():
        p = Path(path).resolve()
        st = p.stat()
        from napari_srgan_sqe.io.slides import content_digest

        h.update(f"file:{p}:{st.st_size}:{st.st_mtime_ns}:{content_digest(p)}".encode())
    elif hasattr(source, "dask") and hasattr(source, "name"):
        h.update(f"dask:{source.name}".encode())
    else:
        arr = np.ascontiguousarray(source)
        h.update(f"array:{arr.shape}:{arr.dtype}".encode())
        h.update(hashlib.sha256(arr.data).digest())
    return h.hexdigest()[:16]


class DiskTileCache:
    """SR tiles of one (model, source, tile size) in a zarr array on disk.

    The array has the SR level-0 shape with one chunk per tile; a tile is present
    when its chunk file exists. A damaged chunk reads as a miss and is recomputed.
    """

    def __init__(
        self,
        *,
        model_id: str,
        source_id: str,
        shape: tuple[int, int],
        tile: int,
        scale: int,
        root: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root) if root is not None else cache_root()
        self.path = self.root / model_id / source_id / f"tile{tile}.zarr"
        self.shape = (int(shape[0]) * scale, int(shape[1]) * scale, 3)
        self.chunk = tile * scale
        self._array: Any = None
        self._lock = threading.Lock()
        self.hits = 0
        self.disabled = False

    def _open(self) -> Any:
        if self._array is None:
            with self._lock:
                if self._array is None:
                    import zarr

                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        self._array = zarr.open_array(self.path, mode="r+")
                    except (FileNotFoundError, zarr.errors.ArrayNotFoundError):
                        self._array = zarr.create_array(
                            self.path,
                            shape=self.shape,
                            chunks=(self.chunk, self.chunk, 3),
                            dtype="uint8",
                            fill_value=0,
                            overwrite=False,
                            config={"write_empty_chunks": True},
                        )
                    if tuple(self._array.shape) != self.shape:
                        raise OSError(f"disk cache {self.path} has shape {self._array.shape}")
        return self._array

    def _chunk_file(self, iy: int, ix: int) -> Path:
        return self.path / "c" / str(iy) / str(ix) / "0"

    def get(self, iy: int, ix: int) -> np.ndarray | None:
        """Tile (iy, ix) if it was stored before, else None."""
        if not self._chunk_file(iy, ix).exists():
            return None
        c = self.chunk
        try:
            arr = self._open()
            tile = arr[iy * c : (iy + 1) * c, ix * c : (ix + 1) * c]
        except Exception:  # a damaged or half-written chunk: recompute it
            return None
        self.hits += 1
        return np.asarray(tile)

    def put(self, iy: int, ix: int, tile: np.ndarray) -> None:
        """Store tile (iy, ix); an error (disk full, read-only) disables the cache."""
        if self.disabled:
            return
        c = self.chunk
        try:
            arr = self._open()
            arr[iy * c : iy * c + tile.shape[0], ix * c : ix * c + tile.shape[1]] = tile
        except Exception as exc:
            self.disabled = True
            log.warning("disk tile cache %s disabled: %s", self.path, exc)

    def clear(self) -> None:
        """Delete this model x source x tile-size entry from disk."""
        with self._lock:
            self._array = None
            shutil.rmtree(self.path, ignore_errors=True)


def clear_disk_cache(
    model_id: str | None = None, *, root: str | os.PathLike[str] | None = None
) -> None:
    """Delete the disk cache of one model identity, or of all models.

    Only folders named like model identities are removed, so a cache root pointed at
    a folder that holds other things loses nothing else.
    """
    base = Path(root) if root is not None else cache_root()
    if not base.is_dir():
        return
    for entry in base.iterdir():
        if entry.is_dir() and _IDENTITY.fullmatch(entry.name) and model_id in (None, entry.name):
            shutil.rmtree(entry, ignore_errors=True)
