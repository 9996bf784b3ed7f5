"""A stand-in for the few imagecodecs functions that training uses, built on Pillow.

Only for the GPU machine of experiments/gpu: its Python has Pillow (with libjpeg-turbo
and OpenJPEG) but no imagecodecs, and imagecodecs' wheel (28 MB) does not fit in what
travels there. Same codecs, same settings where they matter (IJG quality tables, 4:2:0
or RGB without subsampling; OpenJPEG's target-PSNR mode with the 9/7 wavelet and the
colour transform); `experiments/gpu/check_shim.py` measures how close it is to the real
package.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
from PIL import Image

__version__ = "shim"

JPEG2K = SimpleNamespace(CODEC=SimpleNamespace(J2K="j2k", JP2="jp2"))


def _save(img: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, fmt, **kw)
    return buf.getvalue()


def _open(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(bytes(data))) as im:
        return np.asarray(im.convert("RGB") if im.mode not in ("RGB", "L") else im)


def jpeg8_encode(img, level=75, subsampling="420", outcolorspace=None):
    if outcolorspace == "rgb":
        return _save(img, "JPEG", quality=int(level), subsampling=0, keep_rgb=True)
    sub = {"444": 0, "422": 1, "420": 2}[str(subsampling)]
    return _save(img, "JPEG", quality=int(level), subsampling=sub)


def jpeg8_decode(data):
    return _open(data)


def jpeg2k_encode(img, level=None, codecformat="j2k"):
    return _save(
        img,
        "JPEG2000",
        quality_mode="dB",
        quality_layers=[float(level)],
        irreversible=True,
        mct=1,
        no_jp2=codecformat == "j2k",
    )


def jpeg2k_decode(data):
    return _open(data)


def png_decode(data):
    return _open(data)
