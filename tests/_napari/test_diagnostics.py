"""Compare's honest-SR layers in a real viewer: the departure map and the uncertainty."""

from __future__ import annotations

import numpy as np
import pytest

from napari_srgan_sqe._napari import _layers
from napari_srgan_sqe._napari.compare.maps import DEPARTURE_CLEAR, MAP_KEY
from napari_srgan_sqe._napari.compare.widget import CompareWidget
from napari_srgan_sqe.inference.diagnostics import DEPARTURE_LIMIT, departure_map

pytestmark = pytest.mark.gui

PLUGIN = "napari-srgan-sqe"
TOL = 0.5  # grey levels: the map of a piece against the lazy whole map (tests/test_diagnostics.py)


def dock(viewer, name: str):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def settle(qtbot, compare: CompareWidget) -> None:
    qtbot.waitUntil(lambda: not compare.busy and compare.last_readout is not None, timeout=30000)


def paired(viewer, qtbot, image, model):
    """Enhance (LR simulated from `image`) and Compare docked; the pair."""
    layer = viewer.add_image(image, name="HE", scale=(0.5, 0.5))
    enhance, compare = dock(viewer, "Enhance"), dock(viewer, "Compare")
    sr = enhance.enhance(simulate_from=layer, model=model, wait=True)
    assert sr is not None
    settle(qtbot, compare)
    return enhance, compare, _layers.find_pair(viewer.layers, sr)


def look_at_level0(viewer, pair, y: float, x: float) -> None:
    """Centre the view on world (y, x), zoomed in far enough for SR level 0."""
    camera = viewer.scene.camera
    camera.zoom = 6.0  # screen px per um; HR px = 0.5 um: 3 screen px per HR px
    camera.center = (0, y, x)


def computed(live, shape):
    """(values, mask) of the whole LR grid of a LiveDeparture's store."""
    return live.store.read(0, shape[0], 0, shape[1])


def test_departure_layer_shows_the_map_next_to_sr(viewer, qtbot, sample_hr, tiny_model, errors):
    enhance, compare, pair = paired(viewer, qtbot, sample_hr, tiny_model)
    assert compare.departure_legend.isHidden()
    assert "turned" in compare.departure_box.toolTip()
    compare.departure_box.setChecked(True)
    layer = compare.departure_layer
    assert layer is not None and layer.multiscale
    assert layer.name == "Departure tiny-test · HE"
    assert layer.metadata[MAP_KEY] == {"kind": "departure", "pair_id": pair.pair_id}
    # aligned with SR: the same pixel grid, level for level
    assert tuple(layer.scale) == tuple(pair.sr.scale)
    assert tuple(layer.translate) == tuple(pair.sr.translate)
    assert [lv.shape[:2] for lv in layer.data] == [lv.shape[:2] for lv in pair.sr.data]
    assert tuple(layer.contrast_limits) == (DEPARTURE_CLEAR, DEPARTURE_LIMIT)
    # next to SR in the grid; the layer list reads like the grid
    assert viewer.canvas.grid.shape == (1, 4)
    names = [x.name for x in viewer.layers][-4:]
    assert names == [pair.hr.name, layer.name, pair.sr.name, pair.lr.name]
    # the legend: colour bar, its range, what it means
    legend = compare.departure_legend
    assert not legend.isHidden() and not legend.bar.pixmap().isNull()
    assert (legend.low.text(), legend.high.text()) == (
        f"{DEPARTURE_CLEAR:g}",
        f"{DEPARTURE_LIMIT:g}+",
    )
    assert "grey levels" in legend.text.text() and "made up" in legend.text.text()
    layer.contrast_limits = (0.5, 4.0)
    assert legend.high.text() == "4+"

    look_at_level0(viewer, pair, 96.0, 128.0)
    live = compare.departure_of(layer)
    pyramid = _layers.pyramid_of(pair.sr)
    lr_shape = (96, 128)
    qtbot.waitUntil(lambda: computed(live, lr_shape)[1].any() and not live.busy, timeout=30000)
    values, mask = computed(live, lr_shape)
    assert 0 < mask.mean() < 0.5  # the view, not the whole image
    expected = departure_map(pyramid).compute()
    assert np.abs(values[mask] - expected[mask]).max() <= TOL
    assert values[mask].mean() > 0.5  # a random network is far from rotation-equivariant
    assert errors() == []

    # the bar's clear end shows what the map is seen over: its own cell's canvas side
    # by side (black in the dark theme, white in the light one), the white slide overlaid
    def clear_end() -> tuple[int, int, int]:
        c = legend.bar.pixmap().toImage().pixelColor(0, legend.BAR[1] // 2)
        return c.red(), c.green(), c.blue()

    viewer.theme = "dark"
    assert clear_end() == (0, 0, 0)
    viewer.theme = "light"
    assert clear_end() == (255, 255, 255)
    viewer.theme = "dark"
    compare.arrange("overlay")
    assert clear_end() == (255, 255, 255)
    compare.arrange("side by side")
    assert clear_end() == (0, 0, 0) and viewer.canvas.grid.shape == (1, 4)
    qtbot.waitUntil(lambda: not live.busy, timeout=30000)  # the re-layouts' redraws

    compare.departure_box.setChecked(False)
    assert compare.departure_layer is None and layer not in viewer.layers
    assert viewer.canvas.grid.shape == (1, 3) and compare.departure_legend.isHidden()
    assert not compare.departure_of(layer)
    assert not live.busy and live.pyramid is pyramid

    # the map goes with its SR layer
    again = compare.show_departure()
    viewer.layers.remove(pair.sr)
    qtbot.waitUntil(lambda: again.name not in [x.name for x in viewer.layers], timeout=5000)
    assert errors() == []


def test_departure_with_asynchronous_slicing(async_viewer, qtbot, sample_hr, tiny_model, errors):
    viewer = async_viewer
    _, compare, pair = paired(viewer, qtbot, sample_hr[:192, :256], tiny_model)
    compare.arrange("overlay")
    layer = compare.show_departure()
    look_at_level0(viewer, pair, 48.0, 64.0)
    live = compare.departure_of(layer)
    qtbot.waitUntil(lambda: computed(live, (48, 64))[1].any() and not live.busy, timeout=30000)
    values, mask = computed(live, (48, 64))
    expected = departure_map(_layers.pyramid_of(pair.sr)).compute()
    assert np.abs(values[mask] - expected[mask]).max() <= TOL
    qtbot.waitUntil(lambda: all(x.loaded for x in viewer.layers), timeout=30000)
    assert errors() == []
    # let the map's and the slicer's threads finish before the viewer is torn down
    viewer.layers.remove(layer)
    qtbot.waitUntil(lambda: not live.busy, timeout=30000)
    viewer._layer_slicer.shutdown()


def test_departure_follows_the_model_and_the_layer_list(viewer, qtbot, sample_hr, tiny_model):
    enhance, compare, pair = paired(viewer, qtbot, sample_hr[:192, :256], tiny_model)
    layer = compare.show_departure()
    compare.arrange("overlay")
    names = [x.name for x in viewer.layers]
    assert names.index(layer.name) > names.index(pair.sr.name) and layer.visible
    look_at_level0(viewer, pair, 48.0, 64.0)
    live = compare.departure_of(layer)
    qtbot.waitUntil(lambda: computed(live, (48, 64))[1].any() and not live.busy, timeout=30000)
    assert computed(live, (48, 64))[0].max() > 0.5

    enhance.set_model("bicubic-x4", wait=True)  # bicubic turns with the image: nothing made up
    assert layer.name == "Departure bicubic-x4 · HE"
    assert compare.departure_of(layer) is live
    layer.refresh()
    qtbot.waitUntil(lambda: computed(live, (48, 64))[1].any() and not live.busy, timeout=30000)
    values, mask = computed(live, (48, 64))
    assert values[mask].max() <= 0.25

    viewer.layers.remove(layer)  # by hand
    assert not compare.departure_box.isChecked() and compare.departure_layer is None


def test_save_the_departure_map_of_the_view(viewer, qtbot, sample_hr, tiny_model, tmp_path):
    import tifffile

    _, compare, pair = paired(viewer, qtbot, sample_hr[:128, :128], tiny_model)
    assert not compare.save_map_button.isEnabled()
    assert not compare.save_departure(tmp_path / "none.tif")
    compare.show_departure()
    assert compare.save_map_button.isEnabled()
    compare.arrange("overlay")
    viewer.scene.camera.zoom = 0.1  # all of it
    settle(qtbot, compare)
    path = tmp_path / "map.tif"
    assert compare.save_departure(path, wait=True)
    with tifffile.TiffFile(path) as tif:
        got = tif.pages[0].asarray()
        resolution = tif.pages[0].tags["XResolution"].value
    pyramid = _layers.pyramid_of(pair.sr)
    expected = departure_map(pyramid).compute()
    assert got.shape == expected.shape == (32, 32)
    assert np.abs(got - expected).max() <= TOL
    assert resolution == (5000, 1)  # LR px of 2 um (HR px 0.5 x 4), per cm
    assert str(path) in compare.uncertainty_label.text()
    # it says where it lies, and the suggested name tells views apart
    with tifffile.TiffFile(path) as tif:
        text = tif.pages[0].description
    assert "model tiny-test" in text and "source HE" in text and "region x,y,w,h 0,0,32,32" in text
    assert compare.departure_file_name() == "departure-HE-x0-y0.tif"


def test_a_slide_without_pixel_size_saves_maps_and_layers_without_one(
    viewer, qtbot, sample_hr, tiny_model, tmp_path
):
    """A slide that records no pixel size opens in pixels; the SR layer's scale (1/4)
    must not be taken for micrometres by the departure map or the writers."""
    import tifffile
    from PIL import Image

    from napari_srgan_sqe._napari.launch import show_slide
    from napari_srgan_sqe._napari.writer import layer_levels_and_mpp
    from napari_srgan_sqe.io.slides import open_slide

    png = tmp_path / "no-mpp.png"
    Image.fromarray(sample_hr[:128, :128]).save(png)
    layer = show_slide(viewer, open_slide(png))
    assert layer.metadata["mpp"] is None and tuple(layer.scale) == (1.0, 1.0)
    enhance, compare = dock(viewer, "Enhance"), dock(viewer, "Compare")
    sr = enhance.enhance(layer, model=tiny_model, wait=True)
    assert tuple(sr.scale) == (0.25, 0.25) and sr.metadata["mpp"] is None
    settle(qtbot, compare)
    compare.show_departure()
    viewer.scene.camera.zoom = 0.1
    settle(qtbot, compare)
    path = tmp_path / "map.tif"
    assert compare.save_departure(path, wait=True)
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        assert "ResolutionUnit" not in tags or tags["ResolutionUnit"].value == 1  # none
    meta = {"metadata": sr.metadata, "scale": tuple(sr.scale), "multiscale": True}
    _, mpp = layer_levels_and_mpp(list(sr.data), meta)
    assert mpp is None
    # a slide with a pixel size: the SR layer records its own (LR's / 4)
    slide = show_slide(viewer, open_slide(png))
    slide.metadata = {**slide.metadata, "mpp": 0.5}
    sr2 = enhance.enhance(slide, model=tiny_model, wait=True)
    assert sr2.metadata["mpp"] == pytest.approx(0.125)


def test_uncertainty_of_a_deterministic_model_is_zero(
    viewer, qtbot, sample_hr, tiny_model, tmp_path, errors
):
    import tifffile

    _, compare, pair = paired(viewer, qtbot, sample_hr[:128, :160], tiny_model)
    compare.samples_box.setValue(3)
    assert compare.uncertainty_button.text() == "Uncertainty (3 samples)"
    assert "guessing" in compare.uncertainty_button.toolTip()
    compare.arrange("overlay")
    look_at_level0(viewer, pair, 32.0, 40.0)
    with qtbot.waitSignal(compare.uncertainty_ready, timeout=30000) as blocker:
        assert compare.run_uncertainty()
        assert not compare.uncertainty_button.isEnabled() and compare.stop_button.isEnabled()
    layer = viewer.layers[blocker.args[0].name]  # the widget hands out a plugin's proxy
    assert compare.uncertainty_layer.name == layer.name
    assert layer.name == "Uncertainty tiny-test, 3 samples · HE"
    result = compare.last_spread
    assert result.seeds == (0, 1, 2) and not result.stochastic
    assert layer.data.shape == result.values.shape and not layer.data.any()
    x, y, w, h = result.region
    assert layer.data.shape == (h * 4, w * 4)
    # placed on SR's pixel grid at the region
    np.testing.assert_allclose(layer.scale, pair.sr.scale)
    np.testing.assert_allclose(
        layer.translate, np.asarray(pair.sr.translate) + 2.0 * np.array([y, x])
    )
    assert "deterministic" in compare.uncertainty_label.text()
    assert not compare.uncertainty_legend.isHidden()
    assert "3 samples" in compare.uncertainty_legend.text.text()
    qtbot.waitUntil(lambda: compare.uncertainty_button.isEnabled(), timeout=10000)
    assert not compare.stop_button.isEnabled()
    # napari's own writer saves it (File > Save Selected Layers, .tif)
    viewer.layers.selection = {layer}
    written = viewer.layers.save(str(tmp_path / "spread.tif"), selected=True, plugin="napari")
    np.testing.assert_array_equal(tifffile.imread(written[0]), layer.data)
    assert errors() == []


def test_uncertainty_stops(viewer, qtbot, sample_hr, tiny_model):
    _, compare, pair = paired(viewer, qtbot, sample_hr[:128, :128], tiny_model)
    viewer.scene.camera.zoom = 0.1
    assert compare.run_uncertainty(samples=32)
    assert not compare.run_uncertainty()  # one at a time
    compare.stop_uncertainty()
    qtbot.waitUntil(lambda: not compare.uncertainty_running, timeout=30000)
    assert compare.uncertainty_layer is None
    assert compare.uncertainty_label.text() == "uncertainty stopped: nothing shown"
    assert compare.uncertainty_button.isEnabled()
    # a map made before stays shown, and the line says it is the earlier one
    with qtbot.waitSignal(compare.uncertainty_ready, timeout=30000):
        assert compare.run_uncertainty(samples=2)
    qtbot.waitUntil(lambda: not compare.uncertainty_running, timeout=30000)
    assert compare.run_uncertainty(samples=32)
    compare.stop_uncertainty()
    qtbot.waitUntil(lambda: not compare.uncertainty_running, timeout=30000)
    assert compare.uncertainty_layer is not None
    assert compare.uncertainty_label.text() == (
        "uncertainty stopped: the map shown is still the earlier one"
    )


def test_stochastic_model_has_uncertainty_and_no_departure(
    viewer, qtbot, sample_hr, tmp_path, errors
):
    from napari_srgan_sqe.models.modelfile import save_model
    from tiny_runs import tiny_sr3

    model = tiny_sr3(steps=2)
    path = save_model(model, tmp_path / "tiny-sr3.safetensors")
    _, compare, pair = paired(viewer, qtbot, sample_hr[:96, :96], str(path))
    assert not compare.departure_box.isEnabled()
    assert "stochastic" in compare.departure_box.toolTip()
    assert compare.show_departure() is None and "Uncertainty" in compare.uncertainty_label.text()
    viewer.scene.camera.zoom = 0.1
    with qtbot.waitSignal(compare.uncertainty_ready, timeout=60000) as blocker:
        assert compare.run_uncertainty(samples=2)
    layer = viewer.layers[blocker.args[0].name]
    assert compare.last_spread.stochastic and layer.data.shape == (96, 96)
    assert layer.data.mean() > 0.5
    assert "mean spread" in compare.uncertainty_label.text()
    # the colour scale spans the view's own range of spread (5th to 99.5th percentile)
    lo, hi = (float(v) for v in layer.contrast_limits)
    q05, q995 = np.quantile(layer.data, [0.05, 0.995])
    assert lo <= q05 < lo + 1 or (lo == 0.0 and q05 < 1.0)
    assert hi - 1 < q995 <= hi and hi >= lo + 1
    assert f"clear at {lo:g} or less" in compare.uncertainty_legend.text.text()
    # with an HR layer each sample is scored: mean and spread of PSNR over the samples
    scores = compare.last_spread.psnr
    assert len(scores) == 2 and scores[0] != scores[1] and all(5 < v < 60 for v in scores)
    assert f"{compare.last_spread.psnr_mean:.2f} ±" in compare.uncertainty_label.text()
    assert errors() == []


def test_closing_the_viewer_with_a_map_overlaid_ends_cleanly(
    async_viewer, qtbot, sample_hr, tiny_model
):
    """viewer.close() shuts napari's slicer down before it removes the layers: Compare
    must not re-arrange the grid (which slices) while the map layer goes."""
    viewer = async_viewer
    enhance, compare, pair = paired(viewer, qtbot, sample_hr, tiny_model)
    compare.arrange("overlay")
    compare.show_departure()
    assert compare.departure_layer is not None
    settle(qtbot, compare)
    viewer.close()  # raised "cannot schedule new futures after shutdown"
    qtbot.wait(50)  # the deferred re-arrangement runs, on an empty viewer
    assert len(viewer.layers) == 0


def test_switching_to_a_stochastic_model_draws_the_seed_box_sample(
    viewer, qtbot, sample_hr, tiny_model, tmp_path
):
    """The Model box switches the SR layer in place: a stochastic model draws the
    sample the Seed box names, as Enhance would, and the layer's name says which."""
    from napari_srgan_sqe.models.modelfile import save_model
    from tiny_runs import tiny_sr3

    path = save_model(tiny_sr3(steps=2), tmp_path / "tiny-sr3.safetensors")
    enhance, _, pair = paired(viewer, qtbot, sample_hr[:96, :96], tiny_model)
    enhance.seed_box.setValue(3)
    sr = enhance.set_model(str(path), wait=True)
    assert _layers.pyramid_of(sr).seed == 3 and "seed 3" in sr.name
    assert enhance.set_model(str(path), wait=True, seed=5) is sr
    assert _layers.pyramid_of(sr).seed == 5 and "seed 5" in sr.name
