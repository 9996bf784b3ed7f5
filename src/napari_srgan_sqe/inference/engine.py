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
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from napari_srgan_sqe.inference.cache import DiskTileCache, TileCache, source_identity
from napari_srgan_sqe.inference.level0 import EngineStats, _SRLevel0
from napari_srgan_sqe.inference.live import LIVE_IDLE_S as LIVE_IDLE_S
from napari_srgan_sqe.inference.live import (
    LIVE_PIECE,
    PLACEHOLDER_TINT,
    LiveLevel0,
)
from napari_srgan_sqe.inference.live import full_index as full_index
from napari_srgan_sqe.inference.live import index_box as index_box
from napari_srgan_sqe.inference.tiling import (
    BlockCache,
    DataError,
    TileGrid,
    as_rgb_uint8,
    bicubic_region,
    check_region,
    default_tile,
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
