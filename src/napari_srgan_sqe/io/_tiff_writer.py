"""The OME-TIFF side of `io.pyramid`: streaming a pyramid, staged as an OME-Zarr,
tile by tile into a tiled BigTIFF with OME-XML (`_stream_tiff`), and chaining the
reduced levels after level 0 for generic TIFF readers (`_chain_subifds`)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from napari_srgan_sqe.io._formats import metadata_text
from napari_srgan_sqe.io._zarr_writer import _Pyramid


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
