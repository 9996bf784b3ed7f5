"""TIFF and OME-TIFF (tiled pyramids in SubIFDs or page series, or single pages).

Pixels come from tifffile's zarr store (`TiffPageSeries.aszarr()`, zarr v2 metadata
served to zarr 3), opened as a group for pyramids; each level is wrapped so that dask
chunks cover whole TIFF tiles (or strips) and the graph pickles by path.

Untiled pages are read strip by strip, and reading any pixel of a strip decodes all of
it: a page whose one strip needs more than `MAX_STRIP_BYTES` to decode (a 30000 x
30000 image stored as a single strip) is refused at open, as Pillow refuses
decompression bombs for PNG / JPEG, with advice to convert it to a tiled pyramid.
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from napari_srgan_sqe.io import _formats
from napari_srgan_sqe.io._slide import (
    HEAD_BYTES,
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
    SlideCoding,
    coding_from_tiff_page,
    jpeg_quality,
)

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


class _TiffHandle:
    """An open TiffFile and the zarr arrays of its first series, created on first use."""

    def __init__(self, path: Path) -> None:
        self.tif = tifffile.TiffFile(path)
        self._arrays: dict[int, Any] = {}
        self._lock = threading.Lock()

    def array(self, level: int) -> Any:
        with self._lock:
            if level not in self._arrays:
                series = self.tif.series[0]
                store = series.aszarr()
                if len(series.levels) > 1:
                    group = zarr.open_group(store, mode="r")
                    self._arrays.update({i: group[str(i)] for i in range(len(series.levels))})
                else:
                    self._arrays[0] = zarr.open_array(store, mode="r")
            return self._arrays[level]


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


MAX_STRIP_BYTES = 512 * 2**20
"""Largest decoded size of one strip of an untiled page that is read (512 MiB, about
Pillow's decompression-bomb limit for an RGB image); larger strips are refused."""


def strip_problem(page: Any) -> str | None:
    """Why an untiled page cannot be read in bounded memory (its strips are too big), or None."""
    if page.is_tiled:
        return None
    rows, width = _tile(page)
    samples = int(page.samplesperpixel) if int(page.planarconfig) == 1 else 1  # contig
    nbytes = rows * width * samples * np.dtype(page.dtype).itemsize
    if nbytes <= MAX_STRIP_BYTES:
        return None
    what = "a single strip" if rows >= int(page.imagelength) else f"strips of {rows} rows"
    return (
        f"the untiled {page.imagewidth} x {page.imagelength} image is stored as {what}, "
        f"{nbytes / 2**20:,.0f} MiB to decode for any read (limit {MAX_STRIP_BYTES / 2**20:,.0f} "
        "MiB); convert it to a tiled pyramidal TIFF to read it in tiles, e.g. "
        "`vips tiffsave in.tif out.tif --tile --pyramid --compression deflate`"
    )


def page_coding(page: Any, path: Path) -> SlideCoding:
    """The coding of one TIFF page: its compression tag, Aperio's "Q=" in the image
    description, and for JPEG the quantisation tables (the JPEGTables tag, NDPI's
    JPEG header, else the head of the first tile's raw bytes; nothing is decoded)."""
    fh = getattr(page.parent, "filehandle", None)  # a multi-file OME-TIFF's own file
    path = Path(fh.path) if fh is not None and getattr(fh, "path", None) else path
    compression = int(page.compression)
    description = page.description if isinstance(page.description, str) else ""
    tables = page.jpegtables or getattr(page, "jpegheader", None)
    first_tile = None
    if compression in TIFF_JPEG_CODES and not (tables and jpeg_quality(bytes(tables))):
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            if count:
                first_tile = read_bytes(path, offset, min(int(count), HEAD_BYTES))
                break
    return coding_from_tiff_page(compression, description, tables, first_tile)


def data_extent_problem(tif: Any, size: int) -> str | None:
    """Why the pixel data of a parsed TIFF cannot all be in the file (truncated), or None."""
    end = 0
    for page in tif.pages:
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts) if n]
        end = max([end, *ends])
    if end > size:
        return (
            f"the file is truncated: image data extend to byte {end}, but it has only {size} bytes"
        )
    return None


def _icc_profile(page: Any) -> bytes | None:
    """The InterColorProfile tag (34675) of a page as bytes, or None."""
    value = page.tags.valueof(34675)
    return bytes(value) if isinstance(value, bytes | bytearray) and value else None


def open_tiff(path: Path, *, chunk: int) -> Slide:
    """Open the first image series of a TIFF / OME-TIFF (metadata only)."""
    problem = tiff_header_problem(path)
    if problem:
        raise SlideError(path, problem)
    try:
        handle = shared_handle(TiffLevel.kind, path, _TiffHandle)
    except tifffile.TiffFileError as exc:
        raise SlideError(path, f"not a valid TIFF file ({exc})") from exc
    tif = handle.tif
    if not tif.series:
        raise SlideError(path, "the TIFF file contains no image (truncated or corrupt)")
    problem = data_extent_problem(tif, path.stat().st_size)
    if problem:
        raise SlideError(path, problem)
    series = tif.series[0]
    page = series.keyframe
    photometric = tifffile.PHOTOMETRIC(page.photometric).name
    if photometric in _REFUSED_PHOTOMETRIC:
        raise SlideError(path, f"{_REFUSED_PHOTOMETRIC[photometric]} images are not supported")
    axes = series.axes
    channel_sizes = [n for ax, n in zip(axes, series.shape) if ax in "CS" and n > 1]
    check_convertible(path, series.dtype, channel_sizes[0] if channel_sizes else 1)

    for lev in series.levels:
        problem = strip_problem(lev.keyframe)
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
    return Slide(
        levels=levels,
        mpp=_mpp(tif, page),
        downsamples=downsamples_of(shapes),
        path=path,
        format="ome-tiff" if tif.is_ome else "tiff",
        metadata=metadata,
        coding=coding_or_unknown(page_coding, page, path),
    )
