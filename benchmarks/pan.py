"""A pan in the viewer: time to the first pixels and to the complete SR view, engine level.

A screen of 1600 x 1000 px at 1:1 shows 1600 x 1000 px of SR level 0. After a pan to
a part of the slide not seen before, the viewer reads that window from the SR layer's
level 0, as napari's slicer does. Two pyramids of the same slide and model run side
by side in one process, on the same windows, in alternating order:

- today: `super_resolve(...)` with the viewer's settings before placeholder mode
  (exact, blocking level 0, 256-px tiles on a CPU): the first pixels are the
  complete view, after every tile under the window is computed;
- new: `super_resolve(..., placeholder=True)`: the read returns at once with the
  exact SR already computed and a tinted bicubic placeholder elsewhere (first
  pixels), the view is computed in the background (centre first, pieces of at most
  `live_piece` LR px) and read again when the last piece lands (complete view).

Network work per shown pixel is (LR input pixels through the network, halo
included) x s^2 / (HR pixels of the view); it is also measured for 1024 x 1024
views at random positions (the 1.5x target). Prints JSON.

    python benchmarks/pan.py [--slide PATH] [--model srgan-sqe-he-x4] [-n 3] [--views-1024 3]
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
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--screen", default="1000,1600", help="HR px: height,width")
    ap.add_argument("--today-tile", type=int, default=None, help="LR px (default: the device's)")
    ap.add_argument("--live-piece", type=int, default=None, help="LR px (default: the engine's)")
    ap.add_argument("-n", "--positions", type=int, default=3)
    ap.add_argument("--views-1024", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from napari_srgan_sqe.inference.engine import LIVE_PIECE, super_resolve
    from napari_srgan_sqe.io.slides import open_slide
    from napari_srgan_sqe.models.modelfile import load_model

    model = load_model(args.model)
    piece = args.live_piece or LIVE_PIECE
    load_start = [round(v, 2) for v in os.getloadavg()]

    def today():  # noqa: ANN202
        return super_resolve(
            open_slide(args.slide), model, device=args.device, tile=args.today_tile
        )

    def new():  # noqa: ANN202
        return super_resolve(
            open_slide(args.slide), model, device=args.device, placeholder=True, live_piece=piece
        )

    pyramids = {"today": today(), "new": new()}
    for sr in pyramids.values():  # warm-up (model, threads, reader) away from the windows
        np.asarray(sr.exact_levels()[0][:64, :64])
    pyramids["new"][0][64:128, :64]  # and the placeholder path
    pyramids["new"].live.wait_idle()
    sh, sw = (int(v) for v in args.screen.split(","))
    s = pyramids["new"].scale
    windows = _windows(pyramids["today"], args.positions, (sh, sw), args.seed)
    runs: dict[str, list[dict]] = {"today": [], "new": []}
    for i, (y, x) in enumerate(windows):
        order = ("today", "new") if i % 2 == 0 else ("new", "today")
        for name in order:
            fn = _pan_blocking if name == "today" else _pan_live
            runs[name].append(fn(pyramids[name], y, x, sh, sw, s))

    # a pan while the previous view is still being computed (panning on and on)
    busy: list[float] = []
    more = _windows(pyramids["today"], 2 * args.positions, (sh, sw), args.seed + 2)
    live = new()  # a fresh cache
    for (ya, xa), (yb, xb) in zip(more[0::2], more[1::2]):
        live[0][ya : ya + sh, xa : xa + sw]
        time.sleep(0.3)  # its first piece runs now
        t0 = time.perf_counter()
        live[0][yb : yb + sh, xb : xb + sw]
        busy.append(time.perf_counter() - t0)
        live.live.wait_idle()

    views = _windows(pyramids["today"], args.views_1024, (1024, 1024), args.seed + 1)
    work_1024: dict[str, list[float]] = {"today": [], "new": []}
    fresh = {"today": today(), "new": new()}
    for y, x in views:
        work_1024["today"].append(_pan_blocking(fresh["today"], y, x, 1024, 1024, s)["work"])
        work_1024["new"].append(_pan_live(fresh["new"], y, x, 1024, 1024, s)["work"])

    result: dict = {
        "slide": os.path.basename(args.slide),
        "model": model.name,
        "halo_lr_px": int(model.halo),
        "device": str(pyramids["new"].predictor.device_name),
        "screen_hr_px": [sh, sw],
        "positions": [list(w) for w in windows],
    }
    for name, rs in runs.items():
        result[name] = {
            "settings": (
                {"tile_lr_px": pyramids[name].tile, "placeholder": False}
                if name == "today"
                else {"live_piece_lr_px": piece, "placeholder": True}
            ),
            "first_pixels_s": _summary([r["first"] for r in rs]),
            "complete_view_s": _summary([r["complete"] for r in rs]),
            "network_work_per_shown_px": _summary([r["work"] for r in rs], digits=2),
            "network_calls_per_pan": [r["calls"] for r in rs],
        }
    result["new"]["first_sr_piece_s"] = _summary([r["first_sr"] for r in runs["new"]])
    if busy:
        result["new"]["first_pixels_while_busy_s"] = _summary(busy)
    result["new"]["placeholder_is_marked"] = all(r["marked"] for r in runs["new"])
    t, n = result["today"], result["new"]
    result["speedup_complete_view"] = round(
        t["complete_view_s"]["median"] / n["complete_view_s"]["median"], 2
    )
    result["speedup_first_pixels"] = round(
        t["first_pixels_s"]["median"] / n["first_pixels_s"]["median"], 1
    )
    result["view_1024"] = {
        name: {"network_work_per_shown_px": _summary(v, digits=2)} for name, v in work_1024.items()
    }
    result["loadavg_1_5_15"] = {"start": load_start, "end": [round(v, 2) for v in os.getloadavg()]}
    result["cpus"] = os.cpu_count()
    print(json.dumps(result, indent=2))


def _pan_blocking(sr, y: int, x: int, h: int, w: int, s: int) -> dict:  # noqa: ANN001
    before, calls = sr.stats.input_px, sr.stats.tiles_computed
    t0 = time.perf_counter()
    np.asarray(sr[0][y : y + h, x : x + w])
    dt = time.perf_counter() - t0
    work = (sr.stats.input_px - before) * s * s / (h * w)
    return {"first": dt, "complete": dt, "work": work, "calls": sr.stats.tiles_computed - calls}


def _pan_live(sr, y: int, x: int, h: int, w: int, s: int) -> dict:  # noqa: ANN001
    landed: list[float] = []
    listener = lambda event: landed.append(time.perf_counter()) if event == "landed" else None  # noqa: E731
    sr.listeners.append(listener)
    before, calls = sr.stats.input_px, sr.stats.live_pieces
    t0 = time.perf_counter()
    shown = sr[0][y : y + h, x : x + w]  # what napari's slicer reads: never waits
    first = time.perf_counter() - t0
    exact_there = sr.live.missing(y // s, -(-(y + h) // s), x // s, -(-(x + w) // s)) == 0
    sr.live.wait_idle()
    final = sr[0][y : y + h, x : x + w]  # the refresh after the last piece landed
    complete = time.perf_counter() - t0
    sr.listeners.remove(listener)
    return {
        "first": first,
        "complete": complete,
        "first_sr": (landed[0] - t0) if landed else complete,
        "work": (sr.stats.input_px - before) * s * s / (h * w),
        "calls": sr.stats.live_pieces - calls,
        "marked": exact_there or not np.array_equal(shown, final),
    }


def _windows(sr, n: int, shape: tuple[int, int], seed: int) -> list[tuple[int, int]]:  # noqa: ANN001
    """n random (y, x) of HR windows whose 256-px tiles (with a margin) no other touches."""
    h, w = int(sr[0].shape[0]), int(sr[0].shape[1])
    wh, ww = shape
    rng = np.random.default_rng(seed)
    s, margin = sr.scale, sr.tile * sr.scale
    seen: set = set()

    def tiles(y: int, x: int, hh: int, w_: int) -> set:
        return set(
            sr.grid.covering(
                (y - margin) // s, (y + hh + margin) // s, (x - margin) // s, (x + w_ + margin) // s
            )
        )

    out: list[tuple[int, int]] = []
    for _ in range(20000):  # fewer when the slide has no more fresh room
        if len(out) == n:
            break
        y, x = int(rng.integers(0, h - wh)), int(rng.integers(0, w - ww))
        t = tiles(y, x, wh, ww)
        if t & seen:
            continue
        seen |= t
        out.append((y, x))
    return out


def _summary(values: list[float], digits: int = 3) -> dict | None:
    if not values:
        return None
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "all": [round(v, digits) for v in values],
    }


if __name__ == "__main__":
    main()
