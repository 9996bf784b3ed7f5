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

import contextlib
import errno
import functools
import math
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numcodecs

from napari_srgan_sqe.errors import UserFacingError
from napari_srgan_sqe.io._formats import INCOMPLETE_MARKER, metadata_text
from napari_srgan_sqe.io._tiff_writer import _chain_subifds, _stream_tiff
from napari_srgan_sqe.io._zarr_writer import EVERY_CHUNK_STORED as EVERY_CHUNK_STORED
from napari_srgan_sqe.io._zarr_writer import (
    NGFF_VERSION,
    Progress,
    _ngff_attrs,
    _pyramid,
    _read_record,
    _write_levels,
)
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

NGFF_VERSIONS = ("0.4", "0.5")
"""OME-Zarr versions written: "0.4" (zarr format 2; the default: QuPath, Bio-Formats and
most viewers read it) and "0.5" (zarr format 3, sharded)."""
SHARD_CHUNKS = 4
"""NGFF 0.5 exports: chunks per shard along y and x (a shard file holds 4 x 4 chunks)."""
DEFAULT_COMPRESSOR: Any = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
_STAGING_COMPRESSOR: Any = numcodecs.Blosc(cname="lz4", clevel=1, shuffle=numcodecs.Blosc.NOSHUFFLE)

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
    items = "; ".join(f"{k}={v}" for k, v in provenance.items())
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
        name = metadata_text(root.name.removesuffix(".zarr").removesuffix(".ome"))
        group.attrs.update(_ngff_attrs(pyr, mpp, name, ngff, origin))
        if provenance:
            # a non-UTF-8 source name as escapes, as the OME-TIFF writer does
            group.attrs[PROVENANCE_KEY] = {k: metadata_text(str(v)) for k, v in provenance.items()}
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
