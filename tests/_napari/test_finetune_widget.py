"""The Fine-tune widget: draw, start, progress, stop, the SR layer switches; viewer stays live."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from napari_srgan_sqe.models.modelfile import load_model

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_torch_thread")]

PLUGIN = "napari-srgan-sqe"
FAST = {"patch_size": 32, "batch_size": 2, "val_every": 4, "seed": 0}


@pytest.fixture
def pair(viewer, tiny_model, sample_hr):
    """HR layer + simulated LR + SR layer (tiny random model) made by the Enhance widget."""
    _, enhance = viewer.window.add_plugin_dock_widget(PLUGIN, "Enhance")
    hr = viewer.add_image(sample_hr[:256, :320], name="HR")
    sr = enhance.enhance(simulate_from=hr, model=str(tiny_model), device="cpu", wait=True)
    assert sr is not None
    return hr, sr


@pytest.fixture
def pair_layers(make_napari_viewer, tiny_model, sample_hr):
    """A shown viewer with HR, simulated LR and SR layers (tiny random model)."""
    viewer = make_napari_viewer(show=True)
    _, enhance = viewer.window.add_plugin_dock_widget(PLUGIN, "Enhance")
    hr = viewer.add_image(sample_hr[:256, :320], name="HR")
    assert enhance.enhance(simulate_from=hr, model=str(tiny_model), device="cpu", wait=True)
    return viewer


def _widget(viewer, tmp_path, *, steps: int = 2000, lr: float = 1e-3):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    widget.folder = tmp_path
    widget.extra_config = dict(FAST)
    widget.steps_box.setValue(steps)
    widget.lr_box.setValue(lr)
    return widget


def test_draw_start_stop_switches_the_sr_layer(viewer, pair, qtbot, tmp_path, errors):
    from qtpy.QtCore import QTimer

    from napari_srgan_sqe._napari import _layers, _workers
    from napari_srgan_sqe._napari.finetune_widget import OPTIMIZER_IMPORTS

    hr, sr = pair
    widget = _widget(viewer, tmp_path)
    shapes = widget.shapes_layer()
    # made as the widget docked: dragging still pans, and the SR layer stays selected
    assert shapes.name == "Fine-tune regions" and shapes.mode == "pan_zoom"
    assert viewer.layers.selection.active is viewer.layers[sr.name]
    widget.draw_button.click()
    assert shapes.mode == "add_rectangle"
    assert viewer.layers.selection.active is viewer.layers[shapes.name]
    assert widget.mode_box.currentText() == "paired"  # an HR layer exists
    shapes.add_rectangles(np.array([[32.0, 16.0], [224.0, 304.0]]))  # world = HR px (y, x)
    (x, y, w, h) = widget.regions()[0]
    assert (x, y) == (4, 8) and 70 <= w <= 72 and 47 <= h <= 48
    assert "1 rectangle" in widget.regions_label.text()
    assert str(tmp_path) in widget.folder_label.text().replace("\u200b", "")

    pyramid = _layers.pyramid_of(sr)
    old_id, old_level0 = pyramid.model.identity, sr.data[0]
    # the widget imports what the optimizer's first step needs in the background as it
    # opens (in a run, that import stalls the GUI thread for up to a second); a user
    # reaches Start seconds later, so the test waits for it too
    preloading = _workers.preload(OPTIMIZER_IMPORTS)
    assert preloading is None or preloading.name == f"preload {OPTIMIZER_IMPORTS}"
    if preloading is not None:
        preloading.join(timeout=60)
    assert OPTIMIZER_IMPORTS in sys.modules
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    assert widget.start()
    assert widget.running and not widget.start_button.isEnabled()
    assert sr.metadata["srgan_sqe"]["busy"] is True  # Enhance may not switch its model now
    qtbot.waitUntil(lambda: len(widget.plot.psnr) >= 3, timeout=60_000)  # step 0, 4, 8
    assert widget.plot.loss and "ETA" in widget.eta_label.text()
    with qtbot.waitSignal(widget.finished, timeout=10_000) as blocker:
        t_stop = time.perf_counter()
        widget.stop()
    stop_s = time.perf_counter() - t_stop
    timer.stop()
    res = blocker.args[0]
    qtbot.waitUntil(lambda: not widget.running, timeout=5_000)
    assert not sr.metadata["srgan_sqe"].get("busy")

    assert stop_s < 2.0, f"stop took {stop_s:.2f} s"
    assert res.stopped and res.improved, res.summary()
    during = [t for t in ticks if t <= t_stop]
    gaps = np.diff(during)
    assert len(during) >= 5 and gaps.max() < 1.0, f"GUI thread stalled: {gaps.max():.2f} s"
    new = _layers.pyramid_of(sr).model
    assert new.identity != old_id and new is res.model
    assert sr.data[0] is not old_level0 and new.name in sr.name
    saved = sorted(tmp_path.glob("tiny-test-ft-*.safetensors"))
    assert len(saved) == 1 and saved[0].stem == new.name
    loaded = load_model(saved[0])
    assert loaded.identity == new.identity and loaded.metadata["parent"] == "tiny-test"
    assert '"x": 4' in loaded.metadata["finetune_regions"]
    log = widget.log.toPlainText()
    assert "before: PSNR" in log and "->" in log and f"saved {saved[0].name}" in log
    # the result stays in view (not only in the log), and Enhance names the new model
    result = widget.result_label.text()
    assert "PSNR" in result and "->" in result and new.name in result
    assert result.startswith("held-out HR stripes: PSNR")  # what the numbers compare
    _, enhance = viewer.window.add_plugin_dock_widget(PLUGIN, "Enhance")
    assert enhance.model_box.currentData() == str(saved[0])
    assert enhance.model_box.currentText() == saved[0].name
    assert sr.name.startswith(f"SR {new.name}")
    # the plot: axes with their ranges, the legend in its own row above the curves
    plot = widget.plot
    assert plot.legend_rect().bottom() <= plot.plot_rect().top()
    loss_ticks, psnr_ticks = plot._ticks()
    assert all(loss_ticks) and all(psnr_ticks) and "dB" in plot.toolTip()
    assert not errors()


def test_bad_regions_are_refused_before_training(viewer, pair, qtbot, tmp_path, errors):
    widget = _widget(viewer, tmp_path)
    assert not widget.start()  # no rectangle yet
    assert errors() and "draw at least one rectangle" in errors()[-1]
    shapes = widget.shapes_layer()
    shapes.add_rectangles(np.array([[32.0, 32.0], [48.0, 48.0]]))
    assert not widget.start()
    assert "smaller than a patch" in errors()[-1] and not widget.running
    shapes.data = [np.array([[-400.0, -400.0], [-200.0, -200.0]])]
    assert not widget.start()
    assert "outside the image" in errors()[-1]
    viewer.add_image(np.zeros((8, 8, 3), np.uint8), name="another image")
    qtbot.waitUntil(lambda: viewer.layers[-1].name == shapes.name, timeout=2_000)  # drawable


def test_closing_napari_stops_training(make_napari_viewer, tiny_model, sample_hr, qtbot, tmp_path):
    viewer = make_napari_viewer()
    _, enhance = viewer.window.add_plugin_dock_widget(PLUGIN, "Enhance")
    hr = viewer.add_image(sample_hr[:256, :320], name="HR")
    enhance.enhance(simulate_from=hr, model=str(tiny_model), device="cpu", wait=True)
    widget = _widget(viewer, tmp_path)
    widget.shapes_layer().add_rectangles(np.array([[32.0, 16.0], [224.0, 304.0]]))
    assert widget.start()
    job = widget._job
    qtbot.waitUntil(lambda: len(widget.plot.loss) >= 2, timeout=60_000)
    viewer.close()
    qtbot.waitUntil(lambda: not job.worker.is_running, timeout=10_000)
    assert job.stop_event.is_set()


def test_a_crash_in_training_is_reported_and_the_old_model_stays(
    viewer, pair, qtbot, tmp_path, errors, monkeypatch
):
    from napari_srgan_sqe._napari import _layers
    from napari_srgan_sqe.training import finetune as lib

    def boom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")  # torch errors are RuntimeErrors

    monkeypatch.setattr(lib, "iter_finetune", boom)
    _, sr = pair
    old = _layers.pyramid_of(sr).model
    widget = _widget(viewer, tmp_path)
    widget.shapes_layer().add_rectangles(np.array([[32.0, 16.0], [224.0, 304.0]]))
    assert widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=10_000)
    assert any("out of memory" in e for e in errors())
    assert _layers.pyramid_of(sr).model is old
    assert "previous model stays active" in widget.log.toPlainText()
    assert widget.start_button.isEnabled() and not list(tmp_path.glob("*.safetensors"))


def test_mode_follows_hr_only_until_the_user_chooses(viewer, pair, qtbot, tmp_path):
    """Paired is picked when an HR layer first appears; later insertions keep the user's mode."""
    hr, sr = pair
    widget = _widget(viewer, tmp_path)
    assert widget.mode_box.currentText() == "paired"
    widget.mode_box.setCurrentIndex(1)
    widget.mode_box.activated.emit(1)  # the user picks self-supervised
    viewer.add_image(np.zeros((8, 8, 3), np.uint8), name="other")
    viewer.add_points(np.zeros((1, 2)))
    assert widget.mode_box.currentText() == "self-supervised"


def test_mode_switches_to_paired_when_an_hr_layer_first_appears(
    viewer, tiny_model, sample_hr, tmp_path
):
    widget = _widget(viewer, tmp_path)
    assert widget.mode_box.currentText() == "self-supervised"  # no HR yet
    _, enhance = viewer.window.add_plugin_dock_widget(PLUGIN, "Enhance")
    hr = viewer.add_image(sample_hr[:256, :320], name="HR")
    enhance.enhance(simulate_from=hr, model=str(tiny_model), device="cpu", wait=True)
    assert widget.mode_box.currentText() == "paired"
    widget.mode_box.setCurrentIndex(1)  # programmatic, e.g. a script: not a user choice
    viewer.add_image(np.zeros((8, 8, 3), np.uint8), name="other")
    assert widget.mode_box.currentText() == "self-supervised"  # the HR did not just appear


def test_a_refusal_toast_shows_the_whole_message(
    make_napari_viewer, qtbot, tiny_model, sample_hr, tmp_path
):
    """napari opens a toast collapsed to one elided line of about 300 px: "paired mode
    needs an HR layer; use self-supervised" lost its end where the line wrapped, after
    the ';'. The widgets' toasts open expanded when the line cuts them."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtWidgets import QLabel

    viewer = make_napari_viewer(show=True)  # toasts appear only in a shown window
    _, enhance = viewer.window.add_plugin_dock_widget(PLUGIN, "Enhance")
    lr = viewer.add_image(sample_hr[:64, :80], name="LR")
    assert enhance.enhance(lr, model=str(tiny_model), device="cpu", wait=True) is not None
    widget = _widget(viewer, tmp_path)
    assert widget.mode_box.currentText() == "self-supervised"  # no HR layer
    widget.mode_box.setCurrentIndex(0)  # paired, e.g. set by a script
    assert widget.start() is False
    message = "Fine-tune: paired mode needs an HR layer; use self-supervised"
    toasts = [t for t in NapariQtNotification._instances if t.message.text() == message]
    assert len(toasts) == 1
    toast = toasts[0]
    assert toast.property("expanded")
    qtbot.waitUntil(lambda: QLabel.text(toast.message) == message, timeout=2000)
    assert toast.message.height() >= 2 * toast.message.fontMetrics().height()  # two lines
    toast.close()

    from napari_srgan_sqe._napari import _dock

    _dock.notify_error("Fine-tune: short")  # one line holds it: left as napari shows it
    short = [t for t in NapariQtNotification._instances if t.message.text() == "Fine-tune: short"]
    assert len(short) == 1 and not short[0].property("expanded")
    short[0].close()


def test_enhance_refuses_to_switch_a_busy_sr_layer(viewer, pair, tiny_model):
    from napari.utils.notifications import notification_manager

    from napari_srgan_sqe._napari import _layers
    from napari_srgan_sqe._napari.finetune_widget import _set_busy

    hr, sr = pair
    _, enhance = viewer.window.add_plugin_dock_widget(PLUGIN, "Enhance")
    before = _layers.pyramid_of(sr).model
    _set_busy(sr, True)
    start = len(notification_manager.records)
    assert enhance.set_model("bicubic-x4", sr_layer=sr, wait=True) is None
    said = [str(n.message) for n in notification_manager.records[start:]]
    assert said == [f"Enhance: {sr.name!r} is being fine-tuned; switch its model when that ends"]
    assert _layers.pyramid_of(sr).model is before
    _set_busy(sr, False)
    assert enhance.set_model("bicubic-x4", sr_layer=sr, wait=True) is sr
    assert _layers.pyramid_of(sr).model.name == "bicubic-x4"


def test_eta_is_measured_from_the_steps_done(viewer, tmp_path, monkeypatch):
    """The first step (warm-up) takes long; the ETA follows the pace after it."""
    from napari_srgan_sqe._napari.finetune import widget as module

    widget = _widget(viewer, tmp_path)
    clock = iter([0.0, 10.0, 11.0, 12.0, 13.0])  # step 1 ends at 10 s, then 1 s/step
    monkeypatch.setattr(module.time, "perf_counter", lambda: next(clock))
    widget._eta_marks, widget._t_start, widget._max_s = [], 0.0, None
    assert widget._eta(0, 100) is None  # the parent's validation, before step 1
    assert widget._eta(1, 100) is None
    assert widget._eta(2, 100) is None  # one step since the warm-up: not yet
    assert widget._eta(3, 100) == pytest.approx(97.0)  # (12 - 10) / 2 s per step x 97 steps
    widget._max_s = 60.0  # a time limit caps it
    assert widget._eta(4, 100) == pytest.approx(60.0 - 13.0)


def test_regions_layer_has_the_images_units(make_napari_viewer, qtbot, sample_hr, tmp_path):
    """No "Inconsistent units across layers" warning when Fine-tune adds its Shapes layer,
    or when images come after it."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    viewer = make_napari_viewer(show=True)
    start = len(notification_manager.records)
    widget = _widget(viewer, tmp_path)  # before any image: no regions layer yet
    assert not [x for x in viewer.layers if x.name == "Fine-tune regions"]
    viewer.add_image(sample_hr[:64, :64], name="HE", scale=(0.5, 0.5), units="um")
    qtbot.waitUntil(lambda: "Fine-tune regions" in viewer.layers, timeout=2000)
    shapes = widget.shapes_layer()
    assert [str(u) for u in shapes.units] == ["micrometer", "micrometer"]
    assert viewer.layers[-1].name == shapes.name  # above the image, to draw on
    viewer.add_image(sample_hr[:64, :64], name="HE 2", scale=(0.5, 0.5), units="um")
    assert viewer.layers.extent.units is not None  # napari's condition for the warning
    viewer.screenshot(canvas_only=True, flash=False)  # a draw checks the units
    qtbot.wait(50)
    warnings = [
        str(n.message)
        for n in notification_manager.records[start:]
        if n.severity == NotificationSeverity.WARNING
    ]
    assert not [w for w in warnings if "units" in w.lower()], warnings


def test_three_docks_fit_a_1000_px_screen(make_napari_viewer, qtbot, pair_layers, tmp_path):
    """Enhance, Compare and Fine-tune docked in a 1600 x 980 window: Fine-tune becomes a
    tab beside Enhance, in front; the window does not grow, and every control of
    Fine-tune can be scrolled into view."""

    viewer = pair_layers
    window = viewer.window._qt_window
    window.resize(1600, 980)
    _, compare = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare")
    qtbot.waitUntil(compare.isVisible, timeout=5000)  # docked, then Fine-tune from the menu
    widget = _widget(viewer, tmp_path)
    area = widget.scroll_area

    def tabs() -> list[str]:
        """The tabs of the group Fine-tune is in, the one in front first."""
        from qtpy.QtWidgets import QTabBar

        for bar in window.findChildren(QTabBar):
            titles = [bar.tabText(i) for i in range(bar.count())]
            if bar.isVisible() and any(t.startswith("Fine-tune") for t in titles):
                front = bar.currentIndex()
                return [titles[front]] + titles[:front] + titles[front + 1 :]
        return []

    # a tab in front of Enhance, taking what room Compare below can spare
    def in_front_of_enhance() -> bool:
        names = [t.split(" ")[0] for t in tabs()]
        return names[:1] == ["Fine-tune"] and "Enhance" in names

    def laid_out() -> bool:  # Compare keeps what it needs below (its table in view)
        return area.viewport().height() > 300 and compare.height() > 300

    qtbot.waitUntil(lambda: widget.room and in_front_of_enhance() and laid_out(), timeout=10_000)
    assert compare.isVisible()
    assert window.height() <= 1000 and window.minimumSizeHint().height() <= 1000
    for control in (widget.draw_button, widget.start_button, widget.plot, widget.result_label):
        area.ensureWidgetVisible(control, 0, 0)
        top = control.mapTo(area.viewport(), control.rect().topLeft()).y()
        assert 0 <= top < area.viewport().height(), control
    assert widget.width() >= widget.scroll_area.widget().minimumSizeHint().width()


def test_zero_shot_on_this_view_trains_zssr_and_the_sr_layer_uses_it(
    make_napari_viewer, tiny_model, sample_hr, qtbot, tmp_path
):
    from napari_srgan_sqe._napari import _layers
    from napari_srgan_sqe.config import ZSSRConfig

    viewer = make_napari_viewer(show=True)
    _, enhance = viewer.window.add_plugin_dock_widget(PLUGIN, "Enhance")
    hr = viewer.add_image(sample_hr, name="HR")  # 384 x 512
    sr = enhance.enhance(
        simulate_from=hr, degradation="clean", model=str(tiny_model), device="cpu", wait=True
    )
    widget = _widget(viewer, tmp_path, steps=300)
    widget.zssr_network = ZSSRConfig(n_layers=4, channels=32, self_ensemble=False)
    viewer.reset_view()  # the whole image in view: all of the LR (128 x 96 px)
    assert widget.view_region() == (0, 0, 128, 96)
    zoom = viewer.camera.zoom
    viewer.camera.zoom = zoom * 4  # 4x closer: less than half of each side, same centre
    x, y, w, h = widget.view_region()
    assert 0 < w < 80 and 0 < h < 60
    assert abs(x + w / 2 - 64) <= 1 and abs(y + h / 2 - 48) <= 1
    viewer.camera.zoom = zoom
    done: list = []
    widget.finished.connect(done.append)
    assert widget.start_zero_shot()
    assert not widget.zero_shot_button.isEnabled() and not widget.start_button.isEnabled()
    assert not widget.steps_box.isEnabled() and not widget.lr_box.isEnabled()  # read at start
    qtbot.waitUntil(lambda: bool(done) and not widget.running, timeout=600_000)
    assert widget.steps_box.isEnabled() and widget.mode_box.isEnabled()
    result = done[0]
    assert result.improved, widget.log.toPlainText()
    model = _layers.pyramid_of(sr).model
    assert model.descriptor.kind == "zero-shot" and model.metadata["zero_shot"] == "true"
    saved = list(tmp_path.glob("zssr-x4-ft-*.safetensors"))
    assert len(saved) == 1 and load_model(saved[0]).descriptor.kind == "zero-shot"
    assert "now used by the SR layer" in widget.result_label.text()
    # its "before" is bicubic on pseudo-pairs, not the model the layer used: said so
    assert widget.result_label.text().startswith("held-out pseudo-pairs, bicubic -> ZSSR: PSNR")
    assert widget.zero_shot_button.isEnabled()
