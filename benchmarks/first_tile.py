"""Time to the first SR tile after a pan (DESIGN: viewer responsiveness), engine level.

A fresh `super_resolve` pyramid (empty tile cache) on a slide with a model; then a
512 x 512 HR window not computed before is sliced at several random positions, as
napari's slicer does after a pan, and the seconds until its pixels are there are
timed. Prints JSON: median / min / max seconds, the per-position times, tile size,
device and the load average (the machine may be shared).

    python benchmarks/first_tile.py [--slide PATH] [--model srgan-sqe-he-x4] [-n 7]
    xvfb-run -a python benchmarks/first_tile.py --viewer   # also in a napari viewer

`--viewer` also times it in a real napari viewer with asynchronous slicing: the
camera jumps (zoom 1, level 0 on screen) to a fresh position and the time until the
SR layer reports `loaded` (its slice is done and sent to the canvas) is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from napari_srgan_sqe.io.sample import sample_slide_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", default=str(sample_slide_path()))
    ap.add_argument("--model", default="srgan-sqe-he-x4")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tile", type=int, default=None, help="LR px (default: the viewer's)")
    ap.add_argument("-n", "--positions", type=int, default=7)
    ap.add_argument("--window", type=int, default=512, help="HR px per side")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--viewer", action="store_true", help="also in a napari viewer")
    args = ap.parse_args()

    result: dict = {"engine": engine_level(args)}
    if args.viewer:
        result["viewer"] = viewer_level(args)
    result["loadavg_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    result["cpus"] = os.cpu_count()
    print(json.dumps(result, indent=2))


def _fresh_windows(sr, n: int, win: int, seed: int):  # noqa: ANN001, ANN202
    """n random (y, x) of win x win HR windows whose tiles no other window touches."""
    h, w = int(sr[0].shape[0]), int(sr[0].shape[1])
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    margin = sr.tile * sr.scale  # napari may load a little around the view
    for _ in range(10000):  # gives fewer when the slide has no more fresh room
        if len(out) == n:
            break
        y, x = int(rng.integers(0, h - win)), int(rng.integers(0, w - win))
        s = sr.scale
        tiles = set(
            sr.grid.covering(
                (y - margin) // s,
                (y + win + margin) // s,
                (x - margin) // s,
                (x + win + margin) // s,
            )
        )
        if tiles & seen:
            continue
        seen |= tiles
        out.append((y, x))
    return out


def _summary(times: list[float]) -> dict:
    return {
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
        "times_s": [round(v, 3) for v in times],
    }


def engine_level(args: argparse.Namespace) -> dict:
    from napari_srgan_sqe.inference.engine import super_resolve
    from napari_srgan_sqe.io.slides import open_slide

    t0 = time.perf_counter()
    sr = super_resolve(open_slide(args.slide), args.model, device=args.device, tile=args.tile)
    setup_s = time.perf_counter() - t0
    win, times = args.window, []
    for y, x in _fresh_windows(sr, args.positions, win, args.seed):
        t = time.perf_counter()
        np.asarray(sr[0][y : y + win, x : x + win])
        times.append(time.perf_counter() - t)
    return {
        "slide": os.path.basename(args.slide),
        "model": args.model,
        "device": str(sr.predictor.device_name),
        "tile_lr_px": sr.tile,
        "window_hr_px": win,
        "setup_s": round(setup_s, 3),
        **_summary(times),
        "tiles_computed": sr.stats.tiles_computed,
    }


def viewer_level(args: argparse.Namespace) -> dict:
    import napari
    from napari.settings import get_settings
    from qtpy.QtWidgets import QApplication

    from napari_srgan_sqe.inference.engine import super_resolve
    from napari_srgan_sqe.io.slides import open_slide

    get_settings().experimental.async_ = True
    sr = super_resolve(open_slide(args.slide), args.model, device=args.device, tile=args.tile)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(args.window + 300, args.window + 200)
    layer = viewer.add_image(list(sr), rgb=True, multiscale=True, name="SR")
    app = QApplication.instance()

    def spin(until, timeout: float) -> bool:  # noqa: ANN001
        end = time.perf_counter() + timeout
        while time.perf_counter() < end:
            app.processEvents()
            if until():
                return True
            time.sleep(0.002)
        return False

    camera = getattr(viewer, "scene", viewer).camera
    camera.zoom = 1.0
    spin(lambda: layer.loaded, 120)
    times, levels, tiles, skipped = [], [], [], 0
    for y, x in _fresh_windows(sr, 2 * args.positions, args.window, args.seed + 1):
        if len(times) == args.positions:
            break
        before = sr.stats.tiles_computed
        t = time.perf_counter()
        camera.center = (y + args.window / 2, x + args.window / 2)
        # the slice request starts (loaded -> False), then its data arrive (-> True)
        if not spin(lambda: not layer.loaded, 1.0):
            skipped += 1  # nothing new to load here (already on screen): not a fresh pan
            continue
        if not spin(lambda: layer.loaded, 120):
            raise TimeoutError("the SR layer did not load")
        times.append(time.perf_counter() - t)
        levels.append(int(layer.data_level))
        tiles.append(sr.stats.tiles_computed - before)
    viewer.close()
    return {
        "async_slicing": True,
        "data_levels": levels,
        "tiles_computed_per_pan": tiles,
        "pans_without_new_data": skipped,
        **_summary(times),
    }


if __name__ == "__main__":
    main()
