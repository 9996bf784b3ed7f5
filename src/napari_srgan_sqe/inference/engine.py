"""Lazy, seamless, tile-by-tile super-resolution of a slide: `super_resolve`.

The result is an `SRPyramid`, a list of dask arrays that napari shows as one
multiscale layer. Nothing is computed when it is made; slicing it computes only the
tiles under the slice.

Design
- Level 0 is s x LR level 0, a dask array whose chunks are `chunk_tiles` x
  `chunk_tiles` tiles of `tile * s` HR pixels (a lazy Blockwise layer, so a slide of
  any size costs nothing to create). A chunk reads its tiles with a `halo` margin
  (tiling.read_region), runs them through the Predictor, crops the halo and stitches.
  With the halo at least the receptive field, tiled output equals the whole-image
  reference (`Predictor.predict_image`) up to float rounding (<= 1 in uint8).
- Batching: dask runs one task per chunk on several threads; tiles requested at the
  same time by different chunks go through the Predictor together, in batches of up
  to `batch`, one forward at a time (batching.Combiner, flat combining). The
  exporter computes several chunks at once, so its tiles batch the same way;
  `chunk_tiles` > 1 also makes each chunk a batch on its own.
- Coarser levels run no model: SR level k >= 1 is LR level k - 1. The SR model keeps
  D_s(SR) close to LR, so at zooms of 1/s and below LR *is* what SR looks like, and
  zooming out never triggers a whole-slide computation. napari derives each level's
  downsample from the shapes (s, then the LR pyramid's factors x s).
- Placeholder mode (`placeholder=True`, the viewer's): level 0 is a `LiveLevel0`
  that never waits for the network. A read returns the SR already computed and, where
  it is missing, the bicubic up-sampling of the LR under a tint (`PLACEHOLDER_TINT`);
  a background thread computes the missing part of the view, centre first, in pieces
  of at most `live_piece` LR px, each one network call on the piece plus its halo (so
  a view costs about its own pixels plus one halo in network work, not whole grid
  tiles); a new view replaces the queue (pieces that left the view are dropped) and
  `SRPyramid.listeners` hear when pieces land. What it computed is kept per LR pixel
  (cache.LiveStore) and reused by the exact path. `exact_levels()` is always the
  exact, blocking pyramid (readouts, export, evaluation).
- Caches: a bounded LRU of SR tiles in memory and optionally a zarr on disk, both
  keyed by the model identity (cache.py); `set_model` switches to a new key space and
  rebuilds the dask arrays under new names, so napari's dask cache cannot serve stale
  tiles either.

Geometry (docs/architecture.md, pixel-centre convention): SR pixel (i, j) of level 0
is HR pixel (i, j); with LR as the reference frame, SR level 0 has scale 1/s and
translate -(s - 1) / (2 s) in LR pixel units (`SRPyramid.layer_transform`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from napari_srgan_sqe.inference.background import missing_pieces, notify, track
from napari_srgan_sqe.inference.batching import combiner_for
from napari_srgan_sqe.inference.cache import (
    DiskTileCache,
    LiveStore,
    TileCache,
    source_identity,
)
from napari_srgan_sqe.inference.tiling import (
    BlockCache,
    DataError,
    TileGrid,
    as_rgb_uint8,
    bicubic_preview,
    bicubic_region,
    check_region,
    default_tile,
    read_region,
)
from napari_srgan_sqe.models.coding import CodingLike

__all__ = [
    "DataError",
    "EngineStats",
    "LiveLevel0",
    "PLACEHOLDER_TINT",
    "SRPyramid",
    "as_rgb_uint8",
    "bicubic_region",
    "check_scale",
    "model_key",
    "resolve_model",
    "super_resolve",
]

log = logging.getLogger(__name__)

PLACEHOLDER_TINT = (112, 136, 224, 3)
"""Placeholder marking: RGB of a light blue veil, blended in with weight 1 / 2^3."""
LIVE_PIECE = 320
"""Largest side (LR px) of one piece of a view computed in placeholder mode."""
LIVE_IDLE_S = 30.0
"""A placeholder-mode worker thread ends after this many idle seconds (restarted on need)."""


@dataclass
class EngineStats:
    """Counters of one SR pyramid (a snapshot is returned by `SRPyramid.stats`)."""

    tiles_computed: int = 0
    cache_hits: int = 0
    disk_hits: int = 0
    pending: int = 0
    forward_seconds: float = 0.0
    output_mpx: float = 0.0
    input_px: int = 0
    live_pieces: int = 0
    live_dropped: int = 0
    placeholder_reads: int = 0

    # input_px: LR pixels through the network, halo included (network work);
    # live_pieces / live_dropped: pieces of views computed / dropped before they
    # started (placeholder mode); placeholder_reads: display reads that showed a
    # placeholder somewhere

    @property
    def mean_tile_s(self) -> float:
        """Device seconds per computed tile."""
        return self.forward_seconds / self.tiles_computed if self.tiles_computed else 0.0

    @property
    def mpx_per_s(self) -> float:
        """Output megapixels per device second (forward passes only)."""
        return self.output_mpx / self.forward_seconds if self.forward_seconds else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "mean_tile_s": self.mean_tile_s, "mpx_per_s": self.mpx_per_s}


class _SRLevel0:
    """Computes SR level-0 chunks of one LR level with one predictor, with caches."""

    def __init__(
        self,
        lr: Any,
        predictor: Any,
        *,
        model_id: str,
        source_id: str,
        tile: int,
        chunk_tiles: int,
        batch: int,
        cache: TileCache,
        disk: DiskTileCache | None,
        stats: EngineStats,
        stats_lock: threading.Lock,
        use_model: Callable[[int, int], bool] | None = None,
        window: tuple[int, int, int, int] | None = None,
    ) -> None:
        self.lr = lr
        self.use_model = use_model
        self.predictor = predictor
        self.scale = int(predictor.scale)
        self.halo = int(predictor.halo)
        desc = getattr(predictor, "descriptor", None)
        self.alignment = max(1, int(getattr(desc, "alignment", 1)))
        # window (x, y, w, h): the tile grid covers only this part of `lr`, but halos
        # read the real pixels around it (mirrored only at the border of `lr`)
        x, y, w, h = window if window is not None else (0, 0, lr.shape[1], lr.shape[0])
        self.origin = (int(y), int(x))
        self.grid = TileGrid(int(h), int(w), tile)
        self.chunk_tiles = chunk_tiles
        self.model_id, self.source_id = model_id, source_id
        self.cache, self.disk = cache, disk
        self.stats, self._stats_lock = stats, stats_lock
        self.combiner = combiner_for(predictor, batch)
        self._inflight: dict[tuple, Future] = {}
        self._lock = threading.Lock()
        self.store: LiveStore | None = None  # SR computed for display (placeholder mode)

    def as_dask(self, name: str) -> Any:
        import dask.array as da

        g, s, step = self.grid, self.scale, self.grid.tile * self.chunk_tiles

        def sizes(n: int) -> tuple[int, ...]:
            return tuple(min(step, n - i) * s for i in range(0, n, step))

        return da.map_blocks(
            self.chunk,
            chunks=(sizes(g.height), sizes(g.width), (3,)),
            dtype=np.uint8,
            meta=np.empty((0, 0, 0), np.uint8),
            name=name,
        )

    def chunk(self, block_id: tuple[int, ...] = (0, 0, 0)) -> np.ndarray:
        """Chunk block_id[:2] of SR level 0, stitched from its tiles."""
        cy, cx = block_id[0], block_id[1]
        ct, t, s = self.chunk_tiles, self.grid.tile, self.scale
        idx = list(
            self.grid.covering(cy * ct * t, (cy + 1) * ct * t, cx * ct * t, (cx + 1) * ct * t)
        )
        tiles = self.tiles(idx)
        y0, _, x0, _ = self.grid.bounds(*idx[0])
        _, y1, _, x1 = self.grid.bounds(*idx[-1])
        out = np.empty(((y1 - y0) * s, (x1 - x0) * s, 3), np.uint8)
        for (iy, ix), tile in zip(idx, tiles):
            ty, _, tx, _ = self.grid.bounds(iy, ix)
            oy, ox = (ty - y0) * s, (tx - x0) * s
            out[oy : oy + tile.shape[0], ox : ox + tile.shape[1]] = tile
        return out

    def _lr_bounds(self, iy: int, ix: int) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of tile (iy, ix) in pixels of the whole LR level."""
        y0, y1, x0, x1 = self.grid.bounds(iy, ix)
        oy, ox = self.origin
        return y0 + oy, y1 + oy, x0 + ox, x1 + ox

    def _key(self, iy: int, ix: int) -> tuple:
        return (self.model_id, self.source_id, self.grid.tile, iy, ix)

    def _cheap(self, iy: int, ix: int) -> bool:
        return self.use_model is not None and not self.use_model(iy, ix)

    def tiles(self, idx: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """SR tiles (iy, ix): from memory, disk, another thread's computation, or the model."""
        found: dict[tuple[int, int], np.ndarray] = {}
        waits: dict[tuple[int, int], Future] = {}
        mine: list[tuple[tuple[int, int], Future]] = []
        hits = 0
        with self._lock:
            for t in idx:
                key = self._key(*t)
                hit = self.cache.get(key)
                if hit is not None:
                    found[t] = hit
                    hits += 1
                elif key in self._inflight:
                    waits[t] = self._inflight[key]
                else:
                    fut: Future = Future()
                    self._inflight[key] = fut
                    mine.append((t, fut))
        with self._stats_lock:
            self.stats.cache_hits += hits
        if mine:
            try:
                found.update(self._produce([t for t, _ in mine]))
            except BaseException as exc:
                self._finish(mine, None, exc)
                raise
            self._finish(mine, found, None)
        for t, fut in waits.items():
            found[t] = fut.result()
        return [found[t] for t in idx]

    def _finish(self, mine: list, found: dict | None, exc: BaseException | None) -> None:
        with self._lock:
            for t, fut in mine:
                self._inflight.pop(self._key(*t), None)
                if exc is not None:
                    fut.set_exception(exc)
                else:
                    fut.set_result(found[t])  # type: ignore[index]

    def _produce(self, idx: list[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
        out: dict[tuple[int, int], np.ndarray] = {}
        todo = []
        for t in idx:
            if self._cheap(*t):  # background: bicubic, never cached on disk
                out[t] = bicubic_region(self.lr, *self._lr_bounds(*t), scale=self.scale)
                self.cache.put(self._key(*t), out[t])
                continue
            tile = self.disk.get(*t) if self.disk is not None else None
            if tile is not None:
                out[t] = tile
                self.cache.put(self._key(*t), tile)
                with self._stats_lock:
                    self.stats.disk_hits += 1
                continue
            tile = self.store.read_complete(*self.grid.bounds(*t)) if self.store else None
            if tile is not None:  # already computed for display (placeholder mode)
                out[t] = tile
                self.cache.put(self._key(*t), tile)
                with self._stats_lock:
                    self.stats.cache_hits += 1
            else:
                todo.append(t)
        if not todo:
            return out
        bounds = [self._lr_bounds(*t) for t in todo]
        for t, tile in zip(todo, self.forward_regions(bounds)):
            self.cache.put(self._key(*t), tile)
            if self.disk is not None:
                self.disk.put(*t, tile)
            out[t] = tile
            with self._stats_lock:
                self.stats.tiles_computed += 1
        return out

    def forward_regions(self, bounds: list[tuple[int, int, int, int]]) -> list[np.ndarray]:
        """SR of LR regions (y0, y1, x0, x1) of the level, each read with the halo. A
        window starts at the phase of the whole-image reference modulo the model's
        `alignment` (extended up and left by up to alignment - 1 px, cropped after), so
        windows of a strided network agree wherever they start."""
        a = self.alignment
        inputs, origins, extra = [], [], []
        for y0, y1, x0, x1 in bounds:
            ey, ex = y0 % a, x0 % a
            inputs.append(read_region(self.lr, y0 - ey, y1, x0 - ex, x1, halo=self.halo))
            origins.append((y0 - ey - self.halo, x0 - ex - self.halo))
            extra.append((ey * self.scale, ex * self.scale))
        return [sr[ey:, ex:] for sr, (ey, ex) in zip(self.forward(inputs, origins), extra)]

    def forward(self, inputs: list[np.ndarray], origins: list[tuple[int, int]]) -> list[np.ndarray]:
        """The network on LR inputs read with the halo (batched with other threads'),
        counted in `stats` (pending, input px, forward time, output Mpx); `origins`:
        each input's top-left in the LR level (seeded noise is keyed to it)."""
        with self._stats_lock:
            self.stats.pending += len(inputs)
            self.stats.input_px += sum(x.shape[0] * x.shape[1] for x in inputs)
        try:
            results = self.combiner.compute(inputs, self.halo, origins)
        finally:
            with self._stats_lock:
                self.stats.pending -= len(inputs)
        with self._stats_lock:
            for sr, seconds in results:
                self.stats.forward_seconds += seconds
                self.stats.output_mpx += sr.shape[0] * sr.shape[1] / 1e6
        return [sr for sr, _ in results]


class LiveLevel0:
    """SR level 0 for a viewer (placeholder mode): never blocks on the network.

    Reading a region returns the SR pixels already computed and, where they are
    missing, a placeholder at once: the bicubic up-sampling of the LR
    (`tiling.bicubic_preview`) tinted with `PLACEHOLDER_TINT`. The missing part of the region
    read last (the view) is queued for a background thread in pieces of at most
    `piece` LR px a side, each shrunk to the pixels it lacks, nearest the centre of
    the view first; reading another region replaces the queue, so pieces that left
    the view before they started are dropped. A piece is one network call on any
    rectangle with its halo (no whole grid tiles), so a view costs about
    (w + 2 halo)(h + 2 halo) / (w h) of its pixels in network work. Every function in
    `listeners` is called with "queued" when work starts after an idle time, "landed"
    when a piece lands and "failed" when one fails (from any thread); reading
    the region again returns its exact SR pixels, equal to level 0 of the exact
    pyramid up to float rounding (<= 1 in uint8), and kept in a `LiveStore` that the
    exact path reuses.

    An array-like for napari (`shape`, `dtype`, `ndim`, `__getitem__` -> numpy);
    `exact` is the exact, blocking level 0 (a dask array) that code saving or
    measuring the layer must read instead; `np.asarray` of the whole level gives it.
    """

    def __init__(
        self,
        level0: _SRLevel0,
        exact: Any,
        *,
        piece: int,
        max_mb: float,
        listeners: list[Callable[[str], None]],
    ) -> None:
        g, s = level0.grid, level0.scale
        self.level0, self.exact, self.scale, self.piece = level0, exact, s, max(8, int(piece))
        self.shape = (g.height * s, g.width * s, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self.size = int(np.prod(self.shape))
        self.chunks = exact.chunks  # napari and dask read these as hints only
        self.name = f"{exact.name}-live"  # new with every model, like the exact level's
        self.store = LiveStore(g.height, g.width, s, max_mb=max_mb)
        level0.store = self.store
        self.listeners = listeners
        self.error: str | None = None
        self._cond = threading.Condition()
        self._queue: list[tuple[int, int, int, int]] = []
        self._running: tuple[int, int, int, int] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._ph: tuple[tuple[int, int, int, int], np.ndarray] | None = None

    # ---------------------------------------------------------------- array-like
    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """The whole level as numpy: the exact SR (computed, blocking), never placeholders."""
        out = np.asarray(self.exact)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = full_index(key, 3)
        found = index_box(key, self.shape)
        if found is None:
            return np.empty((0, 0, 3), np.uint8)[(slice(None), slice(None), key[2])]
        ((hy0, hy1), (hx0, hx1)), local = found
        s = self.scale
        ly0, ly1, lx0, lx1 = hy0 // s, -(-hy1 // s), hx0 // s, -(-hx1 // s)
        region = self.region(ly0, ly1, lx0, lx1)
        region = region[hy0 - ly0 * s : hy1 - ly0 * s, hx0 - lx0 * s : hx1 - lx0 * s]
        if isinstance(local[0], np.ndarray) and isinstance(local[1], np.ndarray):
            region = region[local[0]][:, local[1]]
            return region[(slice(None), slice(None), key[2])]
        return region[(local[0], local[1], key[2])]

    # ---------------------------------------------------------------- regions
    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """SR pixels of the LR box: exact where computed, a placeholder elsewhere
        (whose computation is then queued). Never runs the network."""
        sr, mask = self.store.read(y0, y1, x0, x1)
        if not mask.all() and self._from_tile_cache(y0, y1, x0, x1, mask):
            sr, mask = self.store.read(y0, y1, x0, x1)
        if mask.all():
            self._plan((y0, y1, x0, x1), mask)  # nothing to do here: drops the queue
            return sr
        s = self.scale
        ph = self._placeholder(y0, y1, x0, x1)  # before the network starts on the cores
        self._plan((y0, y1, x0, x1), mask)
        with self.level0._stats_lock:
            self.level0.stats.placeholder_reads += 1
        if not mask.any():
            return ph  # read-only: shared with the next read of the same view
        full = np.repeat(np.repeat(mask, s, axis=0), s, axis=1)
        return np.where(full[..., None], sr, ph)

    def missing(self, y0: int, y1: int, x0: int, x1: int) -> int:
        """LR pixels of the box whose SR is not computed yet."""
        return int((~self.store.covered(y0, y1, x0, x1)).sum())

    def _placeholder(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        key, last = (y0, y1, x0, x1), self._ph  # the last one: a refresh reads it again
        if last is not None and last[0] == key:
            return last[1]
        oy, ox = self.level0.origin
        ph = bicubic_preview(
            self.level0.lr,
            y0 + oy,
            y1 + oy,
            x0 + ox,
            x1 + ox,
            scale=self.scale,
            tint=PLACEHOLDER_TINT,
        )
        ph.setflags(write=False)
        self._ph = (key, ph)
        return ph

    def _from_tile_cache(self, y0: int, y1: int, x0: int, x1: int, mask: np.ndarray) -> bool:
        """Copy exact grid tiles already in the memory cache into the store, those that
        cover pixels of the box missing from `mask` (its covered mask) only."""
        lv, found = self.level0, False
        for t in lv.grid.covering(y0, y1, x0, x1):
            ty0, ty1, tx0, tx1 = lv.grid.bounds(*t)
            part = mask[max(ty0, y0) - y0 : ty1 - y0, max(tx0, x0) - x0 : tx1 - x0]
            key = lv._key(*t)
            if part.all() or key not in lv.cache:
                continue
            tile = lv.cache.get(key)
            if tile is not None:
                self.store.write(ty0, ty1, tx0, tx1, tile)
                found = True
        return found

    # ---------------------------------------------------------------- scheduling
    def _plan(self, box: tuple[int, int, int, int], mask: np.ndarray) -> None:
        """Queue the missing pieces of `box`, centre first, replacing the queue."""
        y0, y1, x0, x1 = box
        covered = mask.copy()
        with self._cond:
            if self._closed:
                return
            run = self._running
            if run is not None:  # in flight: counts as computed
                ry0, ry1 = max(run[0], y0), min(run[1], y1)
                rx0, rx1 = max(run[2], x0), min(run[3], x1)
                if ry1 > ry0 and rx1 > rx0:
                    covered[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0] = True
            pieces = missing_pieces(covered, y0, x0, self.piece)
            dropped = sum(1 for p in self._queue if p not in pieces)
            started = bool(pieces) and not self._queue and self._running is None
            self._queue = pieces
            if dropped:
                with self.level0._stats_lock:
                    self.level0.stats.live_dropped += dropped
            if pieces:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._work, name="srgan-sqe-live", daemon=True
                    )
                    self._thread.start()
                    track(self)
                self._cond.notify_all()
        if started:
            self._notify("queued")

    def _notify(self, event: str) -> None:
        notify(self.listeners, event, "live SR")

    @property
    def queued(self) -> int:
        """Pieces waiting (not started)."""
        with self._cond:
            return len(self._queue)

    @property
    def busy(self) -> bool:
        """True while pieces are queued or one is being computed."""
        with self._cond:
            return bool(self._queue) or self._running is not None

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no piece is queued or running (False on timeout)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._closed or (not self._queue and self._running is None), timeout
            )

    def cancel(self, *, count: bool = True) -> None:
        """Drop the pieces not started (nobody looks at them any more); `count` them in
        `stats.live_dropped` (not from a garbage-collector callback: it takes a lock)."""
        with self._cond:
            dropped, self._queue = len(self._queue), []
            self._cond.notify_all()
        if dropped and count:
            with self.level0._stats_lock:
                self.level0.stats.live_dropped += dropped

    def close(self, timeout: float | None = None) -> None:
        """Drop the queue and stop the worker after its current piece (waiting for it up
        to `timeout` seconds when given)."""
        with self._cond:
            self._closed = True
            self._queue = []
            thread = self._thread
            self._cond.notify_all()
        if timeout is not None and thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or bool(self._queue), LIVE_IDLE_S)
                if self._closed or not self._queue:  # closed, or idle: the next read restarts it
                    self._thread = None
                    return
                piece = self._running = self._queue.pop(0)
            ok = False
            try:
                self._compute(piece)
                ok = True
            except Exception as exc:  # noqa: BLE001 - shown as a status, never raised in napari
                if type(exc).__name__ != "InferenceCancelled":  # not the process exiting
                    self.error = str(exc) or type(exc).__name__
                    log.warning("SR of a view piece failed: %s", self.error)
            finally:
                with self._cond:
                    self._running = None
                    if not ok:  # do not retry in a loop: wait for the next read
                        self._queue = []
                    self._cond.notify_all()
            self._notify("landed" if ok else "failed")

    def _compute(self, piece: tuple[int, int, int, int]) -> None:
        lv = self.level0
        y0, y1, x0, x1 = piece
        if lv.use_model is not None:  # a tile mask: whole grid tiles, through the exact path
            idx = list(lv.grid.covering(y0, y1, x0, x1))
            for t, tile in zip(idx, lv.tiles(idx)):
                self.store.write(*lv.grid.bounds(*t), tile)
            with lv._stats_lock:
                lv.stats.live_pieces += 1
            return
        oy, ox = lv.origin
        (sr,) = lv.forward_regions([(y0 + oy, y1 + oy, x0 + ox, x1 + ox)])
        self.store.write(y0, y1, x0, x1, sr)
        with lv._stats_lock:
            lv.stats.live_pieces += 1


def full_index(key: Any, ndim: int) -> tuple[Any, ...]:
    """An index of an `ndim`-D array as one entry per axis (Ellipsis expanded, padded)."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1 :]
    return key + (slice(None),) * (ndim - len(key))


def index_box(
    key: tuple[Any, ...], shape: Sequence[int]
) -> tuple[list[tuple[int, int]], list[Any]] | None:
    """For the first two axes of a `full_index` key: the bounding box [lo, hi) per axis
    and the index within it; None when it selects nothing (array-like levels read the
    box, then index it)."""
    bounds: list[tuple[int, int]] = []
    local: list[Any] = []
    for k, n in zip(key[:2], shape[:2]):
        idx = np.arange(n)[k]
        if np.ndim(idx) == 0:
            bounds.append((int(idx), int(idx) + 1))
            local.append(0)
            continue
        if idx.size == 0:
            return None
        lo, hi = int(idx.min()), int(idx.max()) + 1
        bounds.append((lo, hi))
        if isinstance(k, slice) and k.step in (None, 1):
            local.append(slice(int(idx[0]) - lo, int(idx[-1]) - lo + 1))
        else:
            local.append(idx - lo)
    return bounds, local


class SRPyramid(list):
    """The lazy SR pyramid: a list of dask arrays (finest first) with engine state.

    Level 0 is the model's output at s x LR level 0; level k >= 1 is LR level k - 1.
    With a `region` (x, y, w, h), level 0 is the SR of that part of LR level 0 (its
    tiles' halos read the real pixels around it) and level 1 is that LR crop.
    `set_model` may be called from any thread. In placeholder mode (`set_placeholder`)
    level 0 is a `LiveLevel0` (an array-like, not dask) that never blocks;
    `exact_levels()` always gives the exact dask levels.
    """

    def __init__(
        self,
        lr_levels: list[Any],
        model: Any,
        predictor: Any,
        *,
        source_id: str,
        tile: int,
        chunk_tiles: int,
        batch: int,
        cache_mb: float,
        disk_cache: bool | str,
        predictor_factory: Callable[..., Any],
        use_model: Callable[[int, int], bool] | None = None,
        region: tuple[int, int, int, int] | None = None,
        placeholder: bool = False,
        live_piece: int = LIVE_PIECE,
    ) -> None:
        super().__init__()
        self.use_model = use_model
        self.placeholder, self.live_piece = bool(placeholder), int(live_piece)
        self.listeners: list[Callable[[str], None]] = []
        self.live: LiveLevel0 | None = None
        self.region = region
        self._switch_lock = threading.RLock()
        self.lr_levels = lr_levels
        lr0 = lr_levels[0]  # read through a chunk cache: neighbouring halos share chunks
        self._lr0 = BlockCache(lr0) if hasattr(lr0, "dask") else lr0
        self.source_id = source_id
        self.tile, self.chunk_tiles, self.batch = tile, chunk_tiles, batch
        self.cache = TileCache(cache_mb)
        self._disk_cache = disk_cache
        self._make_predictor = predictor_factory
        self._stats = EngineStats()
        self._stats_lock = threading.Lock()
        self._install(model, predictor)

    def _install(self, model: Any, predictor: Any) -> None:
        """Build the whole state for `model` first, then swap it in under the lock."""
        model_id = model_key(model, getattr(predictor, "seed", None), _coding_of(predictor))
        disk = None
        lr0 = self.lr_levels[0]
        if self.region is not None:
            x, y, w, h = self.region
            shape = (int(h), int(w))
            coarse = [_as_dask(lr0[y : y + h, x : x + w])]
        else:
            shape = (int(lr0.shape[0]), int(lr0.shape[1]))
            coarse = [_as_dask(lv) for lv in self.lr_levels]
        if self._disk_cache:
            root = None if self._disk_cache is True else self._disk_cache
            disk = DiskTileCache(
                model_id=model_id,
                source_id=self.source_id,
                shape=shape,
                tile=self.tile,
                scale=int(predictor.scale),
                root=root,
            )
        level0 = _SRLevel0(
            self._lr0,
            predictor,
            model_id=model_id,
            source_id=self.source_id,
            tile=self.tile,
            chunk_tiles=self.chunk_tiles,
            batch=self.batch,
            cache=self.cache,
            disk=disk,
            stats=self._stats,
            stats_lock=self._stats_lock,
            use_model=self.use_model,
            window=self.region,
        )
        levels = [level0.as_dask(f"srgan-sqe-sr-{model_id}-{uuid.uuid4().hex[:12]}"), *coarse]
        with self._switch_lock:
            old = self.live
            self.model, self.predictor, self.model_id = model, predictor, model_id
            self.disk_cache, self._level0 = disk, level0
            self._exact = levels
            self.live = None
            if self.placeholder:
                self.live = self._make_live(level0, levels[0])
                levels = [self.live, *levels[1:]]
            self[:] = levels
            if old is not None:
                old.close()

    def _make_live(self, level0: _SRLevel0, exact0: Any) -> LiveLevel0:
        return LiveLevel0(
            level0,
            exact0,
            piece=self.live_piece,
            max_mb=self.cache.max_bytes / 2**20,
            listeners=self.listeners,
        )

    def set_placeholder(self, on: bool = True) -> None:
        """Placeholder mode on or off (level 0 becomes / stops being a `LiveLevel0`).

        On: reading level 0 never waits for the network; the SR of the view is made
        in the background and `listeners` are called as it lands (a viewer refreshes
        the layer then). Off: level 0 is the exact, blocking dask array. Give the layer
        `list(pyramid)` again after switching.
        """
        with self._switch_lock:
            if bool(on) == self.placeholder:
                return
            self.placeholder = bool(on)
            if on:
                self.live = self._make_live(self._level0, self._exact[0])
                self[0] = self.live
            else:
                if self.live is not None:
                    self.live.close()
                self.live = None
                self[0] = self._exact[0]

    def exact_levels(self) -> list[Any]:
        """The levels as dask arrays, level 0 exact and blocking (for readouts, export)."""
        with self._switch_lock:
            return list(self._exact)

    @property
    def scale(self) -> int:
        return int(self.predictor.scale)

    @property
    def halo(self) -> int:
        return int(self.predictor.halo)

    @property
    def seed(self) -> int | None:
        """The sample of a stochastic model (0 when none was given); None otherwise."""
        if not self.model.descriptor.stochastic:
            return None
        seed = getattr(self.predictor, "seed", None)
        return 0 if seed is None else int(seed)

    @property
    def stats(self) -> EngineStats:
        """A snapshot of the counters (tiles computed, cache hits, pending, rates)."""
        with self._stats_lock:
            return EngineStats(**asdict(self._stats))

    def set_model(self, model: Any, *, seed: int | None = None) -> None:
        """Switch to another model: new dask arrays (new names), a fresh cache key space.
        `seed`: the sample a stochastic model draws (default: the one this pyramid was
        made with).

        Thread-safe (widgets call it from worker threads): switches are serialised and
        the new state is built completely before it replaces the old one at once. A
        model of another scale raises DataError and changes nothing.
        """
        model = resolve_model(model)
        with self._switch_lock:
            check_scale(model, self.scale)
            make = self._make_predictor
            self._install(model, make(model) if seed is None else make(model, int(seed)))

    def clear_cache(self, *, disk: bool = False) -> None:
        """Forget computed tiles in memory (and on disk for this model and source)."""
        self.cache.clear()
        if self._level0.store is not None:
            self._level0.store.clear()
        if disk and self.disk_cache is not None:
            self.disk_cache.clear()

    def tiles(self, idx: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """SR tiles by grid index (iy, ix), computed together in batches."""
        return self._level0.tiles(idx)

    @property
    def grid(self) -> TileGrid:
        return self._level0.grid

    def layer_transform(self, lr_pixel_size: float = 1.0) -> dict[str, tuple[float, float]]:
        """napari scale / translate of SR level 0 with the LR layer as reference frame."""
        from napari_srgan_sqe.degradation import lr_translate

        s = self.scale
        return {
            "scale": (lr_pixel_size / s, lr_pixel_size / s),
            "translate": (-lr_translate(s) / s * lr_pixel_size,) * 2,
        }


def _as_dask(level: Any) -> Any:
    import dask.array as da

    if hasattr(level, "dask"):
        return level
    return da.from_array(np.asarray(level), chunks=(1024, 1024, 3), name=False)


def resolve_model(model: Any) -> Any:
    """An SRModel as is; a bundled name or a model file path through `load_model`."""
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        from napari_srgan_sqe.models.modelfile import load_model

        return load_model(model)
    return model


def model_key(model: Any, seed: int | None, coding: tuple[float, ...] | None = None) -> str:
    """The model's part of every cache key: its identity, the seed when the method is
    stochastic, and the coding it is told when it is conditioned on one (`coding`: the
    vector, None for a model that reads none). Refuses methods the halo-tiled engine
    cannot run exactly."""
    desc = model.descriptor
    if desc.tiling not in ("halo", "overlap"):
        raise DataError(
            f"model {model.name!r} needs {desc.tiling!r} tiling; this engine reads tiles with "
            "a margin and crops it ('halo' or 'overlap' tiling)"
        )
    key = str(model.identity)
    if desc.stochastic:
        key = f"{key}-seed{0 if seed is None else int(seed)}"
    if coding is not None:
        key += "-coded-" + hashlib.sha1(repr(tuple(coding)).encode()).hexdigest()[:8]
    return key


def _coding_of(predictor: Any) -> tuple[float, ...] | None:
    """The coding vector a predictor tells its model, or None when the model reads none."""
    if not getattr(predictor, "conditioned", False):
        return None
    return tuple(predictor.coding_vector)


def check_scale(model: Any, scale: int | None) -> None:
    """DataError when `scale` is given and the model up-scales by another factor."""
    if scale is not None and int(model.scale) != int(scale):
        raise DataError(
            f"model {getattr(model, 'name', model)!r} up-scales by {model.scale}, "
            f"but scale {scale} was requested; choose a x{scale} model"
        )


def _levels_of(source: Any) -> tuple[list[Any], Any]:
    """(RGB uint8 levels finest first, the Slide they come from or None)."""
    slide = None
    if hasattr(source, "levels"):  # a Slide
        slide, levels = source, list(source.levels)
    elif isinstance(source, list | tuple):
        levels = list(source)
    else:
        levels = [source]
    if not levels:
        raise DataError("no image levels given")
    return [as_rgb_uint8(lv, what=f"level {i}") for i, lv in enumerate(levels)], slide


def _source_id(levels: list[Any], slide: Any, *, persistent: bool) -> str:
    """Names the source in cache keys; hashes array bytes only for the disk cache."""
    lr0 = levels[0]
    extra = (tuple(lr0.shape), str(lr0.dtype))
    if slide is not None and getattr(slide, "path", None) is not None:
        return source_identity(slide, extra=extra)
    if persistent or hasattr(lr0, "dask"):
        return source_identity(lr0, extra=extra)
    return uuid.uuid4().hex[:16]  # a numpy array in memory: unique per pyramid


def super_resolve(
    slide_levels_or_array: Any,
    model: Any,
    *,
    device: str = "auto",
    tile: int | None = None,
    batch: int | None = None,
    chunk_tiles: int = 1,
    scale: int | None = None,
    cache_mb: float = 512,
    disk_cache: bool | str = False,
    predictor: Any = None,
    precision: str = "auto",
    use_model: Callable[[int, int], bool] | None = None,
    region: tuple[int, int, int, int] | None = None,
    seed: int | None = None,
    placeholder: bool = False,
    live_piece: int = LIVE_PIECE,
    coding: CodingLike = None,
) -> SRPyramid:
    """Lazy multiscale SR of a Slide, a list of levels, or one (H, W, 3) array.

    `model`: an SRModel, or a bundled name / .safetensors path for `load_model`.
    `tile`: LR pixels per tile side (default 256 on CPU, 512 on GPU); `batch`: tiles
    per forward (default: the Predictor's); `chunk_tiles`: tiles per dask chunk side;
    `scale`: refuse a model of another scale; `cache_mb`: memory cache bound;
    `disk_cache`: True for the user cache folder, or a folder; `predictor`: reuse
    one (its device wins over `device`); `use_model(iy, ix)`: False makes tile
    (iy, ix) by bicubic up-sampling instead (background, see export.tissue_mask;
    indices of the region's grid); `region`: (x, y, w, h) in LR level-0 px, super-
    resolve only that part, with its tiles' halos reading the real pixels around it
    (equal to the crop of the whole-slide result); `seed`: the seed of a stochastic
    method (part of the cache key; ignored by deterministic ones); `placeholder`: for
    a viewer, level 0 is a `LiveLevel0` that answers at once with exact SR where it is
    computed and a marked bicubic placeholder elsewhere, computing the view in the
    background in pieces of at most `live_piece` LR px (off: level 0 is the exact,
    blocking dask array, as export and evaluation need; `exact_levels()` gives it in
    either mode); `coding`: how the LR is stored (`models.coding.CodingLike`, e.g.
    ('jpeg', 30)), told to a coding-conditioned model; None: a Slide's own `coding`,
    else unknown (a given `predictor` keeps its own). Nothing is computed here.

    The pyramid computes in this process (threads): its levels hold the model, the
    predictor and the tile caches, so they cannot be sent to a dask.distributed
    cluster; `inference.export.enhance_slide(..., scheduler=...)` runs an export there.
    Float input must lie in [0, 1]; a chunk with values outside it (or NaN) raises
    `DataError` when it is read.
    """
    levels, slide = _levels_of(slide_levels_or_array)
    model = resolve_model(model)
    check_scale(model, scale)
    max_batch = batch if batch is not None else getattr(predictor, "max_batch", 16)
    if coding is None and slide is not None:
        coding = getattr(slide, "coding", None)
    if predictor is not None:  # set_model keeps the given predictor's settings
        device, precision = predictor.device, getattr(predictor, "precision", precision)
        seed = getattr(predictor, "seed", seed)
        coding = getattr(predictor, "coding", coding)

    def make_predictor(m: Any, sample_seed: int | None = seed) -> Any:
        from napari_srgan_sqe.models.predictor import Predictor

        return Predictor(
            m,
            device=device,
            precision=precision,
            max_batch=max_batch,
            seed=sample_seed,
            coding=coding,
        )

    if predictor is None:
        predictor = make_predictor(model)
    if tile is None:
        tile = default_tile(str(getattr(predictor, "device_name", predictor.device)))
    if chunk_tiles < 1:
        raise DataError(f"chunk_tiles must be at least 1, got {chunk_tiles}")
    source_id = _source_id(levels, slide, persistent=bool(disk_cache))
    if region is not None:
        region = x, y, w, h = check_region(region, levels[0].shape)
        source_id = f"{source_id}-region-{x}-{y}-{w}-{h}"
    return SRPyramid(
        levels,
        model,
        predictor,
        source_id=source_id,
        tile=int(tile),
        chunk_tiles=int(chunk_tiles),
        batch=int(max_batch),
        cache_mb=cache_mb,
        disk_cache=disk_cache,
        predictor_factory=make_predictor,
        use_model=use_model,
        region=region,
        placeholder=placeholder,
        live_piece=live_piece,
    )
