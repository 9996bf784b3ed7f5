"""Reading LR simulated from a slide, as `srgan-sqe view` does on the sample.

The viewer's default first sight simulates LR from the slide (scanner preset): each
LR chunk is computed from 16 times as many HR pixels (read, decoded, blurred, coded).
The LR layer's redraws, the SR pieces' halos, the placeholders and Compare's readouts
all read the same LR views again. This times, in one process on the same random
views, the lazy simulated LR as it is (`plain`: every read recomputes its chunks)
against the same LR with its chunks kept once computed (`memoized`:
`inference.cache.memoized`, as the Enhance widget makes it): the first read of a
view, and three more reads of it (what a redraw, a piece's halo and a readout do).
Prints JSON.

    python benchmarks/simulated_lr.py [--slide PATH] [--preset scanner] [-n 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from napari_srgan_sqe.io.sample import sample_slide_path


def _summary(values: list[float], digits: int = 4) -> dict:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", default=str(sample_slide_path()))
    ap.add_argument("--preset", default="scanner", choices=("scanner", "clean"))
    ap.add_argument("--view", default="250,400", help="LR px: height,width (a 1600 x 1000 screen)")
    ap.add_argument("-n", "--views", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from napari_srgan_sqe.degradation import degrade_lazy, degrade_with
    from napari_srgan_sqe.inference.cache import TileCache, memoized
    from napari_srgan_sqe.io.slides import open_slide

    slide = open_slide(args.slide)
    hr = slide.levels[0]
    plain = (
        degrade_lazy(hr, 4) if args.preset == "clean" else degrade_with(hr, "scanner", 4, seed=0)
    )
    memo = memoized(plain, TileCache(256))
    h, w = (int(v) for v in args.view.split(","))
    rng = np.random.default_rng(args.seed)
    H, W = plain.shape[:2]
    views = [(int(rng.integers(0, H - h)), int(rng.integers(0, W - w))) for _ in range(args.views)]
    times: dict[str, dict[str, list[float]]] = {
        k: {"first": [], "again": []} for k in ("plain", "memoized")
    }
    for i, (y, x) in enumerate(views):
        order = ("plain", "memoized") if i % 2 == 0 else ("memoized", "plain")
        for kind in order:
            arr = plain if kind == "plain" else memo
            t0 = time.perf_counter()
            first = np.asarray(arr[y : y + h, x : x + w])
            times[kind]["first"].append(time.perf_counter() - t0)
            for _ in range(3):
                t0 = time.perf_counter()
                again = np.asarray(arr[y : y + h, x : x + w])
                times[kind]["again"].append(time.perf_counter() - t0)
            assert np.array_equal(first, again)
    same = all(
        np.array_equal(
            np.asarray(plain[y : y + h, x : x + w]), np.asarray(memo[y : y + h, x : x + w])
        )
        for y, x in views
    )
    p, m = times["plain"], times["memoized"]
    print(
        json.dumps(
            {
                "slide": os.path.basename(args.slide),
                "preset": args.preset,
                "view_lr_px": [h, w],
                "views": len(views),
                "equal_pixels": same,
                "seconds": {k: {s: _summary(v) for s, v in d.items()} for k, d in times.items()},
                "ratio_again_plain_over_memoized": round(
                    statistics.median(p["again"]) / statistics.median(m["again"]), 1
                ),
                "ratio_first_plain_over_memoized": round(
                    statistics.median(p["first"]) / statistics.median(m["first"]), 2
                ),
                "load_average": [round(v, 2) for v in os.getloadavg()],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
