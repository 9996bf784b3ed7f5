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
- Caches: a bounded LRU of SR tiles in memory and optionally a zarr on disk, both
  keyed by the model identity (cache.py); `set_model` switches to a new key space and
  rebuilds the dask arrays under new names, so napari's dask cache cannot serve stale
  tiles either.

Geometry (docs/architecture.md, pixel-centre convention): SR pixel (i, j) of level 0
is HR pixel (i, j); with LR as the reference frame, SR level 0 has scale 1/s and
translate -(s - 1) / (2 s) in LR pixel units (`SRPyramid.layer_transform`).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from napari_srgan_sqe.inference.batching import combiner_for
from napari_srgan_sqe.inference.cache import DiskTileCache, TileCache, source_identity
from napari_srgan_sqe.inference.tiling import (
    BlockCache,
    DataError,
    TileGrid,
    as_rgb_uint8,
    bicubic_region,
    default_tile,
    read_region,
)

__all__ = [
    "DataError",
    "EngineStats",
    "SRPyramid",
    "as_rgb_uint8",
    "bicubic_region",
    "check_scale",
    "model_key",
    "resolve_model",
    "super_resolve",
]


@dataclass
class EngineStats:
    """Counters of one SR pyramid (a snapshot is returned by `SRPyramid.stats`)."""

    tiles_computed: int = 0
    cache_hits: int = 0
    disk_hits: int = 0
    pending: int = 0
    forward_seconds: float = 0.0
    output_mpx: float = 0.0

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
            else:
                todo.append(t)
        if not todo:
            return out
        inputs = [read_region(self.lr, *self._lr_bounds(*t), halo=self.halo) for t in todo]
        with self._stats_lock:
            self.stats.pending += len(todo)
        try:
            results = self.combiner.compute(inputs, self.halo)
        finally:
            with self._stats_lock:
                self.stats.pending -= len(todo)
        for t, (tile, seconds) in zip(todo, results):
            self.cache.put(self._key(*t), tile)
            if self.disk is not None:
                self.disk.put(*t, tile)
            out[t] = tile
            with self._stats_lock:
                self.stats.tiles_computed += 1
                self.stats.forward_seconds += seconds
                self.stats.output_mpx += tile.shape[0] * tile.shape[1] / 1e6
        return out


class SRPyramid(list):
    """The lazy SR pyramid: a list of dask arrays (finest first) with engine state.

    Level 0 is the model's output at s x LR level 0; level k >= 1 is LR level k - 1.
    With a `region` (x, y, w, h), level 0 is the SR of that part of LR level 0 (its
    tiles' halos read the real pixels around it) and level 1 is that LR crop.
    `set_model` may be called from any thread.
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
        predictor_factory: Callable[[Any], Any],
        use_model: Callable[[int, int], bool] | None = None,
        region: tuple[int, int, int, int] | None = None,
    ) -> None:
        super().__init__()
        self.use_model = use_model
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
        model_id = model_key(model, getattr(predictor, "seed", None))
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
            self.model, self.predictor, self.model_id = model, predictor, model_id
            self.disk_cache, self._level0 = disk, level0
            self[:] = levels

    @property
    def scale(self) -> int:
        return int(self.predictor.scale)

    @property
    def halo(self) -> int:
        return int(self.predictor.halo)

    @property
    def stats(self) -> EngineStats:
        """A snapshot of the counters (tiles computed, cache hits, pending, rates)."""
        with self._stats_lock:
            return EngineStats(**asdict(self._stats))

    def set_model(self, model: Any) -> None:
        """Switch to another model: new dask arrays (new names), a fresh cache key space.

        Thread-safe (widgets call it from worker threads): switches are serialised and
        the new state is built completely before it replaces the old one at once. A
        model of another scale raises DataError and changes nothing.
        """
        model = resolve_model(model)
        with self._switch_lock:
            check_scale(model, self.scale)
            self._install(model, self._make_predictor(model))

    def clear_cache(self, *, disk: bool = False) -> None:
        """Forget computed tiles in memory (and on disk for this model and source)."""
        self.cache.clear()
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


def model_key(model: Any, seed: int | None) -> str:
    """The model's part of every cache key: its identity, and the seed when the method
    is stochastic. Refuses methods the halo-tiled engine cannot run exactly."""
    desc = model.descriptor
    if desc.tiling != "halo":
        raise DataError(
            f"model {model.name!r} needs {desc.tiling!r} tiling; this engine runs methods "
            "with a finite receptive field ('halo' tiling)"
        )
    if desc.stochastic:
        return f"{model.identity}-seed{0 if seed is None else int(seed)}"
    return str(model.identity)


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
    method (part of the cache key; ignored by deterministic ones). Nothing is computed
    here.
    """
    levels, slide = _levels_of(slide_levels_or_array)
    model = resolve_model(model)
    check_scale(model, scale)
    max_batch = batch if batch is not None else getattr(predictor, "max_batch", 16)
    if predictor is not None:  # set_model keeps the given predictor's settings
        device, precision = predictor.device, getattr(predictor, "precision", precision)
        seed = getattr(predictor, "seed", seed)

    def make_predictor(m: Any) -> Any:
        from napari_srgan_sqe.models.predictor import Predictor

        return Predictor(m, device=device, precision=precision, max_batch=max_batch, seed=seed)

    if predictor is None:
        predictor = make_predictor(model)
    if tile is None:
        tile = default_tile(str(getattr(predictor, "device_name", predictor.device)))
    if chunk_tiles < 1:
        raise DataError(f"chunk_tiles must be at least 1, got {chunk_tiles}")
    source_id = _source_id(levels, slide, persistent=bool(disk_cache))
    if region is not None:
        x, y, w, h = (int(v) for v in region)
        height, width = int(levels[0].shape[0]), int(levels[0].shape[1])
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
            raise DataError(f"region {x},{y},{w},{h} is not inside the {width} x {height} image")
        region = (x, y, w, h)
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
    )
