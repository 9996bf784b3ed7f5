"""Vendor whole-slide formats (.svs .ndpi .mrxs .scn .bif .vms .svslide) and DICOM WSI
(.dcm files, folders of them) through OpenSlide.

DICOM WSI stores one level per file, all in one folder: OpenSlide opens any file of the
series and finds the others in the same folder by their Series Instance UID. A folder
is opened through its first DICOM file (by name) that OpenSlide recognises.

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
from napari_srgan_sqe.io._slide import (
    MAX_SEGMENT_BYTES,
    LevelSource,
    Slide,
    SlideError,
    aligned_chunk,
    coding_or_unknown,
    composite,
    shared_handle,
    tiff_header_problem,
)
from napari_srgan_sqe.io.codecs import SlideCoding

TIFF_BASED = frozenset({".svs", ".ndpi", ".scn", ".bif"})  # .svslide is SQLite
JPEG_VENDORS = frozenset({"hamamatsu", "mirax", "sakura"})
"""Vendors whose slides hold JPEG tiles (NDPI, VMS; MIRAX by default; Sakura SVSlide)."""
DICOM_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": ("none", "implicit VR, uncompressed"),
    "1.2.840.10008.1.2.1": ("none", "uncompressed"),
    "1.2.840.10008.1.2.4.50": ("jpeg", "DICOM JPEG baseline"),
    "1.2.840.10008.1.2.4.51": ("jpeg", "DICOM JPEG extended"),
    "1.2.840.10008.1.2.4.57": ("none", "DICOM JPEG lossless"),
    "1.2.840.10008.1.2.4.70": ("none", "DICOM JPEG lossless"),
    "1.2.840.10008.1.2.4.80": ("none", "DICOM JPEG-LS lossless"),
    "1.2.840.10008.1.2.4.90": ("none", "DICOM JPEG 2000 lossless"),
    "1.2.840.10008.1.2.4.91": ("jpeg2000", "DICOM JPEG 2000"),
    "1.2.840.10008.1.2.4.201": ("none", "DICOM HTJ2K lossless"),
    "1.2.840.10008.1.2.4.202": ("none", "DICOM HTJ2K lossless"),
    "1.2.840.10008.1.2.4.203": ("jpeg2000", "DICOM HTJ2K"),
}
"""Transfer Syntax UID of level 0 -> (codec, detail) for `SlideCoding`."""


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

    from napari_srgan_sqe.io._tiff_reader import (
        data_extent_problem,
        ifd_chain_problem,
        page_coding,
        tifffile_messages,
    )

    # what tifffile logs (a directory it cannot reach) is not printed raw:
    # `ifd_chain_problem` says it in words
    try:
        with tifffile_messages(path, []), tifffile.TiffFile(path) as tif:
            size = path.stat().st_size
            problem = ifd_chain_problem(tif, size) or data_extent_problem(tif, size)
            pages = [pg for pg in tif.pages if isinstance(pg, tifffile.TiffPage)]
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


def dicom_coding(props: Any) -> SlideCoding:
    """How level 0 of a DICOM WSI is stored, from its Transfer Syntax UID (OpenSlide's
    `dicom.TransferSyntaxUID`); the quality is not known."""
    uid = str(props.get("dicom.TransferSyntaxUID", "")).strip()
    codec, detail = DICOM_TRANSFER_SYNTAXES.get(uid, ("unknown", ""))
    return SlideCoding(codec, None, detail or (f"transfer syntax {uid}" if uid else ""))


def vendor_coding(tiff_coding: SlideCoding, vendor: str, props: Any) -> SlideCoding:
    """How level 0 of an OpenSlide slide is stored: `tiff_coding` (from its TIFF page,
    for TIFF-based formats) when known; JPEG for the vendors that only store JPEG; else
    unknown."""
    coding = tiff_coding
    if coding.codec != "unknown":
        return coding
    if vendor == "mirax":
        return _mirax_coding(props)
    if vendor == "dicom":
        return dicom_coding(props)
    if vendor in JPEG_VENDORS:
        return SlideCoding("jpeg", None, vendor)
    return coding


def _icc_profile(handle: Any) -> bytes | None:
    """The slide's ICC profile (bytes) as OpenSlide reports it, or None."""
    try:
        profile = handle.color_profile
    except Exception:  # noqa: BLE001 - a profile OpenSlide cannot parse: none
        return None
    if profile is None:
        return None
    try:
        return bytes(profile.tobytes())
    except Exception:  # noqa: BLE001
        return None


def open_dicom_folder(folder: Path, *, chunk: int, files: list[Path] | None = None) -> Slide:
    """Open the DICOM WSI in `folder` (one file per level) through its first DICOM file
    that OpenSlide recognises; the Slide's path is the folder. `files`: its DICOM files
    (`_formats.dicom_files(folder)`) when the caller has listed them already."""
    if files is None:
        files = _formats.dicom_files(folder)
    for file in files:
        if openslide.OpenSlide.detect_format(file) == "dicom":
            return open_vendor(file, chunk=chunk, shown_as=folder)
    raise SlideError(
        folder,
        f"none of its {len(files)} DICOM files is a whole-slide image OpenSlide can open "
        "(VL Whole Slide Microscopy Image Storage)",
    )


def open_vendor(path: Path, *, chunk: int, shown_as: Path | None = None) -> Slide:
    """Open a vendor slide or DICOM WSI with OpenSlide (metadata only); `shown_as`: the
    path the Slide reports (a DICOM folder), when it is not `path`."""
    ext = _formats.extension(path)
    tiff_coding = _inspect_tiff(path) if ext in TIFF_BASED else SlideCoding()
    vendor = openslide.OpenSlide.detect_format(path)
    if vendor is None:
        what = "DICOM whole-slide image" if ext == ".dcm" else f"{ext} slide"
        raise SlideError(
            path,
            f"OpenSlide does not recognise this file as a {what} (corrupt, "
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
        if tw * th * 4 > MAX_SEGMENT_BYTES:  # OpenSlide decodes a whole tile, as RGBA
            raise SlideError(
                path,
                f"level {i} is stored in tiles of {tw} x {th} px, {tw * th * 4 / 2**20:,.0f} "
                f"MiB to decode for any read of a tile (limit {MAX_SEGMENT_BYTES / 2**20:,.0f}"
                " MiB); a file with such tiles is corrupt or crafted",
            )
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
        "icc_profile": _icc_profile(handle),
    }
    if shown_as is not None:
        metadata["file"] = str(path)
    return Slide(
        levels=levels,
        mpp=_mpp(props),
        downsamples=[float(d) for d in handle.level_downsamples],
        path=shown_as or path,
        format=vendor,
        metadata=metadata,
        coding=coding_or_unknown(vendor_coding, tiff_coding, vendor, props),
    )
