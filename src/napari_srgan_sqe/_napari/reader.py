"""npe2 reader: whole-slide images and plain images as one lazy RGB image layer.

`get_reader` answers from the path alone (extension, or zarr metadata for folders),
so napari asks it cheaply; it returns None for anything else. For a path it accepts,
the returned function raises `SlideError` when the file is broken: napari catches it
and shows "Tried opening with napari-srgan-sqe, but failed" with our reason, which
says more than the "no reader" message a None would lead to; the viewer stays up.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari_srgan_sqe.io._formats import extension, is_supported_path

__all__ = ["coding_metadata", "get_reader", "layer_name", "read_slides", "slide_layer_data"]

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | Sequence[str]) -> Callable[..., list[LayerData]] | None:
    """The reader function for a supported path (or a list of them), else None."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths or not all(is_supported_path(p) for p in paths):
        return None
    return read_slides


def read_slides(path: str | Sequence[str]) -> list[LayerData]:
    """One image layer per path; raises `SlideError` for unreadable files."""
    from napari_srgan_sqe.io.slides import open_slide

    paths = [path] if isinstance(path, str | Path) else list(path)
    return [item for p in paths for item in slide_layer_data(open_slide(p))]


def layer_name(path: str | Path) -> str:
    """File name without its (compound) extension."""
    name = Path(path).name.rstrip("/")
    ext = extension(name)
    return name[: -len(ext)] if ext and name.lower().endswith(ext) else name


def coding_metadata(coding: Any) -> dict[str, Any]:
    """A `SlideCoding` as plain layer metadata: codec, quality, detail, lossy, text."""
    return {
        "codec": coding.codec,
        "quality": coding.quality,
        "detail": coding.detail,
        "lossy": bool(coding.lossy),
        "text": str(coding),
    }


@functools.cache
def _image_accepts(parameter: str) -> bool:
    from napari.layers import Image

    return parameter in inspect.signature(Image.__init__).parameters


def slide_layer_data(slide: Any) -> list[LayerData]:
    """napari layer data of a `Slide`: multiscale when it has more than one level.

    napari loads the whole coarsest level when zoomed out, so a slide whose coarsest
    level is large (a 40000 x 40000 single-level TIFF) gets lazily computed block-mean
    levels down to about 512 px (`slides.display_levels`): memory stays bounded. The
    metadata's `downsamples` are those of the layer's levels; `file_levels` counts
    the file's own (the first ones).
    The layer scale is the pixel size in um (with units "um" on napari >= 0.6), or 1
    when the file records none; the translate is `slide.origin` (in the same units),
    so an export of a region lies on its source; the metadata keep mpp, path, format
    and the coding
    (`coding_metadata`: the Enhance widget shows it and picks its default model by it).
    """
    from napari_srgan_sqe.io.slides import display_levels, downsamples_of

    levels = display_levels(list(slide.levels))
    multiscale = len(levels) > 1
    mpp = slide.mpp
    origin = tuple(float(v) for v in getattr(slide, "origin", (0.0, 0.0)))
    meta: dict[str, Any] = {
        "name": layer_name(slide.path),
        "rgb": True,
        "multiscale": multiscale,
        "scale": (mpp, mpp) if mpp else (1.0, 1.0),
        "translate": origin,
        "contrast_limits": [0, 255],
        "metadata": {
            "mpp": mpp,
            "path": str(slide.path),
            "slide_format": slide.format,
            "downsamples": (
                list(slide.downsamples)
                if len(levels) == len(slide.levels)
                else downsamples_of([lvl.shape for lvl in levels])
            ),
            "file_levels": len(slide.levels),
            "coding": coding_metadata(slide.coding),
        },
    }
    if mpp and _image_accepts("units"):
        meta["units"] = ("um", "um")
    data = levels if multiscale else levels[0]
    return [(data, meta, "image")]
