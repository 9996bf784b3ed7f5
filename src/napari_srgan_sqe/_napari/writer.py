"""npe2 writers: an image layer (one level or multiscale) as pyramidal OME-Zarr / OME-TIFF.

Data that are not (y, x, 3) uint8 are converted by the reading rules (grayscale
replicated, RGBA on white, uint16 / 257, float [0, 1] x 255). napari's save dialog
has already confirmed replacing an existing file, so these overwrite (an existing
OME-Zarr is replaced only once the new one is complete). A save interrupted part-way
resumes when the same layer is saved to the same path again. napari runs writers on
the GUI thread: for large lazy SR layers use `srgan-sqe enhance`. The layer's place
(its translate) is written as the export's origin (`layer_origin`), so the saved file
reopens where the layer was.
"""

from __future__ import annotations

from typing import Any

__all__ = ["layer_levels_and_mpp", "layer_origin", "write_ome_tiff", "write_ome_zarr"]


def layer_levels_and_mpp(data: Any, meta: dict[str, Any]) -> tuple[list[Any], float | None]:
    """Levels (y, x, 3) uint8, finest first, and the pixel size in um (or None).

    The pixel size: `_layers.pixel_size_um` (the metadata's "mpp", set by this plugin's
    reader and the Enhance widget, also when unknown; else a scale in length units;
    else a scale other than 1 taken as um).
    """
    from napari_srgan_sqe._napari._layers import pixel_size_um
    from napari_srgan_sqe.io.slides import as_rgb8

    name = str(meta.get("name", "layer"))
    if meta.get("multiscale") or isinstance(data, list | tuple):
        raw = [data[i] for i in range(len(data))]
    else:
        raw = [data]
    # an SR layer's live level shows placeholders where SR is not computed yet: write
    # the exact SR (`exact`) instead
    levels = [as_rgb8(getattr(level, "exact", level), path=name) for level in raw]

    return levels, pixel_size_um(meta.get("metadata"), meta.get("scale"), meta.get("units"))


def layer_origin(meta: dict[str, Any], mpp: float | None) -> tuple[float, float] | None:
    """Where the layer's pixel (0, 0) lies, in the units the export's scale is written
    in (um with a pixel size `mpp`, else level-0 pixels): its translate over its scale,
    in pixels, times `mpp`. None when the layer is not moved (translate 0)."""
    translate = meta.get("translate")
    if translate is None or len(translate) < 2 or not any(translate[-2:]):
        return None
    scale = meta.get("scale")
    scale = scale[-2:] if scale is not None and len(scale) >= 2 else (1.0, 1.0)
    px = [float(t) / float(s) if s else 0.0 for t, s in zip(translate[-2:], scale)]
    return (px[0] * mpp, px[1] * mpp) if mpp else (px[0], px[1])


def _write(kind: str, path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    from dask.base import tokenize
    from napari.utils import progress as napari_progress

    from napari_srgan_sqe.io import pyramid

    levels, mpp = layer_levels_and_mpp(data, meta)
    bar: list[Any] = []

    def report(done: int, total: int) -> None:
        if not bar:
            bar.append(napari_progress(total=total, desc=f"saving {meta.get('name', 'layer')}"))
        bar[0].update(done - bar[0].n)

    write = pyramid.write_ome_zarr if kind == "zarr" else pyramid.write_ome_tiff
    try:
        # resumable: an interrupted save of the same data continues (the fingerprint
        # names the data: dask graph names, or a hash of in-memory pixels)
        out = write(
            levels,
            path,
            mpp=mpp,
            origin=layer_origin(meta, mpp),
            overwrite=True,
            resume=True,
            progress=report,
            fingerprint=f"napari layer {tokenize(*levels)}",
        )
    finally:
        if bar:
            bar[0].close()
    return [str(out)]


def write_ome_zarr(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one image layer as a pyramidal OME-Zarr (NGFF 0.4), with a progress bar.

    napari runs writers on the GUI thread, which is blocked until the whole pyramid is
    written: export large lazy SR layers with `srgan-sqe enhance` instead (resumable,
    with progress, no frozen viewer).
    """
    return _write("zarr", path, data, meta)


def write_ome_tiff(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one image layer as a tiled pyramidal OME-TIFF, with a progress bar.

    napari runs writers on the GUI thread, which is blocked until the whole pyramid is
    written: export large lazy SR layers with `srgan-sqe enhance` instead (resumable,
    with progress, no frozen viewer).
    """
    return _write("tiff", path, data, meta)
