"""The OME-Zarr side of `io.pyramid`: the pyramid to write (`_Pyramid`, its units),
the chunk-by-chunk resumable writer of its levels into a zarr group (`_write_levels`,
with the `.incomplete` resume record) and the NGFF metadata (`_ngff_attrs`).

`io.pyramid` holds the public writers and re-exports what callers name from here
(tests patch `io.pyramid._write_levels`: the writers look it up there).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar, cast

import dask
import dask.array as da
import numcodecs
import numpy as np
import zarr

from napari_srgan_sqe.io._formats import INCOMPLETE_MARKER
from napari_srgan_sqe.io.atomic import atomic_path, remove_path, remove_stale_temporaries

log = logging.getLogger(__name__)


Progress = Callable[[int, int], None]
NGFF_VERSION = "0.4"
EVERY_CHUNK_STORED = "every_chunk_stored"
"""Key in the NGFF `multiscales[0].metadata` of this plugin's exports: True when every
chunk of every level was written (none left out as equal to the fill value), so a
missing chunk is a lost one (`open_slide` refuses to read it as black)."""
_SETTLE_SECONDS = 10.0  # after a failed write, wait this long for zarr's pending I/O
_MAX_UNIT = 4  # a unit spans at most this many output chunks per axis


@dataclass(frozen=True)
class _Unit:
    level: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def key(self) -> str:
        return f"{self.level}/{self.y0}/{self.x0}/{self.y1}/{self.x1}"


@dataclass
class _Pyramid:
    given: list[Any]  # dask arrays (y, x, 3) uint8 supplied by the caller
    shapes: list[tuple[int, int]]  # (y, x) of every level, given and built
    factors: list[tuple[float, float]]  # level-0 size over level size, per axis


def _pyramid(levels: Any, *, chunk: int, n_levels: int | None) -> _Pyramid:
    given = list(levels) if isinstance(levels, list | tuple) else [levels]
    if not given:
        raise ValueError("no levels to write")
    arrays = []
    for i, lvl in enumerate(given):
        if lvl.ndim != 3 or lvl.shape[2] != 3 or np.dtype(lvl.dtype) != np.uint8:
            raise ValueError(
                f"level {i}: expected a (y, x, 3) uint8 array, got {lvl.shape} {lvl.dtype} "
                "(napari_srgan_sqe.io.slides.as_rgb8 converts other images)"
            )
        arrays.append(
            lvl if isinstance(lvl, da.Array) else da.from_array(lvl, chunks=(chunk, chunk, 3))
        )
    shapes = [(int(a.shape[0]), int(a.shape[1])) for a in arrays]
    h0, w0 = shapes[0]
    factors = [(h0 / h, w0 / w) for h, w in shapes]
    if len(arrays) == 1:
        while (n_levels is None and max(shapes[-1]) > chunk) or (
            n_levels is not None and len(shapes) < n_levels and max(shapes[-1]) > 1
        ):
            h, w = shapes[-1]
            shapes.append((-(-h // 2), -(-w // 2)))
            factors.append((factors[-1][0] * 2, factors[-1][1] * 2))
    return _Pyramid(arrays, shapes, factors)


def _edges(chunks: Sequence[int], size: int, chunk: int) -> list[int]:
    """Unit edges on one axis: output-chunk edges that are also input-chunk edges.

    Units then cover whole input chunks, each computed once. Input chunks that never
    line up with the output grid (300 vs 256 px) would make units huge; then units are
    single output chunks and the input chunks under two units are computed twice.
    """
    grid = [*range(0, size, chunk), size]
    ends = set(np.cumsum([0, *chunks]).tolist())
    common = [e for e in grid if e in ends]
    if max(np.diff(common)) > max(_MAX_UNIT * chunk, *chunks):
        log.warning(
            "input chunks %s do not line up with %d px output chunks: some are computed "
            "more than once (rechunk the input to a multiple of %d)",
            sorted(set(chunks)),
            chunk,
            chunk,
        )
        return grid
    return common


def _plan(pyr: _Pyramid, chunk: int) -> list[list[_Unit]]:
    plan = []
    for level, (h, w) in enumerate(pyr.shapes):
        if level < len(pyr.given):
            ys = _edges(pyr.given[level].chunks[0], h, chunk)
            xs = _edges(pyr.given[level].chunks[1], w, chunk)
        else:
            ys, xs = [*range(0, h, chunk), h], [*range(0, w, chunk), w]
        plan.append(
            [
                _Unit(level, y0, y1, x0, x1)
                for y0, y1 in zip(ys[:-1], ys[1:])
                for x0, x1 in zip(xs[:-1], xs[1:])
            ]
        )
    return plan


def _halve(prev: Any, u: _Unit) -> np.ndarray:
    """2 x 2 mean (rounded) of the previous level under unit `u`, as (3, y, x)."""
    _, h, w = prev.shape
    block = np.asarray(prev[:, 2 * u.y0 : min(2 * u.y1, h), 2 * u.x0 : min(2 * u.x1, w)])
    ny, nx = 2 * (u.y1 - u.y0), 2 * (u.x1 - u.x0)
    if block.shape[1:] != (ny, nx):  # odd edge: repeat the last row / column
        block = np.pad(
            block, ((0, 0), (0, ny - block.shape[1]), (0, nx - block.shape[2])), mode="edge"
        )
    s = block.reshape(3, ny // 2, 2, nx // 2, 2).sum(axis=(2, 4), dtype=np.uint16)
    return ((s + 2) // 4).astype(np.uint8)


def _read_record(marker: Path) -> tuple[dict[str, Any] | None, set[str]]:
    lines = marker.read_text().split("\n")[:-1]  # a line cut by a kill has no newline
    try:
        header = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        header = None
    return header, set(lines[1:])


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _settling_zarr(write: Callable[_P, _R]) -> Callable[_P, _R]:
    """A zarr writer that, when it fails, lets zarr's pending writes settle before the
    failure is raised (`_settle_zarr`)."""

    @functools.wraps(write)
    def settled(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return write(*args, **kwargs)
        except BaseException:
            _settle_zarr()
            raise

    return settled


def _settle_zarr(timeout: float = _SETTLE_SECONDS) -> None:
    """Wait until the I/O tasks that a failed zarr write left running have finished.

    zarr writes the chunks of one assignment concurrently on its event loop (a thread)
    and raises the first failure (ENOSPC ...) while the other chunks' tasks still run;
    left alone, they are torn down at interpreter exit with "Task was destroyed but it
    is pending!" and "cannot schedule new futures after shutdown" tracebacks. Waiting
    for them (they fail or finish quickly) and collecting their errors, which the
    first one already reported, keeps the failure to one clear message.
    """
    try:
        from zarr.core.sync import loop as zarr_loop
        from zarr.core.sync import sync
    except ImportError:  # pragma: no cover - another zarr layout
        return
    if zarr_loop[0] is None or not zarr_loop[0].is_running():
        return

    async def settle() -> None:
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: reported by the failure already raised

    with contextlib.suppress(Exception):
        sync(settle(), timeout=timeout + 1)


def _v3_compressor(compressor: Any) -> Any:
    """A zarr format 3 codec for a numcodecs compressor (Blosc -> BloscCodec ...)."""
    if isinstance(compressor, numcodecs.Blosc):
        from zarr.codecs import BloscCodec

        shuffles: dict[int, Literal["noshuffle", "shuffle", "bitshuffle"]] = {
            0: "noshuffle",
            1: "shuffle",
            2: "bitshuffle",
        }
        shuffle = shuffles[int(compressor.shuffle)]
        return BloscCodec(cname=compressor.cname, clevel=compressor.clevel, shuffle=shuffle)
    if isinstance(compressor, numcodecs.Zstd):
        from zarr.codecs import ZstdCodec

        return ZstdCodec(level=compressor.level)
    if isinstance(compressor, numcodecs.Zlib | numcodecs.GZip):
        from zarr.codecs import GzipCodec

        return GzipCodec(level=compressor.level)
    return compressor  # a zarr 3 codec already, or None


@_settling_zarr
def _write_levels(
    pyr: _Pyramid,
    root: Path,
    *,
    chunk: int,
    compressor: Any,
    progress: Progress | None,
    resume: bool,
    concurrency: int | None,
    extra_total: int = 0,
    fingerprint: str | None = None,
    zarr_format: Literal[2, 3] = 2,
    shard: int | None = None,
) -> tuple[Any, int]:
    """Write every level into the zarr group `root`, resumably; return (group, units).

    `fingerprint` identifies what is written (model, source, region ...): a record
    left by an interrupted export with another fingerprint is not resumed. `shard`
    (zarr format 3): the shard edge, a multiple of `chunk`; units then cover whole
    shards, so a shard file is only ever written whole (a unit redone after a kill
    rewrites all of it). A failure lets zarr's pending writes settle before it is
    raised (`_settle_zarr`).
    """
    plan = _plan(pyr, shard or chunk)
    total = sum(len(units) for units in plan)
    record_header = {
        "writer": "napari-srgan-sqe pyramid",
        "shapes": [list(s) for s in pyr.shapes],
        "given": len(pyr.given),
        "chunk": chunk,
        "compressor": repr(compressor),
        "source": fingerprint,
    }
    if zarr_format != 2:  # keeps the records of format 2 exports as they were
        record_header.update(zarr_format=zarr_format, shard=shard)
    marker = root / INCOMPLETE_MARKER
    done: set[str] = set()
    if marker.exists() and resume:
        header, done = _read_record(marker)
        if header != record_header:
            log.warning(
                "%s: an interrupted export of other data or with other settings is "
                "restarted from scratch (its partial output is discarded)",
                root,
            )
            done = set()
            remove_path(root)
    elif marker.exists():
        remove_path(root)
    if not root.exists():
        remove_stale_temporaries(root)  # the callers hold the export's lock
        with atomic_path(root) as tmp:  # the marker exists from the first moment
            group = zarr.open_group(tmp, mode="w", zarr_format=zarr_format)
            for i, (h, w) in enumerate(pyr.shapes):
                layout: dict[str, Any]
                if zarr_format == 2:
                    layout = {
                        "compressors": compressor,
                        "chunk_key_encoding": {"name": "v2", "separator": "/"},
                    }
                else:
                    layout = {
                        "compressors": _v3_compressor(compressor),
                        "dimension_names": ["c", "y", "x"],
                        **({"shards": (3, shard, shard)} if shard else {}),
                    }
                group.create_array(
                    name=str(i),
                    shape=(3, h, w),
                    chunks=(3, chunk, chunk),
                    dtype="uint8",
                    fill_value=0,
                    **layout,
                )
            (tmp / INCOMPLETE_MARKER).write_text(json.dumps(record_header) + "\n")
    group = zarr.open_group(root, mode="r+", zarr_format=zarr_format)
    # Every key "0".."n-1" of the group is one of the arrays created above. Every chunk
    # is stored, even a blank one, so that a reader can tell a lost chunk from it.
    arrays = [
        cast(zarr.Array, group[str(i)]).with_config({"write_empty_chunks": True})
        for i in range(len(pyr.shapes))
    ]
    n_done = sum(u.key in done for units in plan for u in units)
    workers = concurrency or os.cpu_count() or 1
    if progress:
        progress(n_done, total + extra_total)
    with open(marker, "a") as record, ThreadPoolExecutor(workers) as pool:
        for level, units in enumerate(plan):
            todo = [u for u in units if u.key not in done]
            for start in range(0, len(todo), workers):
                batch = todo[start : start + workers]
                if level < len(pyr.given):
                    src = pyr.given[level]
                    blocks = dask.compute(*[src[u.y0 : u.y1, u.x0 : u.x1] for u in batch])
                    blocks = [b.transpose(2, 0, 1) for b in blocks]
                else:
                    blocks = list(pool.map(lambda u: _halve(arrays[u.level - 1], u), batch))
                for u, block in zip(batch, blocks):
                    arrays[level][:, u.y0 : u.y1, u.x0 : u.x1] = block
                    record.write(u.key + "\n")
                    record.flush()
                    n_done += 1
                    if progress:
                        progress(n_done, total + extra_total)
    return group, total


def _ngff_attrs(
    pyr: _Pyramid,
    mpp: float | None,
    name: str,
    version: str = NGFF_VERSION,
    origin: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """The group attributes of an NGFF `version` ("0.4" or "0.5") multiscale image.

    The channel axis comes before y and x, as NGFF requires, with `omero` rendering
    metadata naming the channels red, green and blue (see docs/formats.md for what
    napari-ome-zarr makes of it). `origin` (y, x): where the centre of level-0 pixel
    (0, 0) lies, in the scale's units; a translation follows every dataset's scale.
    """
    unit = {"unit": "micrometer"} if mpp else {}
    base = mpp or 1.0
    oy, ox = origin or (0.0, 0.0)
    datasets = []
    for i, (fy, fx) in enumerate(pyr.factors):
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": [1.0, base * fy, base * fx]}]
        if i or origin is not None:
            # pixel centres of a box-filtered level sit (f - 1) / 2 level-0 px inwards
            transforms.append(
                {
                    "type": "translation",
                    "translation": [0.0, oy + base * (fy - 1) / 2, ox + base * (fx - 1) / 2],
                }
            )
        datasets.append({"path": str(i), "coordinateTransformations": transforms})
    window = {"start": 0, "end": 255, "min": 0, "max": 255}
    channels = [
        {
            "label": label,
            "color": color,
            "window": window,
            "active": True,
            "coefficient": 1.0,
            "family": "linear",
            "inverted": False,
        }
        for label, color in (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"))
    ]
    multiscale = {
        "version": version,
        "name": name,
        "axes": [
            {"name": "c", "type": "channel"},
            {"name": "y", "type": "space", **unit},
            {"name": "x", "type": "space", **unit},
        ],
        "datasets": datasets,
        **({"type": "mean"} if len(pyr.given) == 1 and len(pyr.shapes) > 1 else {}),
        "metadata": {
            "writer": "napari-srgan-sqe",
            "downscaling": "2x2 mean, rounded",
            EVERY_CHUNK_STORED: True,
        },
    }
    omero = {
        "version": version,
        "name": name,
        "channels": channels,
        "rdefs": {"model": "color", "defaultT": 0, "defaultZ": 0},
    }
    if version == "0.4":
        return {"multiscales": [multiscale], "omero": omero}
    # NGFF 0.5: everything under "ome", whose "version" replaces the per-object ones
    del multiscale["version"], omero["version"]
    return {"ome": {"version": version, "multiscales": [multiscale], "omero": omero}}
