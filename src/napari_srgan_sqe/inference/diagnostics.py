"""Where SR is not backed by the scan: the departure map and the spread of samples.

Departure (deterministic models). The scan fixes what SR must look like at LR size,
not the finer detail the model adds. Where that detail is not determined by the scan,
the model's answer depends on incidental things, such as which way up the slide lies:
turning the LR by 90 degrees, super-resolving it and turning the result back gives
another image there, and the same image where the scan decides. The departure of an
LR pixel is how much the SR of its s x s HR pixels changes over the four rotations
(0, 90, 180, 270 degrees): the standard deviation over the four results, in grey
levels (0-255), averaged over RGB and over the s x s block. Rotation 0 is SR itself,
so the map costs three more passes of the network over the same pixels. On held-out
H&E images it tracks the true error |SR - HR| better than the residual of SR against
the scan, |D_s(SR) - LR| (`consistency_residual`), which a model trained to keep
D_s(SR) = LR keeps small even where its detail is wrong: the measurements are in
docs/honest-sr.md and experiments/departure.py.

- `departure_region` is the map of a box of LR level 0 (each rotation reads the box
  with the model's halo, like a tile, so any box agrees with the whole-image map
  `departure_image` up to float rounding of the uint8 results);
- `departure_map(pyramid)` is the lazy map of a whole SR pyramid, one dask chunk per
  SR tile, reading SR through the pyramid's tile cache (rotation 0 is never computed
  twice); `write_departure_tiff` writes it as a float32 TIFF;
- `LiveDeparture(pyramid)` is the viewer's: array-like levels that never block, the
  map of the view computed in the background from the SR the viewer computed (it asks
  the pyramid's live level for SR it lacks and computes no SR itself; a pyramid
  without a live level gives it the exact SR).

Spread (stochastic models). `spread_map` super-resolves one region with several seeds
(`super_resolve(..., region=, seed=k)`, exact levels) and returns the per-pixel
standard deviation over the samples, averaged over RGB, on the HR grid: where the
model is guessing, samples differ. A deterministic model gives exactly zero.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_srgan_sqe.inference.background import missing_pieces, notify, track
from napari_srgan_sqe.inference.engine import full_index, index_box

__all__ = [
    "DEPARTURE_LIMIT",
    "ROTATIONS",
    "LiveDeparture",
    "SpreadResult",
    "consistency_residual",
    "departure_image",
    "departure_map",
    "departure_region",
    "disagreement",
    "iter_spread",
    "pool_lr",
    "spread_map",
    "write_departure_tiff",
    "write_map_tiff",
]

log = logging.getLogger(__name__)

ROTATIONS = (0, 1, 2, 3)
"""Quarter turns of the LR whose SR results are compared (0 is SR itself)."""
DEPARTURE_LIMIT = 4.0
"""Departure (grey levels) shown at full colour in the viewer: the 99th percentile of
the default model's map on the whole bundled sample slide (20x, LR as a scanner
stores it); above the 99.5th percentile on the held-out 40x images (2.2 to 3.3 for
the bundled models) (docs/honest-sr.md)."""
PIECE = 256
"""Largest side (LR px) of one piece of the view computed by `LiveDeparture`."""
IDLE_S = 30.0
"""`LiveDeparture`'s worker thread ends after this many idle seconds (restarted on need)."""


# ------------------------------------------------------------------ the statistic
def pool_lr(values: np.ndarray, scale: int) -> np.ndarray:
    """Mean over each s x s block of an HR-grid array (H, W[, C]) -> (H / s, W / s[, C])."""
    s = int(scale)
    h, w = values.shape[0] // s, values.shape[1] // s
    v = values[: h * s, : w * s]
    return v.reshape(h, s, w, s, *v.shape[2:]).mean(axis=(1, 3))


def _rotated_sr(predictor: Any, lr_halo: np.ndarray, k: int) -> np.ndarray:
    """SR of the LR box read with the halo, computed on the box turned by k quarter
    turns and turned back (uint8, the box's HR pixels)."""
    turned = np.ascontiguousarray(np.rot90(lr_halo, k))
    sr = predictor.run(turned[None], crop=int(predictor.halo))[0]
    return np.ascontiguousarray(np.rot90(sr, -k))


def disagreement(members: Sequence[np.ndarray], scale: int) -> np.ndarray:
    """Std over the SR results (HR grid, RGB), mean over RGB, pooled to LR: float32 (h, w)."""
    stack = np.stack([np.asarray(m, np.float32) for m in members])
    spread = stack.std(axis=0).mean(axis=-1)
    return pool_lr(spread, scale).astype(np.float32)


def departure_region(
    lr0: Any,
    predictor: Any,
    y0: int,
    y1: int,
    x0: int,
    x1: int,
    *,
    sr: np.ndarray | None = None,
    rotations: Sequence[int] = ROTATIONS,
) -> np.ndarray:
    """The departure map (float32, grey levels) of the box [y0, y1) x [x0, x1) of LR
    level 0 `lr0` (any array-like), with the model of `predictor`.

    `sr`: the SR of the box (uint8, what rotation 0 gives), when it is already computed.
    """
    from napari_srgan_sqe.inference.tiling import read_region

    _check_deterministic(predictor.model)
    x = read_region(lr0, y0, y1, x0, x1, halo=int(predictor.halo))
    members = []
    for k in rotations:
        if k % 4 == 0 and sr is not None:
            members.append(np.asarray(sr))
        else:
            members.append(_rotated_sr(predictor, x, k % 4))
    return disagreement(members, int(predictor.scale))


def departure_image(lr: np.ndarray, model: Any, *, device: str = "cpu") -> np.ndarray:
    """The whole-image reference map of an LR image (H, W, 3) uint8: each rotation of
    the image padded with its halo (half-sample symmetric), as `Predictor.predict_image`."""
    from napari_srgan_sqe.inference.engine import resolve_model
    from napari_srgan_sqe.models.predictor import Predictor

    lr = np.asarray(lr)
    predictor = Predictor(resolve_model(model), device=device)
    return departure_region(lr, predictor, 0, lr.shape[0], 0, lr.shape[1])


def consistency_residual(sr: np.ndarray, lr: np.ndarray, scale: int) -> np.ndarray:
    """|D_s(SR) - LR| per LR pixel, mean over RGB, in grey levels (float32, LR grid).

    The other candidate measured in docs/honest-sr.md: where SR contradicts the scan.
    `sr` is the SR of the whole LR image `lr` (D_s pads symmetrically at its border).
    """
    from napari_srgan_sqe.degradation import degrade

    down = degrade(np.asarray(sr, np.float64) / 255.0, scale).astype(np.float64) * 255.0
    return np.abs(down - np.asarray(lr, np.float64)).mean(axis=-1).astype(np.float32)


# ------------------------------------------------------------------ lazy, exact map
def _lr_source(pyramid: Any) -> tuple[Any, int, int]:
    """(LR level 0, y offset, x offset) of the pyramid's grid in that level."""
    region = getattr(pyramid, "region", None)
    x, y = (int(region[0]), int(region[1])) if region is not None else (0, 0)
    return pyramid.lr_levels[0], y, x


def _check_deterministic(model: Any) -> None:
    """ValueError for a stochastic model (the departure map is for deterministic ones)."""
    if model.descriptor.stochastic:
        raise ValueError(
            f"the departure map is for deterministic models; {model.name!r} is "
            "stochastic: use the spread of its samples (spread_map)"
        )


def departure_map(pyramid: Any) -> Any:
    """The departure map of a whole SR pyramid, lazily: a dask array (H, W) float32 on
    the LR level-0 grid of the pyramid, one chunk per SR tile.

    Each chunk reads its SR tile through the pyramid (memory and disk caches, and what
    a viewer computed), so rotation 0 is computed at most once, and adds the three
    turned passes. Made for the pyramid's current model: make it again after
    `set_model`. Nothing is computed here.
    """
    import dask.array as da

    _check_deterministic(pyramid.model)
    grid, predictor = pyramid.grid, pyramid.predictor
    lr0, oy, ox = _lr_source(pyramid)
    t = grid.tile

    def sizes(n: int) -> tuple[int, ...]:
        return tuple(min(t, n - i) for i in range(0, n, t))

    def chunk(block_id: tuple[int, ...] = (0, 0)) -> np.ndarray:
        iy, ix = block_id[0], block_id[1]
        (sr,) = pyramid.tiles([(iy, ix)])
        y0, y1, x0, x1 = grid.bounds(iy, ix)
        return departure_region(lr0, predictor, y0 + oy, y1 + oy, x0 + ox, x1 + ox, sr=sr)

    return da.map_blocks(
        chunk,
        chunks=(sizes(grid.height), sizes(grid.width)),
        dtype=np.float32,
        meta=np.empty((0, 0), np.float32),
        name=f"srgan-sqe-departure-{pyramid.model_id}-{uuid.uuid4().hex[:12]}",
    )


def write_departure_tiff(
    pyramid: Any,
    path: str | Path,
    *,
    region: tuple[int, int, int, int] | None = None,
    mpp: float | None = None,
    source: str | None = None,
) -> Path:
    """Write the departure map (float32 grey levels, LR grid) as a tiled TIFF.

    `region` (x, y, w, h) in the pyramid's LR px limits it (and the SR it needs) to
    that part; `mpp`: the LR pixel size in um, written as the TIFF resolution; the
    description names the model, `source` (e.g. the slide's name) and the region. Written
    tile by tile (memory stays bounded on a whole slide) to a temporary file that is
    renamed when complete. Returns the path.
    """
    full = departure_map(pyramid)
    if region is not None:
        x, y, w, h = (int(v) for v in region)
        if w <= 0 or h <= 0 or x < 0 or y < 0 or y + h > full.shape[0] or x + w > full.shape[1]:
            raise ValueError(
                f"region {x},{y},{w},{h} is not inside the {full.shape[1]} x {full.shape[0]} map"
            )
        full = full[y : y + h, x : x + w]
    return write_map_tiff(path, full, mpp=mpp, description=_description(pyramid, region, source))


def _description(
    pyramid: Any, region: tuple[int, int, int, int] | None = None, source: str | None = None
) -> str:
    """What a saved map is: the measure, the model, and where it lies (the source's
    name, and the region x, y, w, h in LR level-0 px)."""
    where = f", source {source}" if source else ""
    if region is not None:
        where += ", region x,y,w,h " + ",".join(str(int(v)) for v in region) + " (LR px)"
    return (
        "departure of SR from the scan: std over 4 rotations of the SR, grey levels "
        f"(0-255), one value per LR pixel, model {pyramid.model.name}{where}"
    )


def write_map_tiff(
    path: str | Path, values: Any, *, mpp: float | None = None, description: str = ""
) -> Path:
    """Write a 2-D map (numpy or dask, float32) as a tiled TIFF, 256 px tiles read one
    at a time, to a temporary file renamed when complete; `mpp`: its pixel size in
    um (the TIFF resolution). Returns the path."""
    import tifffile

    from napari_srgan_sqe.io.atomic import atomic_path

    side = 256
    height, width = (int(v) for v in values.shape[:2])

    def tiles() -> Iterator[np.ndarray]:
        for ty in range(0, height, side):
            for tx in range(0, width, side):
                block = values[ty : ty + side, tx : tx + side]
                block = np.asarray(block.compute() if hasattr(block, "compute") else block)
                out = np.zeros((side, side), np.float32)
                out[: block.shape[0], : block.shape[1]] = block
                yield out

    extra: dict[str, Any] = {}
    if mpp:
        extra = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    path = Path(path)
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            tiles(),
            shape=(height, width),
            dtype=np.float32,
            tile=(side, side),
            photometric="minisblack",
            description=description,
            metadata=None,
            **extra,
        )
    return path


# ------------------------------------------------------------------ the viewer's map
class _MapStore:
    """Map values per LR pixel in cells of `cell` x `cell`, with a mask of those
    computed. Bounded LRU by megabytes; thread-safe."""

    def __init__(self, cell: int = 64, max_mb: float = 64) -> None:
        self.cell = int(cell)
        self.max_bytes = int(max_mb * 2**20)
        self._cells: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def _parts(self, y0: int, y1: int, x0: int, x1: int) -> Iterator[tuple[Any, ...]]:
        c = self.cell
        for cy in range(y0 // c, (y1 - 1) // c + 1):
            for cx in range(x0 // c, (x1 - 1) // c + 1):
                by0, by1 = max(y0, cy * c), min(y1, (cy + 1) * c)
                bx0, bx1 = max(x0, cx * c), min(x1, (cx + 1) * c)
                yield (cy, cx), by0, by1, bx0, bx1, by0 - cy * c, bx0 - cx * c

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """(values, computed mask) of the box; zeros where not computed."""
        values = np.zeros((max(0, y1 - y0), max(0, x1 - x0)), np.float32)
        mask = np.zeros(values.shape, bool)
        if values.size == 0:
            return values, mask
        with self._lock:
            for key, by0, by1, bx0, bx1, oy, ox in self._parts(y0, y1, x0, x1):
                entry = self._cells.get(key)
                if entry is None:
                    continue
                self._cells.move_to_end(key)
                h, w = by1 - by0, bx1 - bx0
                values[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] = entry[0][
                    oy : oy + h, ox : ox + w
                ]
                mask[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] = entry[1][oy : oy + h, ox : ox + w]
        return values, mask

    def write(self, y0: int, y1: int, x0: int, x1: int, values: np.ndarray) -> None:
        c = self.cell
        with self._lock:
            for key, by0, by1, bx0, bx1, oy, ox in self._parts(y0, y1, x0, x1):
                entry = self._cells.pop(key, None)
                if entry is None:
                    entry = (np.zeros((c, c), np.float32), np.zeros((c, c), bool))
                h, w = by1 - by0, bx1 - bx0
                entry[0][oy : oy + h, ox : ox + w] = values[
                    by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0
                ]
                entry[1][oy : oy + h, ox : ox + w] = True
                self._cells[key] = entry
            per_cell = c * c * 5
            while len(self._cells) * per_cell > self.max_bytes and len(self._cells) > 1:
                self._cells.popitem(last=False)

    def pooled(self, y0: int, y1: int, x0: int, x1: int, factor: int) -> np.ndarray:
        """Mean of the computed values over each `factor` x `factor` block of LR px, for
        the box [y0, y1) x [x0, x1) of the pooled grid; 0 where none is computed."""
        f, c = int(factor), self.cell
        total = np.zeros((max(0, y1 - y0), max(0, x1 - x0)), np.float64)
        count = np.zeros_like(total)
        if total.size == 0:
            return total.astype(np.float32)
        with self._lock:
            cells = [(k, v) for k, v in self._cells.items()
                     if k[0] * c < y1 * f and (k[0] + 1) * c > y0 * f
                     and k[1] * c < x1 * f and (k[1] + 1) * c > x0 * f]  # fmt: skip
        for (cy, cx), (values, mask) in cells:
            iy, ix = np.nonzero(mask)
            py, px = (cy * c + iy) // f - y0, (cx * c + ix) // f - x0
            keep = (py >= 0) & (py < total.shape[0]) & (px >= 0) & (px < total.shape[1])
            np.add.at(total, (py[keep], px[keep]), values[iy[keep], ix[keep]])
            np.add.at(count, (py[keep], px[keep]), 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1.0), 0.0).astype(np.float32)

    def clear(self) -> None:
        with self._lock:
            self._cells.clear()


class _MapLevel:
    """One level of the viewer's map, an array-like (2-D float32) for napari."""

    def __init__(self, owner: LiveDeparture, shape: tuple[int, int], level: int) -> None:
        self.owner, self.level = owner, level
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(np.float32)
        self.ndim = 2
        self.size = self.shape[0] * self.shape[1]

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self._read(0, self.shape[0], 0, self.shape[1], request=False)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        found = index_box(full_index(key, 2), self.shape)
        if found is None:
            return np.empty((0, 0), np.float32)
        ((y0, y1), (x0, x1)), local = found
        region = self._read(y0, y1, x0, x1, request=True)
        if isinstance(local[0], np.ndarray) and isinstance(local[1], np.ndarray):
            return region[local[0]][:, local[1]]
        return region[local[0], local[1]]

    def _read(self, y0: int, y1: int, x0: int, x1: int, *, request: bool) -> np.ndarray:
        o = self.owner
        if self.level == 0:  # the HR grid: each LR value repeated s x s
            s = o.scale
            ly0, ly1, lx0, lx1 = y0 // s, -(-y1 // s), x0 // s, -(-x1 // s)
            values = o.read(ly0, ly1, lx0, lx1, request=request)
            full = np.repeat(np.repeat(values, s, axis=0), s, axis=1)
            return full[y0 - ly0 * s : y1 - ly0 * s, x0 - lx0 * s : x1 - lx0 * s]
        return o.pooled(y0, y1, x0, x1, o.factors[self.level])


class LiveDeparture:
    """The departure map for a viewer: levels that never block, filled in the background.

    `levels` matches the SR pyramid's levels in shape (level 0 on the HR grid, each LR
    value repeated s x s; the coarser levels on the LR pyramid's grids), so napari
    picks the same level for the map as for SR at every zoom. Reading level 0 returns
    the map where it is computed and 0 elsewhere, and queues the box read last (the
    view; a new view replaces it); a background thread computes it in pieces of at most
    `piece` LR px, centre first, from the SR of the piece: the SR the viewer computed
    (the pyramid's live level), which it asks the live level for when it is missing,
    or the exact SR when the pyramid has no live level. The coarser levels show the
    mean of what is computed (they never start work: at those zooms the viewer shows
    LR, and computes no SR either). Every function in `listeners` is called (any
    thread) with "landed" when a piece lands and "failed" when one fails. A new model
    of the pyramid (`set_model`) clears the map; it is computed again with that model.
    """

    def __init__(self, pyramid: Any, *, piece: int = PIECE, max_mb: float = 64) -> None:
        _check_deterministic(pyramid.model)
        self.pyramid = pyramid
        self.piece = max(16, int(piece))
        self.scale = int(pyramid.scale)
        levels = pyramid.exact_levels()
        h0, w0 = (int(v) for v in levels[0].shape[:2])
        self.height, self.width = h0 // self.scale, w0 // self.scale
        self.factors = [1] + [
            max(1, round(self.height / max(1, int(lv.shape[0])))) for lv in levels[1:]
        ]
        self.levels = [_MapLevel(self, (h0, w0), 0)] + [
            _MapLevel(self, (int(lv.shape[0]), int(lv.shape[1])), k)
            for k, lv in enumerate(levels[1:], start=1)
        ]
        self.store = _MapStore(max_mb=max_mb)
        self.listeners: list[Callable[[str], None]] = []
        self.error: str | None = None
        self.pieces_done = 0
        self.model_id = str(pyramid.model_id)
        self._cond = threading.Condition()
        self._want: tuple[int, int, int, int] | None = None
        self._dirty = False
        self._running = False
        self._asked: tuple[str, tuple[int, int, int, int]] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        pyramid.listeners.append(self._on_sr)

    # ---------------------------------------------------------------- reading
    def _check_model(self) -> None:
        model_id = str(self.pyramid.model_id)
        if model_id != self.model_id:
            self.model_id = model_id
            self.store.clear()
            with self._cond:
                self._asked = None
                self._dirty = True
                self._cond.notify_all()

    def read(self, y0: int, y1: int, x0: int, x1: int, *, request: bool = True) -> np.ndarray:
        """Map values of the LR box (0 where not computed yet); queues what is missing."""
        self._check_model()
        y0, x0 = max(0, y0), max(0, x0)
        y1, x1 = min(self.height, y1), min(self.width, x1)
        values, mask = self.store.read(y0, y1, x0, x1)
        if request and mask.size and not mask.all():
            self._request((y0, y1, x0, x1))
        return values

    def pooled(self, y0: int, y1: int, x0: int, x1: int, factor: int) -> np.ndarray:
        self._check_model()
        return self.store.pooled(y0, y1, x0, x1, factor)

    def missing(self, y0: int, y1: int, x0: int, x1: int) -> int:
        """LR pixels of the box whose map value is not computed yet."""
        return int((~self.store.read(y0, y1, x0, x1)[1]).sum())

    def write_tiff(
        self,
        path: str | Path,
        region: tuple[int, int, int, int],
        *,
        mpp: float | None = None,
        source: str | None = None,
    ) -> Path:
        """Write the map of `region` (x, y, w, h, LR px) as a TIFF (`write_map_tiff`): the
        values computed for the viewer when all are, else the exact map
        (`write_departure_tiff`, computing what is missing). `mpp`: LR pixel size, um."""
        self._check_model()
        x, y, w, h = (int(v) for v in region)
        values, mask = self.store.read(y, y + h, x, x + w)
        if mask.size and mask.all() and values.shape == (h, w):
            text = _description(self.pyramid, (x, y, w, h), source)
            return write_map_tiff(path, values, mpp=mpp, description=text)
        return write_departure_tiff(self.pyramid, path, region=(x, y, w, h), mpp=mpp, source=source)

    # ---------------------------------------------------------------- the worker
    def _request(self, box: tuple[int, int, int, int]) -> None:
        with self._cond:
            if self._closed:
                return
            if box != self._want:
                self._want = box
            self._dirty = True
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="srgan-sqe-departure", daemon=True
                )
                self._thread.start()
                track(self)
            self._cond.notify_all()

    def _on_sr(self, event: str) -> None:  # the pyramid's live level, any thread
        if event in ("landed", "failed"):
            with self._cond:
                if self._want is not None:
                    self._dirty = True
                    self._cond.notify_all()

    @property
    def busy(self) -> bool:
        """True while the map of the last box read is not complete and work may come."""
        with self._cond:
            box, running, dirty = self._want, self._running, self._dirty
        if running or dirty:
            return True
        return box is not None and self.missing(*box) > 0 and self._sr_busy()

    def _sr_busy(self) -> bool:
        live = getattr(self.pyramid, "live", None)
        return bool(live is not None and live.busy)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until the map of the last box read is complete or no work is left."""
        import time

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.busy:
                return True
            time.sleep(0.02)
        return False

    def close(self, timeout: float | None = None) -> None:
        """Stop the worker after its current piece (waiting for it up to `timeout`
        seconds when given) and stop listening to the pyramid."""
        with self._cond:
            self._closed = True
            self._want = None
            thread = self._thread
            self._cond.notify_all()
        try:
            self.pyramid.listeners.remove(self._on_sr)
        except ValueError:
            pass
        if timeout is not None and thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _notify(self, event: str) -> None:
        notify(self.listeners, event, "departure map")

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._dirty, IDLE_S)
                if self._closed or not self._dirty:
                    self._thread = None
                    return
                self._dirty, self._running = False, True
                box = self._want
            try:
                if box is not None:
                    self._fill(box)
            except Exception as exc:  # noqa: BLE001 - shown as a status, never raised in napari
                self.error = str(exc) or type(exc).__name__
                log.warning("departure map of a view piece failed: %s", self.error)
                with self._cond:
                    self._want = None
                self._notify("failed")
            finally:
                with self._cond:
                    self._running = False

    def _stale(self, box: tuple[int, int, int, int]) -> bool:
        with self._cond:
            return self._closed or self._want != box

    def _fill(self, box: tuple[int, int, int, int]) -> None:
        """Compute the missing map of `box`, piece by piece, centre first; a piece whose
        SR the viewer has not computed yet waits for it (the worker runs again when SR
        lands)."""
        self._check_model()
        for piece in self._pieces(box):
            if self._stale(box):
                return
            model_id = self.model_id
            pyramid = self.pyramid
            sr = self._sr_of(piece, box)
            if sr is None:
                continue
            lr0, oy, ox = _lr_source(pyramid)
            y0, y1, x0, x1 = piece
            values = departure_region(
                lr0, pyramid.predictor, y0 + oy, y1 + oy, x0 + ox, x1 + ox, sr=sr
            )
            if str(pyramid.model_id) != model_id:  # switched meanwhile: drop it
                continue
            self.store.write(y0, y1, x0, x1, values)
            self.pieces_done += 1
            self._notify("landed")

    def _pieces(self, box: tuple[int, int, int, int]) -> list[tuple[int, int, int, int]]:
        y0, y1, x0, x1 = box
        _, mask = self.store.read(y0, y1, x0, x1)
        return missing_pieces(mask, y0, x0, self.piece)

    def _sr_of(
        self, piece: tuple[int, int, int, int], box: tuple[int, int, int, int]
    ) -> np.ndarray | None:
        """The SR of the piece: what the viewer computed, else None after asking the
        live level for the view's SR once; the exact SR without a live level."""
        pyramid, s = self.pyramid, self.scale
        live = getattr(pyramid, "live", None)
        y0, y1, x0, x1 = piece
        if live is None:
            return np.asarray(pyramid.exact_levels()[0][y0 * s : y1 * s, x0 * s : x1 * s])
        sr = live.store.read_complete(y0, y1, x0, x1)
        if sr is not None:
            return sr
        ask = (self.model_id, box)
        if self._asked != ask and not live.busy:  # nobody computes it: ask for the view's SR
            self._asked = ask
            live.region(*box)
        return None


# ------------------------------------------------------------------ spread of samples
@dataclass(frozen=True)
class SpreadResult:
    """The spread of `len(seeds)` samples of a region (x, y, w, h in LR px)."""

    values: np.ndarray
    """(h s, w s) float32: std over the samples (grey levels), mean over RGB, HR grid."""
    region: tuple[int, int, int, int]
    seeds: tuple[int, ...]
    stochastic: bool
    model: str
    psnr: tuple[float, ...] = ()
    """PSNR of each sample against the reference HR (dB, all channels), when one was given."""

    @property
    def psnr_mean(self) -> float | None:
        return float(np.mean(self.psnr)) if self.psnr else None

    @property
    def psnr_sd(self) -> float | None:
        """The spread of the samples' PSNR (population standard deviation, dB)."""
        return float(np.std(self.psnr)) if self.psnr else None

    @property
    def mean(self) -> float:
        return float(self.values.mean()) if self.values.size else 0.0

    def pooled(self, block: int) -> np.ndarray:
        """`values` averaged over `block` x `block` px blocks (partial at the edges) and
        spread back over them: same shape. Per pixel the spread of a few samples is
        mostly sampling grain; per block (one LR pixel at `block` = the scale) it shows
        where the samples disagree."""
        v, b = self.values, max(1, int(block))
        if b == 1 or not v.size:
            return v
        h, w = v.shape
        H, W = -(-h // b) * b, -(-w // b) * b
        padded = np.pad(v, ((0, H - h), (0, W - w)))
        counts = np.pad(np.ones_like(v), ((0, H - h), (0, W - w)))
        sums = padded.reshape(H // b, b, W // b, b).sum(axis=(1, 3))
        n = counts.reshape(H // b, b, W // b, b).sum(axis=(1, 3))
        means = (sums / n).astype(np.float32)
        return np.repeat(np.repeat(means, b, axis=0), b, axis=1)[:h, :w]

    @property
    def max(self) -> float:
        return float(self.values.max()) if self.values.size else 0.0


def iter_spread(
    lr: Any,
    model: Any,
    region: tuple[int, int, int, int],
    seeds: Sequence[int] = (0, 1, 2, 3),
    *,
    device: str = "auto",
    tile: int | None = None,
    stop: threading.Event | None = None,
    reference: Any = None,
) -> Generator[int, None, SpreadResult | None]:
    """`spread_map` step by step: yields the number of samples done after each one and
    returns the `SpreadResult` (None when `stop` was set before the last sample).
    `reference`: the HR pixels of the region ((h s, w s, 3) uint8), to score each sample
    (`SpreadResult.psnr`)."""
    from napari_srgan_sqe.inference.engine import resolve_model, super_resolve
    from napari_srgan_sqe.metrics import psnr

    seeds = tuple(int(k) for k in seeds)
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"the spread needs at least two different seeds, got {seeds}")
    model = resolve_model(model)
    x, y, w, h = (int(v) for v in region)
    n = 0
    scores: list[float] = []
    hr = None if reference is None else np.asarray(reference)
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    for k in seeds:
        if stop is not None and stop.is_set():
            return None
        pyramid = super_resolve(lr, model, device=device, tile=tile, region=(x, y, w, h), seed=k)
        drawn = np.asarray(pyramid.exact_levels()[0])
        if hr is not None:
            scores.append(float(psnr(drawn, hr)))
        sample = drawn.astype(np.float32)
        n += 1
        if mean is None or m2 is None:  # Welford: one pass, float32 accumulators
            mean, m2 = sample.copy(), np.zeros_like(sample)
        else:
            delta = sample - mean
            mean += delta / n
            m2 += delta * (sample - mean)
        yield n
    assert m2 is not None
    values = np.sqrt(np.maximum(m2 / (n - 1), 0.0)).mean(axis=-1).astype(np.float32)
    return SpreadResult(
        values=values,
        region=(x, y, w, h),
        seeds=seeds,
        stochastic=bool(model.descriptor.stochastic),
        model=str(model.name),
        psnr=tuple(scores),
    )


def spread_map(
    lr: Any,
    model: Any,
    region: tuple[int, int, int, int],
    seeds: Sequence[int] = (0, 1, 2, 3),
    *,
    device: str = "auto",
    tile: int | None = None,
    progress: Callable[[int, int], Any] | None = None,
) -> SpreadResult:
    """The per-pixel spread of a model's samples over a region of LR level 0.

    `lr`: a Slide, a list of levels or one (H, W, 3) array; `region`: (x, y, w, h) in
    LR level-0 px (only that region is super-resolved, with its tiles' halos read
    from the real pixels around it); `seeds`: one sample each (at least two). Returns
    the standard deviation over the samples (n - 1 in the denominator) of each HR
    pixel, averaged over RGB, in grey levels: (h s, w s) float32. A deterministic
    model gives every seed the same image, so its spread is exactly zero.
    `progress(done, total)` is called after each sample.
    """
    gen = iter_spread(lr, model, region, seeds, device=device, tile=tile)
    total = len(tuple(seeds))
    while True:
        try:
            done = next(gen)
        except StopIteration as end:
            result = end.value
            assert result is not None
            return result
        if progress is not None:
            progress(done, total)
