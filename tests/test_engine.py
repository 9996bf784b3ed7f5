"""The lazy tile engine: seamless tiles, laziness, caches, model switching, threads."""

from __future__ import annotations

import threading
from pathlib import Path

import dask
import numpy as np
import pytest
import torch

from napari_srgan_sqe.inference.cache import TileCache, clear_disk_cache
from napari_srgan_sqe.inference.engine import DataError, bicubic_region, super_resolve
from napari_srgan_sqe.inference.tiling import TileGrid, read_region, symmetric_indices
from napari_srgan_sqe.models.predictor import Predictor
from tiny_runs import tiny


class Counting(Predictor):
    """A real Predictor that records the batch sizes of its forward calls."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []
        self._count_lock = threading.Lock()

    def run(self, tiles, *, crop=0, origins=None):
        with self._count_lock:
            self.calls.append(len(tiles))
        return super().run(tiles, crop=crop, origins=origins)


@pytest.fixture(scope="module")
def lr(cmu_svs: Path) -> np.ndarray:
    """A real H&E region (LR level 0 of the CMU slide), odd-sized."""
    from napari_srgan_sqe.io.slides import open_slide

    return np.asarray(open_slide(cmu_svs).levels[0][700:901, 1000:1243])


@pytest.fixture(scope="module")
def model():
    return tiny(0)


@pytest.fixture(scope="module")
def reference(lr, model) -> np.ndarray:
    return Predictor(model, device="cpu").predict_image(lr)


def test_symmetric_indices_match_numpy_pad() -> None:
    for n, pad in [(5, 2), (5, 7), (1, 3), (4, 13)]:
        ref = np.pad(np.arange(n), pad, mode="symmetric")
        assert np.array_equal(symmetric_indices(-pad, n + pad, n), ref)


def test_read_region_equals_padded_whole(lr) -> None:
    padded = np.pad(lr, ((9, 9), (9, 9), (0, 0)), mode="symmetric")
    h, w = lr.shape[:2]
    for y0, y1, x0, x1 in [(0, 50, 0, 50), (180, h, 220, w), (3, 20, 100, 117), (0, h, 0, w)]:
        got = read_region(lr, y0, y1, x0, x1, halo=9)
        assert np.array_equal(got, padded[y0 : y1 + 18, x0 : x1 + 18])


def test_block_cache_reads_like_the_array(lr) -> None:
    import dask.array as da

    from napari_srgan_sqe.inference.tiling import BlockCache

    level = da.from_array(lr, chunks=(50, 70, 3))
    cached = BlockCache(level, max_mb=1)
    h, w = lr.shape[:2]
    for y0, y1, x0, x1 in [(0, 50, 0, 70), (45, 160, 60, 75), (0, h, 0, w), (h - 1, h, 3, 4)]:
        assert np.array_equal(cached[y0:y1, x0:x1], lr[y0:y1, x0:x1])
        assert np.array_equal(
            read_region(cached, y0, y1, x0, x1, halo=11), read_region(lr, y0, y1, x0, x1, halo=11)
        )
    assert cached.cache.hits > 0


@pytest.mark.parametrize("tile", [24, 64, 97, 512])
def test_tiled_equals_whole_image(lr, model, reference, tile) -> None:
    sr = super_resolve(lr, model, device="cpu", tile=tile)
    out = np.asarray(sr[0])
    assert out.shape == reference.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - reference).max() <= 1
    for y, x, hh, ww in [(3, 5, 101, 77), (397, 211, 250, 333), (801, 969, 3, 3)]:
        part = np.asarray(sr[0][y : y + hh, x : x + ww])
        assert np.abs(part.astype(int) - reference[y : y + hh, x : x + ww]).max() <= 1


def test_lazy_creation_and_only_touched_tiles(lr, model) -> None:
    pred = Counting(model, device="cpu")
    sr = super_resolve(lr, model, predictor=pred, tile=64)
    assert pred.calls == [] and sr.stats.tiles_computed == 0
    # HR rows 300..340 -> LR rows 75..85 (tile row 1); HR cols 250..600 -> LR 62..150 (tiles 0..2)
    np.asarray(sr[0][300:340, 250:600])
    assert sum(pred.calls) == 3 and sr.stats.tiles_computed == 3
    assert len(sr.grid) == 4 * 4


def test_repeated_slice_hits_cache(lr, model) -> None:
    pred = Counting(model, device="cpu")
    sr = super_resolve(lr, model, predictor=pred, tile=64)
    first = np.asarray(sr[0][0:256, 0:512])
    n = sum(pred.calls)
    again = np.asarray(sr[0][10:200, 20:500])
    assert sum(pred.calls) == n
    assert sr.stats.cache_hits >= 2
    assert np.array_equal(again, first[10:200, 20:500])


def test_concurrent_requests_compute_each_tile_once(lr, model) -> None:
    pred = Counting(model, device="cpu")
    sr = super_resolve(lr, model, predictor=pred, tile=64)
    results: list[np.ndarray] = []

    def fetch() -> None:
        results.append(np.asarray(sr[0][:512, :512]))

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(pred.calls) == 4  # 2 x 2 tiles, each once
    assert all(np.array_equal(r, results[0]) for r in results)


def test_chunk_of_several_tiles_is_one_batch(lr, model) -> None:
    pred = Counting(model, device="cpu")
    sr = super_resolve(lr, model, predictor=pred, tile=32, chunk_tiles=2, batch=8)
    assert sr[0].chunks[0][0] == 2 * 32 * 4
    with dask.config.set(scheduler="sync"):
        np.asarray(sr[0][:256, :256])
    assert pred.calls == [4]


def test_set_model_invalidates(lr, model, reference) -> None:
    sr = super_resolve(lr, model, device="cpu", tile=64)
    before = np.asarray(sr[0][:256, :256])
    name = sr[0].name
    other = tiny(1)
    sr.set_model(other)
    assert sr[0].name != name and sr.model is other
    after = np.asarray(sr[0][:256, :256])
    expected = Predictor(other, device="cpu").predict_image(lr)[:256, :256]
    assert np.abs(after.astype(int) - expected).max() <= 1
    assert not np.array_equal(before, after)


def test_set_model_is_thread_safe_and_checks_scale(lr, model) -> None:
    sr = super_resolve(lr, model, device="cpu", tile=64)
    models = [tiny(1), tiny(2)]
    errors: list[BaseException] = []

    def switch(m) -> None:  # noqa: ANN001
        try:
            for _ in range(5):
                sr.set_model(m)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=switch, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sr.model in models and sr.predictor.model is sr.model
    assert sr.model_id == str(sr.model.identity) == sr._level0.model_id
    assert sr._level0.predictor is sr.predictor and sr[0].name.startswith(
        f"srgan-sqe-sr-{sr.model_id}-"
    )
    state = (sr.model, sr.predictor, sr.model_id, sr[0].name)
    with pytest.raises(DataError, match="up-scales by 2, but scale 4"):
        sr.set_model(tiny(3, scale=2))
    assert (sr.model, sr.predictor, sr.model_id, sr[0].name) == state and sr.scale == 4


@pytest.mark.parametrize("region", [(37, 51, 130, 101), (0, 0, 90, 70), (150, 120, 93, 81)])
def test_region_equals_crop_of_whole_image(lr, model, reference, region) -> None:
    # halos at the region's edges read the real neighbouring pixels (mirrored only at
    # the image border), so a region is the crop of the whole-image result
    x, y, w, h = region
    sr = super_resolve(lr, model, device="cpu", tile=48, region=region)
    assert sr[0].shape == (4 * h, 4 * w, 3)
    assert sr[1].shape == (h, w, 3)
    np.testing.assert_array_equal(np.asarray(sr[1]), lr[y : y + h, x : x + w])
    got = np.asarray(sr[0]).astype(int)
    want = reference[4 * y : 4 * (y + h), 4 * x : 4 * (x + w)]
    assert np.abs(got - want).max() <= 1
    with pytest.raises(DataError, match="not inside"):
        super_resolve(lr, model, device="cpu", region=(200, 0, 100, 10))


def test_disk_cache_survives_sessions(lr, model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NAPARI_SRGAN_SQE_CACHE", str(tmp_path / "cache"))
    first = super_resolve(lr, model, device="cpu", tile=64, disk_cache=True)
    a = np.asarray(first[0][:300, :300])
    pred = Counting(model, device="cpu")
    second = super_resolve(lr, model, predictor=pred, tile=64, disk_cache=True)
    b = np.asarray(second[0][:300, :300])
    assert pred.calls == [] and second.stats.disk_hits == 4
    assert np.array_equal(a, b)
    # another model has its own key space
    third = super_resolve(lr, tiny(2), device="cpu", tile=64, disk_cache=True)
    np.asarray(third[0][:100, :100])
    assert third.stats.tiles_computed == 1
    clear_disk_cache(first.model_id)
    assert not first.disk_cache.path.exists()


def test_pyramid_levels_and_inputs(lr, model) -> None:
    coarse = lr[::2, ::2]
    sr = super_resolve([lr, coarse], model, device="cpu", tile=64)
    assert [lv.shape for lv in sr] == [(804, 972, 3), lr.shape, coarse.shape]
    assert all(hasattr(lv, "dask") for lv in sr) and sr.scale == 4
    as_float = super_resolve(lr.astype(np.float32) / 255.0, model, device="cpu", tile=64)
    assert np.array_equal(np.asarray(as_float[0][:64, :64]), np.asarray(sr[0][:64, :64]))
    with pytest.raises(DataError, match="RGB"):
        super_resolve(lr[..., 0], model, device="cpu")
    with pytest.raises(DataError, match="uint8 or float"):
        super_resolve(lr.astype(np.uint16), model, device="cpu")
    with pytest.raises(DataError, match="up-scales by 2, but scale 4"):
        super_resolve(lr, tiny(0, scale=2), device="cpu", scale=4)


def test_slide_input(model, cmu_svs: Path) -> None:
    from napari_srgan_sqe.io.slides import open_slide

    slide = open_slide(cmu_svs)
    sr = super_resolve(slide, model, device="cpu", tile=128)
    h, w, _ = slide.levels[0].shape
    assert sr[0].shape == (4 * h, 4 * w, 3) and sr[1] is slide.levels[0]
    assert sr.stats.tiles_computed == 0
    block = np.asarray(sr[0][4100:4200, 6000:6100])
    assert block.shape == (100, 100, 3) and sr.stats.tiles_computed == 1


def test_bicubic_fill_matches_whole_image(lr) -> None:
    import torch.nn.functional as F

    x = torch.from_numpy(np.pad(lr, ((2, 2), (2, 2), (0, 0)), mode="symmetric"))
    x = x.permute(2, 0, 1)[None].float() / 255
    whole = F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)[0, :, 8:-8, 8:-8]
    whole = whole.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    part = bicubic_region(lr, 50, 113, 7, 90, scale=4)
    assert np.abs(part.astype(int) - whole[200:452, 28:360]).max() <= 1


def test_tile_cache_is_bounded() -> None:
    cache = TileCache(max_mb=1)
    tile = np.zeros((256, 256, 3), np.uint8)  # 192 KiB
    for i in range(10):
        cache.put(i, tile)
    assert cache.nbytes <= 2**20 and 0 not in cache and 9 in cache
    cache.get(5)
    cache.put(10, tile)
    assert 5 in cache
    assert TileGrid(20, 20, 8).ny == 3


def test_memoized_chunks_are_computed_once(lr) -> None:
    import dask.array as da

    from napari_srgan_sqe.degradation import degrade_with
    from napari_srgan_sqe.inference.cache import memoized

    calls: list[tuple[int, ...]] = []

    def counted(block, block_info=None):
        calls.append(tuple(block_info[0]["chunk-location"]))
        return block

    src = da.from_array(lr, chunks=(48, 64, -1))
    cache = TileCache(max_mb=16)
    arr = memoized(src.map_blocks(counted, dtype=src.dtype), cache)
    assert arr.chunks == src.chunks
    np.testing.assert_array_equal(np.asarray(arr[10:60, 20:100]), lr[10:60, 20:100])
    first = sorted(calls)
    assert first == [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0)]
    np.testing.assert_array_equal(np.asarray(arr[10:60, 20:100]), lr[10:60, 20:100])
    assert sorted(calls) == first  # read again: from the cache
    # the scanner simulation of a slide, as the viewer makes it: the same pixels
    hr = da.from_array(np.repeat(np.repeat(lr, 4, axis=0), 4, axis=1), chunks=1024)
    sim = degrade_with(hr, "scanner", 4, seed=0)
    np.testing.assert_array_equal(np.asarray(memoized(sim, cache)), np.asarray(sim))


def test_combiner_shared_by_pyramids_keeps_the_largest_batch(lr, model) -> None:
    from napari_srgan_sqe.inference.batching import combiner_for

    pred = Predictor(model, device="cpu", max_batch=8)
    super_resolve(lr, model, predictor=pred, batch=8)
    super_resolve(lr, model, predictor=pred, batch=2)  # used to shrink the first one's
    assert combiner_for(pred, 1).max_batch == 8


def test_distributed_engine_built_once_per_spec(monkeypatch, model) -> None:
    import time

    from napari_srgan_sqe.inference import distributed as dist

    built: list[object] = []

    def slow_build(spec, m):  # noqa: ANN001, ANN202
        time.sleep(0.2)
        built.append(spec)
        return object()

    monkeypatch.setattr(dist, "_build_engine", slow_build)
    monkeypatch.setattr(dist, "_ENGINES", type(dist._ENGINES)())
    monkeypatch.setattr(dist, "_MODELS", type(dist._MODELS)(m=model))
    spec = dist.ChunkSpec("slide.svs", (0, 0, 10, 10), "m", "cpu", 64, 1, 4)
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(dist._engine(spec))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and len(got) == 3 and got[0] is got[1] is got[2]
    assert not dist._BUILDING
    payload = dist.model_payload(model)
    for i in range(dist.MAX_MODELS + 2):  # the workers' model cache is a bounded LRU
        dist.ModelPlugin(f"x{i}", payload).setup()
    assert len(dist._MODELS) == dist.MAX_MODELS and "x0" not in dist._MODELS


# ------------------------------------------------------------------ placeholder mode
class Gated(Predictor):
    """A Predictor whose forward calls wait until `open` is set."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.open = threading.Event()
        self.calls = 0

    def run(self, tiles, *, crop=0, origins=None):
        self.calls += 1
        assert self.open.wait(60), "never opened"
        return super().run(tiles, crop=crop, origins=origins)


def _record_pieces(live) -> list:
    pieces, compute = [], live._compute
    live._compute = lambda piece: (pieces.append(piece), compute(piece))
    return pieces


def test_placeholder_at_once_then_the_exact_sr(lr, model, reference) -> None:
    from napari_srgan_sqe.inference.engine import PLACEHOLDER_TINT, LiveLevel0
    from napari_srgan_sqe.inference.tiling import bicubic_preview

    pred = Gated(model, device="cpu")
    sr = super_resolve(lr, model, predictor=pred, tile=64, placeholder=True)
    assert isinstance(sr[0], LiveLevel0) and sr.live is sr[0]
    events: list[str] = []
    sr.listeners.append(events.append)
    view = (slice(40, 600), slice(100, 900))
    shown = sr[0][view]  # returns while the network is held
    placeholder = bicubic_preview(
        lr, 0, lr.shape[0], 0, lr.shape[1], scale=4, tint=PLACEHOLDER_TINT
    )
    np.testing.assert_array_equal(shown, placeholder[view])
    # the bicubic of the LR under a light tint (rounded apart from bicubic_region)
    plain = bicubic_region(lr, 0, lr.shape[0], 0, lr.shape[1], scale=4).astype(int)
    *rgb, k = PLACEHOLDER_TINT
    assert np.abs(placeholder - (plain * (1 - 2.0**-k) + np.array(rgb) * 2.0**-k)).mean() < 1
    assert sr.stats.placeholder_reads == 1 and sr.stats.live_pieces == 0
    pred.open.set()
    assert sr.live.wait_idle(60)
    assert events[0] == "queued" and events[-1] == "landed"
    np.testing.assert_array_equal(sr[0][view], reference[view])  # the exact SR
    assert sr.stats.placeholder_reads == 1
    # what was computed for display serves the exact path: no new network call
    calls, y0, x0 = pred.calls, 64, 64  # grid tile (1, 2) of 64 LR px lies in the view
    np.testing.assert_array_equal(
        sr.tiles([(1, 2)])[0], reference[4 * y0 : 4 * 2 * y0, 8 * x0 : 12 * x0]
    )
    assert pred.calls == calls and sr.stats.tiles_computed == 0
    assert sr.live.exact is sr.exact_levels()[0]  # what saving and readouts must read


def test_live_work_runs_centre_first_and_a_pan_drops_stale_pieces(lr, model) -> None:
    pred = Gated(model, device="cpu")
    sr = super_resolve(lr, model, predictor=pred, tile=64, placeholder=True, live_piece=16)
    pieces = _record_pieces(sr.live)
    sr[0][0:320, 0:320]  # view A: 80 x 80 LR px in 25 pieces of 16
    for _ in range(100):
        if pieces:
            break
        threading.Event().wait(0.05)
    assert pieces[0] == (32, 48, 32, 48)  # the centre piece first
    queued = sr.live.queued
    assert queued == 24
    sr[0][480:800, 640:960]  # pan to view B (LR 120-200 x 160-240) before the others began
    assert sr.stats.live_dropped == queued
    pred.open.set()
    assert sr.live.wait_idle(60)
    # one piece of A (the one running at the pan), then the 25 of B only
    assert sr.stats.live_pieces == len(pieces) == 1 + 25
    assert all(120 <= p[0] and p[1] <= 200 and 160 <= p[2] and p[3] <= 240 for p in pieces[1:])
    assert pieces[1] == (152, 168, 192, 208)
    assert sr.live.missing(120, 200, 160, 240) == 0


def test_network_work_per_shown_pixel(lr, model) -> None:
    """A 1024 x 1024 view: the view plus one halo in network work, not whole tiles."""
    from napari_srgan_sqe.inference.tiling import halo_overhead

    big = np.tile(lr, (3, 3, 1))[:520, :700]
    halo = int(model.halo)
    view = (slice(150, 1174), slice(1030, 2054))  # 1024 x 1024 HR, off the tile grid
    live = super_resolve(big, model, device="cpu", placeholder=True)
    live[0][view]
    assert live.live.wait_idle(120)
    lr_px = 1024 * 1024 / 16
    per_shown = live.stats.input_px / lr_px
    # 256 LR px, plus a part LR pixel at each edge, plus the halo
    assert per_shown <= (257 + 2 * halo) ** 2 / 256**2 <= 1.5
    exact = super_resolve(big, model, device="cpu", tile=256)
    np.asarray(exact[0][view])
    assert exact.stats.input_px / lr_px > 3 * halo_overhead(256, halo)  # 4 whole tiles
    np.testing.assert_array_equal(live[0][view], np.asarray(exact[0][view]))


def test_export_and_evaluate_stay_exact_and_blocking(lr, model, reference) -> None:
    sr = super_resolve(lr, model, device="cpu", tile=64)  # the default: no placeholders
    assert not sr.placeholder and sr.live is None and hasattr(sr[0], "dask")
    np.testing.assert_array_equal(np.asarray(sr[0][:300, :300]), reference[:300, :300])
    assert sr.stats.tiles_computed == 4 and sr.stats.placeholder_reads == 0  # 2 x 2 tiles
    # switching placeholder mode on and off leaves the exact levels alone
    sr.set_placeholder(True)
    assert sr.exact_levels()[0] is not sr[0] and sr.exact_levels()[1] is sr[1]
    sr.set_placeholder(False)
    assert sr[0] is sr.exact_levels()[0] and sr.live is None


@pytest.mark.parametrize("bad", [255.0, float("nan"), -0.5])
def test_float_input_outside_0_1_is_refused_not_whitened(lr, model, bad) -> None:
    """0-255 values stored as float would come out white, NaN black: both are refused,
    by the Predictor at once and by the lazy pyramid when the chunk is read."""
    img = lr[:40, :40].astype(np.float32) / 255.0
    img[5, 7, 1] = bad
    pred = Predictor(model, device="cpu")
    with pytest.raises(DataError, match="float pixels must lie in"):
        pred.predict_image(img)
    with pytest.raises(DataError, match="float pixels must lie in"):
        super_resolve(img, model, device="cpu", tile=32)[0].compute()
    ok = lr[:40, :40].astype(np.float32) / 255.0  # in range: as the uint8 image
    np.testing.assert_allclose(
        pred.predict_image(ok), pred.predict_image(lr[:40, :40]) / 255.0, atol=1.01 / 255
    )


def test_predictor_takes_a_bundled_model_name() -> None:
    pred = Predictor("bicubic-x4", device="cpu")
    out = pred.predict_image(np.zeros((8, 8, 3), np.uint8))
    assert out.shape == (32, 32, 3) and pred.model.name == "bicubic-x4"


@pytest.mark.parametrize("region", [(10.5, 20.7, 30, 40), (10, 0, 100), "1,2,3,4", (None, 1, 2, 3)])
def test_a_region_is_four_whole_numbers(lr, model, region) -> None:
    with pytest.raises(DataError, match=r"a region is x, y, w, h: four whole numbers"):
        super_resolve(lr, model, device="cpu", region=region)
    assert super_resolve(lr, model, device="cpu", region=np.array([1, 2, 30, 40]))[0].shape[:2] == (
        160,
        120,
    )


def test_data_errors_are_one_public_class(lr, model) -> None:
    """A pipeline catches bad input with `napari_srgan_sqe.DataError`, whichever call
    raised it (and `except ValueError` still works)."""
    import napari_srgan_sqe as sq

    assert issubclass(sq.DataError, ValueError) and "DataError" in dir(sq)
    with pytest.raises(sq.DataError):
        super_resolve(lr[..., :2], model, device="cpu")  # two channels
    with pytest.raises(sq.DataError):
        super_resolve(lr, model, device="cpu", region=(0, 0, 10_000, 10))


@pytest.mark.parametrize(
    "bad", [None, "slide.svs", [[1, 2, 3]], 5, np.zeros(()), np.zeros((4, 4, 3, 1))]
)
def test_super_resolve_names_what_input_it_takes(bad):
    """Not an image: one DataError saying what super_resolve takes, not an IndexError."""
    from napari_srgan_sqe.io.errors import DataError

    with pytest.raises(DataError, match=r"RGB|shape \(H, W, 3\)"):
        super_resolve(bad, "bicubic-x4")


def test_one_tile_range_is_checked_where_tiles_are_made() -> None:
    """The engine, export and bench make tiles through TileGrid, which holds the one
    range (`tiling.TILE_RANGE`) that `enhance --tile` and the Enhance widget offer."""
    from napari_srgan_sqe.cli import enhance
    from napari_srgan_sqe.errors import UserFacingError
    from napari_srgan_sqe.inference.tiling import TILE_RANGE

    assert enhance.TILE_RANGE is TILE_RANGE == (8, 4096)
    for bad in (0, 7, 4097):
        with pytest.raises(UserFacingError, match=rf"tile must be 8 to 4096 LR px, got {bad}"):
            TileGrid(100, 100, bad)
    assert TileGrid(100, 100, 8).nx == 13 and TileGrid(100, 100, 4096).nx == 1
