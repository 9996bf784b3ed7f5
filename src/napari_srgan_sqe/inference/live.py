"""The live SR level 0 of a viewer (placeholder mode, `LiveLevel0`): never blocks on
the network; the view is computed in the background, in pieces, centre first. Also the
index helpers of array-like levels (`full_index`, `index_box`). `inference.engine`
re-exports these names.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from napari_srgan_sqe.inference.background import missing_pieces, notify, track
from napari_srgan_sqe.inference.cache import LiveStore
from napari_srgan_sqe.inference.level0 import _SRLevel0
from napari_srgan_sqe.inference.tiling import bicubic_preview

log = logging.getLogger(__name__)


PLACEHOLDER_TINT = (112, 136, 224, 3)
"""Placeholder marking: RGB of a light blue veil, blended in with weight 1 / 2^3."""
LIVE_PIECE = 320
"""Largest side (LR px) of one piece of a view computed in placeholder mode."""
LIVE_IDLE_S = 30.0
"""A placeholder-mode worker thread ends after this many idle seconds (restarted on need)."""


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
