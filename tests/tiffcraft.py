"""Hand-made malformed TIFFs for the reader tests: tag values rewritten in place in a
file that tifffile wrote, and a "tile bomb" (a few MB on disk, GBs decoded) written
without ever allocating the decoded image.

Only the first directory (IFD) of classic little-endian TIFFs, as tifffile writes
them for small images, is edited; values of SHORT / LONG tags with one value are
stored in the directory entry itself, so rewriting them changes no other byte.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import tifffile

IMAGE_WIDTH, IMAGE_LENGTH = 256, 257
TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_BYTE_COUNTS = 322, 323, 324, 325
STRIP_OFFSETS, ROWS_PER_STRIP, STRIP_BYTE_COUNTS = 273, 278, 279
_FORMATS = {3: "<H", 4: "<I"}


def entries(path: Path) -> dict[int, tuple[int, int, int]]:
    """The first directory's tags: code -> (byte of the entry, TIFF type, count)."""
    data = path.read_bytes()
    if data[:4] != b"II*\x00":
        raise ValueError(f"{path}: not a classic little-endian TIFF")
    (ifd,) = struct.unpack_from("<I", data, 4)
    (n,) = struct.unpack_from("<H", data, ifd)
    found = {}
    for k in range(n):
        at = ifd + 2 + 12 * k
        code, kind, count = struct.unpack_from("<HHI", data, at)
        found[code] = (at, kind, count)
    return found


def set_tag(path: Path, code: int, value: int) -> None:
    """Rewrite the single SHORT or LONG value of tag `code` of the first directory (as
    LONG when it does not fit a SHORT)."""
    at, kind, count = entries(path)[code]
    if count != 1 or kind not in _FORMATS:
        raise ValueError(f"tag {code} holds {count} values of type {kind}")
    if kind == 3 and value > 0xFFFF:
        kind = 4
    with path.open("r+b") as f:
        f.seek(at + 2)
        f.write(struct.pack("<HI", kind, 1))
        f.write(struct.pack(_FORMATS[kind], value).ljust(4, b"\0"))


def small_tiled(path: Path, size: int = 256, tile: int = 256, seed: int = 0) -> Path:
    """A tiled zlib RGB TIFF of random pixels."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    tifffile.imwrite(path, pixels, tile=(tile, tile), photometric="rgb", compression="zlib")
    return path


def tile_bomb(path: Path, size: int) -> Path:
    """An RGB TIFF of one `size` x `size` zlib tile of zeros (16384: 0.8 MB on disk,
    768 MiB decoded), its deflate stream made a MiB at a time."""
    small_tiled(path, 16, 16)
    stream = _zeros_deflate(size * size * 3)
    offset = _append(path, stream)
    for code, value in (
        (IMAGE_WIDTH, size), (IMAGE_LENGTH, size), (TILE_WIDTH, size), (TILE_LENGTH, size),
        (TILE_OFFSETS, offset), (TILE_BYTE_COUNTS, len(stream)),
    ):  # fmt: skip
        set_tag(path, code, value)
    return path


def _zeros_deflate(nbytes: int) -> bytes:
    """A zlib stream of `nbytes` zeros, made a MiB at a time."""
    coder = zlib.compressobj(9)
    zeros = bytes(2**20)
    parts = []
    while nbytes:
        n = min(nbytes, len(zeros))
        parts.append(coder.compress(zeros[:n]))
        nbytes -= n
    return b"".join(parts) + coder.flush()


def _append(path: Path, data: bytes) -> int:
    with path.open("ab") as f:
        f.seek(0, 2)
        offset = f.tell()
        f.write(data)
    return offset


def strip_bomb(path: Path, size: int) -> Path:
    """An untiled RGB TIFF stored as one `size` x `size` zlib strip of zeros."""
    tifffile.imwrite(path, np.zeros((16, 16, 3), np.uint8), photometric="rgb",
                     compression="zlib", rowsperstrip=16)  # fmt: skip
    stream = _zeros_deflate(size * size * 3)
    offset = _append(path, stream)
    for code, value in (
        (IMAGE_WIDTH, size), (IMAGE_LENGTH, size), (ROWS_PER_STRIP, size),
        (STRIP_OFFSETS, offset), (STRIP_BYTE_COUNTS, len(stream)),
    ):  # fmt: skip
        set_tag(path, code, value)
    return path


def deflate_overrun(path: Path, nbytes: int) -> Path:
    """A 256 px tiled RGB TIFF whose one zlib tile inflates to `nbytes` (far more than
    the 192 KiB the tile holds)."""
    small_tiled(path, 256, 256)
    stream = _zeros_deflate(nbytes)
    set_tag(path, TILE_OFFSETS, _append(path, stream))
    set_tag(path, TILE_BYTE_COUNTS, len(stream))
    return path


def jpeg_frame_bomb(path: Path, claim: int = 65000) -> Path:
    """A 256 px tiled JPEG TIFF whose tile's frame header (SOF) claims `claim` x
    `claim` px: decoders allocate by that claim (12 GB for 65000)."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", compression="jpeg")
    data = bytearray(path.read_bytes())
    (offset,) = struct.unpack_from("<I", data, entries(path)[TILE_OFFSETS][0] + 8)
    sof = data.index(b"\xff\xc0", offset)
    data[sof + 5 : sof + 9] = struct.pack(">HH", claim, claim)
    path.write_bytes(bytes(data))
    return path
