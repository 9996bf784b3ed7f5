"""Lossy image coding as slide scanners store tiles, and reading it back from files.

- `code_image` passes an 8-bit RGB image through JPEG or JPEG 2000 and decodes it
  again: the LR a scanner's file holds. JPEG uses the IJG quantisation tables scaled by
  the quality (as libjpeg, Pillow and Aperio do), in YCbCr with 4:2:0 chroma
  subsampling, in YCbCr without it (4:4:4), or in RGB without it (Aperio's "JPEG/RGB"). JPEG 2000 is coded to a
  compression ratio (bytes of 24-bit RGB over bytes coded), the way Aperio states its
  rate; OpenJPEG takes a target PSNR, so the ratio is met by bisection on it.
- `jpeg_quality` estimates the IJG quality of a JPEG stream (or a TIFF JPEGTables
  blob) from its luminance quantisation table.
- `SlideCoding` is what is known of a slide's coding: codec and quality.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

__all__ = [
    "APERIO_J2K_RATIO",
    "CODECS",
    "JPEG_COLOURS",
    "TIFF_JPEG_CODES",
    "WEBP_CODE",
    "SlideCoding",
    "code_image",
    "encode_jpeg",
    "encode_jpeg2000",
    "encode_jpeg2000_psnr",
    "jpeg_quality",
    "jpeg_quant_tables",
    "webp_lossless",
    "coding_from_tiff_page",
]

CODECS = ("none", "jpeg", "jpeg2000")
JPEG_COLOURS = ("ycbcr420", "ycbcr444", "rgb")
APERIO_J2K_RATIO = 17.0
"""Compression ratio of the JPEG 2000 TCGA slide in the sample data (Aperio "J2K/KDU
Q=70": 0.175 bytes per RGB pixel, i.e. 1.4 bits per pixel)."""

# The IJG (libjpeg) base luminance table, in natural (row-major) order.
_IJG_LUMA = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.int64,
)
# Zig-zag order: position k of a DQT segment holds coefficient _ZIGZAG[k] (row-major).
_ZIGZAG = np.array(
    [
        0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
        12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
        35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
        58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
    ]
)  # fmt: skip


def _check_rgb8(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(
            f"expected an 8-bit RGB image (H, W, 3) uint8, got {img.dtype} {img.shape}"
        )
    return np.ascontiguousarray(img)


def encode_jpeg(img: np.ndarray, quality: int, colour: str = "ycbcr420") -> bytes:
    """JPEG bytes of an RGB uint8 image at IJG quality 1-100.

    colour 'ycbcr420': YCbCr with 4:2:0 chroma subsampling (most scanners, Pillow's
    default); 'ycbcr444': YCbCr without subsampling (other scanners' high-quality
    setting); 'rgb': RGB components, no subsampling (Aperio "JPEG/RGB").
    """
    import imagecodecs

    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must lie in 1..100, got {quality}")
    if colour not in JPEG_COLOURS:
        raise ValueError(f"unknown JPEG colour mode {colour!r}; choose {' or '.join(JPEG_COLOURS)}")
    img = _check_rgb8(img)
    if colour == "rgb":
        return bytes(imagecodecs.jpeg8_encode(img, level=int(quality), outcolorspace="rgb"))
    if colour == "ycbcr444":
        return bytes(imagecodecs.jpeg8_encode(img, level=int(quality), subsampling="444"))
    return bytes(imagecodecs.jpeg8_encode(img, level=int(quality), subsampling="420"))


def encode_jpeg2000(img: np.ndarray, ratio: float) -> bytes:
    """JPEG 2000 codestream of an RGB uint8 image at about `ratio`:1: bytes of 24-bit RGB
    over coded bytes, not counting the main header; never above that budget unless even
    the coarsest setting is larger."""
    import imagecodecs

    if not ratio > 1.0:
        raise ValueError(f"JPEG 2000 compression ratio must be above 1, got {ratio}")
    img = _check_rgb8(img)
    budget = img.nbytes / float(ratio)
    j2k = imagecodecs.JPEG2K.CODEC.J2K  # a raw codestream, as TIFF tiles hold it

    def enc(level: float) -> bytes:
        # OpenJPEG takes a fractional target PSNR; imagecodecs' stub types `level` as int.
        return bytes(imagecodecs.jpeg2k_encode(img, level=level, codecformat=j2k))  # type: ignore[arg-type]

    lo, hi = 15.0, 70.0  # OpenJPEG's target PSNR (dB): the larger, the more bytes
    best = enc(lo)
    # The ratio is of the coded pixels: the main header (up to the first tile, SOT
    # marker ff 90) does not count, which matters only for small images.
    sot = best.find(b"\xff\x90")
    budget += max(sot, 0)
    for _ in range(7):
        mid = 0.5 * (lo + hi)
        data = enc(mid)
        if len(data) <= budget:
            lo, best = mid, data
        else:
            hi = mid
    return best


def encode_jpeg2000_psnr(img: np.ndarray, db: float) -> bytes:
    """JPEG 2000 codestream of an RGB uint8 image at OpenJPEG's target PSNR `db`. Unlike a
    compression ratio, a target PSNR codes small patches as hard as whole tiles."""
    import imagecodecs

    if not 10.0 <= float(db) <= 80.0:
        raise ValueError(f"JPEG 2000 target PSNR must lie in 10..80 dB, got {db}")
    img = _check_rgb8(img)
    # OpenJPEG takes a fractional target PSNR; imagecodecs' stub types `level` as int.
    return bytes(
        imagecodecs.jpeg2k_encode(
            img,
            level=float(db),  # type: ignore[arg-type]
            codecformat=imagecodecs.JPEG2K.CODEC.J2K,
        )
    )


def decode(data: bytes) -> np.ndarray:
    """Decode JPEG or JPEG 2000 bytes to RGB uint8."""
    import imagecodecs

    if data[:2] == b"\xff\xd8":  # JPEG; else a JPEG 2000 codestream (ff 4f) or JP2 file
        out = imagecodecs.jpeg8_decode(data)
    else:
        out = imagecodecs.jpeg2k_decode(data)
    return np.ascontiguousarray(out[..., :3])


def code_image(
    img: np.ndarray, codec: str, quality: float | None = None, *, colour: str = "ycbcr420"
) -> np.ndarray:
    """The RGB uint8 image after coding with `codec` and decoding: what the file holds.

    jpeg: `quality` is the IJG quality (1-100); jpeg2000: the compression ratio
    (default APERIO_J2K_RATIO); none: the image itself.
    """
    if codec == "none":
        return _check_rgb8(img)
    if codec == "jpeg":
        if quality is None:
            raise ValueError("JPEG coding needs a quality (1-100)")
        return decode(encode_jpeg(img, int(quality), colour))
    if codec == "jpeg2000":
        return decode(encode_jpeg2000(img, APERIO_J2K_RATIO if quality is None else float(quality)))
    raise ValueError(f"unknown codec {codec!r}; choose {', '.join(CODECS)}")


# ---------------------------------------------------------------- reading the coding back
def jpeg_quant_tables(data: bytes) -> dict[int, np.ndarray]:
    """The quantisation tables of a JPEG stream (or TIFF JPEGTables), by table id, as
    8 x 8 arrays in natural order."""
    tables: dict[int, np.ndarray] = {}
    i, n = 2 if data[:2] == b"\xff\xd8" else 0, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 2 if marker != 0xFF else 1
            continue
        if marker == 0xD9 or marker == 0xDA:  # end of image / start of scan
            break
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        seg = data[i + 4 : i + 2 + length]
        if marker == 0xDB:
            j = 0
            while j < len(seg):
                precision, tid = seg[j] >> 4, seg[j] & 0x0F
                size = 128 if precision else 64
                raw = seg[j + 1 : j + 1 + size]
                vals = np.frombuffer(raw, ">u2" if precision else np.uint8).astype(np.int64)
                table = np.empty(64, np.int64)
                table[_ZIGZAG] = vals
                tables[tid] = table.reshape(8, 8)
                j += 1 + size
        i += 2 + length
    return tables


def _ijg_table(quality: int) -> np.ndarray:
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    return np.clip((_IJG_LUMA * scale + 50) // 100, 1, 255)


def webp_lossless(data: bytes) -> bool | None:
    """Whether a WebP stream is lossless (its image chunk is 'VP8L') or lossy ('VP8 ');
    None when `data` is not the head of a WebP stream."""
    if len(data) < 16 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    i = 12
    while i + 8 <= len(data):  # chunks: fourcc, little-endian size, payload (even-padded)
        fourcc = data[i : i + 4]
        if fourcc == b"VP8L":
            return True
        if fourcc == b"VP8 ":
            return False
        size = int.from_bytes(data[i + 4 : i + 8], "little")
        i += 8 + size + (size & 1)
    return None


def jpeg_quality(data: bytes) -> int | None:
    """The IJG quality (1-100) whose luminance table best matches table 0 of the stream;
    None when the stream has no quantisation table."""
    tables = jpeg_quant_tables(data)
    if 0 not in tables:
        return None
    t = tables[0]
    errors = [np.abs(_ijg_table(q) - t).sum() for q in range(1, 101)]
    return int(np.argmin(errors)) + 1


LOSSY_CODECS = {"jpeg": "JPEG", "jpeg2000": "JPEG 2000", "webp": "WebP"}
"""The lossy codecs a slide's coding can name, with their display names."""


@dataclass(frozen=True)
class SlideCoding:
    """How a slide's pixels are stored: codec 'jpeg', 'jpeg2000', 'webp' (lossy WebP),
    'none' (lossless) or 'unknown'; quality: JPEG's IJG quality, WebP's level or the
    scanner's stated JPEG 2000 quality (Aperio "Q="), None when not known."""

    codec: str = "unknown"
    quality: int | None = None
    detail: str = ""

    @property
    def lossy(self) -> bool:
        return self.codec in LOSSY_CODECS

    def __str__(self) -> str:
        if self.codec == "none":
            return f"lossless ({self.detail})" if self.detail else "lossless"
        name = LOSSY_CODECS.get(self.codec, self.codec)
        q = f" Q={self.quality}" if self.quality is not None else ""
        return f"{name}{q}" + (f" ({self.detail})" if self.detail else "")


TIFF_JPEG_CODES = frozenset({6, 7, 34892})  # OJPEG, JPEG, lossy JPEG (DNG)
WEBP_CODE = 50001  # TIFF compression of WebP tiles (libtiff, vips, tifffile)
_J2K_CODES = frozenset({33003, 33004, 33005, 34712})  # Aperio YCbCr / RGB, JPEG 2000
_LOSSLESS_CODES = {
    1: "uncompressed",
    5: "LZW",
    8: "deflate",
    32946: "deflate",
    32773: "PackBits",
    34925: "LZMA",
    50000: "Zstandard",
}


def coding_from_tiff_page(
    compression: int,
    description: str = "",
    jpegtables: bytes | None = None,
    first_tile: bytes | None = None,
) -> SlideCoding:
    """The coding of a TIFF page from its compression tag, Aperio's image description
    ("JPEG/RGB Q=30", "J2K/KDU Q=70") and the JPEG quantisation tables."""
    code = int(compression)
    stated = re.search(r"\bQ=(\d+)", description or "")
    stated_q = int(stated.group(1)) if stated else None
    if code in TIFF_JPEG_CODES:
        q = None
        for blob in (jpegtables, first_tile):
            if blob:
                q = jpeg_quality(bytes(blob))
                if q is not None:
                    break
        return SlideCoding(
            "jpeg", q if q is not None else stated_q, "quantisation tables" if q is not None else ""
        )
    if code in _J2K_CODES:
        return SlideCoding("jpeg2000", stated_q, "Aperio Q" if stated_q is not None else "")
    if code == WEBP_CODE:  # WebP may be lossy or lossless: the tile's bitstream says which
        lossless = webp_lossless(first_tile) if first_tile else None
        if lossless is None:
            return SlideCoding("unknown", None, "WebP")
        return SlideCoding("none", None, "WebP lossless") if lossless else SlideCoding("webp")
    if code == 50002:  # JPEG XL may be lossy or lossless: not known from the tag
        return SlideCoding("unknown", None, "JPEG XL")
    if code in _LOSSLESS_CODES:
        return SlideCoding("none", None, _LOSSLESS_CODES[code])
    return SlideCoding("unknown", None, f"TIFF compression {code}")
