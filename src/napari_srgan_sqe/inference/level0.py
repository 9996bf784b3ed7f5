"""SR level 0 of one LR level, tile by tile (`_SRLevel0`): the prediction core of
`inference.engine`.

A chunk of the dask level is stitched from grid tiles; a tile comes from the memory
cache, the disk cache, the live store (what placeholder mode computed), another
thread's computation of it, or the network: tiles are read with the halo, batched with
other threads' through the Predictor (`batching.Combiner`) and counted in
`EngineStats`. `inference.engine` re-exports `EngineStats`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from napari_srgan_sqe.inference.batching import combiner_for
from napari_srgan_sqe.inference.cache import DiskTileCache, LiveStore, TileCache
from napari_srgan_sqe.inference.tiling import TileGrid, bicubic_region, read_region


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
