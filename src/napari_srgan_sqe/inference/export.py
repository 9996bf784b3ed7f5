"""Headless export: super-resolve a slide (or a region) to a pyramidal OME-Zarr / OME-TIFF.

`enhance_slide` checks everything a user can get wrong (output folder, format,
region, model scale) before any pixel is computed, then hands SR level 0 to
io.pyramid, which computes and writes it unit by unit (a block of whole SR chunks,
several at once so the engine batches them), builds the coarser levels by 2 x 2
mean from the level just written, and records progress so an interrupted export
resumes where it stopped (only by a run with the same model, source file, region,
tile and options: `export_fingerprint`; otherwise it restarts). Memory stays bounded by the units in flight plus a small
tile cache, whatever the slide size. The pixel size is divided by the scale, and the
export is placed where the region lies on the slide (`export_origin`).
A `region` is super-resolved on the whole slide's level 0 with the region as the
engine's window, so its tiles' halos read the real pixels around it: the result
equals the crop of the whole-slide SR.

Tiles are 512 LR px by default on every device: an export has no first tile to
wait for, so it takes the smaller halo overhead ((512 + 2 halo)^2 / 512^2 = 1.15 for
the light model, against 1.32 at the viewer's 256 px on a CPU).

`tissue_only`: tiles without tissue are filled by bicubic up-sampling (cheap)
instead of the model. Tissue is found on a thumbnail of at least 4 x 4 px per tile
(the coarsest pyramid level that fine, block-averaged further): a pixel is tissue
when its HSV saturation is above 0.07 and its value below 0.9 (the white glass is
bright and grey); the mask is dilated by one thumbnail pixel so tiles at the tissue
edge get the model.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from napari_srgan_sqe.inference.engine import (
    SRPyramid,
    check_scale,
    resolve_model,
    super_resolve,
)
from napari_srgan_sqe.inference.tiling import TileGrid, TileMask, check_region
from napari_srgan_sqe.io.errors import DataError, RegionError

__all__ = [
    "DataError",
    "OutOfMemoryError",
    "PixelSizeWarning",
    "RegionError",
    "default_model_for",
    "enhance_slide",
    "export_origin",
    "output_format",
    "writer_chunk",
    "tissue_mask",
]

EXPORT_TILE = 512  # halo overhead 1.15 for the light model (1.32 at the viewer's 256)
SATURATION_MIN = 0.07
VALUE_MAX = 0.9
Progress = Callable[[int, int], None]


class PixelSizeWarning(UserWarning):
    """The input records no pixel size and none was given: the export has none either."""


class OutOfMemoryError(DataError):
    """The export ran out of main memory for its tiles (too large a tile or batch);
    the message says what was asked and what to change."""


def _is_host_oom(exc: BaseException) -> bool:
    """Python's MemoryError, or torch's CPU allocator failing ("can't allocate memory")."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "not enough memory" in text
    )


def _oom_message(exc: BaseException, *, tile: int, batch: int | None, device: str) -> str:
    import re

    found = re.search(r"allocate (\d+) bytes", str(exc))
    asked = f" (an allocation of {int(found.group(1)) / 2**20:,.0f} MiB failed)" if found else ""
    return (
        f"out of memory computing {tile} x {tile} px tiles in batches of up to "
        f"{batch or 16} on {device}{asked}; use a smaller tile (--tile, default {EXPORT_TILE}) "
        "or batch (--batch)"
    )


def output_format(path: str | os.PathLike[str]) -> Literal["zarr", "tiff"]:
    """'zarr' or 'tiff' from the output's extension; DataError for anything else."""
    name = str(path).lower().rstrip("/")
    if name.endswith((".zarr", ".ome.zarr")):
        return "zarr"
    if name.endswith((".tif", ".tiff", ".ome.tif", ".ome.tiff")):
        return "tiff"
    raise DataError(
        f"cannot tell the output format of {path}: use .ome.zarr / .zarr (OME-Zarr) "
        "or .ome.tif / .tif / .tiff (OME-TIFF)"
    )


def check_writable(path: Path, *, overwrite: bool) -> None:
    """Fail early, with a clear message, if `path` cannot be written: its name (the
    format), its folder, and what is there already (`io.pyramid.check_target`)."""
    from napari_srgan_sqe.io.atomic import probe_writable
    from napari_srgan_sqe.io.pyramid import check_target

    kind = output_format(path)
    parent = path.parent
    if not parent.exists():
        raise DataError(f"cannot write {path}: the folder {parent} does not exist")
    if not parent.is_dir():
        raise DataError(f"cannot write {path}: {parent} is not a folder")
    try:
        probe_writable(parent)
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror or exc} in {parent}") from None
    try:
        check_target(path, kind, overwrite=overwrite)
    except FileExistsError as exc:
        if not overwrite:
            raise DataError(
                f"{path} already exists (replace it with --overwrite; overwrite=True in Python)"
            ) from None
        raise DataError(f"cannot write {path}: it {exc.strerror}") from None


def tissue_mask(
    levels: list[Any],
    downsamples: list[float] | None,
    *,
    region: tuple[int, int, int, int],
    tile: int,
) -> np.ndarray:
    """Per tile of the region's grid: True where it holds tissue (see module docstring)."""
    import dask.array as da
    from scipy.ndimage import binary_dilation

    x, y, w, h = region
    target = max(1.0, tile / 4)  # thumbnail px per LR px at most this
    downs = downsamples or [levels[0].shape[0] / lv.shape[0] for lv in levels]
    k = max(i for i, d in enumerate(downs) if d <= target)
    d = float(downs[k])
    lv = levels[k]
    ys, ye = int(y / d), max(int(y / d) + 1, math.ceil((y + h) / d))
    xs, xe = int(x / d), max(int(x / d) + 1, math.ceil((x + w) / d))
    crop = lv[ys : min(ye, lv.shape[0]), xs : min(xe, lv.shape[1])]
    f = max(1, int(target / d))
    if not hasattr(crop, "dask"):
        crop = da.from_array(np.asarray(crop), chunks=(1024, 1024, 3))
    f = min(f, crop.shape[0], crop.shape[1])
    thumb = da.coarsen(np.mean, crop.astype(np.float32), {0: f, 1: f}, trim_excess=True)
    thumb = np.asarray(thumb.compute(scheduler="threads")) / 255.0
    hi, lo = thumb.max(axis=2), thumb.min(axis=2)
    sat = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0)
    tissue = binary_dilation((sat > SATURATION_MIN) & (hi < VALUE_MAX), iterations=1)
    grid = TileGrid(h, w, tile)
    step = d * f  # LR px per thumbnail px
    out = np.zeros((grid.ny, grid.nx), bool)
    for iy in range(grid.ny):
        for ix in range(grid.nx):
            y0, y1, x0, x1 = grid.bounds(iy, ix)
            ty0, tx0 = int((y + y0) / step) - int(ys / f), int((x + x0) / step) - int(xs / f)
            ty1 = math.ceil((y + y1) / step) - int(ys / f)
            tx1 = math.ceil((x + x1) / step) - int(xs / f)
            out[iy, ix] = bool(tissue[max(ty0, 0) : max(ty1, 1), max(tx0, 0) : max(tx1, 1)].any())
    return out


def writer_chunk(sr_chunk: int, *, tiff: bool = False) -> int:
    """The output chunk: at most 512 px where possible, dividing the SR chunk into at
    most 4 x 4, so io.pyramid's units hold whole SR chunks (each computed once)."""
    c = sr_chunk
    while c > 512 and c % 2 == 0 and c // 2 >= sr_chunk / 4:
        c //= 2
    if tiff and c % 16:
        raise DataError(
            f"OME-TIFF tiles must be a multiple of 16 px, but tile x scale is {sr_chunk}: "
            "choose a tile size that is a multiple of 16 (or of 16 / scale)"
        )
    return c


def _scaled_mpp(mpp: Any, scale: int) -> Any:
    if mpp is None:
        return None
    if isinstance(mpp, tuple | list):
        return type(mpp)(m / scale for m in mpp)
    return float(mpp) / scale


def export_origin(
    region: tuple[int, int, int, int],
    scale: int,
    *,
    mpp: float | None,
    source_origin: tuple[float, float] = (0.0, 0.0),
    source_mpp: float | None = None,
) -> tuple[float, float]:
    """Where the centre of an export's pixel (0, 0) lies, (y, x), in its own units: um
    when the input's pixel size `mpp` is known, else the export's level-0 (SR) pixels,
    the units its scale is written in then.

    SR pixel (0, 0) of a `region` (x, y, w, h in LR level-0 px) covers the top-left
    1 / `scale` of LR pixel (y, x), so its centre lies (scale - 1) / (2 scale) LR px
    up and left of that pixel's (docs/architecture.md, pixel-centre convention); the
    corners of the export then meet the region's corners. `source_origin` (the
    input's own `Slide.origin`, in um or, with no `source_mpp`, in its pixels) is
    added, so an export of an export lands on the first one's source too.
    """
    from napari_srgan_sqe.degradation import lr_translate

    x, y, _, _ = region
    shift = lr_translate(scale) / scale  # LR px from an LR pixel's centre to SR (0, 0)'s
    oy, ox = (float(v) / source_mpp if source_mpp else float(v) for v in source_origin)
    unit = float(mpp) if mpp else float(scale)  # one LR px in the export's units
    return (oy + y - shift) * unit, (ox + x - shift) * unit


def default_model_for(coding: Any) -> tuple[str, str]:
    """The bundled model for a slide stored with `coding` (a `SlideCoding`, or None
    when not known), and why, in words: the clean model only for lossless input."""
    from napari_srgan_sqe.models.registry import model_for_coding

    codec = getattr(coding, "codec", None) or "unknown"
    name = model_for_coding(codec, getattr(coding, "quality", None))
    if codec == "none":
        why = "the input is stored losslessly: the model trained on clean LR"
    elif codec == "unknown":
        why = "the input's coding is unknown: the model for scanned (compressed) slides"
    else:
        short = type(coding)(coding.codec, coding.quality)  # "JPEG Q=30", no detail
        why = f"the input is stored as {short}, lossy: the model for scanned slides"
    return name, why


def enhance_slide(
    input: str | os.PathLike[str] | Any,
    output: str | os.PathLike[str],
    *,
    model: Any = None,
    device: str = "auto",
    region: tuple[int, int, int, int] | None = None,
    tissue_only: bool = False,
    tile: int | None = None,
    batch: int | None = None,
    scale: int | None = None,
    scheduler: Any = None,
    progress: Progress | None = None,
    resume: bool = True,
    overwrite: bool = False,
    stats: dict[str, Any] | None = None,
    compression: str = "lossless",
    quality: int | None = None,
    tiff_layout: str = "both",
    mpp: float | None = None,
    ngff: str = "0.4",
    seed: int | None = None,
    threads: int | None = None,
) -> Path:
    """Super-resolve the slide `input` and write the pyramid to `output`.

    `input`: a path, or a `Slide` already opened. The format follows the extension
    (.zarr / .ome.zarr, .tif / .tiff / .ome.tif).
    `model`: an SRModel, a bundled name or a .safetensors path; None chooses by the
    slide's coding (`default_model_for`: the clean model for losslessly stored
    input, the scanner model for JPEG / JPEG 2000 or unknown coding). `region`: (x, y, w, h) in LR level-0 px. `scale`: refuse a model of another
    scale. `scheduler`: a dask.distributed address or Client to compute on.
    `progress(done, total)` after each written unit. `resume`: continue an
    interrupted export. `stats`: a dict filled with timings, counters and the bytes
    written (`bytes_written`, `bytes_per_pixel` of SR level 0, pyramid included).
    `compression`: "lossless" (zlib for OME-TIFF, Blosc-zstd for OME-Zarr) or "jpeg"
    (OME-TIFF only) at `quality` (1 - 100, default 90): `io.pyramid.codec_options`.
    `tiff_layout`: where an OME-TIFF's reduced levels go (`io.pyramid.TIFF_LAYOUTS`;
    "both": OpenSlide and Bio-Formats see the pyramid). `mpp`: the input's pixel size
    in um (overrides the file's); when neither is known a `PixelSizeWarning` is issued
    and the export records no pixel size. An OME-TIFF carries the input's ICC profile.
    `ngff`: the OME-Zarr version, "0.4" (zarr format 2; read by QuPath, Bio-Formats and
    most viewers) or "0.5" (zarr format 3, sharded: `io.pyramid.NGFF_VERSIONS`).
    `seed`: the sample of a stochastic model (default 0; ignored by deterministic ones).
    `threads`: CPU threads for this export (torch's threads, which stay set for the
    process, and the chunks read, computed and written at once); None: all cores. A
    cluster's workers keep their own.
    The output records how it was made (`export_provenance`: model, its identity, the
    seed of a stochastic model, the source's file name and the region) in its metadata,
    and where it lies on the input (`export_origin`: an NGFF translation, an OME-TIFF
    plane position), so that opened beside the input it covers the region.

    Running out of main memory for the tiles (a huge `tile` or `batch`) raises
    `OutOfMemoryError` (a `DataError`) saying so; a `scheduler` address where no
    scheduler listens raises `inference.distributed.SchedulerError` before any work.

    The output is locked for the whole call (`io.pyramid.export_lock`, a lock file
    `.NAME.lock` next to it): a second export to the same output, in this or another
    process, fails at once with `ExportError` instead of mixing its pixels in.
    """
    from napari_srgan_sqe.io.pyramid import (
        NGFF_VERSIONS,
        TIFF_LAYOUTS,
        codec_options,
        export_lock,
        output_bytes,
    )
    from napari_srgan_sqe.io.slides import Slide, open_slide
    from napari_srgan_sqe.models.predictor import Predictor

    out = Path(output).expanduser()
    fmt = output_format(out)
    try:
        codec = codec_options(fmt, compression, quality)
    except ValueError as exc:
        raise DataError(f"cannot write {out}: {exc}") from None
    if tiff_layout not in TIFF_LAYOUTS:
        raise DataError(
            f"tiff_layout must be one of {', '.join(TIFF_LAYOUTS)}, not {tiff_layout!r}"
        )
    if mpp is not None and not (math.isfinite(float(mpp)) and float(mpp) > 0):
        raise DataError(f"the pixel size must be a positive number of um, got {mpp}")
    if ngff not in NGFF_VERSIONS:
        raise DataError(f"ngff must be one of {', '.join(NGFF_VERSIONS)}, not {ngff!r}")
    if threads is not None and not (
        isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1
    ):
        raise DataError(f"threads must be a whole number of at least 1, got {threads!r}")
    if fmt == "tiff" and ngff != "0.4":
        raise DataError(f"cannot write {out}: an NGFF version applies to OME-Zarr (.ome.zarr) only")
    _check_not_the_input(out, getattr(input, "path", input))
    check_writable(out, overwrite=overwrite)
    if scheduler is not None:  # before the model is loaded: an address nobody answers
        from napari_srgan_sqe.inference.distributed import check_scheduler

        check_scheduler(scheduler)
    with export_lock(out):  # another export to `out` is refused at once
        slide = input if isinstance(input, Slide) else open_slide(input)
        mpp = float(mpp) if mpp is not None else slide.mpp
        if mpp is None:
            warnings.warn(
                f"{slide.path} records no pixel size: the export will have none (scale 1, "
                "no unit); give the input's pixel size (mpp=..., --mpp) to record it",
                PixelSizeWarning,
                stacklevel=2,
            )
        model = resolve_model(model if model is not None else default_model_for(slide.coding)[0])
        check_scale(model, scale)
        lr0 = slide.levels[0]
        full = (int(lr0.shape[0]), int(lr0.shape[1]))
        region = check_region(region if region is not None else (0, 0, full[1], full[0]), full)
        x, y, w, h = region
        seed = (0 if seed is None else int(seed)) if model.descriptor.stochastic else None
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        predictor = Predictor(
            model, device=device, max_batch=batch or 16, seed=seed, coding=slide.coding
        )
        tile = tile or EXPORT_TILE
        mask = None
        if tissue_only:
            mask = tissue_mask(slide.levels, slide.downsamples, region=region, tile=tile)
        sr = super_resolve(
            lr0,
            model,
            predictor=predictor,
            tile=tile,
            batch=batch,
            cache_mb=64,
            use_model=None if mask is None else TileMask(mask),
            region=None if region == (0, 0, full[1], full[0]) else region,
        )
        level0 = sr[0]
        t0 = time.perf_counter()
        with contextlib.ExitStack() as stack:
            client = pre = None
            if scheduler is not None:
                level0, client, pre = _distributed_level0(
                    stack, scheduler, slide, sr, region, device, mask
                )
            chunk = writer_chunk(sr.tile * sr.scale, tiff=fmt == "tiff")
            provenance = export_provenance(
                model, seed, source=getattr(slide, "path", None), region=region
            )
            kwargs = {
                "mpp": _scaled_mpp(mpp, sr.scale),
                "origin": export_origin(
                    region,
                    sr.scale,
                    mpp=mpp,
                    source_origin=getattr(slide, "origin", (0.0, 0.0)),
                    source_mpp=slide.mpp,
                ),
                **codec,
                "progress": progress,
                "resume": resume,
                "overwrite": overwrite,
                "fingerprint": export_fingerprint(
                    model,
                    slide,
                    region=region,
                    tile=tile,
                    tissue_only=tissue_only,
                    scale=sr.scale,
                    seed=seed,
                ),
                "provenance": provenance,
            }
            import dask

            if client is not None:  # the writer's own tasks stay in this process
                stack.enter_context(dask.config.set(scheduler="threads"))
                kwargs["concurrency"] = _cluster_threads(client)
            elif threads is not None:
                stack.enter_context(dask.config.set(num_workers=threads))
                kwargs["concurrency"] = threads
            try:
                if fmt == "zarr":
                    from napari_srgan_sqe.io.pyramid import write_ome_zarr

                    path = write_ome_zarr(level0, out, chunk=chunk, ngff=ngff, **kwargs)
                else:
                    from napari_srgan_sqe.io.pyramid import write_ome_tiff

                    icc = slide.metadata.get("icc_profile")
                    path = write_ome_tiff(
                        level0, out, tile=chunk, layout=tiff_layout, icc_profile=icc, **kwargs
                    )
            except (MemoryError, RuntimeError) as exc:
                if not _is_host_oom(exc):
                    raise
                where = "the cluster's workers" if client is not None else predictor.device_name
                raise OutOfMemoryError(
                    _oom_message(exc, tile=tile, batch=batch, device=str(where))
                ) from None
        if stats is not None:
            _fill_stats(stats, sr, time.perf_counter() - t0, mask)
            stats["bytes_written"] = output_bytes(path)
            stats["bytes_per_pixel"] = stats["bytes_written"] / max(1, w * h * sr.scale**2)
            stats["remote_chunks"] = pre.submitted if pre is not None else 0
            stats["coding"] = str(slide.coding)
            stats["provenance"] = dict(provenance)
        return Path(path)


def _check_not_the_input(out: Path, source: Any) -> None:
    """Refuse an output that is the input, holds it or lies inside it: `overwrite`
    would delete the slide being read."""
    if source is None or str(source) in ("", "."):  # a slide not read from a file
        return
    try:
        o, src = out.expanduser().resolve(), Path(source).expanduser().resolve()
    except TypeError:  # an input that is not a path (an array wrapped as a slide)
        return
    same = o == src
    if not same and o.exists() and src.exists():  # case-insensitive file systems, links
        same = os.path.samefile(o, src)
    if same or o in src.parents or src in o.parents:
        what = "is" if same else ("holds" if o in src.parents else "lies inside")
        raise DataError(
            f"cannot write {out}: it {what} the input {source}; choose another output name"
        )


def export_fingerprint(
    model: Any,
    slide: Any,
    *,
    region: tuple[int, int, int, int],
    tile: int,
    tissue_only: bool,
    scale: int,
    seed: int | None = None,
) -> str:
    """What an export's pixels depend on, for its resume record: an interrupted export
    is resumed only by a run with the same model, source file (by path, size, time and
    `content_digest`: a same-sized copy of another image with the old time is another
    source), region and options."""
    import json

    from napari_srgan_sqe.io.slides import content_digest

    source: dict[str, Any] = {"path": str(getattr(slide, "path", None))}
    path = getattr(slide, "path", None)
    if path is not None:
        try:
            st = Path(path).resolve().stat()
            source = {
                "path": str(Path(path).resolve()),
                "size": st.st_size,
                "mtime": st.st_mtime_ns,
                "content": content_digest(path),
            }
        except OSError:
            pass
    record: dict[str, Any] = {
        "model": str(getattr(model, "identity", getattr(model, "name", repr(model)))),
        "source": source,
        "region": list(region),
        "tile": int(tile),
        "tissue_only": bool(tissue_only),
        "scale": int(scale),
    }
    if seed is not None:  # a stochastic model's sample
        record["seed"] = int(seed)
    return json.dumps(record, sort_keys=True)


def export_provenance(
    model: Any,
    seed: int | None,
    *,
    source: Any = None,
    region: tuple[int, int, int, int] | None = None,
) -> dict[str, str]:
    """What an export records about how its pixels were made: the model's name and
    identity, its kind, for a stochastic model the seed of the sample, and where the
    pixels come from: the `source` slide's file name and the `region` of it (x, y, w,
    h in its level-0 px; SR pixel (i, j) of the export covers source pixel
    (x + i / scale, y + j / scale))."""
    desc = model.descriptor
    out = {
        "model": str(model.name),
        "model_identity": str(model.identity),
        "method": f"{desc.arch} ({desc.kind})",
        "scale": str(model.scale),
    }
    if source is not None:
        out["source"] = Path(str(source)).name
    if region is not None:
        out["region"] = ",".join(str(int(v)) for v in region)
    if desc.stochastic:
        out["seed"] = str(0 if seed is None else int(seed))
        out["sampling_steps"] = str(desc.steps)
    return out


def _cluster_threads(client: Any) -> int:
    info = client.scheduler_info(n_workers=-1).get("workers", {})
    return max(1, sum(int(wk.get("nthreads", 1)) for wk in info.values()))


def _distributed_level0(
    stack: contextlib.ExitStack,
    scheduler: Any,
    slide: Any,
    sr: SRPyramid,
    region: tuple[int, int, int, int],
    device: str,
    mask: np.ndarray | None,
) -> tuple[Any, Any, Any]:
    from napari_srgan_sqe.inference.distributed import ChunkSpec, connect, remote_level0

    client, owned = connect(scheduler)
    if owned:
        stack.callback(client.close)
    spec = ChunkSpec(
        path=str(Path(slide.path).resolve()),
        region=region,
        model_id=sr.model_id,
        device=device,
        tile=sr.tile,
        chunk_tiles=sr.chunk_tiles,
        batch=sr.batch,
        tissue=None if mask is None else tuple(tuple(bool(v) for v in row) for row in mask),
        seed=getattr(sr.predictor, "seed", None),
    )
    level0, pre = remote_level0(client, spec, sr.model, sr[0].chunks)
    stack.callback(pre.cancel)
    return level0, client, pre


def _fill_stats(stats: dict[str, Any], sr: SRPyramid, seconds: float, mask: Any) -> None:
    st = sr.stats
    h, w, _ = sr[0].shape
    stats.update(
        {
            "seconds": seconds,
            "output_shape": [int(h), int(w)],
            "output_mpx": h * w / 1e6,
            "mpx_per_s": h * w / 1e6 / seconds if seconds else 0.0,
            "tiles_computed": st.tiles_computed,
            "tile": sr.tile,
            "scale": sr.scale,
            "model": getattr(sr.model, "name", "?"),
            "device": str(getattr(sr.predictor, "device_name", "?")),
            "tissue_tiles": None if mask is None else int(np.count_nonzero(mask)),
        }
    )
