"""The Enhance widget in a real napari viewer (Qt under Xvfb)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from napari_srgan_sqe._napari import _layers
from napari_srgan_sqe._napari.enhance.form import LOAD_FILE
from napari_srgan_sqe._napari.enhance.widget import EnhanceWidget
from napari_srgan_sqe.degradation import degrade, degrade_with

pytestmark = pytest.mark.gui

PLUGIN = "napari-srgan-sqe"


def dock(viewer, name: str):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def choose_model_file(qtbot, widget: EnhanceWidget, monkeypatch, path) -> None:
    """Pick a model through the "load .safetensors..." entry, with the dialog answered."""
    from qtpy.QtWidgets import QFileDialog

    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(path), ""))
    widget.model_box.activated.emit(widget.model_box.findData(LOAD_FILE))
    assert widget.model_box.currentData() == str(path)


def test_button_adds_aligned_sr_layer(
    async_viewer, qtbot, monkeypatch, tiny_model, sample_hr, errors
):
    viewer = async_viewer  # napari slices in a thread, as users are advised to set up
    viewer.add_image(sample_hr, name="slide", scale=(0.5, 0.5), translate=(10.0, 20.0))
    widget = dock(viewer, "Enhance")
    assert isinstance(widget, EnhanceWidget)
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)  # models and devices listed
    assert widget.device_box.itemText(0).startswith("auto (")
    names = [widget.model_box.itemData(i) for i in range(widget.model_box.count())]
    assert {"srgan-sqe-he-x4", "bicubic-x4", "zssr-x4"} <= set(names) and names[-1] == LOAD_FILE
    texts = [widget.model_box.itemText(i) for i in range(widget.model_box.count())]
    assert texts[names.index("zssr-x4")] == "zssr-x4  (zero-shot, x4, slow)"
    assert texts[names.index("srgan-sqe-he-x4")] == "srgan-sqe-he-x4  (deterministic, x4, fast)"
    # the trained weights ship with the package, so they are the default and enabled; an
    # array layer's coding is unknown, so the default is the model for scanned slides
    assert widget.coding_label.text() == "Stored as: unknown (not read from a file)"
    assert widget.model_box.currentData() == "srgan-sqe-he-x4"
    assert widget.model_box.model().item(names.index("srgan-sqe-he-x4")).isEnabled()

    widget.layer_box.setCurrentText("slide")
    choose_model_file(qtbot, widget, monkeypatch, tiny_model)
    widget.tile_box.setValue(128)
    with qtbot.waitSignal(widget.sr_ready, timeout=30000) as blocker:
        widget.enhance_button.click()
        assert not widget.enhance_button.isEnabled()  # the GUI thread did not block
    sr = blocker.args[0]
    assert sr.multiscale and sr.rgb
    assert sr.data[0].shape == (4 * 384, 4 * 512, 3)
    np.testing.assert_allclose(sr.scale, (0.125, 0.125))
    np.testing.assert_allclose(sr.translate, np.array([10.0, 20.0]) - 3 / 8 * 0.5)
    pair = _layers.find_pair(viewer.layers)
    assert pair.lr is not None and pair.sr is not None and pair.hr is None
    assert _layers.pyramid_of(sr).tile == 128

    shown = np.asarray(sr.data[0][:64, :64])  # what napari reads: a placeholder at once
    assert shown.shape == (64, 64, 3) and shown.std() > 0
    tile = np.asarray(_layers.layer_levels(sr)[0][:64, :64])  # the exact SR: one tile
    assert tile.dtype == np.uint8 and tile.std() > 0
    assert _layers.pyramid_of(sr).stats.tiles_computed >= 1

    def shown() -> int:  # napari may still be computing tiles of the view meanwhile
        found = re.search(r"(\d+) computed", widget.status.text())
        return int(found.group(1)) if found else 0

    qtbot.waitUntil(lambda: shown() >= 1, timeout=5000)
    assert "tiny-test" in widget.status.text() and "cpu" in widget.status.text()
    assert errors() == []
    qtbot.waitUntil(lambda: sr.loaded, timeout=30000)  # napari's slicing thread is done


def test_simulate_lr_is_degrade_of_hr(viewer, sample_hr, errors):
    hr = viewer.add_image(sample_hr, name="HE", scale=(0.25, 0.25))
    widget = dock(viewer, "Enhance")
    sr = widget.enhance(simulate_from=hr, model="bicubic-x4", wait=True)
    assert sr is not None, errors()
    pair = _layers.find_pair(viewer.layers, sr)
    assert (pair.hr, pair.sr) == (hr, sr) and pair.scale == 4
    lr = pair.lr
    expected = degrade(sample_hr, 4)
    np.testing.assert_array_equal(np.asarray(lr.data[0]), expected)
    np.testing.assert_allclose(lr.scale, (1.0, 1.0))
    np.testing.assert_allclose(lr.translate, (1.5 * 0.25, 1.5 * 0.25))
    # SR has exactly the HR geometry
    assert sr.data[0].shape == sample_hr.shape
    np.testing.assert_allclose(sr.scale, hr.scale)
    np.testing.assert_allclose(sr.translate, hr.translate, atol=1e-12)
    # enhancing the same HR again reuses its simulated LR and SR layers
    n = len(viewer.layers)
    assert widget.enhance(simulate_from=hr, model="bicubic-x4", wait=True) == sr
    assert len(viewer.layers) == n
    assert errors() == []


def test_model_change_refreshes_sr(viewer, qtbot, monkeypatch, tiny_model, sample_hr):
    hr = viewer.add_image(sample_hr[:128, :128], name="HE")
    widget = dock(viewer, "Enhance")
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    sr = widget.enhance(simulate_from=hr, model="bicubic-x4", wait=True)
    before = np.asarray(sr.data[0])
    old_name = sr.data[0].name
    widget.layer_box.setCurrentText("HE")
    with qtbot.waitSignal(widget.sr_ready, timeout=30000):
        choose_model_file(qtbot, widget, monkeypatch, tiny_model)
    assert sr.data[0].name != old_name  # new arrays: napari cannot show stale tiles
    assert sr.name == "SR tiny-test · HE"
    assert sr.metadata["srgan_sqe"]["model"] == "tiny-test"
    assert sr.metadata["srgan_sqe"]["model_path"] == str(tiny_model)
    assert not np.array_equal(np.asarray(sr.data[0]), before)


def test_bad_model_file_is_a_notification(viewer, qtbot, sample_hr, bad_model, errors):
    viewer.add_image(sample_hr, name="slide")
    widget = dock(viewer, "Enhance")
    n = len(viewer.layers)
    widget.enhance(viewer.layers["slide"], model=bad_model)
    qtbot.waitUntil(lambda: errors() != [], timeout=30000)
    assert "not-a-model.safetensors" in errors()[0]
    qtbot.waitUntil(lambda: widget.enhance_button.isEnabled(), timeout=5000)
    assert len(viewer.layers) == n
    # the viewer is still usable
    viewer.add_points([[1, 1]])
    viewer.layers.selection.active = viewer.layers["slide"]
    assert widget.enhance(viewer.layers["slide"], model="bicubic-x4", wait=True) is not None


def test_a_model_file_that_fails_to_load_leaves_the_model_in_use_shown(
    viewer, qtbot, monkeypatch, sample_hr, bad_model, errors
):
    viewer.add_image(sample_hr[:256, :256], name="slide")
    widget = dock(viewer, "Enhance")
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    sr = widget.enhance(viewer.layers["slide"], model="bicubic-x4", wait=True)
    assert widget.model_box.currentData() == "bicubic-x4"
    count = widget.model_box.count()
    choose_model_file(qtbot, widget, monkeypatch, bad_model)  # switches the SR layer
    qtbot.waitUntil(lambda: errors() != [] and not widget.busy, timeout=30000)
    # the notification names the file, not its folder, so the reason fits on its line
    assert errors()[0].startswith("Enhance: not-a-model.safetensors: not a safetensors file")
    assert str(bad_model.parent) in widget.status.text()  # the status line keeps the path
    # the box names the model the SR layer still uses; the bad file is not offered again
    assert widget.model_box.currentData() == "bicubic-x4"
    assert widget.model_box.findData(str(bad_model)) < 0 and widget.model_box.count() == count
    assert _layers.pyramid_of(sr).model.name == "bicubic-x4"
    assert sr.metadata["srgan_sqe"]["model"] == "bicubic-x4"


def test_non_rgb_layer_is_a_notification(viewer, errors):
    widget = dock(viewer, "Enhance")
    gray = viewer.add_image(np.zeros((64, 64), np.uint8), name="gray")
    assert widget.layer_box.findText("gray") < 0  # not offered
    assert widget.enhance(gray, model="bicubic-x4", wait=True) is None
    assert "RGB" in errors()[0]


def test_closing_while_loading_is_quiet(make_napari_viewer, qtbot, sample_hr, tiny_model):
    viewer = make_napari_viewer()
    hr = viewer.add_image(sample_hr[:128, :128], name="HE")
    widget = dock(viewer, "Enhance")
    widget.enhance(simulate_from=hr, model=tiny_model)  # in a worker
    workers = list(widget._workers)
    viewer.close()
    qtbot.waitUntil(lambda: all(not w.is_running for w in workers), timeout=30000)
    qtbot.wait(100)  # let the queued "returned" signals arrive: they must not raise


def _pick_by_hand(widget: EnhanceWidget, name: str) -> None:
    """Choose a bundled model in the Model box as a user does (select, then activated)."""
    index = widget.model_box.findData(name)
    widget.model_box.setCurrentIndex(index)
    widget.model_box.activated.emit(index)


def test_coding_label_and_default_model_follow_the_slide(
    viewer, qtbot, sample_path, sample_hr, tmp_path, errors
):
    from PIL import Image

    from napari_srgan_sqe._napari.launch import show_slide
    from napari_srgan_sqe.io.slides import open_slide

    svs = show_slide(viewer, open_slide(sample_path))  # JPEG Q=30 (Aperio)
    png = tmp_path / "lossless.png"
    Image.fromarray(sample_hr[:128, :128]).save(png)
    [lossless] = viewer.open(str(png), plugin=PLUGIN)
    widget = dock(viewer, "Enhance")
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    names = [widget.model_box.itemData(i) for i in range(widget.model_box.count())]
    assert {"srgan-sqe-he-x4", "srgan-sqe-he-x4-clean", "bicubic-x4"} <= set(names)
    assert [widget.simulate_box.itemData(i) for i in range(3)] == [None, "clean", "scanner"]

    widget.layer_box.setCurrentText(svs.name)
    assert (
        widget.coding_label.text()
        == "Stored as: JPEG Q=30 (quantisation tables) — lossy; 0.499 um/px"
    )
    assert widget.simulate_preset is None
    assert widget.model_box.currentData() == "srgan-sqe-he-x4"  # a scanned slide
    widget.set_simulate("clean")  # LR = D_s of it: the model trained on clean LR
    assert widget.model_box.currentData() == "srgan-sqe-he-x4-clean"
    widget.set_simulate("scanner")
    assert widget.model_box.currentData() == "srgan-sqe-he-x4"
    widget.set_simulate(None)

    widget.layer_box.setCurrentText(lossless.name)
    assert (
        widget.coding_label.text()
        == "Stored as: lossless (PNG); pixel size not recorded (no scale bar, sizes in pixels)"
    )
    assert widget.model_box.currentData() == "srgan-sqe-he-x4-clean"
    widget.set_simulate("scanner")
    assert widget.model_box.currentData() == "srgan-sqe-he-x4"
    widget.set_simulate(None)

    _pick_by_hand(widget, "bicubic-x4")  # a choice by hand is never overridden
    widget.layer_box.setCurrentText(svs.name)
    widget.set_simulate("clean")
    assert widget.model_box.currentData() == "bicubic-x4"
    with pytest.raises(ValueError, match="unknown degradation preset"):
        widget.set_simulate("blurry")
    assert errors() == []


def test_simulate_scanner_then_clean_renews_the_lr(viewer, sample_hr, errors):
    import dask.array as da

    hr = viewer.add_image(sample_hr, name="HE")
    widget = dock(viewer, "Enhance")
    sr = widget.enhance(simulate_from=hr, degradation="scanner", model="bicubic-x4", wait=True)
    assert sr is not None, errors()
    assert widget.simulate_preset == "scanner"
    lr = _layers.find_pair(viewer.layers, sr).lr
    assert lr.name == "LR simulated 4x, scanner · HE"
    hr_dask = da.from_array(sample_hr, chunks=(1024, 1024, -1))
    scanned = np.asarray(degrade_with(hr_dask, "scanner", 4, seed=0))
    np.testing.assert_array_equal(np.asarray(lr.data[0]), scanned)
    assert not np.array_equal(scanned, degrade(sample_hr, 4))

    # the same preset again reuses the layers; another preset renews the same LR layer
    n = len(viewer.layers)
    assert (
        widget.enhance(simulate_from=hr, degradation="scanner", model="bicubic-x4", wait=True) == sr
    )
    sr2 = widget.enhance(simulate_from=hr, degradation="clean", model="bicubic-x4", wait=True)
    assert sr2 == sr and len(viewer.layers) == n  # (the widget sees layers through proxies)
    pair = _layers.find_pair(viewer.layers, sr)
    assert pair.lr == lr and pair.hr == hr and lr.name == "LR simulated 4x · HE"
    np.testing.assert_array_equal(np.asarray(lr.data[0]), degrade(sample_hr, 4))
    widget.layer_box.setCurrentText(lr.name)
    assert widget.coding_label.text() == "Stored as: simulated LR (clean D_s)"
    assert errors() == []


def test_layer_names_lead_with_their_role(viewer, sample_hr, errors):
    """Names start with LR / SR / HR (napari elides long names in the middle and a grid
    cell's caption is cut at its edge), then the model or how LR was made, then the image."""
    hr = viewer.add_image(sample_hr[:128, :128], name="CMU-1-Small-Region")
    widget = dock(viewer, "Enhance")
    sr = widget.enhance(simulate_from=hr, model="bicubic-x4", wait=True)
    pair = _layers.find_pair(viewer.layers, sr)
    assert pair.hr.name == "HR CMU-1-Small-Region"
    assert pair.lr.name == "LR simulated 4x · CMU-1-Small-Region"
    assert sr.name == "SR bicubic-x4 · CMU-1-Small-Region"
    assert widget.layer_box.currentText() == "HR CMU-1-Small-Region"  # still chosen
    # enhancing again keeps the names (no "HR HR ...")
    assert widget.enhance(simulate_from=hr, model="bicubic-x4", wait=True) == sr
    assert pair.hr.name == "HR CMU-1-Small-Region"

    # a real LR image (no HR): the image itself is the LR
    own = viewer.add_image(sample_hr[:64, :64], name="biopsy 7")
    sr2 = widget.enhance(own, model="bicubic-x4", wait=True)
    assert own.name == "LR biopsy 7" and sr2.name == "SR bicubic-x4 · biopsy 7"
    assert errors() == []


def test_model_box_follows_the_sr_layers_model(viewer, qtbot, sample_hr, tiny_model):
    """When something else switches the SR layer's model (Fine-tune does), the Model box
    shows the model the layer really uses, and Enhance keeps using it."""
    hr = viewer.add_image(sample_hr[:128, :128], name="HE")
    widget = dock(viewer, "Enhance")
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    sr = widget.enhance(simulate_from=hr, model="bicubic-x4", wait=True)
    assert widget.model_box.currentData() == "bicubic-x4"
    from napari_srgan_sqe.models.modelfile import load_model

    pyramid = _layers.pyramid_of(sr)
    pyramid.set_model(load_model(tiny_model))  # as the fine-tune worker does
    _layers.show_pyramid(sr, model_path=tiny_model)
    assert widget.model_box.currentData() == str(tiny_model)
    assert widget.model_box.currentText() == tiny_model.name
    viewer.add_points([[1, 1]])  # other layer events do not bring the default back
    assert widget.model_box.currentData() == str(tiny_model)


def test_enhance_status_names_the_resolved_device_from_the_start(tiny_model, sample_hr):
    """The progress messages an Enhance shows name the device 'auto' resolved to (here
    the CPU), never 'auto' itself."""
    from napari_srgan_sqe.inference.enhancement import prepare_enhance
    from napari_srgan_sqe.models.predictor import resolve_device

    gen = prepare_enhance(
        model=str(tiny_model), device="auto", tile=None, lr_levels=[sample_hr[:64, :64]]
    )
    said: list[str] = []
    while True:
        try:
            said.append(next(gen))
        except StopIteration as stop:
            prepared = stop.value
            break
    assert prepared.error is None and prepared.pyramid is not None
    device = str(resolve_device("auto"))
    assert f"preparing tiny-test on {device} ..." in said, said
    assert not [s for s in said if "auto" in s], said
    assert prepared.pyramid.predictor.device_name.startswith(device)
