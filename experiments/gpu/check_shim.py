"""How close the Pillow stand-in (experiments/gpu/shim) codes to imagecodecs: PSNR of
the decoded images against each other and of each against the uncoded image, on LR of a
real H&E image, for the JPEG qualities and JPEG 2000 targets the scanner preset draws.

    python experiments/gpu/check_shim.py IMAGE.png
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import imagecodecs
import numpy as np

from napari_srgan_sqe.metrics import psnr
from napari_srgan_sqe.training.data import load_rgb

spec = importlib.util.spec_from_file_location(
    "shim", Path(__file__).parent / "shim" / "imagecodecs" / "__init__.py"
)
shim = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shim)


def db(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(psnr(a.astype(np.float32) / 255, b.astype(np.float32) / 255)), 2)


def main() -> None:
    img = load_rgb(sys.argv[1])[:512, :512]
    lr = img.reshape(128, 4, 128, 4, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    rows = []
    for q in (30, 50, 75, 95):
        for kw in ({"subsampling": "420"}, {"outcolorspace": "rgb"}):
            real = imagecodecs.jpeg8_decode(imagecodecs.jpeg8_encode(lr, level=q, **kw))
            ours = shim.jpeg8_decode(shim.jpeg8_encode(lr, level=q, **kw))
            rows.append(
                {
                    "codec": f"jpeg {q} {kw}",
                    "shim_vs_real": db(ours, real),
                    "real": db(real, lr),
                    "shim": db(ours, lr),
                }
            )
    for target in (30.0, 36.0, 42.0):
        j2k = imagecodecs.JPEG2K.CODEC.J2K
        real = imagecodecs.jpeg2k_decode(
            imagecodecs.jpeg2k_encode(lr, level=target, codecformat=j2k)
        )
        ours = shim.jpeg2k_decode(shim.jpeg2k_encode(lr, level=target, codecformat="j2k"))
        rows.append(
            {
                "codec": f"jpeg2000 {target} dB",
                "shim_vs_real": db(ours, real),
                "real": db(real, lr),
                "shim": db(ours, lr),
            }
        )
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
