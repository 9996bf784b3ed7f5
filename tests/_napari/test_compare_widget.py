"""The Compare widget: layout, field-of-view crops and readouts in a real viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_srgan_sqe._napari import _layers
from napari_srgan_sqe._napari.compare.widget import CompareWidget
from napari_srgan_sqe.degradation import degrade
from napari_srgan_sqe.inference.readouts import BICUBIC_VS_HR, CONSISTENCY, SR_VS_HR, ReadoutColumn
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
    # napari's layer list shows the last layer on top: it reads LR, SR, HR like the grid
    assert [x.name for x in viewer.layers][-3:] == [pair.hr.name, pair.sr.name, pair.lr.name]

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
    assert compare.columns == [SR_VS_HR, BICUBIC_VS_HR, "gain"]
    table = {name: compare.table.item(0, c).text() for c, name in enumerate(compare.columns)}
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
    # in plain words, with what it means in the tooltip; rows it does not have are hidden
    header = compare.table.horizontalHeaderItem(0)
    assert header.text() == "consistency with LR"
    assert "shrunk back 4x" in header.toolTip() and "LR" in header.toolTip()
    assert "sharp" in header.toolTip()  # it does not measure sharpness
    hidden = [compare.table.isRowHidden(r) for r in range(compare.table.rowCount())]
    assert hidden == [False, False, True, True, True]  # PSNR, SSIM shown
    assert "No HR" in compare.caption.text()
    assert " SR px at x " in compare.fov_label.text()  # no HR grid to speak of
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


def test_pair_box_names_the_sr_layer_as_it_is_now(viewer, qtbot, sample_hr):
    compare, pair = compared(viewer, qtbot, sample_hr[:128, :128], "bicubic-x4")
    assert compare.pair_box.currentText() == pair.sr.name  # the name given after loading
    enhance = dock(viewer, "Enhance")
    assert enhance.set_model("srgan-sqe-he-x4", sr_layer=pair.sr, wait=True) is pair.sr
    assert pair.sr.name.startswith("SR srgan-sqe-he-x4")
    assert compare.pair_box.currentText() == pair.sr.name
    pair.sr.name = "SR mine"
    assert compare.pair_box.currentText() == "SR mine" and compare.pair_box.count() == 1


def test_a_new_view_never_shows_the_last_views_numbers(viewer, qtbot, sample_hr):
    compare, pair = compared(viewer, qtbot, sample_hr[:512, :512], "bicubic-x4")
    assert compare.table.item(0, 0).text() not in ("", None)  # PSNR of the first view
    first = compare.fov_label.text()
    viewer.camera.zoom *= 4  # a smaller view
    compare._timer.stop()
    compare._start_readout()  # a worker computes this view ...
    assert compare._worker is not None
    assert all(compare.table.item(r, 0).text() == "" for r in range(compare.table.rowCount()))
    viewer.camera.center = (0, 100.0, 100.0)  # ... and the user moves on at once
    compare._timer.stop()
    compare._start_readout()  # waits for that worker; says which view comes next
    label = compare.fov_label.text()
    assert label != first and label.endswith("(computing...)") and "HR px at x" in label
    assert all(compare.table.item(r, 0).text() == "" for r in range(compare.table.rowCount()))
    settle(qtbot, compare)
    assert compare.fov_label.text() == label.removesuffix(" (computing...)")
    assert compare.table.item(0, 0).text() != ""


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


def test_names_captions_and_list_order_match_the_grid(make_napari_viewer, qtbot, sample_hr):
    viewer = make_napari_viewer(show=True)  # rendered
    compare, pair = compared(viewer, qtbot, sample_hr[:256, :256], "bicubic-x4")
    layers, grid = viewer.layers, viewer.canvas.grid
    members = (pair.lr, pair.sr, pair.hr)
    assert [x.name.split(" ")[0] for x in members] == ["LR", "SR", "HR"]
    assert pair.sr.name.startswith("SR bicubic-x4")
    # the grid reads LR | SR | HR from the left, the layer list LR, SR, HR from the top
    assert [grid.position(layers.index(x), layers) for x in members] == [(0, 0), (0, 1), (0, 2)]
    assert [x.name for x in layers][::-1][:3] == [x.name for x in members]
    assert all(x.name_overlay.visible for x in members)  # a caption in each cell

    # rendered: the caption box is drawn at the top left of each cell, and only there
    def shot():
        viewer.screenshot(canvas_only=True, flash=False)  # the first draw picks the levels
        return viewer.screenshot(canvas_only=True, flash=False).astype(int)

    with_captions = shot()
    for layer in members:
        layer.name_overlay.visible = False
    without = shot()
    diff = np.abs(with_captions - without)[..., :3].mean(axis=-1)
    h, w = diff.shape
    cell = w // 3
    for i in range(3):
        corner = diff[2:30, i * cell + 5 : i * cell + 60]
        assert corner.mean() > 20, f"no caption in cell {i}"
        assert diff[h // 2 :, i * cell : (i + 1) * cell].max() == 0  # the image is untouched
    compare.arrange("overlay")  # captions back on; in overlay the visible ones stack
    assert pair.sr.name_overlay.visible and pair.hr.name_overlay.visible


def test_switching_layouts_keeps_the_camera(viewer, qtbot, sample_hr):
    compare, pair = compared(viewer, qtbot, sample_hr, "bicubic-x4")
    camera = viewer.scene.camera
    camera.center = (0, 50.0, 70.0)
    camera.zoom = 6.0
    compare.arrange("overlay")
    assert not viewer.canvas.grid.enabled
    assert tuple(camera.center[-2:]) == pytest.approx((50.0, 70.0))
    assert camera.zoom == pytest.approx(6.0)
    compare.arrange("side by side")
    assert viewer.canvas.grid.enabled
    assert tuple(camera.center[-2:]) == pytest.approx((50.0, 70.0))
    assert camera.zoom == pytest.approx(6.0)


def test_napari_grid_button_and_new_layers_follow_the_layout(viewer, qtbot, sample_hr):
    compare, pair = compared(viewer, qtbot, sample_hr[:128, :128], "bicubic-x4")
    assert compare.mode_box.currentText() == "side by side"
    marks = viewer.add_points([[5, 5]], name="marks")  # added while side by side
    qtbot.waitUntil(lambda: not marks.visible, timeout=2000)  # would take a grid cell
    viewer.canvas.grid.enabled = False  # napari's grid button
    assert compare.mode_box.currentText() == "overlay"
    assert marks.visible and pair.sr.visible and pair.hr.visible and not pair.lr.visible
    viewer.canvas.grid.enabled = True
    assert compare.mode_box.currentText() == "side by side" and not marks.visible
    assert viewer.canvas.grid.stride == -1 and viewer.canvas.grid.shape == (1, 3)


@pytest.mark.parametrize(("width", "height"), [(1089, 630), (1600, 980)])
def test_every_readout_row_can_be_seen(make_napari_viewer, qtbot, sample_hr, width, height):
    """At usual window sizes, with Enhance docked above Compare, each readout row can be
    scrolled into view (at 1600 x 980 all are in view at once), and no header is cut."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(width, height)
    compare, pair = compared(viewer, qtbot, sample_hr[:256, :256], "bicubic-x4")
    qtbot.waitUntil(lambda: compare.room, timeout=10_000)  # docked, it asked for room
    qtbot.wait(50)
    assert viewer.window._qt_window.height() <= height
    table, area = compare.table, compare.scroll_area
    view, bar = area.viewport(), area.verticalScrollBar()
    assert table.verticalScrollBar().maximum() == 0  # the table never scrolls by itself
    assert table.width() <= view.width()  # nor is it cut at the right
    fm = table.horizontalHeader().fontMetrics()
    for c in range(table.columnCount()):
        text = table.horizontalHeaderItem(c).text()
        assert table.horizontalHeader().sectionSize(c) >= fm.horizontalAdvance(text), text
    labels = [table.verticalHeaderItem(r).text() for r in range(table.rowCount())]
    assert labels == ["PSNR (dB)", "SSIM", "MS-SSIM", "QILV", "RRMSE"]
    assert all(table.verticalHeaderItem(r).toolTip() for r in range(table.rowCount()))
    for row in range(table.rowCount()):
        rect = table.visualRect(table.model().index(row, 0))
        bottom = table.viewport().mapTo(area.widget(), rect.bottomLeft()).y()
        bar.setValue(max(0, bottom - view.height() + 1))
        top = table.viewport().mapTo(view, rect.topLeft()).y()
        assert 0 <= top and top + rect.height() <= view.height(), f"row {labels[row]} unseen"
    if height >= 980:
        assert bar.maximum() == 0  # all rows in view without scrolling


def test_a_second_pair_waits_hidden_until_chosen(viewer, qtbot, sample_hr):
    compare, first = compared(viewer, qtbot, sample_hr[:128, :128], "bicubic-x4")
    other = viewer.add_image(sample_hr[128:256, :128], name="second", scale=(0.5, 0.5))
    enhance = dock(viewer, "Enhance")
    sr2 = enhance.enhance(simulate_from=other, model="bicubic-x4", wait=True)
    second = _layers.find_pair(viewer.layers, sr2)
    qtbot.waitUntil(lambda: not any(x.visible for x in second.layers), timeout=2000)
    assert compare.pair.pair_id == first.pair_id and all(x.visible for x in first.layers)
    index = compare.pair_box.findData(second.pair_id)
    compare.pair_box.setCurrentIndex(index)
    compare.pair_box.activated.emit(index)  # the user picks it
    assert all(x.visible for x in second.layers) and not any(x.visible for x in first.layers)
    layers = viewer.layers
    cells = [viewer.canvas.grid.position(layers.index(x), layers) for x in second.layers]
    assert cells == [(0, 0), (0, 1), (0, 2)]
