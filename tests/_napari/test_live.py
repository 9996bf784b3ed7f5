"""Placeholder mode in a real napari viewer: a tinted bicubic placeholder at once,
replaced by the exact SR when it lands; a pan drops work that left the view."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_srgan_sqe._napari import _layers


class _Gate:
    """Wraps a pyramid's combiner: computes only once `open` is set; records inputs."""

    def __init__(self, combiner):
        self.combiner, self.open, self.shapes = combiner, threading.Event(), []

    def compute(self, tiles, crop, origins=None):
        self.shapes.extend(t.shape for t in tiles)
        assert self.open.wait(60), "gate never opened"
        return self.combiner.compute(tiles, crop, origins)


@pytest.fixture
def sr_pyramid(tiny_model, sample_hr):
    from napari_srgan_sqe.inference.engine import super_resolve

    lr = np.ascontiguousarray(sample_hr)  # 384 x 512 LR -> 1536 x 2048 SR
    # placeholder mode from the start, as the Enhance widget makes it
    pyramid = super_resolve(lr, str(tiny_model), device="cpu", tile=64, placeholder=True)
    gate = _Gate(pyramid._level0.combiner)
    pyramid._level0.combiner = gate  # every network call of the pyramid waits for the gate
    return pyramid, gate


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def viewer(make_napari_viewer, request):
    """A rendered viewer (napari picks levels when it draws), with napari's
    synchronous or asynchronous slicing."""
    from napari.settings import get_settings

    settings = get_settings().experimental
    old = settings.async_
    settings.async_ = request.param  # read when the viewer's slicer is made
    request.addfinalizer(lambda: setattr(settings, "async_", old))
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(700, 600)
    return viewer


def _show_level0(viewer, qtbot, layer, centre):
    cam = _layers._camera(viewer)
    cam.zoom = 3.0  # magnified: napari shows level 0
    cam.center = centre

    def there() -> bool:  # napari picks the level and the corners when it draws
        (y0, x0), (y1, x1) = (c[:2] for c in layer.corner_pixels)
        return layer.data_level == 0 and y0 <= centre[0] <= y1 and x0 <= centre[1] <= x1

    qtbot.waitUntil(there, timeout=10_000)
    layer.refresh()
    qtbot.waitUntil(lambda: layer.loaded, timeout=10_000)


def _displayed(layer):
    """(pixels napari shows, their (y0, x0) on level 0)."""
    y0, x0 = (int(v) for v in layer.corner_pixels[0][:2])
    return np.asarray(layer._data_view), (y0, x0)


def test_placeholder_first_then_the_exact_sr(viewer, qtbot, sr_pyramid):
    from napari_srgan_sqe.inference.engine import PLACEHOLDER_TINT
    from napari_srgan_sqe.inference.tiling import bicubic_preview

    pyramid, gate = sr_pyramid
    layer = viewer.add_image(list(pyramid), multiscale=True, rgb=True, name="SR")
    _layers.attach_pyramid(layer, pyramid)
    assert layer.data[0] is pyramid.live  # the layer shows the live level
    _show_level0(viewer, qtbot, layer, (384, 512))

    shown, (y0, x0) = _displayed(layer)
    h, w = shown.shape[:2]
    assert h >= 64 and w >= 64
    s = pyramid.scale
    # the placeholder: tinted bicubic of the LR, not the SR, shown before any SR exists
    ly0, lx0 = y0 // s, x0 // s
    up = bicubic_preview(
        pyramid.lr_levels[0],
        ly0,
        -(-(y0 + h) // s),
        lx0,
        -(-(x0 + w) // s),
        scale=s,
        tint=PLACEHOLDER_TINT,
    )
    expected = up[y0 - ly0 * s : y0 - ly0 * s + h, x0 - lx0 * s : x0 - lx0 * s + w]
    np.testing.assert_array_equal(shown, expected)
    assert pyramid.stats.live_pieces == 0 and pyramid.stats.tiles_computed == 0
    assert pyramid.live.busy and gate.shapes  # its SR is being computed meanwhile

    gate.open.set()  # the SR lands: the layer refreshes itself with the exact pixels
    qtbot.waitUntil(lambda: not pyramid.live.busy, timeout=60_000)
    exact = np.asarray(pyramid.exact_levels()[0][y0 : y0 + h, x0 : x0 + w])
    assert not np.array_equal(shown, exact)
    qtbot.waitUntil(lambda: np.array_equal(_displayed(layer)[0], exact), timeout=10_000)
    assert pyramid.stats.live_pieces >= 1
    # the readouts' path: exact levels, and what was computed for display is reused
    before = pyramid.stats.input_px
    sr0 = _layers.layer_levels(layer)[0]
    np.testing.assert_array_equal(np.asarray(sr0[y0 : y0 + 64, x0 : x0 + 64]), exact[:64, :64])
    assert _layers.layer_levels(layer)[1] is pyramid[1]
    assert pyramid.stats.input_px >= before  # (tiles not fully on screen may be computed)


def _lr_view(layer, s):
    """The LR box (y0, y1, x0, x1) under what napari shows of level 0."""
    (y0, x0), (y1, x1) = (np.asarray(c[:2], int) for c in layer.corner_pixels)
    return y0 // s, -(-(y1 + 1) // s), x0 // s, -(-(x1 + 1) // s)


def _meets(piece, box):
    return piece[0] < box[1] and box[0] < piece[1] and piece[2] < box[3] and box[2] < piece[3]


def test_a_pan_drops_pieces_that_left_the_view(viewer, qtbot, sr_pyramid):
    pyramid, gate = sr_pyramid
    live, s = pyramid.live, pyramid.scale
    live.piece = 16  # small pieces: many per view
    computed = []
    compute = live._compute
    live._compute = lambda piece: (computed.append(piece), compute(piece))
    layer = viewer.add_image(list(pyramid), multiscale=True, rgb=True, name="SR")
    _layers.attach_pyramid(layer, pyramid)
    _show_level0(viewer, qtbot, layer, (200, 250))
    qtbot.waitUntil(lambda: len(computed) >= 1 and live.queued >= 2, timeout=10_000)
    view_a, first = _lr_view(layer, s), computed[0]  # one piece runs (held), more wait
    queued_a, dropped = live.queued, pyramid.stats.live_dropped

    _show_level0(viewer, qtbot, layer, (1300, 1800))  # pan before the others started
    view_b = _lr_view(layer, s)
    assert not _meets(view_a, view_b)
    assert pyramid.stats.live_dropped - dropped >= queued_a  # all of them dropped
    gate.open.set()
    qtbot.waitUntil(lambda: not live.busy, timeout=60_000)

    # computed: the piece that had started, then only pieces of the new view, centre first
    assert computed[-1] != first and all(_meets(p, view_b) for p in computed[1:])
    assert pyramid.stats.live_pieces == len(computed) == len(gate.shapes)
    assert live.missing(*view_b) == 0
    by, bx = (view_b[0] + view_b[1]) / 2, (view_b[2] + view_b[3]) / 2
    dist = [abs((p[0] + p[1]) / 2 - by) + abs((p[2] + p[3]) / 2 - bx) for p in computed[1:]]
    assert dist[0] == min(dist)
    # the last piece's refresh may still be slicing (async): let it land before the
    # viewer closes, or its task keeps the viewer alive past the leak check
    qtbot.waitUntil(lambda: layer.loaded, timeout=10_000)
    qtbot.wait(50)


def test_saving_an_sr_layer_writes_the_sr_not_its_placeholders(tiny_model, sample_hr):
    """napari's File > Save of an SR layer in placeholder mode writes the exact SR."""
    from napari_srgan_sqe._napari.writer import layer_levels_and_mpp
    from napari_srgan_sqe.inference.engine import super_resolve

    lr = np.ascontiguousarray(sample_hr[:64, :96])
    live = super_resolve(lr, str(tiny_model), device="cpu", tile=32, placeholder=True)
    exact = super_resolve(lr, str(tiny_model), device="cpu", tile=32)
    shown = live[0][0:256, 0:384]  # nothing computed yet: the tinted placeholder
    assert not np.array_equal(np.asarray(shown), np.asarray(exact[0]))
    levels, _ = layer_levels_and_mpp(list(live), {"name": "SR", "multiscale": True})
    np.testing.assert_array_equal(np.asarray(levels[0]), np.asarray(exact[0]))
