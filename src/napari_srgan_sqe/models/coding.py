"""How an LR image was stored, as the vector a coding-conditioned network reads.

A network built with `GeneratorConfig.coding` (lrnet) takes, beside the LR pixels, a
vector of `CODING_FEATURES` numbers that says what the pixels went through: which
codec, its quality where known, and JPEG's colour coding where known. Every part may
be unknown (all zeros there): the network is trained with parts of the vector hidden,
so a slide whose quality or even codec is not recorded still gets a sensible model.

    index  meaning
    0      1: the codec is known
    1-3    one-hot: JPEG, JPEG 2000, lossless
    4      1: the quality is known
    5      JPEG quality 1-100 mapped linearly to [-1, 1] over 30-95 (unclipped)
    6-8    one-hot JPEG colour coding: YCbCr 4:2:0, YCbCr 4:4:4, RGB (Aperio)

No torch here: the vector is a tuple of floats, built from names that the readers
(`io.codecs.SlideCoding`) and the training degradation (`degradation.ScannerDraw`)
already use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["CODING_FEATURES", "CodingLike", "coding_vector", "describe_coding", "normalise_coding"]

CODING_FEATURES = 9
_CODECS = {"jpeg": 1, "jpeg2000": 2, "none": 3}
_COLOURS = {"ycbcr420": 6, "ycbcr444": 7, "rgb": 8}
_Q_LOW, _Q_HIGH = 30.0, 95.0

CodingLike = Any
"""A coding as callers give it: None (unknown), a codec name ('jpeg', 'jpeg2000',
'none' for lossless, 'unknown'), a (codec, quality) or (codec, quality, colour) tuple,
or an object with `codec` and `quality` attributes (a `SlideCoding`)."""


def normalise_coding(coding: CodingLike) -> tuple[str, int | None, str | None]:
    """(codec, quality, colour) from any of the forms of `CodingLike`; unknown parts are
    'unknown' / None. A wrong form or value raises ValueError naming it."""
    if coding is None:
        return "unknown", None, None
    if isinstance(coding, str):
        parts: Sequence[Any] = (coding,)
    elif hasattr(coding, "codec"):
        parts = (coding.codec, getattr(coding, "quality", None), getattr(coding, "colour", None))
    elif isinstance(coding, tuple | list) and 1 <= len(coding) <= 3:
        parts = tuple(coding)
    else:
        raise ValueError(
            f"coding must be a codec name, (codec, quality[, colour]) or a SlideCoding, "
            f"got {coding!r}"
        )
    codec = str(parts[0] if parts[0] is not None else "unknown").lower()
    if codec in ("lossless", "uncompressed"):
        codec = "none"
    quality = parts[1] if len(parts) > 1 else None
    colour = parts[2] if len(parts) > 2 else None
    if quality is not None:
        if isinstance(quality, bool) or not isinstance(quality, int | float):
            raise ValueError(f"coding quality must be a number 1-100 or None, got {quality!r}")
        if not 1 <= float(quality) <= 100:
            raise ValueError(f"coding quality must lie in 1..100, got {quality}")
        quality = int(round(float(quality)))
    if colour is not None and colour not in _COLOURS:
        raise ValueError(f"unknown JPEG colour coding {colour!r}; choose one of {sorted(_COLOURS)}")
    return codec, quality, colour


def coding_vector(coding: CodingLike) -> tuple[float, ...]:
    """The conditioning vector of a coding (module docstring). Codecs other than JPEG,
    JPEG 2000 and lossless (WebP, unknown) count as unknown; a quality counts only for
    JPEG (JPEG 2000's stated quality is the scanner's own scale)."""
    codec, quality, colour = normalise_coding(coding)
    v = [0.0] * CODING_FEATURES
    if codec in _CODECS:
        v[0] = 1.0
        v[_CODECS[codec]] = 1.0
    if codec == "jpeg" and quality is not None:
        v[4] = 1.0
        v[5] = 2.0 * (quality - _Q_LOW) / (_Q_HIGH - _Q_LOW) - 1.0
    if codec == "jpeg" and colour is not None:
        v[_COLOURS[colour]] = 1.0
    return tuple(v)


def describe_coding(coding: CodingLike) -> str:
    """What a conditioned model is told, in words: 'JPEG Q=30 (RGB)', 'unknown'."""
    codec, quality, colour = normalise_coding(coding)
    names = {"jpeg": "JPEG", "jpeg2000": "JPEG 2000", "none": "lossless"}
    if codec not in names:
        return "unknown coding"
    text = names[codec]
    if codec == "jpeg":
        text += f" Q={quality}" if quality is not None else " (quality unknown)"
        if colour is not None:
            text += {"ycbcr420": " YCbCr 4:2:0", "ycbcr444": " YCbCr 4:4:4", "rgb": " RGB"}[colour]
    return text
