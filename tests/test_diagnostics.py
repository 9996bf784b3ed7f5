"""The departure map and the spread of samples (inference.diagnostics), on real H&E."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_srgan_sqe.degradation import degrade
from napari_srgan_sqe.inference.diagnostics import (
    LiveDeparture,
    consistency_residual,
    departure_image,
    departure_map,
    iter_spread,
    pool_lr,
    spread_map,
    write_departure_tiff,
)
from napari_srgan_sqe.inference.engine import super_resolve
from napari_srgan_sqe.models.modelfile import load_model
from tiny_runs import tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL_MAX = 0.5
"""Largest difference (grey levels) between a tile's map and the whole-image map: a
uint8 SR pixel may round the other way in a tile (float summation order), which moves
a std over 4 results of 16 HR px by at most 0.5 / 4 per pixel and channel."""


@pytest.fixture(scope="module")
def lr(cmu_svs: Path) -> np.ndarray:
    """A real H&E region of the sample slide, odd-sized (taken as LR)."""
    from napari_srgan_sqe.io.slides import open_slide

    return np.asarray(open_slide(cmu_svs).levels[0][700:829, 1000:1151])


@pytest.fixture(scope="module")
def model():
    return tiny(0)


@pytest.fixture(scope="module")
def whole(lr, model) -> np.ndarray:
    return departure_image(lr, model)


def test_tiles_agree_with_the_whole_image_map(lr, model, whole):
    pyramid = super_resolve(lr, model, device="cpu", tile=48)
    tiled = departure_map(pyramid)
    assert tiled.shape == lr.shape[:2] and tiled.dtype == np.float32
    assert tiled.chunks == ((48, 48, 33), (48, 48, 48, 7))
    got = tiled.compute()
    assert whole.shape == lr.shape[:2]
    assert whole.mean() > 0.5  # a random network is far from rotation-equivariant
    diff = np.abs(got - whole)
    assert diff.max() <= TOL_MAX and diff.mean() < 0.01


def test_the_map_reads_sr_through_the_pyramid_cache(lr, model):
    pyramid = super_resolve(lr, model, device="cpu", tile=48)
    np.asarray(pyramid[0])  # all SR tiles
    computed = pyramid.stats.tiles_computed
    assert computed == 12
    departure_map(pyramid).compute()
    stats = pyramid.stats
    assert stats.tiles_computed == computed  # rotation 0 came from the cache
    assert stats.cache_hits >= 12


def test_a_region_computes_only_the_tiles_it_covers(lr, model, whole, tmp_path):
    pyramid = super_resolve(lr, model, device="cpu", tile=48)
    path = write_departure_tiff(pyramid, tmp_path / "map.tif", region=(50, 10, 60, 30), mpp=2.0)
    assert pyramid.stats.tiles_computed == 2  # tiles (0, 1) and (0, 2) of the 48 px grid
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        got = page.asarray()
        assert page.is_tiled and got.dtype == np.float32
        assert page.tags["XResolution"].value == (5000, 1)  # 1 / 2 um, per cm
    assert got.shape == (30, 60)
    assert np.abs(got - whole[10:40, 50:110]).max() <= TOL_MAX
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_whole_map_written_as_tiff_equals_the_lazy_map(lr, model, tmp_path):
    import tifffile

    pyramid = super_resolve(lr, model, device="cpu", tile=64)
    path = write_departure_tiff(pyramid, tmp_path / "whole.tif")
    np.testing.assert_array_equal(tifffile.imread(path), departure_map(pyramid).compute())
    with pytest.raises(ValueError, match="not inside"):
        write_departure_tiff(pyramid, tmp_path / "bad.tif", region=(140, 0, 20, 20))


def test_bicubic_invents_nothing(lr):
    """Bicubic interpolation turns with the image: its map is (almost) zero."""
    values = departure_image(lr[:40, :48], load_model("bicubic-x4"))
    assert values.shape == (40, 48)
    assert values.mean() < 0.01 and values.max() <= 0.25


def test_consistency_residual_of_the_truth_is_rounding_only(lr):
    hr = lr[:64, :64]
    low = degrade(hr, 4)
    residual = consistency_residual(hr, low, 4)
    assert residual.shape == (16, 16)
    assert residual.max() <= 0.5  # D_4(HR) vs D_4(HR) rounded to uint8
    shifted = consistency_residual(np.clip(hr.astype(int) + 20, 0, 255).astype(np.uint8), low, 4)
    assert shifted.mean() > 15


def test_pool_lr_means_blocks():
    a = np.arange(64, dtype=np.float32).reshape(8, 8)
    np.testing.assert_allclose(pool_lr(a, 4), [[13.5, 17.5], [45.5, 49.5]])


# ------------------------------------------------------------------ the viewer's map
def test_live_map_never_blocks_and_uses_the_viewers_sr(lr, model, whole, tmp_path):
    pyramid = super_resolve(lr, model, device="cpu", tile=48, placeholder=True)
    live = LiveDeparture(pyramid, piece=32)
    level0 = live.levels[0]
    assert level0.shape == pyramid[0].shape[:2] and len(live.levels) == 2
    assert live.levels[1].shape == lr.shape[:2]
    box = (8, 72, 20, 100)  # LR px: y0, y1, x0, x1
    first = level0[box[0] * 4 : box[1] * 4, box[2] * 4 : box[3] * 4]
    assert first.shape == (256, 320) and not first.any()  # nothing yet: no wait
    assert live.wait_idle(60)
    got = level0[box[0] * 4 : box[1] * 4, box[2] * 4 : box[3] * 4]
    expected = np.repeat(np.repeat(whole[8:72, 20:100], 4, axis=0), 4, axis=1)
    assert np.abs(got - expected).max() <= TOL_MAX
    # SR was computed once, by the live level, for the box only: no grid tile
    stats = pyramid.stats
    assert stats.tiles_computed == 0 and stats.live_pieces >= 1
    h = pyramid.halo
    assert stats.input_px <= (64 + 2 * h) * (80 + 2 * h) * 1.5
    assert live.error is None and live.pieces_done >= 6
    # the coarser level (the LR grid) shows what is computed, and starts nothing
    coarse = live.levels[1][0:129, 0:151]
    np.testing.assert_array_equal(coarse[8:72, 20:100], got[::4, ::4])
    assert not coarse[:8].any() and not coarse[72:].any()
    assert live.missing(0, 129, 0, 151) == 129 * 151 - 64 * 80
    # saving what the viewer computed computes nothing more
    import tifffile

    before = (pyramid.stats.as_dict(), live.pieces_done)
    path = live.write_tiff(tmp_path / "view.tif", (20, 8, 80, 64), mpp=2.0)
    np.testing.assert_array_equal(tifffile.imread(path), got[::4, ::4])
    assert (pyramid.stats.as_dict(), live.pieces_done) == before
    # a region beyond it: the exact map
    path = live.write_tiff(tmp_path / "more.tif", (0, 0, 48, 48))
    assert np.abs(tifffile.imread(path) - whole[:48, :48]).max() <= TOL_MAX
    live.close()


def test_live_map_follows_the_model(lr, model):
    pyramid = super_resolve(lr, model, device="cpu", tile=48, placeholder=True)
    live = LiveDeparture(pyramid)
    events: list[str] = []
    live.listeners.append(events.append)
    view = (slice(0, 128), slice(0, 160))
    live.levels[0][view]
    assert live.wait_idle(60)
    before = live.levels[0][view].copy()
    assert before.mean() > 0.5 and "landed" in events
    other = tiny(1)
    pyramid.set_model(other)
    assert not live.levels[0][view].any()  # the old map is gone at once
    assert live.wait_idle(60)
    after = live.levels[0][view]
    expected = departure_image(lr, other)[:32, :40]
    assert np.abs(after[::4, ::4] - expected).max() <= TOL_MAX
    assert np.abs(after - before).mean() > 0.1
    live.close()


def test_live_map_without_a_live_level_reads_exact_sr(lr, model, whole):
    pyramid = super_resolve(lr, model, device="cpu", tile=48)  # no placeholder mode
    live = LiveDeparture(pyramid)
    live.levels[0][0:96, 0:96]
    assert live.wait_idle(60)
    got = live.levels[0][0:96:4, 0:96:4]
    assert np.abs(got - whole[:24, :24]).max() <= TOL_MAX
    assert pyramid.stats.tiles_computed == 1
    live.close()


# ------------------------------------------------------------------ spread of samples
def test_spread_of_a_deterministic_model_is_exactly_zero(lr, model):
    done: list[tuple[int, int]] = []
    result = spread_map(
        lr,
        model,
        (30, 20, 40, 24),
        seeds=(0, 1, 2),
        device="cpu",
        progress=lambda *a: done.append(a),
    )
    assert result.values.shape == (96, 160) and result.values.dtype == np.float32
    assert not result.stochastic and result.seeds == (0, 1, 2)
    assert np.count_nonzero(result.values) == 0 and result.max == 0.0
    assert done == [(1, 3), (2, 3), (3, 3)]


def test_spread_checks_seeds_and_stops(lr, model):
    with pytest.raises(ValueError, match="two different seeds"):
        spread_map(lr, model, (0, 0, 8, 8), seeds=(3,))
    with pytest.raises(ValueError, match="two different seeds"):
        spread_map(lr, model, (0, 0, 8, 8), seeds=(1, 1))
    stop = threading.Event()
    gen = iter_spread(lr, model, (0, 0, 16, 16), seeds=(0, 1, 2), device="cpu", stop=stop)
    assert next(gen) == 1
    stop.set()
    with pytest.raises(StopIteration) as end:
        next(gen)
    assert end.value.value is None  # stopped: no result


class _Noisy(torch.nn.Module):
    """A stochastic method on the method interface: the tiny network plus seeded noise
    keyed to slide position (a stand-in for sampling, and nothing else)."""

    def __init__(self, base) -> None:
        super().__init__()
        self.base = base

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.base, name)

    @property
    def descriptor(self):
        from dataclasses import replace

        return replace(self.base.descriptor, stochastic=True, kind="stochastic")

    @property
    def identity(self) -> str:
        return f"{self.base.identity}-noisy"

    def infer_batch(self, x, *, seed=None, origins=None):
        y = self.base.infer_batch(x)
        g = torch.Generator().manual_seed(1000 + int(seed or 0))
        return y + 0.05 * torch.randn(y.shape, generator=g)


def test_spread_of_a_stochastic_method_is_positive_and_reproducible(lr, model):
    noisy = _Noisy(model)
    region = (10, 10, 24, 20)
    a = spread_map(lr, noisy, region, seeds=(0, 1, 2, 3), device="cpu", tile=64)
    assert a.stochastic and a.values.shape == (80, 96)
    assert a.mean > 5  # noise of 0.05 * 255 grey levels before rounding
    b = spread_map(lr, noisy, region, seeds=(0, 1, 2, 3), device="cpu", tile=64)
    np.testing.assert_array_equal(a.values, b.values)
    with pytest.raises(ValueError, match="deterministic"):
        departure_map(super_resolve(lr, noisy, device="cpu"))


def test_spread_of_sr3_is_positive(lr):
    from tiny_runs import tiny_sr3

    net = tiny_sr3()
    assert net.descriptor.stochastic
    result = spread_map(lr, net, (20, 20, 24, 24), seeds=(0, 1, 2), device="cpu")
    assert result.stochastic and result.values.shape == (96, 96)
    assert result.mean > 0.5 and np.isfinite(result.values).all()


def test_spread_pooled_per_block_keeps_shape_and_block_means():
    from napari_srgan_sqe.inference.diagnostics import SpreadResult

    rng = np.random.default_rng(0)
    values = rng.random((10, 7)).astype(np.float32)
    res = SpreadResult(values=values, region=(0, 0, 3, 3), seeds=(0, 1), stochastic=True, model="m")
    pooled = res.pooled(4)
    assert pooled.shape == values.shape
    assert pooled[0, 0] == pytest.approx(values[:4, :4].mean())
    assert pooled[9, 6] == pytest.approx(values[8:, 4:].mean())  # a partial edge block
    assert np.all(pooled[:4, :4] == pooled[0, 0])
    np.testing.assert_array_equal(res.pooled(1), values)
