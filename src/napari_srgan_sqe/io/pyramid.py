"""Write (y, x, 3) uint8 image pyramids as OME-Zarr (resumable) or OME-TIFF (atomic).

Both writers take either a list of levels (finest first, numpy or dask) or a single
level 0, from which coarser levels are built by 2 x 2 mean (rounded), each from the
level just written. Memory stays bounded whatever the image size: level 0 is computed
and written one unit at a time, where a unit is a block of whole output chunks that
also covers whole input chunks, so an expensive lazy input (the SR engine's) is
computed exactly once per chunk.

OME-Zarr: by default zarr format 2 with NGFF 0.4 metadata, the version napari-ome-zarr,
ome-zarr-py, QuPath, Fiji/MoBIE, vizarr and Bio-Formats all read; `ngff="0.5"` writes
zarr format 3 with NGFF 0.5 metadata and sharding (`SHARD_CHUNKS` x `SHARD_CHUNKS`
chunks per shard file), which fewer readers support yet. NGFF orders axes channel
before space, so arrays are (c, y, x) with chunks (3, chunk, chunk); `open_slide`
gives them back as (y, x, 3). Every chunk is stored, even one equal to the fill value
(zarr's `write_empty_chunks`), and the metadata say so, so that `open_slide` can tell
a chunk lost from the store from a blank one. A progress record (`.incomplete`) lists
the units written; a rerun after an interruption skips them and redoes the unit that
was being written. The NGFF metadata are written last, then the record is removed.

Where the image lies: `origin` (y, x), the position of the centre of level-0 pixel
(0, 0) in the units of the pixel size (um, or level-0 pixels when there is none), as
napari's `translate` has it. OME-Zarr: an NGFF `translation` after the `scale` of every
dataset (a coarser level's adds the half-pixel shift of its box filter); OME-TIFF: the
OME-XML `Plane`'s PositionY / PositionX with their unit. An export of a region of a
slide is so placed on the slide (`inference.export.export_origin`).

OME-TIFF: BigTIFF, tiled, lossless zlib with horizontal predictor by default (or
JPEG with a quality), pixel size in the OME-XML and in the resolution tags, the
input's ICC profile where given. Reduced levels are SubIFDs of level 0 (the OME-TIFF
pyramid that Bio-Formats, QuPath and tifffile read) and, in the default layout
"both", the same IFDs are also chained after level 0 as top-level pages (the generic
tiled TIFF pyramid that OpenSlide reads): one copy of the pixels, two ways to find
it. The pyramid is first written to a hidden, resumable OME-Zarr
staging folder next to the target (so expensive levels are computed once and in any
order), then streamed tile by tile into a temporary file that is renamed over the
target only when complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import logging
import math
import os
import struct
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar, cast

import dask
import dask.array as da
import numcodecs
import numpy as np
import tifffile
import zarr

from napari_srgan_sqe.errors import UserFacingError
from napari_srgan_sqe.io._formats import INCOMPLETE_MARKER, metadata_text
from napari_srgan_sqe.io.atomic import (
    _fsync,
    _replace_dir,
    atomic_path,
    file_lock,
    remove_path,
    remove_stale_temporaries,
)

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_COMPRESSOR",
    "DEFAULT_QUALITY",
    "INCOMPLETE_MARKER",
    "NGFF_VERSIONS",
    "SHARD_CHUNKS",
    "TIFF_LAYOUTS",
    "ExportError",
    "check_origin",
    "check_target",
    "codec_options",
    "export_lock",
    "output_bytes",
    "write_ome_tiff",
    "write_ome_zarr",
]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
NGFF_VERSION = "0.4"
NGFF_VERSIONS = ("0.4", "0.5")
"""OME-Zarr versions written: "0.4" (zarr format 2; the default: QuPath, Bio-Formats and
most viewers read it) and "0.5" (zarr format 3, sharded)."""
SHARD_CHUNKS = 4
"""NGFF 0.5 exports: chunks per shard along y and x (a shard file holds 4 x 4 chunks)."""
EVERY_CHUNK_STORED = "every_chunk_stored"
"""Key in the NGFF `multiscales[0].metadata` of this plugin's exports: True when every
chunk of every level was written (none left out as equal to the fill value), so a
missing chunk is a lost one (`open_slide` refuses to read it as black)."""
_SETTLE_SECONDS = 10.0  # after a failed write, wait this long for zarr's pending I/O
DEFAULT_COMPRESSOR: Any = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
_STAGING_COMPRESSOR: Any = numcodecs.Blosc(cname="lz4", clevel=1, shuffle=numcodecs.Blosc.NOSHUFFLE)
_MAX_UNIT = 4  # a unit spans at most this many output chunks per axis

TIFF_LAYOUTS = ("both", "subifd")
"""Where an OME-TIFF's reduced levels are found: "both" (SubIFDs of level 0, and the same
IFDs chained after it as top-level pages: Bio-Formats and OpenSlide both see the
pyramid) or "subifd" (SubIFDs only, as the OME-TIFF specification has it: OpenSlide
sees level 0 alone)."""

COMPRESSIONS = {
    "lossless": "zlib with horizontal predictor (OME-TIFF); Blosc-zstd (OME-Zarr)",
    "jpeg": "JPEG, YCbCr 4:2:0, at a quality (OME-TIFF only)",
}
"""Export compressions by name, with what each writes (docs/formats.md says why there is
no lossy OME-Zarr)."""
DEFAULT_QUALITY = 90
"""JPEG quality (1 - 100) when none is given."""


def codec_options(fmt: str, compression: str = "lossless", quality: int | None = None) -> dict:
    """Writer keyword arguments for `compression` (a `COMPRESSIONS` name) in `fmt`
    ('tiff' or 'zarr'): `compression` and `quality` for `write_ome_tiff`, `compressor`
    for `write_ome_zarr`. ValueError, in words, for a codec that the format's readers
    cannot open, or a quality outside 1 - 100 or given for lossless compression.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(
            f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}"
        )
    if compression == "lossless":
        if quality is not None:
            raise ValueError("a quality applies to lossy compression (jpeg) only")
        return {"compression": "zlib"} if fmt == "tiff" else {"compressor": DEFAULT_COMPRESSOR}
    if fmt != "tiff":
        raise ValueError(
            "lossy compression is offered for OME-TIFF only: OME-Zarr (NGFF 0.4) stores "
            "channels first, in (3, y, x) chunks, which JPEG cannot code as one colour "
            "image, and napari-ome-zarr, QuPath and Bio-Formats read no lossy zarr codec; "
            "write .ome.tif to use jpeg"
        )
    return {"compression": "jpeg", "quality": _jpeg_quality(quality)}


def _jpeg_quality(quality: int | None) -> int:
    """`quality` (default `DEFAULT_QUALITY`) as an int; ValueError outside 1 - 100."""
    q = DEFAULT_QUALITY if quality is None else int(quality)
    if not 1 <= q <= 100:
        raise ValueError(f"quality must be 1 to 100, got {quality}")
    return q


def output_bytes(path: str | Path) -> int:
    """Bytes an export takes on disk: the file, or every file in the folder."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


class ExportError(UserFacingError, OSError):
    """Writing an export failed (disk full, folder not writable ...); names the path."""

    def __str__(self) -> str:
        return str(self.strerror)


def lock_path(path: str | Path) -> Path:
    """The lock file of an export to `path`: hidden, next to it (`.NAME.lock`)."""
    final = Path(path)
    return final.with_name(f".{final.name.rstrip('/')}.lock")


@contextlib.contextmanager
def export_lock(path: str | Path) -> Iterator[None]:
    """Hold the lock of the export to `path` (see `atomic.file_lock`): another export to
    the same path, in this or another process, is refused at once with `ExportError`.

    Removes what a killed export to `path` left (hidden temporary files), which is
    safe once the lock is held. Nothing is locked when the folder does not exist (the
    writer then says so).
    """
    final = Path(path)
    if not final.parent.is_dir():
        yield
        return
    lock = lock_path(final)
    try:
        with file_lock(lock):
            remove_stale_temporaries(final)
            yield
    except BlockingIOError as exc:
        if exc.filename not in (str(lock), str(lock.parent.resolve() / lock.name)):
            raise
        raise ExportError(
            errno.EBUSY,
            f"cannot write {final}: another export is writing it right now (its lock "
            f"{lock} is held); wait for it to finish or choose another output",
            str(final),
        ) from None


def _under_export_lock(write: Callable[..., Path]) -> Callable[..., Path]:
    """A writer `write(levels, path, ...)` that runs holding `export_lock(path)`."""

    @functools.wraps(write)
    def locked(levels: Any, path: str | Path, **kwargs: Any) -> Path:
        with export_lock(path):
            return write(levels, path, **kwargs)

    return locked


def _discard_if_empty(root: Path) -> bool:
    """Remove the zarr folder `root` of a failed export that recorded no unit yet (an
    empty `.incomplete` folder); keep it when units exist (resumable). True if removed."""
    marker = root / INCOMPLETE_MARKER
    with contextlib.suppress(OSError):
        if marker.is_file() and not _read_record(marker)[1]:
            remove_path(root)
            return True
    return False


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


def check_origin(origin: Any) -> tuple[float, float] | None:
    """`origin` as (y, x) floats, or None; ValueError for anything but two finite numbers."""
    if origin is None:
        return None
    try:
        oy, ox = (float(v) for v in origin)
    except (TypeError, ValueError):
        raise ValueError(f"origin must be two numbers (y, x), got {origin!r}") from None
    if not (math.isfinite(oy) and math.isfinite(ox)):
        raise ValueError(f"origin must be finite, got {origin!r}")
    return oy, ox


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


ZARR_METADATA = ("zarr.json", ".zgroup", ".zattrs", ".zarray")


def check_target(path: Path, kind: Literal["zarr", "tiff"], *, overwrite: bool) -> None:
    """Refuse, before any work, an output `path` that an export of `kind` must not
    replace: an existing one without `overwrite`, and even with it a folder for an
    OME-TIFF, a file for an OME-Zarr, or a folder without zarr metadata at its top
    (a folder that merely ends in .zarr may hold anything). An interrupted OME-Zarr
    export (its `INCOMPLETE_MARKER`) is resumed, not replaced."""
    if not path.exists() and not path.is_symlink():
        return
    if kind == "zarr" and (path / INCOMPLETE_MARKER).exists():
        return
    if not overwrite:
        raise FileExistsError(
            errno.EEXIST, "already exists (pass overwrite=True to replace it)", str(path)
        )
    if kind == "tiff" and path.is_dir():
        raise FileExistsError(
            errno.EISDIR, "is a folder, not replacing it with an OME-TIFF file", str(path)
        )
    if kind == "zarr" and not path.is_dir():
        raise FileExistsError(
            errno.EEXIST, "is a file, not replacing it with an OME-Zarr folder", str(path)
        )
    if kind == "zarr" and not any((path / name).exists() for name in ZARR_METADATA):
        raise FileExistsError(
            errno.EEXIST,
            "has no zarr metadata at its top (not an OME-Zarr export); not replacing it",
            str(path),
        )


def _export_error(exc: OSError, path: Path, note: str) -> ExportError:
    reason = exc.strerror or f"{exc} (is the disk full?)"
    return ExportError(exc.errno or errno.EIO, f"cannot write {path}: {reason}{note}", str(path))


PROVENANCE_KEY = "napari-srgan-sqe"
"""The OME-Zarr root attribute holding how an export was made (model, seed ...)."""


def provenance_text(provenance: Mapping[str, str] | None) -> str | None:
    """One line for an OME Description: 'super-resolved by napari-srgan-sqe: k=v; ...'."""
    if not provenance:
        return None
    items = "; ".join(f"{k}={metadata_text(str(v))}" for k, v in provenance.items())
    return f"super-resolved by napari-srgan-sqe: {items}"


@_under_export_lock
def write_ome_zarr(
    levels: Any,
    path: str | Path,
    *,
    mpp: float | None = None,
    chunk: int = 512,
    n_levels: int | None = None,
    progress: Progress | None = None,
    resume: bool = True,
    overwrite: bool = False,
    compressor: Any = DEFAULT_COMPRESSOR,
    concurrency: int | None = None,
    fingerprint: str | None = None,
    ngff: str = NGFF_VERSION,
    provenance: Mapping[str, str] | None = None,
    origin: tuple[float, float] | None = None,
) -> Path:
    """Write a pyramid as an OME-Zarr, chunk by chunk: NGFF 0.4 in zarr format 2 (the
    default), or with `ngff="0.5"` NGFF 0.5 in zarr format 3, `SHARD_CHUNKS` x
    `SHARD_CHUNKS` chunks to a shard file.

    `levels`: list of (y, x, 3) uint8 arrays, finest first, or one level 0 (coarser
    levels by 2 x 2 mean: `n_levels` in all, default until one chunk holds a level).
    `mpp`: um per level-0 pixel. `progress(done, total)` is called after each unit.
    `resume`: skip units an interrupted run with the same shapes and `fingerprint`
    recorded (a string identifying the data, e.g. model and source; an interrupted
    export with another one is restarted from scratch).
    `provenance`: how the pixels were made (model, seed ...), stored as the root
    group's `PROVENANCE_KEY` attribute (in an OME-TIFF: the image's OME Description).
    `origin` (y, x): where the centre of level-0 pixel (0, 0) lies, in um (or, without
    `mpp`, in level-0 pixels): an NGFF translation after every dataset's scale (in an
    OME-TIFF: the Plane's PositionY / PositionX); None writes none (level 0 at 0).
    `overwrite`: replace an existing complete export; the new one is written into a
    hidden sibling `.NAME.overwrite.zarr` (resumable) and swapped in only when
    complete, so a failure keeps the old export. `concurrency`: units computed
    at once (default: CPU count; with a dask.distributed client, on its workers).
    Raises `ExportError` (an OSError) naming the path when writing fails, or when
    another export writes `path` at the same time (`export_lock`). A failure before
    any unit was written removes the (empty) partial output.
    """
    root = Path(path)
    if ngff not in NGFF_VERSIONS:
        raise ValueError(f"ngff must be one of {', '.join(NGFF_VERSIONS)}, got {ngff!r}")
    origin = check_origin(origin)
    check_target(root, "zarr", overwrite=overwrite)
    pyr = _pyramid(levels, chunk=chunk, n_levels=n_levels)
    replace = root.exists() and not (root / INCOMPLETE_MARKER).exists()
    target = root.with_name(f".{root.name}.overwrite.zarr") if replace else root
    if replace and target.exists() and not (target / INCOMPLETE_MARKER).exists():
        remove_path(target)  # not a resumable staging folder of ours
    try:
        group, _ = _write_levels(
            pyr,
            target,
            chunk=chunk,
            compressor=compressor,
            progress=progress,
            resume=resume,
            concurrency=concurrency,
            fingerprint=fingerprint,
            zarr_format=2 if ngff == "0.4" else 3,
            shard=None if ngff == "0.4" else chunk * SHARD_CHUNKS,
        )
        name = root.name.removesuffix(".zarr").removesuffix(".ome")
        group.attrs.update(_ngff_attrs(pyr, mpp, name, ngff, origin))
        if provenance:
            group.attrs[PROVENANCE_KEY] = dict(provenance)
        (target / INCOMPLETE_MARKER).unlink()
        if replace:
            _replace_dir(target, root, uuid.uuid4().hex[:8])
            _fsync(root.parent)
    except BaseException as exc:  # also the input failing (SlideError ...), an interrupt
        _discard_if_empty(target)
        if not isinstance(exc, OSError) or isinstance(exc, ExportError):
            raise
        if replace:
            note = f"; the previous export is kept; intermediate data are in {target} to resume"
        elif root.exists():
            note = "; the partial export is kept and the same call resumes it"
        else:
            note = ""
        raise _export_error(exc, root, note) from exc
    return root


def _tiles(arr: Any, tile: int, tick: Callable[[], None]) -> Iterator[np.ndarray]:
    """Tiles of a (3, y, x) zarr array as (tile, tile, 3), row by row (edge tiles smaller)."""
    _, h, w = arr.shape
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            block = np.ascontiguousarray(
                np.asarray(arr[:, y : y + tile, x : x + tile]).transpose(1, 2, 0)
            )
            tick()
            yield block


@_under_export_lock
def write_ome_tiff(
    levels: Any,
    path: str | Path,
    *,
    mpp: float | None = None,
    tile: int = 512,
    n_levels: int | None = None,
    compression: str | None = "zlib",
    quality: int | None = None,
    layout: str = "both",
    icc_profile: bytes | None = None,
    progress: Progress | None = None,
    resume: bool = True,
    overwrite: bool = False,
    concurrency: int | None = None,
    fingerprint: str | None = None,
    provenance: Mapping[str, str] | None = None,
    origin: tuple[float, float] | None = None,
) -> Path:
    """Write a pyramid as a tiled BigTIFF OME-TIFF, atomically.

    Arguments as for `write_ome_zarr`; `tile` is the TIFF tile edge (a multiple of 16)
    and `compression` a tifffile codec name ("zlib", "lzw", "zstd", "jpeg", None ...),
    with `quality` (1 - 100) for "jpeg" (YCbCr 4:2:0; default `DEFAULT_QUALITY`).
    `layout` (`TIFF_LAYOUTS`): "both" makes the reduced levels SubIFDs of level 0 and
    also chains them after it as top-level pages, so OME readers (Bio-Formats, QuPath,
    tifffile) and generic tiled-TIFF readers (OpenSlide) all see the pyramid; "subifd"
    keeps them in SubIFDs only, as the OME-TIFF specification has it (OpenSlide then
    sees level 0 alone). `icc_profile`: an ICC profile (bytes) written
    to every level's InterColorProfile tag (34675), which OpenSlide reports as the
    slide's `color_profile`. `origin` (y, x): the OME-XML Plane's PositionY / PositionX
    (unit "µm", or "pixel" without `mpp`): where the centre of level-0 pixel (0, 0) lies.

    Progress counts the staging units, then the TIFF tiles. Nothing appears under
    `path` until the file is complete; an interrupted call leaves a hidden
    `.NAME.partial.zarr` next to it, which the same call resumes and removes when done
    (or removed at once when the call failed before any unit was staged). Another
    export to `path` at the same time is refused (`export_lock`); hidden temporary
    files that a killed export left next to `path` are removed.
    """
    final = Path(path)
    if tile % 16:
        raise ValueError(f"tile must be a multiple of 16, got {tile}")
    if layout not in TIFF_LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(TIFF_LAYOUTS)}, got {layout!r}")
    origin = check_origin(origin)
    check_target(final, "tiff", overwrite=overwrite)
    pyr = _pyramid(levels, chunk=tile, n_levels=n_levels)
    staging = final.with_name(f".{final.name}.partial.zarr")
    if staging.exists() and not (staging / INCOMPLETE_MARKER).exists():
        remove_path(staging)  # not a resumable staging folder of ours
    n_tiles = sum(math.ceil(h / tile) * math.ceil(w / tile) for h, w in pyr.shapes)
    try:
        group, n_units = _write_levels(
            pyr,
            staging,
            chunk=tile,
            compressor=_STAGING_COMPRESSOR,
            progress=progress,
            resume=resume,
            concurrency=concurrency,
            extra_total=n_tiles,
            fingerprint=fingerprint,
        )
        count = [n_units]

        def tick() -> None:
            count[0] += 1
            if progress:
                progress(count[0], n_units + n_tiles)

        name = final.name.removesuffix(".tiff").removesuffix(".tif").removesuffix(".ome")
        with atomic_path(final) as tmp:
            _stream_tiff(
                group,
                pyr,
                tmp,
                name=name,
                tile=tile,
                mpp=mpp,
                codec=_tiff_codec(compression, quality),
                icc_profile=icc_profile,
                tick=tick,
                # tiles are coded here, also for a cluster's export: at most our cores
                maxworkers=min(concurrency, os.cpu_count() or 1) if concurrency else None,
                description=provenance_text(provenance),
                origin=origin,
            )
            if layout == "both":
                _chain_subifds(tmp)
    except BaseException as exc:  # also the input failing (SlideError ...), an interrupt
        _discard_if_empty(staging)
        if not isinstance(exc, OSError):
            raise
        note = f"; intermediate data are kept in {staging} to resume" if staging.exists() else ""
        raise _export_error(exc, final, note) from exc
    remove_path(staging)
    return final


def _tiff_codec(compression: str | None, quality: int | None) -> dict[str, Any]:
    """tifffile.write arguments for a codec name (and a quality for JPEG)."""
    options: dict[str, Any] = {
        "compression": compression,
        "predictor": compression in ("zlib", "deflate", "adobe_deflate", "lzw", "zstd"),
    }
    if compression == "jpeg":
        # photometric "rgb" with JPEG: tifffile has the encoder store YCbCr 4:2:0 (the
        # TIFF says YCbCr), as scanners do; readers convert back to RGB
        options["compressionargs"] = {"level": _jpeg_quality(quality)}
    elif quality is not None:
        raise ValueError(f"a quality applies to JPEG only, not to {compression}")
    return options


def _stream_tiff(
    group: Any,
    pyr: _Pyramid,
    tmp: Path,
    *,
    name: str,
    tile: int,
    mpp: float | None,
    codec: dict[str, Any],
    icc_profile: bytes | None,
    tick: Callable[[], None],
    description: str | None = None,
    maxworkers: int | None = None,
    origin: tuple[float, float] | None = None,
) -> None:
    metadata: dict[str, Any] = {"axes": "YXS", "Name": metadata_text(name)}
    if description:
        metadata["Description"] = metadata_text(description)
    if mpp:
        metadata.update(
            PhysicalSizeX=mpp, PhysicalSizeXUnit="µm", PhysicalSizeY=mpp, PhysicalSizeYUnit="µm"
        )
    if origin is not None:  # the one plane's position: where pixel (0, 0)'s centre lies
        unit = "µm" if mpp else "pixel"
        metadata["Plane"] = {
            "PositionX": origin[1],
            "PositionXUnit": unit,
            "PositionY": origin[0],
            "PositionYUnit": unit,
        }
    with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tw:
        for i, (h, w) in enumerate(pyr.shapes):
            options: dict[str, Any] = {
                "shape": (h, w, 3),
                "dtype": np.uint8,
                "tile": (tile, tile),
                "photometric": "rgb",
                **codec,
            }
            if icc_profile:
                options["iccprofile"] = bytes(icc_profile)
            if mpp:
                fy, fx = pyr.factors[i]
                options.update(
                    resolution=(1e4 / (mpp * fx), 1e4 / (mpp * fy)), resolutionunit="CENTIMETER"
                )
            if i == 0:
                options.update(subifds=len(pyr.shapes) - 1, metadata=metadata)
            else:
                options.update(subfiletype=1, metadata=None)
            tw.write(_tiles(group[str(i)], tile, tick), maxworkers=maxworkers, **options)


def _chain_subifds(path: Path) -> None:
    """Chain the SubIFDs of the first page after it as top-level pages (layout "both").

    The level IFDs stay where they are, and stay referenced by the SubIFDs tag; only
    next-IFD pointers are written: the first page's (0 before) to the first SubIFD, each
    SubIFD's to the next one (as tifffile links them already), the last one's to 0.
    Generic TIFF readers (OpenSlide) walk this chain and find the reduced-resolution
    pages (NewSubfileType 1) there, while OME readers take the levels from the SubIFDs
    tag and the image from the OME-XML, which names only IFD 0.
    """
    with tifffile.TiffFile(path) as tif:
        if len(tif.pages) != 1:
            raise ValueError(f"{path}: expected one top-level page, found {len(tif.pages)}")
        page = tif.pages.first
        subifds = [int(o) for o in (page.subifds or ())]
        info = tif.tiff
    if not subifds:
        return
    chain = [page.offset, *subifds]
    with open(path, "r+b") as fh:
        pointers = []
        for offset in chain:
            fh.seek(offset)
            (n_tags,) = struct.unpack(info.tagnoformat, fh.read(info.tagnosize))
            pointers.append(offset + info.tagnosize + n_tags * info.tagsize)
        for pointer, target in zip(pointers, [*subifds, 0]):
            fh.seek(pointer)
            fh.write(struct.pack(info.offsetformat, target))
        fh.flush()
        os.fsync(fh.fileno())
