"""The Compare widget: layout, field-of-view crops and readouts in a real viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_srgan_sqe._napari import _layers
from napari_srgan_sqe._napari.compare_widget import (
    BICUBIC_VS_HR,
    CONSISTENCY,
    SR_VS_HR,
    CompareWidget,
    ReadoutColumn,
)
from napari_srgan_sqe.degradation import degrade
from napari_srgan_sqe.metrics import all_metrics, psnr, ssim

pytestmark = pytest.mark.gui

PLUGIN = "napari-srgan-sqe"


def dock(viewer, name: str):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def settle(qtbot, compare: CompareWidget, after: int = -1) -> None:
    """Wait for a readout newer than generation `after` and no pending work."""
    qtbot.waitUntil(
        lambda: (
            not compare.busy
            and compare.last_readout is not None
            and compare.last_readout.generation > after
        ),
        timeout=30000,
    )


def crop(a, box):
    return np.asarray(a[box.y0 : box.y1, box.x0 : box.x1])


def compared(viewer, qtbot, hr_image, model, *, simulate: bool = True):
    """Dock both widgets and make a pair (LR simulated from HR, or HR used as LR)."""
    layer = viewer.add_image(hr_image, name="HE", scale=(0.5, 0.5))
    enhance, compare = dock(viewer, "Enhance"), dock(viewer, "Compare")
    if simulate:
        sr = enhance.enhance(simulate_from=layer, model=model, wait=True)
    else:
        sr = enhance.enhance(layer, model=model, wait=True)
    assert sr is not None
    settle(qtbot, compare)
    return compare, _layers.find_pair(viewer.layers, sr)


def test_readouts_follow_camera_and_match_metrics(
    async_viewer, qtbot, sample_hr, tiny_model, errors
):
    from napari.settings import get_settings

    viewer = async_viewer
    assert get_settings().experimental.async_
    compare, pair = compared(viewer, qtbot, sample_hr, tiny_model)
    grid = viewer.canvas.grid
    assert grid.enabled and grid.shape == (1, 3)
    assert [x.name for x in viewer.layers][-3:] == [pair.lr.name, pair.sr.name, pair.hr.name]

    first = compare.last_readout
    camera = viewer.scene.camera
    camera.zoom = 8.0  # screen px per world unit (0.5 um per HR px)
    camera.center = (0, 60.0, 150.0)
    settle(qtbot, compare, first.generation)
    readout = compare.last_readout
    box = readout.box
    assert box != first.box
    # the box is what one grid cell shows, on the HR grid, snapped outwards to LR pixels
    h, w = viewer.canvas.viewbox_size(viewer.layers)
    y_min, x_min = 60.0 - h / 16, 150.0 - w / 16
    assert 0 <= y_min * 2 - box.y0 < 4 and 0 <= x_min * 2 - box.x0 < 4
    assert 0 <= box.y1 - (y_min * 2 + h / 4) < 5 and 0 <= box.x1 - (x_min * 2 + w / 4) < 5
    assert box.y0 % 4 == box.x0 % 4 == box.y1 % 4 == box.x1 % 4 == 0

    hr = crop(sample_hr, box)
    sr = crop(pair.sr.data[0], box)
    assert readout.columns[SR_VS_HR] == pytest.approx(all_metrics(sr, hr), nan_ok=True)
    from napari_srgan_sqe.training.evaluate import bicubic_upscale

    bicubic = bicubic_upscale(degrade(sample_hr, 4), 4)  # of the whole image
    expected = all_metrics(crop(bicubic, box), hr)
    assert readout.columns[BICUBIC_VS_HR] == pytest.approx(expected)
    table = {
        compare.table.horizontalHeaderItem(c).text(): compare.table.item(0, c).text()
        for c in range(compare.table.columnCount())
    }
    assert table[SR_VS_HR] == f"{readout.columns[SR_VS_HR]['psnr']:.2f}"
    assert table["gain"].startswith(("+", "-"))
    assert errors() == []
    qtbot.waitUntil(lambda: all(x.loaded for x in viewer.layers), timeout=30000)


def test_large_view_is_capped_and_ms_ssim_shown(viewer, qtbot, sample_hr, errors):
    compare, pair = compared(viewer, qtbot, sample_hr, "bicubic-x4")
    compare.max_crop = 192  # 1024 by default; smaller keeps the test fast
    compare.arrange("overlay")
    first = compare.last_readout.generation
    viewer.scene.camera.zoom = 0.05  # the whole image and more
    settle(qtbot, compare, first)
    readout = compare.last_readout
    assert readout.box.capped and readout.box.shape == (192, 192)
    assert (readout.box.y0, readout.box.x0) == (96, 160)  # the centre of a 384 x 512 image
    assert readout.columns[SR_VS_HR]["ms_ssim"] is not None  # 192 >= 161 px
    assert errors() == []


def test_consistency_without_hr(viewer, qtbot, sample_hr, tiny_model, errors):
    compare, pair = compared(viewer, qtbot, sample_hr, tiny_model, simulate=False)
    assert pair.hr is None
    readout = compare.last_readout
    assert list(readout.columns) == [CONSISTENCY]
    box = readout.box
    values = readout.columns[CONSISTENCY]
    down = degrade(np.asarray(pair.sr.data[0]), 4)  # D_s of the whole SR image
    y0, y1, x0, x1 = box.lr
    lr = sample_hr[y0:y1, x0:x1]
    assert values["psnr"] == pytest.approx(psnr(down[y0:y1, x0:x1], lr), rel=1e-6)
    assert values["ssim"] == pytest.approx(ssim(down[y0:y1, x0:x1], lr), rel=1e-6)
    assert values["qilv"] is None
    assert compare.table.columnCount() == 1
    assert errors() == []


def test_overlay_mode(viewer, qtbot, sample_hr):
    compare, pair = compared(viewer, qtbot, sample_hr[:128, :128], "bicubic-x4")
    other = viewer.add_points([[5, 5]], name="marks")
    compare.arrange("side by side")
    assert not other.visible  # only the pair in the grid
    compare.arrange("overlay")
    assert not viewer.canvas.grid.enabled and other.visible
    assert not pair.lr.visible and pair.sr.visible and pair.hr.visible
    names = [x.name for x in viewer.layers]
    assert names.index(pair.sr.name) > names.index(pair.hr.name)  # SR drawn over HR
    compare.opacity.setValue(30)
    assert pair.sr.opacity == pytest.approx(0.3)


def test_stale_columns_are_dropped(viewer, qtbot, sample_hr):
    compare, pair = compared(viewer, qtbot, sample_hr[:128, :128], "bicubic-x4")
    old = compare.last_readout
    compare.schedule_update()  # the view changed: generation moves on
    stale = ReadoutColumn(old.generation, SR_VS_HR, dict.fromkeys(old.columns[SR_VS_HR], 0.0))
    compare._on_column(stale)
    assert compare.table.item(0, 0).text() != "0.00"
    settle(qtbot, compare, old.generation)
    assert compare.last_readout.generation > old.generation


def test_closing_while_computing_is_quiet(make_napari_viewer, qtbot, sample_hr):
    viewer = make_napari_viewer()
    compare, _ = compared(viewer, qtbot, sample_hr[:256, :256], "bicubic-x4")
    compare.schedule_update()
    compare._timer.stop()
    compare._start_readout()  # a worker is computing now
    worker = compare._worker
    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=30000)
    qtbot.wait(100)  # its queued signals must not raise
