"""TIFF and OME-TIFF (tiled pyramids in SubIFDs or page series, or single pages).

Pixels come from tifffile's zarr store (`TiffPageSeries.aszarr()`, zarr v2 metadata
served to zarr 3), opened as a group for pyramids; each level is wrapped so that dask
chunks cover whole TIFF tiles (or strips) and the graph pickles by path.

Pages are read tile by tile (or strip by strip), and reading any pixel of a segment
decodes all of it: a page whose one segment needs more than `MAX_SEGMENT_BYTES` to
decode (a 30000 x 30000 image stored as a single strip, a 16384 px "tile bomb") is
refused at open, as Pillow refuses decompression bombs for PNG / JPEG, with advice to
re-tile it. So is a page whose header claims more pixels than its tiles hold.

A file cut short (an interrupted copy or download) is refused at open, naming the
level it cuts into: a reduced level whose directory (IFD) lies past the end of the
file, that tifffile could not parse, or whose tiles run past the end, even when
level 0 is whole. tifffile would drop such a level with a log message and the
pyramid would open one level short.

An OME-TIFF's first Plane position (PositionY / PositionX in a length unit, or in
pixels) is the image's `Slide.origin`, as this plugin's exports of a region write it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import struct
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from napari_srgan_sqe.io import _formats
from napari_srgan_sqe.io._slide import (
    HEAD_BYTES,
    MAX_SEGMENT_BYTES,
    LevelSource,
    Slide,
    SlideError,
    aligned_chunk,
    as_rgb8,
    check_convertible,
    coding_or_unknown,
    downsamples_of,
    read_bytes,
    shared_handle,
    tiff_header_problem,
    to_yxc,
)
from napari_srgan_sqe.io.codecs import (
    TIFF_JPEG_CODES,
    WEBP_CODE,
    SlideCoding,
    coding_from_tiff_page,
    jpeg_quality,
)

log = logging.getLogger(__name__)

_REFUSED_PHOTOMETRIC = {
    "MINISWHITE": "inverted grayscale (MinIsWhite)",
    "PALETTE": "indexed colour (palette)",
    "SEPARATED": "CMYK",
    "CIELAB": "CIE L*a*b*",
    "ICCLAB": "ICC L*a*b*",
    "ITULAB": "ITU L*a*b*",
    "CFA": "raw colour-filter-array",
    "MASK": "a transparency mask",
}


_J2K_CODES = frozenset({33003, 33004, 33005, 34712})  # Aperio YCbCr / RGB, JPEG 2000
_PNG_CODE = 34933


def declared_size(data: bytes, compression: int) -> tuple[int, int] | None:
    """(height, width) that a coded segment says it holds, read from its own header
    (JPEG SOF, JPEG 2000 SIZ, WebP, PNG IHDR), or None when the codec keeps no size in
    the segment or the header is not found. Decoders allocate by this size, not by the
    TIFF's tile size."""
    head = bytes(data[:65536])
    if compression in TIFF_JPEG_CODES:
        i = 2 if head[:2] == b"\xff\xd8" else 0
        while 0 <= i < len(head) - 9:
            if head[i] != 0xFF:
                i = head.find(b"\xff", i)
                continue
            marker = head[i + 1]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", head[i + 5 : i + 9])
                return h, w
            if marker == 0xDA or marker == 0xD9:  # scan data or end: no frame header
                return None
            if marker == 0xFF or 0xD0 <= marker <= 0xD8 or marker == 0x01:
                i += 1 if marker == 0xFF else 2
                continue
            (length,) = struct.unpack(">H", head[i + 2 : i + 4])
            i += 2 + length
        return None
    if compression in _J2K_CODES:
        i = head.find(b"\xff\x4f\xff\x51")
        if i < 0 or len(head) < i + 24:
            return None
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", head[i + 8 : i + 24])
        return max(ysiz - yo, 0), max(xsiz - xo, 0)
    if compression == WEBP_CODE and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        kind = head[12:16]
        if kind == b"VP8 " and len(head) >= 30:
            w, h = struct.unpack("<HH", head[26:30])
            return h & 0x3FFF, w & 0x3FFF
        if kind == b"VP8L" and len(head) >= 25:
            (bits,) = struct.unpack("<I", head[21:25])
            return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
        if kind == b"VP8X" and len(head) >= 30:
            w = int.from_bytes(head[24:27], "little") + 1
            h = int.from_bytes(head[27:30], "little") + 1
            return h, w
        return None
    if compression == _PNG_CODE and head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        w, h = struct.unpack(">II", head[16:24])
        return h, w
    return None


def _guard_decode(keyframe: Any) -> None:
    """Make `keyframe`'s segment decoder refuse a segment whose own header claims more
    pixels than the decode budget (twice the TIFF segment, at least 16 MiB) before it
    is decoded: a 256 px JPEG tile whose frame header says 65000 x 65000 px would
    otherwise take 12 GB. tifffile bounds the raw codecs (zlib, LZW ...) itself."""
    compression = int(keyframe.compression)
    if compression not in TIFF_JPEG_CODES | _J2K_CODES | {WEBP_CODE, _PNG_CODE}:
        return
    rows, width = _tile(keyframe)
    itemsize = np.dtype(keyframe.dtype).itemsize
    samples = int(keyframe.samplesperpixel)
    budget = max(2 * rows * width * samples * itemsize, 16 * 2**20)
    decode = keyframe.decode  # tifffile's own, cached on the page

    def guarded(data: Any, index: int, **kwargs: Any) -> Any:
        size = declared_size(data, compression) if data else None
        if size is not None and size[0] * size[1] * samples * itemsize > budget:
            raise ValueError(
                f"tile {index} says it holds {size[1]} x {size[0]} px, more than the "
                f"{width} x {rows} px tiles of the image (a corrupt or crafted file); "
                "not decoded"
            )
        return decode(data, index, **kwargs)

    keyframe.__dict__["decode"] = guarded  # replaces the cached_property's value


class _TiffHandle:
    """An open TiffFile and the zarr arrays of its first series, created on first use.
    Each level's decoder checks a segment's own header before decoding it
    (`_guard_decode`)."""

    def __init__(self, path: Path) -> None:
        self.tif = tifffile.TiffFile(path)
        self._arrays: dict[int, Any] = {}
        self._lock = threading.Lock()

    def array(self, level: int) -> Any:
        with self._lock:
            if level not in self._arrays:
                series = self.tif.series[0]
                for lev in series.levels:
                    _guard_decode(lev.keyframe)
                store = series.aszarr()
                if len(series.levels) > 1:
                    group = zarr.open_group(store, mode="r")
                    self._arrays.update({i: group[str(i)] for i in range(len(series.levels))})
                else:
                    self._arrays[0] = zarr.open_array(store, mode="r")
            return self._arrays[level]

    def close(self) -> None:
        with self._lock:
            self._arrays.clear()
            self.tif.close()


class TiffLevel(LevelSource):
    """One level of the first series of a TIFF, in the file's own axes and dtype."""

    kind = "tiff"

    def _open(self, path: Path) -> _TiffHandle:
        return _TiffHandle(path)

    def _read(self, handle: _TiffHandle, key: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(handle.array(self.level)[key])


def _ome_mpp(xml: str | None) -> float | None:
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "Pixels":
            value = el.attrib.get("PhysicalSizeX")
            unit = el.attrib.get("PhysicalSizeXUnit", "µm")
            try:
                return _formats.to_um(float(value), unit) if value else None
            except ValueError:
                return None
    return None


def _ome_origin(xml: str | None, mpp: float | None) -> tuple[float, float]:
    """Where the first OME image's first Plane puts its pixel (0, 0): PositionY /
    PositionX in um (a length unit), or in pixels (unit "pixel"; times `mpp` when
    known); (0, 0) when there is no such position, or it is in the default unit
    "reference frame" (a stage's own frame, which says nothing about the image)."""
    if not xml:
        return 0.0, 0.0
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return 0.0, 0.0
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    plane = next(
        (el for el in (pixels if pixels is not None else []) if el.tag.endswith("Plane")), None
    )
    if plane is None:
        return 0.0, 0.0
    out = []
    for axis in "YX":
        value = plane.attrib.get(f"Position{axis}")
        unit = plane.attrib.get(f"Position{axis}Unit", "reference frame")
        if value is None:
            return 0.0, 0.0
        try:
            number = float(value)
        except ValueError:
            return 0.0, 0.0
        if unit == "pixel" and math.isfinite(number):
            um: float | None = number * mpp if mpp else number
        elif mpp:
            um = _formats.position_to_um(number, unit)
        else:  # no pixel size: a length cannot be put in pixels
            um = None
        if um is None:
            return 0.0, 0.0
        out.append(um)
    return out[0], out[1]


def _tag_mpp(page: Any) -> float | None:
    try:
        unit = tifffile.RESUNIT(page.resolutionunit).name
        res = float(page.resolution[0])
    except (ValueError, TypeError, IndexError, KeyError):
        return None
    um = {"CENTIMETER": 1e4, "INCH": 25400.0, "MILLIMETER": 1e3, "MICROMETER": 1.0}.get(unit)
    if not um or not np.isfinite(res) or res <= 0:
        return None
    mpp = um / res
    return mpp if mpp <= _formats.MAX_PLAUSIBLE_MPP else None


def _mpp(tif: Any, page: Any) -> float | None:
    if tif.is_ome:
        mpp = _ome_mpp(tif.ome_metadata)
        if mpp:
            return mpp
    if tif.is_svs:
        try:
            # tifffile.tifffile: newer tifffile no longer re-exports it at the top level
            meta = tifffile.tifffile.svs_description_metadata(page.description)
            mpp = float(meta.get("MPP", 0))
        except (ValueError, TypeError):
            mpp = 0.0
        if mpp > 0:
            return mpp
    return _tag_mpp(page)


def _tile(page: Any) -> tuple[int, int]:
    if page.is_tiled:
        return int(page.tilelength), int(page.tilewidth)
    return int(min(page.rowsperstrip or page.imagelength, page.imagelength)), int(page.imagewidth)


def segment_problem(page: Any) -> str | None:
    """Why a page's tiles or strips cannot be read in bounded memory (one decodes to more
    than MAX_SEGMENT_BYTES), or None."""
    rows, width = _tile(page)
    samples = int(page.samplesperpixel) if int(page.planarconfig) == 1 else 1  # contig
    depth = int(getattr(page, "tiledepth", 1) or 1) if page.is_tiled else 1
    nbytes = rows * width * depth * samples * np.dtype(page.dtype).itemsize
    if nbytes <= MAX_SEGMENT_BYTES:
        return None
    limit = f"limit {MAX_SEGMENT_BYTES / 2**20:,.0f} MiB"
    if page.is_tiled:
        return (
            f"the image is stored in tiles of {width} x {rows} px, {nbytes / 2**20:,.0f} MiB "
            f"to decode for any read of a tile ({limit}); re-tile it, e.g. "
            "`vips tiffsave in.tif out.tif --tile --pyramid --compression deflate`"
        )
    what = "a single strip" if rows >= int(page.imagelength) else f"strips of {rows} rows"
    return (
        f"the untiled {page.imagewidth} x {page.imagelength} image is stored as {what}, "
        f"{nbytes / 2**20:,.0f} MiB to decode for any read ({limit}); convert it to a "
        "tiled pyramidal TIFF to read it in tiles, e.g. "
        "`vips tiffsave in.tif out.tif --tile --pyramid --compression deflate`"
    )


def segment_count_problem(lev: Any, level: int) -> str | None:
    """Why a page of pyramid level `lev` (number `level`) does not hold the tiles or
    strips its size needs (a header claiming a larger image than the file stores), or
    None. tifffile would read the missing ones as zeros: a silently black export."""
    page = lev.keyframe
    need = int(np.prod(page.chunked))
    have = min(
        (min(len(pg.dataoffsets), len(pg.databytecounts)) for pg in lev.pages if pg is not None),
        default=need,
    )
    if have >= need:
        return None
    kind = "tiles" if page.is_tiled else "strips"
    return (
        f"level {level} claims {page.imagewidth} x {page.imagelength} px, which needs "
        f"{need:,} {kind}, but its directory lists only {have:,}: the header does not "
        "match the data (a corrupt or hand-edited file)"
    )


def page_coding(page: Any, path: Path) -> SlideCoding:
    """The coding of one TIFF page: its compression tag, Aperio's "Q=" in the image
    description, and for JPEG the quantisation tables (the JPEGTables tag, NDPI's
    JPEG header, else the head of the first tile's raw bytes; nothing is decoded), for
    WebP the head of the first tile (lossy or lossless)."""
    fh = getattr(page.parent, "filehandle", None)  # a multi-file OME-TIFF's own file
    path = Path(fh.path) if fh is not None and getattr(fh, "path", None) else path
    compression = int(page.compression)
    description = page.description if isinstance(page.description, str) else ""
    tables = page.jpegtables or getattr(page, "jpegheader", None)
    first_tile = None
    needs_tile = compression in TIFF_JPEG_CODES and not (tables and jpeg_quality(bytes(tables)))
    if needs_tile or compression == WEBP_CODE:  # WebP: lossy or lossless, per tile
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            if count:
                first_tile = read_bytes(path, offset, min(int(count), HEAD_BYTES))
                break
    return coding_from_tiff_page(compression, description, tables, first_tile)


def _data_end(page: Any) -> int:
    """The byte just past the last tile (or strip) of `page`; 0 when it has none."""
    return max((o + n for o, n in zip(page.dataoffsets, page.databytecounts) if n), default=0)


def data_extent_problem(tif: Any, size: int) -> str | None:
    """Why the pixel data of a parsed TIFF cannot all be in the file (truncated), or None."""
    end = max((_data_end(page) for page in tif.pages), default=0)
    if end > size:
        return (
            f"the file is truncated: image data extend to byte {end}, but it has only {size} bytes"
        )
    return None


def level_problem(tif: Any, series: Any, size: int) -> str | None:
    """Why a level of the pyramid `series` is cut off by the end of the file (a file of
    `size` bytes) or unreadable, naming the level; None when every level is whole.

    Every page of every level that tifffile found must hold its tiles (or strips)
    within the file. Then every directory (IFD) that the SubIFDs tag of the first page
    points to (OME-TIFF levels) must lie whole in the file: tifffile drops a level
    whose IFD is cut off. Last, the tag values of the first page (the OME-XML,
    written at the end) must lie in the file.
    """
    first = series.pages[0] if len(series.pages) else None
    for i, lev in enumerate(series.levels):
        for page in lev.pages:
            if page is None:
                continue
            end = _data_end(page)
            if end > size:
                return (
                    f"the file is truncated: the image data of level {i} "
                    f"({lev.keyframe.imagewidth} x {lev.keyframe.imagelength} px) extend to "
                    f"byte {end}, but the file has only {size} bytes"
                )
    problem = subifd_problem(tif, first, size)
    if problem:
        return problem
    if first is not None and getattr(first, "offset", None) is not None:
        return _tag_values_problem(tif, int(first.offset), size)
    return None


def subifd_problem(tif: Any, first: Any, size: int) -> str | None:
    """Why a directory (IFD) that the SubIFDs tag of the page `first` points to (the
    reduced levels of an OME-TIFF) is not whole in a file of `size` bytes, naming the
    level; None when all are whole."""
    subifds = [int(o) for o in (getattr(first, "subifds", None) or ())]
    for i, offset in enumerate(subifds, start=1):
        end = _ifd_end(tif, offset)
        if end is None or end > size:
            whole = "level 0 is" if i == 1 else f"levels 0 to {i - 1} are"
            where = f"starts at byte {offset}" if offset >= size else f"at byte {offset} is cut"
            return (
                f"the file is truncated: the directory of level {i} (SubIFD {i - 1} of the "
                f"first page) {where}, but the file has only {size} bytes; {whole} whole "
                "(an interrupted copy? copy the file again)"
            )
    return None


def _tag_count(tif: Any, offset: int) -> int | None:
    """The number of tags of the IFD at `offset` (the file handle positioned just past
    that count), or None when the count cannot be read. Call holding the handle's lock."""
    info = tif.tiff
    fh = tif.filehandle
    fh.seek(offset)
    raw = fh.read(info.tagnosize)
    if len(raw) < info.tagnosize:
        return None
    return int(struct.unpack(info.tagnoformat, raw)[0])


def _ifd_end(tif: Any, offset: int) -> int | None:
    """The byte just past the IFD at `offset` (its tags and next-IFD pointer), or None
    when not even its tag count can be read."""
    info = tif.tiff
    with tif.filehandle.lock:
        n = _tag_count(tif, offset)
    if n is None:
        return None
    return offset + info.tagnosize + n * info.tagsize + info.offsetsize


def ifd_chain_problem(tif: Any, size: int, limit: int = 10_000) -> str | None:
    """Why the chain of directories (IFDs: levels, label, macro ...) of a TIFF of `size`
    bytes breaks off before its end (a next-directory pointer past the end of the file,
    or a directory cut off: the usual interrupted copy), or None when every directory
    is whole. Walks at most `limit` directories."""
    info = tif.tiff
    fh = tif.filehandle
    offset = int(tif.pages.first.offset) if len(tif.pages) else 0
    seen: set[int] = set()
    for k in range(limit):
        if offset == 0 or offset in seen:  # the end of the chain (or a loop: not ours)
            return None
        seen.add(offset)
        end = _ifd_end(tif, offset) if offset < size else None
        if end is None or end > size:
            whole = (
                ("no directory is", "directory 0 is")[k]
                if k < 2
                else f"directories 0 to {k - 1} are"
            )
            return (
                f"the file is truncated: directory {k} (a pyramid level or an associated "
                f"image) starts at byte {offset}, but the file has only {size} bytes; "
                f"{whole} whole (an interrupted copy? copy the file again)"
            )
        with fh.lock:
            fh.seek(end - info.offsetsize)
            raw = fh.read(info.offsetsize)
        offset = int(struct.unpack(info.offsetformat, raw)[0])
    return None


_TAG_ITEM_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
                   13: 4, 16: 8, 17: 8, 18: 8}  # fmt: skip


def _tag_values_problem(tif: Any, offset: int, size: int) -> str | None:
    """Why a tag value of the IFD at `offset` lies past the end of the file (cut off:
    tifffile skips such a tag, e.g. the OME-XML ImageDescription written last), or None."""
    info = tif.tiff
    fh = tif.filehandle
    with fh.lock:
        n = _tag_count(tif, offset)
        if n is None:
            return None
        entries = fh.read(min(n, 4096) * info.tagsize)
    byteorder = info.tagnoformat[0]
    count_fmt = byteorder + ("Q" if info.offsetsize == 8 else "I")
    for k in range(len(entries) // info.tagsize):
        entry = entries[k * info.tagsize : (k + 1) * info.tagsize]
        code, dtype = struct.unpack(byteorder + "HH", entry[:4])
        (count,) = struct.unpack(count_fmt, entry[4 : 4 + info.offsetsize])
        nbytes = count * _TAG_ITEM_BYTES.get(dtype, 1)
        if nbytes <= info.offsetsize:
            continue  # the value is in the entry itself
        (value_at,) = struct.unpack(info.offsetformat, entry[4 + info.offsetsize :])
        if value_at + nbytes > size:
            name = tifffile.TIFF.TAGS.get(code, str(code))
            return (
                f"the file is truncated: the value of tag {name} ({nbytes} bytes at byte "
                f"{value_at}) of level 0 runs past the end of the file ({size} bytes)"
            )
    return None


@contextlib.contextmanager
def tifffile_messages(path: Path, into: list[str]) -> Iterator[None]:
    """Collect what tifffile logs while parsing `path` (a truncated file makes it log
    the pages it drops) instead of printing it; the caller decides what to say."""

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            into.append(record.getMessage())

    logger = logging.getLogger("tifffile")
    handler = _Collect(logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _icc_profile(page: Any) -> bytes | None:
    """The InterColorProfile tag (34675) of a page as bytes, or None."""
    value = page.tags.valueof(34675)
    return bytes(value) if isinstance(value, bytes | bytearray) and value else None


def open_tiff(path: Path, *, chunk: int) -> Slide:
    """Open the first image series of a TIFF / OME-TIFF (metadata only)."""
    problem = tiff_header_problem(path)
    if problem:
        raise SlideError(path, problem)
    messages: list[str] = []
    with tifffile_messages(path, messages):
        try:
            handle = shared_handle(TiffLevel.kind, path, _TiffHandle)
        except tifffile.TiffFileError as exc:
            raise SlideError(path, f"not a valid TIFF file ({exc})") from exc
        tif = handle.tif
        size = path.stat().st_size
        try:
            found = tif.series
        except tifffile.TiffFileError as exc:  # a directory in the chain cut off ...
            problem = subifd_problem(tif, tif.pages.first, size)
            raise SlideError(path, problem or f"the file is truncated or corrupt ({exc})") from exc
        if not found:
            raise SlideError(path, "the TIFF file contains no image (truncated or corrupt)")
        problem = level_problem(tif, tif.series[0], size) or data_extent_problem(tif, size)
    if problem:
        raise SlideError(path, problem)
    for message in dict.fromkeys(messages):  # the file opens: tifffile's notes are details
        log.warning("%s: tifffile: %s", path, message)
    series = tif.series[0]
    page = series.keyframe
    photometric = tifffile.PHOTOMETRIC(page.photometric).name
    if photometric in _REFUSED_PHOTOMETRIC:
        raise SlideError(path, f"{_REFUSED_PHOTOMETRIC[photometric]} images are not supported")
    axes = series.axes
    channel_sizes = [n for ax, n in zip(axes, series.shape) if ax in "CS" and n > 1]
    check_convertible(path, series.dtype, channel_sizes[0] if channel_sizes else 1)

    for i, lev in enumerate(series.levels):
        problem = segment_problem(lev.keyframe) or segment_count_problem(lev, i)
        if problem:
            raise SlideError(path, problem)

    levels = []
    for i, lev in enumerate(series.levels):
        th, tw = _tile(lev.keyframe)
        chunks = tuple(
            aligned_chunk(th, chunk) if ax == "Y" else aligned_chunk(tw, chunk) if ax == "X" else n
            for ax, n in zip(axes, lev.shape)
        )
        src = TiffLevel(path, i, lev.shape, lev.dtype)
        src._handle = handle
        levels.append(as_rgb8(to_yxc(src.to_dask(chunks), axes, path=path), path=path))
    shapes = [lvl.shape for lvl in levels]
    compression = tifffile.COMPRESSION(page.compression).name
    metadata = {
        "series_kind": series.kind,
        "axes": axes,
        "dtype": str(series.dtype),
        "photometric": photometric,
        "compression": compression,
        "tile": _tile(page),
        "icc_profile": _icc_profile(page),
    }
    mpp = _mpp(tif, page)
    return Slide(
        levels=levels,
        mpp=mpp,
        downsamples=downsamples_of(shapes),
        path=path,
        format="ome-tiff" if tif.is_ome else "tiff",
        metadata=metadata,
        coding=coding_or_unknown(page_coding, page, path),
        origin=_ome_origin(tif.ome_metadata, mpp) if tif.is_ome else (0.0, 0.0),
    )
