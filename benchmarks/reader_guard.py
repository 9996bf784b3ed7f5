"""What the decode guard costs on the read path: a JPEG-tiled TIFF read whole, with each
tile's header checked before decoding (`io._tiff_reader._guard_decode`) and without,
alternating, best of `-n` runs each. Prints JSON.

    python benchmarks/reader_guard.py [--side 4096] [--tile 256] [-n 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from napari_srgan_sqe.io import _tiff_reader
from napari_srgan_sqe.io._slide import close_handles
from napari_srgan_sqe.io.slides import open_slide


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=4096)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("-n", type=int, default=4)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (args.side, args.side, 3), dtype=np.uint8)
    guard = _tiff_reader._guard_decode
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jpeg.tif"
        tifffile.imwrite(
            path, img, tile=(args.tile, args.tile), photometric="rgb", compression="jpeg"
        )

        def read() -> float:
            close_handles(path)  # a fresh handle: the guard is installed when it opens
            t0 = time.perf_counter()
            np.asarray(open_slide(path).levels[0])
            return time.perf_counter() - t0

        times: dict[str, list[float]] = {"guarded": [], "unguarded": []}
        try:
            for _ in range(args.n):
                _tiff_reader._guard_decode = guard
                times["guarded"].append(read())
                _tiff_reader._guard_decode = lambda keyframe: None
                times["unguarded"].append(read())
        finally:
            _tiff_reader._guard_decode = guard
    g, u = min(times["guarded"]), min(times["unguarded"])
    tiles = (-(-args.side // args.tile)) ** 2
    print(json.dumps({"tiles": tiles, "guarded_s": round(g, 3), "unguarded_s": round(u, 3),
                      "ratio": round(g / u, 3)}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
