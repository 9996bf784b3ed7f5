"""Vendor whole-slide formats (.svs .ndpi .mrxs .scn .bif .vms .svslide) through OpenSlide.

One OpenSlide handle per file and process is shared by all chunk reads: the OpenSlide
library is thread-safe and runs concurrent `read_region` calls in parallel (since
3.3.1), and openslide-python releases the GIL during them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import openslide

from napari_srgan_sqe.io import _formats
from napari_srgan_sqe.io.codecs import SlideCoding
from napari_srgan_sqe.io.slides import (
    LevelSource,
    Slide,
    SlideError,
    aligned_chunk,
    coding_or_unknown,
    composite,
    shared_handle,
    tiff_header_problem,
)

TIFF_BASED = frozenset({".svs", ".ndpi", ".scn", ".bif"})  # .svslide is SQLite
JPEG_VENDORS = frozenset({"hamamatsu", "mirax", "sakura"})
"""Vendors whose slides hold JPEG tiles (NDPI, VMS; MIRAX by default; Sakura SVSlide)."""


class OpenSlideLevel(LevelSource):
    """One OpenSlide level as an array (y, x, 3) uint8, RGBA composited on the background.

    Level > 0 regions are addressed in level-0 coordinates rounded to whole pixels;
    where the level's downsample is not an integer OpenSlide resamples the region by
    the remaining fraction of a pixel (at most half a level-0 pixel).
    """

    kind = "openslide"

    def __init__(
        self,
        path: Path,
        level: int,
        shape: tuple[int, ...],
        *,
        downsample: float,
        background: tuple[int, int, int],
    ) -> None:
        super().__init__(path, level, shape, np.uint8)
        self.downsample = downsample
        self.background = background

    def _open(self, path: Path) -> Any:
        return openslide.OpenSlide(path)

    def _read(self, handle: Any, key: tuple[slice, ...]) -> np.ndarray:
        ys, xs, cs = key
        if self.level == 0:
            location = (xs.start, ys.start)
        else:
            location = (round(xs.start * self.downsample), round(ys.start * self.downsample))
        size = (xs.stop - xs.start, ys.stop - ys.start)
        rgba = np.asarray(handle.read_region(location, self.level, size))
        return composite(rgba, self.background)[..., cs]


def _background(props: Any) -> tuple[int, int, int]:
    value = props.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR)
    try:
        return tuple(int(value[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
    except (TypeError, ValueError, IndexError):
        return (255, 255, 255)


def _mpp(props: Any) -> float | None:
    try:
        mpp = float(props.get(openslide.PROPERTY_NAME_MPP_X, "nan"))
    except ValueError:
        mpp = float("nan")
    if np.isfinite(mpp) and mpp > 0:
        return mpp
    # generic TIFF: resolution tags
    unit = {"centimeter": 1e4, "inch": 25400.0}.get(str(props.get("tiff.ResolutionUnit", "")))
    try:
        res = float(props.get("tiff.XResolution", "nan"))
    except ValueError:
        return None
    if unit and np.isfinite(res) and res > 0 and unit / res <= _formats.MAX_PLAUSIBLE_MPP:
        return unit / res
    return None


def _inspect_tiff(path: Path) -> SlideCoding:
    """Refuse TIFF-based slides whose first directory or pixel data lie past the end;
    from the same parse, the coding of level 0 (the largest page, tiled first)."""
    problem = tiff_header_problem(path)
    if problem:
        raise SlideError(path, problem)
    import tifffile

    from napari_srgan_sqe.io._tiff_reader import data_extent_problem, page_coding

    try:
        with tifffile.TiffFile(path) as tif:
            problem = data_extent_problem(tif, path.stat().st_size)
            pages = [pg for pg in tif.pages if hasattr(pg, "compression")]
            level0 = max(pages, key=lambda pg: (pg.is_tiled, pg.imagewidth * pg.imagelength))
            coding = coding_or_unknown(page_coding, level0, path)
    except Exception:  # not parseable by tifffile: let OpenSlide judge
        return SlideCoding()
    if problem:
        raise SlideError(path, problem)
    return coding


def _mirax_coding(props: Any) -> SlideCoding:
    """MIRAX: JPEG unless Slidedat.ini names PNG or BMP for level 0 (best effort:
    `mirax.*.IMAGE_FORMAT`, the level-0 section's first); quality from its
    IMAGE_COMPRESSION_FACTOR where stated."""
    keys = sorted(
        (k for k in props if str(k).startswith("mirax.") and str(k).endswith(".IMAGE_FORMAT")),
        key=lambda k: "LEVEL_0_" not in str(k),
    )
    fmt = str(props.get(keys[0], "")).upper() if keys else ""
    if fmt in ("PNG", "BMP"):
        return SlideCoding("none", None, fmt)
    quality = None
    if keys:
        factor = props.get(keys[0][: -len("IMAGE_FORMAT")] + "IMAGE_COMPRESSION_FACTOR")
        quality = int(factor) if str(factor or "").strip().isdigit() else None
    return SlideCoding("jpeg", quality if quality and 1 <= quality <= 100 else None, "mirax")


def vendor_coding(tiff_coding: SlideCoding, vendor: str, props: Any) -> SlideCoding:
    """How level 0 of an OpenSlide slide is stored: `tiff_coding` (from its TIFF page,
    for TIFF-based formats) when known; JPEG for the vendors that only store JPEG; else
    unknown."""
    coding = tiff_coding
    if coding.codec != "unknown":
        return coding
    if vendor == "mirax":
        return _mirax_coding(props)
    if vendor in JPEG_VENDORS:
        return SlideCoding("jpeg", None, vendor)
    return coding


def open_vendor(path: Path, *, chunk: int) -> Slide:
    """Open a vendor slide with OpenSlide (metadata only)."""
    ext = _formats.extension(path)
    tiff_coding = _inspect_tiff(path) if ext in TIFF_BASED else SlideCoding()
    vendor = openslide.OpenSlide.detect_format(path)
    if vendor is None:
        raise SlideError(
            path,
            f"OpenSlide does not recognise this file as a {ext} slide (corrupt, "
            "truncated, or another format with this extension)",
        )
    try:
        handle = shared_handle(OpenSlideLevel.kind, path, openslide.OpenSlide)
    except openslide.OpenSlideError as exc:
        raise SlideError(path, f"OpenSlide cannot open it: {exc}") from exc
    props = handle.properties
    background = _background(props)
    levels = []
    for i, (w, h) in enumerate(handle.level_dimensions):
        tw = int(props.get(f"openslide.level[{i}].tile-width", 0) or 0)
        th = int(props.get(f"openslide.level[{i}].tile-height", 0) or 0)
        src = OpenSlideLevel(
            path, i, (h, w, 3), downsample=float(handle.level_downsamples[i]), background=background
        )
        src._handle = handle
        levels.append(src.to_dask((aligned_chunk(th, chunk), aligned_chunk(tw, chunk), 3)))
    metadata = {
        "vendor": vendor,
        "properties": dict(props),
        "associated_images": list(handle.associated_images),
        "background": background,
    }
    return Slide(
        levels=levels,
        mpp=_mpp(props),
        downsamples=[float(d) for d in handle.level_downsamples],
        path=path,
        format=vendor,
        metadata=metadata,
        coding=coding_or_unknown(vendor_coding, tiff_coding, vendor, props),
    )
