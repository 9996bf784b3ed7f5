"""OME-Zarr images (NGFF multiscales 0.1 - 0.5, zarr v2 or v3) through zarr 3.

Axes may come in any order ("cyx", "yxc", "tczyx" ...); axes other than c, y, x must
have size 1. The pixel size is the x scale of level 0 (dataset and multiscale
`coordinateTransformations` multiplied) when the x axis has a length unit; the
origin (`Slide.origin`) is where level 0's translations (the dataset's, then the
multiscale's) put its pixel (0, 0).

A level named in the metadata but absent from the store is refused at open
(`SlideError` naming it). A missing chunk is refused when it is read, for images
whose metadata say that every chunk was stored (`multiscales[0].metadata.
every_chunk_stored`, as this plugin's exports write): zarr reads an absent chunk as
the fill value (black for 0), and in general a chunk may be left out on purpose
(zarr does not store one that equals the fill value unless `write_empty_chunks` is
on), so for other images an absent chunk reads as the fill value, as in every zarr
reader. The check costs one `stat` per chunk (or shard) the first time it is read.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from napari_srgan_sqe.io import _formats
from napari_srgan_sqe.io._slide import (
    MAX_SEGMENT_BYTES,
    LevelSource,
    Slide,
    SlideError,
    aligned_chunk,
    as_rgb8,
    check_convertible,
    coding_or_unknown,
    downsamples_of,
    shared_handle,
    to_yxc,
)
from napari_srgan_sqe.io.codecs import SlideCoding

# Codecs (zarr 2 compressor / filter ids, zarr 3 codec names, without the "numcodecs." or
# "imagecodecs_" prefix) that give back exactly the bytes they were given.
_LOSSLESS_CODECS = frozenset(
    {
        "blosc", "zstd", "zlib", "gzip", "lz4", "lz4f", "bz2", "lzma", "lzf", "lzw",
        "deflate", "zlibng", "zopfli", "brotli", "snappy", "packbits", "png", "apng",
        "spng", "qoi", "bytes", "endian", "transpose", "crc32c", "sharding_indexed",
        "delta", "shuffle", "bitshuffle", "byteshuffle", "xor", "ljpeg", "pcodec",
        "adler32", "fletcher32", "jenkins_lookup3", "checksum", "bitorder", "floatpred",
    }
)  # fmt: skip
_NAMES = {"blosc": "Blosc", "zstd": "Zstandard", "zlib": "zlib", "gzip": "gzip", "lz4": "LZ4"}


def _codec_specs(meta: Any) -> list[dict[str, Any]]:
    """Every codec / compressor / filter spec in an array's metadata dict, nested too."""
    found: list[dict[str, Any]] = []
    if isinstance(meta, dict):
        if isinstance(meta.get("id") or meta.get("name"), str):
            found.append(meta)
        for key in ("compressor", "compressors", "filters", "codecs", "configuration"):
            found.extend(_codec_specs(meta.get(key)))
    elif isinstance(meta, list | tuple):
        for item in meta:
            found.extend(_codec_specs(item))
    return found


def array_coding(arr: Any) -> SlideCoding:
    """How a zarr array's chunks are stored: JPEG (imagecodecs' jpeg codecs, quality =
    their `level`), JPEG 2000, WebP (lossy, or lossless when so configured), or
    lossless when every codec is a lossless one (Blosc, Zstandard, zlib, PNG ... or
    none); anything else is unknown."""
    meta = arr.metadata.to_dict()
    specs = _codec_specs({k: meta.get(k) for k in ("compressor", "filters", "codecs")})
    names: list[str] = []
    for spec in specs:
        name = str(spec.get("id") or spec.get("name")).lower()
        name = name.removeprefix("numcodecs.").removeprefix("imagecodecs_")
        nested = spec.get("configuration")
        config: dict[str, Any] = nested if isinstance(nested, dict) else spec
        if name in ("jpeg2k", "jpeg2000", "j2k", "htj2k"):
            return SlideCoding("jpeg2000", None, f"zarr codec {name}")
        if name in ("jpeg", "jpeg8", "jpeg12"):
            if config.get("lossless"):
                return SlideCoding("none", None, "lossless JPEG")
            level = config.get("level")
            quality = int(level) if isinstance(level, int | float) and 1 <= level <= 100 else None
            return SlideCoding("jpeg", quality, f"zarr codec {name}")
        if name == "webp":
            if config.get("lossless"):
                return SlideCoding("none", None, "WebP lossless")
            level = config.get("level")
            quality = int(level) if isinstance(level, int | float) and 0 <= level <= 100 else None
            return SlideCoding("webp", quality, f"zarr codec {name}")
        if name not in _LOSSLESS_CODECS:
            return SlideCoding("unknown", None, f"zarr codec {name}")
        if name == "blosc" and config.get("cname"):
            names.append(f"Blosc {config['cname']}")
        elif name not in ("bytes", "endian", "transpose", "crc32c", "sharding_indexed"):
            names.append(_NAMES.get(name, name))
    return SlideCoding("none", None, ", ".join(dict.fromkeys(names)) or "uncompressed")


class _ZarrHandle:
    """The root group of an OME-Zarr and its arrays, looked up once each."""

    def __init__(self, path: Path) -> None:
        self.root = zarr.open_group(path, mode="r")
        self._arrays: dict[str, Any] = {}
        self._present: dict[str, set[tuple[int, ...]]] = {}  # chunks seen in the store
        self._lock = threading.Lock()

    def array(self, name: str) -> Any:
        with self._lock:
            if name not in self._arrays:
                self._arrays[name] = self.root[name]
            return self._arrays[name]

    def missing_chunk(self, name: str, key: tuple[slice, ...]) -> tuple[str, str] | None:
        """(store key, the array region it covers) of the first stored object (a chunk,
        or a shard of a sharded array) under `key` that is absent from the store, or
        None. Each object is looked up once (a `stat` on a local store) and remembered
        when present."""
        arr = self.array(name)
        grid = getattr(arr, "shards", None) or arr.chunks
        ranges = [range(s.start // g, max(s.start, s.stop - 1) // g + 1) for s, g in zip(key, grid)]
        with self._lock:
            present = self._present.setdefault(name, set())
        store = arr.store_path.store
        root = getattr(store, "root", None)
        for index in itertools.product(*ranges):
            if index in present:
                continue
            chunk_key = arr.metadata.encode_chunk_key(index)
            full = f"{arr.path}/{chunk_key}" if arr.path else chunk_key
            if isinstance(root, str | os.PathLike):
                exists = os.path.exists(os.path.join(root, full))
            else:  # another store (fsspec, zip ...): ask it
                from zarr.core.sync import sync

                exists = bool(sync(store.exists(full)))
            if not exists:
                spans = (
                    f"{i * g}:{min((i + 1) * g, n)}" for i, g, n in zip(index, grid, arr.shape)
                )
                return full, ", ".join(spans)
            with self._lock:
                present.add(index)
        return None


class ZarrLevel(LevelSource):
    """One dataset (level) of an OME-Zarr, in the file's own axes and dtype.

    `check_chunks`: refuse to read a chunk that is absent from the store (for images
    that store every chunk) instead of reading it as the fill value.
    """

    kind = "zarr"

    def __init__(
        self,
        path: Path,
        level: int,
        shape: Any,
        dtype: Any,
        *,
        dataset: str,
        check_chunks: bool = False,
    ) -> None:
        super().__init__(path, level, shape, dtype)
        self.dataset = dataset
        self.check_chunks = check_chunks

    def _open(self, path: Path) -> _ZarrHandle:
        return _ZarrHandle(path)

    def _read(self, handle: _ZarrHandle, key: tuple[slice, ...]) -> np.ndarray:
        if self.check_chunks:
            missing = handle.missing_chunk(self.dataset, key)
            if missing is not None:
                full, covers = missing
                raise SlideError(
                    self.path,
                    f"level {self.level}: chunk '{full}' (region [{covers}] of the level's "
                    "array) is missing from the store, although this image stores every "
                    "chunk: the OME-Zarr is incomplete (a file deleted, or not copied?); "
                    "copy it again or export it again",
                )
        return np.asarray(handle.array(self.dataset)[key])

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (*super().__dask_tokenize__(), self.dataset, self.check_chunks)


def _scale(transforms: Any, ndim: int) -> list[float]:
    scale = [1.0] * ndim
    for t in transforms or []:
        if isinstance(t, dict) and t.get("type") == "scale" and len(t.get("scale", [])) == ndim:
            scale = [a * float(b) for a, b in zip(scale, t["scale"])]
    return scale


def _translation(transforms: Any, ndim: int) -> list[float] | None:
    """The offset that a list of NGFF transformations adds to index 0 (scales after a
    translation scale it); None when there is no translation."""
    offset: list[float] | None = None
    for t in transforms or []:
        if not isinstance(t, dict):
            continue
        if t.get("type") == "scale" and offset is not None and len(t.get("scale", [])) == ndim:
            offset = [a * float(b) for a, b in zip(offset, t["scale"])]
        elif t.get("type") == "translation" and len(t.get("translation", [])) == ndim:
            base = offset or [0.0] * ndim
            offset = [a + float(b) for a, b in zip(base, t["translation"])]
    return offset


def _origin(
    ms: dict[str, Any], ndim: int, letters: str, units: list[str | None], mpp: float | None
) -> tuple[float, float]:
    """Where the centre of level-0 pixel (0, 0) lies, (y, x): the translations of level
    0's dataset and of the multiscale (applied after it), in um when the pixel size is
    known, else in level-0 pixels (world units over the scale); (0, 0) without any, or
    when they are not numbers."""
    try:
        inner = ms["datasets"][0].get("coordinateTransformations")
        outer = ms.get("coordinateTransformations")
        first = _translation(inner, ndim)
        second = _translation(outer, ndim)
        if first is None and second is None:
            return 0.0, 0.0
        offset = [0.0] * ndim if first is None else first
        offset = [a * b for a, b in zip(offset, _scale(outer, ndim))]  # the outer scale
        if second is not None:
            offset = [a + b for a, b in zip(offset, second)]
        scale = _scale(inner, ndim)
        scale = [a * b for a, b in zip(scale, _scale(outer, ndim))]
    except (TypeError, ValueError, KeyError, IndexError, AttributeError):
        return 0.0, 0.0
    out = []
    for axis in "YX":
        i = letters.index(axis)
        um = _formats.position_to_um(offset[i], units[i]) if mpp else None
        if um is None:  # no length unit: in pixels (as the layer's scale is then 1)
            px = offset[i] / scale[i] if scale[i] else 0.0
            um = px * mpp if mpp else px
        out.append(float(um) if math.isfinite(um) else 0.0)
    return out[0], out[1]


def _axis_letters(axes: list[Any] | None, ndim: int) -> tuple[str, list[str | None]]:
    """Axes as tifffile-style letters (C, Y, X; others T, Z, Q) and their units."""
    if axes is None:  # NGFF 0.1 / 0.2: always t, c, z, y, x
        names: list[Any] = list("tczyx")[-ndim:]
        axes = [{"name": n} for n in names]
    letters, units = [], []
    for ax in axes:
        name = (ax if isinstance(ax, str) else ax.get("name", "")).lower()
        kind = "" if isinstance(ax, str) else str(ax.get("type", "")).lower()
        if name == "c" or kind == "channel":
            letters.append("C")
        elif name in ("y", "x", "z", "t"):
            letters.append(name.upper())
        else:
            letters.append("Q")
        units.append(None if isinstance(ax, str) else ax.get("unit"))
    return "".join(letters), units


def _multiscales(group: Any) -> tuple[Any, dict[str, Any]] | None:
    attrs = group.attrs.asdict()
    ome = attrs["ome"] if isinstance(attrs.get("ome"), dict) else attrs
    if ome.get("multiscales"):
        return group, ome["multiscales"][0]
    if "bioformats2raw.layout" in ome and "0" in group:  # image 0 of a plate / series
        return _multiscales(group["0"])
    return None


def open_ome_zarr(path: Path, *, chunk: int) -> Slide:
    """Open an OME-Zarr multiscale image (metadata only)."""
    if (path / _formats.INCOMPLETE_MARKER).exists():
        raise SlideError(
            path,
            "this OME-Zarr export was interrupted and is incomplete; "
            "run the same export again to resume it",
        )
    try:
        handle = shared_handle(ZarrLevel.kind, path, _ZarrHandle)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError) as exc:
        raise SlideError(path, f"not a zarr group ({exc})") from exc
    found = _multiscales(handle.root)
    if found is None:
        raise SlideError(path, "not an OME-Zarr image: no NGFF 'multiscales' metadata")
    group, ms = found
    prefix = f"{group.path}/" if group.path else ""
    datasets = [d["path"] for d in ms["datasets"]]
    arrays = []
    for i, name in enumerate(datasets):
        try:
            arr = group[name]
        except (KeyError, FileNotFoundError, zarr.errors.NodeNotFoundError) as exc:
            raise SlideError(
                path,
                f"level {i} is missing: its array '{prefix}{name}' named in the NGFF "
                f"metadata is not in the store (a folder deleted or not copied?)",
            ) from exc
        if not isinstance(arr, zarr.Array):
            raise SlideError(path, f"level {i} ('{prefix}{name}') is a group, not an array")
        arrays.append(arr)
    ndim = arrays[0].ndim
    letters, units = _axis_letters(ms.get("axes"), ndim)
    channel_sizes = [n for ax, n in zip(letters, arrays[0].shape) if ax == "C" and n > 1]
    check_convertible(path, arrays[0].dtype, channel_sizes[0] if channel_sizes else 1)

    for i, arr in enumerate(arrays):  # what one read decodes at least: a whole chunk
        nbytes = int(np.prod(arr.chunks)) * np.dtype(arr.dtype).itemsize
        if nbytes > MAX_SEGMENT_BYTES:
            raise SlideError(
                path,
                f"level {i} is stored in chunks of {' x '.join(map(str, arr.chunks))}, "
                f"{nbytes / 2**20:,.0f} MiB to decode for any read of a chunk (limit "
                f"{MAX_SEGMENT_BYTES / 2**20:,.0f} MiB); rewrite it with smaller chunks",
            )
    extra = ms.get("metadata")
    every_chunk = isinstance(extra, dict) and extra.get("every_chunk_stored") is True
    levels = []
    for i, (name, arr) in enumerate(zip(datasets, arrays)):
        grid = getattr(arr, "shards", None) or arr.chunks
        chunks = tuple(
            aligned_chunk(c, chunk) if ax in "YX" else n
            for ax, c, n in zip(letters, grid, arr.shape)
        )
        src = ZarrLevel(
            path, i, arr.shape, arr.dtype, dataset=prefix + name, check_chunks=every_chunk
        )
        src._handle = handle
        levels.append(as_rgb8(to_yxc(src.to_dask(chunks), letters, path=path), path=path))

    scale = _scale(ms["datasets"][0].get("coordinateTransformations"), ndim)
    scale = [a * b for a, b in zip(scale, _scale(ms.get("coordinateTransformations"), ndim))]
    x = letters.index("X")
    mpp = _formats.to_um(scale[x], units[x])
    origin = _origin(ms, ndim, letters, units, mpp)
    version = ms.get("version") or group.attrs.asdict().get("ome", {}).get("version")
    metadata = {
        "ngff_version": version,
        "axes": letters,
        "datasets": datasets,
        "name": ms.get("name"),
        "every_chunk_stored": every_chunk,
    }
    return Slide(
        levels=levels,
        mpp=mpp,
        downsamples=downsamples_of([lvl.shape for lvl in levels]),
        path=path,
        format="ome-zarr",
        metadata=metadata,
        coding=coding_or_unknown(array_coding, arrays[0]),
        origin=origin,
    )
